"""Raw data in and out: the WB file layout (schema), reading and checking files (ingestion, storage),
product cleaning, characteristics parsing, photos (images) and new-product drops."""
