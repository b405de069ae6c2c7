"""A glip model as a transformers ``PreTrainedModel``: save/load/push, forward and the predictor.

:class:`GLIPForZeroShotObjectDetection` wraps a :class:`glip.GLIP` (it does not copy it):
``from_pretrained`` is :func:`glip.load_model`, ``save_pretrained`` writes the weights with
glip's own writer, ``forward`` runs :func:`glip.inference.detection.detect_prompts` and :meth:`predictor` is the
:class:`glip.Predictor` that ``glip.predict`` and the pipeline use.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from glip.hf.card import model_card
from glip.hf.configuration import GLIPTransformersConfig
from glip.hub.checkpoint import WEIGHTS_NAME, save_weights
from glip.hub.loading import load_model
from glip.hub.transformers_folder import text_config_from_fields
from glip.hub.zoo import ZOO
from glip.inference import Predictor
from glip.inference.detection import detect_prompts
from glip.modeling.build import build_model
from glip.modeling.glip import GLIP
from glip.structures import ImageBatch
from glip.text import TokenizedPrompt
from glip.text.prompt import from_class_names
from glip.utils.fs import atomic_directory

__all__ = ["GLIPForZeroShotObjectDetection", "GLIPObjectDetectionOutput"]

# Keyword arguments that transformers' Auto classes and pipelines pass to from_pretrained and
# that mean nothing for a glip folder (the weights are safetensors, the code is glip's own).
_IGNORED_LOAD_KWARGS = (
    "_from_auto",
    "_from_pipeline",
    "trust_remote_code",
    "use_safetensors",
    "attn_implementation",
    "low_cpu_mem_usage",
    "code_revision",
    "subfolder",
    "proxies",
    "adapter_kwargs",
    "adapter_name",
    "key_mapping",
)


@dataclass
class GLIPObjectDetectionOutput(ModelOutput):
    """The detections of one prompt in each image of a batch (glip's decoding: ATSS anchors,
    pre-NMS top-k, per-class NMS), in the network input's pixels.

    Attributes:
        pred_boxes: B tensors ``Tensor[N_b, 4]``, ``(x1, y1, x2, y2)`` in resized-image pixels
            (:attr:`image_sizes`), sorted by descending score.
        scores: B tensors ``Tensor[N_b]``.
        labels: B tensors ``Tensor[N_b]`` int64, 0-based indices of the prompt's phrases.
        image_sizes: ``Tensor[B, 2]``, each image's resized ``(h, w)`` (before padding).
    """

    pred_boxes: list[Tensor] | None = None
    scores: list[Tensor] | None = None
    labels: list[Tensor] | None = None
    image_sizes: Tensor | None = None


def _device_of(device_map: Any) -> str | torch.device | None:
    """A ``device_map`` naming one device -> that device (glip models are not split)."""
    if device_map is None or isinstance(device_map, (str, torch.device)):
        if device_map == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device_map
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    if isinstance(device_map, dict) and len(set(device_map.values())) == 1:
        return _device_of(next(iter(device_map.values())))
    raise ValueError(f"a glip model runs on one device: device_map={device_map!r} splits it")


def _weights_dtype(dtype: Any) -> str | None:
    """transformers' ``dtype`` -> glip's ``weights_dtype`` (float32, or bfloat16 storage)."""
    if isinstance(dtype, str) and dtype not in ("auto",) and hasattr(torch, dtype):
        dtype = getattr(torch, dtype)
    if dtype in (None, "auto", torch.float32):
        return None
    if dtype == torch.bfloat16:
        return "bfloat16"
    raise ValueError(f"glip keeps float32 or bfloat16 weights, not {dtype} (for float16 compute use autocast)")


def _resolve_folder(name_or_path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> str | Path:
    """A local path or a glip model-zoo name as is; else a Hugging Face repo id, downloaded
    (or found in the cache offline) with ``huggingface_hub.snapshot_download``."""
    text = str(name_or_path)
    if Path(text).exists() or text in ZOO:
        return text
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(text, **{k: v for k, v in hub_kwargs.items() if v is not None})
    except Exception as e:  # offline, unknown repo, network: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise OSError(
            f"{text!r} is neither a local folder, a glip model-zoo name nor a reachable Hugging Face repo "
            f"({type(e).__name__}: {first})"
        ) from None


class GLIPForZeroShotObjectDetection(PreTrainedModel):
    """A glip model (GLIP or GLIPv2, any heads) for transformers' Auto classes and pipelines.

    Args:
        config: the :class:`GLIPTransformersConfig`.
        model: the :class:`glip.GLIP` to wrap (shared, not copied); None builds one with
            random weights from ``config`` (``AutoModel.from_config``).
    """

    config_class = GLIPTransformersConfig
    base_model_prefix = "glip"
    main_input_name = "pixel_values"

    def __init__(self, config: GLIPTransformersConfig, model: GLIP | None = None) -> None:
        super().__init__(config)
        if model is None:
            cfg, _ = _glip_configs(config)
            text_config = text_config_from_fields(cfg.model.text.type, dict(config.glip_text_config or {}))
            model = build_model(cfg, text_config)
        self.glip = model
        self.post_init()

    def init_weights(self) -> None:
        """Nothing: glip's builder initialises the weights (and :meth:`from_pretrained`
        loads them); transformers' initialisation would overwrite them."""

    @classmethod
    def from_glip(cls, model: GLIP) -> GLIPForZeroShotObjectDetection:
        """Wraps a loaded :class:`glip.GLIP` (``glip.load_model``), sharing its modules."""
        if model.config is None:
            raise ValueError("the model has no config attached; load it with glip.load_model")
        config = GLIPTransformersConfig.from_glip(model.config, model.text_encoder.config, architectures=[cls.__name__])
        return cls(config, model)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: Any = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str = "main",
        **kwargs: Any,
    ) -> GLIPForZeroShotObjectDetection:
        """Loads a folder written by :meth:`save_pretrained` (local, or a Hugging Face repo
        id), or anything :func:`glip.load_model` reads (a model-zoo name such as
        ``demo-shapes``, a glip folder), through :func:`glip.load_model`.

        ``device_map`` (one device) places the model; ``dtype`` float32 (default) or
        bfloat16 (glip's bfloat16 weight storage). ``config`` is not used: the folder's
        ``config.json`` is the model's.
        """
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments")
        for name in _IGNORED_LOAD_KWARGS:
            kwargs.pop(name, None)
        device = _device_of(kwargs.pop("device_map", None)) or "cpu"
        dtype = kwargs.pop("dtype", None)
        dtype = kwargs.pop("torch_dtype", None) if dtype is None else dtype
        weights_dtype = _weights_dtype(dtype)
        given = sorted(k for k, v in kwargs.items() if v is not None and v != {})
        if given:  # transformers passes some options as None / {} when unset
            raise TypeError(f"{cls.__name__}.from_pretrained got unexpected arguments: {', '.join(given)}")
        hub = dict(
            cache_dir=cache_dir,
            force_download=force_download or None,
            local_files_only=local_files_only or None,
            token=token,
            revision=revision,
        )
        folder = _resolve_folder(pretrained_model_name_or_path, hub)
        wrapped = cls.from_glip(load_model(folder, device=device, weights_dtype=weights_dtype))
        wrapped.config._name_or_path = str(pretrained_model_name_or_path)
        return wrapped

    def save_pretrained(  # type: ignore[override]
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        max_shard_size: Any = None,
        safe_serialization: bool = True,
        **kwargs: Any,
    ) -> None:
        """Writes a transformers-style folder, atomically: ``config.json``,
        ``model.safetensors`` (glip's key names, float32), the tokenizer files,
        ``preprocessor_config.json`` + ``processor_config.json`` and a ``README.md``
        model card. ``push_to_hub`` then uploads it to ``repo_id`` (default: the folder's
        name). ``max_shard_size`` is accepted and ignored (one file)."""
        from glip.hf.processing import GLIPProcessor

        if kwargs:
            raise TypeError(
                f"{type(self).__name__}.save_pretrained got unexpected arguments: {', '.join(sorted(kwargs))}"
            )
        if not safe_serialization:
            raise ValueError("glip models are saved as safetensors only (safe_serialization=True)")
        if not is_main_process:
            return
        out = Path(save_directory)
        with atomic_directory(out) as tmp:
            save_weights(self.glip, tmp / WEIGHTS_NAME)
            self.config.architectures = [type(self).__name__]
            self.config.save_pretrained(tmp)
            GLIPProcessor.from_model(self.glip).save_pretrained(tmp)
            (tmp / "README.md").write_text(model_card(self.glip), encoding="utf-8")
        if push_to_hub:
            self._upload(out, repo_id or out.name, token=token, commit_message=commit_message, private=private)

    def push_to_hub(  # type: ignore[override]
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Saves the folder (:meth:`save_pretrained`) and uploads it with huggingface_hub
        (``create_repo`` then one ``create_commit``). Returns the commit info."""
        kwargs.pop("max_shard_size", None)
        kwargs.pop("tags", None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}.push_to_hub got unexpected arguments: {', '.join(sorted(kwargs))}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            self.save_pretrained(folder)
            return self._upload(
                folder,
                repo_id,
                token=token,
                commit_message=commit_message,
                commit_description=commit_description,
                private=private,
                revision=revision,
                create_pr=create_pr,
            )

    @staticmethod
    def _upload(folder: Path, repo_id: str, *, token: Any = None, private: bool | None = None, **commit: Any) -> Any:
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        ]
        commit["commit_message"] = commit.get("commit_message") or "Upload GLIP model"
        return api.create_commit(repo_id=repo.repo_id, operations=operations, **commit)

    def predictor(self, batch_size: int = 4) -> Predictor:
        """The :class:`glip.Predictor` over this model (``glip.predict``'s path), on its device."""
        return Predictor(self.glip, device=self.glip.device, batch_size=batch_size)

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        positive_map: Tensor,
        image_sizes: Tensor | None = None,
        **kwargs: Any,
    ) -> GLIPObjectDetectionOutput:
        """Detects one prompt in a batch of images (inputs from :class:`GLIPProcessor`).

        Args:
            pixel_values: ``Tensor[B, 3, H, W]``, the normalised images zero-padded to a
                multiple of the size divisibility.
            input_ids, attention_mask: ``Tensor[1, T]``, the prompt (the same for every image).
            positive_map: ``Tensor[P, T]``, each phrase's tokens (glip's ``TokenizedPrompt``).
            image_sizes: ``Tensor[B, 2]``, each image's resized ``(h, w)``; default the padded size.
        """
        if kwargs:
            raise TypeError(f"unexpected inputs: {', '.join(sorted(kwargs))}")
        b = pixel_values.shape[0]
        if image_sizes is None:
            sizes = [tuple(pixel_values.shape[-2:])] * b
        else:
            sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
        # The phrases' text is not needed here: labels index them (the processor's post-processing names them).
        tokens = TokenizedPrompt(
            prompt=from_class_names([f"phrase {i + 1}" for i in range(positive_map.shape[0])]),
            input_ids=input_ids[:1],
            attention_mask=attention_mask[:1],
            positive_map=positive_map,
            label_to_token={},
        )
        images = ImageBatch(pixel_values.to(self.glip.device), sizes)
        (dets,) = detect_prompts(self.glip, images, [tokens])
        return GLIPObjectDetectionOutput(
            pred_boxes=[d.boxes for d in dets],
            scores=[d.scores for d in dets],
            labels=[d.labels - 1 for d in dets],
            image_sizes=torch.tensor(sizes, dtype=torch.int64),
        )


def _glip_configs(config: GLIPTransformersConfig) -> tuple[Any, dict[str, Any]]:
    from glip.config.io import config_from_dict

    if not isinstance(config.glip_config, dict):
        raise ValueError("the config has no glip_config: it was not written by glip's save_pretrained")
    return config_from_dict(config.glip_config, name=config.glip_config.get("name")), dict(
        config.glip_text_config or {}
    )
