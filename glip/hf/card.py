"""The ``README.md`` model card that ``save_pretrained`` writes."""

from __future__ import annotations

from dataclasses import dataclass

from glip.hub.zoo import ZOO
from glip.modeling.glip import GLIP

__all__ = ["CardFacts", "card_facts", "model_card"]

# The official release (microsoft/GLIP, MIT license) and its paper.
OFFICIAL_SOURCE = "the official GLIP release (github.com/microsoft/GLIP), converted by glip"
OFFICIAL_LICENSE = "mit"
PAPER = "Li et al., Grounded Language-Image Pre-training, CVPR 2022 (arXiv:2112.03857)"


@dataclass(frozen=True)
class CardFacts:
    """What a model card states about one model.

    Attributes:
        source: where the weights come from.
        license: the weights' license (a Hugging Face license id).
        training_data: the data the release names.
        metrics: the measured or reported numbers, or a sentence saying none are known.
    """

    source: str
    license: str
    training_data: str
    metrics: str


DEMO_FACTS = CardFacts(
    source="`demo-shapes`, bundled with the glip package (trained by scripts/train_demo.py and "
    "scripts/train_demo_vl.py; the text encoder is the pretrained all-MiniLM-L6-v2, Apache-2.0)",
    license="mit",
    training_data="synthetic images of coloured shapes (glip.data.synthetic: 16 colour-shape classes; "
    "red triangle, red diamond and blue diamond held out of the grounding stage), with generated "
    "questions and captions. No real photographs.",
    metrics="On 80 synthetic validation images, 16 classes prompted together (pycocotools): box AP 40.9, "
    "AP50 64.6; mask AP 47.7, AP50 65.1; held-out classes box AP 27.4. VQA accuracy 0.674 (466 questions), "
    "captioning CIDEr 2.82 (greedy), on 100 fresh synthetic images (docs/demo-model.md).",
)
_DEMO_NAMES = ("demo-shapes", "glip-synthetic-tiny")  # the zoo name and its config's name


def card_facts(name: str | None) -> CardFacts:
    """The facts of a model by its config name: a zoo model's from the zoo table, the demo's
    from docs/demo-model.md, otherwise the statement that they are not known."""
    if name in _DEMO_NAMES:
        return DEMO_FACTS
    entry = ZOO.get(name or "")
    if entry is not None and entry.repo:
        return CardFacts(
            source=f"{OFFICIAL_SOURCE}: `{entry.filename}` from the Hugging Face repo {entry.repo}",
            license=OFFICIAL_LICENSE,
            training_data=entry.description.split(":", 1)[-1].split(". ")[0].strip() + " (as the release names it)",
            metrics=entry.description.split(". ", 1)[-1] + " (reported by the official release)",
        )
    return CardFacts(
        source=f"a glip model (config name {name!r}): converted from an official GLIP checkpoint or trained "
        "with glip; the card's writer did not record which",
        license="other",
        training_data="not recorded in the weights; see the source of the checkpoint",
        metrics="none measured for these weights",
    )


def _architecture(model: GLIP) -> str:
    cfg = model.config
    backbone = cfg.model.backbone.type
    if backbone == "swin":
        backbone += f" (embed {cfg.model.backbone.swin.embed_dim}, depths {list(cfg.model.backbone.swin.depths)})"
    heads = ", ".join(model.heads.keys())
    return (
        f"visual backbone {backbone}; text encoder {cfg.model.text.type} ({cfg.model.text.encoder}, "
        f"{cfg.model.text.dim}-d, prompts of up to {model.max_query_len} tokens); heads: {heads}; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
    )


def model_card(model: GLIP) -> str:
    """The card's markdown, with its YAML metadata block."""
    name = getattr(model.config, "name", None)
    facts = card_facts(name)
    title = name or "glip model"
    return f"""---
license: {facts.license}
library_name: glip
pipeline_tag: zero-shot-object-detection
tags:
- glip
- zero-shot-object-detection
- open-vocabulary-detection
---

# {title}

A GLIP model ({PAPER}) saved by the `glip` package: open-vocabulary detection from a text
prompt (GLIPv2 heads, when present, also segment, answer questions and caption).

- **Architecture:** {_architecture(model)}.
- **Source weights:** {facts.source}.
- **License of the weights:** {facts.license}.
- **Training data:** {facts.training_data}
- **Metrics:** {facts.metrics}

## How to use

```python
import glip.hf  # registers the "glip" model type with transformers
from transformers import pipeline

detector = pipeline("zero-shot-object-detection", model="THIS_FOLDER_OR_REPO")
detector("image.jpg", candidate_labels=["a cat", "a dog"], threshold=0.5)
```

or with glip itself: `glip.predict("image.jpg", ["a cat", "a dog"], model="THIS_FOLDER")`.
The pipeline's results equal `glip.predict`'s with the same labels and threshold.

## Intended use and limits

Intended for research and prototyping of grounded / open-vocabulary detection. The model
finds what the prompt names, within what its training data covered; it can miss objects,
confuse similar phrases and give confident wrong boxes, and it was not evaluated for any
safety-critical or surveillance use. All labels of one call are scored together in one
prompt (GLIP fuses the prompt with the image), so a label's scores depend on the others.
"""
