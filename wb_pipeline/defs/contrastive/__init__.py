"""Group `contrastive`: the joint text–image space trained with the CLIP loss."""
