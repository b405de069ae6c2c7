"""Loading GLIP weights (official ``.pth`` or our safetensors folders) and saving ours."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glip.config import GLIPConfig, load_config, save_config
from glip.hub.legacy_keys import remap_legacy_state_dict
from glip.hub.official_keys import remap_official_state_dict
from glip.hub.streaming import (
    MappedFile,
    SafetensorsIndex,
    index_safetensors,
    mapped_file,
    sparse_tables,
    stream_state_into,
)
from glip.hub.transformers_folder import (
    TransformersFolderError,
    is_transformers_folder,
    read_transformers_config,
    text_config_from_fields,
)
from glip.modeling.build import build_model
from glip.modeling.glip import GLIP
from glip.modeling.language.text_encoder import load_text_config
from glip.modeling.low_precision import build_in_dtype, parse_weights_dtype, store_weights
from glip.text import Prompt, load_tokenizer, resolve_text_encoder
from glip.utils.fs import atomic_directory

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "register_folder_loader",
    "save_model",
    "save_weights",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"
TEXT_ENCODER_DIR = "text_encoder"
# Our top-level modules, and "head." of folders saved before the trunk/heads split.
_OUR_PREFIXES = (*GLIP.state_prefixes(), "head.")
TUNED_NAME = "tuned.json"  # a tuned model stored as a delta over base weights (glip.hub.tuned)
# A fine-tuned model's classes: its tuned prompt (and the token ids its prompt offset applies to).
PROMPT_NAME = "prompt.json"
_OFFICIAL_PREFIXES = ("backbone.", "language_backbone.", "rpn.")


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


# Folder formats that other modules add: marker file -> loader(folder, text_encoder=,
# device=, trust_pickle=). glip.hub.tuned registers its deltas (TUNED_NAME) when glip.hub
# is imported, so this module never imports it (no checkpoint <-> tuned import cycle).
FolderLoader = Callable[..., GLIP]
_FOLDER_LOADERS: dict[str, FolderLoader] = {}


def register_folder_loader(marker: str, loader: FolderLoader) -> None:
    """Makes :func:`load_checkpoint` hand a folder holding ``marker`` (and no
    ``model.safetensors``) to ``loader``."""
    _FOLDER_LOADERS[marker] = loader


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_checkpoint(path: str | Path, trust_pickle: bool = False, *, mmap: bool = False) -> dict[str, Tensor]:
    """The raw state dict in a ``.pth`` (official layout or ours) or a ``.safetensors`` file.

    Official files hold ``{"model": {...}, "optimizer": ..., "iteration": ...}``; only
    ``"model"`` is returned (with its ``module.`` prefix, if any). Pickles are read with
    ``weights_only=True`` unless ``trust_pickle`` is set. With ``mmap``, a ``.pth`` in
    torch's zip format is mapped (``torch.load(mmap=True)``) rather than read: its tensors
    are views of the file, read when touched (:func:`glip.hub.streaming.stream_state_into`
    copies and releases them one at a time); a legacy (non-zip) pickle is read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {path}: corrupt or not a safetensors file ({e})") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            mapped = mmap and zipfile.is_zipfile(path)
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=mapped)
    except pickle.UnpicklingError as e:
        imports = None if trust_pickle else _pickle_imports(path)
        if imports is None:
            raise CheckpointError(f"cannot read {path}: the file is corrupt or truncated ({str(e)[:300]})") from None
        raise CheckpointError(
            f"{path} is a well-formed pickle that the safe loader refuses: loading it would run arbitrary code "
            f"(it imports {', '.join(imports[:6]) or 'Python objects'}). If you trust the file, pass "
            "trust_pickle=True (CLI: --trust-pickle)."
        ) from None
    except Exception as e:  # zip, struct, EOF and runtime errors of a damaged file
        raise CheckpointError(
            f"cannot read {path}: the file is corrupt or truncated ({type(e).__name__}: {e})"
        ) from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def _pickle_imports(path: Path) -> list[str] | None:
    """The globals a pickle file imports, read without executing it (``pickletools``);
    None when the file is not a complete pickle (corrupt or truncated). A torch zip
    checkpoint's ``data.pkl`` is read from the archive."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(member)
        else:
            data = path.read_bytes()
        names: list[str] = []
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # StopIteration, ValueError, zip errors... all mean "not a readable pickle"
        return None
    return list(dict.fromkeys(n for n in names if not n.startswith(("torch.", "collections.OrderedDict"))))


def _to_our_keys(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    keys = list(state)
    if not keys:
        raise CheckpointError(f"{source} holds no tensors")
    stripped = [k[len("module.") :] if k.startswith("module.") else k for k in keys]
    if any(k.startswith(("language_backbone.", "rpn.")) for k in stripped):
        try:
            return remap_official_state_dict(state)
        except KeyError as e:
            raise CheckpointError(f"{source}: {e.args[0]}") from None
    if all(k.startswith(_OUR_PREFIXES) for k in keys):
        try:
            return remap_legacy_state_dict(state)
        except KeyError as e:
            raise CheckpointError(f"{source}: {e.args[0]}") from None
    foreign = [k for k in stripped if not k.startswith(_OUR_PREFIXES + _OFFICIAL_PREFIXES)]
    raise CheckpointError(
        f"{source} is not a GLIP checkpoint: keys such as {_listing(foreign, 5)} belong to no GLIP module"
    )


def load_state_into(
    model: GLIP,
    state: dict[str, Tensor],
    source: str = "checkpoint",
    *,
    index: SafetensorsIndex | None = None,
    mapped: MappedFile | None = None,
    keep_mapped: Collection[str] = (),
) -> None:
    """Loads ``state`` (our key names) strictly; errors name missing, unexpected and
    mis-shaped keys. ``index`` (meta tensors read from their file) and ``mapped`` (a
    ``read_checkpoint(mmap=True)``) stream it (:func:`glip.hub.streaming.stream_state_into`,
    which leaves the ``keep_mapped`` parameters in the file's mapping)."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(ours[k].shape)}"
        for k in set(ours) & set(state)
        if tuple(ours[k].shape) != tuple(state[k].shape)
    )
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensors of the wrong shape: {_listing(shapes, 6)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if problems:
        hint = ""
        if shapes or (missing and unexpected):
            hint = " (is the config the one this checkpoint was trained with?)"
        raise CheckpointError(f"{source} does not fit the model{hint}: " + "; ".join(problems))
    if index is None and mapped is None:
        model.load_state_dict(state, strict=True)
        return
    if index is None:
        stream_state_into(model, state, mapped=mapped, keep_mapped=keep_mapped)
        return
    try:
        stream_state_into(model, state, index, keep_mapped=keep_mapped)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {source}: corrupt or not a safetensors file ({e})") from None


def with_fresh_heads(
    model: GLIP, state: dict[str, Tensor], source: str = "checkpoint", fresh_heads: Sequence[str] = ()
) -> dict[str, Tensor]:
    """``state`` completed with the initial weights of each ``fresh_start`` head (GLIPv2's MLM
    and inter-image heads), or head named in ``fresh_heads``, of which it holds NO tensor: a
    GLIP checkpoint then loads into a GLIPv2 model, the new heads starting fresh (as the
    official MLM head does); likewise each ``fresh_parts`` sub-module of a head the
    checkpoint holds without it. A head with some of its tensors present is otherwise left
    to the strict check."""
    ours = model.state_dict()
    fresh: dict[str, Tensor] = {}
    for name, head in model.heads.items():
        prefix = f"heads.{name}."
        keys = [k for k in ours if k.startswith(prefix)]
        may_start = getattr(head, "fresh_start", False) or name in fresh_heads
        if may_start and keys and not any(k.startswith(prefix) for k in state):
            fresh.update({k: ours[k] for k in keys})
            logger.info("%s has no weights for the %r head: it starts from its initialisation", source, name)
            continue
        for part in getattr(head, "fresh_parts", ()):
            inner = [k for k in keys if k.startswith(f"{prefix}{part}.")]
            if inner and not any(k.startswith(f"{prefix}{part}.") for k in state):
                fresh.update({k: ours[k] for k in inner})
                logger.info("%s has no weights for the %r head's %s: it starts fresh", source, name, part)
    return {**fresh, **state} if fresh else state


def _resolve_text_encoder(text_encoder: str | Path | None, cfg: GLIPConfig, base: Path | None) -> str:
    if text_encoder is None:
        if base is not None and (base / TEXT_ENCODER_DIR).is_dir():
            return str(base / TEXT_ENCODER_DIR)
        text_encoder = cfg.model.text.encoder
    return resolve_text_encoder(text_encoder)


def _text_components(kind: str, name_or_dir: str) -> tuple[Any, Any]:
    try:
        return load_text_config(kind, name_or_dir), load_tokenizer(name_or_dir)
    except OSError as e:
        raise CheckpointError(
            f"cannot load the text encoder {name_or_dir!r} (its {kind} config and tokenizer): {e}. "
            "Pass text_encoder= (CLI: --text-encoder) a local directory holding config.json and vocab.txt, "
            "or a Hugging Face name that is in the local cache."
        ) from None


def load_checkpoint(
    weights: Path,
    config: str | Path | GLIPConfig | None = None,
    *,
    text_encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_pickle: bool = False,
    fresh_heads: Sequence[str] = (),
    weights_dtype: str | torch.dtype | None = None,
) -> GLIP:
    """Loads the weights at the path ``weights`` (a file or folder; a model argument is
    resolved to one by :func:`glip.hub.loading.load_model`) with ``config`` (a yaml, a
    :class:`GLIPConfig`, or None when the weights carry theirs) and returns the model in
    eval mode; the arguments are those of :func:`glip.hub.loading.load_model`."""
    storage = parse_weights_dtype(weights_dtype)
    base: Path | None = None
    if weights.is_dir() and not (weights / WEIGHTS_NAME).is_file():
        for marker, loader in _FOLDER_LOADERS.items():
            if (weights / marker).is_file():
                model = loader(weights, text_encoder=text_encoder, device=device, trust_pickle=trust_pickle)
                return store_weights(model, storage) if storage is not None else model
    if weights.is_dir():
        base = weights
        weights = weights / WEIGHTS_NAME
        if not weights.is_file() and is_transformers_folder(base):
            try:  # another model type's folder is named as such, not as a missing file
                read_transformers_config(base)
            except TransformersFolderError as e:
                raise CheckpointError(str(e)) from None
        if not weights.is_file():
            raise CheckpointError(f"{base} holds no {WEIGHTS_NAME}")
    elif weights.suffix == ".safetensors":
        base = weights.parent
    text_parts = None
    if config is None and base is not None and is_transformers_folder(base):
        # A folder written by glip.hf's save_pretrained: config.json carries both configs.
        try:
            config, text_tree = read_transformers_config(base)
            if text_encoder is None:
                kind = config.model.text.type
                text_parts = (text_config_from_fields(kind, text_tree), load_tokenizer(str(base)))
        except (TransformersFolderError, OSError) as e:
            raise CheckpointError(str(e)) from None
    if config is None:
        if base is None or not (base / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"{weights} carries no config: pass config= (CLI: --config), a zoo config name such as glip-t "
                "or the yaml it was trained with (official: configs/pretrain/glip_Swin_T_O365_GoldG.yaml)"
            )
        config = base / CONFIG_NAME
    cfg = config if isinstance(config, GLIPConfig) else load_config(config)
    text_dir = _resolve_text_encoder(text_encoder, cfg, base) if text_parts is None else str(base)
    bert_config, tokenizer = text_parts or _text_components(cfg.model.text.type, text_dir)
    # Streamed into the built model, so the weights are never held twice: a .safetensors file
    # from its header (meta tensors), a zip .pth from its mapping; a legacy pickle is read whole.
    index = _index_safetensors(weights) if weights.suffix == ".safetensors" else None
    raw = index.tensors if index is not None else read_checkpoint(weights, trust_pickle=trust_pickle, mmap=True)
    mapped = mapped_file(weights) if index is None else None
    state = _to_our_keys(raw, str(weights))
    # Folders saved with include_text_encoder=False reference the pretrained encoder instead.
    referenced = cfg.model.text.pretrained and not any(k.startswith("text_encoder.") for k in state)
    pretrained_text = text_dir if referenced else None
    if storage is None:
        model = build_model(cfg, bert_config, tokenizer, pretrained_text=pretrained_text)
    else:
        model = build_in_dtype(
            storage, lambda: build_model(cfg, bert_config, tokenizer, pretrained_text=pretrained_text)
        )
    if referenced:
        state = {**{k: v for k, v in model.state_dict().items() if k.startswith("text_encoder.")}, **state}
    state = with_fresh_heads(model, state, str(weights), fresh_heads)
    if "prompt_offset.weight" in state:  # a prompt-tuned checkpoint (ours or official tunable_linear)
        model.enable_prompt_offset(int(state["prompt_offset.weight"].shape[0]))
    # float32 weights: BERT's word table (94 MiB, of which a prompt reads tens of rows) stays in the file
    keep_mapped = sparse_tables(model) if storage is None else ()
    load_state_into(model, state, str(weights), index=index, mapped=mapped, keep_mapped=keep_mapped)
    if base is not None and (base / PROMPT_NAME).is_file():
        _read_prompt(model, base / PROMPT_NAME)
    del raw, state  # a .pth's tensors: not held beside the model any longer than needed
    if storage is not None:
        store_weights(model, storage)
    return model.to(device).eval()


def _index_safetensors(path: Path) -> SafetensorsIndex:
    try:
        return index_safetensors(path)
    except Exception as e:  # malformed header, bad offsets, unreadable file
        raise CheckpointError(f"cannot read {path}: corrupt or not a safetensors file ({e})") from None


def save_model(
    model: GLIP, out_dir: str | Path, *, dtype: torch.dtype | None = None, include_text_encoder: bool = True
) -> Path:
    """Writes ``model.safetensors``, ``config.yaml`` and ``text_encoder/`` (the BERT or CLIP
    text config and the tokenizer) into ``out_dir``, atomically (a crash leaves no half-written folder);
    with ``model.tuned_prompt`` (a fine-tuned model's classes) also ``prompt.json``, which
    :func:`~glip.hub.loading.load_model` reads back.

    Args:
        dtype: cast floating-point tensors (e.g. ``torch.float16`` halves the file);
            :func:`~glip.hub.loading.load_model` casts them back to the model's float32.
        include_text_encoder: False leaves the text encoder's weights out and keeps the
            config's ``model.text.encoder`` reference (with ``model.text.pretrained``), for
            a frozen, pretrained encoder that :func:`~glip.hub.loading.load_model` reloads from its source.
    """
    if model.config is None:
        raise ValueError("the model has no config attached; build it with glip.modeling.build_model")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        save_weights(model, tmp / WEIGHTS_NAME, dtype=dtype, include_text_encoder=include_text_encoder)
        cfg = copy.deepcopy(model.config)
        if include_text_encoder:
            cfg.model.text.encoder = TEXT_ENCODER_DIR
            text_dir = tmp / TEXT_ENCODER_DIR
            model.text_encoder.config.save_pretrained(str(text_dir))
            if model.tokenizer is not None:
                model.tokenizer.save_pretrained(str(text_dir))
        else:
            cfg.model.text.pretrained = True
        save_config(cfg, tmp / CONFIG_NAME)
        if model.tuned_prompt is not None:
            _write_prompt(model, tmp / PROMPT_NAME)
    return out_dir


def save_weights(
    model: GLIP, path: str | Path, *, dtype: torch.dtype | None = None, include_text_encoder: bool = True
) -> Path:
    """Writes the model's state dict (our key names) to the safetensors file ``path``;
    ``dtype`` and ``include_text_encoder`` as in :func:`save_model`."""
    from safetensors.torch import save_file

    state = {}
    for k, v in model.state_dict().items():
        if not include_text_encoder and k.startswith("text_encoder."):
            continue
        v = v.detach().cpu()
        state[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    save_file(state, str(path), metadata={"format": "pt", "glip": "1"})
    return Path(path)


def _write_prompt(model: GLIP, path: Path) -> None:
    """``model.tuned_prompt`` (a fine-tuned model's classes) and its prompt offset's token ids."""
    offset = model.prompt_offset
    token_ids = list(offset.token_ids) if offset is not None and offset.token_ids is not None else None
    record = {"prompt": model.tuned_prompt.to_dict(), "token_ids": token_ids}  # type: ignore[union-attr]
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")


def _read_prompt(model: GLIP, path: Path) -> None:
    """Sets what :func:`_write_prompt` wrote on a loaded ``model``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        model.tuned_prompt = Prompt.from_dict(record["prompt"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a glip prompt record ({type(e).__name__}: {e})") from None
    if model.prompt_offset is not None and record.get("token_ids") is not None:
        model.prompt_offset.token_ids = tuple(int(t) for t in record["token_ids"])
