"""`python -m liteq` runs the liteq command line."""

import sys

from liteq.cli import main

sys.exit(main())
