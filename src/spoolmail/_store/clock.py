"""The real time, the spool's default clock: an aware UTC datetime.

Everything that reads the time reads a clock handed in (``Spool(clock=...)``), so that a test can
set it; this is the one the spool gets by default (the pure ``_core`` never reads one).
Reads the time; keeps no state.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["system_clock"]


def system_clock() -> datetime:
    """The real time, as an aware UTC datetime: the default clock."""
    return datetime.now(UTC)
