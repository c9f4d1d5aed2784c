"""What happens to a drop of new products after it is embedded (no dagster import). Its predictions
come from `wb_pipeline.core.models.prediction.predict_products`, the one prediction path.

- `drift`: how far a drop's text and image vectors (two-sample statistics) and its predicted label
  shares (Jensen–Shannon) are from the training catalogue's, and a plain-language verdict;
- `retrain`: the rule that says when the heads and classifiers must be trained again.
"""
