"""`python -m gpupre`: the `gpupre` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not in a spawned worker, which imports this module again under another name
    sys.exit(main())
