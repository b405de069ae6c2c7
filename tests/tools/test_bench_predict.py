"""scripts/bench_predict.py's glip-pth setting writes GLIP-T in the official checkpoint layout:
its inverse key map must be exactly what glip.hub.official_keys reads back."""

from __future__ import annotations

import torch

from glip.config import load_config
from glip.hub.official_keys import remap_official_state_dict
from glip.modeling.build import build_model
from glip.modeling.language.text_encoder import load_bert_config
from glip.text import BUNDLED_TEXT_ENCODERS
from tests.conftest import REPO, load_script


def test_official_layout_of_glip_t_maps_back_one_to_one() -> None:
    script = load_script("bench_predict")
    cfg = load_config(REPO / "configs" / "glip-t.yaml")
    with torch.device("meta"):
        model = build_model(cfg, load_bert_config(BUNDLED_TEXT_ENCODERS["bert-base-uncased"]))
    state = model.state_dict()
    official = {"module." + script._official_key(k): v for k, v in state.items()}
    assert len(official) == len(state)
    assert any(k.startswith("module.rpn.head.dyhead_tower.") for k in official)
    back = remap_official_state_dict(official)
    assert list(back) == list(state)
    assert all(back[k] is v for k, v in state.items())
