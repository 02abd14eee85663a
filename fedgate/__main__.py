"""``python -m fedgate``: the same as the ``fedgate`` command."""

import sys

from fedgate.cli import main

sys.exit(main())
