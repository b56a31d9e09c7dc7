"""Shared fixtures: both filesystems, a fake clock, and a guard that keeps traffic on loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolmail._store import pyfs
from spoolmail.testing import FakeClock

# Every Python process the tests start imports tests/guard/sitecustomize.py at start-up, which
# keeps it on loopback too (PYTHONPATH for plain subprocesses, sys.path for those that build
# their PYTHONPATH from it).
_GUARD = str(Path(__file__).parent / "tests" / "guard")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_GUARD, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)
if _GUARD not in sys.path:
    sys.path.append(_GUARD)


def _loopback(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        try:
            return ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            return False  # a host name: it would need a lookup the test did not arrange
    return True  # AF_UNIX paths and the like


@pytest.fixture(autouse=True)
def _only_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never send a packet outside 127.0.0.0/8 or ::1 (no DNS, no SMTP, nothing)."""
    for method in ("connect", "connect_ex", "sendto"):
        original = getattr(socket.socket, method)

        def guarded(
            self: socket.socket, *args: Any, _original: Any = original, _name: str = method
        ) -> Any:
            address = args[-1]
            if not _loopback(address):
                raise AssertionError(f"test tried socket.{_name} to {address!r}, outside loopback")
            return _original(self, *args)

        monkeypatch.setattr(socket.socket, method, guarded)

    lookup = socket.getaddrinfo

    def guarded_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        # A name here would be a query to the system's resolver, which leaves the machine.
        if isinstance(host, bytes):
            host = host.decode()
        if host not in (None, "localhost") and not _is_address(host):
            raise AssertionError(f"test tried to look up {host!r} through the system resolver")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@pytest.fixture(params=["memory", "os"])
def filesystem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[pyfs.FS]:
    """Every spool test runs on MemoryFS and on OSFS in a temp dir (docs/design.md#testing)."""
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
