"""`python -m paramsim` runs the command line."""

import sys

from paramsim.cli import main

sys.exit(main())
