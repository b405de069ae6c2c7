"""The model zoo's names: the official GLIP checkpoints (and the bundled demo model), their
configs and where their converted copies are cached. Fetching and converting them is
:mod:`glip.hub.fetch`; resolving a model argument to files is :mod:`glip.hub.sources`."""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "ZOO",
    "ModelNotAvailableError",
    "ZooEntry",
    "bundled_dir",
    "cache_dir",
    "config_names",
    "converted_dir",
    "is_cached",
    "list_models",
    "zoo_config",
    "zoo_entry",
]

HF_REPO = "GLIPModel/GLIP"


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint.

    Attributes:
        name: our short name (``glip-t``).
        filename: the file in the Hugging Face repo ``repo``.
        config: our config name under ``configs/`` (the official yaml it was trained with).
        params_m: parameters in millions (from the official state dict; a bundled model's
            are counted from its files by :func:`list_models`).
        size_mb: approximate download size (a bundled model's is measured from its files).
        description: what it was trained on, and its reported zero-shot numbers.
        bundled: a folder shipped inside the package (no download), relative to ``glip/``.
    """

    name: str
    filename: str
    config: str
    params_m: float
    size_mb: float
    description: str
    repo: str = HF_REPO
    bundled: str | None = None


# Parameter counts from the full-size official state dicts; file sizes are approximate.
ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "glip-t-a",
            "glip_a_tiny_o365.pth",
            "glip-t-a",
            151.4,
            610,
            "GLIP-T (A): Swin-T, no deep fusion, Objects365. COCO 0-shot 42.9 AP",
        ),
        ZooEntry(
            "glip-t-b",
            "glip_tiny_model_o365.pth",
            "glip-t-b",
            231.8,
            930,
            "GLIP-T (B): Swin-T, deep fusion, Objects365. COCO 0-shot 44.9 AP",
        ),
        ZooEntry(
            "glip-t-c",
            "glip_tiny_model_o365_goldg.pth",
            "glip-t-c",
            231.8,
            930,
            "GLIP-T (C): Swin-T, Objects365 + GoldG. COCO 0-shot 46.7 AP",
        ),
        ZooEntry(
            "glip-t",
            "glip_tiny_model_o365_goldg_cc_sbu.pth",
            "glip-t",
            231.8,
            930,
            "GLIP-T: Swin-T, Objects365 + GoldG + CC3M + SBU. COCO 0-shot 46.6 AP, LVIS minival 17.6",
        ),
        ZooEntry(
            "glip-l",
            "glip_large_model.pth",
            "glip-l",
            430.4,
            1730,
            "GLIP-L: Swin-L, FourODs + GoldG + CC3M/12M + SBU. COCO 0-shot 51.4 AP",
        ),
        ZooEntry(
            "glip-t-lvis",
            "glip_tiny_model_o365_goldg_cc_sbu_lvisbest.pth",
            "glip-t",
            231.8,
            930,
            "GLIP-T, the checkpoint chosen on LVIS minival (20.1 AP)",
        ),
        ZooEntry(
            "glip-t-c-lvis",
            "glip_tiny_model_o365_goldg_lvisbest.pth",
            "glip-t-c",
            231.8,
            930,
            "GLIP-T (C), the checkpoint chosen on LVIS minival (17.7 AP)",
        ),
        ZooEntry(
            "glip-l-lvis",
            "glip_large_model_lvisbest.pth",
            "glip-l",
            430.4,
            1730,
            "GLIP-L, the checkpoint chosen on LVIS minival (30.1 AP)",
        ),
        ZooEntry(
            "demo-shapes",
            "",
            "",
            5.8,  # list_models() counts them from the bundled files
            11.6,
            "offline demo: a tiny GLIP trained on synthetic coloured shapes (scripts/train_demo.py)",
            repo="",
            bundled="assets/demo-shapes",
        ),
    ]
}


class ModelNotAvailableError(FileNotFoundError):
    """A zoo model that is neither cached nor downloadable right now."""


def cache_dir() -> Path:
    """Where converted zoo models live: ``$GLIP_CACHE`` or ``~/.cache/glip``."""
    return Path(os.environ.get("GLIP_CACHE", Path.home() / ".cache" / "glip"))


_NOT_MODEL_CONFIGS = frozenset({"odinw_datasets"})  # packaged yamls that are not model configs


def config_names() -> list[str]:
    """The packaged config names (``glip-t``, ``glip-l``...) that :func:`zoo_config` knows."""
    names = (p.name[: -len(".yaml")] for p in resources.files("glip.configs").iterdir() if p.name.endswith(".yaml"))
    return sorted(n for n in names if n not in _NOT_MODEL_CONFIGS)


def zoo_config(name: str) -> Path:
    """Path of a model-zoo config yaml (``glip-t`` -> ``configs/glip-t.yaml``).

    Raises :class:`FileNotFoundError` naming the known configs for any other name."""
    path = resources.files("glip.configs") / f"{name}.yaml" if name else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no config named {name!r}; known: {', '.join(config_names())}")
    return Path(str(path))


def zoo_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name]


def converted_dir(name: str) -> Path:
    return cache_dir() / name


def bundled_dir(entry: ZooEntry) -> Path | None:
    if entry.bundled is None:
        return None
    return Path(__file__).resolve().parents[1] / entry.bundled


def is_cached(name: str) -> bool:
    bundled = bundled_dir(zoo_entry(name))
    if bundled is not None:
        return (bundled / "model.safetensors").is_file()
    return (converted_dir(name) / "model.safetensors").is_file()


def _safetensors_parameters(path: Path) -> int:
    """The number of values in a ``.safetensors`` file, read from its JSON header (the
    format: an 8-byte little-endian header length, then the header)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


_WEIGHTS_FILE = "model.safetensors"  # glip.hub.checkpoint.WEIGHTS_NAME (zoo sits below checkpoint)


def _measured(entry: ZooEntry) -> tuple[float, float]:
    """``(params_m, size_mb)``: a bundled model's counted and measured from its files (the
    whole folder, as installed), a downloadable one's as the table states."""
    folder = bundled_dir(entry)
    weights = folder / _WEIGHTS_FILE if folder is not None else None
    if weights is None or not weights.is_file():
        return entry.params_m, entry.size_mb
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return _safetensors_parameters(weights) / 1e6, size / 1e6


def list_models() -> list[dict[str, object]]:
    """One row per zoo model: name, file, parameters (millions), size (MB), cached, description."""
    rows: list[dict[str, object]] = []
    for e in ZOO.values():
        params_m, size_mb = _measured(e)
        rows.append(
            {
                "name": e.name,
                "file": e.filename,
                "params_m": params_m,
                "size_mb": size_mb,
                "cached": is_cached(e.name),
                "description": e.description,
            }
        )
    return rows
