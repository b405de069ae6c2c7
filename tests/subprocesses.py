"""Running a measurement in a fresh process (memory and process-wide settings need one)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any


def run_json(args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    """``python *args`` in a fresh process with ``env``; the json value on its last stdout line.
    A non-zero exit fails the test with the end of stderr."""
    return run_json_many([(args, env)], timeout)[0]


def run_json_many(runs: Sequence[tuple[list[str], dict[str, str]]], timeout: float = 120) -> list[Any]:
    """:func:`run_json` for each ``(args, env)``, the processes running side by side (each
    measures itself only); the values in the order given."""
    procs = [
        subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for args, env in runs
    ]
    try:
        values = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-2000:]
            values.append(json.loads(out.strip().splitlines()[-1]))
        return values
    finally:  # a failure or a timeout: stop the others too
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
