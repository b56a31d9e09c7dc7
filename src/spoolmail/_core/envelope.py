"""The envelope: who a queued message is from, who it is for, and where each recipient stands.

An :class:`Envelope` is immutable; every change returns a new one (``attrs.evolve``). This module
also owns the envelope file format, ``Queue/ID.env`` and ``BadMail/ID.BDP``: UTF-8 JSON, one
object, versioned by ``"version"``. :func:`encode_envelope` and :func:`decode_envelope` are the
only code that reads or writes it; a file that is truncated, not JSON or of an unknown version is
an :class:`~spoolmail.exceptions.EnvelopeError` naming what is wrong. Pure: no I/O.
"""

from __future__ import annotations

import enum
import json
import json.encoder
import math
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import attrs

from spoolmail._core.headers import count_received, split_head
from spoolmail._core.reply import Reply
from spoolmail.exceptions import EnvelopeError

__all__ = [
    "ENVELOPE_VERSION",
    "Envelope",
    "Notify",
    "Recipient",
    "RecipientState",
    "Ret",
    "decode_envelope",
    "encode_envelope",
    "new_envelope",
    "read_due",
    "replaced",
]

ENVELOPE_VERSION = 1
_FORMAT = "spoolmail-envelope"
_T = TypeVar("_T")
_F = TypeVar("_F", bound="Recipient | Envelope")


class RecipientState(enum.Enum):
    """Where one recipient of a queued message stands. Only ``PENDING`` is ever attempted."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Notify(enum.Flag):
    """RFC 3461 NOTIFY: which DSNs the sender asked for, per recipient.

    ``Notify.NEVER`` (no flag) asks for none. A recipient without a NOTIFY (``None``) gets what
    RFC 3461 section 4.1 leaves to the MTA: failure and delay notices, no success notice.
    """

    NEVER = 0
    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    DELAY = enum.auto()


DEFAULT_NOTIFY = Notify.FAILURE | Notify.DELAY


class Ret(enum.Enum):
    """RFC 3461 RET: return the full message in a failure DSN, or only its headers."""

    FULL = "FULL"
    HDRS = "HDRS"


def _aware(_instance: object, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{attribute.name} must be an aware datetime, not {value!r}")


_SET = object.__setattr__


_FIELDS: dict[type, dict[str, attrs.Attribute[Any]]] = {}


def _fields(cls: type) -> dict[str, attrs.Attribute[Any]]:
    """``cls``'s fields by name (made once a class)."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = {field.name: field for field in attrs.fields(cls)}
    return fields


def replaced(instance: _F, **changes: Any) -> _F:
    """``attrs.evolve(instance, **changes)`` for this module's two frozen classes, for less than a
    third of its cost (callgrind: 20,000 instructions for an envelope's flush against 71,000):
    the fields not changed were checked when ``instance`` was made and cannot have changed
    since, so they are copied as one dict (the classes keep their fields in one, not in slots,
    for this) and only the changed ones go through their converter and validator. That holds
    because every validator of these classes looks at its own field alone. An envelope
    changes several times a message (a flush, each recipient's reply, the attempt's outcome)."""
    cls = type(instance)
    copy = object.__new__(cls)
    values = dict(instance.__dict__)
    fields = _fields(cls)
    checks: list[tuple[attrs.Attribute[Any], Callable[..., Any], Any]] = []
    for name, value in changes.items():
        field = fields.get(name)
        if field is None:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
        if field.converter is not None:
            value = cast("Callable[[Any], Any]", field.converter)(value)  # noqa: PLW2901
        if field.validator is not None:
            checks.append((field, field.validator, value))
        values[name] = value
    _SET(copy, "__dict__", values)
    if len(checks) > 1:  # in the fields' order, as evolve: the first bad one is the one named
        order = list(fields)
        checks.sort(key=lambda check: order.index(check[0].name))
    if checks and not attrs.validators.get_disabled():
        for field, validator, value in checks:
            validator(copy, field, value)
    return copy


def _made(cls: type[_F], values: dict[str, Any]) -> _F:
    """An instance of ``cls`` with every one of its fields in ``values``, each checked already
    as its converter and validator would (:func:`decode_envelope` checks each value as it reads
    it): not checked a second time, which cost a third of decoding an envelope."""
    instance = object.__new__(cls)
    _SET(instance, "__dict__", values)
    return instance


