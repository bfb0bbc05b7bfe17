"""``python -m gisp`` (and ``torchrun -m gisp``): the command line."""

import sys

from gisp.cli import main

sys.exit(main())
