"""The model zoo: names of the official GLIP checkpoints, downloaded and converted once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["ZOO", "ModelNotAvailableError", "ZooEntry", "cache_dir", "list_models", "resolve_weights", "zoo_config"]

HF_REPO = "GLIPModel/GLIP"


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint.

    Attributes:
        name: our short name (``glip-t``).
        filename: the file in the Hugging Face repo ``repo``.
        config: our config name under ``configs/`` (the official yaml it was trained with).
        params_m: parameters in millions (from the official state dict).
        size_mb: approximate download size.
        description: what it was trained on, and its reported zero-shot numbers.
        bundled: a folder shipped inside the package (no download), relative to ``glip/``.
    """

    name: str
    filename: str
    config: str
    params_m: float
    size_mb: int
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
            1.9,
            19,
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


def zoo_config(name: str) -> Path:
    """Path of a model-zoo config yaml (``glip-t`` -> ``configs/glip-t.yaml``)."""
    path = resources.files("glip.configs") / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"no config named {name!r}")
    return Path(str(path))


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(ZOO)}")
    return ZOO[name]


def converted_dir(name: str) -> Path:
    return cache_dir() / name


def _bundled_dir(entry: ZooEntry) -> Path | None:
    if entry.bundled is None:
        return None
    return Path(__file__).resolve().parents[1] / entry.bundled


def is_cached(name: str) -> bool:
    bundled = _bundled_dir(_entry(name))
    if bundled is not None:
        return (bundled / "model.safetensors").is_file()
    return (converted_dir(name) / "model.safetensors").is_file()


def _download(entry: ZooEntry) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a dependency of glip
        raise ModelNotAvailableError(f"huggingface_hub is needed to download {entry.name}: {e}") from None
    try:
        return Path(hf_hub_download(entry.repo, entry.filename))
    except Exception as e:  # offline, missing file, network error: all say the same to a user
        raise ModelNotAvailableError(
            f"model {entry.name!r} is not cached and could not be downloaded: it is {entry.filename} "
            f"(~{entry.size_mb} MB) from the Hugging Face repo {entry.repo}. Download that file yourself and pass "
            f"--weights FILE --config {entry.config} (Python: glip.load_model(FILE, {entry.config!r})). "
            f"[{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}]"
        ) from None


def resolve_weights(name: str, text_encoder: str | Path | None = None) -> Path:
    """The converted folder of a zoo model, downloading and converting it on first use
    (the official ``.pth`` stays in the Hugging Face cache; the converted copy goes to
    :func:`cache_dir`)."""
    entry = _entry(name)
    bundled = _bundled_dir(entry)
    if bundled is not None:
        if not (bundled / "model.safetensors").is_file():
            raise ModelNotAvailableError(f"the bundled model {name!r} is missing from {bundled}")
        return bundled
    out = converted_dir(name)
    if is_cached(name):
        return out
    from glip.hub.checkpoint import load_model, save_model

    checkpoint = _download(entry)
    model = load_model(checkpoint, zoo_config(entry.config), text_encoder=text_encoder)
    model.config.name = name
    save_model(model, out)
    return out


def list_models() -> list[dict[str, object]]:
    """One row per zoo model: name, file, parameters, size, cached, description."""
    return [
        {
            "name": e.name,
            "file": e.filename,
            "params_m": e.params_m,
            "size_mb": e.size_mb,
            "cached": is_cached(e.name),
            "description": e.description,
        }
        for e in ZOO.values()
    ]
