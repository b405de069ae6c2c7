"""glip models in Hugging Face form (glip.hf): save_pretrained / from_pretrained, the Auto
classes, the zero-shot-object-detection pipeline, push_to_hub and the model card, on the
bundled demo-shapes model and on the tiny official fixture model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import glip
from glip.cli import main
from glip.data.synthetic import generate_synthetic, synthetic_categories
from glip.hf import GLIPForZeroShotObjectDetection
from tests.conftest import OFFICIAL, load_tiny_model, single_torch_thread
from tests.subprocesses import finish, start_python, stop

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_processes")  # the fresh processes overlap the module

LABELS = synthetic_categories()[:6]
THRESHOLD = 0.15  # low enough that each of the 3 images has detections to compare


@pytest.fixture(scope="module")
def one_thread():
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    data = generate_synthetic(tmp_path_factory.mktemp("shapes"), num_train=0, num_val=3, image_size=(96, 160), seed=7)
    return sorted(str(p) for p in data.image_dir.glob("val_*.png"))


@pytest.fixture(scope="module")
def demo() -> glip.GLIP:
    return glip.load_model("demo-shapes", device="cpu")


@pytest.fixture(scope="module")
def demo_dir(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "demo-shapes"
    demo.save_pretrained(out)  # on the glip model itself, as on a transformers model
    return out


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:5]


def _same_detections(a: glip.Detections, b: glip.Detections) -> None:
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and a.phrases == b.phrases


def _as_pipeline_results(det: glip.Detections) -> list[dict]:
    """glip.predict's detections in the pipeline's format (boxes truncated to int)."""
    return [
        {"score": s, "label": p, "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box.int().tolist()))}
        for box, s, p in zip(det.boxes, det.scores.tolist(), det.phrases)
    ]


def test_save_pretrained_writes_a_transformers_folder_with_a_model_card(demo_dir):
    names = {p.name for p in demo_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    assert "processor_config.json" in names and "config.yaml" not in names
    config = json.loads((demo_dir / "config.json").read_text())
    assert config["model_type"] == "glip" and config["architectures"] == ["GLIPForZeroShotObjectDetection"]
    heads = config["glip_config"]["model"]["heads"]
    assert all(heads[name]["enabled"] for name in ("mask", "vqa", "caption"))  # GLIPv2's heads are kept
    card = (demo_dir / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "pipeline_tag: zero-shot-object-detection" in card
    assert "synthetic images of coloured shapes" in card and "box AP 40.9" in card
    assert "Intended use and limits" in card


def test_auto_classes_load_the_folder_bit_identically(demo, demo_dir, images):
    from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

    assert type(AutoConfig.from_pretrained(demo_dir)).__name__ == "GLIPTransformersConfig"
    model = AutoModelForZeroShotObjectDetection.from_pretrained(demo_dir)
    assert isinstance(model, GLIPForZeroShotObjectDetection) and sorted(model.glip.heads) == sorted(demo.heads)
    _same_state(model.glip, demo)
    processor = AutoProcessor.from_pretrained(demo_dir)
    for path in images:
        ref = glip.predict(path, LABELS, model=demo, threshold=THRESHOLD, device="cpu")
        _same_detections(model.predictor().predict(path, LABELS, threshold=THRESHOLD), ref)
        # The HF route: processor -> forward -> post-processing, boxes in image pixels.
        image = Image.open(path).convert("RGB")
        outputs = model(**processor(images=image, text=LABELS))
        (result,) = processor.post_process_grounded_object_detection(
            outputs, threshold=THRESHOLD, target_sizes=[image.size[::-1]], text_labels=LABELS
        )
        assert torch.equal(result["boxes"], ref.boxes) and torch.equal(result["scores"], ref.scores)
        assert result["text_labels"] == ref.phrases


def test_pipeline_equals_glip_predict_one_by_one_and_as_a_batch(demo, demo_dir, images):
    from transformers import pipeline

    detector = pipeline("zero-shot-object-detection", model=str(demo_dir), device="cpu")
    assert detector.model.device.type == "cpu"
    refs = [glip.predict(p, LABELS, model=demo, threshold=THRESHOLD, device="cpu") for p in images]
    assert all(len(r) > 0 for r in refs)
    for path, ref in zip(images, refs):
        assert detector(path, candidate_labels=LABELS, threshold=THRESHOLD) == _as_pipeline_results(ref)
    batch = detector([Image.open(p) for p in images], candidate_labels=LABELS, threshold=THRESHOLD)
    assert batch == [_as_pipeline_results(r) for r in refs]
    assert detector(images, candidate_labels=",".join(LABELS), threshold=THRESHOLD) == batch  # paths, "a,b" labels


def test_glip_loader_and_cli_read_the_folder(demo, demo_dir, images, tmp_path):
    reloaded = glip.load_model(demo_dir, device="cpu")
    _same_state(reloaded, demo)
    assert reloaded.config.name == demo.config.name and reloaded.max_query_len == demo.max_query_len
    out = tmp_path / "out"
    rc = main(["detect", images[0], "--weights", str(demo_dir), "--prompt", ". ".join(LABELS), "--threshold",
               str(THRESHOLD), "--out", str(out), "--quiet", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    (entry,) = json.loads((out / "detections.json").read_text())
    ref = glip.predict(images[0], ". ".join(LABELS), model=demo, threshold=THRESHOLD, device="cpu")
    assert [d["score"] for d in entry["detections"]] == pytest.approx(ref.scores.tolist(), abs=1e-6)


def test_push_to_hub_writes_the_repo_through_huggingface_hub(demo, demo_dir, tmp_path, monkeypatch):
    """The network calls (create_repo, create_commit) are replaced by a local hub; the
    operations huggingface_hub is given are written out as the repo."""
    from huggingface_hub import HfApi, RepoUrl

    hub = tmp_path / "hub"
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        calls.append(("create_commit", repo_id, commit_message))
        for op in operations:
            target = hub / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    demo.push_to_hub("someone/glip-demo")
    assert calls == [("create_repo", "someone/glip-demo"), ("create_commit", "someone/glip-demo", "Upload GLIP model")]
    repo = hub / "someone" / "glip-demo"
    assert sorted(p.name for p in repo.iterdir()) == sorted(p.name for p in demo_dir.iterdir())
    _same_state(GLIPForZeroShotObjectDetection.from_pretrained(repo).glip, demo)


def test_a_converted_official_checkpoint_round_trips(tmp_path):
    """glip convert's output (official .pth + yaml -> our folder) -> save_pretrained ->
    from_pretrained: the same weights and bit-identical detections; the pipeline equals
    glip.predict on 3 images, one by one and as a batch."""
    from transformers import AutoModelForZeroShotObjectDetection, pipeline

    from tests.conftest import load_case

    official = load_tiny_model("tiny_glip_t", tmp_path)
    converted = glip.save_model(official, tmp_path / "converted")
    hf_dir = tmp_path / "hf"
    GLIPForZeroShotObjectDetection.from_pretrained(converted).save_pretrained(hf_dir)
    assert "Source weights" in (hf_dir / "README.md").read_text()
    model = AutoModelForZeroShotObjectDetection.from_pretrained(hf_dir)
    _same_state(model.glip, official)
    pictures = [load_case("tiny_glip_t", case)["image_original_rgb_uint8"].numpy() for case in ("chelsea", "astronaut")]
    pictures.append(pictures[0][::-1, ::2].copy())  # a third, differently sized image
    labels = ["cat", "person", "rocket"]
    refs = [glip.predict(p, labels, model=official, threshold=0.0, device="cpu") for p in pictures]
    _same_detections(model.predictor().predict(pictures[0], labels, threshold=0.0), refs[0])  # bit-identical
    detector = pipeline("zero-shot-object-detection", model=str(hf_dir), device="cpu")
    pils = [Image.fromarray(p) for p in pictures]
    for image, ref in zip(pils, refs):
        assert detector(image, candidate_labels=labels, threshold=0.0) == _as_pipeline_results(ref)
    assert detector(pils, candidate_labels=labels, threshold=0.0) == [_as_pipeline_results(r) for r in refs]
    assert OFFICIAL.is_dir()


def test_a_folder_of_another_model_type_is_a_one_line_error(tmp_path):
    folder = tmp_path / "owl"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "owlv2"}))
    with pytest.raises(glip.CheckpointError, match="model type 'owlv2', not a glip model") as info:
        glip.load_model(folder)
    assert "\n" not in str(info.value)
    with pytest.raises(glip.CheckpointError, match="'owlv2'"):
        GLIPForZeroShotObjectDetection.from_pretrained(folder)


def test_empty_candidate_labels_are_a_one_line_error(demo_dir, images):
    from transformers import AutoProcessor, pipeline

    detector = pipeline("zero-shot-object-detection", model=str(demo_dir), device="cpu")
    for empty in ([], "", None):
        with pytest.raises(glip.PromptError, match="candidate_labels must name at least one label") as info:
            detector(images[0], candidate_labels=empty)
        assert "\n" not in str(info.value)
    with pytest.raises(glip.PromptError, match="empty"):
        AutoProcessor.from_pretrained(demo_dir)(images=images[0], text=[])


# Two checks in fresh processes (what a user's first `import glip` sees), started together
# when the first of them runs so that they overlap each other on a 2-core machine.
FRESH_IMPORT = """
import sys, glip
assert "transformers" not in sys.modules
from transformers import CONFIG_MAPPING
from transformers.pipelines import PIPELINE_REGISTRY
print(CONFIG_MAPPING["glip"].__name__, PIPELINE_REGISTRY.supported_tasks["zero-shot-object-detection"]["impl"].__name__)
"""
FRESH_AUTO = """
import glip
from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({folder!r})
model = AutoModelForZeroShotObjectDetection.from_pretrained({folder!r})
processor = AutoProcessor.from_pretrained({folder!r})
print(type(tokenizer).__name__, type(model).__name__, type(processor).__name__)
"""


@pytest.fixture(scope="module")
def fresh_processes(demo_dir):
    """The two fresh processes, by name, running side by side (stopped at the module's end)."""
    root = str(Path(__file__).resolve().parents[2])
    codes = {"import": FRESH_IMPORT, "auto": FRESH_AUTO.format(folder=str(demo_dir))}
    procs = {name: start_python(["-c", code], cwd=root) for name, code in codes.items()}
    yield procs
    stop(procs.values())


def test_import_glip_registers_with_transformers_once_transformers_is_imported(fresh_processes):
    """`import glip` imports no transformers; importing transformers afterwards registers the
    glip model type, Auto classes and the pipeline class (the import hook of glip.hf)."""
    assert finish(fresh_processes["import"]).split() == [
        "GLIPTransformersConfig",
        "GLIPZeroShotObjectDetectionPipeline",
    ]


def test_a_fresh_process_loads_a_folder_through_the_auto_classes_without_the_pipelines(fresh_processes):
    """The hook registers the model type when the Auto config table is imported and the rest
    when a glip config is made, so AutoTokenizer / AutoModel / AutoProcessor work on a glip
    folder with no pipeline import."""
    assert finish(fresh_processes["auto"]).split() == [
        "BertTokenizer",
        "GLIPForZeroShotObjectDetection",
        "GLIPProcessor",
    ]
