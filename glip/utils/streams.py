"""Silencing what child processes (Java tools of the caption metrics) print."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

__all__ = ["quiet_stderr"]


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True) -> Iterator[None]:
    """While active (when ``enabled``), file descriptor 2 points to the null device, so a
    child process started inside the block, which inherits it, prints nothing there
    (``contextlib.redirect_stderr`` only swaps Python's ``sys.stderr``). Restored after,
    also on an error."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
