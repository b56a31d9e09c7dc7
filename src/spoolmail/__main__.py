"""``python -m spoolmail``: the same as the ``spoolmail`` command."""

import sys

from spoolmail._cli.entry import main

sys.exit(main())
