"""Our own folders saved before the trunk/heads split still load (legacy key names), and
loading a tuned delta stays out of the training engine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from glip.hub.fetch import resolve_weights
from glip.hub.legacy_keys import legacy_key_to_current, remap_legacy_state_dict

REPO = Path(__file__).resolve().parents[2]


def test_legacy_names_map_to_the_trunk_and_the_heads() -> None:
    cases = {
        "head.tower.3.fusion.norm_v.weight": "trunk.blocks.3.fusion.norm_v.weight",
        "head.tower.0.dyconv.same.norm.bias": "trunk.blocks.0.dyconv.same.norm.bias",
        "head.bbox_pred.weight": "heads.grounding.bbox_pred.weight",
        "head.scales.4.scale": "heads.grounding.scales.4.scale",
        "head.bias0": "heads.grounding.bias0",
        "head.cls_logits.bias": "heads.grounding.cls_logits.bias",
        "head.token_logits.weight": "heads.mdetr_token.logits.weight",
        "head.resizer.fc.weight": "heads.mdetr_align.resizer.fc.weight",
        "head.contrastive_align_projection_image.bias": "heads.mdetr_align.image_proj.bias",
        "head.contrastive_align_projection_text.weight": "heads.mdetr_align.text_proj.weight",
        # current names and other modules are left alone
        "heads.grounding.bias0": "heads.grounding.bias0",
        "trunk.blocks.0.dyconv.offset.weight": "trunk.blocks.0.dyconv.offset.weight",
        "backbone.fpn.p6.weight": "backbone.fpn.p6.weight",
        "text_encoder.bert.embeddings.word_embeddings.weight": "text_encoder.bert.embeddings.word_embeddings.weight",
        "prompt_offset.weight": "prompt_offset.weight",
    }
    for old, new in cases.items():
        assert legacy_key_to_current(old) == new, old
    with pytest.raises(KeyError, match="heads.grounding.bias0"):
        remap_legacy_state_dict({"head.bias0": 1, "heads.grounding.bias0": 2})


# How the grounding model's keys were spelt before the trunk/heads split (written by hand here,
# independently of glip.hub.legacy_keys, whose job is the reverse).
_BEFORE_SPLIT = (("trunk.blocks.", "head.tower."), ("heads.grounding.", "head."))


def _before_split(key: str) -> str:
    for new, old in _BEFORE_SPLIT:
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def test_a_folder_written_before_the_split_fills_the_model_exactly(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    import glip

    current = resolve_weights("demo-shapes")
    # Folders of that time held the detector only (no mask, answer or caption head).
    later = ("heads.mask.", "heads.vqa.", "heads.caption.")
    saved = {k: v for k, v in load_file(str(current / "model.safetensors")).items() if not k.startswith(later)}
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file({_before_split(k): v for k, v in saved.items()}, str(legacy / "model.safetensors"))
    config = yaml.safe_load((REPO / "tests" / "config" / "data" / "legacy_demo_config.yaml").read_text())
    # the legacy layout's `head` section, at the current demo's fusion width
    config["model"]["head"]["fusion_embed_dim"] = saved["trunk.blocks.0.fusion.attn.v_proj.weight"].shape[0]
    (legacy / "config.yaml").write_text(yaml.safe_dump(config))
    old = load_file(str(legacy / "model.safetensors"))
    assert any(k.startswith("head.tower.") for k in old) and not any(k.startswith("trunk.") for k in old)
    model = glip.load_model(legacy)
    state = model.state_dict()
    remapped = remap_legacy_state_dict(old)
    # The folder references its frozen, pretrained text encoder instead of storing it.
    assert set(remapped) == {k for k in state if not k.startswith("text_encoder.")}
    for k, v in remapped.items():
        assert torch.equal(state[k], v.to(state[k].dtype)), k


@pytest.mark.slow  # a fresh interpreter: ~8 s on 2 cores (pytest -m slow)
def test_loading_a_tuned_delta_does_not_import_the_engine(tmp_path) -> None:
    import glip
    from glip.hub.tuned import save_tuned

    base = resolve_weights("demo-shapes")
    model = glip.load_model(base)
    with torch.no_grad():
        model.grounding.bias0.add_(0.5)
    save_tuned(model, tmp_path / "delta", base=base, mode="linear")
    code = textwrap.dedent(
        f"""
        import sys
        import glip.hub
        from glip.hub.loading import load_model
        model = load_model({str(tmp_path / "delta")!r})
        print(float(model.grounding.bias0))
        print(sorted(m for m in sys.modules if m == "glip.engine" or m.startswith("glip.engine.")))
        """
    )
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    value, engine = out.stdout.strip().splitlines()[-2:]
    assert float(value) == pytest.approx(model.grounding.bias0.item())
    assert engine == "[]"


def test_a_whole_folder_records_its_classes_and_its_offset_prompt(tmp_path) -> None:
    """A fine-tuned model saved whole (full mode; prompt mode without a base) keeps its
    classes and the token ids its prompt offset applies to; a broken record is one error."""
    import glip
    from glip.hub.checkpoint import CheckpointError, save_model
    from glip.text.prompt import from_class_names

    model = glip.load_model("demo-shapes")
    model.tuned_prompt = from_class_names(["tomato", "sky", "lemon"])
    model.enable_prompt_offset(token_ids=[101, 7, 102])
    loaded = glip.load_model(save_model(model, tmp_path / "whole", include_text_encoder=False))
    assert loaded.tuned_prompt == model.tuned_prompt and loaded.prompt_offset.token_ids == (101, 7, 102)
    (tmp_path / "whole" / "prompt.json").write_text('{"prompt": {"caption": "x"}}')
    with pytest.raises(CheckpointError, match="prompt.json"):
        glip.load_model(tmp_path / "whole")
