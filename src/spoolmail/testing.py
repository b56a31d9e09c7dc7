"""Test helpers for programs that use spoolmail, and a pytest plugin that provides them.

Installed with spoolmail, the plugin gives every pytest run these fixtures:

- ``spoolmail_clock``: a :class:`FakeClock` at 2026-11-28 10:00 UTC; ``advance(hours=4)`` moves it.
- ``spoolmail_transport``: a :class:`CapturingTransport` that records what would have been sent and
  answers 250, or whatever you script per recipient.
- ``spoolmail_spool``: an in-memory :class:`~spoolmail.Spool` on that clock.
- ``spoolmail_service``: a :class:`~spoolmail.MailService` over those three, local domain
  ``example.com``, smart host ``smarthost.test``, IIS retry schedule, and a
  :class:`StaticResolver` instead of DNS.
- ``spoolmail_outbox``: an :class:`Outbox` of that service, in the style of Django's
  ``mail.outbox``: reading it delivers what is due, then lists every message that left (to Drop
  or to the transport) as a :class:`SentMessage`, with checks that fail readably.

Nothing here opens a socket; the fixtures touch no disk.
"""

from __future__ import annotations

import email
import email.message
import email.policy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from itertools import chain
from typing import TYPE_CHECKING, NamedTuple, TypedDict, Unpack, overload

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Hop, HopKind, Router, Target
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing, Resolution
from spoolmail.exceptions import NotFound

# This module is a pytest plugin, loaded by every pytest run wherever spoolmail is installed:
# the service and the spool (a third of a second of imports) come when a fixture or an Outbox
# needs them.
if TYPE_CHECKING:
    from spoolmail._service.service import MailService, Report
    from spoolmail._store.spool import Spool

__all__ = [
    "Attachment",
    "CapturedMessage",
    "CapturingTransport",
    "Criteria",
    "FakeClock",
    "Headers",
    "Outbox",
    "SentMessage",
    "StaticResolver",
]

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
        """Set the clock to ``when`` (an aware datetime)."""
        if when.utcoffset() is None:
            raise ValueError("FakeClock needs an aware datetime")
        self.now = when

    def sleep(self, seconds: float) -> None:
        """A ``sleep`` for tenacity and friends that moves the clock instead of waiting."""
        self.advance(seconds=seconds)


@attrs.frozen
class CapturedMessage:
    """One message a :class:`CapturingTransport` accepted, for the recipients it accepted;
    ``queue_id`` is the message's id in the spool."""

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
        """The targets the tables give for ``hop``, as DNS would (no lookup is made)."""
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
        """The reply scripted for ``address``: its own, the default's, or ``250``."""
        if callable(self.answers):
            return self.answers(address)
        found = (self.answers or {}).get(address)
        if found is None:
            return Reply(250, "2.0.0", "captured", host="capture.test")
        return found(address) if callable(found) else found

    def send(self, target: Target, message: Outgoing, transcript: Transcript) -> dict[str, Reply]:
        """Record the message as sent to ``target`` and answer each recipient as scripted."""
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
        """Count the close (``closed``): the service closes its transport when it is closed."""
        self.closed += 1


class Attachment(NamedTuple):
    """An attachment of a sent message: ``(filename, content_type, content)``."""

    filename: str
    content_type: str
    content: bytes


