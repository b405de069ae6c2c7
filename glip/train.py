"""``python -m glip.train`` / ``accelerate launch -m glip.train``: the training entry point.

Arguments as ``glip train`` (see :mod:`glip.tools.train_cli`).
"""

from __future__ import annotations

import sys

from glip.tools.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
