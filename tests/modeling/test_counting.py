"""The answer head's counter: the count bins, the density targets (one unit per answer box),
a counter that starts as a no-op, its loss, its builder, and a checkpoint without it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glip.config import GLIPConfig
from glip.hub.checkpoint import with_fresh_heads
from glip.modeling.build import HEAD_BUILDERS
from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import LossInputs
from glip.modeling.heads.counting import AnswerCounter, count_bins, density_targets
from glip.modeling.heads.vqa import VQAHead
from glip.structures import TextFeatures
from glip.structures.targets import GroundingTargets


def _grid(height: int, width: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors (xyxy, one per cell, row-major) and their centres on a ``height x width`` grid."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([xs.flatten(), ys.flatten()], dim=1).float() * stride + stride / 2  # [N, 2]
    anchors = torch.cat([centres - stride / 2, centres + stride / 2], dim=1)  # [N, 4]
    return anchors, centres


def test_count_bins_interpolate_between_the_nearest_integers_and_clamp() -> None:
    bins = count_bins(torch.tensor([2.25, 0.0, 7.0, -1.0]), max_count=4)
    assert torch.allclose(bins[0], torch.tensor([0.0, 0.0, 0.75, 0.25, 0.0]))
    assert bins[1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert bins[2].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]  # more than max_count reads as max_count
    assert bins[3].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_density_targets_put_one_unit_on_each_box_centred_on_it() -> None:
    _, centres = _grid(10, 12, stride=8)
    boxes = [
        torch.tensor([[8.0, 8.0, 40.0, 40.0], [60.0, 20.0, 90.0, 60.0]]),
        torch.zeros((0, 4)),
        torch.tensor([[0.0, 0.0, 4.0, 4.0]]),  # smaller than a cell: sigma is half a cell
    ]
    target = density_targets(boxes, centres, stride=8)  # [3, 120]
    assert target.shape == (3, 120)
    assert torch.allclose(target.sum(1), torch.tensor([2.0, 0.0, 1.0]))
    grid = target[0].reshape(10, 12)
    # The first box's centre (24, 24) is cell (row 2.5, col 2.5): its mass sits around there.
    assert grid[1:4, 1:4].sum() > 0.6 and grid[:, 7:].sum() > 0.9  # the second box on the right
    assert int(target[2].argmax()) == 0


def test_a_new_counter_leaves_the_answers_unchanged_and_its_loss_trains_it() -> None:
    torch.manual_seed(0)
    anchors, centres = _grid(6, 6, stride=8)
    visual = [torch.randn(2, 16, 6, 6), torch.randn(2, 16, 3, 3)]
    text = torch.randn(2, 5, 8)
    mask = torch.ones(2, 5, dtype=torch.long)
    trunk = TrunkOutput(visual=visual, text=text, features=[], text_input=TextFeatures(text, text, mask, text.mean(1)))
    plain = VQAHead(8, ["0", "1", "2"])
    head = VQAHead(8, ["0", "1", "2"], counter=AnswerCounter(8, 16, dim=8, max_count=3, stride=8.0))
    head.classifier.load_state_dict(plain.classifier.state_dict())
    out = head(trunk, {})
    assert torch.equal(out.logits, plain(trunk, {}).logits)  # the count feature starts at zero
    assert out.density.shape == (2, 6, 6) and (out.density > 0).all()

    targets = [GroundingTargets.empty(5), GroundingTargets.empty(5)]
    targets[0].boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 48.0, 48.0]])
    targets[0].answer_scores = torch.tensor([0.0, 0.0, 1.0])
    inputs = LossInputs(targets=targets, anchors=[anchors, anchors[:9]], text_mask=mask, assigned=None, num_pos_avg=1.0)
    losses = head.loss(out, inputs)
    assert set(losses) == {"loss_vqa", "loss_count"}  # the second image has no question: left out
    density = out.density[:1].flatten(1)
    target = density_targets([targets[0].boxes], centres, 8.0)
    expected = ((density - target) ** 2).sum() + (density.sum() - 2.0).abs()
    assert torch.allclose(losses["loss_count"], expected)

    optimizer = torch.optim.Adam(head.counter.parameters(), lr=0.01)
    first = losses["loss_count"].item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = head.loss(head(trunk, {}), inputs)["loss_count"]
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    assert abs(head(trunk, {}).density[0].sum().item() - 2.0) < 0.3


def test_builder_and_a_checkpoint_without_the_counter() -> None:
    bert = SimpleNamespace(layer_norm_eps=1e-12)
    cfg = GLIPConfig()
    cfg.model.heads.vqa.enabled = True
    cfg.model.heads.vqa.answers = ["red", "yes"]
    assert HEAD_BUILDERS["vqa"](cfg, bert).counter is None  # off by default
    cfg.model.heads.vqa.counter_dim = 32
    cfg.model.heads.vqa.counter_level = 1
    head = HEAD_BUILDERS["vqa"](cfg, bert)
    assert head.counter.conv1.out_channels == 32 and head.counter.level == 1
    assert head.counter.stride == cfg.model.anchors.strides[1]
    with pytest.raises(ValueError, match="max_count"):
        AnswerCounter(8, 8, max_count=0)

    model = SimpleNamespace(
        heads={"vqa": head}, state_dict=lambda: {f"heads.vqa.{k}": v for k, v in head.state_dict().items()}
    )
    old = {k: v for k, v in model.state_dict().items() if ".counter." not in k}
    state = with_fresh_heads(model, old)  # a head trained before the counter existed
    assert set(state) == set(model.state_dict())
