"""Pseudo-labelling caption shards into shards: ``glip pseudo-label --shards IN --out OUT``.

The json path (:mod:`glip.tools.pseudo_label`) labels a captions json into one grounding
json; this one labels tar shards into tar shards, for caption sets too large for a json:

- **Inputs.** img2dataset's output (``{key}.jpg`` + ``{key}.txt`` caption + ``{key}.json``
  download metadata per sample; its parquet and ``*_stats.json`` files are ignored), or a
  glip shard set (a record's ``captions``, else its ``image.caption``). ``IN`` is a folder
  (its ``manifest.json``'s shards when it has one, else its ``*.tar`` files in name order),
  a glob of tar files or one tar file.
- **One output shard per input shard**, of the same name, in ``OUT``: each caption with at
  least ``min_boxes`` boxes becomes a sample of the shard schema
  (:mod:`glip.data.shards.schema`): the input's image bytes unchanged, the image record
  (``id`` the sample key, ``caption``, ``height``, ``width``, the ``url`` when known; the
  teacher's ``concepts`` when it scores them) and one annotation per box (``bbox``
  ``[x, y, w, h]``, ``tokens_positive``, ``phrase``, ``score``, ``category_id`` 1, as the
  json path writes them). A sample of several captions is written once per caption, keys
  ``{key}_{k}``. A shard is written to a temporary file renamed into place; then
  ``{name}.stats.json`` records its counts, and marks it done.
- **Work split and resume.** Process ``k`` of ``n`` labels input shards ``i % n == k``
  (``i``: position in ``IN``'s order). A shard with its stats file is skipped, any other is
  (re)labelled from its start, so an interrupted run loses at most one shard per process,
  whatever the number of processes of the earlier run. ``OUT/settings.json`` holds the
  options and a digest of the input shards' names and sizes: a resumed run must use the
  same.
- **Bad input.** A sample whose image or json member cannot be read is skipped and counted
  (``corrupt``), an image the teacher fails on too (``failed``); an input shard that is
  truncated or not a tar is reported by name, its output not written, and the other shards
  go on.
- **Manifest.** When every output shard is done, ``OUT/manifest.json`` lists them in input
  order (``kind: caption``), so ``data.train_shards=OUT`` trains on the result.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glip.data.caption_screen import CaptionScreen
from glip.data.shards import Manifest, RecordError, ShardEntry, ShardError, ShardWriter, decode_image, iter_shard
from glip.data.shards.manifest import MANIFEST_NAME
from glip.data.shards.schema import IMAGE_EXTENSIONS, make_record, record_from_members
from glip.tools.pseudo_label import (
    CATEGORIES,
    PseudoLabelSettings,
    ShardStore,
    annotation_record,
    label_captions,
)
from glip.tools.teachers import Chunker, Teacher

__all__ = [
    "ShardLabelSummary",
    "ShardStats",
    "input_digest",
    "input_shards",
    "label_shard",
    "label_shards",
    "output_shard",
    "output_totals",
    "shard_done",
    "shard_captions",
    "write_output_manifest",
]

logger = logging.getLogger(__name__)


def input_shards(spec: str | Path) -> list[Path]:
    """The input shards named by ``--shards``: a folder (its manifest's shards, else its
    ``*.tar``), a glob or one tar file, in order. One-line ``ValueError`` s for no shard
    and for two shards of one name (their outputs would collide)."""
    text = str(spec)
    path = Path(text)
    if any(c in text for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(text) if p.endswith(".tar"))
    elif path.is_dir():
        manifest = path / MANIFEST_NAME
        if manifest.is_file():
            read = Manifest.read(manifest)
            paths = [read.path(s) for s in read.shards]
        else:
            paths = sorted(path.glob("*.tar"))
    elif path.is_file():
        paths = [path]
    else:
        raise ValueError(f"--shards {text}: no such folder, tar file or glob")
    if not paths:
        raise ValueError(f"--shards {text}: no .tar shard found")
    seen: dict[str, Path] = {}
    for p in paths:
        if p.name in seen:
            raise ValueError(f"--shards {text}: two shards are named {p.name} ({seen[p.name]}, {p})")
        seen[p.name] = p
    return paths


def input_digest(paths: Sequence[Path]) -> str:
    """sha256 of the input shards' names and sizes (what a resumed run must find again)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name}\t{p.stat().st_size if p.is_file() else -1}\n".encode())
    return h.hexdigest()


