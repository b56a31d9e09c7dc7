"""Events: what happened to a message, as values an observer receives and the mail log keeps.

Every outcome the spool commits is announced as one frozen :class:`MailEvent` after the commit
that makes it true: a Pickup file taken (:class:`PickedUp`), a message queued (:class:`Queued`),
one recipient delivered, deferred or failed (:class:`Delivered`, :class:`Deferred`,
:class:`Failed`, each with the reply and the host that gave it), a Drop file written
(:class:`Dropped`), a DSN queued (:class:`DsnQueued`), a message moved to BadMail
(:class:`ToBadMail`) or finished (:class:`Removed`), and an operator's orders (:class:`Held`,
:class:`Released`, :class:`Flushed`, :class:`Deleted`, :class:`Requeued`). The same value is
rendered three ways here, so that an observer, a log record and the mail log cannot disagree:
:func:`describe` (one Postfix-maillog-like line for people), :func:`log_fields` (the values a log
record carries as attributes) and :func:`encode_event` / :func:`decode_event` (one JSON line of
``Log/``). A remote server's reply can say anything: its text is cut to :data:`MAX_TEXT`
characters when the event is made, and the line for people escapes control characters.
Pure: times are handed in; nothing here touches a file, a socket or a clock.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

import attrs

from spoolmail._core.envelope import Envelope
from spoolmail._core.reply import Reply
from spoolmail._core.states import State

__all__ = [
    "EVENT_TYPES",
    "MAX_TEXT",
    "Deferred",
    "Deleted",
    "Delivered",
    "Dropped",
    "DsnQueued",
    "Failed",
    "Flushed",
    "Held",
    "MailEvent",
    "Observer",
    "PickedUp",
    "Queued",
    "Released",
    "Removed",
    "Requeued",
    "Source",
    "ToBadMail",
    "decode_event",
    "describe",
    "encode_event",
    "log_fields",
]

#: The longest reply or reason text an event carries (a remote server's text is not ours to
#: trust: RFC 5321 section 4.5.3.1.5 bounds a reply line at 512 octets, but not the lines).
MAX_TEXT = 1000
_FORMAT_VERSION = 1


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _bounded_reply(reply: Reply) -> Reply:
    cause = reply.cause
    if len(reply.text) <= MAX_TEXT and (cause is None or len(cause.text) <= MAX_TEXT):
        return reply
    return attrs.evolve(
        reply,
        text=_cut(reply.text),
        cause=None if cause is None else attrs.evolve(cause, text=_cut(cause.text), cause=None),
    )


def _recipients(values: Any) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class MailEvent:
    """What every event has: the message's queue id and when it happened (the service's clock)."""

    kind: ClassVar[str] = "event"

    queue_id: str
    time: datetime


@attrs.frozen(kw_only=True)
class PickedUp(MailEvent):
    """A Pickup file was taken; a :class:`Queued` or :class:`ToBadMail` follows for the id."""

    kind: ClassVar[str] = "picked-up"

    file: str
    """The file's name in Pickup, as its writer chose it."""


class Source(enum.StrEnum):
    """Where a queued message came from: the part of ``Queued.origin`` before its colon."""

    PICKUP = "pickup"
    SMTP = "smtp"
    DSN = "dsn"
    REQUEUE = "requeue"
    SUBMIT = "submit"
    OTHER = "other"


