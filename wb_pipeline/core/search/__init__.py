"""Similar products, duplicate groups and search over the product vectors (pure: no dagster).

- `spaces`: which vectors an index holds (joint combined by default) and how a query enters them;
- `index`: the faiss index (exact below a size, HNSW above), recall against exact search;
- `store`: index builds on storage (faiss's own format + nm order + manifest), incremental add;
- `duplicates`: the thresholded text + image neighbour graph and its connected components;
- `variants`: "the same model in another colour" (mutual nearest photos, not the same photo), scored
  against known colour variants;
- `evaluation`: precision / recall / F1 against known duplicates, threshold sweep, neighbour purity;
- `query`: text / image queries against a saved build (what `python -m wb_pipeline.search` runs);
- `contact_sheet`: a PNG of duplicate groups' photos side by side.
"""
