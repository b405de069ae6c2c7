"""The manifest of a shard set: ``manifest.json`` beside the shards.

::

    {"format": "glip-shards", "schema": 1, "source": "coco", "kind": "detection",
     "concept_scores": false,                           # boxes carry a teacher's scores
     "categories": [{"id": 1, "name": "cat"}, ...],      # detection data; [] otherwise
     "shards": [{"name": "shard-000000.tar", "samples": 1000, "bytes": 1234567}, ...]}

``samples`` per shard is what lets every process split an epoch without reading the
shards (:mod:`glip.data.shards.layout`). ``kind`` picks the training reader: ``detection``
(prompts of the category names), ``grounding`` (gold captions with ``tokens_positive``),
``caption`` (pseudo-labelled captions), ``vqa`` or ``captions`` (reference captions); ``bytes`` lets a reader notice a shard that was
rewritten or truncated after the manifest. The manifest is written last and atomically,
so a shard set with a manifest is complete.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glip.data.shards.schema import SCHEMA_VERSION

__all__ = ["KINDS", "MANIFEST_NAME", "Manifest", "ShardEntry", "open_shard_set"]

MANIFEST_NAME = "manifest.json"
_FORMAT = "glip-shards"
KINDS = ("detection", "grounding", "caption", "vqa", "captions")


@dataclass
class ShardEntry:
    """One shard: file name (relative to the manifest's folder), samples and size in bytes."""

    name: str
    samples: int
    bytes: int = -1


@dataclass
class Manifest:
    """A shard set: its shards in order, the source it was converted from, the record schema
    version, the reader ``kind`` and (detection data) the category records. ``root``: the
    manifest's folder."""

    shards: list[ShardEntry]
    source: str = ""
    kind: str = "grounding"
    concept_scores: bool = False
    schema: int = SCHEMA_VERSION
    categories: list[dict[str, Any]] = field(default_factory=list)
    root: Path = Path(".")

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def path(self, entry: ShardEntry) -> Path:
        return self.root / entry.name

    def write(self, root: str | Path | None = None) -> Path:
        """Writes ``ROOT/manifest.json`` atomically (tmp + rename) and returns its path."""
        root = Path(root) if root is not None else self.root
        root.mkdir(parents=True, exist_ok=True)
        data = {"format": _FORMAT, "schema": self.schema, "source": self.source, "kind": self.kind,
                "concept_scores": self.concept_scores, "categories": self.categories}  # fmt: skip
        data["num_samples"] = self.num_samples
        data["shards"] = [asdict(s) for s in self.shards]
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / MANIFEST_NAME)
        return root / MANIFEST_NAME

    @staticmethod
    def read(path: str | Path) -> Manifest:
        """The manifest at ``path``; a one-line ``ValueError`` when it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable shard manifest ({e})") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("shards"), list):
            raise ValueError(f"{path}: not a glip shard manifest (write one with `glip data shards`)")
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{path}: shard schema {data.get('schema')!r}; this glip reads {SCHEMA_VERSION}")
        try:
            shards = [ShardEntry(str(s["name"]), int(s["samples"]), int(s.get("bytes", -1))) for s in data["shards"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: a shard entry lacks its name or samples") from None
        kind = str(data.get("kind", "grounding"))
        if kind not in KINDS:
            raise ValueError(f"{path}: unknown kind {kind!r} (expected {', '.join(KINDS)})")
        return Manifest(shards, str(data.get("source", "")), kind, bool(data.get("concept_scores", False)),
                        SCHEMA_VERSION, list(data.get("categories", [])), path.parent)  # fmt: skip

    def check(self) -> None:
        """A one-line ``ValueError`` when a listed local shard is missing or its size differs
        from the manifest's (stat only; the sample counts are checked as shards are read)."""
        for s in self.shards:
            path = self.path(s)
            if not path.is_file():
                raise ValueError(f"{self.root / MANIFEST_NAME} lists {s.name}, which is missing")
            size = path.stat().st_size
            if s.bytes >= 0 and size != s.bytes:
                raise ValueError(
                    f"{self.root / MANIFEST_NAME} disagrees with {s.name}: {s.bytes} bytes listed, {size} on disk "
                    "(rewrite the manifest with the shards)"
                )


def open_shard_set(spec: str | Path) -> Manifest:
    """The shard set named by ``data.train_shards``: a folder holding ``manifest.json``, the
    manifest file itself, or a glob of shard files (the manifest of their folder, restricted
    to them). Checked with :meth:`Manifest.check`; one-line errors."""
    text = str(spec)
    path = Path(text)
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text))
        if not files:
            raise ValueError(f"data.train_shards {text}: no file matches")
        roots = {f.parent for f in files}
        if len(roots) != 1:
            raise ValueError(f"data.train_shards {text}: the shards of one set must share a folder")
        manifest = Manifest.read(_manifest_in(roots.pop(), text))
        wanted = {f.name for f in files}
        unknown = wanted - {s.name for s in manifest.shards} - {MANIFEST_NAME}
        if unknown:
            raise ValueError(f"{manifest.root / MANIFEST_NAME} does not list {sorted(unknown)[0]}")
        manifest.shards = [s for s in manifest.shards if s.name in wanted]
    elif path.is_dir():
        manifest = Manifest.read(_manifest_in(path, text))
    elif path.is_file():
        manifest = Manifest.read(path)
    else:
        raise ValueError(f"data.train_shards {text}: no such folder, manifest or glob")
    if not manifest.shards or manifest.num_samples == 0:
        raise ValueError(f"{manifest.root / MANIFEST_NAME}: the shard set holds no sample")
    manifest.check()
    return manifest


def _manifest_in(folder: Path, spec: str) -> Path:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(
            f"data.train_shards {spec}: no {MANIFEST_NAME} in {folder} (write shards with `glip data shards`)"
        )
    return path
