"""Tests of core.embeddings."""
