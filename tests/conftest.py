"""Shared test fixtures: the official golden files, the rule for tests that need them, and
small helpers.

The official fixtures (``../shared/fixtures`` beside the checkout, or ``$GLIP_FIXTURES``) are
not part of the repository. A test that reads them is marked ``needs_fixtures`` (by hand, or
automatically when it requests ``fixtures_dir`` / ``tiny_model_factory``); without the folder
such tests are skipped with a one-line reason, and the helpers below (``load_case``, ...)
skip the test that calls them. Under CI (``CI=true``) a missing folder is an error instead,
so CI cannot pass by skipping the parity tests.
"""

from __future__ import annotations

import json
import os
import sys

# Tests never touch the network: Hugging Face names resolve from the local cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("GLIP_FIXTURES", REPO.parent / "shared" / "fixtures"))
OFFICIAL = FIXTURES / "official"
OFFICIAL_TRAIN = FIXTURES / "official_train"
TINY_CONFIGS = ("tiny_glip_t", "tiny_glip_a")
CASES = ("chelsea", "astronaut")

# Both folders must be there: a partial copy would skip half of the parity tests silently.
FIXTURES_PRESENT = OFFICIAL.is_dir() and OFFICIAL_TRAIN.is_dir()
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
SKIP_REASON = f"official fixtures not found at {FIXTURES}; CI provides ../shared/fixtures (or set GLIP_FIXTURES)"
# Fixtures whose use alone means a test reads the official files.
_FIXTURE_USERS = ("fixtures_dir", "tiny_model_factory")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def single_torch_thread():
    """Generator for a fixture: torch on one thread while it is active (small forwards run
    faster so, and far faster on a busy machine), the previous count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_script(name: str):
    """``scripts/NAME.py`` imported as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def require_fixtures() -> None:
    """Skips the calling test (or fixture) when the official fixtures are absent."""
    if not FIXTURES_PRESENT:
        pytest.skip(SKIP_REASON)


# --------------------------------------------------------------------------------------------
# Hooks: the needs_fixtures rule, enforced in one place


def pytest_configure(config: pytest.Config) -> None:
    if IN_CI and not FIXTURES_PRESENT:
        raise pytest.UsageError(
            f"CI is set but the official fixtures are missing at {FIXTURES}: "
            "the parity tests would be skipped (provide ../shared/fixtures or GLIP_FIXTURES)"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in _FIXTURE_USERS):
            item.add_marker("needs_fixtures")
        if not FIXTURES_PRESENT and item.get_closest_marker("needs_fixtures") is not None:
            item.add_marker(skip)


def _mentions_fixtures(text: str) -> bool:
    return str(FIXTURES) in text


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Without the fixtures, a module that reads them at import (or while building its
    parameters) is skipped with the reason instead of breaking the collection."""
    outcome = yield
    report = outcome.get_result()
    if not FIXTURES_PRESENT and report.failed and _mentions_fixtures(str(report.longrepr)):
        report.outcome = "skipped"
        report.result = []
        report.longrepr = (str(collector.path), None, f"Skipped: {SKIP_REASON} (read at collection)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Backstop for a test not yet marked ``needs_fixtures``: without the fixtures, a failure
    whose error names the fixture folder becomes a skip that says so. Never active when the
    fixtures are present (and CI refuses to run without them)."""
    outcome = yield
    report = outcome.get_result()
    if FIXTURES_PRESENT or not report.failed or call.excinfo is None:
        return
    if _mentions_fixtures(str(call.excinfo.value)) or _mentions_fixtures(str(report.longrepr)):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1], f"Skipped: {SKIP_REASON} (unmarked test)")


# --------------------------------------------------------------------------------------------
# The official files


def load_case(config: str, case: str) -> dict:
    require_fixtures()
    return torch.load(OFFICIAL / config / f"case_{case}.pth", weights_only=True)


def official_state_dict(config: str) -> dict[str, torch.Tensor]:
    require_fixtures()
    return torch.load(OFFICIAL / config / "model_official.pth", weights_only=True)["model"]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    require_fixtures()
    return FIXTURES