@attrs.frozen(slots=False)  # a dict of fields, for replaced()
class Recipient:
    """One RCPT TO address and its state; ``reply`` is the last answer about it.

    ``notified`` is set once a DSN has reported this recipient's outcome, so that it is reported
    exactly once however many attempts follow for the other recipients. ``notify`` and ``orcpt``
    are the RFC 3461 NOTIFY and ORCPT parameters when the message arrived with them.
    """

    address: str
    state: RecipientState = RecipientState.PENDING
    reply: Reply | None = None
    notified: bool = False
    updated: datetime | None = attrs.field(default=None, validator=_aware)
    notify: Notify | None = None
    orcpt: str | None = None

    @property
    def domain(self) -> str:
        """The recipient's domain, lower case, without a trailing dot."""
        return self.address.rpartition("@")[2].lower()

    def wants(self, kind: Notify) -> bool:
        """Whether this recipient's sender asked for ``kind`` of DSN (RFC 3461 NOTIFY)."""
        return kind in (DEFAULT_NOTIFY if self.notify is None else self.notify)


def _recipient_tuple(recipients: Iterable[Recipient]) -> tuple[Recipient, ...]:
    return tuple(recipients)


# One header field as the DKIM door stores it: a name, a colon, ASCII text, continuation lines
# (CRLF then a space or tab) and no final CRLF; nothing that could end the header block.
_HEADER_FIELD = re.compile(r"[!-9;-~]+:[\t -~]*(?:\r\n[\t ][\t -~]*)*")


def _header_fields(values: Iterable[str]) -> tuple[str, ...]:
    found = tuple(values)
    for value in found:
        if not isinstance(value, str) or not _HEADER_FIELD.fullmatch(value):
            raise ValueError(f"not one ASCII header field without its final CRLF: {value!r}")
    return found


@attrs.frozen(slots=False)  # a dict of fields, for replaced()
class Envelope:
    """A queued message's envelope and delivery history.

    ``sender`` is the MAIL FROM reverse-path; ``""`` is the null reverse-path ``<>`` of a DSN, which
    is never answered with another DSN. ``origin`` says where the message came from
    (``pickup:<file name>``, ``submit``, ``dsn:<queue id>``, ``smtp:<client address>``).
    ``envid`` and ``ret`` are the RFC 3461 ENVID and RET parameters when known; ``about`` says
    what a DSN reports, so a DSN that ends in BadMail names both failures. A held message
    (``held_since`` set) is never attempted and its time on hold does not count towards expiry
    (``held_time`` sums earlier holds). ``notice_at`` is when a delay DSN falls due if the
    message is still waiting then: the service wakes for it, not only at the next attempt.
    ``hops`` (the ``Received:`` fields) and ``eight_bit`` (an octet over 127 anywhere) describe
    the stored message when the writer knew them; ``None`` means "read the message to find out".
    ``local_faults`` counts the tries that failed on this side (the Drop file or the envelope
    could not be written: disk full, I/O error); they are not delivery ``attempts`` and do not
    move the retry schedule (``_core.states`` rule 9). ``dkim`` holds the ``DKIM-Signature``
    fields the Queue's door made for the stored message (each one whole, folded lines joined by
    CRLF, without its final CRLF; ASCII): the stored ``.eml`` never changes, so whoever writes
    the message out (SMTP, Drop, a DSN returning it) puts :attr:`prepend` in front of it.
    ``dot_lines`` is set by the writer that made every line end of the stored message CRLF
    (intake): then ``True`` when a line starts with "." (DATA must dot-stuff it, RFC 5321
    §4.5.2) and ``False`` when none does (the file goes out as it is); ``None``, from any
    other writer, means the transport checks the line ends and the dots itself.
    ``received_size`` is the size the message had when it was taken in (the Pickup file, the
    SMTP DATA), which the size limit applies to, as IIS applied it; ``size`` is the stored
    message's, with the fields intake added and CRLF line ends, which SMTP's ``SIZE=`` states.
    ``None`` (other writers, older files): ``size`` is both.
    """

    id: str
    sender: str
    recipients: tuple[Recipient, ...] = attrs.field(converter=_recipient_tuple)
    arrival: datetime = attrs.field(validator=_aware)
    next_attempt: datetime = attrs.field(validator=_aware)
    origin: str = ""
    size: int = 0
    attempts: int = 0
    first_attempt: datetime | None = attrs.field(default=None, validator=_aware)
    last_attempt: datetime | None = attrs.field(default=None, validator=_aware)
    delay_notified: bool = False
    dsn_count: int = 0
    held_since: datetime | None = attrs.field(default=None, validator=_aware)
    held_time: timedelta = timedelta(0)
    envid: str | None = None
    ret: Ret | None = None
    about: str = ""
    notice_at: datetime | None = attrs.field(default=None, validator=_aware)
    hops: int | None = None
    eight_bit: bool | None = None
    local_faults: int = 0
    dkim: tuple[str, ...] = attrs.field(default=(), converter=_header_fields)
    dot_lines: bool | None = None
    received_size: int | None = None

    @property
    def prepend(self) -> bytes:
        """What goes in front of the stored message when it leaves: the :attr:`dkim` fields,
        each ending in CRLF (``b""`` for an unsigned message)."""
        return b"".join(field.encode("ascii") + b"\r\n" for field in self.dkim)

    @property
    def held(self) -> bool:
        """Whether an operator put the message on hold (never attempted until released)."""
        return self.held_since is not None

    @property
    def retry_base(self) -> datetime:
        """The arrival time as the retry policy sees it: later by the time spent on hold."""
        return self.arrival + self.held_time

    @property
    def pending(self) -> tuple[Recipient, ...]:
        """The recipients still to be delivered, in envelope order."""
        return tuple(r for r in self.recipients if r.state is RecipientState.PENDING)

    def with_recipients(self, recipients: Iterable[Recipient]) -> Envelope:
        """This envelope with ``recipients`` instead of its own."""
        return replaced(self, recipients=tuple(recipients))


