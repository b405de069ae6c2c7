"""Reading official GLIP yaml files into our config."""

from pathlib import Path

import pytest
import yaml

from glip.config import GLIPConfig, OfficialConfigError, config_from_dict, load_config, save_config
from tests.conftest import OFFICIAL

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.needs_fixtures
def test_fixture_dump_maps_every_model_toggle():
    cfg = load_config(OFFICIAL / "tiny_glip_t" / "config.yaml")
    assert cfg.model.backbone.swin.embed_dim == 24
    assert cfg.model.backbone.swin.depths == [2, 2, 2, 2]
    assert cfg.model.backbone.out_channels == 64
    assert cfg.model.trunk.channels == 64 and cfg.model.trunk.num_blocks == 2
    assert cfg.model.trunk.early_fusion and cfg.model.trunk.fused_dot_product
    assert cfg.model.text.dim == 48 and cfg.model.text.max_query_len == 256
    assert cfg.inference.pre_nms_thresh == 0.0 and cfg.inference.nms_thresh == 0.6
    assert (cfg.input.min_size_test, cfg.input.max_size_test, cfg.input.size_divisibility) == (320, 512, 32)
    a = load_config(OFFICIAL / "tiny_glip_a" / "config.yaml")
    assert not a.model.trunk.early_fusion and not a.model.trunk.fused_dot_product


def test_partial_official_yaml_uses_official_defaults(tmp_path):
    # A GLIP-L style partial yaml: everything not named takes the official default.
    text = """
MODEL:
  META_ARCHITECTURE: "GeneralizedVLRCNN"
  RPN_ARCHITECTURE: "VLDYHEAD"
  BACKBONE:
    CONV_BODY: "SWINT-FPN-RETINANET"
    OUT_CHANNELS: 256
  SWINT:
    EMBED_DIM: 192
    DEPTHS: (2, 2, 18, 2)
    NUM_HEADS: (6, 12, 24, 48)
    WINDOW_SIZE: 12
  RPN:
    ANCHOR_SIZES: (64, 128, 256, 512, 1024)
    ANCHOR_STRIDE: (8, 16, 32, 64, 128)
    ASPECT_RATIOS: (1.0,)
    SCALES_PER_OCTAVE: 1
  DYHEAD:
    CHANNELS: 256
    NUM_CONVS: 8
    USE_GN: True
    FUSE_CONFIG:
      EARLY_FUSE_ON: True
INPUT:
  MIN_SIZE_TEST: 800
DATALOADER:
  SIZE_DIVISIBILITY: 32
SOLVER:
  BASE_LR: 0.0001
"""
    p = tmp_path / "glip_l_like.yaml"
    p.write_text(text)
    cfg = load_config(p)
    assert cfg.model.backbone.swin.depths == [2, 2, 18, 2]
    assert cfg.model.backbone.swin.window_size == 12
    assert cfg.model.anchors.sizes == [64.0, 128.0, 256.0, 512.0, 1024.0]
    assert cfg.model.trunk.num_blocks == 8
    assert cfg.model.text.dim == 768  # official default LANG_DIM
    assert cfg.inference.pre_nms_thresh == 0.05  # official default ATSS.INFERENCE_TH
    assert cfg.model.trunk.gn_groups == 16  # official default GROUP_NORM.NUM_GROUPS
    assert cfg.input.max_size_test == 1333
    assert cfg.model.backbone.freeze_at == 2  # official default FREEZE_CONV_BODY_AT


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.DYHEAD.FUSE_CONFIG.TYPE", "SCAN"),
        ("MODEL.BACKBONE.CONV_BODY", "EFFICIENT7-FPN-RETINANET"),
        ("MODEL.SOMETHING_NEW", 3),
    ],
)
def test_unsupported_or_unknown_model_keys_are_errors_naming_the_key(key, value):
    tree: dict = {}
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    with pytest.raises(OfficialConfigError, match=key.replace(".", r"\.")):
        config_from_dict(tree)


def test_glipv2_loss_keys_map_onto_the_head_sections():
    fuse = {
        "MLM_LOSS": True,
        "MLM_LOSS_COEF": 0.5,
        "MLM_LOSS_FOR_ONLY_POSITIVES": False,
        "NO_MASK_FOR_OD": True,
        "NO_MASK_FOR_GOLD": True,
        "USE_SHALLOW_CONTRASTIVE_LOSS": True,
        "SHALLOW_MAX_POSITIVE_ANCHORS": 50,
        "USE_SHALLOW_ZERO_PADS": True,
        "SHALLOW_CONTRASTIVE_HIDDEN_DIM": 32,
        "SHALLOW_CONTRASTIVE_LOSS_WEIGHT": 2.0,
    }
    cfg = config_from_dict({"MODEL": {"DYHEAD": {"SHALLOW_LOG_SCALE": 0.3, "FUSE_CONFIG": fuse}}})
    mlm, inter = cfg.model.heads.mlm, cfg.model.heads.inter_image
    assert (mlm.enabled, mlm.weight, mlm.only_positives, mlm.no_mask_for_od, mlm.no_mask_for_gold) == (
        True, 0.5, False, True, True
    )  # fmt: skip
    assert (inter.enabled, inter.max_positive, inter.zero_pad, inter.hidden_dim, inter.weight, inter.log_scale) == (
        True, 50, True, 32, 2.0, 0.3
    )  # fmt: skip
    assert inter.variant == "fpn" and inter.text_source == "fused"
    # Absent keys take the official defaults: both heads off, MLM scoring only positives.
    off = config_from_dict({"MODEL": {"DYHEAD": {"FUSE_CONFIG": {"EARLY_FUSE_ON": True}}}})
    assert not off.model.heads.mlm.enabled and not off.model.heads.inter_image.enabled
    assert off.model.heads.mlm.only_positives and off.model.heads.inter_image.max_positive == 100


