"""Model zoo, checkpoint loading and saving, and conversion of official GLIP checkpoints.

Import order (no cycle): ``zoo`` (names) and ``checkpoint`` (weights at a path) <- ``fetch``
(download and convert a zoo model) <- ``sources`` (a model argument -> files) <- ``loading``
(``load_model``) <- ``tuned`` (deltas over a base); ``tuned`` registers its folder format
with ``checkpoint.load_checkpoint`` here.
Loading a tuned delta does not import the training engine.
"""

from glip.hub import tuned as _tuned  # noqa: F401  (registers tuned-delta folders with load_model)
