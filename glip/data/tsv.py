"""The official TSV layout (Objects365, GoldG, Cap4M as the GLIP authors release them),
read lazily at constant memory.

The layout (official ``maskrcnn_benchmark/data/datasets/tsv.py``):

- an image TSV: one row per image, ``key <TAB> base64 of the encoded image`` (the image
  is the last column);
- a label TSV, row for row with the image TSV: ``key <TAB> json label``;
- beside each ``X.tsv`` a ``X.lineidx``: the byte offset at which each row starts, one
  decimal number per line. A missing one is generated (one pass over the TSV); one that
  disagrees with its TSV is a one-line error.

Label json: detection data (Objects365) is a list of objects, or ``{"objects": [...]}``,
each ``{"rect": [x1, y1, x2, y2], "class": name}`` (``rect`` in inclusive pixels, class
names mapped to ids by a labelmap json ``{name: id}`` or ``{"label_to_idx": {...}}``);
grounding and caption data is ``{"caption", "bboxes": [[x1, y1, x2, y2]],
"tokens_positive": [[[start, end], ...] per box], "scores" (optional)}``.

:class:`TsvIndex` shows such a pair as a COCO-format index (``images``,
``annotations``, ``categories``, ``image_ids``: row numbers) read one row at a time, so
``CocoGroundingDataset`` and ``MdetrGroundingDataset`` build their samples from it
exactly as from a json. Every row is used (the official TSV readers apply no
``has_valid_annotation`` filter). File handles are opened per process, so the index can
be shared by DataLoader workers.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glip.data.json_index import IdArray
from glip.utils.image import ImageLoadError, load_image

__all__ = ["TsvFile", "TsvIndex", "lineidx_path", "write_lineidx", "write_tsv"]


def lineidx_path(tsv: str | Path) -> Path:
    """``X.lineidx`` beside ``X.tsv`` (the official naming)."""
    tsv = Path(tsv)
    return tsv.with_suffix(".lineidx")


def write_lineidx(tsv: str | Path) -> Path:
    """Writes ``tsv``'s ``.lineidx`` (one pass, written atomically); returns its path."""
    out = lineidx_path(tsv)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tsv, "rb") as f, open(tmp, "w", encoding="ascii") as idx:
        pos = 0
        for line in f:
            idx.write(f"{pos}\n")
            pos += len(line)
    os.replace(tmp, out)
    return out


