"""The model zoo: names of the official GLIP checkpoints, downloaded and converted once."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glip.config import GLIPConfig

__all__ = [
    "ZOO",
    "ModelNotAvailableError",
    "ModelSource",
    "ZooEntry",
    "cache_dir",
    "config_names",
    "list_models",
    "resolve_config",
    "resolve_model_source",
    "resolve_weights",
    "zoo_config",
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


def _safetensors_parameters(path: Path) -> int:
    """The number of values in a ``.safetensors`` file, read from its JSON header (the
    format: an 8-byte little-endian header length, then the header)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def _measured(entry: ZooEntry) -> tuple[float, float]:
    """``(params_m, size_mb)``: a bundled model's counted and measured from its files (the
    whole folder, as installed), a downloadable one's as the table states."""
    folder = _bundled_dir(entry)
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


# ---------------------------------------------------------------- resolution
_WEIGHTS_FILE = "model.safetensors"  # glip.hub.checkpoint.WEIGHTS_NAME (not imported: checkpoint imports us)
_CONFIG_FILE = "config.yaml"  # glip.hub.checkpoint.CONFIG_NAME
_TUNED_FILE = "tuned.json"  # glip.hub.checkpoint.TUNED_NAME


@dataclass(frozen=True)
class ModelSource:
    """What a model argument names, resolved to files.

    Attributes:
        weights: a converted folder (``model.safetensors`` + ``config.yaml``), a tuned-delta
            folder (``tuned.json``), a ``.safetensors`` file or an official ``.pth``.
        config: the config yaml to build it with: the one given, else the one the weights
            carry (their folder's, or a tuned delta's base's); None for a bare ``.pth``.
        zoo_name: the model-zoo name the argument was, if it was one.
    """

    weights: Path
    config: Path | None
    zoo_name: str | None = None

    def load_config(self, overrides: Sequence[str] = ()) -> GLIPConfig:
        """The config (:meth:`require_config`) with ``overrides``; a text encoder named
        relative to the config's folder (``text_encoder`` in a converted folder) is made
        absolute so that training from the folder finds it."""
        from glip.config import load_config

        path = self.require_config()
        cfg = load_config(path, overrides)
        encoder = cfg.model.text.encoder
        if encoder and not Path(encoder).exists() and (path.parent / encoder).is_dir():
            cfg.model.text.encoder = str(path.parent / encoder)
        return cfg

    def require_config(self) -> Path:
        """:attr:`config`, or a ``FileNotFoundError`` saying how to give one."""
        if self.config is None:
            raise FileNotFoundError(
                f"{self.weights} carries no config: pass --config (Python: config=) with a yaml or a zoo config "
                f"name ({', '.join(config_names())}), e.g. --config glip-t for GLIP-T"
            )
        return self.config


def resolve_config(config: str | Path) -> Path:
    """A config argument -> its yaml: an existing file, else a zoo config name (``glip-t``)."""
    path = Path(config)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / _CONFIG_FILE).is_file():
            return path / _CONFIG_FILE
        raise FileNotFoundError(f"config {path} is a folder without {_CONFIG_FILE}")
    if str(config) in config_names():
        return zoo_config(str(config))
    raise FileNotFoundError(
        f"config not found: {config} (neither a yaml file nor a zoo config name: {', '.join(config_names())})"
    )


def _carried_config(weights: Path) -> Path | None:
    """The config a weights path carries: its folder's ``config.yaml``, or for a tuned
    delta the config of its base."""
    if weights.is_file():
        beside = weights.parent / _CONFIG_FILE
        return beside if weights.suffix == ".safetensors" and beside.is_file() else None
    if (weights / _WEIGHTS_FILE).is_file():
        return weights / _CONFIG_FILE if (weights / _CONFIG_FILE).is_file() else None
    if (weights / _TUNED_FILE).is_file():
        try:
            base = json.loads((weights / _TUNED_FILE).read_text(encoding="utf-8"))["base"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # load_model reports the damaged file
        if base.get("config"):
            return Path(base["config"])
        if base.get("zoo"):
            return resolve_model_source(base["zoo"]).config
        candidates = [weights / base["relative"]] if base.get("relative") else []
        candidates += [Path(base["path"])] if base.get("path") else []
        for candidate in candidates:
            if (candidate / _CONFIG_FILE).is_file():
                return candidate / _CONFIG_FILE
    return None


def resolve_model_source(
    model: str | Path,
    config: str | Path | None = None,
    *,
    text_encoder: str | Path | None = None,
) -> ModelSource:
    """The one place a model argument is interpreted (``glip.load_model``, ``Predictor``,
    and every CLI command's ``--model`` / ``--weights`` / ``--config``).

    ``model`` is an existing path (converted folder, tuned-delta folder, ``.safetensors``
    or official ``.pth``) or a model-zoo name (downloaded and converted on first use;
    :func:`resolve_weights`). A path wins over a zoo name of the same spelling.
    ``config`` is a yaml or a zoo config name (:func:`resolve_config`); without it, the
    config the weights carry.

    Raises:
        FileNotFoundError: neither an existing path nor a zoo name (the message lists
            the names), or a config that is neither a file nor a config name.
    """
    path = Path(model)
    zoo_name = None
    if not path.exists():
        if str(model) not in ZOO:
            raise FileNotFoundError(
                f"model {str(model)!r} is neither an existing path nor a model-zoo name ({', '.join(ZOO)})"
            )
        zoo_name = str(model)
        path = resolve_weights(zoo_name, text_encoder)
    cfg = resolve_config(config) if config is not None else _carried_config(path)
    return ModelSource(path, cfg, zoo_name)
