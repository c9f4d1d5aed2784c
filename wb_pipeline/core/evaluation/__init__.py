"""Evaluation of a whole run on any catalogue: the quality table `make eval` prints (no dagster import)."""
