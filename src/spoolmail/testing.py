"""Test helpers for programs that use spoolmail, and a pytest plugin that provides them.

Installed with spoolmail, the plugin gives every pytest run these fixtures:

- ``spoolmail_clock``: a :class:`FakeClock` at 2026-11-28 10:00 UTC; ``advance(hours=4)`` moves it.
- ``spoolmail_transport``: a :class:`CapturingTransport` that records what would have been sent and
  answers 250, or whatever you script per recipient.
- ``spoolmail_spool``: an in-memory :class:`~spoolmail.Spool` on that clock.
- ``spoolmail_service``: a :class:`~spoolmail.MailService` over those three, local domain
  ``example.com``, smart host ``smarthost.test``, IIS retry schedule, and a
  :class:`StaticResolver` instead of DNS.

Nothing here opens a socket or touches a disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Hop, HopKind, Router, Target
from spoolmail._core.transcript import Transcript
from spoolmail._service.service import MailService
from spoolmail._store.spool import Spool
from spoolmail._store.store import Durability
from spoolmail._transport.base import Outgoing, Resolution

__all__ = ["CapturedMessage", "CapturingTransport", "FakeClock", "StaticResolver"]

START = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


class FakeClock:
    """A clock that stands still until told to move: pass it wherever spoolmail takes ``clock``."""

    def __init__(self, start: datetime = START) -> None:
        if start.utcoffset() is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta | None = None, **parts: float) -> datetime:
        """Move forward by ``delta`` or by ``timedelta(**parts)``; returns the new time."""
        self.now += (delta or timedelta()) + timedelta(**parts)
        return self.now

    def set(self, when: datetime) -> None:
        if when.utcoffset() is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = when

    def sleep(self, seconds: float) -> None:
        """A ``sleep`` for tenacity and friends that moves the clock instead of waiting."""
        self.advance(seconds=seconds)


@attrs.frozen
class CapturedMessage:
    """One message a :class:`CapturingTransport` accepted."""

    target: Target
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    queue_id: str = ""


Answer = Reply | Callable[[str], Reply]


class StaticResolver:
    """A name resolver answering from tables, for tests: no DNS query ever leaves the process.

    ``mx`` maps a domain to its (preference, exchange) records (``[(0, ".")]``: RFC 7505 null
    MX), ``hosts`` a host name to its addresses; a name in neither resolves to ``fallback`` when
    it is set (so any domain can be routed in a test), and otherwise does not exist
    (``550 5.1.2``). Lookups are recorded in :attr:`lookups`.
    """

    def __init__(
        self,
        *,
        mx: Mapping[str, Sequence[tuple[int, str]]] | None = None,
        hosts: Mapping[str, Sequence[str]] | None = None,
        fallback: str | None = None,
    ) -> None:
        self.mx = {k.lower(): list(v) for k, v in (mx or {}).items()}
        self.hosts = {k.lower(): list(v) for k, v in (hosts or {}).items()}
        self.fallback = fallback
        self.lookups: list[Hop] = []

    def _addresses(self, name: str) -> list[str]:
        found = self.hosts.get(name.lower())
        if found is None and self.fallback is not None:
            found = [self.fallback]
        return found or []

    def resolve(self, hop: Hop, transcript: Transcript) -> Resolution:
        self.lookups.append(hop)
        if hop.kind is HopKind.MX and self.mx.get(hop.name.lower()) == [(0, ".")]:
            reply = Reply(556, "5.1.10", f"{hop.name} does not accept mail (null MX, RFC 7505)")
            return Resolution(reply=reply)
        if hop.kind is HopKind.ADDRESS:
            names = [(hop.name, [hop.name])]
        elif hop.kind is HopKind.MX and hop.name.lower() in self.mx:
            records = sorted(self.mx[hop.name.lower()])
            names = [(exchange, self._addresses(exchange)) for _, exchange in records]
        else:
            names = [(hop.name, self._addresses(hop.name))]
        targets = tuple(
            Target(
                address,
                hop.port,
                literal=hop.kind is HopKind.ADDRESS,
                name=None if hop.kind is HopKind.ADDRESS else name,
                tls=hop.tls,
                credentials=hop.credentials,
            )
            for name, addresses in names
            for address in addresses
        )
        transcript.note(f"static lookup of {hop}: {', '.join(map(str, targets)) or 'nothing'}")
        if targets:
            return Resolution(targets)
        return Resolution(reply=Reply(550, "5.1.2", f"{hop.name} does not exist (static table)"))


class CapturingTransport:
    """A transport that keeps messages instead of sending them.

    ``answers`` maps a recipient address to the :class:`~spoolmail.Reply` to give (or a callable of
    the address); unlisted recipients get ``250 2.0.0``. Only recipients answered 2xx are recorded
    as delivered in :attr:`messages`.
    """

    def __init__(
        self, answers: Mapping[str, Answer] | Callable[[str], Reply] | None = None
    ) -> None:
        self.answers = answers
        self.messages: list[CapturedMessage] = []
        self.attempts: list[tuple[Target, tuple[str, ...]]] = []
        self.closed = 0

    def answer(self, address: str) -> Reply:
        if callable(self.answers):
            return self.answers(address)
        found = (self.answers or {}).get(address)
        if found is None:
            return Reply(250, "2.0.0", "captured", host="capture.test")
        return found(address) if callable(found) else found

    def send(self, target: Target, message: Outgoing, transcript: Transcript) -> dict[str, Reply]:
        replies = {address: self.answer(address) for address in message.recipients}
        self.attempts.append((target, tuple(message.recipients)))
        accepted = tuple(a for a, r in replies.items() if r.code < 300)
        transcript.note(f"captured for {target}: {len(accepted)} of {len(replies)} accepted")
        if accepted:
            with message.open() as handle:
                data = handle.read()
            self.messages.append(
                CapturedMessage(target, message.sender, accepted, data, queue_id=message.id)
            )
        return replies

    def close(self) -> None:
        self.closed += 1


if TYPE_CHECKING:
    import pytest

    _register = pytest.fixture
else:
    try:
        import pytest

        _register = pytest.fixture
    except ImportError:  # pragma: no cover - the helpers above work without pytest

        def _register(function):
            return function


@_register
def spoolmail_clock() -> FakeClock:
    return FakeClock()


@_register
def spoolmail_transport() -> CapturingTransport:
    return CapturingTransport()


@_register
def spoolmail_spool(spoolmail_clock: FakeClock) -> Iterator[Spool]:
    with Spool("mem://", clock=spoolmail_clock, durability=Durability.NONE) as spool:
        yield spool


@_register
def spoolmail_service(
    spoolmail_spool: Spool, spoolmail_clock: FakeClock, spoolmail_transport: CapturingTransport
) -> Iterator[MailService]:
    service = MailService(
        spoolmail_spool,
        router=Router(local_domains=["example.com"], smart_host="smarthost.test:25"),
        retry=RetryPolicy.iis(),
        transport=spoolmail_transport,
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=spoolmail_clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()
