"""``glip detect``: detection over files, folders and globs, with annotated images and JSON."""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glip.api import Predictor, PromptLike
from glip.structures import Detections
from glip.utils.fs import atomic_write_text

__all__ = ["IMAGE_SUFFIXES", "annotated_suffix", "detect_files", "expand_inputs", "format_table"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
# Formats an annotated picture is written in as its input was; the others (GIF: 256 colours,
# PGM: grey) are written as PNG.
_KEPT_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files as given, folders as their image files (sorted), globs as their matches.

    A path that is none of these is kept, so that it is reported as missing.
    """
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(str(p) for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.exists():
            out.append(str(path))
        elif any(ch in item for ch in "*?["):
            out.extend(sorted(glob.glob(item, recursive=True)))
        else:
            out.append(item)
    return out


def annotated_suffix(file: str | Path) -> str:
    """The suffix of the annotated picture of ``file``: its own (``.png`` stays ``.png``),
    or ``.png`` for a format that cannot hold the drawing (GIF, grey PGM) or is unknown."""
    suffix = Path(file).suffix
    return suffix if suffix.lower() in _KEPT_SUFFIXES else ".png"


def _unique_name(file: str, used: set[str]) -> str:
    stem, suffix = Path(file).stem, annotated_suffix(file)
    name, k = f"{stem}{suffix}", 1
    while name.lower() in used:
        name, k = f"{stem}_{k}{suffix}", k + 1
    used.add(name.lower())
    return name


def detect_files(
    predictor: Predictor,
    files: Sequence[str],
    prompt: PromptLike | None,
    out_dir: str | Path | None,
    *,
    threshold: float = 0.5,
    batch_size: int | None = None,
    progress: bool = True,
    masks: bool = False,
) -> list[dict[str, Any]]:
    """Runs ``predictor`` on every file with ``prompt`` (None: the classes a fine-tuned
    model records, see :meth:`Predictor.resolve_prompt`); writes ``out_dir/<name>`` (the
    annotated picture drawn by :meth:`Detections.save`, in the input's format: see
    :func:`annotated_suffix`) and ``out_dir/detections.json``. Returns the JSON entries, one per file, in order:
    ``{"file", "width", "height", "detections": [{"box", "score", "label", "phrase"}]}``
    or ``{"file", "error"}`` for a file that could not be processed. With ``masks`` each
    detection also has ``"mask"`` (COCO compressed RLE) and the images show the masks
    filled translucently in the box colour."""
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    used: set[str] = set()
    bar = None
    if progress and len(files) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", desc="detect", file=sys.stderr)
    results = predictor.iter_predict(list(files), prompt, threshold=threshold, batch_size=batch_size, masks=masks)
    for index, result in results:
        file = files[index]
        if isinstance(result, Exception):
            entries.append({"file": file, "error": str(result)})
        else:
            entries.append(_entry(file, result))
            if out is not None:
                try:
                    result.save(out / _unique_name(file, used), file)
                except Exception as e:  # the detections stand; only the picture is missing
                    entries[-1]["error"] = f"cannot write the annotated image: {type(e).__name__}: {e}"
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if out is not None:
        atomic_write_text(out / "detections.json", json.dumps(entries, indent=2))
    return entries


def _entry(file: str, det: Detections) -> dict[str, Any]:
    h, w = det.image_size
    return {"file": file, "width": int(w), "height": int(h), "detections": det.to_list()}


def format_table(entries: Sequence[dict[str, Any]], width: int = 100) -> str:
    """A short text table: file, number of detections, best phrase and score (or the error)."""
    rows = [("file", "n", "best")]
    for e in entries:
        name = Path(e["file"]).name
        if "error" in e:
            rows.append((name, "-", f"ERROR: {e['error']}"))
            continue
        dets = e["detections"]
        best = f"{dets[0]['phrase']} {dets[0]['score']:.3f}" if dets else ""
        rows.append((name, str(len(dets)), best))
    w0 = min(40, max(len(r[0]) for r in rows))
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{r[0][:w0]:<{w0}}  {r[1]:>{w1}}  {r[2]}"[:width] for r in rows]
    return "\n".join(lines)
