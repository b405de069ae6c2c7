"""glip.utils.distributed: joining and leaving the process group of a distributed launch."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist

from glip.utils import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_shutdown_leaves_the_group_init_joined(monkeypatch) -> None:
    """``init_distributed`` joins the group the environment names and ``shutdown_distributed``
    leaves it (a second call, and a call without a group, do nothing)."""
    distributed.shutdown_distributed()  # no group: a no-op
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    assert not distributed.init_distributed() and not dist.is_initialized()  # one process: no group
    env = {"WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", init_method="env://", rank=0, world_size=1)
    try:
        assert dist.is_initialized() and distributed.world_size() == 1
    finally:
        distributed.shutdown_distributed()
    assert not dist.is_initialized()
    distributed.shutdown_distributed()


def test_evaluate_leaves_the_group_when_the_task_ends(monkeypatch) -> None:
    """``glip evaluate`` leaves the process group after its task, also when the task fails."""
    from glip.tools import evaluate_cli

    calls: list[str] = []
    monkeypatch.setattr(distributed, "shutdown_distributed", lambda: calls.append("left"))

    def fail(args):
        calls.append("ran")
        raise ValueError("bad input")

    monkeypatch.setitem(evaluate_cli.EVAL_TASKS, "vqa", evaluate_cli.EvalTask(fail))

    class Args:
        task, iou_type = "vqa", ["bbox"]

    with pytest.raises(ValueError, match="bad input"):
        evaluate_cli._cmd_evaluate(Args())
    assert calls == ["ran", "left"]
