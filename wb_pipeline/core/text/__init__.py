"""Text: the seed's preprocessing (preprocessing) and the text each encoder reads (product_text)."""
