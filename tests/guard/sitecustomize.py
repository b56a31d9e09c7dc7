"""Loopback only, in every Python process the tests start (imported at interpreter start-up).

The root ``conftest.py`` keeps the test process itself on 127.0.0.0/8 and ::1; the services,
writers and tools the tests run as subprocesses (``python -m spoolmail run``, the writers run as
other users) are guarded here, through ``PYTHONPATH``: a connection, a datagram or a name lookup
that would leave the machine is refused with an ``OSError`` (so the code under test sees a
network failure, as it would on a closed network) and reported on stderr.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any


def _outside(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        try:
            return not ipaddress.ip_address(str(address[0]).split("%", 1)[0]).is_loopback
        except ValueError:
            return True  # a host name here would need a lookup
    return False  # AF_UNIX paths and the like


def _refuse(what: str) -> OSError:
    message = f"test guard: {what} would leave the machine (tests stay on loopback)"
    print(message, file=sys.stderr, flush=True)  # noqa: T201 (the guard's whole point)
    return PermissionError(message)


def _guard(name: str) -> None:
    original = getattr(socket.socket, name)

    def guarded(self: socket.socket, *args: Any) -> Any:
        if args and _outside(args[-1]):
            raise _refuse(f"socket.{name} to {args[-1]!r}")
        return original(self, *args)

    setattr(socket.socket, name, guarded)


for _name in ("connect", "connect_ex", "sendto"):
    _guard(_name)

_lookup = socket.getaddrinfo


def _guarded_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
    text = host.decode() if isinstance(host, bytes) else host
    if text not in (None, "localhost"):
        try:
            ipaddress.ip_address(str(text).split("%", 1)[0])
        except ValueError:
            raise _refuse(f"looking up {text!r} through the system resolver") from None
    return _lookup(host, *args, **kwargs)


socket.getaddrinfo = _guarded_lookup
