"""GLIP training loss: parity with the official training fixture (stored head outputs and end to
end with backward), hand-computed terms, normalisation, empty targets, precision, golden values,
and the multi-process reduction."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glip.hub.official_keys import official_key_to_glip
from glip.modeling.criterion import Criterion
from glip.modeling.heads import GroundingLoss
from glip.modeling.heads.grounding.anchors import AnchorGenerator
from glip.modeling.heads.grounding.assigner import AssignedTargets, ATSSAssigner
from glip.modeling.heads.grounding.box_coder import BoxCoder
from glip.modeling.losses.detection import giou_loss, sigmoid_focal_loss
from glip.structures import GroundingTargets, HeadOutputs, ImageBatch
from tests.conftest import TINY_CONFIGS, load_tiny_model
from tests.modeling.test_assigner import fixture_targets, load_train_case

LOSS_KEYS = ("loss_reg", "loss_centerness", "loss_dot_product_token")
_HEAD_FIELDS = {"bbox_reg": "box_regression", "centerness": "centerness", "dot_product_logits": "dot_product_logits"}


class _GroundingObjective:
    """The grounding head's loss on the criterion's shared ATSS assignment, called on head
    outputs directly (no model): ``(head, anchors, text_mask, targets) -> losses``."""

    def __init__(self) -> None:
        self.criterion = Criterion(ATSSAssigner(BoxCoder()))
        self.loss = GroundingLoss()

    def assign(self, anchors, targets) -> AssignedTargets:
        return self.criterion.assign(anchors, targets)

    def compute(self, head, anchors, text_mask, assigned) -> dict[str, torch.Tensor]:
        return self.loss(head, self.criterion.prepare(anchors, text_mask, [None] * len(assigned.per_image), assigned))

    def __call__(self, head, anchors, text_mask, targets) -> dict[str, torch.Tensor]:
        return self.loss(head, self.criterion.prepare(anchors, text_mask, targets))


def _criterion() -> _GroundingObjective:
    return _GroundingObjective()


def _stored_head(case: dict) -> HeadOutputs:
    """The fixture's head outputs as fresh leaves that collect gradients."""
    fields = {
        ours: [t.clone().requires_grad_(True) for t in case["head_outputs"][theirs]]
        for theirs, ours in _HEAD_FIELDS.items()
    }
    return HeadOutputs(num_classes=80, **fields)


# --------------------------------------------------------------------------------------------
# Official fixture, loss only


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_losses_and_head_gradients_from_stored_head_outputs(config: str) -> None:
    case = load_train_case(config)
    head = _stored_head(case)
    losses = _criterion()(head, case["anchors_per_level"], case["attention_mask"], fixture_targets(case))
    assert tuple(losses) == LOSS_KEYS
    for key in LOSS_KEYS:
        torch.testing.assert_close(losses[key], case["loss_dict"][key], rtol=1e-6, atol=0)
    assert case["loss_dict"]["loss_cls"].item() == 0.0  # the official 0-weighted term we leave out
    total = sum(losses.values())
    torch.testing.assert_close(total, case["total_loss"], rtol=1e-6, atol=0)
    total.backward()
    for theirs, ours in _HEAD_FIELDS.items():
        for got, ref in zip(getattr(head, ours), case["head_output_grads"][theirs]):
            # 1e-9 absolute; plus 3 float32 ulps relative, as the centerness targets these
            # gradients flow through differ by one ulp across CPUs (tests/modeling/test_assigner.py).
            torch.testing.assert_close(got.grad, ref, rtol=3.6e-7, atol=1e-9)


def test_giou_terms_match_official() -> None:
    atss = load_train_case(TINY_CONFIGS[0])["atss"]
    coder = BoxCoder()
    pred = coder.decode(atss["box_regression_pos"], atss["anchors_pos"])
    target = coder.decode(atss["reg_targets_pos"], atss["anchors_pos"])
    assert torch.equal(pred, atss["giou_pred_boxes"]) and torch.equal(target, atss["giou_target_boxes"])
    assert torch.equal(giou_loss(pred, target), atss["giou_losses"])


