"""Any timm model with ``features_only`` as the visual body (ConvNeXt, Swin V2, EfficientNet...).

``timm.create_model(name, features_only=True)`` gives a network returning its stage maps;
:class:`TimmBody` keeps the stride-8, -16 and -32 ones (C3, C4, C5), channels-first, for
the FPN. Pretrained weights come only from a local file or the local Hugging Face cache
(:func:`timm_weights_file`); nothing is downloaded while building a model.

Dimension letters: B images, C_i channels of stage i.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

__all__ = ["FPN_STRIDES", "TimmBody", "TimmWeightsError", "create_timm_body", "timm_weights_file"]

# The strides of C3, C4, C5, which the FPN turns into P3..P5 (P6, P7 follow).
FPN_STRIDES = (8, 16, 32)
# File names timm's Hugging Face repositories store their weights under, in preference order.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class TimmWeightsError(FileNotFoundError):
    """Pretrained timm weights were asked for but are not on this machine."""


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError(
            "model.backbone.type 'timm' needs the timm package: pip install timm (or glip[timm])"
        ) from None
    return timm


class TimmBody(nn.Module):
    """The stride-8/16/32 maps of a timm ``features_only`` network.

    Args:
        model: ``timm.create_model(..., features_only=True)``; its ``feature_info`` must list
            stages of strides 8, 16 and 32.
        channels_last_output: the network returns ``[B, H, W, C]`` maps (timm's ``NHWC``
            output format), permuted here to ``[B, C, H, W]``.

    Parameters: ``model.*`` (timm's own names).
    """

    def __init__(self, model: nn.Module, channels_last_output: bool = False) -> None:
        super().__init__()
        reductions = [int(r) for r in model.feature_info.reduction()]
        missing = [s for s in FPN_STRIDES if s not in reductions]
        if missing:
            raise ValueError(
                f"the timm model gives feature maps of strides {reductions}; the FPN needs strides {FPN_STRIDES}"
            )
        self.model = model
        self.indices = tuple(reductions.index(s) for s in FPN_STRIDES)
        channels = model.feature_info.channels()
        self.out_channels = [int(channels[i]) for i in self.indices]
        self.channels_last_output = channels_last_output

    def forward(self, images: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, H, W]`` -> ``[C3, C4, C5]``, each ``Tensor[B, C_i, H / s, W / s]``."""
        maps = self.model(images)
        out = [maps[i] for i in self.indices]
        if self.channels_last_output:
            out = [m.permute(0, 3, 1, 2).contiguous() for m in out]  # [B, H, W, C] -> [B, C, H, W]
        return out


def timm_weights_file(name: str, checkpoint: str = "") -> Path:
    """The local file of ``name``'s pretrained weights: ``checkpoint`` when given, else
    timm's default tag of ``name`` in the local Hugging Face cache. Raises
    :class:`TimmWeightsError` (one line, saying how to get them) when absent."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise TimmWeightsError(f"model.backbone.timm.checkpoint {path} does not exist")
        return path
    timm = _import_timm()
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo:
        for filename in _HUB_FILES:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return Path(found)
    where = f"the Hugging Face cache (repo {repo})" if repo else "timm's registry (no Hugging Face repo)"
    raise TimmWeightsError(
        f"pretrained weights of timm model {name!r} are not in {where}: download them once "
        f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\"), or set "
        "model.backbone.timm.checkpoint=FILE, or model.backbone.timm.pretrained=false"
    )


def create_timm_body(
    name: str,
    pretrained: bool = False,
    checkpoint: str = "",
    kwargs: Mapping[str, Any] | None = None,
) -> TimmBody:
    """A :class:`TimmBody` of timm model ``name`` (any registered name, with its pretrained
    tag: ``convnext_tiny.fb_in22k``).

    Args:
        pretrained: load pretrained weights (:func:`timm_weights_file`: ``checkpoint`` or
            the local cache, never a download); False: timm's random initialisation.
        kwargs: more ``timm.create_model`` arguments (``drop_path_rate``, ``img_size``...).
    """
    timm = _import_timm()
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"model.backbone.timm.name {name!r} is not a timm model (see timm.list_models())")
    options: dict[str, Any] = dict(kwargs or {})
    if pretrained:
        options["pretrained_cfg_overlay"] = {"file": str(timm_weights_file(name, checkpoint))}
    try:
        model = timm.create_model(name, pretrained=pretrained, features_only=True, **options)
    except RuntimeError as e:
        if "features_only" in str(e):
            raise ValueError(f"timm model {name!r} does not offer features_only: {e}") from None
        raise
    fmt = str(getattr(model, "output_fmt", "NCHW"))
    return TimmBody(model, channels_last_output=fmt.endswith("NHWC"))
