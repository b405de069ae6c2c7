"""Bi-directional image <-> text cross-attention, GLIP's early-fusion block (MHA-B).

All L feature levels are flattened, level after level in row-major pixel order, into
one visual sequence of N = sum_l H_l * W_l tokens; one multi-head attention then runs
in both directions between that sequence and the T text tokens:

* image -> text: every pixel attends over the text tokens (padding tokens masked);
* text -> image: every token attends over all pixels (no image mask: padded image
  regions take part, as in the official code).

Both residuals are added to the *layer-normalised* inputs, scaled by per-channel
layer-scale vectors ``gamma_v`` / ``gamma_l``.

Official counterparts: ``VLFuse`` (TYPE "MHA-B") with ``BiAttentionBlockForCheckpoint``
and ``BiMultiHeadAttention`` in ``maskrcnn_benchmark/utils/fuse_helper.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.layers.drop_path import DropPath
from glip.utils.graph import needs_graph, tracing

__all__ = [
    "CUDA_CHUNK_ELEMENTS",
    "FUSION_EMBED_DIM",
    "FUSION_NUM_HEADS",
    "BiAttentionBlock",
    "BiMultiHeadAttention",
    "FusedFeatures",
]

# The official VLFuse.init_configs hard-codes these, independent of the config and of
# the visual / text widths: 8 heads of width 2048 / 8 = 256 for every GLIP model.
FUSION_EMBED_DIM = 2048
FUSION_NUM_HEADS = 8

# Clamp bound of the attention logits (official CLAMP_{MIN,MAX}_FOR_{UNDER,OVER}FLOW):
# kept inside the float16 range (max 65504) for mixed-precision training.
_CLAMP = 50000.0
# At inference on CUDA, images share one fusion-attention call while one [n, N, hT] buffer
# stays within this many elements (1 GiB in float32; the call holds a few such buffers):
# 6 images of 800x1216 at the padded T = 256, the whole batch for a trimmed prompt.
CUDA_CHUNK_ELEMENTS = 2**28
# Additive logit for padded text tokens (official `masked_fill(mask == 0, -9e15)`).
_TEXT_MASK_FILL = -9e15


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention computed once and read in both directions.

    The logits ``q_v k_l^T`` of image queries against text keys give the image ->
    text attention directly and the text -> image attention after a transpose.

    Args:
        v_dim: visual width C.
        l_dim: text width D.
        embed_dim: attention width E (``FUSION_EMBED_DIM`` in GLIP).
        num_heads: number of heads h; the head width is ``E // h``.
        dropout: dropout on both attention-probability maps (training only).
        clamp_min_for_underflow / clamp_max_for_overflow: clamp the logits to
            ``>= -50000`` / ``<= 50000``, before and after the text -> image max
            subtraction (fp16 safety; GLIP enables both).
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int = FUSION_EMBED_DIM,
        num_heads: int = FUSION_NUM_HEADS,
        dropout: float = 0.1,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp_min = -_CLAMP if clamp_min_for_underflow else None
        self.clamp_max = _CLAMP if clamp_max_for_overflow else None
        # Images per inference call: None = on CUDA as many as CUDA_CHUNK_ELEMENTS allows, on
        # the CPU one (the peak memory stays one image's, and it is faster: scripts/bench_ops.py).
        self.images_per_chunk: int | None = None

        self.v_proj = nn.Linear(v_dim, embed_dim)  # image queries
        self.l_proj = nn.Linear(l_dim, embed_dim)  # text keys
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for linear in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, h, n, E/h]

    def _merge(self, x: Tensor) -> Tensor:
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, self.embed_dim)  # [B, n, E]

    def _clamp(self, x: Tensor, inplace: bool = False) -> Tensor:
        if self.clamp_min is None and self.clamp_max is None:
            return x
        if inplace:
            return x.clamp_(min=self.clamp_min, max=self.clamp_max)
        return x.clamp(min=self.clamp_min, max=self.clamp_max)

    def _softmax_over_pixels(self, logits: Tensor, out: Tensor | None = None) -> Tensor:
        """The text -> image softmax of clamped logits ``Tensor[B, N, hT]`` over the N pixels
        (dim 1): the official ``softmax(clamp(x - max(x)))``.

        In float32/64 the max subtraction and second clamp are left out, bit for bit the same:
        the kernel subtracts the same maximum itself (``fl(x - m)``; on subtracted logits, whose
        maximum is 0, its subtraction changes nothing), and the clamp only raises values below
        -50000, whose exponential is 0 either way. In lower precision (autocast) the subtraction
        rounds before the softmax's float32 upcast, so the official steps stay. ``out``: a
        buffer of the logits' shape and dtype for the probabilities.
        """
        if logits.dtype in (torch.float32, torch.float64):
            return logits.softmax(dim=1) if out is None else torch.softmax(logits, 1, out=out)
        logits_l = self._clamp(logits - logits.amax(dim=1, keepdim=True))  # [B, N, hT]
        return logits_l.softmax(dim=1)

    def forward(
        self, v: Tensor, t: Tensor, text_mask: Tensor | None, update_visual: bool = True
    ) -> tuple[Tensor | None, Tensor]:
        """
        Args:
            v: ``Tensor[B, N, C]`` visual tokens.
            t: ``Tensor[B, T, D]`` text tokens.
            text_mask: ``Tensor[B, T]`` (int64, 1 = real token, 0 = padding) or None.
            update_visual: False skips the image -> text direction (``delta_v`` is None):
                the causal (captioning) mode, where the pixels must not read the text.

        Returns:
            ``(delta_v Tensor[B, N, C] | None, delta_l Tensor[B, T, D])``, the two attention outputs.

        In training the projections run as written (:meth:`_forward_projected`); at inference
        the same products are re-associated around the small text side
        (:meth:`_forward_reassociated`), which never forms the ``[N, E]`` visual projections,
        ``images_per_chunk`` images at a time.
        """
        if self.training:
            return self._forward_projected(v, t, text_mask, update_visual)
        chunk = self.images_per_chunk or self._auto_chunk(v, t)
        if v.shape[0] > chunk:
            # Images never attend to each other: `chunk` at a time bounds the [n, N, hT] maps
            # to `chunk` images; without autograd the chunks share two (`scratch`).
            scratch: list[Tensor] = []
            parts = [
                self._forward_reassociated(
                    v[i : i + chunk],
                    t[i : i + chunk],
                    None if text_mask is None else text_mask[i : i + chunk],
                    update_visual,
                    scratch=scratch,
                )
                for i in range(0, v.shape[0], chunk)
            ]
            delta_v = torch.cat([p[0] for p in parts]) if update_visual else None  # type: ignore[misc]
            return delta_v, torch.cat([p[1] for p in parts])
        return self._forward_reassociated(v, t, text_mask, update_visual)

    def _auto_chunk(self, v: Tensor, t: Tensor) -> int:
        """Images per inference call when ``images_per_chunk`` is None: on CUDA as many as keep
        one ``[n, N, hT]`` attention buffer within ``CUDA_CHUNK_ELEMENTS``, on the CPU one."""
        if not v.is_cuda:
            return 1
        return max(1, CUDA_CHUNK_ELEMENTS // (v.shape[1] * self.num_heads * t.shape[1]))

    def _image_to_text_logits_bias(self, text_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """The official additive mask: the int mask itself with its zeros replaced by -9e15, so
        real tokens get +1 (softmax-neutral, but it changes rounding; reproduced on purpose).
        In float16 (autocast), whose range ends at -65504, the fill is the dtype's lowest value."""
        if text_mask is None:
            return None
        fill = max(_TEXT_MASK_FILL, torch.finfo(dtype).min)
        return text_mask.to(dtype).masked_fill(text_mask == 0, fill)  # [B, T]

    def _forward_projected(
        self, v: Tensor, t: Tensor, text_mask: Tensor | None, update_visual: bool = True
    ) -> tuple[Tensor | None, Tensor]:
        """The official order of operations: project to E, attend per head, project back."""
        query = self._heads(self.v_proj(v) * self.scale)  # [B, h, N, E/h]
        key = self._heads(self.l_proj(t))  # [B, h, T, E/h]
        value_v = self._heads(self.values_v_proj(v))  # [B, h, N, E/h]
        value_l = self._heads(self.values_l_proj(t))  # [B, h, T, E/h]

        logits = self._clamp(query @ key.transpose(-1, -2))  # [B, h, N, T]

        # text -> image: softmax over the N pixels, after an explicit max subtraction
        # (clamped again); no image mask.
        logits_l = logits.transpose(-1, -2)  # [B, h, T, N]
        logits_l = self._clamp(logits_l - logits_l.amax(dim=-1, keepdim=True))
        probs_l = logits_l.softmax(dim=-1)
        if not update_visual:
            probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)
            return None, self.out_l_proj(self._merge(probs_l @ value_v))  # [B, T, D]

        # image -> text: softmax over the T tokens, padding masked.
        additive = self._image_to_text_logits_bias(text_mask, logits.dtype)
        if additive is not None:
            logits = logits + additive[:, None, None, :]  # [B, h, N, T]
        probs_v = logits.softmax(dim=-1)

        probs_v = F.dropout(probs_v, p=self.dropout, training=self.training)
        probs_l = F.dropout(probs_l, p=self.dropout, training=self.training)
        delta_v = self.out_v_proj(self._merge(probs_v @ value_l))  # [B, N, C]
        delta_l = self.out_l_proj(self._merge(probs_l @ value_v))  # [B, T, D]
        return delta_v, delta_l

    def _forward_reassociated(
        self,
        v: Tensor,
        t: Tensor,
        text_mask: Tensor | None,
        update_visual: bool = True,
        scratch: list[Tensor] | None = None,
    ) -> tuple[Tensor | None, Tensor]:
        """The same attention without dropout, with every product around the visual side
        re-associated through the text side (h heads of width d = E / h; per image):

        * logits: ``(v Wq_h^T + bq_h) k_h^T s = v (Wq_h^T k_h^T s) + (bq_h . k_h) s``, one
          ``[N, C] @ [C, hT]`` product instead of the ``[N, C] @ [C, E]`` query projection;
        * image -> text: ``out_v(concat_h p_h (vl_h)) = [p_1 .. p_h] @ [vl_h Wout_h^T]_h + b``,
          one ``[N, hT] @ [hT, C]`` product instead of ``[N, E] @ [E, C]``;
        * text -> image: ``p_h (v Wv_h^T + bv_h) = (p_h v) Wv_h^T + rowsum(p_h) bv_h``, an
          ``[hT, N] @ [N, C]`` product instead of the ``[N, C] @ [C, E]`` value projection.

        For GLIP (C = d = 256, E = 2048) this is 3 N C hT multiply-adds instead of
        3 N E (C + T): 2x fewer at the padded T = 256 and ~30x fewer for a 16-token prompt,
        and the largest buffer is ``[B, N, hT]`` instead of ``[B, N, E]``. Results equal the
        projected path up to float rounding (checked against the official fixtures).

        ``scratch``: without autograd the two ``[B, N, hT]`` maps go into its buffers (made
        and left there when missing, for the caller's next image chunk); no effect on values.
        """
        b, n, c = v.shape
        h, d = self.num_heads, self.head_dim
        key = self.l_proj(t).view(b, -1, h, d)  # [B, T, h, d]
        value_l = self.values_l_proj(t).view(b, -1, h, d)  # [B, T, h, d]
        num_t = key.shape[1]

        # Logits of all heads at once, pixel-major: column h * T + j is head h, token j.
        w_q = self.v_proj.weight.view(h, d, c)  # [h, d, C]
        b_q = self.v_proj.bias.view(h, d)  # [h, d]
        key_s = key * self.scale  # [B, T, h, d]
        a = torch.einsum("hdc,bthd->bcht", w_q, key_s).reshape(b, c, h * num_t)  # [B, C, hT]
        a_bias = torch.einsum("hd,bthd->bht", b_q, key_s).reshape(b, 1, h * num_t)  # [B, 1, hT]
        # Without autograd (not tracing) the [B, N, hT] maps are overwritten once consumed: the
        # same ops and bits, but 2 new maps per call instead of 7 (0 with `scratch`), each costing
        # its page faults (on the CPU about as much as the op itself).
        inplace = not needs_graph(v, a, a_bias)
        reuse = inplace and scratch is not None and not torch.is_autocast_enabled(v.device.type)
        buffers = _scratch(scratch, (b, n, h * num_t), v) if reuse else (None, None)  # type: ignore[arg-type]
        logits = torch.baddbmm(a_bias, v, a, out=buffers[0])  # [B, N, hT]
        logits = self._clamp(logits, inplace)

        # text -> image: softmax over the N pixels (dim 1 here).
        probs_l = self._softmax_over_pixels(logits, out=buffers[1])  # [B, N, hT]
        pooled = (probs_l.transpose(1, 2) @ v).view(b, h, num_t, c)  # [B, h, T, C]
        w_v = self.values_v_proj.weight.view(h, d, c)  # [h, d, C]
        b_v = self.values_v_proj.bias.view(h, 1, d)  # [h, 1, d]
        mass = probs_l.sum(dim=1).view(b, h, num_t, 1)  # [B, h, T, 1], ~1 per row
        context_l = pooled @ w_v.transpose(1, 2) + mass * b_v  # [B, h, T, d]
        context_l = context_l.transpose(1, 2).reshape(b, num_t, h * d)  # [B, T, E]
        delta_l = self.out_l_proj(context_l)  # [B, T, D]
        if not update_visual:
            return None, delta_l

        # image -> text: softmax over each head's T tokens, padding masked; in place into the
        # logits, then the spent text -> image probabilities. Else each map is dropped once
        # consumed (del: names only, autograd keeps what it needs): three alive at most.
        logits_v = logits.view(b, n, h, num_t)  # [B, N, h, T]
        additive = self._image_to_text_logits_bias(text_mask, logits.dtype)
        del logits
        if additive is not None:
            additive = additive[:, None, None, :]  # [B, 1, 1, T]
            logits_v = logits_v.add_(additive) if inplace else logits_v + additive  # [B, N, h, T]
        if inplace and probs_l.dtype == logits_v.dtype:
            probs_v = torch.softmax(logits_v, -1, out=probs_l.view(b, n, h, num_t)).view(b, n, h * num_t)
        else:
            probs_v = logits_v.softmax(dim=-1).view(b, n, h * num_t)  # [B, N, hT]
        del logits_v, probs_l
        w_o = self.out_v_proj.weight.view(c, h, d)  # [C, h, d]
        u = torch.einsum("bthd,chd->bhtc", value_l, w_o).reshape(b, h * num_t, c)  # [B, hT, C]
        delta_v = torch.baddbmm(self.out_v_proj.bias, probs_v, u)  # [B, N, C]
        return delta_v, delta_l