def test_backbone_inter_image_variant_imports():
    tree = {"MODEL": {"DYHEAD": {"FUSE_CONFIG": {"USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": True}}}}
    cfg = config_from_dict(tree)
    assert cfg.model.heads.inter_image.enabled and cfg.model.heads.inter_image.variant == "backbone"
    both = {"MODEL": {"DYHEAD": {"FUSE_CONFIG": {"USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": True,
                                                  "USE_SHALLOW_CONTRASTIVE_LOSS": True}}}}  # fmt: skip
    with pytest.raises(OfficialConfigError, match="USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS"):
        config_from_dict(both)


def test_caption_options_import_as_the_official_build_reads_them():
    """CAPTION_CONF and CAPTION_NMS count only with FURTHER_SCREEN (official build.py /
    CaptionTSV); CAPTION_MIN_BOX always."""
    glip_l = {"DATASETS": {"FURTHER_SCREEN": True, "CAPTION_CONF": 0.5, "CAPTION_NMS": -1.0, "CAPTION_MIN_BOX": 2}}
    d = config_from_dict(glip_l).data
    assert (d.caption_conf, d.caption_nms, d.caption_min_box) == (0.5, -1.0, 2)
    d = config_from_dict({"DATASETS": {"FURTHER_SCREEN": True}}).data  # the official defaults, 0.9 and 0.9
    assert (d.caption_conf, d.caption_nms, d.caption_min_box) == (0.9, 0.9, 1)
    d = config_from_dict({"DATASETS": {"CAPTION_CONF": 0.5, "CAPTION_NMS": 0.6, "CAPTION_MIN_BOX": 3}}).data
    assert (d.caption_conf, d.caption_nms, d.caption_min_box) == (0.0, -1.0, 3)


def test_our_yaml_round_trip_and_overrides(tmp_path):
    cfg = load_config(None, ["inference.pre_nms_thresh=0.2", "model.trunk.num_blocks=3"])
    assert cfg.inference.pre_nms_thresh == 0.2 and cfg.model.trunk.num_blocks == 3
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert isinstance(again, GLIPConfig)


def test_our_yaml_rejects_unknown_keys(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"model": {"head": {"num_blockz": 3}}}))
    with pytest.raises(ValueError, match="num_blockz"):
        load_config(p)


def _tree(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


_VL_MASK = {
    "MODEL.RPN_ONLY": False,
    "MODEL.MASK_ON": True,
    "MODEL.BOX_ON": False,
    "MODEL.RPN.ANCHOR_STRIDE": "(8, 16, 32, 64, 128)",
    "MODEL.RPN.RETURN_FUSED_FEATURES": True,
    "MODEL.ROI_HEADS.USE_FPN": True,
    "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": 0.6,
    "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": False,
    "MODEL.ROI_MASK_HEAD.PREDICTOR": "VLMaskRCNNC4Predictor",
    "MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR": "HourglassFPNFeatureExtractor",
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES": "(0.125, 0.0625, 0.03125, 0.015625, 0.0078125)",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.RESOLUTION": 28,
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS": "(256, 256)",
}


def test_official_vl_mask_head_keys_import():
    cfg = config_from_dict(_tree(_VL_MASK))
    m = cfg.model.heads.mask
    assert m.enabled and m.feature_extractor == "HourglassFPNFeatureExtractor"
    assert m.pooler_scales == [0.125, 0.0625, 0.03125, 0.015625, 0.0078125]
    assert (m.pooler_resolution, m.resolution, m.conv_layers, m.fg_iou_threshold) == (14, 28, [256, 256], 0.6)
    assert not config_from_dict({}).model.heads.mask.enabled  # official default MASK_ON False


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.RPN.RETURN_FUSED_FEATURES", False),  # the head pools the post-fusion maps
        ("MODEL.ROI_MASK_HEAD.PREDICTOR", "MaskRCNNC4Predictor"),
        ("MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR", "ResNet50Conv5ROIFeatureExtractor"),
        ("MODEL.ROI_MASK_HEAD.POOLER_SCALES", "(0.0625,)"),
        ("MODEL.ROI_MASK_HEAD.RESOLUTION", 14),
        ("MODEL.BOX_ON", True),
    ],
)
def test_vl_mask_head_values_it_cannot_run_are_errors(key, value):
    with pytest.raises(OfficialConfigError, match=key.replace(".", r"\.")):
        config_from_dict(_tree({**_VL_MASK, key: value}))


def test_mask_only_keys_without_mask_on_are_errors():
    with pytest.raises(OfficialConfigError, match=r"MODEL\.RPN_ONLY"):
        config_from_dict(_tree({"MODEL.RPN_ONLY": False}))


def test_vl_mask_head_takes_the_official_rpn_only_default():
    # The official default RPN_ONLY is False: a mask yaml need not restate it.
    flat = {k: v for k, v in _VL_MASK.items() if k != "MODEL.RPN_ONLY"}
    assert config_from_dict(_tree(flat)).model.heads.mask.enabled


def test_mask_special_must_stay_off():
    # Official MASK_SPECIAL=True leaves special tokens out of the text mask: not implemented.
    def tree(value: bool) -> dict:
        return {"MODEL": {"META_ARCHITECTURE": "GeneralizedVLRCNN", "LANGUAGE_BACKBONE": {"MASK_SPECIAL": value}}}

    config_from_dict(tree(False))
    with pytest.raises(OfficialConfigError, match="MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL=True"):
        config_from_dict(tree(True))
