"""The configuration schema: dataclasses with GLIP-T defaults.

Values default to the official GLIP-T (``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``
merged over the official defaults). Only :mod:`glip.modeling.build` reads these to
construct modules; modules themselves take plain typed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glip.config.heads import (  # noqa: F401  (re-exported: the schema's head sections)
    CaptionHeadConfig,
    GroundingHeadConfig,
    HeadsConfig,
    InterImageHeadConfig,
    MaskHeadConfig,
    MDETRAlignHeadConfig,
    MDETRTokenHeadConfig,
    MLMHeadConfig,
    VQAHeadConfig,
)


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
class TimmConfig:
    """Any timm model with ``features_only`` as the body (``type: timm``); its stride-8/16/32
    maps feed the FPN (glip.modeling.backbone.timm_body)."""

    name: str = "convnext_tiny"  # a timm model name, optionally with its tag (convnext_tiny.fb_in22k)
    # Fresh models (training) load timm's pretrained weights: ``checkpoint`` (a local file) or the
    # local Hugging Face cache, never a download; checkpoints override them.
    pretrained: bool = False
    checkpoint: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)  # more timm.create_model arguments (drop_path_rate...)


@dataclass
class BackboneConfig:
    """Visual backbone and FPN (P3-P7)."""

    type: str = "swin"  # "swin" | "resnet" | "timm"
    swin: SwinConfig = field(default_factory=SwinConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    timm: TimmConfig = field(default_factory=TimmConfig)
    out_channels: int = 256
    freeze_at: int = -1  # official BACKBONE.FREEZE_CONV_BODY_AT; -1 trains every stage (swin; not timm)
    freeze: bool = False  # official BACKBONE.FREEZE: the visual body gets no gradient and stays in eval mode
    freeze_fpn: bool = False  # official FPN.FREEZE: the same for the FPN
    fpn_drop_block: bool = True  # official FPN.DROP_BLOCK: DropBlock on the FPN outputs, training only
    fpn_drop_prob: float = 0.3
    fpn_drop_size: int = 3


@dataclass
class TextConfig:
    """The language backbone: BERT (official default) or a CLIP text tower."""

    # official LANGUAGE_BACKBONE.MODEL_TYPE: "bert" (BertModel) or "clip" (transformers
    # CLIPTextModel run bi-directionally, glip.modeling.language.text_encoder.ClipTextEncoder)
    type: str = "bert"
    encoder: str = "bert-base-uncased"  # Hugging Face name or local directory (config + tokenizer)
    dim: int = 768  # official LANGUAGE_BACKBONE.LANG_DIM; must equal the encoder's hidden size
    max_query_len: int = 256  # official LANGUAGE_BACKBONE.MAX_QUERY_LEN
    num_layers: int = 1  # official LANGUAGE_BACKBONE.N_LAYERS: last layers averaged
    freeze: bool = False  # official LANGUAGE_BACKBONE.FREEZE: no gradient, kept in eval mode
    # Fresh models (training) load the encoder's pretrained weights from ``encoder``
    # (official: BertModel.from_pretrained in the language backbone); checkpoints override them.
    pretrained: bool = True


@dataclass
class TrunkConfig:
    """The fused trunk: the DyHead tower with early fusion (official ``MODEL.DYHEAD`` and
    ``FUSE_CONFIG``), shared by every head."""

    channels: int = 256
    num_blocks: int = 6
    use_gn: bool = True
    gn_groups: int = 16  # official MODEL.GROUP_NORM.NUM_GROUPS
    use_dyrelu: bool = True
    use_dfconv: bool = True
    use_dyfuse: bool = True
    early_fusion: bool = True
    fused_dot_product: bool = True  # the heads read the fused text (official USE_FUSED_FEATURES_DOT_PRODUCT)
    use_layer_scale: bool = True
    clamp_min_for_underflow: bool = True
    clamp_max_for_overflow: bool = True
    clamp_bertattn_min_for_underflow: bool = True
    clamp_bertattn_max_for_overflow: bool = True
    use_checkpoint: bool = True
    fusion_dropout: float = 0.1  # official: fixed 0.1 on the fusion's attention probabilities
    # The fusion's attention width and heads: GLIP hard-codes 2048 and 8 whatever the head's
    # width; a small head trains several times faster with a narrower fusion.
    fusion_embed_dim: int = 2048
    fusion_num_heads: int = 8


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
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)


@dataclass
class ClipGradientsConfig:
    """Official ``SOLVER.CLIP_GRADIENTS`` (only ``full_model`` clipping exists officially)."""

    enabled: bool = True
    clip_type: str = "full_model"
    clip_value: float = 1.0
    norm_type: float = 2.0


@dataclass
class SolverConfig:
    """Optimiser and schedule (official ``SOLVER``; GLIP-T pre-training values over the
    official defaults)."""

    optimizer: str = "adamw"  # "adamw" | "sgd"
    base_lr: float = 1e-4
    lang_lr: float = 1e-5  # every text-encoder parameter (official LANG_LR)
    backbone_body_lr_factor: float = 1.0
    # lr factor of the fusion tower's text-side layers (X-MHA blocks, in-head BERT layers); not
    # official (1.0). Post-LN BERT layers trained at a detector's lr can collapse every token onto
    # one vector, which makes the region-word scores ignore the words (see configs/synthetic).
    fusion_lr_factor: float = 1.0
    # lr factor of the fusion tower's visual convolutions (the DyConv branches); not official
    # (1.0). On small data a lower rate keeps the tower from discarding what the backbone
    # tells apart (colour, shape) before the words can use it (see configs/synthetic).
    tower_lr_factor: float = 1.0
    bias_lr_factor: float = 2.0
    weight_decay: float = 1e-4
    weight_decay_bias: float = 0.0
    weight_decay_norm_factor: float = 1.0
    momentum: float = 0.9  # SGD only
    max_iter: int = 40000
    max_epoch: int = 30  # > 0: max_iter = max_epoch * (len(dataset) // ims_per_batch)
    ims_per_batch: int = 64  # global batch, over all processes
    steps: list[float] = field(default_factory=lambda: [0.67, 0.89])  # < 1: fraction of max_iter
    gamma: float = 0.1
    use_cosine: bool = False
    min_lr: float = 1e-6  # cosine only
    warmup_factor: float = 0.001
    warmup_iters: int = 2000
    warmup_method: str = "linear"  # "linear" | "constant"
    clip_gradients: ClipGradientsConfig = field(default_factory=ClipGradientsConfig)
    model_ema: float = 0.999  # 0 disables the EMA
    use_amp: bool = True
    checkpoint_period: int = 2500
    max_neg_per_batch: float = 0.1  # skip a batch with more image without boxes than this fraction
    seed: int = 0
    # Evaluation-driven schedule (needs train.eval_period and an evaluator giving train.monitor):
    use_autostep: bool = False  # official USE_AUTOSTEP: lr *= gamma after step_patience evals without gain
    step_patience: int = 5  # official STEP_PATIENCE
    auto_terminate_patience: int = -1  # official AUTO_TERMINATE_PATIENCE: stop after this many worse evals


@dataclass
class DataSource:
    """One training source of a multi-task run (``data.sources``): its reader, files and
    sampling weight. Each step draws one source with probability ``weight / sum(weights)``
    and trains on a batch of it alone (:mod:`glip.engine.multitask`)."""

    format: str = "coco"  # as data.format: coco | mdetr | vqa | gqa | captions
    train_json: str = ""
    train_images: str = ""
    train_shards: str = ""  # as data.train_shards (instead of train_json / train_images)
    weight: float = 1.0  # sampling weight; official dataset "copies" c of n images: weight c * n
    loss_weight: float = 1.0  # factor on this source's losses
    name: str = ""  # the loss-log label ("loss/<name>"); "": the format, numbered if repeated
    pseudo_labelled: bool = False  # as data.pseudo_labelled, for this source ("mdetr" only)


@dataclass
class DataConfig:
    """Training and validation data: COCO-format jsons and their image folders."""

    # "coco" (detection -> caption) | "mdetr" (captions with tokens_positive)
    # | "vqa" (VQAv2 or combined json, glip.data.vqa) | "gqa" (GQA questions json)
    # | "captions" (COCO-captions json: causal captioning, needs model.heads.caption)
    format: str = "coco"
    train_json: str = ""
    train_images: str = ""
    # A shard set (glip.data.shards: a folder with manifest.json, the manifest, or a glob of
    # its tar shards), streamed at constant memory instead of train_json / train_images.
    train_shards: str = ""
    val_json: str = ""
    val_images: str = ""
    # Caption recipe of detection data (glip.data.CaptionRecipe).
    sample_negatives: bool = False  # True: positives + sampled negatives (pre-training)
    shuffle_categories: bool = False  # official not DATASETS.DISABLE_SHUFFLE
    disjoint_negatives: bool = False  # negatives share no word with the positives (not official)
    separator: str = ". "  # official DATASETS.SEPARATION_TOKENS
    add_detection_prompt: bool = False  # official DATASETS.ADD_DET_PROMPT
    random_sample_negative: int = 85  # official DATASETS.RANDOM_SAMPLE_NEG
    flip_prob: float = 0.5  # official AUGMENT.FLIP_PROB_TRAIN
    num_workers: int = 0
    caption_prompt: str = ""  # official DATASETS.CAPTION_PROMPT (ODinW), the yaml's literal string
    general_copy: int = 1  # official DATASETS.GENERAL_COPY: the training set repeated this many times
    # Official caption options, applied to "mdetr" training data when it is read (glip.data.caption_screen):
    caption_conf: float = 0.0  # keep boxes with score > this (official CAPTION_CONF with FURTHER_SCREEN); 0: all
    caption_nms: float = -1.0  # class-agnostic NMS IoU (official CAPTION_NMS with FURTHER_SCREEN); <= 0: none
    caption_min_box: int = 1  # images with fewer boxes are left out (official CAPTION_MIN_BOX)
    # "mdetr" data that a teacher labelled (official caption data): not gold for NO_MASK_FOR_GOLD, and
    # packed with random other captions as negatives (glip.data.caption_packing; official DATASETS keys):
    pseudo_labelled: bool = False
    pack_captions: int = 0  # PACK_RANDOM_CAPTION_NUMBER: up to this many negative captions; 0: none
    pack_prob: float = -1.0  # RANDOM_PACK_PROB: all of them with this probability, else fewer; -1: always all
    no_pack_prob: float = 0.0  # NO_RANDOM_PACK_PROBABILITY: none with this probability (when pack_prob is set)
    pack_disjoint: bool = False  # negatives only among captions grounding none of its phrases (not official)
    # Multi-task training: [] trains on format/train_json/train_images above; else each step
    # trains on one batch of one source drawn by weight (the settings above apply to every
    # source; format, val_json and val_images stay those of validation).
    sources: list[DataSource] = field(default_factory=list)
    # How a COCO/MDETR/LVIS json is read (glip.data.json_index): "auto" (an on-disk, memory-mapped
    # index from 64 MiB on: constant memory per process), "memory" (parsed whole) or "mapped" (always).
    json_index: str = "auto"
    index_cache: str = ""  # where json indexes are built; "": beside the json (read-only: $GLIP_CACHE)
    # The official TSV layout (glip.data.tsv): train_json / val_json a label .tsv, train_images /
    # val_images its image .tsv; detection TSVs ("coco") name their classes through this labelmap json.
    tsv_labelmap: str = ""


@dataclass
class TrainConfig:
    """The training loop."""

    precision: str = "auto"  # "auto" (bf16/fp16 on GPU when solver.use_amp, else fp32) | "no" | "bf16" | "fp16"
    log_period: int = 20
    eval_period: int = 0  # 0: validate at the end only (when data.val_json is set)
    evaluator: str = ""  # "package.module:function" called as fn(model, cfg, step) -> {name: float}
    keep_checkpoints: int = 2  # step checkpoints kept besides the last one
    find_unused_parameters: bool = False  # official SOLVER.FIND_UNUSED_PARAMETERS (GLIP-T: False)
    # What is trained (official SOLVER.TUNING_HIGHLEVEL_OVERRIDE, see glip.engine.tuning):
    # "" (the config's own freezing), "full", "linear", "prompt", "prompt_v1", "prompt_v3", "prompt_v4".
    tuning: str = ""
    monitor: str = "AP"  # the evaluator metric that early stopping / autostep watch (higher is better)


@dataclass
class GLIPConfig:
    """Everything needed to build a GLIP model and run it on images, and to train it."""

    name: str = "glip-t"
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
