"""The transport seams: the one method the delivery service needs from an SMTP client, and the
one it needs from a name resolver.

A :class:`Transport` takes one :class:`Outgoing` message (envelope and a way to open the stored
bytes) and one :class:`~spoolmail._core.routing.Target` host, and returns a
:class:`~spoolmail._core.reply.Reply` for every recipient, writing the dialogue into the
:class:`~spoolmail._core.transcript.Transcript` it is given. Expected failures (refused connection,
timeout, 4xx, 5xx, garbage) are replies, never exceptions. ``close()`` ends any connections a
transport keeps open for reuse. ``spoolmail.testing.CapturingTransport`` implements the same seam.

A :class:`HostResolver` turns a routing :class:`~spoolmail._core.routing.Hop` (a domain's MX, a
host name, an address literal) into the :class:`Target` addresses to try, in order, or into a
reply saying why there are none (NXDOMAIN 5.1.2, null MX 5.1.10, a DNS failure 4.4.3). Every
name spoolmail connects to goes through it, so no system resolver is ever asked behind its back.
``spoolmail.testing.StaticResolver`` answers from a table.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Hop, Target
from spoolmail._core.transcript import Transcript

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["HostResolver", "Outgoing", "Resolution", "Transport"]


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class Outgoing:
    """One message to send: MAIL FROM, the RCPT TO list for this destination, and its bytes.

    ``open`` returns a fresh binary file of the message as it goes out (CRLF line ends, not
    dot-stuffed); the transport streams it and closes it; ``size`` is its length in octets, what
    ``SIZE=`` announces. ``sender`` ``""`` is the null reverse-path ``<>``. ``eight_bit`` says
    whether the message has an octet over 127, when known (``None``: the transport reads the
    message to find out, if the answer matters, as for ``BODY=8BITMIME``). ``dot_lines`` not
    ``None`` says the bytes are CRLF throughout (their writer made them so), and whether a line
    starts with "." (DATA must dot-stuff it); ``None``: the transport checks both itself.

    :meth:`stored` makes one from a stored message and what goes in front of it (the DKIM
    fields the Queue's door kept in the envelope): ``open`` yields those octets first, and
    ``size`` counts them.
    """

    id: str
    sender: str
    recipients: tuple[str, ...] = attrs.field(converter=_addresses)
    size: int
    open: Callable[[], AbstractContextManager[BinaryIO]] = attrs.field(repr=False)
    eight_bit: bool | None = None
    dot_lines: bool | None = None

    @classmethod
    def stored(
        cls,
        *,
        id: str,  # noqa: A002 (the field's name)
        sender: str,
        recipients: Iterable[str],
        size: int,
        open: Callable[[], AbstractContextManager[BinaryIO]],  # noqa: A002 (the field's name)
        prepend: bytes = b"",
        eight_bit: bool | None = None,
        dot_lines: bool | None = None,
    ) -> Outgoing:
        """A stored message of ``size`` octets (``open`` reads it) with ``prepend`` in front."""
        if not prepend:
            return cls(id, sender, recipients, size, open, eight_bit, dot_lines)
        if dot_lines is not None:
            # What the stored file's writer knew holds for the whole only if ``prepend`` (CRLF
            # lines too, normally) keeps it.
            lines = prepend.split(b"\r\n")
            if lines[-1] or any(b"\r" in line or b"\n" in line for line in lines):
                dot_lines = None
            elif any(line.startswith(b".") for line in lines):
                dot_lines = True
        return cls(
            id,
            sender,
            recipients,
            size + len(prepend),
            functools.partial(_prefixed, prepend, open),
            eight_bit,
            dot_lines,
        )


class _Prefixed(io.RawIOBase):
    """A binary file that reads ``prefix``, then ``source``; closing it closes ``source``."""

    def __init__(self, prefix: bytes, source: BinaryIO) -> None:
        super().__init__()
        self._prefix = prefix
        self._source = source

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        prefix = self._prefix
        if not prefix:
            return self._source.read(-1 if size is None else size)
        if size is None or size < 0:
            self._prefix = b""
            return prefix + self._source.read()
        # One block as the caller asked for, the prefix and the file's start together: the
        # transport's blocks stay whole (no small extra write on the socket).
        taken, self._prefix = prefix[:size], prefix[size:]
        rest = size - len(taken)
        return taken + self._source.read(rest) if rest else taken

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            super().close()


@contextmanager
def _prefixed(
    prefix: bytes, open_source: Callable[[], AbstractContextManager[BinaryIO]]
) -> Iterator[BinaryIO]:
    with open_source() as source, _Prefixed(prefix, source) as reader:
        yield cast(BinaryIO, reader)


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


@attrs.frozen
class Resolution:
    """A hop's targets, best first; when there are none, ``reply`` says why."""

    targets: tuple[Target, ...] = ()
    reply: Reply | None = None


class HostResolver(Protocol):
    """Looks up where a hop leads; see the module docstring for the contract."""

    def resolve(self, hop: Hop, transcript: Transcript) -> Resolution:
        """The targets for ``hop`` in the order to try them, or why there are none."""
        ...
