"""A timm backbone and the CLIP text encoder in a GLIP: each trains a few steps, saves and
loads back to the same predictions."""

from __future__ import annotations

import json
import math

import pytest
import torch

import glip
from glip.engine import train
from tests.engine.conftest import tiny_config

PROMPT = "red circle. blue square."


def _train_and_reload(cfg, shapes, out):
    result = train(cfg, out, cpu=True, progress_bar=False)
    assert result.progress.step == 3
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    image = shapes.image_dir / "train_00000.png"
    model = glip.load_model(out / "model")
    a = model.predict(image, PROMPT, threshold=0.0)
    b = glip.load_model(out / "model").predict(image, PROMPT, threshold=0.0)
    assert len(a) > 0 and torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
    return model


def test_timm_convnext_trains_and_reloads(shapes, text_dir, tmp_path) -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install timm)")
    from glip.modeling.backbone import TimmBody

    cfg = tiny_config(shapes, text_dir, **{
        "model.backbone.type": "timm", "model.backbone.timm.name": "convnext_atto", "solver.max_iter": 3,
        "solver.ims_per_batch": 2, "solver.model_ema": 0.0, "inference.pre_nms_thresh": 0.0,
    })  # fmt: skip
    model = _train_and_reload(cfg, shapes, tmp_path)
    assert isinstance(model.backbone.body, TimmBody)


@pytest.fixture(scope="module")
def clip_text_dir(tmp_path_factory):
    from tests.conftest import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _clip_config(shapes, clip_dir, **extra):
    return tiny_config(shapes, clip_dir, **{
        "model.text.type": "clip", "model.text.dim": 32, "model.text.pretrained": True, "model.text.freeze": False,
        "solver.max_iter": 3, "solver.ims_per_batch": 2, "solver.model_ema": 0.0, "inference.pre_nms_thresh": 0.0,
        **extra,
    })  # fmt: skip


def test_clip_text_encoder_trains_and_reloads(shapes, clip_text_dir, tmp_path) -> None:
    from glip.modeling.language.text_encoder import ClipTextEncoder

    cfg = _clip_config(shapes, clip_text_dir)
    model = _train_and_reload(cfg, shapes, tmp_path)
    assert isinstance(model.text_encoder, ClipTextEncoder)
    assert model.config.model.text.type == "clip"
    # The text tower trained: its weights moved away from the pretrained folder's.
    fresh = ClipTextEncoder.from_pretrained(clip_text_dir)
    key = next(k for k in fresh.state_dict() if k.endswith("layers.0.mlp.fc1.weight"))
    assert not torch.equal(model.text_encoder.state_dict()[key], fresh.state_dict()[key])


def test_clip_text_encoder_is_bidirectional_and_spans_use_offsets(clip_text_dir) -> None:
    from glip.modeling.language.text_encoder import ClipTextEncoder
    from glip.text import load_tokenizer, parse_prompt, tokenize_prompt

    tokenizer = load_tokenizer(clip_text_dir)
    tokens = tokenize_prompt(tokenizer, parse_prompt(["red circle", "blue square"]), max_length=32)
    # Character-level vocabulary: <start>, then one token per non-space character.
    caption = tokens.prompt.caption
    for label, span in zip((1, 2), tokens.prompt.spans, strict=True):
        (start, end), *_ = span
        first = 1 + len(caption[:start].replace(" ", ""))
        assert tokens.label_to_token[label] == list(range(first, first + len(caption[start:end].replace(" ", ""))))
    encoder = ClipTextEncoder.from_pretrained(clip_text_dir).eval()
    ids, mask = tokens.input_ids, tokens.attention_mask
    changed = ids.clone()
    last = int(mask.sum()) - 2  # the last character before <end>
    changed[0, last] = ids[0, last - 1]
    with torch.no_grad():
        a, b = encoder(ids, mask), encoder(changed, mask)
        ca, cb = encoder(ids, mask, causal=True), encoder(changed, mask, causal=True)
    # Bi-directional: a later token changes the first token's features; causal: it does not.
    assert not torch.allclose(a.hidden[0, 1], b.hidden[0, 1])
    assert torch.equal(ca.hidden[0, :last], cb.hidden[0, :last])
    # Padding is masked: the features of real tokens ignore what fills the padding.
    padded = ids.clone()
    padded[0, int(mask.sum()) :] = 5
    with torch.no_grad():
        c = encoder(padded, mask)
    assert torch.allclose(a.hidden[0, : int(mask.sum())], c.hidden[0, : int(mask.sum())], atol=1e-6)


def test_clip_text_encoder_refuses_the_mlm_head(shapes, clip_text_dir) -> None:
    from glip.modeling.build import build_model
    from glip.modeling.language.text_encoder import load_text_config

    cfg = _clip_config(shapes, clip_text_dir, **{"model.heads.mlm.enabled": True})
    with pytest.raises(ValueError, match="model.heads.mlm needs a BERT text encoder"):
        build_model(cfg, load_text_config("clip", clip_text_dir))


def test_clip_text_encoder_checks_the_prompt_length(shapes, clip_text_dir) -> None:
    from glip.modeling.build import build_model
    from glip.modeling.language.text_encoder import load_text_config

    cfg = _clip_config(shapes, clip_text_dir, **{"model.text.max_query_len": 65})  # the tiny tower has 64
    with pytest.raises(ValueError, match="exceeds the CLIP text tower's 64 positions"):
        build_model(cfg, load_text_config("clip", clip_text_dir))
