"""``python -m diffusion_objectives`` is the ``diffobj`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
