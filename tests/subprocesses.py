"""Running a measurement in a fresh process (memory and process-wide settings need one)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_json(args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    """``python *args`` in a fresh process with ``env``; the json value on its last stdout line.
    A non-zero exit fails the test with the end of stderr."""
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
