"""The CLIP teacher: region-concept matching on hand cases, and `glip pseudo-label --teacher clip`
with a tiny randomly initialised transformers CLIP saved offline (its own byte-level vocabulary)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from glip.cli import main
from glip.ops.boxes import box_iou
from glip.text import Prompt
from glip.tools.clip_teacher import BoxFileProposals, ClipScorer, ClipTeacher, crop, frequent_phrases
from glip.tools.teachers import build_chunker
from tests.conftest import save_tiny_clip, single_torch_thread

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small forwards: one thread is faster, and much faster on a busy machine."""
    yield from single_torch_thread()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A 1-layer CLIP (width 32, 32-px images) with a character-level BPE vocabulary."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


class ColourScorer:
    """Crops embed as their mean colour, texts as the colour they name (other texts: grey)."""

    logit_scale = 100.0

    def embed_crops(self, crops):
        means = torch.tensor(np.stack([c.reshape(-1, 3).mean(0) for c in crops]), dtype=torch.float32)
        return torch.nn.functional.normalize(means, dim=-1)

    def embed_texts(self, texts):
        rows = [next((COLOURS[w] for w in t.split() if w in COLOURS), (1, 1, 1)) for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def _image():
    image = np.full((40, 90, 3), 0, np.uint8)
    image[5:25, 5:25] = COLOURS["red"]
    image[5:25, 35:55] = COLOURS["blue"]
    image[5:25, 65:85] = COLOURS["green"]
    return image


REGIONS = [{"image_id": 7, "bbox": [5, 5, 20, 20]}, {"image_id": 7, "bbox": [35, 5, 20, 20]},
           {"image_id": 7, "bbox": [65, 5, 20, 20]}]  # fmt: skip


def test_regions_take_the_caption_phrase_clip_matches_best(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(REGIONS))
    proposals = BoxFileProposals(path)
    assert proposals(_image(), [], 7).tolist() == [[5, 5, 24, 24], [35, 5, 54, 24], [65, 5, 84, 24]]
    assert proposals(_image(), [], 8).shape == (0, 4)
    caption = "a red square and a blue square"
    prompt = Prompt(caption, ("a red square", "a blue square"), (((0, 12),), ((19, 30),)))
    # The green region goes to the green background concept; red and blue to their phrases.
    (boxes,) = ClipTeacher(ColourScorer(), proposals, 0.5, background=["a green thing"]).label(_image(), [prompt], 7)
    assert [(b.box, b.phrase) for b in boxes] == [((5, 5, 24, 24), 0), ((35, 5, 54, 24), 1)]
    assert all(b.score > 0.99 for b in boxes)
    # Each box's concept scores: CLIP's logits (scale x cosine) against the caption's phrases only.
    assert [pytest.approx(b.concept_scores, abs=1e-3) for b in boxes] == [(100.0, 0.0), (0.0, 100.0)]
    # Without a background concept the green region is labelled too, with a low probability.
    (boxes,) = ClipTeacher(ColourScorer(), proposals, 0.0).label(_image(), [prompt], 7)
    assert len(boxes) == 3 and boxes[-1].score < 0.6
    (boxes,) = ClipTeacher(ColourScorer(), proposals, 0.6).label(_image(), [prompt], 7)
    assert len(boxes) == 2
    assert crop(_image(), (-3.0, -3.0, 1.2, 0.5)).shape == (2, 3, 3) and crop(_image(), (95, 0, 99, 5)) is None
    pool = frequent_phrases(["a cat and a dog", "A cat", "a bird"], build_chunker("offline"), 2)
    assert pool == ["a cat", "a dog"]


def test_tiny_transformers_clip_scores_offline(clip_dir):
    scorer = ClipScorer.from_pretrained(clip_dir)
    crops = [np.zeros((5, 9, 3), np.uint8), np.full((30, 20, 3), 200, np.uint8)]
    image_emb, text_emb = scorer.embed_crops(crops), scorer.embed_texts(["a photo of a cat.", "a dog"])
    assert image_emb.shape == (2, 16) and text_emb.shape == (2, 16)
    assert torch.allclose(image_emb.norm(dim=-1), torch.ones(2)) and torch.allclose(
        text_emb.norm(dim=-1), torch.ones(2)
    )
    assert not torch.allclose(image_emb[0], image_emb[1]) and not torch.allclose(text_emb[0], text_emb[1])
    with pytest.raises(ValueError, match="cannot load a CLIP model"):
        ClipScorer.from_pretrained(clip_dir / "nowhere")


def test_pseudo_label_with_the_clip_teacher(clip_dir, tmp_path, capsys):
    """Given regions (no GLIP model loaded), then regions from the demo GLIP detector."""
    Image.fromarray(_image()).save(tmp_path / "shapes.png")
    captions = {"images": [{"id": 7, "file_name": "shapes.png", "height": 40, "width": 90}],
                "annotations": [{"image_id": 7, "caption": "a red square next to a blue square"}]}  # fmt: skip
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "boxes.json").write_text(json.dumps({"annotations": REGIONS}))
    base = ["pseudo-label", "--captions", str(tmp_path / "captions.json"), "--images", str(tmp_path), "--teacher",
            "clip", "--clip-model", str(clip_dir), "--threshold", "0", "--clip-background", "0", "--quiet"]  # fmt: skip
    assert main([*base, "--boxes", str(tmp_path / "boxes.json"), "--out", str(tmp_path / "given.json")]) == 0
    given = json.loads((tmp_path / "given.json").read_text())
    # Two phrases, no background: every region takes one of them.
    assert sorted(a["bbox"] for a in given["annotations"]) == [[5, 5, 20, 20], [35, 5, 20, 20], [65, 5, 20, 20]]
    caption = given["images"][0]["caption"]
    for ann in given["annotations"]:
        (start, end), = ann["tokens_positive"]  # fmt: skip
        assert caption[start:end] == ann["phrase"] in ("a red square", "a blue square")
        # The concept pool (the caption's phrases) and the box's scores over it, the winner its phrase.
        concepts = given["images"][0]["concepts"]
        assert [c["phrase"] for c in concepts] == ["a red square", "a blue square"]
        assert len(ann["concept_scores"]) == 2
        assert concepts[max((0, 1), key=lambda k: ann["concept_scores"][k])]["phrase"] == ann["phrase"]
    assert given["pseudo_label"]["model"]["boxes"] == str(tmp_path / "boxes.json")

    out = tmp_path / "detected.json"
    assert main([*base, "--model", "demo-shapes", "--proposal-threshold", "0.05", "--out", str(out)]) == 0
    capsys.readouterr()
    detected = json.loads(out.read_text())
    assert detected["annotations"], "the demo detector proposes regions"
    xywh = torch.tensor([a["bbox"] for a in detected["annotations"]])
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], dim=1)
    iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
    assert float(iou.max()) <= 0.51  # class-agnostic NMS over the phrases' detections