def _scratch(buffers: list[Tensor], shape: tuple[int, ...], like: Tensor) -> tuple[Tensor, Tensor]:
    """Two buffers of ``shape`` (``like``'s dtype and device) from ``buffers``, made and kept
    there when it has none of that shape."""
    if len(buffers) != 2 or buffers[0].shape != shape or buffers[0].dtype != like.dtype:
        buffers[:] = [like.new_empty(shape), like.new_empty(shape)]
    return buffers[0], buffers[1]


@dataclass
class FusedFeatures:
    """Output of :class:`BiAttentionBlock`.

    Attributes:
        visual: L tensors ``Tensor[B, C, H_l, W_l]``.
        text: ``Tensor[B, T, D]``, the new text ``hidden`` states.
    """

    visual: list[Tensor]
    text: Tensor


class BiAttentionBlock(nn.Module):
    """Pre-norm bi-directional attention with layer scale, over all levels at once.

    ``v = LN_v(v) + drop_path(gamma_v * delta_v)`` and
    ``l = LN_l(l) + drop_path(gamma_l * delta_l)``: note the residual starts from the
    normalised inputs, not the raw ones (official behaviour).

    Args:
        v_dim: visual width C (official FUSE_CONFIG.JOINT_EMB_SIZE, = DYHEAD.CHANNELS).
        l_dim: text width D (official LANGUAGE_BACKBONE.LANG_DIM).
        embed_dim, num_heads: attention sizes; GLIP always uses the hard-coded
            ``FUSION_EMBED_DIM`` / ``FUSION_NUM_HEADS``.
        dropout: attention-probability dropout (official 0.1, training only).
        drop_path: stochastic depth on both residual branches (official 0.0).
        init_values: initial layer-scale value; the official VLFuse passes
            ``1 / DYHEAD.NUM_CONVS``.
        clamp_min_for_underflow, clamp_max_for_overflow: see :class:`BiMultiHeadAttention`.
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int = FUSION_EMBED_DIM,
        num_heads: int = FUSION_NUM_HEADS,
        dropout: float = 0.1,
        drop_path: float = 0.0,
        init_values: float = 1e-4,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
    ) -> None:
        super().__init__()
        self.norm_v = nn.LayerNorm(v_dim)
        self.norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(
            v_dim,
            l_dim,
            embed_dim=embed_dim,
            num_heads=num_heads,
            dropout=dropout,
            clamp_min_for_underflow=clamp_min_for_underflow,
            clamp_max_for_overflow=clamp_max_for_overflow,
        )
        self.drop_path = DropPath(drop_path)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), init_values))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), init_values))

    def forward(
        self,
        visual: list[Tensor],
        text: Tensor,
        text_mask: Tensor | None,
        causal: bool = False,
        consume: bool = False,
    ) -> FusedFeatures:
        """
        Args:
            visual: L tensors ``Tensor[B, C, H_l, W_l]``.
            text: ``Tensor[B, T, D]`` text hidden states.
            text_mask: ``Tensor[B, T]`` int64 attention mask (1 = real token) or None.
            causal: the captioning mode: the image -> text update is left out, so
                ``v = LN_v(v)`` and the text reads a visual stream that no token wrote to.
            consume: without autograd, empty the ``visual`` list once its maps are
                concatenated, so that maps no one else holds are freed during the attention
                (the trunk hands over its own list: 20.8 MiB at 800 x 1216).

        Why the image update is dropped in causal mode (and not masked): every pixel is
        shared by all T tokens, so a pixel that read token ``j`` would carry ``j`` to every
        token ``i < j`` that reads the pixel in the next block (and the DyConv spreads it to
        every other pixel). Masking per reader would need one copy of the maps per token
        (T x the visual memory). Without the update the text -> image attention is a
        decoder's cross-attention to an image encoding: token ``i`` sees the image and,
        through the text layers' causal masks, tokens ``<= i`` only. This is the GLIPv2
        captioning setting (uni-directional language modelling conditioned on the image).
        The layer-normalised image still feeds the next block, as in the bi-directional mode.
        """
        sizes = [f.shape[-2:] for f in visual]
        v = torch.cat([f.flatten(2).transpose(1, 2) for f in visual], dim=1)  # [B, N, C]
        if consume and not torch.is_grad_enabled():
            visual.clear()
        v = self.norm_v(v)
        t = self.norm_l(text)
        delta_v, delta_l = self.attn(v, t, text_mask, update_visual=not causal)
        if delta_v is not None and not self.training and not torch.is_grad_enabled() and not tracing():
            # Inference: the layer scale and the residual are formed in delta_v, which is this
            # block's own (drop path is the identity in eval; a + b == b + a bit for bit), so two
            # [B, N, C] maps are alive here instead of four.
            v = delta_v.mul_(self.gamma_v).add_(v)  # [B, N, C]
        elif delta_v is not None:
            v = v + self.drop_path(self.gamma_v * delta_v)  # [B, N, C]
        del delta_v
        t = t + self.drop_path(self.gamma_l * delta_l)  # [B, T, D]

        v = v.transpose(1, 2)  # [B, C, N]
        # Level boundaries from the shapes themselves (no int(): an ONNX trace keeps them symbolic).
        levels, start = [], 0
        for h, w in sizes:
            stop = start + h * w
            levels.append(v[:, :, start:stop].reshape(v.shape[0], v.shape[1], h, w))  # [B, C, H_l, W_l]
            start = stop
        return FusedFeatures(visual=levels, text=t)
