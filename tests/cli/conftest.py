"""Fixtures the command-line tests share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A folder other users can reach (pytest's temporary folders are private to root), for the
    tests that run a command as another user (setpriv)."""
    base = Path(tempfile.mkdtemp(prefix="spoolmail-cli-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
