"""Caption fine-tuning: configs/caption/synthetic.yaml trains with `glip train`'s loop on the
synthetic captions json (captioning batches: causal forward, loss_caption only), the model
reloads with its caption head and `glip caption` / `glip evaluate --task caption` run on it;
bad inputs are one-line errors. The overfit check (exact caption of one image) is slow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from glip.cli import main
from glip.engine import train
from tests.conftest import load_script
from tests.engine.conftest import IMAGE_SIZE, REPO

CAPTION_YAML = REPO / "configs" / "caption" / "synthetic.yaml"
SCRIPT = REPO / "scripts" / "overfit_caption.py"


@pytest.fixture(scope="module")
def trained(shapes, text_dir, tmp_path_factory):
    from glip.config import load_config

    out = tmp_path_factory.mktemp("caption_run")
    overrides = {
        "model.text.encoder": str(text_dir),
        "model.backbone.swin.drop_path_rate": 0.0,
        "model.heads.caption.max_length": 4,
        "input.min_size_train": f"[{IMAGE_SIZE}]",
        "input.max_size_train": IMAGE_SIZE,
        "input.min_size_test": IMAGE_SIZE,
        "input.max_size_test": IMAGE_SIZE,
        "solver.ims_per_batch": 2,
        "solver.max_iter": 2,
        "solver.warmup_iters": 1,
        "solver.checkpoint_period": 0,
        "train.log_period": 1,
        "data.train_json": str(shapes.root / "captions_train.json"),
        "data.train_images": str(shapes.image_dir),
    }
    cfg = load_config(CAPTION_YAML, [f"{k}={v}" for k, v in overrides.items()])
    result = train(cfg, out, cpu=True, progress_bar=False)
    return out, result


def test_caption_config_trains_and_reloads(trained, shapes) -> None:
    out, result = trained
    assert result.progress.step == 2
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_caption"] for r in log if "loss_caption" in r]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    assert not any("loss_cls" in r or "loss_reg" in r for r in log)  # no grounding loss on captions

    import glip

    model = glip.load_model(out / "model", device="cpu")
    cap = glip.caption(shapes.image_dir / "train_00000.png", model=model)
    assert isinstance(cap, glip.Caption) and isinstance(cap.text, str)
    assert cap.boxes.shape == (len(cap.phrases), 4) and len(cap.scores) == len(cap.phrases)


def test_caption_cli_with_a_bad_file(trained, shapes, tmp_path, capsys) -> None:
    out, _ = trained
    bad = tmp_path / "broken.png"
    bad.write_text("not an image\n")
    good = str(shapes.image_dir / "val_00000.png")
    code = main(["caption", good, str(bad), "--weights", str(out / "model"), "--device", "cpu",
                 "--out", str(tmp_path / "o"), "--quiet", "--beam", "2", "--max-length", "3", "--rerank", "grounding"])  # fmt: skip
    assert code == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out
    entries = json.loads((tmp_path / "o" / "captions.json").read_text())
    assert [e["file"] for e in entries] == [good, str(bad)]
    assert "caption" in entries[0] and "error" in entries[1] and "\n" not in entries[1]["error"]
    assert "1 of 2 inputs failed" in printed.err


def test_evaluate_caption_writes_metrics(trained, shapes, tmp_path, capsys, monkeypatch) -> None:
    from glip.evaluation import captioning

    monkeypatch.setattr(captioning, "java_available", lambda: False)  # METEOR's JVM is slow to start
    out, _ = trained
    code = main(["evaluate", "--task", "caption", "--ann", str(shapes.root / "captions_val.json"),
                 "--images", str(shapes.image_dir), "--weights", str(out / "model"), "--device", "cpu",
                 "--out", str(tmp_path / "ev"), "--quiet"])  # fmt: skip
    assert code == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"CIDEr", "BLEU-4", "ROUGE-L"} <= set(metrics) and metrics["num_images"] == 4
    assert "METEOR skipped" in metrics["notes"][0]
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert len(results) == 4 and all(isinstance(r["caption"], str) for r in results)
    assert "CIDEr" in capsys.readouterr().out


def test_model_without_caption_head_is_one_line(shapes, detector_only, tmp_path, capsys) -> None:
    code = main(
        ["caption", str(shapes.image_dir / "val_00000.png"), "--weights", str(detector_only), "--device", "cpu"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no caption head" in err and err.startswith("glip caption: error: model ")
    code = main(["evaluate", "--task", "caption", "--images", str(shapes.image_dir), "--out", str(tmp_path)])
    assert code == 1 and "needs --ann" in capsys.readouterr().err


@pytest.mark.slow
def test_overfit_one_image_gives_its_exact_caption() -> None:
    module = load_script("overfit_caption")
    expected, generated = module.run(steps=100, eval_every=20, verbose=False)
    assert generated == expected, (expected, generated)
    assert Path(SCRIPT).is_file()
