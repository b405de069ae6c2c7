"""ODVG jsonl in and out: hand-made files in the published layout (Open-GroundingDino /
MM-Grounding-DINO) go through shards and come back the same."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from glip.cli import main
from glip.data.shards import iter_shard, open_shard_set, record_from_members

OD = [
    {"filename": "a.png", "height": 20, "width": 30, "detection": {"instances": [
        {"bbox": [1.0, 2.0, 11.0, 12.0], "label": 0, "category": "person"},
        {"bbox": [5.0, 5.0, 25.0, 18.0], "label": 2, "category": "car"}]}},
    {"filename": "b.png", "height": 20, "width": 30, "detection": {"instances": [
        {"bbox": [0.0, 0.0, 10.0, 10.0], "label": 2, "category": "car"}]}},
]  # fmt: skip
VG = [
    {"filename": "a.png", "height": 20, "width": 30, "grounding": {"caption": "a man rides a red bike", "regions": [
        {"bbox": [1.0, 2.0, 11.0, 12.0], "phrase": "a man", "tokens_positive": [[0, 5]]},
        {"bbox": [5.0, 5.0, 25.0, 18.0], "phrase": "a red bike", "tokens_positive": [[12, 22]]}]}},
]  # fmt: skip


def _files(tmp_path, rows, label_map=None):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / name)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if label_map is not None:
        (tmp_path / "label_map.json").write_text(json.dumps(label_map))
    return path


def _round_trip(tmp_path, rows, extra=()):
    ann = _files(tmp_path, rows, {"0": "person", "1": "bicycle", "2": "car"} if extra else None)
    assert main(["data", "shards", "--from", "odvg", str(ann), "--images", str(tmp_path), "--out",
                 str(tmp_path / "shards"), "--shard-size", "1", *extra]) == 0  # fmt: skip
    assert main(["data", "odvg", str(tmp_path / "shards"), "--out", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    return sorted(out, key=lambda r: r["filename"])


def test_detection_round_trip_with_label_map(tmp_path):
    out = _round_trip(tmp_path, OD, ["--label-map", str(tmp_path / "label_map.json")])
    assert out == OD
    assert json.loads((tmp_path / "out_label_map.json").read_text()) == {"0": "person", "1": "bicycle", "2": "car"}
    manifest = open_shard_set(tmp_path / "shards")
    assert manifest.kind == "detection" and len(manifest.shards) == 2
    _, record = record_from_members(next(iter_shard(manifest.path(manifest.shards[0]))))
    assert all(len(a["bbox"]) == 4 and "category_id" in a for a in record["annotations"])


def test_grounding_round_trip(tmp_path):
    assert _round_trip(tmp_path, VG) == VG
    assert open_shard_set(tmp_path / "shards").kind == "grounding"


def test_grounding_without_tokens_positive_takes_the_phrase_in_the_caption(tmp_path):
    rows = json.loads(json.dumps(VG))
    for region in rows[0]["grounding"]["regions"]:
        del region["tokens_positive"]
    assert _round_trip(tmp_path, rows) == VG
