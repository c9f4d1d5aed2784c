"""Tests of every entry point under hostile input (hypothesis)."""
