"""Detection ops with a torchvision fast path and pure-PyTorch fallbacks."""
