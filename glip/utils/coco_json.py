"""COCO-format json files, checked when read: one-line errors that name the file and the
first bad entry.

Every reader of COCO-format annotation files (the evaluation's ``load_coco_json``, the
training datasets' ``CocoIndex.load``) goes through :func:`read_json` and
:func:`check_coco_dataset`; results files are checked entry by entry with
:class:`RecordChecker` (``glip.evaluation.inputs``). The checks work on whole columns
(a Python pass per field to collect the values, then numpy), so a file of 10^6 entries is
checked in about a second; only when a column is bad is it walked again to find the first
bad entry.
"""

from __future__ import annotations

import itertools
import json
import numbers
import operator
from collections.abc import Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COCO_SECTIONS", "RecordChecker", "check_coco_dataset", "check_segmentations", "json_kind", "read_json"]

# The sections of a COCO annotation file (pycocotools' COCO reads these three).
COCO_SECTIONS = ("images", "annotations", "categories")
_MISSING = object()  # a key absent from a record
_SNIPPET = 80  # characters of a bad entry quoted in the message


def read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path``; a file that is not JSON (truncated, not UTF-8) raises a
    ``ValueError`` naming it (a missing file keeps its ``FileNotFoundError``)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        # An unterminated string runs to the end of the text, whatever its start.
        ends_early = e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string")
        hint = ", the file ends early (truncated?)" if ends_early else ""
        raise ValueError(f"{path}: not valid JSON{hint}: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 JSON text (byte {e.start})") from None


def _snippet(entry: Any) -> str:
    try:
        text = json.dumps(entry, default=str)
    except (TypeError, ValueError):  # circular or odd objects from the Python API
        text = repr(entry)
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "..."