# --------------------------------------------------------------------------------------------
# Official fixture, end to end from the checkpoint


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_end_to_end_losses_and_gradients_match_official(config: str, tmp_path_factory) -> None:
    """Official weights, the stored batch, forward with gradients, loss, backward.

    The fixture is the official train-mode forward with every stochastic module silenced,
    which it checked to be bit-identical to eval mode: so the model runs in eval mode here.
    """
    case = load_train_case(config)
    model = load_tiny_model(config, tmp_path_factory.mktemp("train_e2e"))
    model.zero_grad(set_to_none=True)
    try:
        images = ImageBatch(case["image_tensor"], [tuple(s) for s in case["image_sizes_hw"]])
        with torch.enable_grad():
            out = model(images, case["input_ids"], case["attention_mask"])
            head_tensors = {k: getattr(out.head, v) for k, v in _HEAD_FIELDS.items()}
            for tensors in head_tensors.values():
                for t in tensors:
                    t.retain_grad()
            losses = _criterion()(out.head, out.anchors, out.text.mask, fixture_targets(case))
            for key in LOSS_KEYS:
                torch.testing.assert_close(losses[key], case["loss_dict"][key], rtol=1e-5, atol=0)
            sum(losses.values()).backward()

        for name, tensors in head_tensors.items():
            for got, ref in zip(tensors, case["head_output_grads"][name]):
                torch.testing.assert_close(got.grad, ref, rtol=1e-4, atol=1e-7)

        period = 3 if any(".b_attn." in k for k in case["grads_named"]) else 1
        params = dict(model.named_parameters())
        for official, ref in case["grads_named"].items():
            got = params[official_key_to_glip(official, period)].grad
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6, msg=lambda m, k=official: f"{k}: {m}")
        for official, rows in case["grads_named_rows"].items():
            got = params[official_key_to_glip(official, period)].grad[rows["row_ids"]]
            torch.testing.assert_close(got, rows["grad_rows"], rtol=1e-4, atol=1e-6)
        # Every parameter: gradient norms (1e-4 relative; absolute below norm 1e-4, which
        # covers the attention key biases whose gradient is mathematically 0).
        for official, norm in case["grad_norms_all"].items():
            grad = params[official_key_to_glip(official, period)].grad
            ours = 0.0 if grad is None else grad.norm().item()
            assert abs(ours - norm) <= 1e-4 * max(norm, 1e-4), official
        no_grad = sorted(n for n, p in params.items() if p.grad is None)
        assert no_grad == [
            "heads.grounding.cls_logits.bias",
            "heads.grounding.cls_logits.weight",
        ]  # official: the frozen cls_logits
    finally:
        model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------
# Hand-computed terms


def test_focal_loss_by_hand() -> None:
    logits = torch.tensor([0.0, 0.0, 2.0, -3.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    expected = []
    for x, t in zip(logits.tolist(), targets.tolist()):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t else 1 - p
        expected.append((0.25 if t else 0.75) * -math.log(p_t) * (1 - p_t) ** 2)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    # x = 0, t = 1: 0.25 * log 2 * 0.5 ** 2.
    assert got[0].item() == pytest.approx(0.25 * math.log(2) * 0.25, rel=1e-6)


def test_giou_loss_by_hand() -> None:
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 3.0, 6.0]])
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 10.0, 10.0]])
    got = giou_loss(pred, target)
    # Identical: 0. Disjoint unit squares 1 px apart: IoU 0, enclosing 3, union 2 -> 1 + 1/3.
    # Overlap 1 of union 7, enclosing 9: 1 - (1/7 - 2/9). Inverted prediction (x2 < x1) is
    # flattened to zero width: IoU 0, enclosing = target -> 1 + (100 - 100) / 100 = 1.
    assert got.tolist() == pytest.approx([0.0, 4 / 3, 1 - (1 / 7 - 2 / 9), 1.0], abs=1e-6)


# --------------------------------------------------------------------------------------------
# A small synthetic batch (image 64 x 96, T = 16)

_SIZES = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
_T = 16


def _synthetic_targets(empty_second: bool = False) -> list[GroundingTargets]:
    pmap0 = torch.zeros((2, _T), dtype=torch.bool)
    pmap0[0, 1:3] = True
    pmap0[1, 4] = True
    pmap1 = torch.zeros((1, _T), dtype=torch.bool)
    pmap1[0, 1:4] = True
    first = GroundingTargets(torch.tensor([[4.0, 6.0, 40.0, 50.0], [50.0, 10.0, 90.0, 60.0]]), pmap0)
    second = (
        GroundingTargets.empty(_T)
        if empty_second
        else GroundingTargets(torch.tensor([[10.0, 10.0, 60.0, 60.0]]), pmap1)
    )
    return [first, second]


