"""GLIPv2 inter-image region-word contrastive loss (L_inter): parity with the official fixture,
a naive float64 reference on a hand-made batch, gradcheck, row selection, and 2 processes = 1."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from glip.modeling.losses.inter_image import (
    OFFICIAL_INTER_IMAGE_KEYS,
    InterImageContrastiveLoss,
    flatten_levels,
    masked_logits,
)
from glip.modeling.losses.region_targets import (
    RegionSelection,
    RegionWordTargets,
    region_candidates,
    select_regions,
)
from glip.utils.seeding import sample_generators, sample_seed
from tests.conftest import FIXTURES

INTER_CASE = FIXTURES / "official_train_v2" / "tiny_glip_t_inter" / "case.pth"
_OFFICIAL_BACKGROUND = -1e8  # official INF: anchors_to_gt_values of background anchors

# ---------------------------------------------------------------- hand-made batch
# Global vocabulary: cat 0, dog 1, bird 2. Images 0 and 1 both have a cat (image 1's prompt
# also names "dog", a negative class there); image 2 has a bird nobody else names; image 3
# is grounding data without class ids. N = 10 anchors, T = 8 tokens.
_N, _T, _C, _D = 10, 8, 5, 6
_TOKEN_CLASS = [
    [-1, 0, -1, 1, -1, -1, -1, -1],  # "[CLS] cat . dog . [SEP]"
    [-1, 1, -1, 0, 0, -1, -1, -1],  # "[CLS] dog . black cat [SEP]"
    [-1, 2, -1, -1, -1, -1, -1, -1],  # "[CLS] bird . [SEP]"
    [-1, -1, -1, -1, -1, -1, -1, -1],  # a caption
]
_TEXT_LEN = [6, 6, 4, 7]
_BOX_TOKENS = [[[1], [3]], [[3, 4]], [[1]], [[1, 2], [4]]]
_BOX_CLASS = [[0, 1], [0], [2], [-1, -1]]
_MATCHES = [  # anchor -> box of every ATSS positive
    {0: 0, 1: 0, 2: 0, 5: 1, 6: 1},
    {3: 0, 4: 0},
    {7: 0},
    {0: 0, 9: 0, 5: 1},
]


def hand_targets(images: range = range(4)) -> RegionWordTargets:
    count = len(images)
    positive = torch.zeros((count, _N), dtype=torch.bool)
    matched = torch.full((count, _N), -1)
    box_tokens = torch.zeros((count, 2, _T), dtype=torch.bool)
    box_class = torch.full((count, 2), -1)
    text_mask = torch.zeros((count, _T), dtype=torch.int64)
    for row, b in enumerate(images):
        for anchor, box in _MATCHES[b].items():
            positive[row, anchor], matched[row, anchor] = True, box
        for g, tokens in enumerate(_BOX_TOKENS[b]):
            box_tokens[row, g, tokens] = True
            box_class[row, g] = _BOX_CLASS[b][g]
        text_mask[row, : _TEXT_LEN[b]] = 1
    token_class = torch.tensor([_TOKEN_CLASS[b] for b in images])
    return RegionWordTargets(positive, matched, box_tokens, box_class, token_class, text_mask)


def hand_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, _N, _C, generator=g, dtype=torch.float64), torch.randn(
        4, _T, _D, generator=g, dtype=torch.float64
    )


def hand_loss(**kwargs) -> InterImageContrastiveLoss:
    torch.manual_seed(0)
    loss = InterImageContrastiveLoss(_C, _D, hidden_dim=4, max_positive=4, weight=0.7, **kwargs).double()
    with torch.no_grad():
        loss.log_scale.fill_(-0.3)  # a temperature other than 1
        loss.image_proj.bias.normal_()  # non-zero biases exercise their gradients too
        loss.text_proj.bias.normal_()
    return loss


def generators(images: range = range(4)) -> list[torch.Generator]:
    return sample_generators([sample_seed(7, 0, b) for b in images])


def naive_loss(module, features, text, targets, selection) -> tuple[float, list[list[bool]]]:
    """L_inter written from the formula with loops (one process)."""
    w_i, b_i = module.image_proj.weight.detach(), module.image_proj.bias.detach()
    w_t, b_t = module.text_proj.weight.detach(), module.text_proj.bias.detach()
    temp = math.exp(float(module.log_scale.detach()))
    num_img, num_rows = selection.anchor_index.shape
    rows, cols = [], []  # (embedding, class, own tokens, image, ok)
    for b in range(num_img):
        for a in range(num_rows):
            anchor = int(selection.anchor_index[b, a])
            vec = F.normalize(w_i @ features[b, anchor].detach() + b_i, dim=0)
            ok = bool(selection.valid[b, a])
            box = _MATCHES[b].get(anchor, -1) if bool(selection.is_positive[b, a]) else -1
            cls = _BOX_CLASS[b][box] if box >= 0 else -1
            own = set(_BOX_TOKENS[b][box]) if box >= 0 else set()
            rows.append((vec * ok, cls, own, b, ok))
    for b in range(num_img):
        for t in range(_T):
            vec = F.normalize(w_t @ F.normalize(text[b, t].detach(), dim=0) + b_t, dim=0)
            cols.append((vec, _TOKEN_CLASS[b][t], t, b, t < _TEXT_LEN[b]))
    target = [[False] * len(cols) for _ in rows]
    logit = [[0.0] * len(cols) for _ in rows]
    for i, (rv, rc, own, rb, rok) in enumerate(rows):
        for j, (cv, cc, t, cb, cok) in enumerate(cols):
            target[i][j] = (t in own) if rb == cb else (rc >= 0 and rc == cc)
            logit[i][j] = float(rv @ cv) / temp if (rok and cok) else -1e6

    def softmax_ce(scores: list[float], positives: list[bool]) -> float:
        if not any(positives):
            return 0.0
        top = max(scores)
        log_z = top + math.log(sum(math.exp(s - top) for s in scores))
        return sum(-(s - log_z) / sum(positives) for s, p in zip(scores, positives) if p)

    b2t = sum(softmax_ce(logit[i], target[i]) for i in range(len(rows)))
    t2b = sum(softmax_ce([logit[i][j] for i in range(len(rows))], [target[i][j] for i in range(len(rows))])
              for j in range(len(cols)))  # fmt: skip
    num_pos = sum(len(m) for m in _MATCHES)
    return (b2t + t2b) / 2 / max(num_pos, 1) * module.weight, target


@pytest.mark.parametrize("zero_pad", [False, True])
def test_matches_naive_reference(zero_pad: bool) -> None:
    module = hand_loss(zero_pad=zero_pad)
    features, text = hand_inputs()
    targets = hand_targets()
    selection = module.select(targets, generators())
    out = module.compute(features, text, targets, selection)
    expected, expected_targets = naive_loss(module, features, text, targets, selection)
    assert out.targets.tolist() == expected_targets
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-10)
    # forward() = select + compute with the same per-image generators.
    assert math.isclose(
        float(module(features, text, targets, generators())["loss_inter"].detach()), expected, rel_tol=1e-10
    )

    # The batch exercises what it should: 4 rows (image 0 subsampled from 5), pads, and
    # propagated cross-image positives only between same-class rows and class-name tokens.
    assert selection.num_rows == 4 and selection.is_positive.sum(1).tolist() == [4, 2, 1, 3]
    assert (~selection.valid).sum().item() == (6 if zero_pad else 0)
    blocks = out.targets.reshape(4, 4, 4, _T).sum(dim=(1, 3))  # [image of row, image of token]
    assert blocks[0, 1] > 0 and blocks[1, 0] > 0  # cat <-> cat, dog -> image 1's negative "dog"
    assert blocks[2].tolist() == [0, 0, blocks[2, 2].item(), 0] and blocks[2, 2] > 0  # bird: own block only
    assert blocks[3].tolist() == [0, 0, 0, blocks[3, 3].item()] and blocks[:, 3].tolist()[:3] == [0, 0, 0]


class _Compute(torch.nn.Module):
    """``compute`` as a forward, so ``functional_call`` can substitute the parameters."""

    def __init__(self, loss: InterImageContrastiveLoss, targets: RegionWordTargets, selection: RegionSelection) -> None:
        super().__init__()
        self.loss, self.targets, self.selection = loss, targets, selection

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.loss.compute(features, text, self.targets, self.selection).loss


def test_gradcheck_float64() -> None:
    """Gradients w.r.t. region features, text features, both projections and the temperature."""
    module = hand_loss()
    features, text = hand_inputs()
    targets = hand_targets()
    wrapper = _Compute(module, targets, module.select(targets, generators()))
    names = [f"loss.{n}" for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in module.named_parameters()]

    def fn(feat: torch.Tensor, txt: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(wrapper, dict(zip(names, values)), (feat, txt))

    inputs = (features.requires_grad_(), text.requires_grad_(), *params)
    assert len(params) == 5
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_official_nonzero_quirk_switch() -> None:
    """drop_first_gt_match reproduces the official ``nonzero(anchors_to_gt_indexs)``: anchors
    of box 0 leave the rows (image 2, a single box, keeps none) but stay in the normaliser
    and in the negative pool; the default keeps them."""
    targets = hand_targets()
    rows, pool = region_candidates(targets.positive, targets.matched_gt, drop_first_gt_match=True)
    assert rows.sum(1).tolist() == [2, 0, 0, 1]
    assert pool[1, 3] and pool[2, 7]  # box-0 positives can be drawn as "negatives"
    rows_default, pool_default = region_candidates(targets.positive, targets.matched_gt)
    assert torch.equal(rows_default, targets.positive) and torch.equal(pool_default, ~targets.positive)

    features, text = hand_inputs()
    official = hand_loss(drop_first_gt_match=True)
    out = official.compute(features, text, targets, official.select(targets, generators()))
    assert out.num_pos_avg == 11.0  # every ATSS positive
    assert out.selection.is_positive.sum(1).tolist() == [2, 0, 0, 1]
    default = hand_loss().compute(features, text, targets, hand_loss().select(targets, generators()))
    assert not math.isclose(float(out.loss.detach()), float(default.loss.detach()), rel_tol=1e-3)


def test_select_regions_properties() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.rand(3, 50, generator=g) < 0.3
    rows[2] = False
    pool = ~rows
    keys = torch.rand(3, 50, generator=g)
    sel = select_regions(rows, pool, keys, num_rows=8, max_positive=8)
    for b in range(3):
        n = int(sel.is_positive[b].sum())
        assert n == min(int(rows[b].sum()), 8)
        pos, neg = sel.anchor_index[b, :n], sel.anchor_index[b, n:]
        assert rows[b, pos].all() and pool[b, neg].all()
        assert torch.equal(pos, pos.sort().values) and torch.equal(neg, neg.sort().values)
        assert len(set(sel.anchor_index[b].tolist())) == 8 and sel.valid[b].all()
        # The kept positives are the ones with the smallest keys (a uniform random subset).
        expected = keys[b].masked_fill(~rows[b], 2).argsort()[:n].sort().values
        assert torch.equal(pos, expected)
    # A pool too small for the pads: the rest become zero pads.
    tiny_pool = torch.zeros_like(pool)
    tiny_pool[:, :2] = True
    short = select_regions(rows & ~tiny_pool, tiny_pool, keys, num_rows=8, max_positive=3)
    assert (short.valid.sum(1) == short.is_positive.sum(1) + 2).all()
    # Per-image generators: an image's rows do not depend on the other images.
    module = InterImageContrastiveLoss(_C, _D, max_positive=4)
    targets = hand_targets()
    full = module.select(targets, generators())
    again = module.select(targets, generators())
    assert torch.equal(full.anchor_index, again.anchor_index)
    half = module.select(hand_targets(range(0, 2)), generators(range(0, 2)))
    assert torch.equal(half.anchor_index, full.anchor_index[:2])


def test_empty_and_shapes() -> None:
    module = hand_loss()
    features, text = hand_inputs()
    targets = hand_targets()
    targets.positive[:] = False
    targets.matched_gt[:] = -1
    out = module.compute(features.requires_grad_(), text, targets, module.select(targets, generators()))
    assert out.selection.num_rows == 0 and float(out.loss.detach()) == 0.0
    out.loss.backward()  # connected to the graph, zero gradient
    assert float(features.grad.abs().sum()) == 0.0
    maps = [torch.randn(2, 3, 4, 5), torch.randn(2, 3, 2, 3)]
    flat = flatten_levels(maps)
    assert flat.shape == (2, 26, 3) and torch.equal(flat[1, 4 * 5 + 3], maps[1][1, :, 1, 0])
    with pytest.raises(ValueError, match="unknown variant"):
        InterImageContrastiveLoss(4, 4, variant="roi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="encoder_text"):
        InterImageContrastiveLoss(_C, _D, text_source="encoder")(features, text, hand_targets(), generators())


def test_text_source_encoder_uses_encoder_text() -> None:
    module = hand_loss(text_source="encoder")
    features, text = hand_inputs()
    fused = torch.randn_like(text)
    picked = module(features, fused, hand_targets(), generators(), encoder_text=text)["loss_inter"]
    direct = hand_loss()(features, text, hand_targets(), generators())["loss_inter"]
    assert torch.equal(picked, direct)


# ---------------------------------------------------------------- official fixture
def _official_inputs(case: dict) -> tuple[RegionWordTargets, RegionSelection]:
    shallow, per_image = case["shallow"], case["prepare_targets_per_image"]
    positive = torch.stack([p["anchors_to_gt_values"] != _OFFICIAL_BACKGROUND for p in per_image])
    matched = torch.where(positive, torch.stack([p["anchors_to_gt_indexs"] for p in per_image]), -1)
    num_boxes = max(p["num_gt"] for p in per_image)
    box_tokens = torch.zeros((2, num_boxes, 256), dtype=torch.bool)
    box_class = torch.full((2, num_boxes), -1)
    for b, p in enumerate(per_image):
        box_tokens[b, : p["num_gt"]] = p["map_tokens_positive_to_tokens"]
        box_class[b, : p["num_gt"]] = p["gold_box_od_label"]  # labelmap ids: one vocabulary here
    # Official token labels: category id, 0 on " background " (no category), -1 elsewhere.
    token_class = torch.stack([p["od_label_of_token_per_im"] for p in per_image]).long()
    token_class = torch.where(token_class > 0, token_class, torch.full_like(token_class, -1))
    targets = RegionWordTargets(positive, matched, box_tokens, box_class, token_class, shallow["text_masks"])
    pos, neg = shallow["new_positive_indices"], shallow["new_negative_pad_indices"]
    index = torch.tensor([p + n for p, n in zip(pos, neg)])
    is_positive = torch.arange(index.shape[1])[None, :] < torch.tensor([len(p) for p in pos])[:, None]
    return targets, RegionSelection(index, is_positive, torch.ones_like(is_positive))


@pytest.fixture(scope="module")
def inter_case() -> dict:
    if not INTER_CASE.is_file():
        pytest.skip(f"official fixtures not found at {INTER_CASE.parent}")
    return torch.load(INTER_CASE, weights_only=True)


def _official_module(case: dict, **kwargs) -> InterImageContrastiveLoss:
    kwargs.setdefault("drop_first_gt_match", True)
    module = InterImageContrastiveLoss(64, 48, max_positive=12, **kwargs)
    state = case["shallow_projection_init_state_dict"]
    module.load_state_dict({OFFICIAL_INTER_IMAGE_KEYS[k]: v for k, v in state.items()})
    return module


def test_official_loss_targets_logits_and_gradients(inter_case: dict) -> None:
    shallow, internals = inter_case["shallow"], inter_case["loss_internals"]
    targets, selection = _official_inputs(inter_case)
    module = _official_module(inter_case, normalize_text=False)  # proj_tokens are already normalised
    features = shallow["shallow_img_embs"].clone().requires_grad_()
    text = shallow["proj_tokens"].clone().requires_grad_()
    out = module.compute(features, text, targets, selection)

    assert out.num_pos_avg == internals["num_pos_avg_per_gpu"] == 45.0
    torch.testing.assert_close(out.loss, internals["shallow_contrastive_loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out.box_to_token, internals["box_to_token_loss"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out.token_to_box, internals["token_to_box_loss"], rtol=1e-6, atol=0)
    assert float(out.loss.detach()) == pytest.approx(0.8762041926, rel=1e-6)
    assert torch.equal(out.targets, shallow["shallow_positive_map"][0])  # 42 pairs, cross-image ones included
    assert int(out.targets.sum()) == 42
    torch.testing.assert_close(out.logits, shallow["shallow_contrastive_logits"][0], rtol=0, atol=1e-6)
    # From the recorded projected embeddings, the logits are bit-identical.
    exact = masked_logits(
        shallow["gathered_shallow_normalized_img_emb"], shallow["gathered_shallow_normalized_text_emb"],
        shallow["shallow_log_scale"], torch.ones(24, dtype=torch.bool), shallow["text_masks"].reshape(-1) != 0,
    )  # fmt: skip
    assert torch.equal(exact, shallow["shallow_contrastive_logits"][0])

    out.loss.backward()
    grads = inter_case["grads_named"]
    for official, ours in OFFICIAL_INTER_IMAGE_KEYS.items():
        torch.testing.assert_close(
            dict(module.named_parameters())[ours].grad, grads[f"rpn.loss_evaluator.{official}"], rtol=1e-5, atol=1e-8
        )
    wrt = inter_case["grad_loss_shallow_contrastive_wrt"]
    torch.testing.assert_close(features.grad, wrt["shallow_img_embs"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(text.grad, wrt["proj_tokens"], rtol=1e-5, atol=1e-8)

    # Normalising the (already unit) text again changes nothing beyond rounding.
    again = _official_module(inter_case).compute(
        shallow["shallow_img_embs"], shallow["proj_tokens"], targets, selection
    )
    torch.testing.assert_close(again.loss, internals["shallow_contrastive_loss"], rtol=1e-6, atol=0)


def test_official_rows_and_the_default_difference(inter_case: dict) -> None:
    shallow = inter_case["shallow"]
    targets, _ = _official_inputs(inter_case)
    rows, _ = region_candidates(targets.positive, targets.matched_gt, drop_first_gt_match=True)
    assert [torch.nonzero(r).flatten().tolist() for r in rows] == shallow["positive_indices"]
    default_rows, _ = region_candidates(targets.positive, targets.matched_gt)
    for b, effect in enumerate(inter_case["nonzero_anchors_to_gt_indexs_effect"]):
        dropped = torch.nonzero(default_rows[b] & ~rows[b]).flatten().tolist()
        assert dropped == effect["dropped_gt0_anchors"] and len(dropped) == 9
    # Our sampler with the official switch: 9 + 12 positive rows and 3 negatives (A = 12), as recorded.
    official = _official_module(inter_case)
    sel = official.select(targets, sample_generators([1, 2]))
    assert sel.num_rows == shallow["max_anchor_num"] == 12
    assert sel.is_positive.sum(1).tolist() == [9, 12]
    assert sel.anchor_index[0, :9].tolist() == shallow["new_positive_indices"][0]
    # The default keeps the cat / person anchors: both images fill 12 positive rows, and
    # chelsea's cat rows now have targets (its "cat" token and astronaut's "cat" token).
    default = _official_module(inter_case, drop_first_gt_match=False)
    sel_default = default.select(targets, sample_generators([1, 2]))
    assert sel_default.is_positive.sum(1).tolist() == [12, 12]
    out = default.compute(shallow["shallow_img_embs"], shallow["proj_tokens"], targets, sel_default)
    cat_rows = [a for a, i in enumerate(sel_default.anchor_index[0].tolist()) if int(targets.matched_gt[0, i]) == 0]
    assert cat_rows and all(out.targets[a].sum() == 2 for a in cat_rows)


# ---------------------------------------------------------------- two processes
def _distributed_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        mine = range(2 * rank, 2 * rank + 2)
        for sum_grads in (True, False):
            module = hand_loss(sum_grads_across_processes=sum_grads)
            features, text = hand_inputs()
            features = features[2 * rank : 2 * rank + 2].clone().requires_grad_()
            text = text[2 * rank : 2 * rank + 2].clone().requires_grad_()
            loss = module(features, text, hand_targets(mine), generators(mine))["loss_inter"]
            loss.backward()
            grads = {n: p.grad for n, p in module.named_parameters()}
            torch.save({"loss": loss.detach(), "grads": grads, "features": features.grad, "text": text.grad},
                       Path(out_dir) / f"rank{rank}_{sum_grads}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(tmp_path: Path) -> None:
    """The mean of the per-process losses and of their parameter gradients (what DDP applies)
    equals one process on the whole batch; each process's input gradient is W times the
    single-process one (DDP's 1/W comes later, on the parameters). The official gather
    (``sum_grads_across_processes=False``) keeps the loss but loses the cross-process
    gradient terms."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)

    module = hand_loss()
    features, text = hand_inputs()
    features.requires_grad_()
    text.requires_grad_()
    loss = module(features, text, hand_targets(), generators())["loss_inter"]
    loss.backward()
    for sum_grads in (True, False):
        ranks = [torch.load(tmp_path / f"rank{r}_{sum_grads}.pt", weights_only=True) for r in range(2)]
        torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-12, atol=0)
        mean_grads = {n: (ranks[0]["grads"][n] + ranks[1]["grads"][n]) / 2 for n in ranks[0]["grads"]}
        both_features = torch.cat([r["features"] for r in ranks]) / 2
        both_text = torch.cat([r["text"] for r in ranks]) / 2
        if sum_grads:
            for name, param in module.named_parameters():
                torch.testing.assert_close(mean_grads[name], param.grad, rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(both_features, features.grad, rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(both_text, text.grad, rtol=1e-10, atol=1e-13)
        else:
            assert not torch.allclose(mean_grads["text_proj.weight"], module.text_proj.weight.grad, rtol=1e-3)
            assert not torch.allclose(both_text, text.grad, rtol=1e-3)


def test_build_from_atss_assignment() -> None:
    """RegionWordTargets from the real ATSS assignment, then the loss on flattened FPN maps."""
    from glip.modeling.criterion import Criterion
    from glip.modeling.heads.grounding.assigner import ATSSAssigner
    from glip.modeling.heads.grounding.box_coder import BoxCoder
    from glip.structures.targets import GroundingTargets

    centres = torch.arange(4, 64, 8, dtype=torch.float32)  # one 8 x 8 level, stride 8
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    anchors = [torch.stack([cx - 8, cy - 8, cx + 8, cy + 8], dim=-1).reshape(-1, 4)]  # [64, 4] row-major
    width = 8
    maps = torch.zeros((3, 2, width), dtype=torch.bool)
    maps[0, 0, 1], maps[0, 1, 3], maps[1, 0, 2] = True, True, True
    targets = [
        GroundingTargets(torch.tensor([[4.0, 4.0, 30.0, 30.0], [34.0, 34.0, 60.0, 60.0]]), maps[0]),
        GroundingTargets(torch.tensor([[10.0, 20.0, 50.0, 50.0]]), maps[1, :1]),
        GroundingTargets.empty(width),
    ]
    assigned = Criterion(ATSSAssigner(BoxCoder())).assign(anchors, targets)
    text_mask = torch.ones((3, width), dtype=torch.int64)
    token_class = torch.full((3, width), -1)
    token_class[0, 1], token_class[1, 2], token_class[2, 5] = 4, 4, 4  # class 4 named in every prompt
    built = RegionWordTargets.build(
        assigned, targets, text_mask, box_class=[torch.tensor([4, 9]), torch.tensor([4]), None], token_class=token_class
    )
    assert built.matched_gt.shape == (3, 64) and built.box_tokens.shape == (3, 2, width)
    assert torch.equal(built.matched_gt >= 0, assigned.positive)
    assert built.box_class.tolist() == [[4, 9], [4, -1], [-1, -1]]
    assert torch.equal(built.box_tokens[1, 0], maps[1, 0]) and not built.box_tokens[2].any()

    torch.manual_seed(0)
    module = InterImageContrastiveLoss(3, 5, hidden_dim=4)
    fpn = [torch.randn(3, 3, 8, 8, requires_grad=True)]
    out = module.compute(
        flatten_levels(fpn), torch.randn(3, width, 5), built, module.select(built, generators(range(3)))
    )
    assert out.num_pos_avg == float(assigned.num_positives)
    # Class-4 rows of image 0 see the class-4 tokens of images 1 and 2; image 2 (no boxes) has only pads.
    rows_img0 = out.targets.reshape(3, -1, 3, width)[0]  # [A, image, T]
    class4 = built.matched_gt[0].gather(0, out.selection.anchor_index[0]) == 0
    assert class4.any() and rows_img0[class4][:, 1, 2].all() and rows_img0[class4][:, 2, 5].all()
    assert not out.selection.is_positive[2].any()
    out.loss.backward()
    assert fpn[0].grad.abs().sum() > 0


def test_backbone_variant_pools_the_body_map_at_the_selected_anchor_boxes() -> None:
    """The backbone variant's rows are the stride-16 map ROI-aligned (1x1, aligned) over the
    selected anchors' boxes: on a map linear in (x, y) that is the map's value at each box's
    centre (``(x1 + x2) / 2 / 16 - 0.5`` in map cells); the loss is then the FPN variant's on
    those rows, with the same projections."""
    height, width = 12, 16  # the map of a 192 x 256 input
    slope = torch.randn(3, _C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    body = slope[0, :, None, None] * xs + slope[1, :, None, None] * ys + slope[2, :, None, None]  # [C, H, W]
    body = body[None].repeat(4, 1, 1, 1)  # [B, C, H, W]
    g = torch.Generator().manual_seed(5)
    centres = torch.rand(_N, 2, generator=g, dtype=torch.float64) * 100 + 50  # inside the image
    half = torch.rand(_N, 2, generator=g, dtype=torch.float64) * 30 + 10
    anchors = torch.cat([centres - half, centres + half], dim=1)  # [N, 4] x1 y1 x2 y2

    backbone = hand_loss(variant="backbone")
    fpn = hand_loss()
    fpn.load_state_dict(backbone.state_dict())
    targets = hand_targets()
    selection = backbone.select(targets, generators())
    rows = backbone.region_rows(body, selection, anchors)  # [B, A, C]
    cx = (anchors[:, 0] + anchors[:, 2]) / 2 / 16 - 0.5
    cy = (anchors[:, 1] + anchors[:, 3]) / 2 / 16 - 0.5
    expected = cx[:, None] * slope[0] + cy[:, None] * slope[1] + slope[2]  # [N, C]
    assert torch.allclose(rows, expected[selection.anchor_index], atol=1e-9)

    _, text = hand_inputs()
    got = backbone.compute(body, text, targets, selection, anchors=anchors).loss
    want = fpn.compute(expected[None].repeat(4, 1, 1), text, targets, selection).loss
    assert torch.allclose(got, want, rtol=1e-10)
    with pytest.raises(ValueError, match="anchor boxes"):
        backbone.compute(body, text, targets, selection)


def test_backbone_variant_keeps_the_default_linear_initialisation() -> None:
    torch.manual_seed(0)
    backbone = InterImageContrastiveLoss(_C, _D, variant="backbone")
    fpn = InterImageContrastiveLoss(_C, _D)
    assert bool((backbone.image_proj.bias != 0).any())  # nn.Linear's default, not zeros
    assert bool((fpn.image_proj.bias == 0).all()) and bool((fpn.text_proj.bias == 0).all())