class Headers(Mapping[str, str]):
    """A message's header fields by name, in any case: ``headers["x-campaign"]`` is the first
    such field's value, decoded (RFC 2047 words, UTF-8); :meth:`get_all` gives every one."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = list(items)

    def __getitem__(self, name: str) -> str:
        for found, value in self._items:
            if found.lower() == name.lower():
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        names: dict[str, str] = {}
        for name, _ in self._items:
            names.setdefault(name.lower(), name)  # each name once, as first written
        return iter(names.values())

    def __len__(self) -> int:
        return len({name.lower() for name, _ in self._items})

    def get_all(self, name: str) -> list[str]:
        """Every value of the fields called ``name`` (``Received``), in order."""
        return [value for found, value in self._items if found.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@attrs.frozen(repr=False)
class SentMessage:
    """One message that left: written to Drop (``where == "drop"``) or accepted by the
    :class:`CapturingTransport` (``where`` is the host it went to, by name when it has one).

    ``sender`` and ``recipients`` are the envelope (Bcc recipients are in it, and in no header);
    ``from_``, ``to``, ``cc`` and ``reply_to`` the addresses in the header fields. ``body`` is
    the text part and ``html`` the HTML part (``""`` when there is none); ``attachments`` the
    other parts, attached messages and DSN reports included. ``raw`` is the message as it was
    delivered, without Drop's ``x-sender`` / ``x-receiver`` lines; ``message`` is it parsed.
    """

    where: str
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    from_: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    body: str
    html: str
    attachments: tuple[Attachment, ...]
    headers: Headers = attrs.field(eq=False)
    raw: bytes
    message: email.message.EmailMessage = attrs.field(eq=False)

    @classmethod
    def parse(
        cls, raw: bytes, *, where: str, queue_id: str, sender: str, recipients: Sequence[str]
    ) -> SentMessage:
        """Read a delivered message (CRLF or LF line ends)."""
        # Parsed with LF line ends, so text reads as Python text does ("Hello\n", not "\r\n").
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        headers = Headers((name, _text(value)) for name, value in message.items())
        body_parts = [message.get_body(preferencelist=(kind,)) for kind in ("plain", "html")]
        text, html = (_content(part) for part in body_parts)
        return cls(
            where=where,
            queue_id=queue_id,
            sender=sender,
            recipients=tuple(recipients),
            subject=headers.get("subject", ""),
            from_=next(iter(_header_addresses(message, "from")), ""),
            to=_header_addresses(message, "to"),
            cc=_header_addresses(message, "cc"),
            reply_to=_header_addresses(message, "reply-to"),
            body=text,
            html=html,
            attachments=tuple(_attachments(message, skip=body_parts)),
            headers=headers,
            raw=raw,
            message=message,
        )

    @property
    def summary(self) -> str:
        """One line: subject, envelope and where it went."""
        to = ", ".join(self.recipients)
        return f"{self.subject!r} from {self.sender or '<>'} to {to} [{self.where}]"

    def __repr__(self) -> str:
        return f"<SentMessage {self.summary}>"


def _text(value: object) -> str:
    """A header value as text: bytes that were raw UTF-8 (RFC 6532) come out of the parser as
    surrogate escapes, which are turned back into the characters they were."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _header_addresses(message: email.message.EmailMessage, name: str) -> tuple[str, ...]:
    found: list[str] = []
    for value in message.get_all(name, ()):
        found += [_text(address.addr_spec) for address in getattr(value, "addresses", ())]
    return tuple(found)


_Part = email.message.MIMEPart


def _content(part: _Part | None) -> str:
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        # A charset Python does not know: the bytes as UTF-8, so a test can still look.
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _leaves(part: _Part) -> Iterator[_Part]:
    """The parts that hold content, not descending into attached messages."""
    if part.is_multipart() and part.get_content_maintype() != "message":
        for sub in part.iter_parts():
            yield from _leaves(sub)
    else:
        yield part


def _attachments(message: _Part, *, skip: Sequence[_Part | None]) -> Iterator[Attachment]:
    """Every part but the message's text and HTML bodies that is an attachment or has a file
    name (an inline image), and every attached message (a forwarded mail, a DSN's report)."""
    for part in _leaves(message):
        if part is message or any(part is body for body in skip):
            continue
        if part.get_content_maintype() == "message":
            content = b"".join(inner.as_bytes() for inner in part.iter_parts())
        elif part.get_content_disposition() == "attachment" or part.get_filename():
            payload = part.get_payload(decode=True)
            content = payload if isinstance(payload, bytes) else b""
        else:
            continue
        yield Attachment(_text(part.get_filename() or ""), part.get_content_type(), content)


def _without_envelope_lines(data: bytes) -> bytes:
    """A Drop file without its leading ``x-sender`` / ``x-receiver`` lines (docs/formats.md)."""
    start = 0
    while (end := data.find(b"\n", start)) >= 0:
        name = data[start:end].partition(b":")[0].strip().lower()
        if name not in (b"x-sender", b"x-receiver"):
            break
        start = end + 1
    return data[start:]


class Criteria(TypedDict, total=False):
    """What :class:`Outbox`'s checks select messages by; every one given must hold."""

    to: str | Sequence[str]
    """Envelope recipients, each of them (To, Cc and Bcc alike: who received it)."""
    sender: str
    """The envelope sender (MAIL FROM; ``""`` for a DSN)."""
    from_: str
    """The address in the From field."""
    subject: str
    subject_contains: str
    body_contains: str
    """In the text part or the HTML part."""
    where: str
    """``"drop"``, or the host the message was sent to."""
    attachment: str
    """An attachment with this file name."""


def _address(text: str) -> str:
    """An address as a criterion names it (``Bob <bob@example.com>`` too; ``<>``: the null
    sender), ready to compare."""
    if text.strip() in ("", "<>"):
        return ""
    return (parseaddr(text)[1] or text).casefold()


