"""The transport seam: the one method the delivery service needs from an SMTP client.

A :class:`Transport` takes one :class:`Outgoing` message (envelope and a way to open the stored
bytes) and one :class:`~spoolmail._core.routing.Target` host, and returns a
:class:`~spoolmail._core.reply.Reply` for every recipient, writing the dialogue into the
:class:`~spoolmail._core.transcript.Transcript` it is given. Expected failures (refused connection,
timeout, 4xx, 5xx, garbage) are replies, never exceptions. ``close()`` ends any connections a
transport keeps open for reuse. ``spoolmail.testing.CapturingTransport`` implements the same seam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target
from spoolmail._core.transcript import Transcript

__all__ = ["Outgoing", "Transport"]


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class Outgoing:
    """One message to send: MAIL FROM, the RCPT TO list for this destination, and its bytes.

    ``open`` returns a fresh binary file of the stored message (CRLF line ends, not dot-stuffed);
    the transport streams it and closes it. ``sender`` ``""`` is the null reverse-path ``<>``.
    """

    id: str
    sender: str
    recipients: tuple[str, ...] = attrs.field(converter=_addresses)
    size: int
    open: Callable[[], AbstractContextManager[BinaryIO]] = attrs.field(repr=False)


class Transport(Protocol):
    """Sends messages over SMTP; see the module docstring for the contract."""

    def send(
        self, target: Target, message: Outgoing, transcript: Transcript
    ) -> Mapping[str, Reply]:
        """Deliver ``message`` to ``target``; return a reply for each of its recipients."""
        ...

    def close(self) -> None:
        """Close connections kept for reuse. Safe to call at any time, more than once."""
        ...
