"""Tests of core.model_selection."""
