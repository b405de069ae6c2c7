"""`glip evaluate`: official prompts, the runners with an oracle predictor, the fixture
checkpoint end to end, ODinW resume, results-file scoring and two-process gathering."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glip.cli import main
from glip.data import generate_synthetic
from glip.evaluation import OdinwDataset
from glip.structures import Detections
from glip.text import parse_prompt
from glip.tools.evaluate import category_prompt, evaluate_detection
from glip.tools.evaluate_grounding import evaluate_grounding
from glip.tools.odinw import run_odinw
from tests.conftest import OFFICIAL, REPO, tiny_text_encoder_dir


def test_category_prompt_follows_the_official_query():
    cats = [
        {"id": 0, "name": "creatures"},  # id 0: left out, as official categories()
        {"id": 1, "name": "traffic_light"},
        {"id": 3, "name": "dog (animal)"},
        {"id": 2, "name": "__background__"},
    ]
    prompt, ids = category_prompt(cats)
    assert prompt.caption == "traffic light. dog " and ids == [1, 3]
    assert prompt.phrases == ("traffic light", "dog ")
    prompt, ids = category_prompt(cats, override=[(1, "signal"), (3, "puppy")])
    assert prompt.caption == "signal. puppy"
    prompt, ids = category_prompt(cats[:2], caption_prompt=[("there are some ", "holes", " on the road")])
    assert prompt.caption == "there are some holes on the road" and prompt.phrases == ("holes",)


class OraclePredictor:
    """Returns each image's ground-truth boxes for the prompt's phrases (official
    pixel-inclusive xyxy, so that the written xywh equals the ground truth)."""

    def __init__(self, gt: dict, image_dir: Path, inclusive: bool = True):
        self.inclusive = 1.0 if inclusive else 0.0  # the LVIS path writes xywh without the extra pixel
        self.by_file = {str(image_dir / img["file_name"]): img for img in gt["images"]}
        self.anns = gt["annotations"]
        self.names = {c["id"]: c["name"] for c in gt["categories"]}

    def iter_predict(self, images, prompt, **kwargs):
        phrases = parse_prompt(prompt).phrases
        for i, path in enumerate(images):
            image = self.by_file[str(path)]
            rows = [a for a in self.anns if a["image_id"] == image["id"] and self.names[a["category_id"]] in phrases]
            boxes = torch.tensor(
                [[x, y, x + w - self.inclusive, y + h - self.inclusive] for x, y, w, h in (a["bbox"] for a in rows)]
            ).reshape(-1, 4)
            labels = torch.tensor([phrases.index(self.names[a["category_id"]]) + 1 for a in rows], dtype=torch.int64)
            yield i, Detections(boxes.float(), torch.ones(len(rows)), labels, [], (image["height"], image["width"]))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), num_train=1, num_val=6, image_size=(64, 96), seed=1)


def test_oracle_gives_ap_one_for_coco_and_lvis(synthetic, tmp_path):
    gt = json.loads(synthetic.val_json.read_text())
    oracle = OraclePredictor(gt, synthetic.image_dir)
    metrics = evaluate_detection(oracle, synthetic.val_json, synthetic.image_dir, out_dir=tmp_path, progress=False)
    assert metrics["AP"] == 1.0 and json.loads((tmp_path / "metrics.json").read_text())["AP"] == 1.0
    assert len(json.loads((tmp_path / "results.json").read_text())) == len(gt["annotations"])
    lvis_gt = dict(gt, categories=[dict(c, frequency="f") for c in gt["categories"]])
    lvis_gt["images"] = [dict(img, neg_category_ids=[], not_exhaustive_category_ids=[]) for img in gt["images"]]
    (tmp_path / "lvis.json").write_text(json.dumps(lvis_gt))
    oracle = OraclePredictor(gt, synthetic.image_dir, inclusive=False)
    metrics = evaluate_detection(oracle, tmp_path / "lvis.json", synthetic.image_dir, task="lvis", progress=False)
    assert metrics["AP"] == 1.0 and metrics["APf"] == 1.0 and metrics["APr"] == -1.0


def _weights(tmp_path):
    return [
        "--weights", str(OFFICIAL / "tiny_glip_t" / "model_official.pth"),
        "--config", str(OFFICIAL / "tiny_glip_t" / "config.yaml"),
        "--text-encoder", str(tiny_text_encoder_dir("tiny_glip_t", tmp_path)),
    ]  # fmt: skip


def test_end_to_end_fixture_checkpoint_and_chunking(synthetic, tmp_path, capsys, tiny_model_factory):
    args = ["evaluate", "--task", "coco", "--data", str(synthetic.val_json), "--images", str(synthetic.image_dir)]
    assert main([*args, *_weights(tmp_path), "--out", str(tmp_path / "one"), "--quiet", "--batch-size", "2"]) == 0
    table = capsys.readouterr().out
    assert "AP50" in table and "metrics.json" in table
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert set(one) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # The prompt fits: chunks of all classes evaluate exactly as the single prompt.
    num_classes = len(json.loads(synthetic.val_json.read_text())["categories"])
    chunked = ["--chunk-size", str(num_classes), "--out", str(tmp_path / "chunked"), "--quiet", "--batch-size", "2"]
    assert main([*args, *_weights(tmp_path), *chunked]) == 0
    assert json.loads((tmp_path / "chunked" / "metrics.json").read_text()) == one
    assert (tmp_path / "chunked" / "results.json").read_text() == (tmp_path / "one" / "results.json").read_text()
    # Scoring the written results file without a model gives the same numbers.
    rescored = tmp_path / "rescored"
    results = str(tmp_path / "one" / "results.json")
    assert (
        main(
            [
                "evaluate",
                "--task",
                "coco",
                "--ann",
                str(synthetic.val_json),
                "--results",
                results,
                "--out",
                str(rescored),
            ]
        )
        == 0
    )
    assert json.loads((rescored / "metrics.json").read_text()) == one


def _odinw_datasets(root: Path) -> list[OdinwDataset]:
    out = []
    for name, seed in (("shapes_a", 2), ("shapes_b", 3)):
        ds = generate_synthetic(root / "odinw" / name, num_train=1, num_val=3, image_size=(64, 80), seed=seed)
        rel_ann, rel_img = (str(p.relative_to(root)) for p in (ds.val_json, ds.image_dir))
        out.append(OdinwDataset(name, "val", {"val": (rel_ann, rel_img)}, None, None))
    return out


def test_odinw_suite_table_and_resume(tmp_path, capsys):
    datasets = _odinw_datasets(tmp_path)
    gts = {d.name: json.loads(d.files(tmp_path)[0].read_text()) for d in datasets}

    class Router(OraclePredictor):
        def __init__(self, fail_on=None):
            self.oracles = {n: OraclePredictor(gts[n], tmp_path / "odinw" / n / "images") for n in gts}
            self.fail_on, self.calls = fail_on, 0

        def iter_predict(self, images, prompt, **kwargs):
            self.calls += 1
            name = Path(images[0]).parts[-3]
            if self.fail_on == name:
                raise KeyboardInterrupt
            yield from self.oracles[name].iter_predict(images, prompt, **kwargs)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_odinw(Router(fail_on="shapes_b"), tmp_path, out, datasets=datasets, progress=False)
    assert (out / "shapes_a" / "metrics.json").is_file() and not (out / "shapes_b").exists()
    resumed = Router()
    summary = run_odinw(resumed, tmp_path, out, datasets=datasets, progress=False)
    assert resumed.calls == 1  # shapes_a was skipped
    assert summary["AP"] == 1.0 and set(summary["datasets"]) == {"shapes_a", "shapes_b"}
    printed = capsys.readouterr().out
    assert "shapes_a: done before" in printed and "Average" in printed and "100.0" in printed
    with pytest.raises(FileNotFoundError, match="shapes_c: folder"):
        run_odinw(
            resumed,
            tmp_path,
            out,
            datasets=[OdinwDataset("shapes_c", "val", {"val": ("odinw/c/val.json", "odinw/c")}, None, None)],
        )


def test_odinw_cli_names_missing_folder(tmp_path, capsys):
    rc = main(["evaluate", "--task", "odinw", "--data", str(tmp_path), "--datasets", "pothole"])
    assert rc == 1 and "pothole: folder" in capsys.readouterr().err


def test_flickr_recall_with_a_scripted_grounder(tmp_path):
    caption = "a red square next to a blue circle"
    images = [{"id": 1, "file_name": "x.png", "height": 64, "width": 64, "caption": caption,
               "tokens_positive_eval": [[[0, 12]], [[21, 34]]]}]  # fmt: skip
    anns = [
        {"id": 1, "image_id": 1, "bbox": [1, 1, 10, 10], "tokens_positive": [[2, 12]], "category_id": 1},
        {"id": 2, "image_id": 1, "bbox": [30, 30, 20, 20], "tokens_positive": [[23, 34]], "category_id": 1},
    ]
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "flickr.json").write_text(json.dumps({"images": images, "annotations": anns}))

    class Grounder:
        def predict(self, path, prompt, **kwargs):
            assert prompt.phrases == ("a red square", "a blue circle")
            boxes = torch.tensor([[30.0, 30.0, 50.0, 50.0], [1.0, 1.0, 11.0, 11.0], [0.0, 0.0, 2.0, 2.0]])
            # phrase 1: the right box at rank 2; phrase 2: the right box at rank 1
            return Detections(boxes, torch.tensor([0.9, 0.8, 0.95]), torch.tensor([1, 1, 2]), [], (64, 64))

    metrics = evaluate_grounding(Grounder(), tmp_path / "flickr.json", tmp_path, task="flickr", progress=False)
    assert metrics == {"R@1": 0.0, "R@5": 0.5, "R@10": 0.5, "upper_bound": 0.5, "num_phrases": 2.0}


def test_refcoco_precision_at_one(tmp_path):
    # Two referring expressions, one box each; the whole caption is the phrase.
    images = [
        {"id": 1, "file_name": "a.png", "height": 64, "width": 64, "caption": "the man on the left"},
        {"id": 2, "file_name": "b.png", "height": 64, "width": 64, "caption": "woman in red"},
    ]
    anns = [
        {"id": 1, "image_id": 1, "bbox": [0, 0, 20, 40], "category_id": 1},
        {"id": 2, "image_id": 2, "bbox": [10, 10, 20, 20], "category_id": 1},
    ]
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "refcoco.json").write_text(json.dumps({"images": images, "annotations": anns}))
    top = {
        # IoU 0.8 with [0, 0, 20, 40]: a hit at rank 1.
        "a.png": [[0.0, 8.0, 20.0, 40.0], [40.0, 40.0, 60.0, 60.0]],
        # IoU 0.4 with [10, 10, 30, 30] at rank 1 (a miss), the exact box at rank 2.
        "b.png": [[10.0, 10.0, 30.0, 18.0], [10.0, 10.0, 30.0, 30.0]],
    }

    class Grounder:
        def predict(self, path, prompt, **kwargs):
            assert len(prompt.phrases) == 1 and prompt.caption in ("the man on the left", "woman in red")
            boxes = torch.tensor(top[Path(path).name])
            return Detections(boxes, torch.tensor([0.9, 0.5]), torch.tensor([1, 1]), [], (64, 64))

    metrics = evaluate_grounding(Grounder(), tmp_path / "refcoco.json", tmp_path, task="refcoco", progress=False)
    assert metrics["P@1"] == 0.5
    assert metrics["P@5"] == 1.0


def test_refcoco_follows_refexp_py_giou_and_score_ties(tmp_path):
    """RefExpEvaluator.summarize: generalized IoU >= 0.5, boxes sorted by (score, box) reversed."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64, "caption": "the cat"} for i in (1, 2)]
    anns = [{"id": i, "image_id": i, "bbox": [0, 0, 10, 10], "category_id": 1} for i in (1, 2)]
    for i in (1, 2):
        (tmp_path / f"{i}.png").write_bytes(b"")
    (tmp_path / "refcoco.json").write_text(json.dumps({"images": images, "annotations": anns}))
    top = {
        # IoU 0.516 but GIoU 0.472 with [0, 0, 10, 10]: a miss for the reference.
        "1.png": ([[1.75, 1.75, 11.75, 11.75]], [0.9]),
        # Equal scores: the larger box coordinates rank first, so the exact box is rank 2.
        "2.png": ([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.5, 0.5]),
    }

    class Grounder:
        def predict(self, path, prompt, **kwargs):
            boxes, scores = top[Path(path).name]
            n = len(scores)
            return Detections(torch.tensor(boxes), torch.tensor(scores), torch.ones(n, dtype=torch.long), [], (64, 64))

    metrics = evaluate_grounding(Grounder(), tmp_path / "refcoco.json", tmp_path, task="refcoco", progress=False)
    assert metrics["P@1"] == 0.0 and metrics["P@5"] == 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a 2-process evaluation: ~20 s on 2 cores (pytest -m slow)
def test_two_processes_equal_one(synthetic, tmp_path):
    """Two gloo processes (as accelerate launch / torchrun start them) gather the same metrics."""
    base = [sys.executable, "-m", "glip.cli", "evaluate", "--task", "coco", "--data", str(synthetic.val_json),
            "--images", str(synthetic.image_dir), *_weights(tmp_path), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([*base, "--out", str(tmp_path / "single")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    port = str(_free_port())
    procs = []
    for r in range(2):
        penv = {
            **env,
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [*base, "--out", str(tmp_path / "dist")],
                env=penv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert "AP50" in outs[0][0] and outs[1][0] == ""  # only the main process prints
    assert json.loads((tmp_path / "dist" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "single" / "metrics.json").read_text()
    )
    assert (tmp_path / "dist" / "results.json").read_text() == (tmp_path / "single" / "results.json").read_text()
