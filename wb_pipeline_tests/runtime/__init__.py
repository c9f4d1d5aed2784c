"""Tests of core.runtime."""
