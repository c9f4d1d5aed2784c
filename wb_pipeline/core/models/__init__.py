"""Trained models: the joint text-image space (contrastive), per-label classifiers (classification),
late fusion (fusion), clustering, and the one prediction path (prediction)."""