def json_kind(value: Any) -> str:
    """``value``'s kind in JSON words (``a list``, ``an object``, ``a string``...)."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "a boolean" if isinstance(value, bool) else "a number" if isinstance(value, numbers.Number) else repr(value)


def _is_number_type(kind: type) -> bool:
    return issubclass(kind, numbers.Real) and not issubclass(kind, bool)


class RecordChecker:
    """Column checks over a list of JSON records (dicts), failing on the first bad one.

    Args:
        records: the entries (e.g. a results file, or an annotation file's ``annotations``).
        source: the file (or a name) the errors start with.
        section: how an entry is named in errors: ``"annotations"`` gives
            ``annotations[3]``; empty gives ``entry 3``.
    """

    def __init__(self, records: Sequence[Any], source: str | Path, section: str = "") -> None:
        self.records = records
        self.source = str(source)
        self.section = section
        if not set(map(type, records)) <= {dict}:
            bad = next((i for i, r in enumerate(records) if not isinstance(r, Mapping)), None)
            if bad is not None:
                self.fail(bad, f"is {json_kind(records[bad])}, not an object with keys")

    def where(self, index: int) -> str:
        return f"{self.section}[{index}]" if self.section else f"entry {index}"

    def fail(self, index: int, problem: str) -> None:
        """Raises the one-line ``ValueError`` about entry ``index``."""
        raise ValueError(f"{self.source}: {self.where(index)} {_snippet(self.records[index])}: {problem}")

    def column(self, key: str, required: bool = True) -> list[Any]:
        """The values of ``key``, one per record (``None`` for an absent optional key)."""
        try:
            return list(map(operator.itemgetter(key), self.records))  # [N]; C speed
        except KeyError:
            if required:
                self.fail(next(i for i, r in enumerate(self.records) if key not in r), f"has no {key!r}")
            return [r.get(key) for r in self.records]

    def numbers(self, key: str, values: Sequence[Any] | None = None, finite: bool = True) -> np.ndarray:
        """``float64 [N]``: ``key``'s values, which must be numbers (not booleans), finite
        unless ``finite`` is false."""
        values = self.column(key) if values is None else values
        kinds = set(map(type, values))
        if not kinds <= {int, float}:
            allowed = {k for k in kinds if _is_number_type(k)}
            bad = [type(v) not in allowed for v in values]
            if any(bad):
                self.fail(bad.index(True), f"{key} {_snippet(values[bad.index(True)])} is not a number")
        array = np.array(values, dtype=np.float64)  # [N]
        if finite and not np.isfinite(array).all():
            i = int(np.argmin(np.isfinite(array)))
            self.fail(i, f"{key} is {values[i]}, not a finite number")
        return array

    def boxes(self, key: str = "bbox", strict: bool = True) -> np.ndarray:
        """``float64 [N, 4]``: ``[x, y, w, h]`` boxes of four numbers, with ``strict`` also
        finite and with ``w, h >= 0``."""
        values = self.column(key)
        if not set(map(type, values)) <= {list} or not set(map(len, values)) <= {4}:
            i = next((i for i, v in enumerate(values) if not isinstance(v, (list, tuple)) or len(v) != 4), None)
            if i is not None:  # else tuples, from the Python API
                self.fail(i, f"{key} must be [x, y, w, h], four numbers")
        flat = list(itertools.chain.from_iterable(values))
        kinds = set(map(type, flat))
        if not kinds <= {int, float}:
            allowed = {k for k in kinds if _is_number_type(k)}
            bad = next((j for j, v in enumerate(flat) if type(v) not in allowed), None)
            if bad is not None:
                self.fail(bad // 4, f"{key} must be [x, y, w, h], four numbers")
        array = np.array(flat, dtype=np.float64).reshape(len(values), 4)  # [N, 4]
        if not strict:
            return array
        if not np.isfinite(array).all():
            self.fail(int(np.argmin(np.isfinite(array).all(axis=1))), f"{key} holds a value that is not finite")
        negative = (array[:, 2:] < 0).any(axis=1)  # [N]
        if negative.any():
            self.fail(int(np.argmax(negative)), f"{key} has a negative width or height")
        return array

    def known(self, key: str, known: Collection[Hashable], what: str) -> list[Any]:
        """``key``'s values, each of which must be one of ``known`` (``what`` names them)."""
        values = self.column(key)
        kinds = set(map(type, values))
        if not kinds <= {int, str, float}:
            i = next(i for i, v in enumerate(values) if type(v) not in (int, str, float))
            self.fail(i, f"{key} must be a number or a string")
        known = known if isinstance(known, (set, frozenset)) else set(known)
        if not set(values) <= known:
            i = next(i for i, v in enumerate(values) if v not in known)
            self.fail(i, f"{key} {values[i]!r} is not {what}")
        return values


def check_coco_dataset(
    data: Any,
    source: str | Path,
    required: Sequence[str] = COCO_SECTIONS,
    strict_boxes: bool = True,
    annotation_categories: bool = True,
) -> None:
    """Checks a parsed COCO-format annotation file; a ``ValueError`` names ``source`` and the
    first bad entry.

    ``data`` must be an object holding the ``required`` sections (of ``images``,
    ``annotations``, ``categories``), each present section a list; every image has an
    ``id`` (unique), every category an ``id`` (unique) and a ``name``; every annotation an
    ``image_id`` of an image, a ``category_id`` of a category (when the file has
    categories) and a ``bbox`` ``[x, y, w, h]`` of four numbers, finite and with ``w, h >= 0``
    unless ``strict_boxes`` is false (the training datasets drop such boxes themselves,
    counted and logged). ``annotation_categories`` false: annotations need no
    ``category_id`` (grounding files, whose boxes are named by their caption spans; the
    detection dataset checks its boxes' categories itself).
    """
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{source}: a COCO annotation file is a JSON object with {', '.join(map(repr, COCO_SECTIONS))}, "
            f"not {json_kind(data)}"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(
            f"{source}: no {' or '.join(map(repr, missing))} (a COCO annotation file has "
            f"{', '.join(map(repr, required))})"
        )
    for key in COCO_SECTIONS:
        if key in data and not isinstance(data[key], list):
            raise ValueError(f"{source}: {key!r} must be a list, not {json_kind(data[key])}")
    images = RecordChecker(data.get("images", []), source, "images")
    image_ids = _unique_ids(images)
    categories = RecordChecker(data.get("categories", []), source, "categories")
    category_ids = _unique_ids(categories)
    names = categories.column("name")
    if not all(type(n) is str for n in names):
        categories.fail(next(i for i, n in enumerate(names) if type(n) is not str), "name must be a string")
    annotations = RecordChecker(data.get("annotations", []), source, "annotations")
    annotations.known("image_id", image_ids, "the id of an image")
    if "categories" in data and annotation_categories:
        annotations.known("category_id", category_ids, "the id of a category")
    annotations.boxes("bbox", strict=strict_boxes)


def _unique_ids(records: RecordChecker) -> set[Any]:
    ids = records.column("id")
    kinds = set(map(type, ids))
    if not kinds <= {int, str}:
        records.fail(
            next(i for i, v in enumerate(ids) if type(v) not in (int, str)), "id must be an integer or a string"
        )
    unique = set(ids)
    if len(unique) != len(ids):
        seen: set[Any] = set()
        for i, v in enumerate(ids):
            if v in seen:
                records.fail(i, f"id {v!r} is repeated")
            seen.add(v)
    return unique


def check_segmentations(
    records: RecordChecker,
    values: Sequence[Any],
    sizes: Sequence[tuple[int, int] | None],
    polygons: bool,
) -> None:
    """Checks ``segmentation`` values (one per record of ``records``).

    Each is COCO RLE ``{"size": [H, W], "counts"}`` with ``counts`` a string (compressed,
    what results carry) or, with ``polygons``, a list (uncompressed, as ground-truth crowd
    regions), its size the image's ``sizes[i]`` (``(height, width)``; ``None``: unknown).
    With ``polygons`` (ground truth) it may also be a non-empty list of polygons
    ``[x1, y1, x2, y2, ...]`` of at least 3 points of finite numbers."""
    kinds = list(map(type, values))
    allowed = {dict, list} if polygons else {dict}
    if not set(kinds) <= allowed:
        expected = "an RLE {size, counts} or a list of polygons" if polygons else "a compressed RLE {size, counts}"
        records.fail(next(i for i, k in enumerate(kinds) if k not in allowed), f"segmentation must be {expected}")
    rle_index = [i for i, k in enumerate(kinds) if k is dict]
    _check_rles(records, values, rle_index, sizes, polygons)
    if polygons:
        _check_polygons(records, values, [i for i, k in enumerate(kinds) if k is list])


def _check_rles(
    records: RecordChecker,
    values: Sequence[Any],
    index: Sequence[int],
    sizes: Sequence[tuple[int, int] | None],
    uncompressed: bool,
) -> None:
    rles = RecordChecker([values[i] for i in index], records.source)
    counts_kinds = set(map(type, rles.column("counts", required=False)))
    allowed = {str, list} if uncompressed else {str}
    if not counts_kinds <= allowed:
        j = next(j for j, r in enumerate(rles.records) if type(r.get("counts")) not in allowed)
        what = "a string (compressed RLE) or a list" if uncompressed else "a string (compressed RLE)"
        records.fail(index[j], f"segmentation counts must be {what}")
    got = rles.column("size", required=False)
    if not set(map(type, got)) <= {list} or not set(map(len, got)) <= {2}:
        j = next(j for j, v in enumerate(got) if type(v) is not list or len(v) != 2)
        records.fail(index[j], "segmentation size must be [height, width]")
    flat = list(itertools.chain.from_iterable(got))
    if not set(map(type, flat)) <= {int} or min(flat, default=0) < 0:
        j = next(j for j, v in enumerate(got) if not all(type(x) is int and x >= 0 for x in v))
        records.fail(index[j], "segmentation size must be [height, width], two counts")
    have = np.array(flat, dtype=np.int64).reshape(-1, 2)  # [R, 2]
    want = np.array([sizes[i] or (-1, -1) for i in index], dtype=np.int64).reshape(-1, 2)  # [R, 2]; -1 unknown
    wrong = ((have != want) & (want >= 0)).any(axis=1)  # [R]
    if wrong.any():
        j = int(np.argmax(wrong))
        records.fail(index[j], f"segmentation size {got[j]} is not its image's [height, width] {want[j].tolist()}")


def _check_polygons(records: RecordChecker, values: Sequence[Any], index: Sequence[int]) -> None:
    parts = list(itertools.chain.from_iterable(values[i] for i in index))
    lengths = (
        np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)) if set(map(type, parts)) <= {list} else None
    )
    empty = any(not values[i] for i in index)
    if lengths is None or empty or (lengths < 6).any() or (lengths % 2).any():
        for i in index:
            if not values[i] or not all(type(p) is list and len(p) >= 6 and len(p) % 2 == 0 for p in values[i]):
                records.fail(i, "segmentation polygons must each be [x1, y1, x2, y2, ...], at least 3 points")
    flat = list(itertools.chain.from_iterable(parts))
    if not set(map(type, flat)) <= {int, float} or not np.isfinite(np.array(flat, dtype=np.float64)).all():
        for i in index:
            coords = list(itertools.chain.from_iterable(values[i]))
            if not all(_is_number_type(type(v)) and np.isfinite(v) for v in coords):
                records.fail(i, "segmentation polygons must hold finite numbers")
