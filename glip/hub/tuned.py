"""Tuned models stored as deltas: only the tensors a transfer run trained, over a
reference to the base weights.

A folder written by :func:`save_tuned` holds ``tuned.json`` and ``delta.safetensors``.
``tuned.json`` records the transfer mode, the base (its path as given, its path relative
to the folder, or its model-zoo name; and the SHA-256 of its weights file, so that a
different base is refused), the prompt the model was tuned for (caption, phrases, token
ids) and the names of the stored tensors. A prompt-tuned GLIP-T is a few kilobytes to
hundreds of kilobytes (``[n, 768]`` float32 rows, ``n`` the tuned prompt's length), not 900 MB.
:func:`glip.load_model` on the folder calls :func:`load_tuned`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glip.hub.checkpoint import TUNED_NAME, WEIGHTS_NAME, CheckpointError, register_folder_loader
from glip.hub.fetch import resolve_weights
from glip.hub.legacy_keys import remap_legacy_state_dict
from glip.hub.loading import load_model
from glip.hub.zoo import ZOO
from glip.modeling.glip import GLIP
from glip.modeling.transfer import resolve_tuning_mode, tuned_state_names
from glip.text import Prompt
from glip.utils.fs import atomic_directory

__all__ = ["DELTA_NAME", "base_weights_file", "delta_names", "file_sha256", "load_tuned", "save_tuned"]

DELTA_NAME = "delta.safetensors"
FORMAT = "glip-tuned"
VERSION = 1


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def base_weights_file(base: str | Path) -> Path:
    """The file whose hash identifies a base: ``model.safetensors`` of a folder, else the file."""
    path = Path(base)
    return path / WEIGHTS_NAME if path.is_dir() else path


def delta_names(model: GLIP, mode: str) -> list[str]:
    """The state-dict names a run of ``mode`` changes (``full`` and ``mask`` are not deltas)."""
    m = resolve_tuning_mode(mode)
    if m is None or not m.saves_delta:
        raise ValueError(f"mode {mode!r} is not stored as a delta: save it with glip.hub.checkpoint.save_model")
    return tuned_state_names(model, m)


def _trimmed_offset(weight: Tensor, min_rows: int) -> Tensor:
    """The offset without its all-zero trailing rows (rows past the tuned prompt get no
    gradient and stay exactly zero), keeping at least ``min_rows``."""
    nonzero = (weight != 0).any(dim=1).nonzero()
    rows = max(int(nonzero.max()) + 1 if len(nonzero) else 0, min_rows, 1)
    return weight[:rows]


def save_tuned(
    model: GLIP,
    out_dir: str | Path,
    *,
    base: str | Path,
    mode: str,
    base_config: str | Path | None = None,
    prompt: Prompt | None = None,
) -> Path:
    """Writes the tensors ``mode`` trains and ``tuned.json`` into ``out_dir`` (atomically).

    Args:
        base: the weights the run started from: a folder or file, or a model-zoo name.
        mode: the transfer mode (``linear``, ``prompt``...; see :mod:`glip.engine.tuning`).
        base_config: the config an official ``.pth`` base needs.
        prompt: the prompt it was tuned for (default ``model.tuned_prompt``).
    """
    from safetensors.torch import save_file

    zoo = str(base) if str(base) in ZOO and not Path(base).exists() else None
    base_path = resolve_weights(zoo) if zoo else Path(base).resolve()
    weights_file = base_weights_file(base_path)
    if not weights_file.is_file():
        raise FileNotFoundError(f"base weights not found: {weights_file}")
    prompt = prompt if prompt is not None else model.tuned_prompt
    state = model.state_dict()
    tensors: dict[str, Tensor] = {}
    for name in delta_names(model, mode):
        value = state[name].detach().cpu()
        if name == "prompt_offset.weight":
            token_ids = model.prompt_offset.token_ids if model.prompt_offset is not None else None
            value = _trimmed_offset(value, len(token_ids or ()))
        tensors[name] = value.contiguous()
    out_dir = Path(out_dir).resolve()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "mode": resolve_tuning_mode(mode).name,  # type: ignore[union-attr]
        "base": {
            "zoo": zoo,
            "path": None if zoo else str(base_path),
            "relative": None if zoo else os.path.relpath(base_path, out_dir),
            "config": str(Path(base_config).resolve()) if base_config is not None else None,
            "sha256": file_sha256(weights_file),
        },
        "prompt": None if prompt is None else prompt.to_dict(),
        "token_ids": list(model.prompt_offset.token_ids or []) if model.prompt_offset is not None else None,
        "prompt_offset_rows": model.prompt_offset.num_rows if model.prompt_offset is not None else None,
        "tensors": sorted(tensors),
    }
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / DELTA_NAME), metadata={"format": "pt", "glip": "tuned"})
        (tmp / TUNED_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out_dir


def _find_base(folder: Path, base: dict[str, Any]) -> Path:
    if base.get("zoo"):
        return resolve_weights(base["zoo"])
    candidates = [folder / base["relative"]] if base.get("relative") else []
    if base.get("path"):
        candidates.append(Path(base["path"]))
    for path in candidates:
        if base_weights_file(path).is_file():
            return path
    raise CheckpointError(
        f"{folder} is a tuned delta whose base weights are missing (looked for {', '.join(map(str, candidates))})"
    )


def load_tuned(
    folder: str | Path,
    *,
    text_encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_pickle: bool = False,
    check_hash: bool = True,
) -> GLIP:
    """The base model of a :func:`save_tuned` folder with its delta applied, in eval mode.

    Raises :class:`CheckpointError` when the base is missing or its SHA-256 differs from
    the recorded one (``check_hash`` False skips the check).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / TUNED_NAME).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / TUNED_NAME} is not a glip tuned-model file")
    base = meta["base"]
    base_path = _find_base(folder, base)
    if check_hash and file_sha256(base_weights_file(base_path)) != base["sha256"]:
        raise CheckpointError(
            f"the base weights {base_weights_file(base_path)} differ from those {folder} was tuned on "
            "(SHA-256 mismatch)"
        )
    model = load_model(base_path, base.get("config"), text_encoder=text_encoder, trust_pickle=trust_pickle)
    delta = remap_legacy_state_dict(load_file(str(folder / DELTA_NAME)))  # deltas saved by earlier versions
    if "prompt_offset.weight" in delta:
        rows = int(meta.get("prompt_offset_rows") or model.max_query_len)
        offset = model.enable_prompt_offset(rows, meta.get("token_ids") or None)
        with torch.no_grad():
            offset.weight.zero_()
            trimmed = delta.pop("prompt_offset.weight")
            offset.weight[: trimmed.shape[0]].copy_(trimmed)
    state = model.state_dict()
    bad = [k for k, v in delta.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{folder}: delta tensors that do not fit the base model: {', '.join(bad[:10])}")
    model.load_state_dict({**state, **delta}, strict=True)
    # The delta's classes, not those a fine-tuned base may record.
    model.tuned_prompt = Prompt.from_dict(meta["prompt"]) if meta.get("prompt") else None
    return model.to(device).eval()


register_folder_loader(TUNED_NAME, load_tuned)
