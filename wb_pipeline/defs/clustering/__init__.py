"""Group `clustering`: product clusters in the text, image, concatenated and joint spaces."""
