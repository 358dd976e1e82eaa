"""``python -m p8utils``: see :mod:`p8utils.cli`."""

import sys

from p8utils.cli import main

sys.exit(main())
