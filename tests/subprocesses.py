"""Running a measurement in a fresh process (memory and process-wide settings need one)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def _result(proc: subprocess.Popen, timeout: float) -> Any:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_json(args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    """``python *args`` in a fresh process with ``env``; the json value on its last stdout line.
    A non-zero exit fails the test with the end of stderr."""
    return _result(_start(args, env), timeout)


def run_json_many(runs: Sequence[tuple[list[str], dict[str, str]]], timeout: float = 120) -> list[Any]:
    """:func:`run_json` for each ``(args, env)``, the processes running side by side (each
    measures itself only); the values in the order given."""
    procs = [_start(args, env) for args, env in runs]
    try:
        return [_result(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