def new_envelope(
    queue_id: str,
    *,
    sender: str,
    recipients: Iterable[str | Recipient],
    now: datetime,
    origin: str,
    size: int = 0,
    head: bytes | None = None,
    eight_bit: bool | None = None,
    about: str = "",
    dkim: Iterable[str] = (),
    dot_lines: bool | None = None,
    hops: int | None = None,
    received_size: int | None = None,
) -> Envelope:
    """The first envelope of a message entering the spool: arrived ``now`` and due at once.

    The one place new envelopes are built (Pickup intake, DSNs, BadMail requeue and reports,
    and next the SMTP listener). ``recipients`` are addresses (pending) or whole
    :class:`Recipient` values (a BadMail envelope lists its failures); ``head`` is the stored
    message's header block, whose ``Received:`` fields are counted for the hop limit, unless
    the writer counted them already (``hops``); ``dkim`` the signature fields the Queue's door
    made for it; ``dot_lines`` what the writer knows of its lines (:class:`Envelope`).
    """
    return Envelope(
        id=queue_id,
        sender=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
        arrival=now,
        next_attempt=now,
        origin=origin,
        size=size,
        hops=hops if hops is not None or head is None else count_received(split_head(head)[0]),
        eight_bit=eight_bit,
        about=about,
        dkim=tuple(dkim),
        dot_lines=dot_lines,
        received_size=received_size,
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _notify_names(notify: Notify) -> list[str]:
    return [flag.name for flag in Notify if flag and flag in notify and flag.name] or ["NEVER"]


def _decode_notify(value: object, address: str) -> Notify | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EnvelopeError(f"recipient {address!r}: notify must be a list of names, not {value!r}")
    notify = Notify.NEVER
    for name in value:
        try:
            notify |= Notify[name]
        except KeyError:
            raise EnvelopeError(f"recipient {address!r}: unknown notify {name!r}") from None
    return notify


def encode_envelope(envelope: Envelope) -> bytes:
    """The envelope file's bytes (``Queue/ID.env``, ``BadMail/ID.BDP``)."""
    # Written field by field in the layout of json.dumps(data, ensure_ascii=False, indent=1)
    # for the data this function once built and dumped (a test holds the two together):
    # once per message queued, and at every hand-back.
    value, time = _value, _time_text
    recipients = envelope.recipients
    listed = (
        "[\n  " + ",\n  ".join(map(_recipient_text, recipients)) + "\n ]" if recipients else "[]"
    )
    ret = envelope.ret
    parts = [
        _HEAD,
        value(envelope.id),
        ',\n "sender": ',
        value(envelope.sender),
        ',\n "recipients": ',
        listed,
        ',\n "arrival": ',
        time(envelope.arrival),
        ',\n "next_attempt": ',
        time(envelope.next_attempt),
        ',\n "origin": ',
        value(envelope.origin),
        ',\n "size": ',
        value(envelope.size),
        ',\n "attempts": ',
        value(envelope.attempts),
        ',\n "first_attempt": ',
        time(envelope.first_attempt),
        ',\n "last_attempt": ',
        time(envelope.last_attempt),
        ',\n "delay_notified": ',
        value(envelope.delay_notified),
        ',\n "dsn_count": ',
        value(envelope.dsn_count),
        ',\n "held_since": ',
        time(envelope.held_since),
        ',\n "held_seconds": ',
        value(envelope.held_time.total_seconds()),
        ',\n "envid": ',
        value(envelope.envid),
        ',\n "ret": ',
        "null" if ret is None else value(ret.value),
        ',\n "about": ',
        value(envelope.about),
        ',\n "notice_at": ',
        time(envelope.notice_at),
        ',\n "hops": ',
        value(envelope.hops),
        ',\n "eight_bit": ',
        value(envelope.eight_bit),
        ',\n "local_faults": ',
        value(envelope.local_faults),
    ]
    if envelope.dot_lines is not None:  # absent when not known, as in older files
        parts += [',\n "dot_lines": ', value(envelope.dot_lines)]
    if envelope.received_size is not None:  # absent when the same as size, as in older files
        parts += [',\n "received_size": ', value(envelope.received_size)]
    if envelope.dkim:  # absent when unsigned: such a file is byte for byte what it was before
        parts += [',\n "dkim": ', _indented(list(envelope.dkim), 1)]
    parts.append("\n}\n")
    return "".join(parts).encode("utf-8")


def _recipient_text(recipient: Recipient) -> str:
    """One recipient of :func:`encode_envelope`, an object in the list (level 2)."""
    value, reply, notify = _value, recipient.reply, recipient.notify
    return "".join(
        (
            '{\n   "address": ',
            value(recipient.address, 3),
            ',\n   "state": ',
            value(recipient.state.value, 3),
            ',\n   "reply": ',
            "null" if reply is None else _indented(reply.to_json(), 3),
            ',\n   "notified": ',
            value(recipient.notified, 3),
            ',\n   "updated": ',
            _time_text(recipient.updated),
            ',\n   "notify": ',
            "null" if notify is None else _indented(_notify_names(notify), 3),
            ',\n   "orcpt": ',
            value(recipient.orcpt, 3),
            "\n  }",
        )
    )


def _value(item: object, level: int = 1) -> str:
    """One value as json writes it at ``level`` of nesting."""
    put = _SCALARS.get(type(item))
    return put(item) if put is not None else _other(item, level)


def _time_text(moment: datetime | None) -> str:
    # An isoformat is ASCII without '"' or '\\': nothing for JSON to escape.
    return "null" if moment is None else f'"{moment.isoformat()}"'


def _float(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else json.dumps(value)


# How json writes each scalar (ensure_ascii=False: strings through its C escaping).
_SCALARS: dict[type, Callable[[Any], str]] = {
    str: json.encoder.encode_basestring,
    int: int.__repr__,
    float: _float,
    bool: lambda value: "true" if value else "false",
    type(None): lambda _: "null",
}


_HEAD = (
    f'{{\n "format": {json.encoder.encode_basestring(_FORMAT)},\n "version": {ENVELOPE_VERSION},'
    '\n "id": '
)


def _indented(value: dict[str, Any] | list[Any], level: int = 0) -> str:
    """``json.dumps(value, ensure_ascii=False, indent=1)``, byte for byte, faster.

    An envelope is written at intake and at every hand-back, and json encodes with an indent
    in Python, one generator step per token (its C encoder knows no indent before 3.13); here
    each scalar is one C call (strings) or repr, found by its exact type. Envelopes hold dicts
    with string keys, lists, strings, integers, floats, booleans and None.
    """
    inner = level + 1
    pad = "\n" + " " * inner
    get, string = _SCALARS.get, _SCALARS[str]
    if isinstance(value, dict):
        if not value:
            return "{}"
        parts = [
            f"{string(key)}: {put(item) if (put := get(type(item))) else _other(item, inner)}"
            for key, item in value.items()
        ]
        return "{" + pad + ("," + pad).join(parts) + "\n" + " " * level + "}"
    if not value:
        return "[]"
    parts = [put(item) if (put := get(type(item))) else _other(item, inner) for item in value]
    return "[" + pad + ("," + pad).join(parts) + "\n" + " " * level + "]"


def _other(item: object, level: int) -> str:
    """A value that is no plain scalar: a container, or a subclass of a scalar."""
    if isinstance(item, dict | list | tuple):
        return _indented(item if isinstance(item, dict) else list(item), level)
    return json.dumps(item, ensure_ascii=False)


def _parse_time(value: object, field: str, *, optional: bool = False) -> datetime | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise EnvelopeError(f"field {field!r} must be an ISO 8601 time, not {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise EnvelopeError(f"field {field!r} is not an ISO 8601 time: {value!r}") from None
    if parsed.utcoffset() is None:
        raise EnvelopeError(f"field {field!r} has no time zone: {value!r}")
    return parsed


def _required_time(data: dict[str, Any], field: str) -> datetime:
    value = _parse_time(data.get(field), field)
    assert value is not None  # noqa: S101 (narrowing: _parse_time returns None only when optional)
    return value


def _typed(data: dict[str, Any], field: str, kind: type[_T], default: _T | None = None) -> _T:
    value = data.get(field, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EnvelopeError(f"field {field!r} must be {kind.__name__}, not {value!r}")
    return value


def _decode_recipient(item: object) -> Recipient:
    if not isinstance(item, dict):
        raise EnvelopeError(f"a recipient must be an object, not {item!r}")
    address = _typed(item, "address", str)
    try:
        state = RecipientState(item.get("state"))
    except ValueError:
        raise EnvelopeError(
            f"recipient {address!r} has an unknown state {item.get('state')!r}"
        ) from None
    raw_reply = item.get("reply")
    try:
        reply = None if raw_reply is None else Reply.from_json(raw_reply)
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"recipient {address!r} has an unreadable reply: {exc}") from None
    return _made(
        Recipient,
        {
            "address": address,
            "state": state,
            "reply": reply,
            "notified": _typed(item, "notified", bool, False),
            "updated": _parse_time(item.get("updated"), "updated", optional=True),
            "notify": _decode_notify(item.get("notify"), address),
            "orcpt": _optional_str(item, "orcpt"),
        },
    )


def _optional_str(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is not None and not isinstance(value, str):
        raise EnvelopeError(f"field {field!r} must be a string or null, not {value!r}")
    return value


def _count(data: dict[str, Any], field: str) -> int:
    """A count (``size``, ``attempts``...), 0 when absent: a negative one is damage, which
    would go out as ``SIZE=-1`` or make a message look tried less than never."""
    value = _typed(data, field, int, 0)
    if value < 0:
        raise EnvelopeError(f"field {field!r} must be a count, not {value!r}")
    return value


def _optional(data: dict[str, Any], field: str, kind: type[_T]) -> _T | None:
    value: object = data.get(field)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise EnvelopeError(f"field {field!r} must be a count or null, not {value!r}")
    if not isinstance(value, kind):
        raise EnvelopeError(f"field {field!r} must be {kind.__name__} or null, not {value!r}")
    return value


def decode_envelope(raw: bytes) -> Envelope:
    """Read an envelope file; anything but a whole envelope of a known version: EnvelopeError."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        # UnicodeDecodeError, JSONDecodeError, and an integer of more than 4,300 digits
        # (Python's int_max_str_digits), which json.loads refuses with a bare ValueError.
        raise EnvelopeError(f"not a JSON envelope (truncated or damaged?): {exc}") from None
    except RecursionError:  # the parser recurses: arrays nested thousands deep (planted)
        raise EnvelopeError("not a JSON envelope (nested too deep)") from None
    plain = _plain_envelope(data) if type(data) is dict else None
    return plain if plain is not None else _checked_envelope(data)


_STATES = {state.value: state for state in RecipientState}
_NO_TIME = timedelta(0)
_iso = datetime.fromisoformat


def _plain_time(value: object) -> datetime:
    """An aware time as the writer writes it; ``ValueError`` for anything else."""
    if type(value) is not str:
        raise ValueError(value)
    parsed = _iso(value)
    if parsed.tzinfo is None:  # fromisoformat gives a fixed offset or none
        raise ValueError(value)
    return parsed


def _plain_envelope(data: dict[str, Any]) -> Envelope | None:  # noqa: PLR0911 (a way out for each kind)
    """The envelope ``data`` holds, if it is the kind spoolmail writes for nearly every message:
    exact types, no NOTIFY, RET or DKIM fields. ``None`` at the first value that is not so,
    damaged or only less common: :func:`_checked_envelope` decides those and names what is wrong.

    Every message delivered decodes its envelope (a flush, the listener's messages in another
    worker): this checks the same things in one pass, without a function call a field, for about
    half the instructions of the general path. A property test holds the two to the same result.
    """
    get = data.get
    items = get("recipients")
    if get("format") != _FORMAT or get("version") != ENVELOPE_VERSION or type(items) is not list:
        return None
    try:
        recipients = []
        for item in items:
            if type(item) is not dict:
                return None
            value = item.get
            address, state, reply = value("address"), value("state"), value("reply")
            notified, updated, orcpt = value("notified", False), value("updated"), value("orcpt")
            if (
                type(address) is not str
                or type(state) is not str
                or (state := _STATES.get(state)) is None
                or type(notified) is not bool
                or value("notify") is not None
                or (orcpt is not None and type(orcpt) is not str)
            ):
                return None
            if reply is not None:
                if type(reply) is not dict:
                    return None
                reply = Reply.from_json(reply)
            fields = {
                "address": address,
                "state": state,
                "reply": reply,
                "notified": notified,
                "updated": None if updated is None else _plain_time(updated),
                "notify": None,
                "orcpt": orcpt,
            }
            recipients.append(_made(Recipient, fields))
        ident, sender, origin, about = get("id"), get("sender"), get("origin", ""), get("about", "")
        size, attempts, dsns = get("size", 0), get("attempts", 0), get("dsn_count", 0)
        faults, hops, held = get("local_faults", 0), get("hops"), get("held_seconds", 0)
        notified, envid = get("delay_notified", False), get("envid")
        eight_bit, dot_lines = get("eight_bit"), get("dot_lines")
        received = get("received_size")
        if (
            type(ident) is not str
            or type(sender) is not str
            or type(origin) is not str
            or type(about) is not str
            or type(size) is not int
            or type(attempts) is not int
            or type(dsns) is not int
            or type(faults) is not int
            or min(size, attempts, dsns, faults) < 0
            or type(notified) is not bool
            or (hops is not None and (type(hops) is not int or hops < 0))
            or (envid is not None and type(envid) is not str)
            or (eight_bit is not None and type(eight_bit) is not bool)
            or (dot_lines is not None and type(dot_lines) is not bool)
            or (received is not None and (type(received) is not int or received < 0))
            or get("ret") is not None
            or get("dkim") is not None
        ):
            return None
        if held == 0 and type(held) in (int, float):
            held_time = _NO_TIME
        elif type(held) in (int, float) and 0 <= held < 1e10:  # as _seconds
            held_time = timedelta(seconds=float(held))
        else:
            return None
        times = [get(name) for name in _TIMES]
        arrival, next_attempt, first, last, held_since, notice_at = [
            None if value is None else _plain_time(value) for value in times
        ]
        if arrival is None or next_attempt is None:
            return None
    except (KeyError, TypeError, ValueError, OverflowError):
        return None  # the general path says what is wrong
    fields = {
        "id": ident,
        "sender": sender,
        "recipients": tuple(recipients),
        "arrival": arrival,
        "next_attempt": next_attempt,
        "origin": origin,
        "size": size,
        "attempts": attempts,
        "first_attempt": first,
        "last_attempt": last,
        "delay_notified": notified,
        "dsn_count": dsns,
        "held_since": held_since,
        "held_time": held_time,
        "envid": envid,
        "ret": None,
        "about": about,
        "notice_at": notice_at,
        "hops": hops,
        "eight_bit": eight_bit,
        "local_faults": faults,
        "dkim": (),
        "dot_lines": dot_lines,
        "received_size": received,
    }
    return _made(Envelope, fields)


_TIMES = ("arrival", "next_attempt", "first_attempt", "last_attempt", "held_since", "notice_at")


def _checked_envelope(data: object) -> Envelope:
    """The envelope ``data`` holds, every value checked and named if wrong (the general path)."""
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise EnvelopeError('not a spoolmail envelope (no "format": "spoolmail-envelope")')
    if data.get("version") != ENVELOPE_VERSION:
        raise EnvelopeError(
            f"envelope version {data.get('version')!r} is not one this release reads "
            f"(it reads version {ENVELOPE_VERSION})"
        )
    recipients = data.get("recipients")
    if not isinstance(recipients, list):
        # Empty is allowed: a BadMail envelope (.BDP) of a file without recipients has none.
        raise EnvelopeError("an envelope needs a list of recipients")
    return _made(
        Envelope,
        {
            "id": _typed(data, "id", str),
            "sender": _typed(data, "sender", str),
            "recipients": tuple(_decode_recipient(item) for item in recipients),
            "arrival": _required_time(data, "arrival"),
            "next_attempt": _required_time(data, "next_attempt"),
            "origin": _typed(data, "origin", str, ""),
            "size": _count(data, "size"),
            "attempts": _count(data, "attempts"),
            "first_attempt": _parse_time(data.get("first_attempt"), "first_attempt", optional=True),
            "last_attempt": _parse_time(data.get("last_attempt"), "last_attempt", optional=True),
            "delay_notified": _typed(data, "delay_notified", bool, False),
            "dsn_count": _count(data, "dsn_count"),
            "held_since": _parse_time(data.get("held_since"), "held_since", optional=True),
            "held_time": timedelta(seconds=_seconds(data.get("held_seconds", 0))),
            "envid": _optional_str(data, "envid"),
            "ret": _decode_ret(data.get("ret")),
            "about": _typed(data, "about", str, ""),
            "notice_at": _parse_time(data.get("notice_at"), "notice_at", optional=True),
            "hops": _optional(data, "hops", int),
            "eight_bit": _optional(data, "eight_bit", bool),
            "local_faults": _count(data, "local_faults"),  # absent in older files: none
            "dkim": _decode_dkim(data.get("dkim")),  # absent: unsigned (or an older file)
            "dot_lines": _optional(data, "dot_lines", bool),  # absent: not known
            "received_size": _optional(data, "received_size", int),  # absent: size
        },
    )


def _decode_dkim(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise EnvelopeError(f"field 'dkim' must be a list of header fields, not {value!r}")
    try:
        return _header_fields(value)
    except ValueError as exc:
        raise EnvelopeError(f"field 'dkim': {exc}") from None


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e10:
        raise EnvelopeError(f"field 'held_seconds' must be a number of seconds, not {value!r}")
    return float(value)


def _decode_ret(value: object) -> Ret | None:
    if value is None:
        return None
    try:
        return Ret(value)
    except ValueError:
        raise EnvelopeError(f"field 'ret' must be FULL or HDRS, not {value!r}") from None


def read_due(raw: bytes) -> tuple[datetime, bool]:
    """Only what the schedule needs from an envelope file: when it is due, and whether held.

    Due is the next attempt, or the delay notice time if that comes first.

    The start-up scan reads every envelope in the Queue; a full :func:`decode_envelope` of each
    costs twice as much. Damage that this does not notice is found by the full decode when the
    message is attempted, and the message moved aside then.
    """
    try:
        data = json.loads(raw)
    except ValueError as exc:  # as decode_envelope: an integer too long to read too
        raise EnvelopeError(f"not a JSON envelope (truncated or damaged?): {exc}") from None
    except RecursionError:
        raise EnvelopeError("not a JSON envelope (nested too deep)") from None
    if not isinstance(data, dict) or data.get("version") != ENVELOPE_VERSION:
        raise EnvelopeError("not a spoolmail envelope of a version this release reads")
    due = _required_time(data, "next_attempt")
    notice = _parse_time(data.get("notice_at"), "notice_at", optional=True)
    return min(due, notice) if notice else due, data.get("held_since") is not None
