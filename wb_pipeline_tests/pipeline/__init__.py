"""Tests of the Dagster layer (definitions, assets, checks, jobs, deployment)."""
