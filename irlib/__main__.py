"""``python -m irlib``: the command line (see :mod:`irlib.cli`)."""

import sys

from irlib.cli import main

sys.exit(main())
