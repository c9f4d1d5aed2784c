"""Tests of core.evaluation."""
