"""``python -m yolodet ...``: the ``yolodet`` command (see :mod:`yolodet.cli.main`)."""

import sys

from yolodet.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
