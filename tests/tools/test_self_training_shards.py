"""scripts/self_training.py on shards (``--caption-shards``): img2dataset-layout tars written
here with ``tarfile`` -> pseudo-labelled shards -> the screened student shards -> the
quality table -> the student's packed samples, each equal to the json path's on the same
images (the teacher is the bundled demo model; the pixels are the same PNG bytes)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from glip.data.shards import Piece, ShardWriter, iter_shard
from tests.conftest import load_script, single_torch_thread

NUM_TRAIN, PER_SHARD = 6, 4  # two input shards: 4 + 2 captions


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    yield from single_torch_thread()


def _args(script, work: Path, *extra: str):
    return script.parse_args([
        "--work", str(work), "--num-train", str(NUM_TRAIN), "--num-val", "1", "--image-size", "96", "96",
        "--max-objects", "2", "--threshold", "0.1", "--conf", "0.1", "--batch", "1", "--quiet", *extra,
    ])  # fmt: skip


def write_img2dataset_png(captions: Path, image_dir: Path, out: Path, per_shard: int) -> None:
    """The captioned images as img2dataset's webdataset output with ``--encode_format png``:
    ``{key}.png`` (the file's bytes), ``{key}.txt``, ``{key}.json``; key the file stem."""
    data = json.loads(captions.read_text())
    caption = {a["image_id"]: a["caption"] for a in reversed(data["annotations"])}
    images = [im for im in data["images"] if im["id"] in caption]
    out.mkdir(parents=True)
    for s in range(0, len(images), per_shard):
        with tarfile.open(out / f"{s // per_shard:05d}.tar", "w") as tar:
            for im in images[s : s + per_shard]:
                key = Path(im["file_name"]).stem
                meta = {"url": im["file_name"], "key": key, "status": "success", "caption": caption[im["id"]]}
                png = (image_dir / im["file_name"]).read_bytes()
                for ext, payload in (("png", png), ("txt", caption[im["id"]].encode()),
                                     ("json", json.dumps(meta).encode())):  # fmt: skip
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def _plain(records) -> list:
    """(caption, size, boxes without their json ids) per record."""
    drop = ("id", "image_id")
    return [
        (im["caption"], im["height"], im["width"], [{k: v for k, v in a.items() if k not in drop} for a in anns])
        for im, anns in records
    ]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The json path's and the shard path's student data on the same synthetic set."""
    import glip

    script = load_script("self_training")
    root = tmp_path_factory.mktemp("st")
    teacher = glip.Predictor("demo-shapes", device="cpu")
    json_args = _args(script, root / "json")
    ds = script.synthetic_set(json_args, root / "json" / "data")
    made_json = script.student_data(json_args, ds, teacher)
    write_img2dataset_png(ds.root / "captions_train.json", ds.image_dir, root / "i2d", PER_SHARD)
    shard_args = _args(script, root / "shards", "--caption-shards", str(root / "i2d"))
    made_shards = script.student_data(shard_args, script.synthetic_set(shard_args, root / "shards" / "data"), teacher)
    return script, root, json_args, made_json, shard_args, made_shards


def test_shard_path_labels_screens_and_reports_as_the_json_path(both):
    from glip.tools.pseudo_label_refine import json_records, shard_records
    from glip.tools.pseudo_label_shards import input_shards

    script, root, _, made_json, _, made_shards = both
    pseudo = input_shards(root / "shards" / "pseudo_shards")
    student = input_shards(made_shards["data"])
    assert [p.name for p in pseudo] == [p.name for p in student] == ["00000.tar", "00001.tar"]  # one per input
    assert _plain(shard_records(pseudo)) == _plain(json_records(root / "json" / "pseudo.json"))
    refined = _plain(shard_records(student))
    assert refined == _plain(json_records(made_json["data"])) and refined
    for key in ("pseudo", "student", "quality"):
        assert made_shards[key] == made_json[key], key
    assert made_json["student"]["boxes"] < made_json["pseudo"]["boxes"]  # the screen did something


def test_student_shards_pack_each_caption_as_the_json_of_its_shard(both):
    """The student's packed samples of shard 0 equal the json path's on the same captions
    (packing draws negatives from the sample's shard; shard 0's ids start at 0, so the
    per-sample seeds are the json dataset's too)."""
    from glip.engine.data import build_dataset
    from glip.engine.run import resolve_text_encoder
    from glip.engine.shard_data import build_shard_stream
    from glip.text.tokenize import load_tokenizer
    from glip.tools.pseudo_label_refine import json_records, shard_records

    script, root, json_args, made_json, shard_args, made_shards = both
    shard0 = made_shards["data"] / "00000.tar"
    count = sum(1 for _ in iter_shard(shard0))
    # The json path's student data restricted to shard 0's captions, in its order.
    keys = [im["file_name"] for im, _ in shard_records([shard0])]
    data = json.loads(Path(made_json["data"]).read_text())
    data["images"] = [im for im in data["images"] if Path(im["file_name"]).stem in keys]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    assert len(data["images"]) == count >= 2 and len(list(json_records(made_json["data"]))) > count
    part = root / "json" / "student_shard0.json"
    part.write_text(json.dumps(data))

    cfg_json = script.student_config(json_args, part, made_json["images"])
    cfg_shards = script.student_config(shard_args, made_shards["data"], None)
    assert cfg_shards.data.train_shards == str(made_shards["data"]) and cfg_shards.data.pack_captions == 3
    tokenizer = load_tokenizer(resolve_text_encoder(cfg_json.model.text.encoder))
    dataset = build_dataset(cfg_json, tokenizer)
    stream = build_shard_stream(cfg_shards, tokenizer)
    streamed = list(stream.samples([Piece(0, 0, count)], epoch=0))
    packed = 0
    for i, sample in enumerate(streamed):
        want = dataset[i]
        assert sample.caption == want.caption and sample.tokens_positive == want.tokens_positive
        assert torch.equal(sample.image, want.image) and torch.equal(sample.input_ids, want.input_ids)
        assert torch.equal(sample.targets.boxes, want.targets.boxes)
        assert torch.equal(sample.targets.positive_map, want.targets.positive_map)
        packed += len(sample.caption) > len(str(data["images"][i]["caption"])) + 1
    assert packed > 0  # some negatives were packed


def _records(path: Path, captions: list[tuple[str, list[dict]]]) -> None:
    with ShardWriter(path) as writer:
        for k, (caption, anns) in enumerate(captions):
            record = {"schema": 1, "key": f"s{k}", "image": {"id": f"s{k}", "file_name": f"s{k}", "caption": caption,
                                                               "height": 8, "width": 8}, "annotations": anns}  # fmt: skip
            writer.write(f"s{k}", {"png": b"\x89PNG not decoded here", "json": record})


def test_refine_shards_resumes_by_shard_and_refuses_other_options(tmp_path, monkeypatch):
    from glip.tools import pseudo_label_refine as pr
    from glip.tools.teachers import build_chunker

    caption = "a red circle to the left of a blue square"

    def box(x, score, span):
        return {"bbox": [x, 0, 10, 10], "score": score, "phrase": caption[slice(*span)], "tokens_positive": [span],
                "category_id": 1, "iscrowd": 0, "area": 100.0}  # fmt: skip

    both_boxes = [box(0, 0.9, [0, 12]), box(1, 0.5, [0, 12]), box(20, 0.8, [28, 41])]
    _records(tmp_path / "in" / "a.tar", [(caption, both_boxes), (caption, [box(0, 0.9, [0, 12])])])
    _records(tmp_path / "in" / "b.tar", [(caption, [box(20, 0.2, [28, 41])])])
    inputs = [tmp_path / "in" / "a.tar", tmp_path / "in" / "b.tar"]
    refiner = pr.Refiner(pr.RefineOptions(0.3, 0.5, 1, True), build_chunker("offline"))
    out = tmp_path / "out"
    assert pr.refine_shards(inputs, out, refiner) == {"captions": 1, "boxes": 2}
    kept = list(pr.shard_records([out / "a.tar", out / "b.tar"]))
    assert [[a["score"] for a in anns] for _, anns in kept] == [[0.9, 0.8]]
    assert json.loads((out / "b.tar.stats.json").read_text())["dropped"] == 1
    assert json.loads((out / "manifest.json").read_text())["kind"] == "caption"
    # Resume: a finished shard is skipped, one without its stats file is redone.
    (out / "b.tar.stats.json").unlink()
    seen = []
    real = pr.iter_shard
    monkeypatch.setattr(pr, "iter_shard", lambda p: (seen.append(Path(p).name), real(p))[1])
    assert pr.refine_shards(inputs, out, refiner) == {"captions": 1, "boxes": 2}
    assert "a.tar" not in seen and "b.tar" in seen
    other = pr.Refiner(pr.RefineOptions(0.4, 0.5, 1, True), build_chunker("offline"))
    with pytest.raises(ValueError, match="other settings"):
        pr.refine_shards(inputs, out, other)


def test_the_script_writes_img2dataset_shards_as_the_test_does(both, tmp_path):
    """``--shards N``'s writer (ShardWriter) gives the members the tarfile-written input has."""
    from glip.tools.pseudo_label_shards import input_shards

    script, root, json_args, *_ = both
    data = root / "json" / "data"
    ds = script.synthetic_set(json_args, data)
    written = script.write_caption_shards(data / "captions_train.json", ds.image_dir, tmp_path / "out", PER_SHARD)
    assert [p.name for p in written] == [p.name for p in input_shards(root / "i2d")]
    for mine, theirs in zip(written, input_shards(root / "i2d")):
        got, want = list(iter_shard(mine)), list(iter_shard(theirs))
        assert [m["__key__"] for m in got] == [m["__key__"] for m in want]
        for a, b in zip(got, want):
            assert a["png"] == b["png"] and a["txt"] == b["txt"] and json.loads(a["json"]) == json.loads(b["json"])