def shard_captions(path: Path) -> Iterator[str]:
    """The captions of one input shard's readable samples (the CLIP teacher's background pool)."""
    for members in iter_shard(path):
        try:
            _, record = record_from_members(members)
        except RecordError:
            continue
        yield from _captions(record)


def _captions(record: dict[str, Any]) -> list[str]:
    listed = [str(c) for c in record.get("captions", []) if str(c).strip()]
    caption = str(record["image"].get("caption") or "").strip()
    return listed or ([caption] if caption else [])


@dataclass
class ShardStats:
    """One output shard: samples read from the input, written, unreadable (``corrupt``),
    failed by the teacher, captions left out for too few boxes (``dropped``), the output's
    size, whether some box carries concept scores, and its boxes."""

    name: str
    read: int = 0
    samples: int = 0
    corrupt: int = 0
    failed: int = 0
    dropped: int = 0
    bytes: int = 0
    concept_scores: bool = False
    boxes: int = 0


def _stats_path(out: Path, name: str) -> Path:
    return out / f"{name}.stats.json"


def _read_stats(out: Path, name: str) -> ShardStats | None:
    """The stats of a finished output shard, else None (no stats, or a shard of another size)."""
    path = _stats_path(out, name)
    try:
        stats = ShardStats(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    shard = out / name
    return stats if shard.is_file() and shard.stat().st_size == stats.bytes else None


def label_shard(
    src: Path, out: Path, teacher: Teacher, chunker: Chunker, screen: CaptionScreen, min_boxes: int
) -> ShardStats:
    """Labels input shard ``src`` into ``OUT/{src.name}`` (see the module docstring) and
    writes its stats. A :class:`~glip.data.shards.ShardError` when ``src`` cannot be read
    (nothing is written then)."""
    with output_shard(out, src.name) as (writer, stats):
        for members in iter_shard(src):
            stats.read += 1
            key = str(members.get("__key__", "?"))
            try:
                image_bytes, record = record_from_members(members)
                image = decode_image(image_bytes)
            except (RecordError, OSError, ValueError, SyntaxError) as e:
                stats.corrupt += 1
                logger.warning("shard %s sample %s unreadable, skipped: %s", src, key, e)
                continue
            captions = _captions(record)
            try:
                labelled = label_captions(image, captions, key, teacher, chunker, screen)
            except Exception as e:  # one image the teacher cannot run must not stop the job
                stats.failed += 1
                logger.warning("shard %s sample %s skipped: %s: %s", src, key, type(e).__name__, e)
                continue
            ext = next(e for e in IMAGE_EXTENSIONS if e in members)
            for k, cap in enumerate(labelled):
                if len(cap["annotations"]) < min_boxes:
                    stats.dropped += 1
                    continue
                name = key if len(labelled) == 1 else f"{key}_{k}"
                info = {"id": name, "file_name": name, "height": int(image.shape[0]), "width": int(image.shape[1]),
                        "caption": cap["caption"]}  # fmt: skip
                if "url" in record["image"]:
                    info["url"] = record["image"]["url"]
                if "concepts" in cap:
                    info["concepts"] = cap["concepts"]
                anns = [annotation_record(a) for a in cap["annotations"]]
                stats.concept_scores = stats.concept_scores or any("concept_scores" in a for a in anns)
                writer.write(name, {ext: image_bytes, "json": make_record(name, info, anns)})
                stats.samples, stats.boxes = stats.samples + 1, stats.boxes + len(anns)
    return stats


@contextmanager
def output_shard(out: Path, name: str) -> Iterator[tuple[ShardWriter, ShardStats]]:
    """Writes output shard ``OUT/name``: yields its writer and stats to fill; when the block
    ends, the shard is renamed into place and ``{name}.stats.json`` (with its size) marks it
    done (an exception discards it). Temporary files of an interrupted run are removed first."""
    for stale in out.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)
    stats = ShardStats(name)
    with ShardWriter(out / name) as writer:
        yield writer, stats
    stats.bytes = (out / name).stat().st_size
    tmp = _stats_path(out, f".{name}.{os.getpid()}")
    tmp.write_text(json.dumps(asdict(stats)), encoding="utf-8")
    os.replace(tmp, _stats_path(out, name))


