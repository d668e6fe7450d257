"""``python -m ampflow`` (so that ``torchrun -m ampflow train ...`` works)."""

import sys

from ampflow.cli import main

sys.exit(main())
