"""Losses shared by heads: the inter-image region-word contrastive loss and its cross-process gather."""
