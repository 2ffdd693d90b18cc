"""``python -m stateport.cli``: the same command line as the ``stateport`` script."""

import sys

from stateport.cli import main

sys.exit(main())