def _synthetic_batch(seed: int = 0) -> tuple[HeadOutputs, list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    head = HeadOutputs(
        box_regression=[0.5 * torch.randn((2, 4, h, w), generator=gen) for h, w in _SIZES],
        centerness=[torch.randn((2, 1, h, w), generator=gen) for h, w in _SIZES],
        dot_product_logits=[3 * torch.randn((2, h * w, _T), generator=gen) for h, w in _SIZES],
        num_classes=80,
    )
    for tensors in (head.box_regression, head.centerness, head.dot_product_logits):
        for t in tensors:
            t.requires_grad_(True)
    mask = torch.zeros((2, _T), dtype=torch.int64)
    mask[0, :8] = 1
    mask[1, :6] = 1
    return head, AnchorGenerator()(_SIZES), mask


def _image(head: HeadOutputs, i: int) -> HeadOutputs:
    pick = lambda ts: [t[i : i + 1] for t in ts]  # noqa: E731
    return HeadOutputs(pick(head.box_regression), pick(head.centerness), pick(head.dot_product_logits), 80)


# Pinned from this implementation (which matches the official fixtures bit for bit);
# a refactor that changes any of them changes the objective.
_GOLDEN = {
    "loss_reg": 1.0772769451141357,
    "loss_centerness": 0.8106761574745178,
    "loss_dot_product_token": 50.30614471435547,
}
_GOLDEN_POSITIVES = 27  # 9 per box


def test_golden_values_on_a_seeded_batch() -> None:
    head, anchors, mask = _synthetic_batch()
    criterion = _criterion()
    assigned = criterion.assign(anchors, _synthetic_targets())
    assert assigned.num_positives == _GOLDEN_POSITIVES
    losses = criterion.compute(head, anchors, mask, assigned)
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(_GOLDEN, rel=1e-6)


def test_normalisers_are_batch_level() -> None:
    """Token and centerness losses are divided by the batch's positive count, the GIoU sum by
    the batch's centerness-target sum: per-image losses recombine with those weights."""
    head, anchors, mask = _synthetic_batch()
    criterion = _criterion()
    targets = _synthetic_targets()
    batch = criterion(head, anchors, mask, targets)
    assigned = [criterion.assign(anchors, [t]) for t in targets]
    pos = [a.num_positives for a in assigned]
    ctr = [a.centerness[a.positive].sum().item() for a in assigned]
    single = [criterion(_image(head, i), anchors, mask[i : i + 1], [targets[i]]) for i in range(2)]
    for key, weights, norm in (
        ("loss_dot_product_token", pos, sum(pos)),
        ("loss_centerness", pos, sum(pos)),
        ("loss_reg", ctr, sum(ctr)),
    ):
        recombined = sum(s[key].item() * w for s, w in zip(single, weights)) / norm
        assert batch[key].item() == pytest.approx(recombined, rel=1e-5)


def test_only_attended_tokens_count_and_noobj_counts_when_attended() -> None:
    head, anchors, mask = _synthetic_batch()
    criterion = _criterion()
    targets = _synthetic_targets()
    base = criterion(head, anchors, mask, targets)["loss_dot_product_token"]
    # Padding logits do not matter.
    for logits in head.dot_product_logits:
        with torch.no_grad():
            logits[0, :, 8:] = 1e4
    assert torch.equal(criterion(head, anchors, mask, targets)["loss_dot_product_token"], base)
    # When the last slot is attended (a caption filling all T tokens), the [NoObj] target of
    # background anchors there joins the loss.
    head, anchors, mask = _synthetic_batch()
    full = torch.ones_like(mask)
    assigned = criterion.assign(anchors, targets)
    logits = torch.cat(head.dot_product_logits, dim=1).detach()  # [B, N, T]
    terms = sigmoid_focal_loss(logits, assigned.tokens)  # [B, N, T]
    expected = terms.sum() / assigned.num_positives
    got = criterion.compute(head, anchors, full, assigned)["loss_dot_product_token"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (assigned.tokens[~assigned.positive][:, -1] == 1).all()


def test_images_without_boxes() -> None:
    head, anchors, mask = _synthetic_batch()
    criterion = _criterion()
    # One empty image next to a normal one: finite, and the empty image's anchors are all [NoObj].
    losses = criterion(head, anchors, mask, _synthetic_targets(empty_second=True))
    assert all(torch.isfinite(v) for v in losses.values())
    # No box at all: regression and centerness are exact zeros still attached to the graph;
    # the token loss is divided by 1.
    empty = [GroundingTargets.empty(_T), GroundingTargets.empty(_T)]
    losses = criterion(head, anchors, mask, empty)
    assert losses["loss_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    logits = torch.cat(head.dot_product_logits, dim=1).detach()
    noobj = torch.zeros_like(logits)
    noobj[..., -1] = 1
    attended = (mask > 0)[:, None, :].expand_as(logits)
    expected = sigmoid_focal_loss(logits[attended], noobj[attended]).sum()
    assert losses["loss_dot_product_token"].item() == pytest.approx(expected.item(), rel=1e-6)
    sum(losses.values()).backward()
    assert all((t.grad == 0).all() for t in head.box_regression + head.centerness)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_head_outputs_and_autocast(dtype: torch.dtype) -> None:
    """The loss runs in fp32 whatever the head's precision (as the official custom_fwd)."""
    head, anchors, mask = _synthetic_batch()
    criterion = _criterion()
    targets = _synthetic_targets()
    fp32 = criterion(head, anchors, mask, targets)
    cast = lambda ts: [t.detach().to(dtype).requires_grad_(True) for t in ts]  # noqa: E731
    half = HeadOutputs(cast(head.box_regression), cast(head.centerness), cast(head.dot_product_logits), 80)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(half, anchors, mask, targets)
    for key in LOSS_KEYS:
        assert losses[key].dtype == torch.float32 and torch.isfinite(losses[key])
        assert losses[key].item() == pytest.approx(fp32[key].item(), rel=2e-2)
    sum(losses.values()).backward()
    assert all(t.grad.dtype == dtype and torch.isfinite(t.grad).all() for t in half.dot_product_logits)


def test_extreme_logits_stay_finite() -> None:
    head, anchors, mask = _synthetic_batch()
    for i, logits in enumerate(head.dot_product_logits):
        with torch.no_grad():
            logits.fill_(5e4 if i % 2 else -5e4)  # the head's clamp bounds
    losses = _criterion()(head, anchors, mask, _synthetic_targets())
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(t.grad).all() for t in head.dot_product_logits)


class _FixedHead(torch.nn.Module):
    """A stand-in head whose loss returns given values."""

    def __init__(self, **values: float) -> None:
        super().__init__()
        self.values = values

    def loss(self, output, inputs) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v) for k, v in self.values.items()}


