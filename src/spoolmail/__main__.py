"""``python -m spoolmail``: the same as the ``spoolmail`` command."""

import sys

from spoolmail._cli.main import main

sys.exit(main())
