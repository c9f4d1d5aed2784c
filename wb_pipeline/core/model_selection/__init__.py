"""Model selection tools the models train with and the reports score with: group-aware CV folds and
duplicate keys (folds), classification metrics with bootstrap intervals (metrics), cross-modal retrieval
metrics (retrieval_metrics)."""
