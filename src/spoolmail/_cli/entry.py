"""The ``spoolmail`` command's entry point (the script and ``python -m spoolmail``): the quick
flush (``_cli.quick``) before the command line is imported, else the whole command."""

from __future__ import annotations

import sys

from spoolmail._cli.quick import quick_flush

__all__ = ["main"]


def main() -> int:
    """``spoolmail``: the quick flush, or the whole command."""
    status = quick_flush(sys.argv[1:])
    if status is not None:
        return status
    from spoolmail._cli.main import main as whole  # noqa: PLC0415 (the point of this module)

    return whole()
