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
from tests.conftest import TINY_OPEN_CLIP, load_script, save_tiny_clip, save_tiny_open_clip, single_torch_thread

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


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    pytest.importorskip("open_clip")
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


def test_an_open_clip_model_scores_offline(open_clip_dir):
    import open_clip

    reference = open_clip.create_model(f"local-dir:{open_clip_dir}").eval()
    pixels = torch.rand(2, 3, 32, 32)
    tokens = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")(["a photo of a cat.", "a dog"])
    with torch.no_grad():
        want_images = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1)
        want_texts = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
    # Its folder is recognised without a prefix, and named with one.
    for spec in (open_clip_dir, f"open_clip:local-dir:{open_clip_dir}"):
        scorer = ClipScorer.load(spec)
        assert scorer.image_size == 32 and scorer.logit_scale == pytest.approx(20.0)
        assert scorer.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])  # the model's own normalisation
        assert torch.allclose(scorer.embed_texts(["a photo of a cat.", "a dog"]), want_texts, atol=1e-6)
        with torch.no_grad():
            got = torch.nn.functional.normalize(scorer.encode_image(pixels), dim=-1)
        assert torch.allclose(got, want_images, atol=1e-6)
        crops = scorer.embed_crops([np.zeros((5, 9, 3), np.uint8), np.full((30, 20, 3), 200, np.uint8)])
        assert crops.shape == (2, 16) and not torch.allclose(crops[0], crops[1])


def test_an_open_clip_architecture_takes_its_weights_from_a_file(open_clip_dir, tmp_path):
    import open_clip

    (tmp_path / "TinyTestCLIP.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(tmp_path / "TinyTestCLIP.json")  # a built-in architecture name
    weights = str(open_clip_dir / "open_clip_model.safetensors")
    scorer = ClipScorer.load("open_clip:TinyTestCLIP", pretrained=weights)
    reference = ClipScorer.load(open_clip_dir)
    assert torch.allclose(scorer.embed_texts(["a red square"]), reference.embed_texts(["a red square"]), atol=1e-6)
    with pytest.raises(ValueError, match="needs --clip-pretrained"):
        ClipScorer.load("open_clip:TinyTestCLIP")
    with pytest.raises(ValueError, match="cannot load the open_clip model"):
        ClipScorer.load("open_clip:TinyTestCLIP", pretrained=str(tmp_path / "missing.safetensors"))
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    with pytest.raises(ValueError, match="cannot load the open_clip model"):
        ClipScorer.load(empty)  # a CLIP at random initialisation is refused
    with pytest.raises(ValueError, match="--clip-pretrained applies to open_clip models"):
        ClipScorer.load(tmp_path, pretrained=weights)


def test_pseudo_label_with_an_open_clip_teacher(open_clip_dir, tmp_path):
    Image.fromarray(_image()).save(tmp_path / "shapes.png")
    captions = {"images": [{"id": 7, "file_name": "shapes.png", "height": 40, "width": 90}],
                "annotations": [{"image_id": 7, "caption": "a red square next to a blue square"}]}  # fmt: skip
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "boxes.json").write_text(json.dumps({"annotations": REGIONS}))
    out = tmp_path / "pseudo.json"
    args = ["pseudo-label", "--captions", str(tmp_path / "captions.json"), "--images", str(tmp_path), "--teacher",
            "clip", "--clip-model", f"open_clip:local-dir:{open_clip_dir}", "--threshold", "0", "--clip-background",
            "0", "--boxes", str(tmp_path / "boxes.json"), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    data = json.loads(out.read_text())
    assert len(data["annotations"]) == 3 and all(len(a["concept_scores"]) == 2 for a in data["annotations"])
    # The scores are the open_clip model's: logit scale x cosine, the phrase its best concept.
    scorer = ClipScorer.load(open_clip_dir)
    texts = scorer.embed_texts(["a photo of a red square.", "a photo of a blue square."])
    for ann in data["annotations"]:
        x, y, w, h = (int(v) for v in ann["bbox"])
        region = scorer.embed_crops([_image()[y : y + h, x : x + w]])
        assert ann["concept_scores"] == pytest.approx((20.0 * region @ texts.T)[0].tolist(), abs=1e-3)
    assert data["pseudo_label"]["model"]["clip_model"] == f"open_clip:local-dir:{open_clip_dir}"


def test_train_shapes_clip_writes_an_open_clip_folder_the_teacher_reads(tmp_path, capsys):
    pytest.importorskip("open_clip")
    script = load_script("train_shapes_clip")
    assert script.main(["--work", str(tmp_path), "--num-train", "6", "--num-val", "2", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot on" in out and "% right" in out
    scorer = ClipScorer.load(tmp_path / "clip")  # its folder, as --clip-model takes it
    assert scorer.image_size == 32 and scorer.embed_texts(["a photo of red circle."]).shape == (1, 64)
