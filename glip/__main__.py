"""``python -m glip``: the ``glip`` command (see :mod:`glip.cli`)."""

import sys

from glip.cli import main

if __name__ == "__main__":
    sys.exit(main())
