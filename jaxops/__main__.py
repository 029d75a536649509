"""``python -m jaxops``: the same command line as the ``jaxops`` console script."""

import sys

from jaxops.cli import main

if __name__ == "__main__":
    sys.exit(main())
