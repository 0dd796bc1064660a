"""`python -m service ...`: the command line (service/cli.py)."""

import sys

from service.cli import main

sys.exit(main())
