"""Answering one product card at a time over the materialized models (pure: no dagster, no HTTP).

- `cards`: a seller's card checked (limits, types, characteristics, photo) and turned into the
  pipeline's own inputs (cleaning, product text, the encoder text, the decoded photo); `CardError`
  carries the 4xx status;
- `bundle`: one complete materialization loaded (`ServingBundle`): predictions through
  `core.models.prediction.predict_products`, nearest products through the search index, today's
  duplicate rule; `materialization_stamp` / `incomplete_reason` tell a newer, complete one.

The HTTP layer is `wb_pipeline.serve` (FastAPI + uvicorn, `make serve`).
"""