def _matches(message: SentMessage, criteria: Criteria) -> bool:
    """Whether every criterion given holds for ``message`` (see :class:`Criteria`)."""
    to = criteria.get("to", ())
    received = {address.casefold() for address in message.recipients}
    text = criteria.get("body_contains")
    filename = criteria.get("attachment")
    return all(
        (
            {_address(a) for a in ([to] if isinstance(to, str) else to)} <= received,
            "sender" not in criteria or message.sender.casefold() == _address(criteria["sender"]),
            "from_" not in criteria or message.from_.casefold() == _address(criteria["from_"]),
            "subject" not in criteria or message.subject == criteria["subject"],
            criteria.get("subject_contains", "") in message.subject,
            text is None or text in message.body or text in message.html,
            "where" not in criteria or message.where == criteria["where"],
            filename is None or any(a.filename == filename for a in message.attachments),
        )
    )


class Outbox(Sequence[SentMessage]):
    """Every message that left a spool, in the style of Django's ``mail.outbox``.

    ``Outbox(service)`` drives a :class:`~spoolmail.MailService` nobody else runs: each time the
    outbox is read it first delivers what is due (:meth:`deliver`), then lists what reached Drop
    and what its :class:`CapturingTransport` accepted, as :class:`SentMessage` objects, in the
    order the messages were queued. ``Outbox(spool, transport=...)`` only reads, for a spool a
    service elsewhere delivers. :meth:`clear` forgets what has left so far.

    The checks fail with an ``AssertionError`` that lists what was sent, and what was not
    (still in Pickup, waiting in the Queue and why, in BadMail and why).
    """

    def __init__(
        self, source: MailService | Spool, *, transport: CapturingTransport | None = None
    ) -> None:
        from spoolmail._service.service import MailService  # noqa: PLC0415 (see the imports)

        if isinstance(source, MailService):
            self.service: MailService | None = source
            self.spool = source.spool
            if transport is None and isinstance(source.transport, CapturingTransport):
                transport = source.transport
        else:
            self.service = None
            self.spool = source
        self.transport = transport
        self._messages: list[SentMessage] = []
        self._drop_seen: set[str] = set()
        self._remote_seen = 0

    # -- reading -------------------------------------------------------------------------------

    def deliver(self) -> Report:
        """Run the service until nothing is due now; what it did, all runs together."""
        if self.service is None:
            raise TypeError(
                "this Outbox reads a Spool that something else delivers; build it from the "
                "MailService (Outbox(service)) to have it deliver"
            )
        from spoolmail._service.service import Report  # noqa: PLC0415 (see the imports)

        reports = []
        for _ in range(_MAX_RUNS):
            reports.append(self.service.run_once())
            due = self.service.next_due()
            if due is None or due > self.service.clock():
                break
        return Report(
            **{
                field.name: tuple(chain.from_iterable(getattr(r, field.name) for r in reports))
                for field in attrs.fields(Report)
            }
        )

    @property
    def messages(self) -> list[SentMessage]:
        """What has left, after delivering what was due (a new list each time)."""
        if self.service is not None:
            self.deliver()
        self._collect()
        return list(self._messages)

    def _collect(self) -> None:
        new: list[SentMessage] = []
        if self.transport is not None:
            captured = self.transport.messages
            for item in captured[min(self._remote_seen, len(captured)) :]:
                where = item.target.name or item.target.host
                new.append(
                    SentMessage.parse(
                        item.data,
                        where=where,
                        queue_id=item.queue_id,
                        sender=item.sender,
                        recipients=item.recipients,
                    )
                )
            self._remote_seen = len(captured)
        for dropped in self.spool.drop():
            if dropped.name in self._drop_seen:
                continue
            try:
                data = self.spool.drop_message(dropped.id)
            except NotFound:
                continue  # a Drop reader took it meanwhile, or it is not named by a queue id
            self._drop_seen.add(dropped.name)
            new.append(
                SentMessage.parse(
                    _without_envelope_lines(data),
                    where="drop",
                    queue_id=dropped.id,
                    sender=dropped.sender,
                    recipients=dropped.recipients,
                )
            )
        # Queue ids sort by arrival; a message with local and remote recipients is both.
        new.sort(key=lambda message: (message.queue_id, message.where != "drop"))
        self._messages += new

    def clear(self) -> None:
        """Forget every message that has left so far (delivering what is due first, so that a
        message sent before ``clear()`` never shows up after it, as with Django's outbox)."""
        self.messages  # noqa: B018 - reading delivers and collects
        self._messages.clear()

    def __len__(self) -> int:
        return len(self.messages)

    @overload
    def __getitem__(self, index: int) -> SentMessage: ...
    @overload
    def __getitem__(self, index: slice) -> list[SentMessage]: ...
    def __getitem__(self, index: int | slice) -> SentMessage | list[SentMessage]:
        return self.messages[index]

    def __iter__(self) -> Iterator[SentMessage]:
        return iter(self.messages)

    def __repr__(self) -> str:
        listed = ", ".join(message.summary for message in self._messages)
        return f"<Outbox [{listed}]>"

    # -- checks --------------------------------------------------------------------------------

    def filter(self, **criteria: Unpack[Criteria]) -> list[SentMessage]:
        """The messages that match every criterion given (see :class:`Criteria`)."""
        _check_criteria(criteria)
        return [message for message in self.messages if _matches(message, criteria)]

    def assert_sent(self, **criteria: Unpack[Criteria]) -> SentMessage:
        """The first message that matches; an AssertionError listing what was sent if none."""
        found = self.filter(**criteria)
        if not found:
            raise AssertionError(self._explain(f"no message sent matches {_shown(criteria)}"))
        return found[0]

    def assert_not_sent(self, **criteria: Unpack[Criteria]) -> None:
        """No message matches (none at all without criteria), or an AssertionError naming them."""
        found = self.filter(**criteria)
        if found:
            what = f"matching {_shown(criteria)} " if criteria else ""
            lines = [f"{len(found)} message(s) {what}were sent:"]
            lines += [f"  {message.summary}" for message in found]
            raise AssertionError("\n".join(lines))

    def single(self, **criteria: Unpack[Criteria]) -> SentMessage:
        """The one message (the one that matches, with criteria); an AssertionError if there
        are none or several."""
        found = self.filter(**criteria)
        if len(found) != 1:
            what = f" matching {_shown(criteria)}" if criteria else ""
            raise AssertionError(self._explain(f"expected 1 message{what}, found {len(found)}"))
        return found[0]

    def _explain(self, problem: str) -> str:
        """The problem, what has left, and what has not: readable without a debugger."""
        lines = [f"{problem}."]
        if self._messages:
            lines.append(f"Sent ({len(self._messages)}):")
            lines += [f"  {n}. {m.summary}" for n, m in enumerate(self._messages, 1)]
        else:
            lines.append("Nothing was sent.")
        lines += self._not_sent()
        return "\n".join(lines)

    def _not_sent(self) -> list[str]:
        lines = []
        waiting = self.spool.pickup()
        if waiting:
            hint = (
                ""
                if self.service is not None
                else " (this Outbox runs no service: Outbox(service) does)"
            )
            lines.append(f"  in Pickup, not taken yet: {len(waiting)} file(s){hint}")
        for queued in self.spool.queued():
            for recipient in queued.envelope.pending:
                why = str(recipient.reply) if recipient.reply else "not attempted yet"
                due = queued.envelope.next_attempt.isoformat()
                lines.append(f"  queued {queued.id}: {recipient.address} ({why}; next {due})")
        for item in self.spool.badmail():
            replies = [
                f"{r.address}: {r.reply}"
                for r in (item.envelope.recipients if item.envelope else ())
                if r.reply is not None and r.reply.code >= 400
            ]
            why = f" ({'; '.join(replies)})" if replies else ""
            lines.append(f"  in BadMail {item.id}: {item.reason}{why}")
        return ["Not sent:", *lines] if lines else []


# run_once again while something is due at once (a message given back for a busy host).
_MAX_RUNS = 20


def _check_criteria(criteria: Mapping[str, object]) -> None:
    unknown = set(criteria) - set(Criteria.__annotations__)
    if unknown:
        known = ", ".join(Criteria.__annotations__)
        raise TypeError(f"unknown criteria {', '.join(sorted(unknown))} (known: {known})")


def _shown(criteria: Mapping[str, object]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in criteria.items()) or "anything"


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
    from spoolmail._store.spool import Spool  # noqa: PLC0415 (see the imports)
    from spoolmail._store.store import Durability  # noqa: PLC0415

    with Spool("mem://", clock=spoolmail_clock, durability=Durability.NONE) as spool:
        yield spool


@_register
def spoolmail_service(
    spoolmail_spool: Spool, spoolmail_clock: FakeClock, spoolmail_transport: CapturingTransport
) -> Iterator[MailService]:
    from spoolmail._service.service import MailService  # noqa: PLC0415 (see the imports)

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


@_register
def spoolmail_outbox(spoolmail_service: MailService) -> Outbox:
    return Outbox(spoolmail_service)
