"""A raw SMTP client for what smtplib will not send: pipelined bursts, bare CR and LF."""

from __future__ import annotations

import socket

from spoolmail import Listener
from tests.listen.conftest import host_port

OPEN: list[RawClient] = []  # closed after each test by conftest's fixture


class RawClient:
    """Bytes out, reply lines in; ``replies(n)`` waits for ``n`` final replies."""

    def __init__(self, listener: Listener, index: int = 0) -> None:
        self.sock = socket.create_connection(host_port(listener, index), timeout=10)
        OPEN.append(self)
        self.buffer = b""
        self.greeting = self.replies(1)[0]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int) -> list[str]:
        """The next ``count`` final reply lines (a multi-line reply counts once, by its last)."""
        found: list[str] = []
        while len(found) < count:
            line = self._line()
            if line is None:
                break
            if line[3:4] != "-":
                found.append(line)
        return found

    def _line(self) -> str | None:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line.decode("utf-8", "replace")

    def closed(self) -> bool:
        """Whether the server closed the connection (after whatever it still had to say)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()