def shard_done(out: Path, name: str) -> bool:
    """Whether output shard ``OUT/name`` is finished (its stats file matches its size)."""
    return _read_stats(out, name) is not None


@dataclass
class ShardLabelSummary:
    """One process's run: its shards labelled now, found done, and unreadable (messages);
    the samples read, written, corrupt, failed and dropped over the shards labelled now."""

    labelled: int = 0
    already_done: int = 0
    unreadable: list[str] = field(default_factory=list)
    read: int = 0
    samples: int = 0
    corrupt: int = 0
    failed: int = 0
    dropped: int = 0


def label_shards(
    inputs: Sequence[Path],
    out: str | Path,
    teacher: Teacher,
    chunker: Chunker,
    store: ShardStore,
    settings: PseudoLabelSettings,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    progress: bool = True,
) -> ShardLabelSummary:
    """Labels input shards ``i % num_shards == shard_index`` that are not done yet into
    ``out`` (whose :class:`ShardStore` ``store`` holds the settings)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is not in [0, {num_shards})")
    out = Path(out)
    store.check_settings(settings)
    mine = [p for i, p in enumerate(inputs) if i % num_shards == shard_index]
    todo = [p for p in mine if _read_stats(out, p.name) is None]
    summary = ShardLabelSummary(already_done=len(mine) - len(todo))
    # The json path screens with NMS only; the confidence is the teacher's threshold.
    screen = CaptionScreen(conf=0.0, nms=settings.nms, min_boxes=0)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="shard", desc=f"pseudo-label {shard_index + 1}/{num_shards}", file=sys.stderr)
    try:
        for src in todo:
            try:
                stats = label_shard(src, out, teacher, chunker, screen, settings.min_boxes)
            except ShardError as e:
                logger.error("%s", e)
                summary.unreadable.append(str(e))
                continue
            finally:
                if bar is not None:
                    bar.update(1)
            summary.labelled += 1
            for name in ("read", "samples", "corrupt", "failed", "dropped"):
                setattr(summary, name, getattr(summary, name) + getattr(stats, name))
    finally:
        if bar is not None:
            bar.close()
    return summary


def write_output_manifest(inputs: Sequence[Path], out: str | Path, source: str = "pseudo-label") -> Manifest | None:
    """Writes ``OUT/manifest.json`` (``kind: caption``, made by ``source``) when every input
    shard's output is done, and returns it; None (nothing written) while some is not."""
    out = Path(out)
    stats = [_read_stats(out, p.name) for p in inputs]
    if any(s is None for s in stats):
        return None
    done = [s for s in stats if s is not None]
    entries = [ShardEntry(s.name, s.samples, s.bytes) for s in done]
    concepts = any(s.concept_scores for s in done)
    manifest = Manifest(entries, source, "caption", concepts, categories=list(CATEGORIES), root=out)
    manifest.write()
    return manifest


def output_totals(inputs: Sequence[Path], out: str | Path) -> dict[str, int]:
    """The counts summed over every finished output shard (for the final message)."""
    totals = {"read": 0, "samples": 0, "corrupt": 0, "failed": 0, "dropped": 0, "boxes": 0}
    for p in inputs:
        stats = _read_stats(Path(out), p.name)
        if stats is not None:
            for k in totals:
                totals[k] += getattr(stats, k)
    return totals
