"""Our config files of earlier versions (``model.head`` and ``loss`` sections) load into
today's layout (``model.trunk`` and one section per head), values unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from glip.config import config_from_dict, config_to_dict, load_config, save_config
from glip.config.legacy import is_legacy_tree, upgrade_tree

REPO = Path(__file__).resolve().parents[2]

_OLD = {
    "model": {
        "head": {
            "channels": 48, "num_blocks": 3, "num_classes": 11, "use_gn": False, "gn_groups": 8, "use_dyrelu": False,
            "use_dfconv": False, "use_dyfuse": False, "log_scale": 0.5, "prior_prob": 0.02, "early_fusion": False,
            "fused_dot_product": False, "use_layer_scale": False, "clamp_min_for_underflow": False,
            "clamp_max_for_overflow": False, "clamp_bertattn_min_for_underflow": False,
            "clamp_bertattn_max_for_overflow": False, "clamp_dot_product": False, "use_checkpoint": False,
            "fusion_dropout": 0.3, "use_token_loss": True, "use_contrastive_align": False,
            "contrastive_hidden_dim": 32, "contrastive_dropout": 0.2,
        },
    },
    "loss": {
        "reg_weight": 3.0, "atss_topk": 7, "token_weight": 0.7, "token_alpha": 0.3, "token_gamma": 1.5,
        "use_token_loss": False, "token_loss_weight": 0.4, "use_contrastive_align_loss": True,
        "contrastive_align_loss_weight": 2.5,
    },
}  # fmt: skip


def test_every_old_key_lands_in_its_new_section() -> None:
    assert is_legacy_tree(_OLD)
    cfg = config_from_dict(_OLD)
    t, h = cfg.model.trunk, cfg.model.heads
    assert (t.channels, t.num_blocks, t.use_gn, t.gn_groups, t.use_dyrelu, t.use_dfconv, t.use_dyfuse) == (
        48,
        3,
        False,
        8,
        False,
        False,
        False,
    )
    assert not (t.early_fusion or t.fused_dot_product or t.use_layer_scale or t.use_checkpoint)
    assert not (t.clamp_min_for_underflow or t.clamp_max_for_overflow)
    assert not (t.clamp_bertattn_min_for_underflow or t.clamp_bertattn_max_for_overflow)
    assert t.fusion_dropout == 0.3
    g = h.grounding
    assert (g.num_classes, g.log_scale, g.prior_prob, g.clamp_dot_product) == (11, 0.5, 0.02, False)
    assert (g.reg_weight, g.atss_topk, g.token_weight, g.token_alpha, g.token_gamma) == (3.0, 7, 0.7, 0.3, 1.5)
    # Branch on, loss off: the head is built and weighs 0 (as the old head with its loss off).
    assert h.mdetr_token.enabled and h.mdetr_token.weight == 0.0
    # Loss on (branch switch off): the old loss switch added the branch too.
    assert h.mdetr_align.enabled and h.mdetr_align.weight == 2.5
    assert (h.mdetr_align.hidden_dim, h.mdetr_align.dropout) == (32, 0.2)
    # Saved again, it is in today's layout and reads back the same.
    tree = config_to_dict(cfg)
    assert "loss" not in tree and "head" not in tree["model"] and not is_legacy_tree(tree)
    assert config_from_dict(tree) == cfg


def test_old_override_keys_still_work() -> None:
    cfg = load_config(None, ["model.head.num_blocks=3", "loss.reg_weight=1.5", "loss.use_token_loss=true"])
    assert cfg.model.trunk.num_blocks == 3 and cfg.model.heads.grounding.reg_weight == 1.5
    assert cfg.model.heads.mdetr_token.enabled


def test_a_current_tree_is_left_alone() -> None:
    tree = config_to_dict(load_config(None))
    assert upgrade_tree(tree) == tree


# The bundled demo folder's config as it was written before the trunk/heads split.
@pytest.mark.parametrize("path", ["tests/config/data/legacy_demo_config.yaml"])
def test_a_folder_saved_by_an_earlier_version_loads_with_the_same_values(path: str, tmp_path) -> None:
    old = yaml.safe_load((REPO / path).read_text())
    assert is_legacy_tree(old)  # written before the trunk/heads split
    cfg = load_config(REPO / path)
    assert (cfg.model.trunk.channels, cfg.model.trunk.num_blocks) == (
        old["model"]["head"]["channels"],
        old["model"]["head"]["num_blocks"],
    )
    assert cfg.model.heads.grounding.reg_weight == old["loss"]["reg_weight"]
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_our_shipped_yamls_are_in_the_current_layout() -> None:
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        tree = yaml.safe_load(path.read_text())
        if "model" in tree:
            assert not is_legacy_tree(tree), path
            load_config(path)


def test_retired_mask_special_is_dropped_from_files_and_overrides(tmp_path) -> None:
    # Written by earlier versions (every shipped yaml and saved folder had the key).
    tree = config_to_dict(load_config(None))
    tree["model"]["text"]["mask_special"] = False
    cfg = config_from_dict(tree, ["model.text.mask_special=false", "model.text.num_layers=2"])
    assert cfg.model.text.num_layers == 2 and not hasattr(cfg.model.text, "mask_special")
    save_config(cfg, tmp_path / "c.yaml")
    assert "mask_special" not in (tmp_path / "c.yaml").read_text()
