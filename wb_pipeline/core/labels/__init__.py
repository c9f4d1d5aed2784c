"""Derived labels: the seed's rules (rules) and the per-product label table (table)."""