@attrs.frozen(kw_only=True)
class Queued(MailEvent):
    """A message entered the Queue, durably: from Pickup, an SMTP client, a DSN, a requeue."""

    kind: ClassVar[str] = "queued"

    origin: str
    """As the envelope says: ``pickup:<file>``, ``smtp:<client>``, ``dsn:<parent id>``,
    ``requeue:<BadMail id>``, or what ``Spool.admit`` was told."""
    sender: str
    """The reverse-path; ``""`` is ``<>`` (a DSN)."""
    recipients: tuple[str, ...] = attrs.field(converter=_recipients)
    size: int

    @classmethod
    def of(cls, envelope: Envelope) -> Queued:
        """The event of ``envelope`` entering the Queue (at its arrival)."""
        return cls(
            queue_id=envelope.id,
            time=envelope.arrival,
            origin=envelope.origin,
            sender=envelope.sender,
            recipients=tuple(r.address for r in envelope.recipients),
            size=envelope.size,
        )

    @property
    def source(self) -> Source:
        """Where the message came from (Pickup, SMTP, a DSN, a requeue, submit), from its origin."""
        try:
            return Source(self.origin.partition(":")[0])
        except ValueError:
            return Source.OTHER


@attrs.frozen(kw_only=True)
class _RecipientEvent(MailEvent):
    recipient: str
    reply: Reply = attrs.field(converter=_bounded_reply)
    """The answer: the remote server's (``reply.host`` is its address), or spoolmail's own."""
    relay: str | None = None
    """The host that answered, ``name[address]:port``; ``None`` when no server was reached
    (a Drop delivery, a lookup that failed, a host passed over as dead, an expiry)."""
    delay: timedelta = timedelta(0)
    """Since the message arrived (Postfix's ``delay=``)."""


@attrs.frozen(kw_only=True)
class Delivered(_RecipientEvent):
    """A recipient's mail was taken: by a remote server (``relay``) or into Drop (``drop_file``)."""

    kind: ClassVar[str] = "delivered"

    drop_file: str | None = None
    """``Drop/ID.eml`` for a local recipient."""


@attrs.frozen(kw_only=True)
class Deferred(_RecipientEvent):
    """A recipient waits: a 4xx, no answer, a local fault. Tried again at ``next_attempt``."""

    kind: ClassVar[str] = "deferred"

    next_attempt: datetime


@attrs.frozen(kw_only=True)
class Failed(_RecipientEvent):
    """A recipient failed for good: a 5xx, or its time ran out (4.4.7). A DSN or BadMail follows
    (unless the sender asked for no DSN)."""

    kind: ClassVar[str] = "failed"


@attrs.frozen(kw_only=True)
class Dropped(MailEvent):
    """A Drop file was written for the message's local recipients (one file, all of them)."""

    kind: ClassVar[str] = "dropped"

    file: str
    """Where, in the MailRoot: ``Drop/ID.eml``."""
    recipients: tuple[str, ...] = attrs.field(converter=_recipients)
    size: int


@attrs.frozen(kw_only=True)
class DsnQueued(MailEvent):
    """A delivery status notification about ``queue_id`` was queued to its sender as ``dsn_id``.

    ``action`` is RFC 3464's: ``failed``, ``delayed`` (the delay notice), ``delivered`` or
    ``relayed`` (success notices, when asked for). The DSN then has a life of its own: a
    :class:`Queued` with origin ``dsn:<queue_id>``, and its own deliveries.
    """

    kind: ClassVar[str] = "dsn-queued"

    dsn_id: str
    action: str
    recipients: tuple[str, ...] = attrs.field(converter=_recipients)
    """The recipients it reports on."""


@attrs.frozen(kw_only=True)
class ToBadMail(MailEvent):
    """The message (or Pickup file) went to BadMail: ``BadMail/ID.BAD`` and the report."""

    kind: ClassVar[str] = "badmail"

    status: str
    """The RFC 3463 status of the reason (``5.3.4``)."""
    reason: str = attrs.field(converter=_cut)


@attrs.frozen(kw_only=True)
class Removed(MailEvent):
    """The message is finished: no recipient is pending, and its files left the Queue."""

    kind: ClassVar[str] = "removed"


@attrs.frozen(kw_only=True)
class Held(MailEvent):
    """An operator put the message on hold."""

    kind: ClassVar[str] = "held"


@attrs.frozen(kw_only=True)
class Released(MailEvent):
    """An operator released the message's hold: due at once."""

    kind: ClassVar[str] = "released"