def write_tsv(path: str | Path, rows: Iterable[Sequence[str]]) -> Path:
    """Writes ``rows`` (columns without tabs or newlines) as a TSV and its ``.lineidx``."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            if any("\t" in c or "\n" in c for c in row):
                raise ValueError(f"{path}: a TSV column may not hold a tab or a newline")
            f.write("\t".join(row) + "\n")
    write_lineidx(path)
    return path


class TsvFile:
    """Rows of a TSV by number, through its ``.lineidx`` (generated when missing).

    Holds the offsets as one ``int64`` array (8 bytes a row) and an open file per process.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TSV file not found: {self.path}")
        idx = lineidx_path(self.path)
        if not idx.is_file():
            write_lineidx(self.path)
        self.offsets = np.fromfile(idx, dtype=np.int64, sep=" ")  # [R]
        self._size = self.path.stat().st_size
        self._file: Any = None
        self._pid = -1
        self._check(idx)

    def _fail(self, idx: Path, why: str) -> None:
        raise ValueError(f"{idx} does not match {self.path.name} ({why}); delete it to have it rebuilt")

    def _check(self, idx: Path) -> None:
        """Cheap agreement checks: increasing offsets inside the file, each of the first,
        middle and last rows starting after a newline, the last row ending the file."""
        off = self.offsets
        if len(off) == 0:
            if self._size:
                self._fail(idx, "no rows listed")
            return
        if off[0] != 0 or (len(off) > 1 and not bool((np.diff(off) > 0).all())) or off[-1] >= self._size:
            self._fail(idx, "offsets not increasing from 0 inside the file")
        for row in {0, len(off) // 2, len(off) - 1}:
            self._row_bytes(row, idx)
        with open(self.path, "rb") as f:
            f.seek(int(off[-1]))
            tail = f.read()
        if b"\n" in tail.rstrip(b"\r\n"):
            self._fail(idx, f"the TSV has more than {len(off)} rows")

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def _row_bytes(self, row: int, idx: Path | None = None) -> bytes:
        if self._file is None or self._pid != os.getpid():  # one handle per process (loader workers)
            self._file = open(self.path, "rb")
            self._pid = os.getpid()
        start = int(self.offsets[row])
        self._file.seek(max(start - 1, 0))
        before = self._file.read(1) if start else b"\n"
        if before != b"\n":
            self._fail(idx or lineidx_path(self.path), f"row {row} does not start a line")
        return self._file.readline()

    def row(self, row: int) -> list[str]:
        """Row ``row``'s columns (official ``TSVFile.seek``: split on tabs, each stripped)."""
        return [c.strip() for c in self._row_bytes(row).decode("utf-8").split("\t")]


def _load_labelmap(path: str | Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data = data.get("label_to_idx", data) if isinstance(data, dict) else None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise ValueError(f"{path}: a labelmap is a json object {{class name: id}} (or under 'label_to_idx')")
    return {str(k): v for k, v in data.items() if k != "__background__"}


def _xywh(rect: Sequence[float]) -> list[float]:
    """Inclusive-pixel ``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]`` (``w = x2 - x1 + 1``)."""
    x1, y1, x2, y2 = (float(v) for v in rect)
    return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


class TsvIndex:
    """An image TSV and its label TSV as a COCO-format index (see the module docstring).

    Args:
        label_tsv: ``key <TAB> json label`` rows.
        image_tsv: ``key <TAB> base64 image`` rows, row for row with ``label_tsv``.
        labelmap: detection data: the labelmap json; None for grounding/caption data
            (every box gets category 1, as the official caption reader gives).
    """

    def __init__(self, label_tsv: str | Path, image_tsv: str | Path, labelmap: str | Path | None = None) -> None:
        self.labels, self.pixels = TsvFile(label_tsv), TsvFile(image_tsv)
        if len(self.labels) != len(self.pixels):
            raise ValueError(f"{label_tsv} has {len(self.labels)} rows but {image_tsv} has {len(self.pixels)}")
        self.class_to_id = _load_labelmap(labelmap) if labelmap else None
        names = sorted(self.class_to_id.items(), key=lambda kv: kv[1]) if self.class_to_id else [("object", 1)]
        self.categories = [{"id": i, "name": n} for n, i in names]
        self.image_ids = IdArray(np.arange(len(self.labels), dtype=np.int64))
        self.images: Mapping[int, dict[str, Any]] = _Rows(self, 0)
        self.annotations: Mapping[int, list[dict[str, Any]]] = _Rows(self, 1)

    def valid_ids(self) -> IdArray:
        """Every row (the official TSV readers filter none)."""
        return self.image_ids

    def has_concept_scores(self, ids: Sequence[int]) -> bool:
        """TSV labels carry no teacher concept scores."""
        return False

    def parse(self, row: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Row ``row`` as a COCO image record and its annotations (``bbox`` xywh and the
        label's own ``rect`` xyxy, which the box cleaning uses)."""
        key, label = self.labels.row(row)[:2]
        data = json.loads(label)
        record: dict[str, Any] = {"id": row, "file_name": key}
        anns: list[dict[str, Any]] = []
        if isinstance(data, dict) and "bboxes" in data:  # grounding / caption
            record["caption"] = data["caption"]
            for j, rect in enumerate(data["bboxes"]):
                ann = {"id": j, "image_id": row, "bbox": _xywh(rect), "rect": list(rect), "category_id": 1}
                ann["tokens_positive"] = data["tokens_positive"][j]
                if "scores" in data:
                    ann["score"] = data["scores"][j]
                anns.append(ann)
            return record, anns
        objects = data["objects"] if isinstance(data, dict) else data
        for j, obj in enumerate(objects):
            if self.class_to_id is None or obj["class"] not in self.class_to_id:
                raise ValueError(f"{self.labels.path} row {row}: class {obj.get('class')!r} is not in the labelmap")
            ann = {"id": j, "image_id": row, "bbox": _xywh(obj["rect"]), "rect": list(obj["rect"])}
            ann["category_id"] = self.class_to_id[obj["class"]]
            ann["iscrowd"] = int(obj.get("iscrowd", 0))
            anns.append(ann)
        return record, anns

    def read_image(self, record: Mapping[str, Any]) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB pixels of ``record``'s row of the image TSV."""
        row = int(record["id"])
        data = self.pixels.row(row)[-1]  # the image is the last column (official)
        try:
            with Image.open(io.BytesIO(base64.b64decode(data))) as img:
                return load_image(np.asarray(img.convert("RGB")))
        except (OSError, ValueError) as e:
            raise ImageLoadError(f"{self.pixels.path} row {row}: not a base64 image ({e})") from None


class _Rows(Mapping[int, Any]):
    """``row -> part`` of :meth:`TsvIndex.parse` (0: image record, 1: annotations)."""

    def __init__(self, index: TsvIndex, part: int) -> None:
        self.index, self.part = index, part

    def __getitem__(self, row: Any) -> Any:
        if not isinstance(row, (int, np.integer)) or not 0 <= row < len(self.index.labels):
            raise KeyError(row)
        return self.index.parse(int(row))[self.part]

    def __iter__(self) -> Iterator[int]:
        return iter(self.index.image_ids)

    def __len__(self) -> int:
        return len(self.index.labels)
