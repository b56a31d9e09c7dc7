"""Drop files: local delivery in the exact shape IIS wrote, so Drop-folder consumers keep working.

A Drop file is the envelope as leading ``x-sender:`` / ``x-receiver:`` lines (one per local
recipient, lower case as IIS wrote them), the message's DKIM fields (kept in the envelope) and
its header block, then ``Return-Path:`` and ``X-OriginalArrivalTime:`` at the end of the header
block (where IIS put them), the empty line and the body. KB 306043: a Drop file moved back into
Pickup is sent again to its envelope, so the envelope lines must round-trip through
``pickup.parse_pickup``. :func:`render_drop_head` builds everything up to the body; the store
streams the body after it. Pure: bytes and times in, bytes out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from spoolmail._core.headers import fields, without_fields
from spoolmail.exceptions import MessageError

__all__ = ["filetime", "original_arrival_time", "render_drop_head", "unwritable"]

# 100-nanosecond intervals between 1601-01-01 (the Windows FILETIME epoch) and 1970-01-01.
_FILETIME_EPOCH = 116_444_736_000_000_000
# Delivery adds these afresh; a message that passed through a Drop folder before (KB 306043
# round trip) must not carry two of each. RFC 5321 section 4.4: Return-Path is added at final
# delivery only.
_DELIVERY_FIELDS = ("return-path", "x-originalarrivaltime")
# What parse_pickup reads as the envelope when it leads the file (KB 306043).
_ENVELOPE_FIELDS = ("x-sender", "x-receiver")
# What an address in an envelope line may not hold: the controls the address parser refuses (TAB
# is folding white space). A line break would end the x-sender or x-receiver line early and start
# a header field of its own; the intake and the listener never let one in, so only a damaged or
# hand-edited envelope file (a BadMail .BDP requeued) can bring it here.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def filetime(when: datetime) -> int:
    """``when`` as a Windows FILETIME: 100 ns intervals since 1601-01-01 UTC."""
    delta = when.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return _FILETIME_EPOCH + micros * 10


def original_arrival_time(when: datetime) -> str:
    """IIS's ``X-OriginalArrivalTime`` value: ``05 May 2018 17:46:55.0692 (UTC) FILETIME=[lo:hi]``.

    IIS printed milliseconds in four digits (``.0692`` is 692 ms) and the FILETIME of the same
    millisecond: three real IIS headers (iis-smtp notes, section 3 and 6) match this to the bit.
    """
    utc = when.astimezone(UTC)
    utc = utc.replace(microsecond=utc.microsecond // 1000 * 1000)
    stamp = utc.strftime("%d %b %Y %H:%M:%S")
    ticks = filetime(utc)
    return (
        f"{stamp}.{utc.microsecond // 1000:04d} (UTC) "
        f"FILETIME=[{ticks & 0xFFFFFFFF:08X}:{ticks >> 32:08X}]"
    )


def _path(address: str) -> str:
    return f"<{address}>" if address else "<>"


def unwritable(address: str) -> bool:
    """Whether ``address`` holds a control character, and so cannot be an envelope line."""
    return _CONTROL.search(address) is not None


def _checked(address: str, role: str) -> str:
    if unwritable(address):
        raise MessageError(
            f"the {role} {address!r} contains a control character: it cannot be written into an "
            "envelope line (the envelope file is damaged)"
        )
    return address


def render_drop_head(
    head: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
    arrival: datetime,
    prepend: bytes = b"",
) -> bytes:
    """The Drop file up to and including the empty line before the body.

    ``head`` is the stored message's header block (CRLF lines, ending in CRLF); ``prepend``
    the fields that go in front of it as the message leaves the Queue (its ``DKIM-Signature``
    fields, kept in the envelope), so a Drop reader, or a relay the file is handed on to, sees
    the signed message. The sender is written bare, as IIS wrote it, or ``<>`` for the null
    reverse-path (a DSN), which ``parse_pickup`` reads back as the null sender. An address with
    a control character raises :class:`MessageError` and nothing is written: it would inject a
    header field.
    """
    lines = [f"x-sender: {_checked(sender, 'sender') or '<>'}\r\n".encode()]
    lines.extend(
        f"x-receiver: {_checked(address, 'recipient')}\r\n".encode() for address in recipients
    )
    lines.append(prepend)
    kept = without_fields(head, _DELIVERY_FIELDS)
    if kept and not kept.endswith((b"\n", b"\r")):
        # A message that ends inside its header block, without a line end (Spool.admit stores
        # what it is given): the field after it would be glued onto its last line.
        kept += b"\r\n"
    return_path = f"Return-Path: {_path(sender)}\r\n".encode()
    first = next(fields(kept), None)
    if not prepend and first is not None and first.key in _ENVELOPE_FIELDS:
        # A message admitted without a Received field of its own may begin with an x-sender or
        # x-receiver field, which parse_pickup would read as more envelope when the file goes
        # back into Pickup. Return-Path ends the envelope lines instead: at the top, where RFC
        # 5321 section 4.4 puts it anyway.
        lines += [return_path, kept]
    else:
        lines += [kept, return_path]
    lines.append(f"X-OriginalArrivalTime: {original_arrival_time(arrival)}\r\n\r\n".encode())
    return b"".join(lines)