@attrs.frozen(kw_only=True)
class Flushed(MailEvent):
    """An operator made the message due now."""

    kind: ClassVar[str] = "flushed"


@attrs.frozen(kw_only=True)
class Deleted(MailEvent):
    """An operator deleted the message from the Queue (``State.QUEUED``, no DSN) or its entry
    from BadMail (``State.BADMAIL``)."""

    kind: ClassVar[str] = "deleted"

    place: State


@attrs.frozen(kw_only=True)
class Requeued(MailEvent):
    """An operator sent a BadMail entry again: queued as ``new_id`` (``to`` is ``State.QUEUED``;
    a :class:`Queued` follows for it), or its file put back into Pickup (``State.PICKUP``)."""

    kind: ClassVar[str] = "requeued"

    new_id: str
    to: State
    recipients: tuple[str, ...] = attrs.field(converter=_recipients, default=())


Observer = Callable[[MailEvent], object]
"""What subscribes to events: any callable of one :class:`MailEvent`."""

EVENT_TYPES: Mapping[str, type[MailEvent]] = {
    cls.kind: cls
    for cls in (
        PickedUp,
        Queued,
        Delivered,
        Deferred,
        Failed,
        Dropped,
        DsnQueued,
        ToBadMail,
        Removed,
        Held,
        Released,
        Flushed,
        Deleted,
        Requeued,
    )
}
"""Every event type by its ``kind``, the name the mail log writes."""


# -- for people: one line, in the manner of Postfix's maillog -------------------------------------


def _safe(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (``\\x1b``): a reply or an
    address must not start a new line or move the cursor in whatever shows the log."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
        for ch in text
    )


def _seconds(delay: timedelta) -> str:
    seconds = delay.total_seconds()
    return f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


_STATUS = {Delivered: "sent", Deferred: "deferred", Failed: "bounced"}
_DSN_NAMES = {
    "failed": "non-delivery",
    "delayed": "delay",
    "delivered": "delivery status",
    "relayed": "delivery status",
}
_PLACES = {State.QUEUED: "the Queue", State.BADMAIL: "BadMail", State.PICKUP: "Pickup"}


def _relay(event: _RecipientEvent) -> str:
    if isinstance(event, Delivered) and event.drop_file:
        return "local"
    return _safe(event.relay) if event.relay else "none"


def describe(event: MailEvent) -> str:
    """The event as one line for people, in the manner of Postfix's maillog::

        0123ABC: to=<bob@example.net>, relay=mx.example.net[192.0.2.1]:25, delay=1.2,
        dsn=2.0.0, status=sent (250 2.0.0 queued as X)

    (one line). Control characters in addresses and replies are escaped.
    """
    text = _describe(event)
    return f"{_safe(event.queue_id)}: {text}"


def _describe(event: MailEvent) -> str:  # noqa: PLR0911 (one return per kind reads best)
    if isinstance(event, _RecipientEvent):
        line = (
            f"to=<{_safe(event.recipient)}>, relay={_relay(event)}, delay={_seconds(event.delay)}, "
            f"dsn={event.reply.status}, status={_STATUS[type(event)]} ({_safe(str(event.reply))})"
        )
        if isinstance(event, Deferred):
            line += f", next={_when(event.next_attempt)}"
        return line
    if isinstance(event, PickedUp):
        return f"picked up file={_safe(event.file)}"
    if isinstance(event, Queued):
        return (
            f"from=<{_safe(event.sender)}>, size={event.size}, nrcpt={len(event.recipients)}, "
            f"origin={_safe(event.origin)} (queue active)"
        )
    if isinstance(event, Dropped):
        return f"dropped file={event.file}, size={event.size}, nrcpt={len(event.recipients)}"
    if isinstance(event, DsnQueued):
        name = _DSN_NAMES.get(event.action, _safe(event.action))
        return f"sender {name} notification: {_safe(event.dsn_id)}"
    if isinstance(event, ToBadMail):
        return f"moved to BadMail: {event.status} {_safe(event.reason)}"
    if isinstance(event, Deleted):
        return f"deleted from {_PLACES.get(event.place, event.place.value)} by an operator"
    if isinstance(event, Requeued):
        where = "into Pickup" if event.to is State.PICKUP else "as"
        return f"requeued from BadMail {where} {_safe(event.new_id)}"
    return {
        Removed: "removed",
        Held: "placed on hold by an operator",
        Released: "released from hold by an operator",
        Flushed: "flushed by an operator",
    }.get(type(event), event.kind)


