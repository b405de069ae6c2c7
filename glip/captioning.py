"""Grounded captioning for users: :func:`caption` and :func:`caption_image`.

A re-export module kept for its import path: the code lives in :mod:`glip.inference.captioning`
(and :func:`caption` in :mod:`glip.inference.shortcuts`, on the shared predictor).
"""

from glip.inference.captioning import Caption, caption_image
from glip.inference.shortcuts import caption

__all__ = ["Caption", "caption", "caption_image"]
