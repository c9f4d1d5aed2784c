"""Tests of core.monitoring."""
