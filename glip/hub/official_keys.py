"""Names of the official GLIP checkpoint mapped onto this package's modules.

The official checkpoints (``{"model": {"module." + key: tensor}}``) were written by
``GeneralizedVLRCNN`` in microsoft/GLIP. Their names are rewritten here, once, at load
time; our modules keep their own names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

__all__ = ["IGNORED_OFFICIAL_KEYS", "official_key_to_glip", "remap_official_state_dict"]

# Keys some released checkpoints carry that no module of the model uses: the BERT
# position-id buffer (persistent in transformers < 4.31) and the unused BERT pooler.
IGNORED_OFFICIAL_KEYS = re.compile(r"^language_backbone\.body\.model\.(embeddings\.position_ids|pooler\..*)$")

# Plain prefix/name rewrites, applied in order to the key without "module.".
_RULES: list[tuple[re.Pattern[str], str]] = [
    # Official FPN modules are numbered by backbone stage (2..4 = C3..C5); ours from 0.
    (re.compile(r"^backbone\.fpn\.fpn_inner(\d)\."), "backbone.fpn.lateral_convs.{stage}."),
    (re.compile(r"^backbone\.fpn\.fpn_layer(\d)\."), "backbone.fpn.output_convs.{stage}."),
    (re.compile(r"^backbone\.fpn\.top_blocks\.(p6|p7)\."), "backbone.fpn.{0}."),
    (re.compile(r"^language_backbone\.body\.model\."), "text_encoder.bert."),
    (re.compile(r"^rpn\.anchor_generator\."), "anchor_generator."),
    (re.compile(r"^rpn\.head\.dot_product_projection_text\."), "heads.grounding.text_proj."),
    # The MDETR branches (USE_TOKEN_LOSS, USE_CONTRASTIVE_ALIGN_LOSS) are heads of their own;
    # the text resizer lives in VLDyHeadModule officially, in the contrastive head here.
    (re.compile(r"^rpn\.head\.token_logits\."), "heads.mdetr_token.logits."),
    (re.compile(r"^rpn\.resizer\."), "heads.mdetr_align.resizer."),
    (re.compile(r"^rpn\.head\.contrastive_align_projection_image\."), "heads.mdetr_align.image_proj."),
    (re.compile(r"^rpn\.head\.contrastive_align_projection_text\."), "heads.mdetr_align.text_proj."),
    # GLIPv2's MLM head (official VLDyHead.mlm_head; ``bias`` and ``decoder.bias`` are one tensor)
    # and the inter-image loss's parameters (official ATSSLossComputation, "shallow contrastive").
    (re.compile(r"^rpn\.head\.mlm_head\.transform\.dense\."), "heads.mlm.predictor.dense."),
    (re.compile(r"^rpn\.head\.mlm_head\.transform\.LayerNorm\."), "heads.mlm.predictor.norm."),
    (re.compile(r"^rpn\.head\.mlm_head\.decoder\."), "heads.mlm.predictor.decoder."),
    (re.compile(r"^rpn\.head\.mlm_head\.bias$"), "heads.mlm.predictor.decoder.bias"),
    (re.compile(r"^rpn\.loss_evaluator\.shallow_log_scale$"), "heads.inter_image.contrastive.log_scale"),
    (
        re.compile(r"^rpn\.loss_evaluator\.shallow_contrastive_projection_image\."),
        "heads.inter_image.contrastive.image_proj.",
    ),
    (
        re.compile(r"^rpn\.loss_evaluator\.shallow_contrastive_projection_text\."),
        "heads.inter_image.contrastive.text_proj.",
    ),
    # Prompt tuning (official ADD_LINEAR_LAYER / language_prompt_v2): the [1000, D] offset.
    (re.compile(r"^rpn\.tunable_linear\."), "prompt_offset."),
]

# Inside one DyConv block of the tower.
_DYCONV_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^DyConv\.0\.bn\."), "from_coarser.norm."),
    (re.compile(r"^DyConv\.1\.bn\."), "same.norm."),
    (re.compile(r"^DyConv\.2\.bn\."), "from_finer.norm."),
    (re.compile(r"^DyConv\.0\."), "from_coarser."),
    (re.compile(r"^DyConv\.1\."), "same."),
    (re.compile(r"^DyConv\.2\."), "from_finer."),
    (re.compile(r"^AttnConv\.1\."), "scale_attn."),
    (re.compile(r"^relu\.fc\.0\."), "dyrelu.fc1."),
    (re.compile(r"^relu\.fc\.2\."), "dyrelu.fc2."),
    (re.compile(r"^offset\."), "offset."),
]

_FUSION_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^b_attn\.layer_norm_v\."), "norm_v."),
    (re.compile(r"^b_attn\.layer_norm_l\."), "norm_l."),
    (re.compile(r"^b_attn\."), ""),
]

_TOWER = re.compile(r"^rpn\.head\.dyhead_tower\.(\d+)\.(.*)$")
# The official ROIMaskHead's parts -> our MaskHead's (the pooler has no parameters).
_MASK_HEAD_PREFIXES = (
    ("roi_heads.mask.feature_extractor.", "heads.mask.extractor."),
    ("roi_heads.mask.predictor.", "heads.mask.predictor."),
)


def _apply(rules: list[tuple[re.Pattern[str], str]], key: str) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            groups = m.groups()
            stage = int(groups[0]) - 2 if groups and groups[0].isdigit() else None
            return template.format(*groups, stage=stage) + key[m.end() :]
    return None


def official_key_to_glip(key: str, tower_period: int) -> str:
    """Maps one official key (without ``module.``) to this package's name.

    ``tower_period`` is the number of official ``dyhead_tower`` entries per head block:
    3 with early fusion (VLFuse, BertEncoderLayer, DyConv) and 1 without (DyConv).
    Raises ``KeyError`` for a key this architecture does not know.
    """
    m = _TOWER.match(key)
    if m:
        index, rest = int(m.group(1)), m.group(2)
        block, role = divmod(index, tower_period)
        prefix = f"trunk.blocks.{block}."
        if tower_period == 1 or role == 2:
            mapped = _apply(_DYCONV_RULES, rest)
            if mapped is not None:
                return prefix + "dyconv." + mapped
        elif role == 0:
            mapped = _apply(_FUSION_RULES, rest)
            if mapped is not None:
                return prefix + "fusion." + mapped
        else:
            return prefix + "text_layer." + rest
        raise KeyError(key)
    mapped = _apply(_RULES, key)
    if mapped is not None:
        return mapped
    if key.startswith("backbone.body."):
        return key
    if key.startswith("rpn.head."):  # the grounding head's own layers
        return "heads.grounding." + key[len("rpn.head.") :]
    for official, ours in _MASK_HEAD_PREFIXES:  # GLIPv2's VL mask head (MODEL.MASK_ON); same inner names
        if key.startswith(official):
            return ours + key[len(official) :]
    raise KeyError(key)


def remap_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Renames a whole official state dict; drops the keys in ``IGNORED_OFFICIAL_KEYS``.

    The ``module.`` prefix (from DistributedDataParallel) is stripped when every key
    has it, as the official loader does. Keys no module of ours would hold raise a
    ``KeyError`` naming all of them.
    """
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    fused = any(re.match(r"^rpn\.head\.dyhead_tower\.\d+\.b_attn\.", k) for k in state_dict)
    period = 3 if fused else 1
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if IGNORED_OFFICIAL_KEYS.match(key):
            continue
        try:
            out[official_key_to_glip(key, period)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" ... (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
        raise KeyError(f"{len(unknown)} checkpoint keys match no GLIP module: {shown}")
    return out