def tiny_text_encoder_dir(config: str, root: Path) -> Path:
    """A text-encoder folder for a fixture model: its BERT config + the bert-base-uncased vocab."""
    import shutil

    from glip.text import BUNDLED_TEXT_ENCODERS

    require_fixtures()
    out = root / f"text_encoder_{config}"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(OFFICIAL / config / "bert_config.json", out / "config.json")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(BUNDLED_TEXT_ENCODERS["bert-base-uncased"] / name, out / name)
    return out


_MODELS: dict = {}


def load_tiny_model(config: str, tmp_root: Path):
    """The fixture checkpoint loaded through glip.load_model (cached per session)."""
    require_fixtures()
    if config not in _MODELS:
        from glip.hub.loading import load_model

        _MODELS[config] = load_model(
            OFFICIAL / config / "model_official.pth",
            OFFICIAL / config / "config.yaml",
            text_encoder=tiny_text_encoder_dir(config, tmp_root),
        )
    return _MODELS[config]


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    require_fixtures()
    root = tmp_path_factory.mktemp("text_encoders")
    return lambda config: load_tiny_model(config, root)


def save_tiny_clip(out: Path) -> Path:
    """Saves into ``out`` a 1-layer ``transformers.CLIPModel`` (width 32, 2 heads, 64 text
    positions, 32-px images), seeded random weights, with a character-level BPE vocabulary
    (``CLIPTokenizer`` without merges: every character is a token, offline). Returns ``out``."""
    import string

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# A 1-layer open_clip CLIP: 32-px images, 16-d embeddings, 16 text positions.
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_open_clip(out: Path) -> Path:
    """Saves into ``out`` a :data:`TINY_OPEN_CLIP` model with seeded weights (logit scale 20)
    in open_clip's local format: ``open_clip_config.json`` (with its own normalisation) and
    ``open_clip_model.safetensors``. Returns ``out``."""
    import math

    import open_clip
    from safetensors.torch import save_file

    preprocess = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": preprocess}))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model(f"local-dir:{out}", load_weights=False)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    return out


@pytest.fixture(scope="session")
def detector_only(tmp_path_factory) -> Path:
    """The bundled demo model saved without its answer and caption heads (a detector with a
    mask head, as the official checkpoints are): for the "model has no such head" errors."""
    from glip.hub.checkpoint import save_model
    from glip.hub.loading import load_model

    model = load_model("demo-shapes", device="cpu")
    for name in ("vqa", "caption"):
        if name in model.heads:
            del model.heads[name]
        getattr(model.config.model.heads, name).enabled = False
    return save_model(model, tmp_path_factory.mktemp("detector_only") / "model", include_text_encoder=False)


def write_roboflow_export(ds, root: Path, names: dict[str, str] | None = None, dataset: str = "fruit-sky") -> Path:
    """``ds`` (:func:`glip.data.generate_synthetic`) as a real Roboflow COCO export under
    ``root``: ``train/``, ``valid/`` and ``test/`` (the validation json again), each with
    ``_annotations.coco.json`` and its images (linked). Category id 0 is the dataset's name
    (``"supercategory": "none"``, no box uses it); the classes keep their ids 1.., named by
    ``names`` (default: their own), with the dataset's name as their supercategory."""
    names = names or {}
    for split, src in (("train", ds.train_json), ("valid", ds.val_json), ("test", ds.val_json)):
        (root / split).mkdir(parents=True)
        data = json.loads(src.read_text())
        classes = [dict(c, name=names.get(c["name"], c["name"]), supercategory=dataset) for c in data["categories"]]
        data["categories"] = [{"id": 0, "name": dataset, "supercategory": "none"}, *classes]
        for image in data["images"]:
            os.symlink(ds.image_dir / image["file_name"], root / split / image["file_name"])
        (root / split / "_annotations.coco.json").write_text(json.dumps(data))
    return root
