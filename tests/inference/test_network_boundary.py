"""The network is the network: glip.modeling reads no file and imports no processor; the
convenience methods of GLIP delegate to glip.inference; one Predictor serves
glip.predict, glip.answer and glip.caption."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import glip
from glip.inference import Predictor, Preprocessing, Processor, predictor, shortcuts

MODELING = Path(glip.__file__).resolve().parent / "modeling"
# Modules that read files or decode images, and the processor / predictor side.
IO_MODULES = ("PIL", "glip.utils.image", "glip.inference", "glip.api", "glip.vqa_api", "glip.captioning")
IO_NAMES = {"load_image", "open", "imread"}


def _io_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        found += [m for m in modules if any(m == io or m.startswith(io + ".") for io in IO_MODULES)]
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in IO_NAMES:
                found.append(f"calls {name}() at line {node.lineno}")
    return found


def test_the_network_package_does_no_file_io_and_imports_no_processor():
    problems = {}
    for path in MODELING.rglob("*.py"):
        uses = _io_uses(path)
        if uses:
            problems[path.relative_to(MODELING).as_posix()] = uses
    assert problems == {}


def test_the_io_check_sees_an_image_loader(tmp_path):
    """The check above fails on what it looks for (an import of the loader, a call of it)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from glip.utils.image import load_image\n\ndef f(p):\n    return load_image(p)\n")
    assert _io_uses(bad) == ["glip.utils.image", "calls load_image() at line 4"]


@pytest.fixture(scope="module")
def demo():
    return glip.load_model("demo-shapes", device="cpu")


def test_preprocessing_follows_the_config_unless_assigned(demo):
    inp = demo.config.input
    assert demo.preprocessing == Preprocessing(
        inp.min_size_test, inp.max_size_test, tuple(inp.pixel_mean), tuple(inp.pixel_std), inp.to_bgr255,
        inp.size_divisibility,
    )  # fmt: skip
    processor = Processor.of(demo)
    assert processor.tokenizer is demo.tokenizer and processor.max_phrases == demo.grounding.num_classes
    small = Preprocessing(min_size=64, max_size=96)
    demo.preprocessing = small
    try:
        assert demo.preprocessing is small and Processor.of(demo).preprocessing is small
    finally:
        demo.preprocessing = None
    assert demo.preprocessing.min_size == inp.min_size_test


def test_predict_answer_and_caption_share_one_predictor(monkeypatch):
    """One model load for the three shortcuts: they are thin calls on the same Predictor."""
    monkeypatch.setattr(shortcuts, "_CACHE", {})
    loads = []
    real = predictor.load_model

    def counting(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "load_model", counting)
    made = []
    monkeypatch.setattr(Predictor, "answer", _recording(Predictor.answer, made))
    monkeypatch.setattr(Predictor, "caption", _recording(Predictor.caption, made))
    monkeypatch.setattr(Predictor, "predict", _recording(Predictor.predict, made))
    image = np.full((64, 96, 3), 120, np.uint8)
    image[16:48, 20:52] = (220, 30, 30)
    det = glip.predict(image, "red square. blue circle.", model="demo-shapes", device="cpu", threshold=0.0)
    ans = glip.answer(image, "What color is the square?", model="demo-shapes", device="cpu")
    cap = glip.caption(image, model="demo-shapes", device="cpu", max_length=2, ground=False)
    assert loads == ["demo-shapes"]
    assert [name for name, _ in made] == ["predict", "answer", "caption"]
    assert len({id(p) for _, p in made}) == 1  # the same Predictor object for the three
    assert isinstance(det, glip.Detections) and isinstance(ans, glip.Answer) and isinstance(cap, glip.Caption)


def test_the_shared_predictor_is_reloaded_when_the_loading_options_change(monkeypatch):
    """A second call on the same model path with another config or text encoder must not
    reuse the model the first call loaded with other settings."""
    monkeypatch.setattr(shortcuts, "_CACHE", {})
    made = []

    class Fake:
        def __init__(self, model, **kwargs):
            made.append((model, kwargs["config"], kwargs["text_encoder"], kwargs["batch_size"]))

    monkeypatch.setattr(shortcuts, "Predictor", Fake)
    first = shortcuts.shared_predictor("folder", device="cpu")
    assert shortcuts.shared_predictor("folder", device="cpu") is first
    shortcuts.shared_predictor("folder", device="cpu", config="other.yaml")
    shortcuts.shared_predictor("folder", device="cpu", config="other.yaml", text_encoder="bert-dir")
    shortcuts.shared_predictor("folder", device="cpu", config="other.yaml", text_encoder="bert-dir", batch_size=1)
    assert made == [
        ("folder", None, None, 4),
        ("folder", "other.yaml", None, 4),
        ("folder", "other.yaml", "bert-dir", 4),
        ("folder", "other.yaml", "bert-dir", 1),
    ]


def _recording(method, made):
    def wrapper(self, *args, **kwargs):
        made.append((method.__name__, self))
        return method(self, *args, **kwargs)

    return wrapper
