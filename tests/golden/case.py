"""The golden-output case: a tiny GLIP with fixed weights on a fixed synthetic image and
prompt, whose outputs ``scripts/make_golden.py`` recorded once from this code into
``tests/golden/tiny_glip.safetensors``; ``tests/golden/test_golden.py`` compares with them.

It needs nothing outside the repository (no ``../shared`` fixtures, no hub download, no
torchvision): the tokenizer is the bundled bert-base-uncased vocabulary, the BERT a
2-layer, 32-wide random one.

The weights do not come from the modules' own initialisation: every parameter is refilled
from a generator seeded by its *name*, so the golden values change only when the forward
computation (or a parameter's name or shape) changes, not when an initialiser or the
order of module construction does. Matrices get LeCun-uniform values, norm scales
``1 + 0.1 N(0, 1)``, every other vector (biases, layer scales, ``log_scale``, ``bias0``)
``0.1 N(0, 1)``: large enough that the fusion's layer-scaled branches matter.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "GOLDEN_FILE",
    "IMAGE_HW",
    "PROMPT",
    "TARGET_BOXES",
    "TARGET_LABELS",
    "build_tiny_glip",
    "golden_image",
    "run_case",
]

HERE = Path(__file__).resolve().parent
GOLDEN_FILE = HERE / "tiny_glip.safetensors"
CONFIG_FILE = HERE / "tiny.yaml"
PROMPT = "red square. blue circle. green triangle."
IMAGE_HW = (96, 128)  # min_size_test / max_size_test of tiny.yaml: no resize, no padding
# The drawn shapes, (x1, y1, x2, y2) inclusive pixels, and their 1-based phrase index in PROMPT.
TARGET_BOXES = ((10, 12, 45, 47), (70, 40, 109, 79), (20, 58, 59, 89))
TARGET_LABELS = (1, 2, 3)
_TINY_BERT = dict(
    vocab_size=30522,  # bert-base-uncased's vocabulary (glip/assets)
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


# The golden file was recorded before the head was split into a trunk and heads; seeding by the
# names of that layout keeps the recorded values, so the split itself is checked against them.
_SEED_NAMES = (("trunk.blocks.", "head.tower."), ("heads.grounding.", "head."))


def _seed_name(name: str) -> str:
    for new, old in _SEED_NAMES:
        if name.startswith(new):
            return old + name[len(new) :]
    return name


def _fill_by_name(model: torch.nn.Module) -> None:
    """Refills every parameter from a generator seeded by the CRC32 of its (recording-time) name."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = torch.Generator().manual_seed(zlib.crc32(_seed_name(name).encode()))
            if p.ndim >= 2:
                bound = math.sqrt(3.0 / p[0].numel())  # variance 1 / fan_in
                p.copy_(torch.rand(p.shape, generator=g) * (2 * bound) - bound)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build_tiny_glip():
    """The golden model (eval mode)."""
    from transformers import BertConfig

    from glip.config import load_config
    from glip.modeling.build import build_model
    from glip.text import BUNDLED_TEXT_ENCODERS, load_tokenizer

    cfg = load_config(CONFIG_FILE)
    tokenizer = load_tokenizer(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    model = build_model(cfg, BertConfig(**_TINY_BERT), tokenizer)
    _fill_by_name(model)
    return model.eval()


def golden_image() -> np.ndarray:
    """``uint8[96, 128, 3]`` RGB: seeded noise on grey, a red square, a blue disc, a green triangle."""
    g = torch.Generator().manual_seed(0)
    h, w = IMAGE_HW
    img = (110 + 30 * torch.rand(h, w, 3, generator=g)).round()
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    (sx1, sy1, sx2, sy2), (cx1, cy1, cx2, cy2), (tx1, ty1, tx2, ty2) = TARGET_BOXES
    square = (xx >= sx1) & (xx <= sx2) & (yy >= sy1) & (yy <= sy2)
    cx, cy, r = (cx1 + cx2) / 2, (cy1 + cy2) / 2, (cx2 - cx1 + 1) / 2
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    # apex at the top centre, base along y2: |x - centre| <= half width * depth fraction
    frac = (yy - ty1).float() / (ty2 - ty1)
    triangle = (yy >= ty1) & (yy <= ty2) & ((xx - (tx1 + tx2) / 2).abs() <= frac * (tx2 - tx1) / 2)
    for mask, rgb in ((square, (220, 30, 30)), (disc, (30, 40, 220)), (triangle, (40, 200, 50))):
        img[mask] = torch.tensor(rgb, dtype=img.dtype)
    return img.to(torch.uint8).numpy()


def run_case(model) -> dict[str, torch.Tensor]:
    """Everything the golden file records, as float32 / int64 CPU tensors.

    Keys: ``text_hidden`` ``[1, T, 32]`` (language backbone), ``fpn_p3`` ``[1, 32, 12, 16]``,
    ``fused_text`` ``[1, T, 32]`` (after the fusion tower), ``dot_product_logits``
    ``[1, N, T]`` (the L levels concatenated), ``box_regression`` ``[1, N, 4]``,
    ``centerness`` ``[1, N]``, ``det_boxes`` ``[D, 4]`` (xyxy, original pixels),
    ``det_scores`` ``[D]``, ``det_labels`` ``[D]`` (1-based phrase index), ``loss_*`` and
    ``loss_total`` (scalars), ``grad_norm_backbone`` / ``_text_encoder`` / ``_head``
    (scalars, after ``loss_total.backward()``).
    """
    from glip.modeling.build import build_loss
    from glip.structures import GroundingTargets, ImageBatch

    image = golden_image()
    tokens = model.tokenize(PROMPT)
    tensor, _ = model.preprocessing(image)
    batch = ImageBatch.from_tensors([tensor], model.preprocessing.size_divisibility)
    assert tuple(batch.tensor.shape[-2:]) == IMAGE_HW, batch.tensor.shape
    record: dict[str, torch.Tensor] = {}

    with torch.no_grad():
        out = model(batch, tokens.input_ids, tokens.attention_mask)
        flat = lambda ts: torch.cat([t.flatten(2) for t in ts], dim=2)  # noqa: E731 - L x [1, K, H, W] -> [1, K, N]
        record["text_hidden"] = out.text.hidden
        record["fpn_p3"] = out.features[0]
        record["fused_text"] = out.trunk.fused_text
        record["dot_product_logits"] = torch.cat(out.head.dot_product_logits, dim=1)  # [1, N, T]
        record["box_regression"] = flat(out.head.box_regression).transpose(1, 2)  # [1, N, 4]
        record["centerness"] = flat(out.head.centerness)[:, 0]  # [1, N]
        det = model.predict(image, PROMPT, threshold=0.0)
        record["det_boxes"], record["det_scores"], record["det_labels"] = det.boxes, det.scores, det.labels

    # One training step's objective on the drawn shapes (train mode; nothing stochastic is on).
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            out = model(batch, tokens.input_ids, tokens.attention_mask)
            rows = torch.tensor(TARGET_LABELS) - 1
            targets = GroundingTargets(
                torch.tensor(TARGET_BOXES, dtype=torch.float32),
                tokens.positive_map[rows] != 0,
                torch.tensor(TARGET_LABELS),
            )
            losses = build_loss(model.config)(model.heads, out, tokens.attention_mask, [targets])
            total = sum(losses.values())
            total.backward()
        for key, value in losses.items():
            record[key] = value.detach()
        record["loss_total"] = total.detach()
        parts = {
            "backbone": list(model.backbone.parameters()),
            "text_encoder": list(model.text_encoder.parameters()),
            "head": [*model.trunk.parameters(), *model.heads.parameters()],  # the fusion tower and its heads
        }
        for part, params in parts.items():
            grads = [p.grad.flatten() for p in params if p.grad is not None]
            # float64: a float32 sum of ~2M squares moves by ~1e-4 with the summation order.
            record[f"grad_norm_{part}"] = torch.cat(grads).double().norm().float()
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    return {k: v.detach().to("cpu").contiguous() for k, v in record.items()}
