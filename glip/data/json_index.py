"""A COCO-format json as an on-disk, memory-mapped index: any size at constant memory.

:meth:`CocoIndex.load <glip.data.annotations.CocoIndex.load>` holds the whole json as
Python objects (about 4.7 KB per MDETR-style caption, in every process and, by
copy-on-read, in every loader worker). :class:`MappedCocoIndex` has the same four
attributes (``images``, ``annotations``, ``categories``, ``image_ids``) but reads one
image's records from disk when they are asked for:

- a one-time conversion (:func:`build_index`) streams the json
  (:mod:`glip.data.json_stream`, never the whole file as objects) into a folder of flat
  files: ``images.bin`` and ``annotations.bin`` hold the records' json text, grouped by
  image in ascending image id (annotations in file order within an image), and ``.npy``
  columns hold the image ids, the byte range of each image's records, the annotation
  count per image, whether the image is usable for training (official
  ``has_valid_annotation``), whether some box has a teacher's ``concept_scores``, and
  each annotation's ``score`` (1.0 when absent; for the caption screen);
- the folder is cached as ``<json name>.<key>.glipidx`` beside the json, or under
  ``cache_dir`` (default ``$GLIP_CACHE/json-index`` when the json's folder is read-only);
  ``key`` hashes the json's size and modification time, so an edited json gets a new
  index; the folder appears in one rename, so concurrent processes never see half of it;
- reading maps the columns (``numpy`` memmaps: pages shared by every process and worker,
  nothing copied on read), reads an image's records with ``pread`` and decodes them with
  :func:`json.loads`: the same values :func:`json.load` gives, so samples are
  bit-identical to the json path.

Image ids must be integers (COCO's); a json with other ids is read by ``CocoIndex.load``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glip.data.annotations import CocoIndex
from glip.data.json_stream import stream_coco
from glip.utils.fs import atomic_directory

__all__ = ["AUTO_INDEX_BYTES", "INDEX_MODES", "IdArray", "MappedCocoIndex", "build_index", "index_folder", "open_index"]

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
INDEX_MODES = ("auto", "memory", "mapped")
# "auto" maps jsons from this size on (about 70 k MDETR-style captions, +330 MiB per process as objects).
AUTO_INDEX_BYTES = 64 << 20


class NotIndexable(ValueError):
    """The json has records the index cannot key (image ids that are not integers)."""


class IdArray(Sequence[int]):
    """A read-only ``int64`` array seen as a sequence of Python ints (no per-item objects kept)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return IdArray(self.values[item])
        return int(self.values[item])

    def __iter__(self) -> Iterator[int]:
        return (int(v) for v in self.values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _good_box(ann: Mapping[str, Any]) -> bool:
    """Official ``has_valid_annotation``'s per-box test: neither side is at most 1 pixel."""
    bbox = ann.get("bbox")
    return isinstance(bbox, list) and len(bbox) >= 4 and not any(v <= 1 for v in bbox[2:])


class _Builder:
    """The conversion's state while the json streams by: record text to the scratch files,
    one number per record in compact arrays."""

    def __init__(self, folder: Path, source: Path) -> None:
        self.source = source
        self.images_raw = open(folder / "images.raw", "wb")
        self.anns_raw = open(folder / "annotations.raw", "wb")
        self.image_ids, self.image_off = array("q"), array("q", [0])
        self.ann_image, self.ann_off = array("q"), array("q", [0])
        self.ann_known = bytearray()  # image_id is an integer
        self.ann_good, self.ann_concepts = bytearray(), bytearray()
        self.scores = array("d")
        self.categories: list[Any] = []

    def on_record(self, key: str, value: Any, text: str) -> None:
        if not isinstance(value, dict):
            raise ValueError(f"{self.source}: an element of {key!r} is not an object")
        data = text.encode("utf-8")
        if key == "images":
            if not _is_int(value.get("id")):
                raise NotIndexable(f"{self.source}: image id {value.get('id')!r} is not an integer")
            self.image_ids.append(value["id"])
            self.images_raw.write(data)
            self.image_off.append(self.image_off[-1] + len(data))
            return
        if "image_id" not in value:
            raise ValueError(f"{self.source}: annotation {value.get('id')} has no image_id")
        known = _is_int(value["image_id"])
        self.ann_known.append(known)
        self.ann_image.append(value["image_id"] if known else 0)
        self.ann_good.append(_good_box(value))
        self.ann_concepts.append("concept_scores" in value)
        try:
            self.scores.append(float(value.get("score", 1.0)))
        except (TypeError, ValueError):
            self.scores.append(float("nan"))  # fails every confidence filter
        self.anns_raw.write(data)
        self.ann_off.append(self.ann_off[-1] + len(data))

    def on_value(self, key: str, value: Any) -> None:
        if key == "categories":
            self.categories = list(value)


def _copy_grouped(raw: Path, out: Path, offsets: np.ndarray, order: np.ndarray, sep: bytes) -> np.ndarray:
    """Writes the records of ``raw`` (record ``i``: bytes ``offsets[i]:offsets[i+1]``) in
    ``order``, each followed by ``sep``; returns the new start of each (and the end).
    Read with ``pread`` (not a memory map), so the file's pages never count as this
    process's memory."""
    starts = np.zeros(len(order) + 1, dtype=np.int64)
    fd = os.open(raw, os.O_RDONLY)
    try:
        with open(out, "wb") as f:
            pos = 0
            for j, i in enumerate(order.tolist()):
                length = int(offsets[i + 1] - offsets[i])
                f.write(os.pread(fd, length, int(offsets[i])) + sep)
                pos += length + len(sep)
                starts[j + 1] = pos
    finally:
        os.close(fd)
    raw.unlink()
    return starts


def build_index(path: str | Path, folder: str | Path) -> None:
    """Converts the COCO-format json at ``path`` into the index files in ``folder``
    (an existing empty folder). Memory: one record plus about 40 bytes per annotation.

    A ``ValueError`` naming the file for invalid json or an annotation of an unknown
    image; :class:`NotIndexable` for image ids that are not integers.
    """
    path, folder = Path(path), Path(folder)
    b = _Builder(folder, path)
    try:
        keys = stream_coco(path, b.on_record, b.on_value)
    finally:
        b.images_raw.close()
        b.anns_raw.close()
    ids = np.frombuffer(b.image_ids, dtype=np.int64) if b.image_ids else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeated):  # one rule with CocoIndex.load (glip.utils.coco_json): an image id is unique
        position = int(order[repeated[0] + 1])
        raise ValueError(f"{path}: images[{position}]: id {int(ids[position])} is repeated")
    sorted_ids = ids[order]
    n = len(sorted_ids)
    ann_image = np.frombuffer(b.ann_image, dtype=np.int64) if b.ann_image else np.zeros(0, np.int64)
    where = np.searchsorted(sorted_ids, ann_image)  # [A] image position of each annotation
    found = np.frombuffer(bytes(b.ann_known), dtype=bool) & (where < n)
    found[found] = sorted_ids[where[found]] == ann_image[found]
    if not found.all():
        bad = int(np.argmin(found))
        with open(folder / "annotations.raw", "rb") as f:
            f.seek(b.ann_off[bad])
            ann = json.loads(f.read(b.ann_off[bad + 1] - b.ann_off[bad]).decode("utf-8"))
        raise ValueError(f"{path}: annotation {ann.get('id')} names unknown image {ann['image_id']}")
    ann_order = np.argsort(where, kind="stable")  # grouped by image, file order within
    image_bytes = _copy_grouped(folder / "images.raw", folder / "images.bin", np.asarray(b.image_off), order, b"")
    ann_bytes = _copy_grouped(
        folder / "annotations.raw", folder / "annotations.tmp", np.asarray(b.ann_off), ann_order, b","
    )
    os.replace(folder / "annotations.tmp", folder / "annotations.bin")
    counts = np.bincount(where, minlength=n)
    ann_bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [n + 1]
    good = np.frombuffer(bytes(b.ann_good), dtype=bool)
    concepts = np.frombuffer(bytes(b.ann_concepts), dtype=bool)
    np.save(folder / "image_ids.npy", sorted_ids)
    np.save(folder / "image_bytes.npy", image_bytes)
    np.save(folder / "ann_bounds.npy", ann_bounds)
    np.save(folder / "ann_bytes.npy", ann_bytes[ann_bounds])  # byte range of each image's annotations
    np.save(folder / "good.npy", good[ann_order])
    np.save(folder / "valid.npy", np.bincount(where[good], minlength=n) > 0)
    np.save(folder / "concepts.npy", np.bincount(where[concepts], minlength=n) > 0)
    scores = np.frombuffer(b.scores, dtype=np.float64) if b.scores else np.zeros(0)
    np.save(folder / "scores.npy", scores[ann_order])
    stat = path.stat()
    meta = {
        "version": INDEX_VERSION,
        "source": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "keys": keys,
        "num_images": n,
        "num_annotations": len(scores),
        "categories": b.categories,
    }
    # Written last: a folder with meta.json is complete.
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def index_folder(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the index of the json at ``path`` lives: ``<json name>.<key>.glipidx`` in
    ``cache_dir``, else beside the json when its folder is writable, else in
    ``$GLIP_CACHE/json-index`` (``~/.cache/glip``). ``key`` hashes the absolute path, size
    and modification time (and the format version)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{INDEX_VERSION}".encode()).hexdigest()[:16]
    if cache_dir is None and os.access(path.parent, os.W_OK):
        root = path.parent
    elif cache_dir is None:
        root = Path(os.environ.get("GLIP_CACHE", Path.home() / ".cache" / "glip")) / "json-index"
    else:
        root = Path(cache_dir)
    return root / f"{path.name}.{key}.glipidx"


def _mmap(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r") if path.stat().st_size > 128 else np.load(path)


class _Blob:
    """A read-only text file sliced into strings with ``pread``: nothing is mapped, so
    reading does not grow the process's memory; the descriptor is opened per process
    (DataLoader workers, forked or spawned, open their own)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_fd": -1, "_pid": -1}

    def __del__(self) -> None:
        if self._pid == os.getpid():
            os.close(self._fd)

    def text(self, start: int, end: int) -> str:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, end - start, start).decode("utf-8")


class MappedCocoIndex:
    """A COCO-format json read through its on-disk index (see the module docstring).

    Attributes (as :class:`~glip.data.annotations.CocoIndex`, read lazily):
        images: ``Mapping[image_id, dict]``, the image record.
        annotations: ``Mapping[image_id, list[dict]]``, its annotations in file order.
        categories: the category records in file order (held in memory: they are few).
        image_ids: the image ids in ascending order.
        keys: the json's top-level keys, in file order.
    """

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.folder = folder
        self.keys: list[str] = list(meta["keys"])
        self.categories: list[dict[str, Any]] = list(meta["categories"])
        self._ids = _mmap(folder / "image_ids.npy")
        self._image_bytes = _mmap(folder / "image_bytes.npy")
        self._ann_bounds = _mmap(folder / "ann_bounds.npy")
        self._ann_bytes = _mmap(folder / "ann_bytes.npy")
        self._images = _Blob(folder / "images.bin")
        self._anns = _Blob(folder / "annotations.bin")
        self.image_ids = IdArray(self._ids)
        self.images: Mapping[int, dict[str, Any]] = _ByImage(self, self.record)
        self.annotations: Mapping[int, list[dict[str, Any]]] = _ByImage(self, self.annotations_at)

    @staticmethod
    def open(path: str | Path, cache_dir: str | Path | None = None) -> MappedCocoIndex:
        """The index of the json at ``path``, built first when missing (see :func:`index_folder`)."""
        folder = index_folder(path, cache_dir)
        if not (folder / "meta.json").is_file():
            logger.info("indexing %s into %s (once)", path, folder)
            with atomic_directory(folder) as tmp:
                build_index(path, tmp)
        return MappedCocoIndex(folder)

    def position(self, image_id: Any) -> int:
        """Where ``image_id`` is in :attr:`image_ids`; a ``KeyError`` when absent."""
        if not _is_int(image_id) and not isinstance(image_id, np.integer):
            raise KeyError(image_id)
        pos = int(np.searchsorted(self._ids, image_id))
        if pos >= len(self._ids) or int(self._ids[pos]) != image_id:
            raise KeyError(image_id)
        return pos

    def record(self, pos: int) -> dict[str, Any]:
        """The image record at position ``pos``."""
        return json.loads(self._images.text(int(self._image_bytes[pos]), int(self._image_bytes[pos + 1])))

    def annotations_at(self, pos: int) -> list[dict[str, Any]]:
        """The annotations of the image at position ``pos``, in file order."""
        start, end = int(self._ann_bytes[pos]), int(self._ann_bytes[pos + 1])
        if start == end:
            return []
        return json.loads("[" + self._anns.text(start, end - 1) + "]")  # drop the trailing ","

    def annotation_counts(self) -> np.ndarray:
        """``int64 [N]``: the number of annotations of each image, in :attr:`image_ids` order."""
        return np.diff(self._ann_bounds)

    def annotation_bounds(self) -> np.ndarray:
        """``int64 [N + 1]``: image ``i``'s annotations are rows ``bounds[i]:bounds[i+1]`` of
        the per-annotation columns (:meth:`scores`)."""
        return self._ann_bounds

    def scores(self) -> np.ndarray:
        """``float64 [A]``: each annotation's ``score`` (1.0 when absent), grouped by image."""
        return _mmap(self.folder / "scores.npy")

    def good_boxes(self) -> np.ndarray:
        """``bool [A]``: each annotation passes official ``has_valid_annotation``'s box test
        (neither side at most 1 pixel), grouped by image."""
        return _mmap(self.folder / "good.npy")

    def valid_ids(self) -> IdArray:
        """The ids of the images usable for training (official ``has_valid_annotation``)."""
        return IdArray(self._ids[_mmap(self.folder / "valid.npy")])

    def has_concept_scores(self, ids: Sequence[int]) -> bool:
        """Whether some annotation of the images ``ids`` has a teacher's ``concept_scores``."""
        flags = _mmap(self.folder / "concepts.npy")
        wanted = np.asarray(ids.values if isinstance(ids, IdArray) else list(ids), dtype=np.int64)
        return bool(flags[np.searchsorted(self._ids, wanted)].any()) if len(wanted) else False


class _ByImage(Mapping[int, Any]):
    """``image_id -> read(position)`` over a :class:`MappedCocoIndex`."""

    def __init__(self, index: MappedCocoIndex, read: Any) -> None:
        self.index = index
        self.read = read

    def __getitem__(self, image_id: Any) -> Any:
        return self.read(self.index.position(image_id))

    def __contains__(self, image_id: object) -> bool:
        try:
            self.index.position(image_id)
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(self.index.image_ids)

    def __len__(self) -> int:
        return len(self.index.image_ids)


def open_index(
    path: str | Path, mode: str = "auto", cache_dir: str | Path | None = None
) -> CocoIndex | MappedCocoIndex:
    """The annotations of the COCO-format json at ``path``: ``mode`` ``"memory"`` parses
    it into a :class:`CocoIndex`, ``"mapped"`` reads it through its :class:`MappedCocoIndex`
    (built once), ``"auto"`` maps jsons of :data:`AUTO_INDEX_BYTES` or more. A json whose
    image ids are not integers is parsed (with a warning when a map was asked for)."""
    if mode not in INDEX_MODES:
        raise ValueError(f"the json index mode must be one of {INDEX_MODES}, got {mode!r}")
    if mode == "memory" or (mode == "auto" and Path(path).stat().st_size < AUTO_INDEX_BYTES):
        return CocoIndex.load(path)
    try:
        return MappedCocoIndex.open(path, cache_dir)
    except NotIndexable as e:
        logger.warning("%s; reading the whole json instead of an index", e)
        return CocoIndex.load(path)
