"""The vision-language mask predictor: per-token dot-product mask logits (official
``VLMaskRCNNC4Predictor``, ``roi_heads/mask_head/roi_mask_predictors.py``).

Dimension letters: R regions, B images, C channels, T tokens, D text width, K tokens
of a phrase, M = 2 S the mask resolution (28).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VLMaskPredictor"]

# Official clamp of the mask logits ("for stability": fp16 range), +-50000.
_LOGIT_CLAMP = 50000.0
# The text is L2-normalised and halved before its projection (official `embedding / 2.0`).
_TEXT_SCALE = 2.0


class VLMaskPredictor(nn.Module):
    """``ConvTranspose(2x2, stride 2) + ReLU`` on the region features, then for every pixel
    and token ``<f, proj(normalize(text) / 2)> / exp(log_scale) + normalize(text) . bias_lang``,
    clamped to +-5e4.

    Args:
        in_channels: C_in, the extractor's width (official ``CONV_LAYERS[-1]`` with FPN).
        channels: C, the deconvolution's and the text projection's width (``CONV_LAYERS[-1]``).
        text_dim: D (official ``LANG_DIM``).
        log_scale: initial logit temperature (official ``DYHEAD.LOG_SCALE``, 0).

    Initialisation as the official: every weight Kaiming normal (fan-out, ReLU gain; the
    text projection included), every bias (and ``bias_lang``) zero, ``log_scale`` given.
    Parameters (official names): ``conv5_mask``, ``dot_product_projection_text``,
    ``log_scale``, ``bias_lang``.
    """

    def __init__(self, in_channels: int, channels: int, text_dim: int, log_scale: float = 0.0) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, channels, 2, 2, 0)
        self.dot_product_projection_text = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([log_scale], dtype=torch.float32))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        for module in (self.conv5_mask, self.dot_product_projection_text):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)

    def upsample(self, x: Tensor) -> Tensor:
        """``Tensor[R, C_in, S, S]`` -> ``Tensor[R, C, 2S, 2S]``."""
        return F.relu(self.conv5_mask(x))

    def tokens(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """``Tensor[B, T, D]`` -> projected tokens ``Tensor[B, T, C]`` and token biases ``Tensor[B, T]``."""
        embedding = F.normalize(text, p=2, dim=-1)  # [B, T, D]
        return self.dot_product_projection_text(embedding / _TEXT_SCALE), embedding @ self.bias_lang

    def forward(self, x: Tensor, text: Tensor, image_index: Tensor) -> Tensor:
        """The official output: every token's mask logits.

        Args:
            x (Tensor[R, C_in, S, S]): the extractor's features.
            text (Tensor[B, T, D]): the fused text hidden states.
            image_index (Tensor[R]): the image (row of ``text``) of each region.

        Returns:
            Tensor[R, T, M, M]: clamped mask logits.
        """
        feats = self.upsample(x)  # [R, C, M, M]
        proj, bias = self.tokens(text)  # [B, T, C], [B, T]
        logits = torch.einsum("rchw,rtc->rthw", feats, proj[image_index]) / self.log_scale.exp()  # [R, T, M, M]
        logits = logits + bias[image_index][:, :, None, None]
        return logits.clamp(min=-_LOGIT_CLAMP, max=_LOGIT_CLAMP)

    def phrase_logits(self, x: Tensor, text: Tensor, image_index: Tensor, token_map: Tensor) -> Tensor:
        """Each region's mask logits averaged over its phrase's tokens (the official loss and
        inference both average the clamped per-token logits), without the ``[R, T, M, M]`` tensor.

        Args:
            x, text, image_index: as :meth:`forward`.
            token_map (Tensor[R, T] bool): the tokens of each region's phrase; a region
                without any token gets zero logits.

        Returns:
            Tensor[R, M, M], equal to ``forward(...)`` averaged over ``token_map``'s tokens.
        """
        feats = self.upsample(x)  # [R, C, M, M]
        proj, bias = self.tokens(text)  # [B, T, C], [B, T]
        counts = token_map.sum(1)  # [R]
        k = max(int(counts.max()), 1) if counts.numel() else 1
        # The K first tokens of each region's phrase (padding slots point at token 0, masked).
        order = torch.sort(token_map.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]  # [R, K]
        valid = torch.arange(k, device=x.device)[None, :] < counts[:, None]  # [R, K]
        rows = image_index[:, None].expand_as(order)  # [R, K]
        tok = proj[rows, order]  # [R, K, C]
        logits = torch.einsum("rchw,rkc->rkhw", feats, tok) / self.log_scale.exp()  # [R, K, M, M]
        logits = (logits + bias[rows, order][:, :, None, None]).clamp(min=-_LOGIT_CLAMP, max=_LOGIT_CLAMP)
        weights = valid.to(logits.dtype) / counts.clamp(min=1).to(logits.dtype)[:, None]  # [R, K]
        return torch.einsum("rkhw,rk->rhw", logits, weights)  # [R, M, M]
