"""Fetching zoo models: the official checkpoint downloaded from the Hugging Face hub once,
converted to our folder format (:func:`glip.hub.checkpoint.load_checkpoint`, then
:func:`glip.hub.checkpoint.save_model`) and cached (:func:`glip.hub.zoo.cache_dir`)."""

from __future__ import annotations

from pathlib import Path

from glip.hub.checkpoint import load_checkpoint, save_model
from glip.hub.zoo import ModelNotAvailableError, ZooEntry, bundled_dir, converted_dir, is_cached, zoo_config, zoo_entry

__all__ = ["resolve_weights"]


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
    entry = zoo_entry(name)
    bundled = bundled_dir(entry)
    if bundled is not None:
        if not (bundled / "model.safetensors").is_file():
            raise ModelNotAvailableError(f"the bundled model {name!r} is missing from {bundled}")
        return bundled
    out = converted_dir(name)
    if is_cached(name):
        return out
    checkpoint = _download(entry)
    model = load_checkpoint(checkpoint, zoo_config(entry.config), text_encoder=text_encoder)
    model.config.name = name
    save_model(model, out)
    return out
