"""Fixtures every service test module shares: a Spool on each filesystem, a capturing transport.

A module that needs another transport (one that refuses every host, say) defines its own
``transport`` fixture, which wins over this one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spoolmail import Spool
from spoolmail._store import pyfs
from spoolmail.testing import CapturingTransport, FakeClock


@pytest.fixture
def spool(filesystem: pyfs.FS, clock: FakeClock) -> Iterator[Spool]:
    """A Spool on MemoryFS and on OSFS in a temp dir (``filesystem``), on the fake clock."""
    with Spool(filesystem, clock=clock) as spool:
        yield spool


@pytest.fixture
def transport() -> CapturingTransport:
    """Accepts every recipient (``CapturingTransport``'s default answer) and keeps every message."""
    return CapturingTransport()
