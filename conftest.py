"""Shared fixtures: both filesystems, a fake clock, and spools on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolmail._store import pyfs
from spoolmail.testing import FakeClock


@pytest.fixture(params=["memory", "os"])
def filesystem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[pyfs.FS]:
    """Every spool test runs on MemoryFS and on OSFS in a temp dir (DESIGN.md section 9)."""
    if request.param == "memory":
        filesystem: pyfs.FS = pyfs.MemoryFS()
    else:
        root = tmp_path / "MailRoot"
        root.mkdir()
        filesystem = pyfs.OSFS(str(root))
    with filesystem:
        yield filesystem


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
