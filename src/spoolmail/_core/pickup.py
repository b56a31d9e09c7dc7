"""Pickup files: reading one into an envelope and a message to queue, or into a reason for BadMail.

:func:`parse_pickup` reads the bytes of one file dropped into ``Pickup/`` (by .NET's
``SmtpClient``, CDO, a script, a Drop file moved back, or :func:`render_pickup`) and returns either
:class:`PickupAccepted` (MAIL FROM, RCPT TOs, the message to write to ``Queue/ID.eml``) or
:class:`PickupRejected` (one sentence and an RFC 3463 status for ``BadMail/ID.BDR``). It never
raises for any input bytes. The message is handled as lines, not through ``email.parser``: every
header the writer wrote is stored byte-for-byte (only line ends become CRLF, and a line over 998
octets is folded), minus the envelope lines and ``Bcc:``, plus a ``Received:`` line on top and
``Message-ID:`` / ``Date:`` when missing.
:func:`render_pickup` writes the same format for ``Spool.submit``. Pure: it never touches a file,
the network or a clock; the time and the queue id are handed in.

Rules (docs/design.md#pickup-intake; docs/migrating.md for IIS):

- Leading ``x-sender:`` / ``x-receiver:`` lines (any case, folded or not) are the envelope, as IIS
  and Exchange read them (KB Q201314, CDO ``recipientlist``). Only the run at the very top counts:
  Eudora and others write an informational ``X-Sender:`` among ordinary headers, which is kept.
- Without them, the sender is ``Sender:``, else the first ``From:`` address (KB Q201314); the
  recipients are ``To:`` + ``Cc:`` + ``Bcc:`` (in that order, duplicates dropped).
- Everything up to the first empty line must be header fields (RFC 5322 section 2.2) and there is
  no NUL anywhere; otherwise the file is rejected with the line number, never repaired by guessing.
- A header line over 998 octets (section 2.1.1; Mono's ``SmtpClient`` writes 60 recipients on one
  ``To:`` line) is folded before the message is stored, into lines of about 78 octets where it can
  be: before white space, or after a comma between addresses (adding one space, which is CFWS
  there). A line with no such place within 998 octets is rejected. Envelope lines may be as long
  as they like: they are read, never stored. Body lines are not touched.
- Limits: ``max_message_size`` (IIS 2,048 KB) and ``max_recipients`` (10,000, the top of Exchange's
  ``PickupDirectoryMaxRecipientsPerMessage`` range; IIS itself had no pickup limit and split
  transactions at 100, which the SMTP client does here too).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

import attrs

from spoolmail._core.address import (
    AddressRole,
    format_path,
    parse_address_list,
    parse_domain,
    parse_mailbox,
)
from spoolmail._core.headers import crlf_lines
from spoolmail.exceptions import ConfigurationError, MessageError

__all__ = [
    "BodyRejected",
    "PickupAccepted",
    "PickupBody",
    "PickupOptions",
    "PickupRejected",
    "parse_pickup",
    "pickup_head_end",
    "render_pickup",
]

# RFC 5322 section 2.2: a field name is printable US-ASCII (33..126) except ':'.
_FIELD_NAME_BYTES = bytes(range(33, 127)).replace(b":", b"")
# RFC 5322 section 2.1.1: a line is at most 998 characters, CRLF excluded, and SHOULD be at most 78;
# a header line over the first is folded, into lines within the second where it can be.
_MAX_LINE = 998
_FOLD_TO = 78
_ENVELOPE_FIELDS = (b"x-sender", b"x-receiver")
# The address headers this module reads; RFC 6532 lets them carry UTF-8 and nothing else.
_ADDRESS_FIELDS = (b"sender", b"from", b"to", b"cc", b"bcc")
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")
# RFC 5322 sections 3.6.2, 3.6.3 and 3.6.6: the address-list fields, where CFWS may follow the comma
# between two addresses, so a fold may be made there (by adding a space) even without white space.
_ADDRESS_LIST_FIELDS = frozenset(
    {b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"}
    | {b"resent-from", b"resent-sender", b"resent-to", b"resent-cc", b"resent-bcc"}
)
# A field's first line, as _header_line_problem reads one: a name of those bytes, white space
# (RFC 5322 section 4.5.8, obsolete syntax), the colon; the name is group 1, the colon at end - 1.
_FIELD_START = re.compile(rb"([!-9;-~]+)[ \t]*:")
# Where a fold may go: before a run of white space that has text after it on the line (RFC 5322
# section 2.2.3: folding inserts CRLF before WSP), so no line is white space alone (section 3.2.2).
_WHITE_RUN = re.compile(rb"[ \t]+(?=[^ \t])")
# What changes the meaning of a comma in an address list: quoted strings, comments, domain
# literals and the quoted-pair backslash inside the first two (RFC 5322 sections 3.2.1 to 3.2.4).
_LIST_SPECIALS = re.compile(rb'[",()\[\]\\]')


def _check_host(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        parse_domain(value)
    except MessageError as exc:
        raise ConfigurationError(f"PickupOptions.{attribute.name}: {exc}") from None


def _check_positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigurationError(f"PickupOptions.{attribute.name} must be at least 1, not {value}")


@attrs.frozen
class PickupOptions:
    """How Pickup files are read; the defaults are IIS's.

    ``fqdn`` names this host in the ``Received:`` line and in generated Message-IDs;
    ``default_domain`` completes addresses written without one (IIS's default domain, KB
    Q221384's ``x-sender: Sender``). ``dot_stuffed=True`` is IIS 5+'s ``DisablePickupDotStuff=0``
    (KB Q286358), for .NET Framework writers; the default takes files as .NET Core 3+ writes them.
    """

    fqdn: str = attrs.field(validator=_check_host)
    default_domain: str = attrs.field(validator=_check_host)
    max_message_size: int = attrs.field(default=2 * 1024 * 1024, validator=_check_positive)
    dot_stuffed: bool = False
    max_recipients: int = attrs.field(default=10_000, validator=_check_positive)


@attrs.frozen
class PickupAccepted:
    """A Pickup file that can be queued: its envelope and the bytes for ``Queue/ID.eml``.

    ``sender`` is ``""`` for the null reverse-path; ``recipients`` are de-duplicated, order kept.
    ``hops`` is the number of ``Received:`` fields the stored message has (spoolmail's own
    included): the hop count (RFC 5321 section 6.3), counted while reading, not read again.
    """

    sender: str
    recipients: tuple[str, ...]
    message: bytes
    hops: int = 1


@attrs.frozen
class PickupRejected:
    """A Pickup file that goes to BadMail: why, as one sentence and an RFC 3463 status code.

    ``sender`` and ``recipients`` are whatever was read before the file was found wrong, for the
    BadMail envelope (``None`` / empty when nothing was).
    """

    reason: str
    status: str
    sender: str | None
    recipients: tuple[str, ...]


class _Rejection(Exception):
    def __init__(self, reason: str, status: str, *, note: str = "") -> None:
        # ``note``: what this file adds to a reason that is otherwise always the same.
        super().__init__(reason + note)
        self.reason = reason + note
        self.status = status


class _Field:
    """One header field: ``lines[first:end]``, its lower-cased name and the offset of its colon."""

    __slots__ = ("colon", "end", "first", "name")

    def __init__(self, name: bytes, first: int, end: int, colon: int) -> None:
        self.name = name
        self.first = first
        self.end = end
        self.colon = colon

    @property
    def line_number(self) -> int:
        return self.first + 1


@attrs.define
class _Found:
    """What has been read so far, so a rejection can still name the sender and recipients."""

    sender: str | None = None
    recipients: dict[str, None] = attrs.Factory(dict)  # a dict keeps order and drops duplicates


def parse_pickup(
    raw: bytes, *, options: PickupOptions, queue_id: str, now: datetime
) -> PickupAccepted | PickupRejected:
    """Read one Pickup file. Never raises for any ``raw``; every problem is a PickupRejected.

    ``queue_id`` and ``now`` feed the ``Message-ID:``, ``Date:`` and ``Received:`` lines spoolmail
    adds; ``now`` should be an aware datetime.
    """
    found = _Found()
    try:
        message, hops = _parse(raw, options=options, queue_id=queue_id, now=now, found=found)
    except _Rejection as rejection:
        return PickupRejected(
            reason=rejection.reason,
            status=rejection.status,
            sender=found.sender,
            recipients=tuple(found.recipients),
        )
    assert found.sender is not None  # noqa: S101 (narrowing: _parse rejects a missing sender)
    return PickupAccepted(
        sender=found.sender, recipients=tuple(found.recipients), message=message, hops=hops
    )


def _parse(
    raw: bytes, *, options: PickupOptions, queue_id: str, now: datetime, found: _Found
) -> tuple[bytes, int]:
    """The message to store and its ``Received:`` count."""
    lines = _split_lines(raw, options=options)
    fields, blank, problem = _read_header_block(lines)
    envelope_count = 0
    while envelope_count < len(fields) and fields[envelope_count].name in _ENVELOPE_FIELDS:
        envelope_count += 1
    envelope, headers = fields[:envelope_count], fields[envelope_count:]
    if problem is not None:
        # Name whatever envelope the top of the file has in the BadMail envelope, then give up.
        with contextlib.suppress(_Rejection):
            _read_envelope(lines, envelope, options=options, found=found)
        raise problem
    if not fields:
        raise _Rejection(
            "the file has no header fields (it starts with an empty line), so no sender or "
            "recipient",
            "5.6.0",
        )
    _read_envelope(lines, envelope, options=options, found=found)
    for field in headers:
        if field.name in _ADDRESS_FIELDS:
            _decode(lines, field, status="5.6.0")
    if found.sender is None:
        found.sender = _sender_from_headers(lines, headers, options=options)
    receivers = any(field.name == b"x-receiver" for field in envelope)
    if not receivers:
        for name in _RECIPIENT_FIELDS:
            for field in headers:
                if field.name == name:
                    _add_recipients(lines, field, options=options, found=found)
    _check_envelope(found, receivers=receivers, options=options, lines=lines, headers=headers)
    message = _store(lines, headers, blank, options=options, queue_id=queue_id, now=now)
    return message, 1 + sum(field.name == b"received" for field in headers)


def _split_lines(raw: bytes, *, options: PickupOptions) -> list[bytes]:
    """The file's lines without their ends, after the checks that need no parsing."""
    # Size first, before any copy is made (IIS "Limit message size"; KB Q201314: larger files are
    # not picked up).
    if len(raw) > options.max_message_size:
        raise _Rejection(
            f"the file is {len(raw)} bytes, over the message size limit of "
            f"{options.max_message_size} bytes",
            "5.3.4",
        )
    if not raw:
        raise _Rejection("the file is empty", "5.6.0")
    # bytes.splitlines breaks at CRLF, LF and a lone CR, and only there: exactly the line ends a
    # Windows, Unix or old Mac writer may have used. This is the one copy of the input.
    lines = raw.splitlines()
    if b"\0" in raw:
        number = next(n for n, line in enumerate(lines, 1) if b"\0" in line)
        raise _Rejection(f"line {number} contains a NUL byte; a message is text", "5.6.0")
    return lines


def _late_note(lines: list[bytes], headers: list[_Field], name: bytes) -> str:
    """Why a reason naming no ``name`` line is right although the file has one: below the run
    at the top it is an ordinary header (Eudora's X-Sender), so the writer is told where it is."""
    field = next((field for field in headers if field.name == name), None)
    if field is None:
        return ""
    return (
        f"; {_label(lines, field)} comes after a header field, so it is a header, not the "
        "envelope (x-sender and x-receiver lines go at the very top)"
    )


def _check_envelope(
    found: _Found,
    *,
    receivers: bool,
    options: PickupOptions,
    lines: list[bytes],
    headers: list[_Field],
) -> None:
    if found.sender is None:
        # KB Q319285: "A message must contain at least three parts: From, To, and Message Data."
        raise _Rejection(
            "no sender: the file has no x-sender line and no Sender: or From: header",
            "5.1.7",
            note=_late_note(lines, headers, b"x-sender"),
        )
    if not found.recipients:
        if receivers:
            raise _Rejection("no recipient: the x-receiver lines hold only empty groups", "5.1.3")
        raise _Rejection(
            "no recipient: the file has no x-receiver line and no address in a To:, Cc: or Bcc: "
            "header",
            "5.1.3",
            note=_late_note(lines, headers, b"x-receiver"),
        )
    if len(found.recipients) > options.max_recipients:
        raise _Rejection(
            f"the file has {len(found.recipients)} recipients, over the limit of "
            f"{options.max_recipients}",
            "5.5.3",
        )


def _read_header_block(
    lines: list[bytes],
) -> tuple[list[_Field], int | None, _Rejection | None]:
    """The header fields up to the first empty line, that line's index (None: no body) and the
    first problem found, if any (with the fields before it, so the envelope can still be read).
    """
    starts: list[tuple[bytes, int, int]] = []
    blank: int | None = None
    problem: _Rejection | None = None
    field_start = _FIELD_START.match
    index = 0
    for index, line in enumerate(lines):
        if not line:
            blank = index
            break
        if line[0] in b" \t":
            if starts:
                continue  # a continuation line
        elif found := field_start(line):
            starts.append((found.group(1).lower(), index, found.end() - 1))
            continue
        # Not a field: the checks below say why, in words.
        reason = _header_line_problem(line, number=index + 1, continues=bool(starts))
        problem = _Rejection(reason or f"line {index + 1} is not a header field", "5.6.0")
        break
    else:
        index = len(lines)
    if not starts:
        return [], blank, problem
    # A field runs to the next field, or to the line where the header block ended.
    ends = [start for _, start, _ in starts[1:]] + [index]
    fields = [
        _Field(name=name, first=first, end=end, colon=colon)
        for (name, first, colon), end in zip(starts, ends, strict=True)
    ]
    return fields, blank, problem


def _header_line_problem(line: bytes, *, number: int, continues: bool) -> str | None:
    """Why a non-empty line in the header block is not part of a header field, or None.

    Its length is not checked here: a long line is folded when stored (:func:`_fold_field`).
    :data:`_FIELD_START` says the same of a field's first line, at once.
    """
    if line[0] in b" \t":
        if continues:
            return None
        return (
            f"line {number} starts with white space, a folded continuation, but no header "
            "field comes before it"
        )
    colon = line.find(b":")
    # RFC 5322 section 4.5.8 (obsolete syntax) allows white space before the colon.
    name = line[:colon].rstrip(b" \t") if colon > 0 else b""
    if not name or name.translate(None, _FIELD_NAME_BYTES):
        return (
            f"line {number} is not a header field (no blank line separates the headers from "
            "the body?)"
        )
    return None


def _raw_value(lines: list[bytes], field: _Field) -> bytes:
    # RFC 5322 section 2.2.3: unfolding removes the line breaks and keeps the white space.
    first = lines[field.first][field.colon + 1 :]
    if field.end == field.first + 1:
        return first
    return first + b"".join(lines[field.first + 1 : field.end])


def _label(lines: list[bytes], field: _Field) -> str:
    """How a reason names a field: ``the To: header (line 5)``, ``the X-Receiver line 2``."""
    name = lines[field.first][: field.colon].rstrip(b" \t").decode("ascii")
    if field.name in _ENVELOPE_FIELDS:
        return f"the {name} line {field.line_number}"
    return f"the {name}: header (line {field.line_number})"


def _decode(lines: list[bytes], field: _Field, *, status: str) -> str:
    try:
        return _raw_value(lines, field).decode("utf-8")
    except UnicodeDecodeError:
        raise _Rejection(
            f"{_label(lines, field)} is not valid UTF-8 (RFC 6532 allows UTF-8 only; "
            "8-bit text in an address header must be RFC 2047-encoded)",
            status,
        ) from None


def _read_envelope(
    lines: list[bytes], envelope: list[_Field], *, options: PickupOptions, found: _Found
) -> None:
    senders = [field for field in envelope if field.name == b"x-sender"]
    if len(senders) > 1:
        numbers = ", ".join(str(field.line_number) for field in senders)
        raise _Rejection(
            f"the file has {len(senders)} x-sender lines (lines {numbers}); a message has one "
            "sender",
            "5.1.7",
        )
    for field in envelope:
        if field.name == b"x-sender":
            value = _decode(lines, field, status="5.1.7")
            if not value.strip(" \t"):
                raise _Rejection(
                    f"{_label(lines, field)} is empty (the null reverse-path is written <>)",
                    "5.1.7",
                )
            try:
                found.sender = parse_mailbox(
                    value, default_domain=options.default_domain, role=AddressRole.SENDER
                )
            except MessageError as exc:
                raise _Rejection(f"bad sender in {_label(lines, field)}: {exc}", "5.1.7") from None
        else:
            value = _decode(lines, field, status="5.1.3")
            if not value.strip(" \t"):
                raise _Rejection(f"{_label(lines, field)} is empty", "5.1.3")
            # One address per line as IIS documents, but a comma-separated list is accepted too
            # (llatinov/AutomationSMTPServer writes one `x-receiver: a,b` line).
            _add_recipients(lines, field, options=options, found=found, value=value)


def _add_recipients(
    lines: list[bytes],
    field: _Field,
    *,
    options: PickupOptions,
    found: _Found,
    value: str | None = None,
) -> None:
    if value is None:
        value = _decode(lines, field, status="5.1.3")
    try:
        addresses = parse_address_list(value, default_domain=options.default_domain)
    except MessageError as exc:
        raise _Rejection(f"bad recipient in {_label(lines, field)}: {exc}", "5.1.3") from None
    for address in addresses:
        found.recipients[address] = None


def _sender_from_headers(
    lines: list[bytes], headers: list[_Field], *, options: PickupOptions
) -> str | None:
    # KB Q201314: "If both the Sender and From fields are present … will take the Sender field";
    # .NET writes Sender: first for exactly that reason. An empty Sender: falls back to From:.
    for name in (b"sender", b"from"):
        field = next((field for field in headers if field.name == name), None)
        if field is None:
            continue
        try:
            addresses = parse_address_list(
                _decode(lines, field, status="5.6.0"),
                default_domain=options.default_domain,
                role=AddressRole.SENDER,
            )
        except MessageError as exc:
            raise _Rejection(f"bad sender in {_label(lines, field)}: {exc}", "5.1.7") from None
        if addresses:
            return addresses[0]
    return None


def _store(
    lines: list[bytes],
    headers: list[_Field],
    blank: int | None,
    *,
    options: PickupOptions,
    queue_id: str,
    now: datetime,
) -> bytes:
    """The message for the queue: Received on top, the writer's headers as written, the body."""
    fqdn = options.fqdn.encode("utf-8")
    date = _date_text(now)
    # IIS's own pickup stamp, folded as IIS folded it:
    # "Received: from mail pickup service by hotmail.com with Microsoft SMTPSVC;" CRLF TAB SP date.
    out = [b"Received: from mail pickup service by " + fqdn + b" with spoolmail;", b"\t " + date]
    # The fields are the lines from the first to the block's end: kept all at once when no
    # Bcc goes and no line is folded (nearly every file), else field by field.
    block = lines[headers[0].first : headers[-1].end] if headers else []
    if (
        all(field.name != b"bcc" for field in headers)
        and max(map(len, block), default=0) <= _MAX_LINE
    ):
        out.extend(block)
        headers_left: list[_Field] = []
    else:
        headers_left = headers
    for field in headers_left:
        # Bcc is an envelope matter (RFC 5322 section 3.6.3); IIS reportedly leaked it via Pickup.
        if field.name == b"bcc":
            continue
        kept = lines[field.first : field.end]
        if any(len(line) > _MAX_LINE for line in kept):
            out.extend(_fold_field(lines, field))
        else:
            out.extend(kept)
    names = {field.name for field in headers}
    if b"message-id" not in names:
        out.append(b"Message-ID: <" + queue_id.encode("ascii", "replace") + b"@" + fqdn + b">")
    if b"date" not in names:
        out.append(b"Date: " + date)
    if blank is not None:
        out.append(b"")
        body = lines[blank + 1 :]
        if options.dot_stuffed:
            body = list(_unstuff(body))
        out.extend(body)
    out.append(b"")  # so that join ends the last line with CRLF without another copy
    return b"\r\n".join(out)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _date_text(now: datetime) -> bytes:
    """``email.utils.format_datetime(now)`` (RFC 5322 section 3.3), written at once for UTC."""
    if now.utcoffset() != _ZERO:
        # Imported here: a clock not in UTC is rare, and the email package is a tenth of the
        # start-up of `spoolmail sendmail`, which parses each message as intake will.
        import email.utils  # noqa: PLC0415

        return email.utils.format_datetime(now).encode("ascii")
    return (
        f"{_DAYS[now.weekday()]}, {now.day:02d} {_MONTHS[now.month - 1]} {now.year:04d} "
        f"{now.hour:02d}:{now.minute:02d}:{now.second:02d} +0000"
    ).encode("ascii")


def _fold_field(lines: list[bytes], field: _Field) -> list[bytes]:
    """The field's lines with each line over 998 octets folded; a line that cannot be is rejected.

    Lines within the limit are kept as written. Unfolding the result (RFC 5322 section 2.2.3)
    gives the value as written, except in an address list, where a space may follow a comma
    that had none: CFWS there, so the addresses are the same.
    """
    commas = field.name in _ADDRESS_LIST_FIELDS
    out: list[bytes] = []
    state = _ListState()
    for number, line in enumerate(lines[field.first : field.end], field.line_number):
        # No fold before the colon (the name would break) or inside a continuation's leading
        # white space (the line before would be white space alone).
        start = (
            field.colon + 1 if number == field.line_number else len(line) - len(line.lstrip(b" \t"))
        )
        after_commas = _list_commas(line, start, state) if commas else []
        if len(line) <= _MAX_LINE:
            out.append(line)
            continue
        folded = _fold_line(line, start=start, after_commas=after_commas)
        if folded is None:
            places = "white space or a comma between addresses" if commas else "white space"
            raise _Rejection(
                f"line {number} is {len(line)} octets long, over the {_MAX_LINE} a line may have "
                f"(RFC 5322 section 2.1.1), and {_label(lines, field)} has no {places} to fold "
                f"it at within {_MAX_LINE} octets",
                "5.6.0",
            )
        out.extend(folded)
    return out


@attrs.define
class _ListState:
    """Where an address list scan is, carried from line to line of one field."""

    quoted: bool = False
    comments: int = 0
    literal: bool = False


def _list_commas(line: bytes, start: int, state: _ListState) -> list[int]:
    """The offsets just after each comma of ``line`` that separates addresses and has no white
    space after it: the places a fold may add a space (RFC 5322 section 3.4, ``address-list``).

    A comma inside a quoted string, a comment or a domain literal is text, not a separator;
    adding a space there would change a display name. One pass over the special characters only.
    """
    found: list[int] = []
    escaped_until = -1  # a quoted-pair: the character after a backslash is taken literally
    for match in _LIST_SPECIALS.finditer(line, start):
        at = match.start()
        if at < escaped_until:
            continue
        char = line[at : at + 1]
        if char == b"\\":
            if state.quoted or state.comments:
                escaped_until = at + 2
        elif state.quoted:
            state.quoted = char != b'"'
        elif state.comments:
            state.comments += {b"(": 1, b")": -1}.get(char, 0)
        elif state.literal:
            state.literal = char != b"]"
        elif char == b",":
            if at + 1 < len(line) and line[at + 1] not in b" \t":
                found.append(at + 1)
        else:  # an opening character starts its part; a stray closing one is just text
            state.quoted, state.comments, state.literal = (
                char == b'"',
                int(char == b"("),
                char == b"[",
            )
    return found


def _fold_line(line: bytes, *, start: int, after_commas: list[int]) -> list[bytes] | None:
    """``line`` as lines of at most 998 octets (78 where the places allow), or None.

    A fold goes before a run of white space at or after ``start``, or at an offset in
    ``after_commas``, where the new line starts with an added space. Each line takes the
    farthest place within 78 octets, else the nearest one; a gap wider than 998 octets
    between two places cannot be folded by any choice, so the greedy walk is exact. Linear in
    the length of the line (a header block may be 1 MiB).
    """
    places = sorted(
        [(match.start(), False) for match in _WHITE_RUN.finditer(line, start)]
        + [(offset, True) for offset in after_commas]
    )
    out: list[bytes] = []
    begin, added = 0, 0  # where the current line starts in ``line``; 1 if it starts with a space
    index = 0
    while len(line) - begin + added > _FOLD_TO:
        while index < len(places) and places[index][0] <= begin:
            index += 1
        if index == len(places):
            break
        chosen = index
        while chosen + 1 < len(places) and places[chosen + 1][0] - begin + added <= _FOLD_TO:
            chosen += 1
        offset, space = places[chosen]
        if offset - begin + added > _MAX_LINE:
            return None
        out.append(b" " * added + line[begin:offset])
        begin, added = offset, int(space)
        index = chosen + 1
    if len(line) - begin + added > _MAX_LINE:
        return None
    out.append(b" " * added + line[begin:])
    return out


def _unstuff(body: list[bytes]) -> Iterator[bytes]:
    # KB Q286358: IIS 5+ with DisablePickupDotStuff=0 removes the first "." of a line, the
    # reverse of RFC 5321 section 4.5.2 transparency, which .NET Framework applied to the file.
    for line in body:
        yield line[1:] if line[:1] == b"." else line


_LINE_END = re.compile(rb"\r\n|\r|\n")
_ZERO = timedelta(0)


def pickup_head_end(buffer: bytes, *, complete: bool) -> int | None:
    """Where the body of a Pickup file begins: just past its first empty line, or ``None``.

    ``buffer`` is the file's beginning; ``complete`` says it is the whole file. ``None`` means
    no empty line yet (read more), or none at all when complete (a file of headers only). A
    lone CR at the end of an incomplete buffer may be half of a CRLF, so it waits for more.
    """
    # Nearly every file ends each line with CRLF: its first empty line is its first CRLF CRLF
    # (or a CRLF at the very start), when nothing before it is a lone CR or LF.
    if buffer.startswith(b"\r\n"):
        return 2
    blank = buffer.find(b"\r\n\r\n")
    if blank >= 0:
        crlf = buffer.count(b"\r\n", 0, blank + 2)
        if buffer.count(b"\r", 0, blank + 2) == crlf == buffer.count(b"\n", 0, blank + 2):
            return blank + 4
    start = 0
    for match in _LINE_END.finditer(buffer):
        if match.group() == b"\r" and match.end() == len(buffer) and not complete:
            return None
        if match.start() == start:
            return match.end()
        start = match.end()
    return None


class BodyRejected(Exception):
    """A body that cannot be queued (a NUL byte); ``reason`` and ``status`` as PickupRejected."""

    def __init__(self, reason: str, status: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class PickupBody:
    """Streams a Pickup file's body into the stored message, chunk by chunk.

    Line ends become CRLF (a lone CR or LF counts, as in the header block), a leading "." is
    removed when ``dot_stuffed`` (KB Q286358), and a NUL byte raises :class:`BodyRejected`
    naming its line (``first_line`` is the body's first line number in the file). Memory stays
    one chunk however large the message: the header block is parsed by :func:`parse_pickup`,
    the body never is. ``eight_bit`` tells, once fed, whether the body has an octet over 127,
    and ``dot_lines`` whether a line of the stored body starts with "." (which DATA will have
    to dot-stuff; without one, the stored file is its own DATA).
    """

    def __init__(self, *, first_line: int, dot_stuffed: bool) -> None:
        self._line = first_line
        self._dot_stuffed = dot_stuffed
        self._pending_cr = False
        self._at_line_start = True
        self.eight_bit = False
        self.dot_lines = False
        self._stored_line_start = True  # the stored bytes so far end a line

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # Half of a CRLF, perhaps: decided with the next chunk (or by finish).
            chunk, self._pending_cr = chunk[:-1], True
        if not chunk:
            return b""
        # Most writers end every line with CRLF: such a chunk is stored as it is.
        lines = crlf_lines(chunk)
        if lines is None:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            lines = chunk.count(b"\n")
        nul = chunk.find(b"\0")
        if nul >= 0:
            number = self._line + chunk.count(b"\n", 0, nul)
            raise BodyRejected(f"line {number} contains a NUL byte; a message is text", "5.6.0")
        self._line += lines
        if not self.eight_bit and not chunk.isascii():
            self.eight_bit = True
        ends_line = chunk.endswith(b"\r\n")
        if self._dot_stuffed:
            # KB Q286358: IIS 5+ with DisablePickupDotStuff=0 removes the first "." of a line,
            # the reverse of RFC 5321 section 4.5.2 transparency that .NET Framework applied.
            if self._at_line_start and chunk.startswith(b"."):
                chunk = chunk[1:]
            chunk = b"\r\n".join(chunk.split(b"\r\n."))
        self._at_line_start = ends_line
        if chunk:
            if not self.dot_lines:
                # Found early in a message that has one; a whole search (0.7 ms a MiB) only
                # for a message without, which then costs no work at all when sent.
                starts = self._stored_line_start and chunk.startswith(b".")
                self.dot_lines = starts or chunk.find(b"\r\n.") >= 0
            self._stored_line_start = chunk.endswith(b"\r\n")
        return chunk

    def finish(self) -> bytes:
        """What is left: a CR held back, or the CRLF that ends an unterminated last line."""
        if self._pending_cr:
            self._pending_cr = False
            self._at_line_start = True
            return b"\r\n"
        return b"" if self._at_line_start else b"\r\n"


def render_pickup(
    message: bytes,
    *,
    sender: str | None,
    recipients: Sequence[str] | None,
    dot_stuffed: bool = False,
) -> bytes:
    """Write a Pickup file: ``x-sender`` / ``x-receiver`` lines, then the message with CRLF ends.

    ``sender=None`` and ``recipients=None`` (or empty) leave that part of the envelope to the
    message's headers. When any envelope line is written, the message's own leading
    ``x-sender`` / ``x-receiver`` lines (a Drop file being re-sent) are dropped: the caller's
    envelope replaces them. ``dot_stuffed=True`` doubles a leading "." on body lines, for a spool
    whose ``PickupOptions.dot_stuffed`` is on. Raises :class:`MessageError` for a sender or
    recipient that is not a plain address (``a@b``, ``""`` for the null sender).
    """
    envelope: list[bytes] = []
    if sender is not None:
        envelope.append(b"x-sender: " + _path(sender, role=AddressRole.SENDER))
    envelope.extend(
        b"x-receiver: " + _path(recipient, role=AddressRole.RECIPIENT)
        for recipient in recipients or ()
    )
    lines = message.splitlines()
    skip = 0
    if envelope:
        skip = _leading_envelope_lines(lines)
    out = envelope
    in_body = False
    for line in lines[skip:] if skip else lines:
        if in_body and dot_stuffed and line[:1] == b".":
            out.append(b"." + line)
            continue
        if not line:
            in_body = True
        out.append(line)
    out.append(b"")
    return b"\r\n".join(out)


def _path(address: str, *, role: AddressRole) -> bytes:
    # The address must come back unchanged from parse_pickup: it is checked by reading its path.
    # Without a default domain, a bare local part is refused rather than completed here.
    path = format_path(address)
    parse_mailbox(path, default_domain=None, role=role)
    return path.encode("utf-8")


def _leading_envelope_lines(lines: list[bytes]) -> int:
    """How many lines at the top are x-sender / x-receiver fields and their continuations."""
    count = 0
    in_envelope = False
    for line in lines:
        if in_envelope and line[:1] in (b" ", b"\t"):
            count += 1
            continue
        name = line.partition(b":")[0].rstrip(b" \t").lower()
        if b":" not in line or name not in _ENVELOPE_FIELDS:
            break
        in_envelope = True
        count += 1
    return count
