"""Model zoo, checkpoint loading and saving, and conversion of official GLIP checkpoints.

Import order (no cycle): ``checkpoint`` (plain weights) <- ``zoo`` <- ``tuned`` (deltas
over a base); ``tuned`` registers its folder format with ``checkpoint.load_model`` here.
Loading a tuned delta does not import the training engine.
"""

from glip.hub import tuned as _tuned  # noqa: F401  (registers tuned-delta folders with load_model)
