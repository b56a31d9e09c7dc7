"""Header blocks of stored messages, read as lines and kept byte for byte.

Stored messages (``Queue/ID.eml``) have CRLF line ends. This module splits a message's header
block into fields (name plus the raw lines, continuation lines included), counts ``Received:``
fields for the hop limit, and rebuilds a block without chosen fields. It never re-folds or
re-encodes what it keeps (the ``email`` package's generator would). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

import attrs

__all__ = [
    "HEAD_END",
    "Field",
    "count_received",
    "crlf_lines",
    "fields",
    "has_long_line",
    "header_block",
    "split_head",
    "without_fields",
]

HEAD_END = b"\r\n\r\n"

_Octets = TypeVar("_Octets", bytes, bytearray)

# Every octet but CR and LF: what crlf_lines deletes to keep a block's line ends alone.
_NOT_LINE_ENDS = bytes(octet for octet in range(256) if octet not in b"\r\n")
# What those line ends are when every one is a CRLF, for blocks of up to 256 KiB of lines.
_CRLFS = b"\r\n" * (128 * 1024)
# A CR that something other than an LF follows (the engine looks for CRs as fast as memchr).
_CR_ALONE = re.compile(rb"\r[^\n]")


def crlf_lines(block: bytes | bytearray) -> int | None:
    """How many CRLFs ``block`` has when every CR and LF in it is part of one, else ``None``.

    In C and without an object for each line (splitting a block into its lines and joining
    them again made some 20,000 a MiB): the CRs and LFs alone, kept by one ``translate``, must
    be CRLF after CRLF, and no CR may have anything but an LF right after it (a CR and an LF
    apart from each other alternate as well).
    """
    ends = block.translate(None, _NOT_LINE_ENDS)
    size = len(ends)
    if size & 1 or ends != (_CRLFS[:size] if size <= len(_CRLFS) else b"\r\n" * (size >> 1)):
        return None
    if size and _CR_ALONE.search(block) is not None:
        return None
    return size >> 1


def has_long_line(data: bytes | bytearray, limit: int) -> bool:
    """Whether a line of ``data`` (split at CRLF) is longer than ``limit`` octets.

    Without an object for each line (``data.split(b"\r\n")`` made some 15,000 a MiB): a line
    of ``limit + 1`` octets or more holds a whole aligned block of ``(limit + 2) // 2`` octets,
    so only a block with no CRLF in it can be part of one; nearly every block of a message has
    one (``find`` in C), and the line around a block without is measured.
    """
    step = (limit + 2) // 2
    size = len(data)
    find = data.find
    for start in range(0, size - step + 1, step):
        if find(b"\r\n", start, start + step) >= 0:
            continue
        begin = data.rfind(b"\r\n", 0, start + 1)
        begin = 0 if begin < 0 else begin + 2
        end = find(b"\r\n", start)
        if (size if end < 0 else end) - begin > limit:
            return True
    return False


@attrs.frozen
class Field:
    """One header field: its name as written and its raw bytes (every line, each ending CRLF)."""

    name: str
    raw: bytes

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def value(self) -> str:
        """The unfolded value, decoded as UTF-8 (RFC 6532) with bad bytes replaced."""
        _, _, value = self.raw.partition(b":")
        text = value.decode("utf-8", "replace")
        return " ".join(text.split())


def split_head(message: bytes) -> tuple[bytes, bytes]:
    """Split a CRLF message into its header block (ending in CRLF) and its body.

    A message without an empty line is all header block.
    """
    index = message.find(HEAD_END)
    if index < 0:
        return message, b""
    return message[: index + 2], message[index + 4 :]


def header_block(message: _Octets) -> _Octets:
    """``split_head(message)[0]`` without the copy of the body (a MiB for a MiB's message)."""
    index = message.find(HEAD_END)
    return message if index < 0 else message[: index + 2]


def fields(head: bytes) -> Iterator[Field]:
    """The fields of a header block, in order; lines before the first field name are skipped."""
    name: str | None = None
    lines: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and name is not None:
            lines.append(line)
            continue
        if name is not None:
            yield Field(name, b"".join(lines))
        head_name, colon, _ = line.partition(b":")
        if colon:
            name, lines = head_name.decode("ascii", "replace").strip(), [line]
        else:
            name, lines = None, []
    if name is not None:
        yield Field(name, b"".join(lines))


def count_received(head: bytes) -> int:
    """How many ``Received:`` fields the block has: the hop count (RFC 5321 section 6.3).

    Once per message queued: the lines are read as :func:`fields` reads them, without
    building a :class:`Field` for every field.
    """
    count = 0
    in_field = False
    for line in head.splitlines():
        if in_field and line[:1] in (b" ", b"\t"):
            continue  # a continuation line
        name, colon, _ = line.partition(b":")
        in_field = bool(colon)
        if in_field and name.decode("ascii", "replace").strip().lower() == "received":
            count += 1
    return count


def without_fields(head: bytes, names: Iterable[str]) -> bytes:
    """The header block with every field named in ``names`` (any case) removed."""
    drop = {name.lower() for name in names}
    return b"".join(field.raw for field in fields(head) if field.key not in drop)
