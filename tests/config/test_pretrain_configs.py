"""The pre-training recipes of configs/pretrain load and hold the official values."""

from __future__ import annotations

from pathlib import Path

import pytest

from glip.config import load_config

PRETRAIN = Path(__file__).resolve().parents[2] / "configs" / "pretrain"


@pytest.mark.parametrize("name", ["glip-t", "glipv2-t"])
def test_pretrain_recipe_loads_with_its_sources(name: str) -> None:
    cfg = load_config(PRETRAIN / f"{name}.yaml")  # unknown keys or wrong types fail here
    s = cfg.solver
    # official configs/pretrain/glip_Swin_T_O365_GoldG.yaml
    assert (s.optimizer, s.base_lr, s.lang_lr, s.weight_decay) == ("adamw", 1e-4, 1e-5, 1e-4)
    assert (s.ims_per_batch, s.max_epoch, s.warmup_iters, s.warmup_factor) == (64, 30, 2000, 0.001)
    assert list(s.steps) == [0.67, 0.89] and s.use_amp and s.model_ema == 0.999
    assert s.clip_gradients.enabled and s.clip_gradients.clip_value == 1.0
    assert list(cfg.input.min_size_train) == [480, 560, 640, 720, 800]
    assert (cfg.model.backbone.swin.depths, cfg.model.trunk.num_blocks) == ([2, 2, 6, 2], 6)
    sources = {src.name: src for src in cfg.data.sources}
    assert list(sources) == ["o365", "goldg_mixed", "goldg_flickr", "cap4m"]
    assert [src.format for src in sources.values()] == ["coco", "mdetr", "mdetr", "mdetr"]
    assert [src.weight for src in sources.values()] == [0.66, 0.6, 0.15, 4.0]
    assert all(
        src.train_json.startswith("/path/to/") and src.train_images.startswith("/path/to/") for src in sources.values()
    )
    assert not cfg.data.train_json  # data.sources only
    assert [src.pseudo_labelled for src in sources.values()] == [False, False, False, True]
    d = cfg.data  # official glip_Swin_L.yaml caption options
    assert (d.caption_conf, d.caption_nms, d.pack_captions, d.pack_prob, d.no_pack_prob) == (0.5, -1.0, 20, 0.5, 0.4)
    v2 = name == "glipv2-t"
    assert cfg.model.heads.mlm.enabled is v2 and cfg.model.heads.inter_image.enabled is v2