# -- for log records: the values as attributes (``extra``) ----------------------------------------


def log_fields(event: MailEvent) -> dict[str, Any]:
    """The attributes a log record about ``event`` carries, the same keys on every record:
    ``event`` (its kind), ``queue_id``, ``recipient``, ``relay``, ``reply`` (the reply as
    text), ``status`` (``sent``, ``deferred``, ``bounced``; else the kind), ``dsn`` (the RFC
    3463 status), ``delay`` (seconds) and ``next_attempt``; ``None`` where they do not apply."""
    fields: dict[str, Any] = {
        "event": event.kind,
        "queue_id": event.queue_id,
        "recipient": None,
        "relay": None,
        "reply": None,
        "status": event.kind,
        "dsn": None,
        "delay": None,
        "next_attempt": None,
    }
    if isinstance(event, _RecipientEvent):
        fields.update(
            recipient=event.recipient,
            relay=_relay(event),
            reply=str(event.reply),
            status=_STATUS[type(event)],
            dsn=event.reply.status,
            delay=event.delay.total_seconds(),
        )
        if isinstance(event, Deferred):
            fields["next_attempt"] = event.next_attempt
    elif isinstance(event, ToBadMail):
        fields["dsn"] = event.status
    return fields


# -- for the mail log: one JSON object a line ----------------------------------------------------


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Reply):
        return value.to_json()
    if isinstance(value, State):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


# Outside the control characters JSON escapes anyway; only ever inside a string in the output.
_LINE_ENDS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"{raw!r} is not text")
    return raw


def _optional_text(raw: Any) -> str | None:
    return None if raw is None else _text(raw)


def _count(raw: Any) -> int:
    if type(raw) is not int or raw < 0:  # bool is an int to isinstance
        raise TypeError(f"{raw!r} is not a count")
    return raw


def _texts(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise TypeError(f"{raw!r} is not a list")
    return tuple(map(_text, raw))


def _delay(raw: Any) -> timedelta:
    if type(raw) not in (int, float):
        raise TypeError(f"{raw!r} is not a number of seconds")
    return timedelta(seconds=raw)


def _reply(raw: Any) -> Reply:
    """A reply as ``Reply.to_json`` wrote it, each value of its type (one level of cause)."""
    if not isinstance(raw, dict) or type(raw.get("code")) is not int:
        raise TypeError(f"{raw!r} is not a reply")
    for key in ("enhanced", "text", "host"):
        _optional_text(raw.get(key))
    cause = raw.get("cause")
    if cause is not None:
        _reply({**cause, "cause": None} if isinstance(cause, dict) else cause)
    return Reply.from_json(raw)


# What each field's JSON value becomes, checked: a line edited by hand, or written by something
# else, must not hand a reader a list where the event's type says text. Every field of every
# event type has one (tests/core/test_events.py checks).
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "queue_id": _text,
    "time": datetime.fromisoformat,
    "file": _text,
    "origin": _text,
    "sender": _text,
    "recipients": _texts,
    "size": _count,
    "recipient": _text,
    "reply": _reply,
    "relay": _optional_text,
    "delay": _delay,
    "drop_file": _optional_text,
    "next_attempt": datetime.fromisoformat,
    "dsn_id": _text,
    "action": _text,
    "status": _text,
    "reason": _text,
    "place": State,
    "new_id": _text,
    "to": State,
}


