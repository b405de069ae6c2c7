"""Detection ops with a torchvision fast path and pure-PyTorch fallbacks, chosen per device."""

from glip.ops.backend import active_backends, use_backend

__all__ = ["active_backends", "use_backend"]
