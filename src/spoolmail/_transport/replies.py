"""Reading what an SMTP server says: bytes in, complete replies (or a reason to stop) out.

:class:`ReplyReader` takes the server's bytes as they arrive and returns complete replies
(RFC 5321 §4.2), bounded in line length, lines and octets; whatever a server sends ends in a
reply or in :class:`BadReply`, never in anything else. :class:`SmtpExtensions` reads an EHLO
reply's lines. It reads only the bytes and text handed to it, writes nothing, and never touches
a socket, a clock or the spool.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from spoolmail._core.reply import Reply

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "MAX_REPLY_OCTETS",
    "BadReply",
    "ReplyReader",
    "ServerReply",
    "SmtpExtensions",
    "parse_reply_line",
    "printable",
]

# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers exceed it in EHLO and 5xx
# texts, so tolerate four times that. The bound is about memory, not pedantry.
MAX_REPLY_LINE = 2048
# A multiline reply longer than this is a server that will never stop talking.
MAX_REPLY_LINES = 100
MAX_REPLY_OCTETS = 64 * 1024
# RFC 5321 §4.2: Reply-code [ SP textstring ] CRLF, with "-" instead of SP on all but the last line.
_REPLY_LINE = re.compile(rb"([0-9]{3})(?:([ -])(.*))?", re.DOTALL)
# RFC 1870 §3: the SIZE parameter is a decimal number; ASCII digits only ("²".isdigit() is true
# and int("²") raises), and few enough of them to be a size.
_SIZE_PARAMETER = re.compile(r"[0-9]{1,20}")


@attrs.frozen(kw_only=True)
class SmtpExtensions:
    """What a server announced in its EHLO reply (RFC 5321 §4.1.1.1); after HELO, nothing.

    ``size`` is the SIZE limit in octets: ``None`` when SIZE was not announced, ``0`` when it was
    announced without a fixed limit (RFC 1870 §3). ``auth`` holds the SASL mechanisms offered
    (RFC 4954 §3), upper-cased.
    """

    esmtp: bool = False
    size: int | None = None
    eight_bit_mime: bool = False
    smtputf8: bool = False
    pipelining: bool = False
    starttls: bool = False
    auth: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()

    @classmethod
    def from_ehlo(cls, lines: Sequence[str]) -> SmtpExtensions:
        """Read the text of an EHLO reply's lines: the first names the server, each next one is
        ``KEYWORD [params]``."""
        announced: dict[str, list[str]] = {}
        for line in lines[1:]:
            words = line.split()
            if not words:
                # Postfix's smtp-sink ends its EHLO reply with "250 " and nothing after it: no
                # extension, and no reason to refuse the rest.
                continue
            keyword, *params = words
            # Some old servers announce "AUTH=LOGIN" beside (or instead of) "AUTH LOGIN".
            keyword, _, inline = keyword.partition("=")
            announced.setdefault(keyword.upper(), []).extend(
                [inline, *params] if inline else params
            )
        return cls(
            esmtp=True,
            size=_size_limit(announced["SIZE"]) if "SIZE" in announced else None,
            eight_bit_mime="8BITMIME" in announced,
            smtputf8="SMTPUTF8" in announced,
            pipelining="PIPELINING" in announced,
            starttls="STARTTLS" in announced,
            auth=frozenset(p.upper() for p in announced.get("AUTH", ())),
            keywords=frozenset(announced),
        )


def _size_limit(params: Sequence[str]) -> int:
    # RFC 1870 §3: "SIZE" alone or "SIZE 0" means no fixed maximum; a value we cannot read is
    # treated the same, since the server will still say 552 if the message is too big.
    return int(params[0]) if params and _SIZE_PARAMETER.fullmatch(params[0]) else 0


@attrs.frozen
class ServerReply:
    """One complete reply as received: its code and the text of each line."""

    code: int
    lines: tuple[str, ...]

    def to_reply(self, host: str) -> Reply:
        first = Reply.parse(self.code, self.lines[0], host=host)
        if len(self.lines) == 1:
            return first  # nearly every reply: the one below would be this one again
        texts = [first.text]
        for line in self.lines[1:]:
            # Multiline replies often repeat the enhanced code on every line (RFC 2034 §4).
            head, _, rest = line.partition(" ")
            texts.append(rest if first.enhanced and head == first.enhanced else line)
        return Reply(self.code, first.enhanced, " ".join(t for t in texts if t), host=host)


def parse_reply_line(line: bytes) -> tuple[int, bool, str] | None:
    """``(code, more lines follow, text)`` for one reply line without its CRLF; ``None`` if it is
    not a reply line at all."""
    match = _REPLY_LINE.fullmatch(line)
    if match is None:
        return None
    code = int(match.group(1))
    if not 200 <= code <= 599:
        return None
    text = (match.group(3) or b"").decode("utf-8", "replace")
    return code, match.group(2) == b"-", text


class BadReply(Exception):
    """What the server sent cannot be read as a reply; the text says why."""


class ReplyReader:
    """Sans-IO reply reading (RFC 5321 §4.2): bytes from the server in, complete replies out.

    :meth:`feed` takes bytes as they arrive; :meth:`next_line` returns the next line without its
    line end, or ``None`` until one is complete; :meth:`take` adds a line to the reply being read
    and returns the reply once its last line is in. Whatever a server sends ends in a reply or
    in :class:`BadReply`: a line that is not a reply line (empty, no code, a code outside
    200-599), a change of code within a reply, a line over :data:`MAX_REPLY_LINE` octets, or a
    multiline reply that goes on past :data:`MAX_REPLY_LINES` lines or
    :data:`MAX_REPLY_OCTETS` octets. Text that is not UTF-8 is decoded with replacement
    characters. Memory is bounded by those limits, and nothing here raises anything else.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []
        self._octets = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def unread(self) -> bytes:
        """What was received and not read yet: nearly always nothing."""
        return bytes(self._buffer) if self._buffer else b""

    def discard(self) -> int:
        """Forget everything received and not yet read; return how many octets that was."""
        stale = len(self._buffer)
        self._buffer.clear()
        self._start()
        return stale

    def _start(self) -> None:
        self._code = None
        self._lines = []
        self._octets = 0

    def next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n", 0, MAX_REPLY_LINE)
        if end >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            # A bare LF is taken as the end of a reply line: leniency here costs nothing.
            return line.rstrip(b"\n").removesuffix(b"\r")
        if len(self._buffer) >= MAX_REPLY_LINE:
            self.discard()
            raise BadReply(f"a line longer than {MAX_REPLY_LINE} octets")
        return None

    def take(self, line: bytes) -> ServerReply | None:
        if self._code is None and line[3:4] == b" " and line[:3].isdigit():
            # A reply of one line, nearly every one: what the general path below makes of it.
            code = int(line[:3])
            if 200 <= code <= 599:
                return ServerReply(
                    code, (printable(line[4:].decode("utf-8", "replace"), limit=1000),)
                )
        parsed = parse_reply_line(line)
        if parsed is None:
            self._start()
            shown = printable(line.decode("utf-8", "replace"), limit=80)
            raise BadReply(f'garbage ("{shown}")')
        code, more, text = parsed
        if self._code is not None and code != self._code:
            # RFC 5321 §4.2.1: every line of a multiline reply carries the same code.
            problem = f"lines with codes {self._code} and {code}"
            self._start()
            raise BadReply(problem)
        self._code = code
        self._lines.append(printable(text, limit=1000))
        self._octets += len(line) + 2
        if not more:
            reply = ServerReply(code, tuple(self._lines))
            self._start()
            return reply
        if len(self._lines) >= MAX_REPLY_LINES or self._octets >= MAX_REPLY_OCTETS:
            # A reply that never ends: stop reading, and let the host be tried again later.
            self._start()
            raise BadReply(
                f"a reply of more than {MAX_REPLY_LINES} lines or {MAX_REPLY_OCTETS} octets"
            )
        return None


def printable(text: str, *, limit: int = 200) -> str:
    """``text`` made safe for one transcript line or reply text: no control characters, bounded."""
    if len(text) <= limit and text.isprintable():
        return text  # nearly always: one C call instead of one per character
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")
