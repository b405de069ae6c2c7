"""`glip pseudo-label`: sharding, resuming, bad images, and a result the grounding reader trains on.

The teacher is the bundled demo-shapes model (its scores on the synthetic captions are low,
hence the 0.2 threshold)."""

from __future__ import annotations

import json
import sys

import pytest

from glip.cli import main
from glip.data import MdetrGroundingDataset, TrainTransform, collate_grounding
from glip.tools.pseudo_label import (
    PseudoLabelSettings,
    ShardStore,
    file_digest,
    label_images,
    merge_shards,
    read_caption_items,
)
from glip.tools.teachers import GlipTeacher, build_chunker, caption_prompt
from tests.conftest import single_torch_thread

THRESHOLD = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small forwards: one thread is faster, and much faster on a busy machine."""
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """4 synthetic images (one with a second caption), a corrupt image and a missing one."""
    from glip.data import generate_synthetic

    root = tmp_path_factory.mktemp("pl")
    data = generate_synthetic(root, num_train=4, num_val=0, image_size=64, seed=5, max_objects=2)
    record = json.loads((root / "captions_train.json").read_text())
    # A second caption of image 1: its first shape, named again ("a red circle" -> "one more a red circle").
    first = next(a["caption"] for a in record["annotations"] if a["image_id"] == record["images"][1]["id"])
    second = "one more " + " ".join(first.split()[:3])
    record["annotations"].append({"id": 100, "image_id": record["images"][1]["id"], "caption": second})
    (data.image_dir / "broken.png").write_bytes(b"not an image")
    record["images"][2:2] = [
        {"id": 90, "file_name": "broken.png", "width": 64, "height": 64},
        {"id": 91, "file_name": "missing.png", "width": 64, "height": 64},
    ]
    record["annotations"] += [
        {"id": 101, "image_id": 90, "caption": "a red circle"},
        {"id": 102, "image_id": 91, "caption": "a blue square"},
    ]
    path = root / "captions.json"
    path.write_text(json.dumps(record))
    return path, data.image_dir


@pytest.fixture(scope="module")
def teacher():
    import glip

    return GlipTeacher(glip.Predictor("demo-shapes", device="cpu"), THRESHOLD)


@pytest.fixture(scope="module")
def reference(captions, teacher, tmp_path_factory):
    """The uninterrupted single-process result."""
    return _run(*captions, teacher, tmp_path_factory.mktemp("reference"))


def _settings(path, items, **extra):
    values = {"threshold": THRESHOLD, "model": {"model": "demo-shapes", "config": None}, **extra}
    return PseudoLabelSettings(file_digest(path), len(items), **values)


def _run(path, image_dir, teacher, root, shards=((0, 1),), **kwargs):
    items = read_caption_items(path)
    store = ShardStore(root / "shards")
    for index, count in shards:
        label_images(
            items, image_dir, teacher, build_chunker("offline"), store, _settings(path, items),
            shard_index=index, num_shards=count, chunk_size=2, progress=False, **kwargs,
        )  # fmt: skip
    return merge_shards(items, store, root / "pseudo.json")


def test_two_shards_equal_one_process_and_bad_images_are_skipped(captions, teacher, reference, tmp_path):
    path, image_dir = captions
    one = reference
    two = _run(path, image_dir, teacher, tmp_path / "two", shards=((1, 2), (0, 2)))
    assert one.path.read_bytes() == two.path.read_bytes()
    parts = ShardStore(tmp_path / "two" / "shards").parts()
    assert {p.name[:20] for p in parts} == {"part-00000-of-00002-", "part-00001-of-00002-"}
    merged = json.loads(one.path.read_text())
    # 2 of the 6 images fail (unreadable, missing); the 4 others give 5 captions with boxes.
    assert sorted(f["file_name"] for f in one.failed) == ["broken.png", "missing.png"]
    assert len(merged["images"]) == one.captions == 5 and one.boxes == len(merged["annotations"]) > 5
    assert [im["id"] for im in merged["images"]] == list(range(1, 6))
    assert [a["id"] for a in merged["annotations"]] == list(range(1, one.boxes + 1))
    second = [im for im in merged["images"] if im["caption_index"] == 1]
    assert len(second) == 1 and second[0]["caption"].startswith("one more a ")
    for ann in merged["annotations"]:
        caption = merged["images"][ann["image_id"] - 1]["caption"]
        (start, end), = ann["tokens_positive"]  # fmt: skip
        assert caption[start:end] == ann["phrase"] and ann["score"] > THRESHOLD


def test_the_merged_file_is_grounding_training_data(captions, teacher, reference):
    tokenizer = teacher.predictor.model.tokenizer
    ds = MdetrGroundingDataset(reference.path, captions[1], tokenizer, TrainTransform([64], 64, 0.0), max_query_len=64)
    assert len(ds) == 5
    batch = collate_grounding([ds[0], ds[1]], size_divisibility=32, max_query_len=64)
    assert all(len(t.boxes) > 0 for t in batch.targets)
    assert bool(batch.positive_map.any(dim=1).all())  # every box grounds some token of its caption


class Killed(BaseException):
    """Stands for the process dying (not an error the loop may catch)."""


class DiesAfter:
    def __init__(self, teacher, n):
        self.teacher, self.n = teacher, n

    def label(self, image, prompts, image_id=None):
        if self.n == 0:
            raise Killed
        self.n -= 1
        return self.teacher.label(image, prompts, image_id)


def test_interrupted_runs_resume_without_loss_or_duplicates(captions, teacher, reference, tmp_path):
    path, image_dir = captions
    full = reference.path.read_bytes()
    items = read_caption_items(path)
    store = ShardStore(tmp_path / "cut" / "shards")
    settings = _settings(path, items)
    args = (items, image_dir)
    # Interrupted in the 2nd image: the one done is written on the way out.
    with pytest.raises(Killed):
        label_images(*args, DiesAfter(teacher, 1), build_chunker("offline"), store, settings, chunk_size=2,
                     progress=False)  # fmt: skip
    assert sorted(store.read_entries()) == [0]
    # Then killed hard while writing a part: the part is absent, a temporary file is left.
    summary = label_images(*args, teacher, build_chunker("offline"), store, settings, chunk_size=2, max_images=2,
                           progress=False)  # fmt: skip
    assert (summary.labelled, summary.already_done, summary.remaining) == (2, 1, 3)
    summary.parts[-1].rename(store.root / ".part-00000-of-00001-000009.json.123.tmp")
    with pytest.raises(ValueError, match="5 of 6 images are not labelled yet"):
        merge_shards(items, store, tmp_path / "cut" / "pseudo.json")
    # Resumed with two processes: only the 5 missing images are labelled.
    done = [label_images(*args, teacher, build_chunker("offline"), store, settings, shard_index=k, num_shards=2,
                         chunk_size=2, progress=False).labelled for k in (0, 1)]  # fmt: skip
    assert sum(done) == 5
    assert merge_shards(items, store, tmp_path / "cut" / "pseudo.json").path.read_bytes() == full


def test_a_resumed_run_must_use_the_same_settings(captions, teacher, tmp_path):
    path, image_dir = captions
    items = read_caption_items(path)
    store = ShardStore(tmp_path)
    label_images(items, image_dir, teacher, build_chunker("offline"), store, _settings(path, items), max_images=1,
                 progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"other settings \(nms: -1.0 then, 0.5 now\)"):
        label_images(items, image_dir, teacher, build_chunker("offline"), store, _settings(path, items, nms=0.5),
                     progress=False)  # fmt: skip


def test_cli_shards_as_separate_jobs_then_merges(captions, teacher, reference, tmp_path, capsys):
    """Job 2 of 2 (run here through the library, with the settings the command records),
    then job 1 through the command, which finds every shard done and merges."""
    path, image_dir = captions
    out = tmp_path / "pseudo.json"
    items = read_caption_items(path)
    label_images(items, image_dir, teacher, build_chunker("offline"), ShardStore(tmp_path / "pseudo.json.shards"),
                 _settings(path, items), shard_index=1, num_shards=2, progress=False)  # fmt: skip
    assert main(["pseudo-label", "--captions", str(path), "--out", str(out), "--merge"]) == 1
    assert "3 of 6 images are not labelled yet" in capsys.readouterr().err and not out.exists()
    assert main(["pseudo-label", "--captions", str(path), "--images", str(image_dir), "--model", "demo-shapes",
                 "--out", str(out), "--threshold", str(THRESHOLD), "--device", "cpu", "--quiet", "--num-shards", "2",
                 "--shard-index", "0"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "shard 1/2: labelled 3 images (1 failed), 0 were done already" in captured.out
    assert "wrote" in captured.out and "2 images could not be labelled" in captured.err
    assert out.read_bytes() == reference.path.read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "2"], "--threshold must be in [0, 1]"),
        (["--teacher", "clip"], "--teacher clip needs --clip-model"),
        (["--num-shards", "2"], "--num-shards and --shard-index go together"),
        (["--captions", "nowhere.json"], "caption file not found"),
        (["--images", "nowhere"], "image folder not found"),
    ],
)
def test_cli_errors_are_one_line(captions, tmp_path, capsys, extra, message):
    path, image_dir = captions
    args = ["pseudo-label", "--captions", str(path), "--images", str(image_dir), "--out", str(tmp_path / "p.json")]
    assert main(args + extra) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_spacy_chunker(monkeypatch, tmp_path, captions, capsys):
    """Missing spaCy is one line; installed, its noun chunks are the phrases."""
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(ValueError, match="needs spaCy: pip install spacy"):
        build_chunker("spacy")
    path, image_dir = captions
    args = ["pseudo-label", "--captions", str(path), "--images", str(image_dir), "--out", str(tmp_path / "p.json")]
    assert main([*args, "--chunker", "spacy"]) == 1
    assert "needs spaCy" in capsys.readouterr().err

    class Chunk:
        def __init__(self, text, start):
            self.text, self.start_char, self.end_char = text, start, start + len(text)

    class FakeSpacy:
        @staticmethod
        def load(name):
            assert name == "en_core_web_sm"
            return lambda text: type("Doc", (), {"noun_chunks": [Chunk("a red circle", 4)]})()

    monkeypatch.setitem(sys.modules, "spacy", FakeSpacy)
    prompt = caption_prompt("see a red circle", build_chunker("spacy"))
    assert prompt.phrases == ("a red circle",) and prompt.spans == (((4, 16),),)
    assert caption_prompt("nothing", lambda c: []) is None


@pytest.mark.slow  # two torchrun processes, each loading the teacher: ~30 s on 2 busy cores (pytest -m slow)
def test_two_distributed_processes_equal_one(captions, reference, tmp_path):
    """The accelerate path (PartialState under torchrun, gloo on CPU): shards, barrier, merge."""
    import os
    import subprocess

    from tests.engine.conftest import REPO

    path, image_dir = captions
    out = tmp_path / "pseudo.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29561",
           "-m", "glip.cli", "pseudo-label", "--captions", str(path), "--images", str(image_dir), "--model",
           "demo-shapes", "--out", str(out), "--threshold", str(THRESHOLD), "--chunk-size", "1", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shard 1/2: labelled 3 images" in proc.stdout and "shard 2/2: labelled 3 images" in proc.stdout
    assert out.read_bytes() == reference.path.read_bytes()
