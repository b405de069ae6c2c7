"""Shared fixtures of the modeling tests."""

from __future__ import annotations

import pytest
import torch

from glip.structures import ImageBatch
from tests.golden import case


@pytest.fixture(scope="session", params=[0, 32], ids=["fused-text", "visual-readout"])
def captioner(request):
    """The golden tiny GLIP (eval mode) with a captioning head, weights refilled by name, and
    the FPN maps of the golden image; the head reads the fused text alone, or through a
    32-wide visual read-out (``model.heads.caption.readout_dim``)."""
    from transformers import BertConfig

    from glip.config import load_config
    from glip.modeling.build import build_model
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    cfg = load_config(
        case.CONFIG_FILE, ["model.heads.caption.enabled=true", f"model.heads.caption.readout_dim={request.param}"]
    )
    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    model = build_model(cfg, BertConfig(**case._TINY_BERT), tokenizer)
    case._fill_by_name(model)
    model.eval()
    tensor, _ = model.preprocessing(case.golden_image())
    batch = ImageBatch.from_tensors([tensor], model.preprocessing.size_divisibility)
    with torch.no_grad():
        features = model.backbone(batch.tensor)
    return model, features
