"""MetricsLog: one json line per record; on resume the records past the checkpoint's step and
a line cut by a kill are dropped, and TensorBoard is told to purge the same steps."""

from __future__ import annotations

import json

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
