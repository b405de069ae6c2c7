"""``glip detect``: detection over files, folders and globs, with annotated images and JSON."""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from glip.api import Predictor, PromptLike
from glip.structures import Detections
from glip.utils.draw import draw_detections
from glip.utils.image import load_image

__all__ = ["IMAGE_SUFFIXES", "annotate", "detect_files", "expand_inputs", "format_table"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})


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


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = f"{stem}.jpg", 1
    while name in used:
        name, k = f"{stem}_{k}.jpg", k + 1
    used.add(name)
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
    model records, see :meth:`Predictor.resolve_prompt`); writes ``out_dir/<stem>.jpg`` (annotated) and
    ``out_dir/detections.json``. Returns the JSON entries, one per file, in order:
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
                    _write_annotated(file, result, out / _unique_name(Path(file).stem, used))
                except Exception as e:  # the detections stand; only the picture is missing
                    entries[-1]["error"] = f"cannot write the annotated image: {type(e).__name__}: {e}"
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if out is not None:
        tmp = out / ".detections.json.tmp"
        tmp.write_text(json.dumps(entries, indent=2))
        os.replace(tmp, out / "detections.json")
    return entries


def _entry(file: str, det: Detections) -> dict[str, Any]:
    h, w = det.image_size
    return {"file": file, "width": int(w), "height": int(h), "detections": det.to_list()}


def annotate(image: np.ndarray, det: Detections) -> Image.Image:
    """``image`` (``[H, W, 3]`` uint8 RGB, the pixels ``det`` refers to) with each detection
    drawn as ``glip detect`` draws it: its box and ``"phrase score"`` tag, coloured by label,
    and its mask filled when ``det`` has masks. ``glip demo`` draws with this too."""
    captions = [f"{p} {s:.2f}" for p, s in zip(det.phrases, det.scores.tolist())]
    masks = None if det.masks is None else det.masks.cpu().numpy()
    return draw_detections(image, det.boxes.tolist(), det.labels.tolist(), captions, masks)


def _write_annotated(file: str, det: Detections, path: Path) -> None:
    annotate(load_image(file), det).save(path, quality=92)


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