def encode_event(event: MailEvent) -> str:
    """One line of the mail log (no line end): ``{"v": 1, "event": "delivered", ...}``.

    JSON escapes whatever the values hold, so an address or a reply cannot break a line; the
    three characters it leaves that other tools take for a line end (NEL, U+2028, U+2029:
    Python's ``splitlines``) are escaped too. Other non-ASCII text is kept as UTF-8.
    """
    # Each event goes to the mail log: each event type's line is written by a function made
    # once for it (the field names' JSON made once, each value written by its exact type, the
    # text in one join): what ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)``
    # writes for the same values, byte for byte. An ASCII line (nearly every one) holds none of
    # the three characters to escape.
    kind = type(event)
    parts = _LINE_PARTS.get(kind)
    if parts is None:
        parts = _LINE_PARTS[kind] = _line_parts(kind)
    head, fields = parts
    out = [head]
    for key, name in fields:
        value = getattr(event, name)
        write = _JSON_TEXT.get(type(value))
        out.append(key)
        out.append(write(value) if write is not None else _ENCODER.encode(_to_json(value)))
    out.append("}")
    line = "".join(out)
    return line if line.isascii() else line.translate(_LINE_ENDS)


def _line_parts(kind: type[MailEvent]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What every line of ``kind`` starts with, and each field's ``,"name":`` with its name."""
    head = f'{{"v":{_FORMAT_VERSION},"event":{_string(kind.kind)}'
    return head, tuple((f",{_string(field.name)}:", field.name) for field in attrs.fields(kind))


def _float_text(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else _ENCODER.encode(value)


def _strings_text(value: tuple[Any, ...]) -> str:
    if all(type(item) is str for item in value):
        return "[" + ",".join(map(_string, value)) + "]"
    return _ENCODER.encode(list(value))


def _reply_text(reply: Reply) -> str:
    """``reply.to_json()`` as JSON, written directly (a test holds the two together)."""
    if type(reply.code) is not int:
        return _ENCODER.encode(reply.to_json())
    enhanced, host, cause = reply.enhanced, reply.host, reply.cause
    return (
        f'{{"code":{reply.code},"enhanced":{"null" if enhanced is None else _string(enhanced)},'
        f'"text":{_string(reply.text)},"host":{"null" if host is None else _string(host)}'
        + ("}" if cause is None else f',"cause":{_reply_text(cause)}}}')
    )


_LINE_PARTS: dict[type[MailEvent], tuple[str, tuple[tuple[str, str], ...]]] = {}
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# JSON's own string writer (C), as the encoder above uses it.
_string: Callable[[str], str] = json.encoder.encode_basestring
# How each value is written, by its exact type (a subclass goes through _to_json and the
# encoder, which decide by isinstance). An isoformat is ASCII without '"' or '\\'.
_JSON_TEXT: dict[type, Callable[[Any], str]] = {
    str: _string,
    int: int.__repr__,
    float: _float_text,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _: "null",
    datetime: lambda value: f'"{value.isoformat()}"',
    timedelta: lambda value: _float_text(value.total_seconds()),
    Reply: _reply_text,
    tuple: _strings_text,
}


def decode_event(line: str | bytes) -> MailEvent:
    """The event of one mail log line; ``ValueError`` for a line that is not one (cut short by a
    crash, written by a later version with an event this one does not know, not JSON, nested
    too deep, or a value not of its field's type: a count that is text, a delay of 1e400)."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a mail log line: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != _FORMAT_VERSION:
        raise ValueError("not a mail log line of version 1")
    cls = EVENT_TYPES.get(str(data.get("event")))
    if cls is None:
        raise ValueError(f"unknown event {data.get('event')!r}")
    values = {}
    try:
        for field in attrs.fields(cls):
            if field.name in data:
                raw = data[field.name]
                decode = _DECODERS.get(field.name)
                values[field.name] = raw if decode is None else decode(raw)
        return cls(**values)
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
        raise ValueError(f"a damaged {cls.kind} line: {exc}") from None
