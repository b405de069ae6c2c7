"""`glip pseudo-label --shards`: img2dataset tar shards in, labelled shards out (resumable and
split by shard), trained on with data.train_shards.

The input is written here with ``tarfile`` in img2dataset's layout: ``{key}.jpg``,
``{key}.txt`` (the caption) and ``{key}.json`` (its download metadata), 9-digit keys, and
a ``{shard}_stats.json`` beside each tar. The teacher is the bundled demo-shapes model (0.2
threshold, as in test_pseudo_label.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from glip.cli import main
from glip.data.shards import iter_shard, open_shard_set, record_from_members
from glip.tools.pseudo_label import PseudoLabelSettings, ShardStore
from glip.tools.pseudo_label_shards import input_digest, input_shards, label_shards
from glip.tools.teachers import GlipTeacher, build_chunker
from tests.conftest import single_torch_thread
from tests.engine.conftest import shapes, text_dir, tiny_config  # noqa: F401 (fixtures)

THRESHOLD = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    yield from single_torch_thread()


def write_img2dataset(data, out: Path, per_shard: int, corrupt: bool = False) -> list[str]:
    """The captioned images of synthetic ``data`` as img2dataset shards ``out/{00000..}.tar``;
    with ``corrupt``, shard 1 also holds a sample whose jpg is not an image. Returns the
    keys of the readable samples."""
    from PIL import Image

    record = json.loads((data.root / "captions_train.json").read_text())
    caption = {a["image_id"]: a["caption"] for a in reversed(record["annotations"])}  # each image's first
    images = [im for im in record["images"] if im["id"] in caption]
    out.mkdir(parents=True)
    keys = []
    for s in range(0, len(images), per_shard):
        shard = s // per_shard
        samples = []
        for i, im in enumerate(images[s : s + per_shard]):
            buf = io.BytesIO()
            Image.open(data.image_dir / im["file_name"]).convert("RGB").save(buf, "JPEG", quality=95)
            samples.append((f"{shard:05d}{i:04d}", buf.getvalue(), caption[im["id"]], im))
        if corrupt and shard == 1:
            samples.insert(1, (f"{shard:05d}9999", b"not a jpeg", "a red circle", images[0]))
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for key, jpg, text, im in samples:
                meta = {"url": f"http://example.com/{im['file_name']}", "key": key, "status": "success",
                        "error_message": None, "caption": text, "width": im["width"], "height": im["height"],
                        "original_width": im["width"], "original_height": im["height"]}  # fmt: skip
                for ext, payload in (("jpg", jpg), ("txt", text.encode()), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                keys += [key] if jpg != b"not a jpeg" else []
        (out / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(samples)}))
    return keys


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """6 synthetic images as 2 img2dataset shards of 3 (+ 1 corrupt sample in shard 1)."""
    from glip.data import generate_synthetic

    root = tmp_path_factory.mktemp("i2d")
    data = generate_synthetic(root / "synthetic", num_train=6, num_val=0, image_size=64, seed=5, max_objects=2)
    keys = write_img2dataset(data, root / "in", per_shard=3, corrupt=True)
    return root / "in", keys


@pytest.fixture(scope="module")
def teacher():
    import glip

    return GlipTeacher(glip.Predictor("demo-shapes", device="cpu"), THRESHOLD)


class Counting:
    """The teacher, recording the image ids it labels."""

    def __init__(self, teacher):
        self.teacher, self.seen = teacher, []

    def label(self, image, prompts, image_id=None):
        self.seen.append(image_id)
        return self.teacher.label(image, prompts, image_id)


def _settings(inputs):
    return PseudoLabelSettings(
        input_digest(inputs), len(inputs), THRESHOLD, model={"model": "demo-shapes", "config": None}
    )


def _label(inputs, out, teacher, index=0, count=1):
    return label_shards(inputs, out, teacher, build_chunker("offline"), ShardStore(out), _settings(inputs),
                        shard_index=index, num_shards=count, progress=False)  # fmt: skip


def _cli(src, out, *extra):
    return main(["pseudo-label", "--shards", str(src), "--out", str(out), "--model", "demo-shapes", "--threshold",
                 str(THRESHOLD), "--device", "cpu", "--quiet", *extra])  # fmt: skip


def test_cli_labels_img2dataset_shards_into_a_shard_set(small, tmp_path, capsys):
    src, keys = small
    out = tmp_path / "out"
    assert _cli(src, out) == 0
    stdout = capsys.readouterr().out
    assert "1 unreadable" in stdout and f"train with data.train_shards={out}" in stdout
    manifest = open_shard_set(out)
    assert manifest.kind == "caption" and [s.name for s in manifest.shards] == ["00000.tar", "00001.tar"]
    written, boxes = [], 0
    for entry in manifest.shards:
        samples = list(iter_shard(manifest.path(entry)))
        assert len(samples) == entry.samples
        for members in samples:
            image, record = record_from_members(members)
            assert image[:2] == b"\xff\xd8" and record["key"] == members["__key__"]  # the input's jpg, unchanged
            written.append(record["key"])
            caption = record["image"]["caption"]
            assert record["image"]["url"].startswith("http://example.com/") and record["annotations"]
            for ann in record["annotations"]:
                (s, e), = ann["tokens_positive"]  # fmt: skip
                assert caption[s:e] == ann["phrase"] and ann["score"] > THRESHOLD and ann["category_id"] == 1
                boxes += 1
    assert set(written) <= set(keys) and len(written) >= 4 and boxes >= len(written)


def test_resume_skips_a_finished_shard_and_redoes_an_interrupted_one(small, teacher, tmp_path):
    src, _ = small
    inputs = input_shards(src)
    out = tmp_path / "out"
    first = Counting(teacher)
    assert _label(inputs, out, first, index=0, count=2).labelled == 1  # 00000.tar only
    assert first.seen == ["000000000", "000000001", "000000002"]
    done = (out / "00000.tar").stat()
    (out / ".00001.tar.abc.tmp").write_bytes(b"half a shard")  # a run killed while writing 00001
    again = Counting(teacher)
    summary = _label(inputs, out, again)
    assert (summary.labelled, summary.already_done, summary.corrupt) == (1, 1, 1)
    assert again.seen == ["000010000", "000010001", "000010002"]  # the corrupt sample never reaches the teacher
    assert (out / "00000.tar").stat().st_mtime_ns == done.st_mtime_ns
    assert not (out / ".00001.tar.abc.tmp").exists()
    (out / "00001.tar.stats.json").unlink()  # killed after the shard's rename, before its stats
    assert _label(inputs, out, Counting(teacher)).labelled == 1


def test_two_jobs_split_by_shard_and_the_last_writes_the_manifest(small, teacher, tmp_path, capsys):
    """Job 1 of 2 through the library, job 2 through the command (--num-shards, the rule that
    torchrun / accelerate ranks follow): each input shard is labelled once."""
    src, keys = small
    out = tmp_path / "out"
    job = Counting(teacher)
    _label(input_shards(src), out, job, index=0, count=2)
    assert _cli(src, out, "--num-shards", "2", "--shard-index", "1") == 0
    stdout = capsys.readouterr().out
    assert "process 2/2: labelled 1 shards" in stdout and "0 were done already" in stdout and "wrote" in stdout
    assert job.seen == keys[:3]  # shard 0 only
    assert [s.name for s in open_shard_set(out).shards] == ["00000.tar", "00001.tar"]


def test_a_truncated_input_shard_is_named_and_the_others_are_labelled(small, tmp_path, capsys):
    src, _ = small
    cut = tmp_path / "in"
    cut.mkdir()
    (cut / "00000.tar").write_bytes((src / "00000.tar").read_bytes())
    data = (src / "00001.tar").read_bytes()
    (cut / "00001.tar").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert _cli(cut, out) == 1
    err = capsys.readouterr().err
    assert "00001.tar is truncated" in err and err.count("\n") == 1
    assert (out / "00000.tar").is_file() and not (out / "00001.tar").exists() and not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--images", "x"], "--images goes with --captions, not --shards"),
        (["--captions", "c.json"], "give the captions to label: --captions FILE"),
        (["--out", "IN"], "holds the input shards"),
    ],
)
def test_cli_errors_are_one_line(small, tmp_path, capsys, extra, message):
    src, _ = small
    extra = [str(src) if x == "IN" else x for x in extra]
    assert _cli(src, tmp_path / "out", *extra) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_pseudo_labelled_img2dataset_shards_train(shapes, text_dir, tmp_path):  # noqa: F811 (fixtures)
    """img2dataset shards of the training shapes -> glip pseudo-label --shards -> 2 steps of
    data.train_shards (as test_shard_training.py), each caption packed with 2 others of its
    shard."""
    from glip.engine import train

    write_img2dataset(shapes, tmp_path / "in", per_shard=8)
    assert _cli(tmp_path / "in", tmp_path / "pseudo") == 0
    assert open_shard_set(tmp_path / "pseudo").num_samples >= 8
    cfg = tiny_config(shapes, text_dir, **{"data.train_shards": str(tmp_path / "pseudo"), "solver.max_iter": 2,
                                           "data.pack_captions": 2})  # fmt: skip
    cfg.data.train_json = cfg.data.train_images = ""
    result = train(cfg, tmp_path / "run", cpu=True, progress_bar=False)
    assert result.progress.step == 2
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < v < 100 for v in losses)


@pytest.mark.slow  # two torchrun processes, each loading the teacher: ~30 s on 2 busy cores (pytest -m slow)
def test_two_distributed_processes_split_by_shard(small, tmp_path):
    """The torchrun / accelerate path (WORLD_SIZE, gloo on CPU): rank k labels shard k, rank 0
    writes the manifest after the barrier."""
    import os
    import subprocess
    import sys

    from tests.engine.conftest import REPO

    src, _ = small
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29562",
           "-m", "glip.cli", "pseudo-label", "--shards", str(src), "--model", "demo-shapes", "--out", str(out),
           "--threshold", str(THRESHOLD), "--device", "cpu", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 1/2: labelled 1 shards" in proc.stdout and "process 2/2: labelled 1 shards" in proc.stdout
    assert proc.stdout.count("wrote") == 1
    assert [s.name for s in open_shard_set(out).shards] == ["00000.tar", "00001.tar"]
