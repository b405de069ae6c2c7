"""The configuration schema: dataclasses with GLIP-T defaults.

Values default to the official GLIP-T (``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``
merged over the official defaults). Only :mod:`glip.modeling.build` reads these to
construct modules; modules themselves take plain typed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SwinConfig:
    """Swin Transformer body (official ``MODEL.SWINT``)."""

    embed_dim: int = 96
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    use_checkpoint: bool = False


@dataclass
class ResNetConfig:
    """ResNet body with frozen batch norm (official ``MODEL.RESNETS``)."""

    depth: int = 50
    stride_in_1x1: bool = True
    freeze_at: int = 2


@dataclass
class BackboneConfig:
    """Visual backbone and FPN (P3-P7)."""

    type: str = "swin"  # "swin" | "resnet"
    swin: SwinConfig = field(default_factory=SwinConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    out_channels: int = 256
    freeze_at: int = -1  # official BACKBONE.FREEZE_CONV_BODY_AT; -1 trains every stage
    fpn_drop_block: bool = True  # official FPN.DROP_BLOCK: DropBlock on the FPN outputs, training only
    fpn_drop_prob: float = 0.3
    fpn_drop_size: int = 3


@dataclass
class TextConfig:
    """The BERT language backbone."""

    encoder: str = "bert-base-uncased"  # Hugging Face name or local directory
    dim: int = 768  # official LANGUAGE_BACKBONE.LANG_DIM; must equal BERT's hidden size
    max_query_len: int = 256  # official LANGUAGE_BACKBONE.MAX_QUERY_LEN
    num_layers: int = 1  # official LANGUAGE_BACKBONE.N_LAYERS: last layers averaged
    mask_special: bool = False
    freeze: bool = False


@dataclass
class HeadConfig:
    """The vision-language DyHead (official ``MODEL.DYHEAD`` and ``FUSE_CONFIG``)."""

    channels: int = 256
    num_blocks: int = 6
    num_classes: int = 81  # official DYHEAD.NUM_CLASSES; the score tensor has num_classes - 1 slots
    use_gn: bool = True
    gn_groups: int = 16  # official MODEL.GROUP_NORM.NUM_GROUPS
    use_dyrelu: bool = True
    use_dfconv: bool = True
    use_dyfuse: bool = True
    log_scale: float = 0.0
    prior_prob: float = 0.01
    early_fusion: bool = True
    fused_dot_product: bool = True
    use_layer_scale: bool = True
    clamp_min_for_underflow: bool = True
    clamp_max_for_overflow: bool = True
    clamp_bertattn_min_for_underflow: bool = True
    clamp_bertattn_max_for_overflow: bool = True
    clamp_dot_product: bool = True
    use_checkpoint: bool = True


@dataclass
class AnchorConfig:
    """One anchor per location and level (official ``MODEL.RPN``)."""

    sizes: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0, 512.0, 1024.0])
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    aspect_ratios: list[float] = field(default_factory=lambda: [1.0])
    scales_per_octave: int = 1
    octave: float = 2.0
    straddle_thresh: int = 0


@dataclass
class InferenceConfig:
    """Test-time post-processing (official ``MODEL.ATSS`` and ``DYHEAD.SCORE_AGG``)."""

    pre_nms_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    score_agg: str = "MEAN"


@dataclass
class InputConfig:
    """Image preprocessing (official ``INPUT`` and ``DATALOADER.SIZE_DIVISIBILITY``)."""

    min_size_test: int = 800
    max_size_test: int = 1333
    min_size_train: list[int] = field(default_factory=lambda: [480, 560, 640, 720, 800])
    max_size_train: int = 1333
    pixel_mean: list[float] = field(default_factory=lambda: [103.53, 116.28, 123.675])  # BGR, 0-255
    pixel_std: list[float] = field(default_factory=lambda: [57.375, 57.12, 58.395])
    to_bgr255: bool = True
    size_divisibility: int = 32


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)


@dataclass
class GLIPConfig:
    """Everything needed to build a GLIP model and run it on images."""

    name: str = "glip-t"
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
