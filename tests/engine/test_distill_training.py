"""RegionCLIP distillation in training: `glip pseudo-label --teacher clip` writes each box's
concept scores, the grounding reader turns them into targets (packed captions too), a tiny
GLIP trains a few steps with `model.heads.grounding.distill_weight` on, and turning it on
without teacher scores in the data is a one-line error."""

from __future__ import annotations

import json
import math

import pytest

from glip.cli import main
from tests.conftest import save_tiny_clip, single_torch_thread
from tests.engine.conftest import TINY_YAML, shapes, text_dir, tiny_overrides  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def pseudo(shapes, tmp_path_factory):  # noqa: F811
    """The synthetic captions labelled by a tiny random CLIP over the ground-truth boxes."""
    root = tmp_path_factory.mktemp("distill")
    clip = save_tiny_clip(root / "clip")
    out = root / "pseudo.json"
    args = ["pseudo-label", "--captions", str(shapes.root / "captions_train.json"), "--images", str(shapes.image_dir),
            "--teacher", "clip", "--clip-model", str(clip), "--boxes", str(shapes.train_json), "--threshold", "0",
            "--clip-background", "0", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_pseudo_labels_carry_concept_scores_and_the_reader_makes_targets(pseudo, shapes, text_dir):  # noqa: F811
    from glip.data import MdetrGroundingDataset, TrainTransform
    from glip.data.caption_packing import CaptionPacking
    from glip.text import load_tokenizer

    data = json.loads(pseudo.read_text())
    images = {im["id"]: im for im in data["images"]}
    assert data["annotations"]
    for ann in data["annotations"]:
        concepts = images[ann["image_id"]]["concepts"]
        caption = images[ann["image_id"]]["caption"]
        assert [c["phrase"] for c in concepts] == [caption[s:e] for c in concepts for (s, e) in c["tokens_positive"]]
        assert len(ann["concept_scores"]) == len(concepts)
        # No background concept: the box's phrase is the one CLIP scores highest.
        best = max(range(len(concepts)), key=lambda k: ann["concept_scores"][k])
        assert concepts[best]["tokens_positive"] == ann["tokens_positive"]

    tokenizer = load_tokenizer(text_dir)
    for packing in (None, CaptionPacking(2)):
        ds = MdetrGroundingDataset(
            pseudo, shapes.image_dir, tokenizer,
            TrainTransform([96], 96, 0.0), max_query_len=64, kind="caption", packing=packing, concept_scores=True,
        )  # fmt: skip
        assert ds.has_concept_scores
        for item in range(3):
            sample = ds[item]
            t = sample.targets
            assert t.concept_map is not None and t.concept_scores is not None
            assert t.concept_scores.shape == (len(t), t.concept_map.shape[0])
            # The concept of each box's phrase covers exactly the box's tokens (spans moved when packed).
            best = t.concept_scores.argmax(dim=1)
            assert (t.concept_map[best] == t.positive_map).all()
    plain = MdetrGroundingDataset(pseudo, shapes.image_dir, tokenizer, TrainTransform([96], 96, 0.0), 64)
    assert plain[0].targets.concept_map is None  # read only when asked (the loss is on)


def test_a_tiny_glip_trains_with_the_distillation_loss(pseudo, shapes, text_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    overrides = tiny_overrides(shapes, text_dir, **{
        "solver.max_iter": 3, "solver.model_ema": 0.0, "data.format": "mdetr", "data.pseudo_labelled": "true",
        "data.pack_captions": 1, "data.train_json": str(pseudo), "model.heads.grounding.distill_weight": 1.0,
        "model.heads.grounding.distill_temperature": 2.0,
    })  # fmt: skip
    train = ["train", "--config", str(TINY_YAML), "--quiet", "--device", "cpu", "--out", str(out)]
    assert main([*train, *overrides]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    distill = [r["loss_distill"] for r in rows if "loss_distill" in r]
    assert len(distill) == 3 and all(math.isfinite(v) for v in distill) and max(distill) > 0

    # Turned on over data without teacher scores (the detection json): one line, before training.
    capsys.readouterr()
    plain = tiny_overrides(shapes, text_dir, **{"model.heads.grounding.distill_weight": 1.0})
    assert main([*train[:-1], str(tmp_path / "plain"), *plain]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "concept_scores" in err and err.startswith("glip train: error: ")
