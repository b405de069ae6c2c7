"""Running a measurement in a fresh process (memory and process-wide settings need one)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any


def run_json(args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    """``python *args`` in a fresh process with ``env``; the json value on its last stdout line.
    A non-zero exit fails the test with the end of stderr."""
    return run_json_many([(args, env)], timeout)[0]


def run_json_many(runs: Sequence[tuple[list[str], dict[str, str]]], timeout: float = 120) -> list[Any]:
    """:func:`run_json` for each ``(args, env)``, the processes running side by side (each
    measures itself only); the values in the order given."""
    procs = [start_python(args, env) for args, env in runs]
    try:
        return [json.loads(finish(proc, timeout).strip().splitlines()[-1]) for proc in procs]
    finally:  # a failure or a timeout: stop the others too
        stop(procs)


def start_python(args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.Popen:
    """``python *args`` started in a fresh process (``env`` and ``cwd``: the test's own when
    None), its output piped as text."""
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The stdout of a process :func:`start_python` started, once it has ended; a non-zero
    exit fails the test with the end of stderr."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return out


def stop(procs: Iterable[subprocess.Popen]) -> None:
    """Kills those of ``procs`` still running and collects them."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
