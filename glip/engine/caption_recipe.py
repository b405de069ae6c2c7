"""How ``cfg.data`` turns detection labels into captions: the one reader of those settings,
shared by the json datasets (:mod:`glip.engine.data`) and the shard stream
(:mod:`glip.engine.shard_data`)."""

from __future__ import annotations

from glip.config import GLIPConfig
from glip.data import CaptionRecipe
from glip.data.od_to_grounding import parse_caption_prompt

__all__ = ["caption_recipe"]


def caption_recipe(cfg: GLIPConfig, train: bool) -> CaptionRecipe:
    """How ``cfg.data`` turns detection labels into a caption (training or validation)."""
    d = cfg.data
    return CaptionRecipe(
        sample_negatives=d.sample_negatives and train,
        shuffle=d.shuffle_categories and train,
        disjoint_negatives=d.disjoint_negatives and train,
        separator=d.separator,
        add_detection_prompt=d.add_detection_prompt,
        random_sample_negative=d.random_sample_negative,
        caption_prompt=parse_caption_prompt(d.caption_prompt) if d.caption_prompt else None,
    )
