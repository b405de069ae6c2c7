"""MLM head and loss: shapes and a hand case, the empty case, and parity with the official fixture."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glip.modeling.heads.mlm import MLMHead, mlm_loss, remap_official_mlm_head
from tests.conftest import FIXTURES

MLM_CASE = FIXTURES / "official_train_v2" / "tiny_glip_t_mlm" / "case.pth"


def test_head_shapes_and_structure() -> None:
    head = MLMHead(8, 11)
    hidden = torch.randn(2, 5, 8)
    assert head(hidden).shape == (2, 5, 11)
    assert head.norm.eps == 1e-12 and torch.equal(head.decoder.bias, torch.zeros(11))
    # dense -> exact GELU -> LayerNorm -> decoder + bias
    manual = F.layer_norm(F.gelu(hidden @ head.dense.weight.t() + head.dense.bias), (8,), head.norm.weight,
                          head.norm.bias, 1e-12) @ head.decoder.weight.t() + head.decoder.bias  # fmt: skip
    torch.testing.assert_close(head(hidden), manual)


def test_loss_hand_case() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # token 0: p(2) = 3 / 6; token 2: p(1) = 1 / 4
    labels = torch.tensor([[2, -100, 1]])
    expected = (-math.log(0.5) - math.log(1 / 4)) / 2  # mean over the 2 scored tokens
    assert float(mlm_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert float(mlm_loss(logits, labels, coef=0.5)) == pytest.approx(expected / 2, rel=1e-6)
    assert mlm_loss(logits.half(), labels).dtype == torch.float32


def test_loss_nothing_scored_is_zero_not_nan() -> None:
    head = MLMHead(4, 7)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    labels = torch.full((2, 3), -100)
    loss = mlm_loss(head(hidden), labels)
    assert loss.item() == 0.0
    loss.backward()
    assert float(hidden.grad.abs().sum()) == 0.0
    assert head.loss(hidden, labels).item() == 0.0
    # What the official CrossEntropyLoss gives here (and why it is not used as is).
    official = F.cross_entropy(head(hidden).reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    assert math.isnan(official.item())


def test_scored_only_path_equals_full() -> None:
    torch.manual_seed(0)
    head = MLMHead(6, 20)
    hidden = torch.randn(3, 5, 6)
    labels = torch.full((3, 5), -100)
    labels[0, 1], labels[2, 4], labels[1, 0] = 3, 7, 19
    torch.testing.assert_close(head.loss(hidden, labels, 2.0), mlm_loss(head(hidden), labels, 2.0))


def test_official_fixture() -> None:
    """Recorded fused text + head init + recorded labels -> the official logits, loss and gradients."""
    if not MLM_CASE.is_file():
        pytest.skip(f"official fixtures not found at {MLM_CASE.parent}")
    case = torch.load(MLM_CASE, weights_only=True)
    head = MLMHead(48, 30522)
    head.load_state_dict(remap_official_mlm_head(case["mlm_head_init_state_dict"]))
    hidden = case["mlm_head_input_fused_hidden"].clone().requires_grad_()
    labels = case["random_word"]["mlm_labels"]
    assert torch.equal(torch.nonzero(labels != -100), case["mlm_scored_positions"])

    torch.testing.assert_close(head.dense(hidden), case["mlm_head_dense_out"], rtol=0, atol=1e-6)
    # After GELU and LayerNorm the vectorised kernels of different CPUs round differently: a
    # few float32 ulps (1.4e-6 seen on an AVX-512 EPYC), hence the relative term.
    torch.testing.assert_close(head.transform(hidden), case["mlm_head_transform_out"], rtol=1e-5, atol=1e-6)
    logits = head(hidden)
    assert list(logits.shape) == case["mlm_logits_shape"]
    scored = logits[labels != -100]  # [6, V]
    torch.testing.assert_close(scored, case["mlm_logits_at_scored"], rtol=0, atol=1e-5)
    per_position = F.cross_entropy(scored, labels[labels != -100], reduction="none")
    torch.testing.assert_close(per_position, case["mlm_per_position_ce"], rtol=1e-6, atol=0)

    loss = mlm_loss(logits, labels)
    torch.testing.assert_close(loss, case["loss_dict"]["mlm_loss"], rtol=1e-6, atol=0)
    assert loss.item() == pytest.approx(10.1505146027, rel=1e-6)
    torch.testing.assert_close(head.loss(hidden, labels), loss, rtol=1e-6, atol=0)

    loss.backward()
    torch.testing.assert_close(hidden.grad, case["grad_mlm_loss_wrt_mlm_head_input"], rtol=1e-5, atol=1e-8)
    grads = {k[len("rpn.head.mlm_head.") :]: v for k, v in case["grads_named"].items() if "mlm_head" in k}
    assert len(grads) == 6
    ours = dict(head.named_parameters())
    for name, expected in remap_official_mlm_head(grads).items():
        # Small entries of a weight gradient are sums of cancelling terms: held to 1e-5 of the
        # tensor's scale (CPUs with other vector kernels land a few 1e-8 apart on them).
        scale = expected.abs().max().item()
        torch.testing.assert_close(ours[name].grad, expected, rtol=1e-5, atol=max(1e-8, 1e-5 * scale))
