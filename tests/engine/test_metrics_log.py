"""MetricsLog: one json line per record; on resume the records past the checkpoint's step and
a line cut by a kill are dropped, and TensorBoard is told to purge the same steps."""

from __future__ import annotations

import json

import numpy as np

from glip.engine.metrics_log import MetricsLog


def test_resume_drops_the_records_after_the_checkpoint(tmp_path) -> None:
    log = MetricsLog(tmp_path / "run")
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    with open(log.path, "a", encoding="utf-8") as f:
        f.write('{"step": 40, "lo')  # killed mid-line

    resumed = MetricsLog(tmp_path / "run")
    resumed.truncate(20)
    assert [json.loads(line)["step"] for line in resumed.path.read_text().splitlines()] == [10, 20]
    assert resumed._purge_step == 21
    resumed.write({"step": 30, "loss": 0.5})
    resumed.close()
    assert [json.loads(line)["step"] for line in resumed.path.read_text().splitlines()] == [10, 20, 30]


def test_truncate_without_a_log_is_a_no_op(tmp_path) -> None:
    log = MetricsLog(tmp_path)
    log.truncate(5)
    assert not log.path.exists()


def _run_log(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(10, 101, 10):
        lr = 1e-3 * min(1.0, step / 30)
        log.write({"step": step, "epoch": step // 50, "loss": 3.0 / step**0.5, "loss_reg": 1.0 / step, "lr": lr})
        if step % 50 == 0:
            log.write({"step": step, "val/loss": 4.0 / step**0.5, "AP": step / 200})
    log.close()
    return log


def test_curves_png_shows_losses_validation_ap_and_lr(tmp_path) -> None:
    from PIL import Image

    from glip.engine.metrics_log import curve_panels, format_metric, read_records

    log = _run_log(tmp_path)
    panels = curve_panels(read_records(log.path))
    assert [p.title for p in panels] == ["loss", "validation (AP on the 0-100 scale)", "learning rate"]
    loss, val, lr = panels
    assert [s.name for s in loss.series] == ["train", "validation"] and loss.series[1].xs == [50, 100]
    assert val.series[0].name == "AP" and val.series[0].ys == [25.0, 50.0]  # AP as users read it
    assert len(lr.series[0].xs) == 10 and all(p.x_range == (0.0, 100.0) for p in panels)
    assert format_metric("AP", 0.4414) == "44.1" and format_metric("segm_AP", 0.5) == "50.0"
    assert format_metric("accuracy", 0.4414) == "0.4414"

    path = log.write_curves()
    assert path == tmp_path / "curves.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (3 * 520, 360)
        pixels = np.asarray(image.convert("RGB"))
    for i in range(3):  # each chart has coloured lines, not only black axes and text
        panel = pixels[:, i * 520 : (i + 1) * 520].astype(int)
        coloured = (panel.max(-1) - panel.min(-1)) > 60
        assert coloured.sum() > 200


def test_no_records_no_curves(tmp_path) -> None:
    assert MetricsLog(tmp_path).write_curves() is None and not (tmp_path / "curves.png").exists()
