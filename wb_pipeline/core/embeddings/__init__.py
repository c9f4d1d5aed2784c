"""Vectors: the embedding tables and cache (vectors), encoding runs over products and photos (runs),
and the encoders themselves (encoders/)."""
