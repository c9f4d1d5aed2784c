"""What happens to a drop of new products after it is embedded (no dagster import).

- `predictions`: the saved best model per label predicts every product of a drop, with a per-row
  reason wherever a model's modality is missing or the product never got that far;
- `drift`: how far a drop's text and image vectors (two-sample statistics) and its predicted label
  shares (Jensen–Shannon) are from the training catalogue's, and a plain-language verdict;
- `retrain`: the rule that says when the heads and classifiers must be trained again.
"""
