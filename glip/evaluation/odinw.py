"""The ODinW suites: each dataset's official files, class names and prompts.

The facts live in the packaged ``glip/configs/odinw_datasets.yaml`` (the repository's
``configs/odinw_datasets.yaml``), transcribed from the official ``configs/odinw_13`` and
``configs/odinw_35`` yamls.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

__all__ = ["SUITES", "OdinwDataset", "odinw_suite"]

SUITES = ("odinw13", "odinw35")
_DATA_FILE = "odinw_datasets.yaml"


@dataclass(frozen=True)
class OdinwDataset:
    """One ODinW dataset.

    Attributes:
        name: the official config's stem, e.g. ``"pothole"``.
        eval_split: the split the official zero-shot evaluation uses (``DATASETS.TEST``).
        splits: ``{split: (annotation file, image folder)}``, relative to the data root.
        categories: official ``OVERRIDE_CATEGORY`` as ``((id, name), ...)`` (names
            replace the annotation file's by id), or ``None``.
        caption_prompt: official ``CAPTION_PROMPT`` as ``((prefix, name, suffix), ...)``
            in contiguous category order, or ``None``.
    """

    name: str
    eval_split: str
    splits: dict[str, tuple[str, str]]
    categories: tuple[tuple[int, str], ...] | None
    caption_prompt: tuple[tuple[str, str, str], ...] | None

    def files(self, root: str | Path, split: str | None = None) -> tuple[Path, Path]:
        """``(annotation file, image folder)`` under ``root`` (the folder holding ``odinw/``,
        or ``odinw/`` itself) for ``split`` (default: :attr:`eval_split`)."""
        split = split or self.eval_split
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r} (it has {', '.join(self.splits)})")
        ann, images = self.splits[split]
        root = Path(root)
        if not (root / "odinw").is_dir() and root.name == "odinw":
            root = root.parent
        return root / ann, root / images


@cache
def _load() -> dict[str, tuple[OdinwDataset, ...]]:
    raw = yaml.safe_load((resources.files("glip.configs") / _DATA_FILE).read_text(encoding="utf-8"))
    out = {}
    for suite in SUITES:
        out[suite] = tuple(
            OdinwDataset(
                name=e["name"],
                eval_split=e["eval_split"],
                splits={k: (v[0], v[1]) for k, v in e["splits"].items()},
                categories=tuple((int(i), str(n)) for i, n in e["categories"]) if e["categories"] else None,
                caption_prompt=tuple((p, n, s) for p, n, s in e["caption_prompt"]) if e["caption_prompt"] else None,
            )
            for e in raw[suite]
        )
    return out


def odinw_suite(name: str) -> tuple[OdinwDataset, ...]:
    """The datasets of ``"odinw13"`` (GLIP paper) or ``"odinw35"`` (ELEVATER / CVinW)."""
    key = name.lower().replace("_", "").replace("-", "")
    if key not in SUITES:
        raise ValueError(f"unknown ODinW suite {name!r}; choose one of {', '.join(SUITES)}")
    return _load()[key]
