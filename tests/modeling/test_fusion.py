"""The fusion attention's inference path (re-associated around the text side, images in
chunks) against its training path (the official order of projections), on a batch whose
images have different prompts and padding: every chunking gives the same result, and each
image's result does not depend on the other images of its batch."""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import pytest
import torch
import torch.utils._python_dispatch

from glip.modeling.fusion.bi_attention import CUDA_CHUNK_ELEMENTS, BiMultiHeadAttention
from tests.allocations import NewStorages

B, N, T, C, D = 3, 37, 6, 16, 12


@pytest.fixture(scope="module")
def inputs() -> tuple[BiMultiHeadAttention, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    attention = BiMultiHeadAttention(C, D, embed_dim=32, num_heads=4, dropout=0.0)
    for p in attention.parameters():  # non-zero biases, so the bias terms are exercised
        torch.nn.init.normal_(p, std=0.3)
    v = torch.randn(B, N, C)
    t = torch.randn(B, T, D)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0  # image 1's prompt is 4 tokens, image 2's is 2
    mask[2, 2:] = 0
    return attention, v, t, mask


def _run(attention, v, t, mask, *, train: bool, chunk: int | None = None, update_visual: bool = True):
    attention.train(train)
    attention.images_per_chunk = chunk
    try:
        with torch.no_grad():
            return attention(v, t, mask, update_visual)
    finally:
        attention.images_per_chunk = None
        attention.eval()


@pytest.mark.parametrize("update_visual", [True, False])
@pytest.mark.parametrize("chunk", [None, 1, 2, 3])
def test_inference_chunks_equal_the_projected_path(inputs, chunk: int | None, update_visual: bool) -> None:
    attention, v, t, mask = inputs
    ref_v, ref_l = _run(attention, v, t, mask, train=True, update_visual=update_visual)
    out_v, out_l = _run(attention, v, t, mask, train=False, chunk=chunk, update_visual=update_visual)
    torch.testing.assert_close(out_l, ref_l, atol=1e-5, rtol=1e-5)
    if update_visual:
        torch.testing.assert_close(out_v, ref_v, atol=1e-5, rtol=1e-5)
    else:
        assert out_v is None and ref_v is None


def test_an_image_does_not_depend_on_its_batch(inputs) -> None:
    attention, v, t, mask = inputs
    whole_v, whole_l = _run(attention, v, t, mask, train=False, chunk=B)
    for i in range(B):
        alone_v, alone_l = _run(attention, v[i : i + 1], t[i : i + 1], mask[i : i + 1], train=False)
        torch.testing.assert_close(whole_v[i : i + 1], alone_v, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(whole_l[i : i + 1], alone_l, atol=1e-5, rtol=1e-5)


def test_the_cpu_runs_one_image_at_a_time_by_default(inputs, monkeypatch) -> None:
    attention, v, t, mask = inputs
    seen: list[int] = []
    inner = attention._forward_reassociated

    def spy(v, t, text_mask, update_visual=True, **kwargs):
        seen.append(v.shape[0])
        return inner(v, t, text_mask, update_visual, **kwargs)

    monkeypatch.setattr(attention, "_forward_reassociated", spy)
    _run(attention, v, t, mask, train=False)
    assert seen == [1, 1, 1]
    seen.clear()
    _run(attention, v, t, mask, train=False, chunk=2)
    assert seen == [2, 1]


def test_cuda_chunks_keep_one_attention_buffer_within_the_budget() -> None:
    attention = BiMultiHeadAttention(256, 768)  # GLIP-T widths: 8 heads
    pixels = 20267  # an 800x1216 input, five levels

    def chunk(tokens: int, device_is_cuda: bool = True) -> int:
        v = SimpleNamespace(is_cuda=device_is_cuda, shape=(8, pixels, 256))
        return attention._auto_chunk(v, SimpleNamespace(shape=(8, tokens, 768)))

    assert chunk(256) == 6 and 6 * pixels * 8 * 256 <= CUDA_CHUNK_ELEMENTS < 7 * pixels * 8 * 256
    assert chunk(16) == 103  # a trimmed prompt: a batch of 8 in one call
    assert chunk(256, device_is_cuda=False) == chunk(16, device_is_cuda=False) == 1
    assert (
        BiMultiHeadAttention(16, 16)._auto_chunk(
            SimpleNamespace(is_cuda=True, shape=(1, 10**8, 16)), SimpleNamespace(shape=(1, 256, 16))
        )
        == 1
    )  # never 0


class _Track(torch.utils._python_dispatch.TorchDispatchMode):
    """Weak references to every new tensor of ``numel`` elements."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.refs, self.most = numel, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() == self.numel:
                self.refs.append(weakref.ref(t))
                self.most = max(self.most, self.alive())
        return out

    def alive(self) -> int:
        """Distinct storages of the tracked tensors still alive."""
        return len({r().untyped_storage().data_ptr() for r in self.refs if r() is not None})


def test_the_inference_path_drops_each_attention_map_once_consumed(inputs, monkeypatch) -> None:
    """At the image -> text product at most three [B, N, hT] maps are alive (the logits, the
    masked logits' softmax and its input were five before), with the same result."""
    attention, v, t, mask = inputs
    v1, t1, m1 = v[:1], t[:1], mask[:1]
    reference = _run(attention, v1, t1, m1, train=False)
    alive: list[int] = []
    inner = torch.baddbmm

    def spy(*args, **kwargs):
        alive.append(track.alive())
        return inner(*args, **kwargs)

    monkeypatch.setattr(torch, "baddbmm", spy)
    with _Track(N * attention.num_heads * T) as track:
        out = _run(attention, v1, t1, m1, train=False)
    assert alive[-1] <= 2  # probs_v and the masked logits it was made from at most
    for a, b in zip(out, reference):
        assert torch.equal(a, b)


def test_the_block_forms_its_residual_in_place_at_inference_only() -> None:
    """Eval without gradients: ``LN(v) + gamma * delta`` is formed in delta's buffer (two
    [B, N, C] maps alive at the residual instead of four), bit-identical to the autograd path."""
    from glip.modeling.fusion.bi_attention import BiAttentionBlock

    torch.manual_seed(0)
    block = BiAttentionBlock(C, D, embed_dim=32, num_heads=4, init_values=0.5).eval()
    visual = [torch.randn(1, C, 5, 6), torch.randn(1, C, 3, 3)]
    text, mask = torch.randn(1, T, D), torch.ones(1, T, dtype=torch.long)
    with torch.enable_grad():
        reference = block(visual, text, mask)
    n = sum(f.shape[-2] * f.shape[-1] for f in visual)
    with torch.no_grad(), _Track(n * C) as track:
        out = block(visual, text, mask)
    assert track.most == 2 and track.alive() == 1  # LN(v) and delta at most; the output at the end
    for a, b in zip(out.visual, reference.visual):
        assert torch.equal(a, b.detach())
    assert torch.equal(out.text, reference.text.detach())


def test_inference_creates_two_attention_maps_and_overwrites_the_rest(inputs) -> None:
    """Without autograd the [B, N, hT] maps are overwritten once consumed (clamp, masking and
    the image -> text softmax in place): two new maps per call, not seven, and the same bits
    as the out-of-place path that autograd takes."""
    attention, v, t, mask = inputs
    v1, t1, m1 = v[1:2], t[1:2], mask[1:2]  # a prompt with padding: the masked path
    with torch.no_grad(), NewStorages(lambda x: x.numel() == N * attention.num_heads * T) as mode:
        out_v, out_l = attention(v1, t1, m1)
    assert mode.count == 2
    params = list(attention.parameters())
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        ref_v, ref_l = attention(v1, t1, m1)  # needs_graph: the out-of-place path
    assert torch.equal(out_v, ref_v.detach()) and torch.equal(out_l, ref_l.detach())


def test_image_chunks_share_two_attention_maps(inputs) -> None:
    """Images run one at a time (the CPU default) write their [1, N, hT] maps into the same two
    buffers: two new maps for the batch, not two per image, and the same bits."""
    attention, v, t, mask = inputs
    with torch.no_grad():
        alone = [attention(v[i : i + 1], t[i : i + 1], mask[i : i + 1]) for i in range(B)]
        with NewStorages(lambda x: x.numel() == N * attention.num_heads * T) as mode:
            out_v, out_l = attention(v, t, mask)
    assert mode.count == 2
    assert torch.equal(out_v, torch.cat([a[0] for a in alone])) and torch.equal(out_l, torch.cat([a[1] for a in alone]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_pixel_softmax_skips_the_official_max_subtraction_bit_for_bit(dtype) -> None:
    """``softmax(clamp(x - max x))`` over dim 1 (the official text -> image steps) equals
    ``softmax(x)`` bit for bit on clamped logits, also with values at the clamp bounds and
    columns whose spread exceeds the lower clamp, and odd sizes (the kernel's vector tails)."""
    attention = BiMultiHeadAttention(C, D, embed_dim=32, num_heads=4)
    torch.manual_seed(0)
    x = torch.randn(2, 997, 37, dtype=dtype) * 30
    x[0, :5, 0] = 50000.0
    x[0, 5:9, 0] = -50000.0
    x[1, 3, 2:7] = 49999.5
    x[1, 4:100, 3] = -7.5e-3
    x = attention._clamp(x)
    official = attention._clamp(x - x.amax(dim=1, keepdim=True)).softmax(dim=1)
    assert torch.equal(attention._softmax_over_pixels(x), official)
