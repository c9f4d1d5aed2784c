"""Tests of core.labels."""