def test_criterion_weighs_each_head_and_refuses_duplicate_names() -> None:
    head, anchors, mask = _synthetic_batch()
    criterion = Criterion(ATSSAssigner(BoxCoder()), {"a": 2.0, "b": 0.0})
    inputs = criterion.prepare(anchors, mask, _synthetic_targets())
    assert inputs.num_pos_avg == _GOLDEN_POSITIVES
    heads = {"a": _FixedHead(loss_x=1.5, loss_y=-1.0), "b": _FixedHead(loss_z=7.0), "c": _FixedHead(loss_w=3.0)}
    outputs = {"a": None, "b": None, "c": None}
    losses = criterion.combine(heads, outputs, inputs)
    # "a" doubled, "b" (weight 0) skipped, "c" (not listed) at weight 1.
    assert {k: v.item() for k, v in losses.items()} == {"loss_x": 3.0, "loss_y": -2.0, "loss_w": 3.0}
    # A head that did not run (no output) contributes nothing.
    assert set(criterion.combine(heads, {"c": None}, inputs)) == {"loss_w"}
    with pytest.raises(ValueError, match="loss_x"):
        criterion.combine({"a": heads["a"], "d": _FixedHead(loss_x=1.0)}, {"a": None, "d": None}, inputs)


def test_mismatched_inputs_raise() -> None:
    head, anchors, mask = _synthetic_batch()
    with pytest.raises(ValueError, match="targets"):
        _criterion()(head, anchors, mask, _synthetic_targets()[:1])
    with pytest.raises(ValueError, match="disagree"):
        _criterion()(head, anchors, mask[:, :8], _synthetic_targets())


# --------------------------------------------------------------------------------------------
# Several processes: each holds one image; DDP averages the gradients.


def _distributed_worker(rank: int, world: int, store: str, out_dir: str, empty_second: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        head, anchors, mask = _synthetic_batch()
        mine = _image(head, rank)
        losses = _criterion()(mine, anchors, mask[rank : rank + 1], [_synthetic_targets(empty_second)[rank]])
        sum(losses.values()).backward()
        grads = [t.grad for t in head.box_regression + head.centerness + head.dot_product_logits]
        torch.save({"losses": {k: v.detach() for k, v in losses.items()}, "grads": grads}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("empty_second", [False, True])
def test_two_processes_equal_one_process(tmp_path: Path, empty_second: bool) -> None:
    """Mean of the per-process losses and of their gradients (what DDP applies) equals the
    one-process loss on the whole batch; a process without positives still joins every
    collective (no hang)."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "store"), str(tmp_path), empty_second), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    head, anchors, mask = _synthetic_batch()
    full = _criterion()(head, anchors, mask, _synthetic_targets(empty_second))
    sum(full.values()).backward()
    for key in LOSS_KEYS:
        mean = sum(r["losses"][key] for r in ranks) / 2
        assert mean.item() == pytest.approx(full[key].item(), rel=1e-5, abs=1e-7)
    for i, t in enumerate(head.box_regression + head.centerness + head.dot_product_logits):
        ddp = (ranks[0]["grads"][i] + ranks[1]["grads"][i]) / 2
        torch.testing.assert_close(ddp, t.grad, rtol=1e-5, atol=1e-8)
