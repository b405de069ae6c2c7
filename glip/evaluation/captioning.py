"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr (and optionally SPICE) through
pycocoevalcap, the scorer of the COCO caption evaluation server.

The procedure is ``pycocoevalcap.eval.COCOEvalCap.evaluate``'s: every caption (references
and predictions) goes through the PTB tokenizer (Stanford CoreNLP, lower case, punctuation
removed), then each scorer runs on ``{image id: tokenized captions}``. METEOR, SPICE and
the PTB tokenizer run Java. Without ``java`` on the PATH, METEOR (and SPICE) are skipped
with a note and captions are tokenized by :func:`simple_ptb_tokenize`, a Python
approximation of the PTB tokenizer (lower case, words and punctuation split, punctuation
dropped): the other scores may then differ slightly from the server's.
SPICE is off by default: its first run downloads Stanford CoreNLP models.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glip.utils.streams import quiet_stderr

__all__ = [
    "CaptionEvaluation",
    "evaluate_caption_files",
    "evaluate_captions",
    "java_available",
    "load_caption_results",
    "simple_ptb_tokenize",
]

# pycocoevalcap's PTBTokenizer drops these tokens after tokenizing (its PUNCTUATIONS list).
_PUNCTUATION = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
    "(",
    ")",
    "{",
    "}",
}  # fmt: skip (the brackets: PTB writes them -LRB- ... and they are dropped)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|\.\.\.|--|[^\sa-z0-9]")

# Our metric names -> pycocoevalcap's.
_NAMES = {"BLEU-1": "Bleu_1", "BLEU-2": "Bleu_2", "BLEU-3": "Bleu_3", "BLEU-4": "Bleu_4",
          "METEOR": "METEOR", "ROUGE-L": "ROUGE_L", "CIDEr": "CIDEr", "SPICE": "SPICE"}  # fmt: skip


def java_available() -> bool:
    """Whether a ``java`` executable is on the PATH (METEOR, SPICE, the PTB tokenizer)."""
    return shutil.which("java") is not None


def _pycocoevalcap() -> Any:
    try:
        import pycocoevalcap
    except ImportError:
        raise ImportError(
            "caption metrics need pycocoevalcap: pip install pycocoevalcap (or pip install 'glip[caption]')"
        ) from None
    return pycocoevalcap


def simple_ptb_tokenize(caption: str) -> str:
    """A Python stand-in for pycocoevalcap's PTB tokenization (used without Java): lower
    case, words and punctuation split, punctuation tokens dropped, joined by spaces."""
    tokens = _TOKEN.findall(caption.lower())
    return " ".join(t for t in tokens if t not in _PUNCTUATION)


@dataclass
class CaptionEvaluation:
    """Caption scores over a set of images.

    Attributes:
        metrics: ``{"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr"[, "SPICE"]: score}``
            (corpus-level, as the COCO server: BLEU over the corpus, the others averaged).
        per_image: ``{image id: {metric: score}}``.
        num_images: the images scored.
        notes: what was skipped or approximated, one line each.
    """

    metrics: dict[str, float]
    per_image: dict[Any, dict[str, float]] = field(default_factory=dict)
    num_images: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.metrics, "num_images": self.num_images, "notes": list(self.notes)}


def evaluate_captions(
    references: Mapping[Any, Sequence[str]],
    predictions: Mapping[Any, str],
    *,
    meteor: bool | None = None,
    spice: bool = False,
    quiet: bool = False,
) -> CaptionEvaluation:
    """Scores one predicted caption per image against the image's reference captions.

    Args:
        references: ``{image id: [reference captions]}``.
        predictions: ``{image id: caption}``; every image of ``references`` needs one (and
            only those are scored).
        meteor: compute METEOR (default: when Java is available; True without Java is an error).
        spice: also SPICE (needs Java; downloads Stanford models on first use).
        quiet: silence what the Java tools print on stderr (the PTB tokenizer's
            "PTBTokenizer tokenized ... tokens" lines).
    """
    missing = [i for i in references if i not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} images have no predicted caption (e.g. image id {missing[0]!r})")
    if not references:
        raise ValueError("no image to score")
    empty = [i for i, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"image id {empty[0]!r} has no reference caption")
    _pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    java = java_available()
    notes: list[str] = []
    if meteor and not java:
        raise ValueError("METEOR needs Java (no `java` on the PATH)")
    if spice and not java:
        raise ValueError("SPICE needs Java (no `java` on the PATH)")
    use_meteor = java if meteor is None else meteor
    if not java:
        notes.append("java not found: METEOR skipped; captions tokenized by a Python stand-in of the PTB tokenizer")
    elif not use_meteor:
        notes.append("METEOR not computed (meteor=False)")
    ids = list(references)
    gts = {i: [{"caption": c} for c in references[i]] for i in ids}
    res = {i: [{"caption": predictions[i]}] for i in ids}
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        with quiet_stderr(quiet):
            gts_t, res_t = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    else:
        gts_t = {i: [simple_ptb_tokenize(c["caption"]) for c in v] for i, v in gts.items()}
        res_t = {i: [simple_ptb_tokenize(c["caption"]) for c in v] for i, v in res.items()}
    scorers: list[tuple[Any, list[str]]] = [(Bleu(4), ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"])]
    if use_meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorers.append((Meteor(), ["METEOR"]))
    scorers += [(Rouge(), ["ROUGE-L"]), (Cider(), ["CIDEr"])]
    if spice:
        from pycocoevalcap.spice.spice import Spice

        scorers.append((Spice(), ["SPICE"]))
    metrics: dict[str, float] = {}
    per_image: dict[Any, dict[str, float]] = {i: {} for i in ids}
    order = list(gts_t)  # the scorers' own iteration order
    for scorer, names in scorers:
        with quiet_stderr(quiet):  # METEOR and SPICE run Java too
            score, scores = scorer.compute_score(gts_t, res_t)
        if len(names) == 1:
            score, scores = [score], [scores]
        for name, total, each in zip(names, score, scores):
            metrics[name] = float(total)
            for image_id, value in zip(order, each):
                per_image[image_id][name] = float(value["All"]["f"]) if isinstance(value, dict) else float(value)
    return CaptionEvaluation(metrics=metrics, per_image=per_image, num_images=len(ids), notes=notes)


def load_caption_results(path: str | Path) -> dict[Any, str]:
    """A COCO caption results file (``[{"image_id", "caption"}, ...]``) -> ``{image id: caption}``."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(r, dict) and "image_id" in r and "caption" in r for r in data):
        raise ValueError(f"{path} is not a caption results file (a list of {{'image_id', 'caption'}})")
    return {r["image_id"]: str(r["caption"]) for r in data}


def evaluate_caption_files(
    ann_file: str | Path,
    results_file: str | Path,
    *,
    meteor: bool | None = None,
    spice: bool = False,
    quiet: bool = False,
) -> CaptionEvaluation:
    """:func:`evaluate_captions` of a COCO-captions ground-truth json and a results file
    (the images of the results file are scored, as the COCO server's ``params['image_id']``)."""
    gt = json.loads(Path(ann_file).read_text(encoding="utf-8"))
    predictions = load_caption_results(results_file)
    references: dict[Any, list[str]] = {}
    for ann in gt.get("annotations", []):
        references.setdefault(ann["image_id"], []).append(ann["caption"])
    unknown = [i for i in predictions if i not in references]
    if unknown:
        raise ValueError(f"{results_file}: image id {unknown[0]!r} has no reference caption in {ann_file}")
    return evaluate_captions(
        {i: references[i] for i in predictions}, predictions, meteor=meteor, spice=spice, quiet=quiet
    )
