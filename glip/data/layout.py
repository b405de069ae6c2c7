"""Dataset folders as users have them: which COCO json and image folder each split is.

Two layouts are read:

- **Roboflow / ODinW export**: split folders ``train/``, ``valid/`` (or ``val/``),
  ``test/``, each holding ``_annotations.coco.json`` and its images beside it (every
  ODinW dataset is stored this way, as is any Roboflow "COCO JSON" download).
- **glip data synthetic**: ``train.json``, ``val.json`` (``test.json``) and ``images/``
  shared by the splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROBOFLOW_ANNOTATIONS", "DatasetLayout", "Split", "read_dataset_dir"]

ROBOFLOW_ANNOTATIONS = "_annotations.coco.json"
# Split folder names of a Roboflow export, by our split name (Roboflow writes "valid").
_ROBOFLOW_SPLITS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}


@dataclass(frozen=True)
class Split:
    """One split: a COCO json and the folder its ``file_name`` entries are relative to."""

    json: Path
    images: Path


@dataclass(frozen=True)
class DatasetLayout:
    """The splits found in a dataset folder (``train`` is always there).

    Attributes:
        name: the folder's name.
        layout: ``"roboflow"`` or ``"synthetic"``.
    """

    name: str
    layout: str
    train: Split
    val: Split | None = None
    test: Split | None = None

    def split(self, name: str) -> Split:
        """``train``, ``val`` (alias ``valid``) or ``test``; ``ValueError`` when absent."""
        key = "val" if name == "valid" else name
        found = getattr(self, key, None) if key in ("train", "val", "test") else None
        if found is None:
            have = [k for k in ("train", "val", "test") if getattr(self, k) is not None]
            raise ValueError(f"dataset {self.name} has no {name!r} split (it has {', '.join(have)})")
        return found


def _roboflow(root: Path) -> DatasetLayout | None:
    splits: dict[str, Split] = {}
    for key, folders in _ROBOFLOW_SPLITS.items():
        for folder in folders:
            ann = root / folder / ROBOFLOW_ANNOTATIONS
            if ann.is_file():
                splits[key] = Split(ann, ann.parent)
                break
    if not splits:
        return None
    if "train" not in splits:
        raise FileNotFoundError(f"{root}: no train/{ROBOFLOW_ANNOTATIONS} (found {', '.join(splits)})")
    return DatasetLayout(root.name, "roboflow", splits["train"], splits.get("val"), splits.get("test"))


def _synthetic(root: Path) -> DatasetLayout | None:
    images = root / "images"
    if not (root / "train.json").is_file():
        return None
    if not images.is_dir():
        raise FileNotFoundError(f"{root}: train.json has no images/ folder beside it")
    split = {n: Split(root / f"{n}.json", images) for n in ("val", "test") if (root / f"{n}.json").is_file()}
    return DatasetLayout(
        root.name, "synthetic", Split(root / "train.json", images), split.get("val"), split.get("test")
    )


def read_dataset_dir(root: str | Path) -> DatasetLayout:
    """The splits of a dataset folder in either layout (see the module docstring).

    Raises:
        FileNotFoundError: the folder is missing or is in neither layout (the message
            says what was looked for).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    found = _roboflow(root) or _synthetic(root)
    if found is None:
        raise FileNotFoundError(
            f"{root} is not a dataset folder: expected train/{ROBOFLOW_ANNOTATIONS} (+ valid/, test/; a Roboflow or "
            "ODinW export) or train.json + val.json + images/ (glip data synthetic)"
        )
    return found
