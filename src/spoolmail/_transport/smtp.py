"""The SMTP client: hands one queued message to one host and keeps the connection for the next.

:class:`SmtpTransport` implements the :class:`~spoolmail._transport.base.Transport` seam with its
own client on :mod:`socket` and :mod:`ssl` rather than :mod:`smtplib` (whose unbounded reads and
exception-shaped outcomes do not suit a queue that must never hang): greeting, EHLO with a HELO
fallback, STARTTLS as the target's :class:`~spoolmail._core.routing.TlsPolicy` says (RFC 3207),
AUTH PLAIN or LOGIN over TLS only (RFC 4954), MAIL with SIZE, BODY=8BITMIME and SMTPUTF8 when they
apply, RCPT per recipient (pipelined when the server offers PIPELINING, RFC 2920, and at most
``max_recipients`` per transaction), and DATA streamed from the stored file with dot-stuffing and
CRLF line ends, in constant memory. It reads the message only through ``Outgoing.open`` (once per
transaction, plus a first pass looking for 8-bit octets when the server offers 8BITMIME, and one
through the header section looking for UTF-8, which needs SMTPUTF8, unless the envelope says the
message is all ASCII); it writes the commands and replies of the dialogue (never message
content, never a password) into the :class:`~spoolmail._core.transcript.Transcript` it is
handed, and answers every recipient with a :class:`~spoolmail._core.reply.Reply`: a refused,
stalled, dropped, babbling or unverifiable server is a temporary reply, not an exception.
Replies are read by a sans-IO reader (bytes in, replies out, bounded in lines and octets) that
turns whatever a server sends into a reply or into a reason to try the host again later. It
never touches the spool, does no DNS of its own (a host name goes to the system resolver inside
:func:`socket.create_connection`, whose wait no timeout here bounds; MX lookups and literal
addresses are the router's and the resolver's job) and keeps no state beyond the connections it
holds open for reuse.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import BinaryIO

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail.exceptions import ConfigurationError, TransportError

__all__ = ["DataEncoder", "SmtpExtensions", "SmtpTimeouts", "SmtpTransport"]

# Message data is read and sent in blocks of this size, so memory stays flat whatever the size.
_CHUNK = 64 * 1024
# A kept connection used this recently is reused without an RSET probe first (seconds).
_FRESH = 2.0
# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers exceed it in EHLO and 5xx
# texts, so tolerate four times that. The bound is about memory, not pedantry.
_MAX_REPLY_LINE = 2048
# A multiline reply longer than this is a server that will never stop talking.
_MAX_REPLY_LINES = 100
_MAX_REPLY_OCTETS = 64 * 1024
# RFC 5321 §4.2: Reply-code [ SP textstring ] CRLF, with "-" instead of SP on all but the last line.
_REPLY_LINE = re.compile(rb"([0-9]{3})(?:([ -])(.*))?", re.DOTALL)
# RFC 5321 §2.3.8: CR and LF occur only together; a bare CR or LF in a stored file ends a line too.
_LINE_END = re.compile(rb"\r\n|\r|\n")
# RFC 1870 §3: the SIZE parameter is a decimal number; ASCII digits only ("²".isdigit() is true
# and int("²") raises), and few enough of them to be a size.
_SIZE_PARAMETER = re.compile(r"[0-9]{1,20}")
# Control characters can never be part of a path (RFC 5321 §4.1.2: qtextSMTP and quoted-pairSMTP
# are printable), and CR or LF in one would smuggle a command into the session.
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f]")
_HELO_NAME = re.compile(r"[A-Za-z0-9.\-\[\]:]+")
# RFC 2920 §3.1: a client whose writes block "MUST ... make sure that each group of commands fits
# entirely within the [TCP] window", "usually, but not always, 4K octets", or client and server
# can each block writing to the other. Longer transactions go in several groups, each one's
# replies read before the next is written.
_PIPELINE_WINDOW = 4096
# IIS's "Limit number of recipients per message" default, and RFC 5321 §4.5.3.1.8's minimum that
# every server must accept in one transaction.
_MAX_RECIPIENTS = 100
# The "(_ssl.c:1006)" OpenSSL's messages end with tells an operator nothing.
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"SmtpTimeouts.{attribute.name} must be above 0 s, not {value!r}")


def _not_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ConfigurationError(f"SmtpTimeouts.{attribute.name} cannot be negative: {value!r}")


@attrs.frozen(kw_only=True)
class SmtpTimeouts:
    """How long to wait at each step, in seconds.

    The defaults are RFC 5321 §4.5.3.2's minimums. ``connect`` (30 s, Postfix's
    ``smtp_connect_timeout``), ``rset`` (20 s, Postfix's ``smtp_rset_timeout``) and ``quit`` are not
    in the RFC: RSET only probes a kept connection, and a 221 to QUIT decides nothing, so neither is
    worth minutes. ``starttls`` bounds the reply to STARTTLS and each wait of the TLS handshake
    (300 s, Postfix's ``smtp_starttls_timeout``); ``auth`` each reply during AUTH (RFC 4954 sets
    none; as long as EHLO's). ``idle`` is how long an unused connection is kept for the next
    message to the same host (0: never keep one).
    """

    connect: float = attrs.field(default=30.0, converter=float, validator=_positive)
    greeting: float = attrs.field(default=300.0, converter=float, validator=_positive)  # §4.5.3.2.1
    ehlo: float = attrs.field(default=300.0, converter=float, validator=_positive)
    mail: float = attrs.field(default=300.0, converter=float, validator=_positive)  # §4.5.3.2.2
    rcpt: float = attrs.field(default=300.0, converter=float, validator=_positive)  # §4.5.3.2.3
    data_start: float = attrs.field(default=120.0, converter=float, validator=_positive)  # .2.4
    data_block: float = attrs.field(default=180.0, converter=float, validator=_positive)  # .2.5
    data_end: float = attrs.field(default=600.0, converter=float, validator=_positive)  # .2.6
    starttls: float = attrs.field(default=300.0, converter=float, validator=_positive)
    auth: float = attrs.field(default=300.0, converter=float, validator=_positive)
    rset: float = attrs.field(default=20.0, converter=float, validator=_positive)
    quit: float = attrs.field(default=5.0, converter=float, validator=_positive)
    idle: float = attrs.field(default=30.0, converter=float, validator=_not_negative)


_RFC_TIMEOUTS = SmtpTimeouts()


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


class DataEncoder:
    """Turns stored message bytes into DATA bytes, block by block, in constant memory.

    Every line end becomes CRLF (RFC 5321 §2.3.8: CR and LF only ever travel together, so a bare LF
    or CR in the file ends a line), and a line that starts with "." gets one more (§4.5.2). Both
    work across block boundaries: the encoder remembers whether its output ended a line, and holds
    back a trailing CR until it sees whether an LF follows. :meth:`finish` returns the rest and the
    terminating ``CRLF.CRLF``, without doubling a CRLF the message already ends with.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._held_cr = False

    def encode(self, block: bytes) -> bytes:
        if self._held_cr:
            block = b"\r" + block
            self._held_cr = False
        if block.endswith(b"\r"):
            block = block[:-1]
            self._held_cr = True
        if not block:
            return b""
        out = _LINE_END.sub(b"\r\n", block).replace(b"\r\n.", b"\r\n..")
        if self._line_start and out.startswith(b"."):
            out = b"." + out
        self._line_start = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        if self._held_cr:
            self._held_cr = False
            self._line_start = True
            return b"\r\n.\r\n"
        return b".\r\n" if self._line_start else b"\r\n.\r\n"


class _SessionError(TransportError):
    """The session can go no further; ``reply`` answers every recipient not answered yet."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class _HandshakeFailed(_SessionError):
    """The TLS handshake failed; the connection is unusable (opportunistic TLS may try again in
    plain text on a new one)."""


@attrs.frozen
class _ServerReply:
    """One complete reply as received: its code and the text of each line."""

    code: int
    lines: tuple[str, ...]

    def to_reply(self, host: str) -> Reply:
        first = Reply.parse(self.code, self.lines[0], host=host)
        texts = [first.text]
        for line in self.lines[1:]:
            # Multiline replies often repeat the enhanced code on every line (RFC 2034 §4).
            head, _, rest = line.partition(" ")
            texts.append(rest if first.enhanced and head == first.enhanced else line)
        return Reply(self.code, first.enhanced, " ".join(t for t in texts if t), host=host)


def _parse_reply_line(line: bytes) -> tuple[int, bool, str] | None:
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


class _BadReply(Exception):
    """What the server sent cannot be read as a reply; the text says why."""


class _ReplyReader:
    """Sans-IO reply reading (RFC 5321 §4.2): bytes from the server in, complete replies out.

    :meth:`feed` takes bytes as they arrive; :meth:`next_line` returns the next line without its
    line end, or ``None`` until one is complete; :meth:`take` adds a line to the reply being read
    and returns the reply once its last line is in. Whatever a server sends ends in a reply or
    in :class:`_BadReply`: a line that is not a reply line (empty, no code, a code outside
    200-599), a change of code within a reply, a line over :data:`_MAX_REPLY_LINE` octets, or a
    multiline reply that goes on past :data:`_MAX_REPLY_LINES` lines or
    :data:`_MAX_REPLY_OCTETS` octets. Text that is not UTF-8 is decoded with replacement
    characters. Memory is bounded by those limits, and nothing here raises anything else.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []
        self._octets = 0

    def feed(self, data: bytes) -> None:
        self._buffer += data

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
        end = self._buffer.find(b"\n", 0, _MAX_REPLY_LINE)
        if end >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            # A bare LF is taken as the end of a reply line: leniency here costs nothing.
            return line.rstrip(b"\n").removesuffix(b"\r")
        if len(self._buffer) >= _MAX_REPLY_LINE:
            self.discard()
            raise _BadReply(f"a line longer than {_MAX_REPLY_LINE} octets")
        return None

    def take(self, line: bytes) -> _ServerReply | None:
        parsed = _parse_reply_line(line)
        if parsed is None:
            self._start()
            shown = _printable(line.decode("utf-8", "replace"), limit=80)
            raise _BadReply(f'garbage ("{shown}")')
        code, more, text = parsed
        if self._code is not None and code != self._code:
            # RFC 5321 §4.2.1: every line of a multiline reply carries the same code.
            problem = f"lines with codes {self._code} and {code}"
            self._start()
            raise _BadReply(problem)
        self._code = code
        self._lines.append(_printable(text, limit=1000))
        self._octets += len(line) + 2
        if not more:
            reply = _ServerReply(code, tuple(self._lines))
            self._start()
            return reply
        if len(self._lines) >= _MAX_REPLY_LINES or self._octets >= _MAX_REPLY_OCTETS:
            # A reply that never ends: stop reading, and let the host be tried again later.
            self._start()
            raise _BadReply(
                f"a reply of more than {_MAX_REPLY_LINES} lines or {_MAX_REPLY_OCTETS} octets"
            )
        return None


def _printable(text: str, *, limit: int = 200) -> str:
    """``text`` made safe for one transcript line or reply text: no control characters, bounded."""
    if len(text) <= limit and text.isprintable():
        return text  # nearly always: one C call instead of one per character
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _where(target: Target) -> str:
    if target.name and target.name != target.host:
        return f"{target.name}[{target.host}]:{target.port}"
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"


def _tls_name(target: Target) -> str:
    """The name the certificate must carry: the host name the target was found under, as
    Postfix's "verify" level matches the MX or smart host name (``smtp_tls_verify_cert_match =
    hostname``), or the address itself for a literal."""
    if target.literal or not target.name:
        return target.host
    return target.name


def _unverified_context() -> ssl.SSLContext:
    """Encryption without authentication (RFC 7435 §1.3: opportunistic security protects
    against passive eavesdropping, and a certificate check would turn most MX hosts' self-signed
    or mismatched certificates back into plain text). TLS 1.0 and 1.1 are refused (RFC 8996)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _handshake_problem(error: BaseException, timeout: float) -> str:
    if isinstance(error, ssl.SSLError):
        return _SSL_SOURCE.sub("", str(error)) or type(error).__name__
    if isinstance(error, TimeoutError):
        return f"no progress within {timeout:g} s"
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    return str(error) or type(error).__name__


_NAME_FIELDS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


def _distinguished_name(name: object) -> str:
    """``CN=mx.example.net, O=Example`` from :meth:`ssl.SSLSocket.getpeercert`'s nested tuples."""
    parts = []
    if isinstance(name, tuple):
        for rdn in name:
            for key, value in rdn:
                parts.append(f"{_NAME_FIELDS.get(key, key)}={value}")
    return ", ".join(parts) or "(empty)"


class _Session:
    """One open connection to one target: a bounded line reader, commands and replies.

    Every socket operation has a deadline. Any failure raises :class:`_SessionError` with the
    temporary reply that describes it and marks the session unusable, so it is neither reused nor
    sent a QUIT. Replies go to the transcript handed to each call (``None`` when closing a
    connection outside any delivery).
    """

    def __init__(self, sock: socket.socket, *, target: Target) -> None:
        self._sock = sock
        self._reader = _ReplyReader()
        self.target = target
        self.extensions = SmtpExtensions()
        self.encrypted = False
        self.usable = True
        self.last_used = 0.0
        # Whether no transaction is open or left over: the last one ended with a 2xx to the
        # final "." or to RSET, or none began. A session that is not clean starts its next
        # transaction with RSET (RFC 5321 §4.1.1.5).
        self.clean = True

    @classmethod
    def connect(cls, target: Target, *, timeout: float, transcript: Transcript) -> _Session:
        where = _where(target)
        transcript.note(f"connecting to {where}")
        try:
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
        except socket.gaierror as error:
            # RFC 3463 X.4.3: the directory (name) service could not be used.
            raise _SessionError(
                Reply(
                    451,
                    "4.4.3",
                    f"cannot resolve {target.host}: {error.strerror}",
                    host=target.host,
                )
            ) from error
        except TimeoutError as error:
            # RFC 3463 X.4.1: the connection attempt was not answered.
            raise _SessionError(
                Reply(
                    451,
                    "4.4.1",
                    f"connection to {where} timed out after {timeout:g} s",
                    host=target.host,
                )
            ) from error
        except OSError as error:
            raise _SessionError(
                Reply(
                    451,
                    "4.4.1",
                    f"connection to {where} failed: {error.strerror or error}",
                    host=target.host,
                )
            ) from error
        transcript.note(f"connected to {where}")
        return cls(sock, target=target)

    def _over(self, enhanced: str, text: str) -> _SessionError:
        self.usable = False
        return _SessionError(Reply(451, enhanced, text, host=self.target.host))

    def _lost(self, doing: str, error: OSError) -> _SessionError:
        # RFC 3463 X.4.2 "bad connection": established, but the transaction could not complete.
        reason = error.strerror or str(error) or type(error).__name__
        return self._over("4.4.2", f"connection to {_where(self.target)} lost {doing}: {reason}")

    def _protocol_error(self, problem: str, awaiting: str) -> _SessionError:
        # RFC 3463 X.5.0: a protocol error of no more specific kind.
        return self._over("4.5.0", f"{self.target.host} sent {problem} as the {awaiting}")

    def send_line(
        self,
        line: str,
        *,
        timeout: float,
        transcript: Transcript | None,
        utf8: bool = False,
        shown: str | None = None,
    ) -> None:
        """Send one command line. ``shown`` replaces it in the transcript and in any error text,
        for lines that carry a secret (AUTH)."""
        self.send_lines([line], timeout=timeout, transcript=transcript, utf8=utf8, shown=shown)

    def send_lines(
        self,
        lines: Sequence[str],
        *,
        timeout: float,
        transcript: Transcript | None,
        utf8: bool = False,
        shown: str | None = None,
    ) -> None:
        """Send command lines in one write: one line, or a pipelined group (RFC 2920)."""
        # Without SMTPUTF8 a command is ASCII (RFC 5321 §2.4); callers check before getting here.
        raw = b"".join(line.encode("utf-8" if utf8 else "ascii") + b"\r\n" for line in lines)
        if transcript is not None:
            for line in lines:
                transcript.sent(_printable(shown if shown is not None else line, limit=1000))
        sending = shown if shown is not None else lines[0].split(" ", 1)[0]
        self.send_raw(raw, timeout=timeout, sending=sending)

    def send_raw(self, data: bytes, *, timeout: float, sending: str) -> None:
        try:
            # Since Python 3.5 the timeout bounds the whole sendall, which is RFC 5321 §4.5.3.2.5's
            # "each TCP SEND call" for a data block.
            self._sock.settimeout(timeout)
            self._sock.sendall(data)
        except TimeoutError as error:
            raise self._over(
                "4.4.2", f"{_where(self.target)} took more than {timeout:g} s to take {sending}"
            ) from error
        except OSError as error:
            raise self._lost(f"while sending {sending}", error) from error

    def read_reply(
        self, *, timeout: float, awaiting: str, transcript: Transcript | None
    ) -> _ServerReply:
        """Read one complete (possibly multiline) reply, ``awaiting`` naming it for messages
        ("greeting", "reply to MAIL"). A 421 ends the session (RFC 5321 §3.8)."""
        deadline = time.monotonic() + timeout
        reply: _ServerReply | None = None
        while reply is None:
            try:
                raw = self._reader.next_line()
                if raw is None:
                    self._receive(deadline=deadline, timeout=timeout, awaiting=awaiting)
                    continue
                if transcript is not None:
                    transcript.received(_printable(raw.decode("utf-8", "replace"), limit=1000))
                reply = self._reader.take(raw)
            except _BadReply as bad:
                # Refused as a reply: the host is tried again later (RFC 3463 X.5.0).
                raise self._protocol_error(str(bad), awaiting) from None
        if reply.code == 421:
            self.usable = False
            raise _SessionError(reply.to_reply(self.target.host))
        return reply

    def _receive(self, *, deadline: float, timeout: float, awaiting: str) -> None:
        # The deadline covers the whole reply, so a server trickling one byte at a time cannot
        # stretch RFC 5321 §4.5.3.2's per-command limits.
        remaining = deadline - time.monotonic()
        late = f"{_where(self.target)} sent no {awaiting} within {timeout:g} s"
        if remaining <= 0:
            raise self._over("4.4.2", late)
        try:
            self._sock.settimeout(remaining)
            data = self._sock.recv(_CHUNK)
        except TimeoutError as error:
            raise self._over("4.4.2", late) from error
        except OSError as error:
            raise self._lost(f"while waiting for the {awaiting}", error) from error
        if not data:
            raise self._over(
                "4.4.2", f"{_where(self.target)} closed the connection instead of the {awaiting}"
            )
        self._reader.feed(data)

    def command(
        self,
        line: str,
        *,
        timeout: float,
        transcript: Transcript | None,
        utf8: bool = False,
        shown: str | None = None,
    ) -> _ServerReply:
        """Send one command line and read its reply (``shown``: see :meth:`send_line`)."""
        self.send_line(line, timeout=timeout, transcript=transcript, utf8=utf8, shown=shown)
        verb = (shown if shown is not None else line).split(" ", 1)[0]
        return self.read_reply(timeout=timeout, awaiting=f"reply to {verb}", transcript=transcript)

    def start_tls(self, context: ssl.SSLContext, *, server_hostname: str, timeout: float) -> int:
        """Run the TLS handshake on the connection after a 220 to STARTTLS; return how many
        octets of plain text the server had sent after its 220, which are thrown away.

        RFC 3207 §4.2: nothing learnt before TLS may be trusted after it. Bytes that arrived in
        plain text after the 220 are either a broken server or an attacker injecting replies
        the client would otherwise read as if they had come through TLS.
        """
        stale = self._reader.discard()
        try:
            tls = context.wrap_socket(
                self._sock, server_hostname=server_hostname, do_handshake_on_connect=False
            )
        except (ValueError, OSError) as error:
            # ValueError: a name OpenSSL will not take (empty, or not IDNA-encodable).
            raise self._handshake_failed(_handshake_problem(error, timeout)) from error
        self._sock = tls
        try:
            # Each wait within the handshake is bounded; a peer cannot stall one forever.
            tls.settimeout(timeout)
            tls.do_handshake()
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise self._handshake_failed(_handshake_problem(error, timeout)) from error
        self.encrypted = True
        return stale

    def _handshake_failed(self, problem: str) -> _HandshakeFailed:
        # Whatever state OpenSSL left the connection in, nothing more can be said on it.
        self.usable = False
        # RFC 3463 X.7.5 "cryptographic failure"; Postfix uses the same for a failed handshake
        # and for an unverified certificate.
        return _HandshakeFailed(
            Reply(
                451,
                "4.7.5",
                f"TLS handshake with {_where(self.target)} failed: {problem}",
                host=self.target.host,
            )
        )

    def tls_description(self, *, verified: bool) -> str:
        """The protocol, cipher and certificate of the TLS session, for the transcript."""
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            return "no TLS"
        cipher = sock.cipher()
        suite = f"{cipher[0]} ({cipher[2]} bits)" if cipher else "unknown cipher"
        text = f"TLS started: {sock.version()}, {suite}"
        if not verified:
            return f"{text}; certificate not verified"
        certificate = sock.getpeercert() or {}
        return (
            f"{text}; certificate verified for {_tls_name(self.target)}: subject "
            f"{_distinguished_name(certificate.get('subject'))}, issuer "
            f"{_distinguished_name(certificate.get('issuer'))}"
        )

    def positive(self, reply: _ServerReply, *, expected: int, awaiting: str) -> bool:
        """True for the expected reply class (2 or 3), False for 4xx or 5xx; any other class is a
        protocol error that ends the session."""
        if reply.code // 100 == expected:
            return True
        if reply.code >= 400:
            return False
        shown = _printable(" ".join(reply.lines), limit=80)
        raise self._protocol_error(f'an unexpected {reply.code} ("{shown}")', awaiting)

    def send_data(self, source: BinaryIO, *, timeout: float) -> int:
        """Stream ``source`` dot-stuffed, then the final ``.``; return the octets sent."""
        encoder = DataEncoder()
        sent = 0
        # Each block is sent once the next has been read, so the last one leaves in the same
        # write as the final ".": two small writes in a row would wait for the server's delayed
        # ACK (Nagle's algorithm, RFC 896), some 40 ms a message.
        held = b""
        while block := source.read(_CHUNK):
            if held:
                self.send_raw(held, timeout=timeout, sending="the message")
                sent += len(held)
            held = encoder.encode(block)
        held += encoder.finish()
        self.send_raw(held, timeout=timeout, sending="the message")
        return sent + len(held)

    def close(self) -> None:
        self.usable = False
        with contextlib.suppress(OSError):
            self._sock.close()


def _needs_smtputf8(sender: str, recipients: Iterable[str]) -> bool:
    return not sender.isascii() or not all(r.isascii() for r in recipients)


@attrs.frozen
class _Content:
    """What MAIL must declare about a message: octets over 127 (BODY=8BITMIME, RFC 6152) and
    UTF-8 in its header fields (SMTPUTF8, RFC 6531 §3.4)."""

    eight_bit: bool
    utf8_headers: bool


def _examine(message: Outgoing, *, eight_bit_matters: bool) -> _Content:
    """One streaming pass over the stored file, as far as it has to go, in constant memory.

    The header section is read up to the empty line that ends it (RFC 5322 §2.1): UTF-8 beyond
    ASCII there (RFC 6532) needs SMTPUTF8. It is decided here, at send time, from the stored
    bytes that will go; octets over 127 that are not UTF-8 (a Latin-1 Subject from an old client)
    are no RFC 6532 header and ask for nothing more than BODY=8BITMIME, as before. The rest is
    read only when the server offers 8BITMIME and intake did not note whether the message is
    8-bit (the one case where that answer changes what we send; a server without 8BITMIME gets
    the bytes as they are, as most MTAs do, and RFC 6152 §3's conversion to 7 bit is not
    implemented). A message intake found all ASCII is not read at all.
    """
    known = message.eight_bit
    if known is False:
        return _Content(eight_bit=False, utf8_headers=False)
    look_for_eight_bit = known is None and eight_bit_matters
    # The encoder makes every line end CRLF, as DATA will, so one pattern finds the empty line.
    encoder = DataEncoder()
    decoder = codecs.getincrementaldecoder("utf-8")()
    window = b"\r\n"  # the section starts at a line start: an empty first line ends it at once
    in_headers = utf8 = True
    header_non_ascii = seen_non_ascii = False
    with message.open() as source:
        while block := source.read(_CHUNK):
            seen_non_ascii = seen_non_ascii or not block.isascii()
            if in_headers:
                out = encoder.encode(block)
                data = window + out
                end = data.find(b"\r\n\r\n")
                head = out if end < 0 else out[: max(0, end - len(window))]
                header_non_ascii = header_non_ascii or not head.isascii()
                try:
                    decoder.decode(head, final=end >= 0)
                except UnicodeDecodeError:
                    utf8 = False
                in_headers = end < 0
                window = data[-3:]
            # Invalid UTF-8 means an octet over 127 was seen: nothing is left to learn then.
            if (not in_headers or not utf8) and (not look_for_eight_bit or seen_non_ascii):
                break
    if in_headers and utf8:
        try:
            decoder.decode(b"", final=True)  # a message that is all header section
        except UnicodeDecodeError:
            utf8 = False
    return _Content(
        eight_bit=seen_non_ascii if known is None else known,
        utf8_headers=utf8 and header_non_ascii,
    )


def _refusal(
    extensions: SmtpExtensions,
    message: Outgoing,
    recipients: Sequence[str],
    host: str,
    *,
    utf8_headers: bool,
) -> Reply | None:
    """A permanent reply for every recipient when this server cannot take the message at all."""
    if extensions.size and message.size > extensions.size:
        # RFC 1870 §4: a message over the announced limit fails for good (552); say so without
        # sending it.
        return Reply(
            552,
            "5.3.4",
            f"message of {message.size} octets exceeds the {extensions.size}-octet limit "
            f"{host} announces (SIZE)",
            host=host,
        )
    if _needs_smtputf8(message.sender, recipients) and not extensions.smtputf8:
        # RFC 6531: a server without SMTPUTF8 must not be sent a non-ASCII address; the headers
        # most likely carry it too, so no part of the message may go. X.6.7 is the status RFC
        # 6531 gives "non-ASCII addresses not permitted".
        return Reply(
            553,
            "5.6.7",
            f"{host} does not offer SMTPUTF8, which the non-ASCII addresses need",
            host=host,
        )
    if utf8_headers and not extensions.smtputf8:
        # RFC 6531 §3.4: a message with UTF-8 header fields (RFC 6532) needs SMTPUTF8, and a
        # server without it has no way to take them; 8BITMIME covers only the body (RFC 6152).
        # Postfix gives the same X.6.7 for it.
        return Reply(
            554,
            "5.6.7",
            f"{host} does not offer SMTPUTF8, which the message's UTF-8 header fields need",
            host=host,
        )
    if _UNSENDABLE.search(message.sender):
        # RFC 3463 X.1.7: bad sender's mailbox address syntax.
        return Reply(553, "5.1.7", f"sender address {message.sender!r} cannot be sent", host=host)
    return None


def _mail_parameters(
    extensions: SmtpExtensions, message: Outgoing, *, content: _Content, utf8: bool
) -> str:
    parameters = []
    if extensions.size is not None:
        # RFC 1870 §5: the size counts CRLFs but not stuffing dots or the final ".": exactly the
        # stored size.
        parameters.append(f"SIZE={message.size}")
    if extensions.eight_bit_mime and content.eight_bit:
        parameters.append("BODY=8BITMIME")  # RFC 6152 §3
    if utf8:
        parameters.append("SMTPUTF8")  # RFC 6531
    return "".join(f" {p}" for p in parameters)


def _answer_all(answers: dict[str, Reply], recipients: Iterable[str], reply: Reply) -> None:
    for recipient in recipients:
        answers.setdefault(recipient, reply)


def _too_many(reply: Reply) -> bool:
    """Whether a RCPT reply says the transaction has no room for more recipients.

    RFC 5321 §4.5.3.1.10: a server out of room answers 452 (RFC 3463 X.5.3, "too many
    recipients"); servers following RFC 821 said 552, which clients "SHOULD treat ... as a
    temporary, rather than permanent, failure". Such a recipient is not refused: it goes in the
    next transaction.
    """
    if reply.code not in (452, 552):
        return False
    if reply.enhanced is not None:
        return reply.enhanced[1:] == ".5.3"
    return reply.code == 452 or "too many recipients" in reply.text.lower()


def _pipeline_groups(commands: Sequence[str], *, utf8: bool) -> Iterator[tuple[int, list[str]]]:
    """``commands`` cut into groups of at most :data:`_PIPELINE_WINDOW` octets (one command at
    least), each with the index of its first command."""
    group: list[str] = []
    start = size = 0
    for index, command in enumerate(commands):
        length = len(command.encode("utf-8" if utf8 else "ascii")) + 2
        if group and size + length > _PIPELINE_WINDOW:
            yield start, group
            group, start, size = [], index, 0
        group.append(command)
        size += length
    if group:
        yield start, group


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _in_the_clear(target: Target) -> Reply:
    # PLAIN and LOGIN send the password itself (RFC 4616 §6): never without TLS.
    # RFC 3463 X.7.10 "encryption needed" (registered by RFC 5248): a privacy layer must come
    # first.
    assert target.credentials is not None  # noqa: S101 (only called with credentials)
    return Reply(
        451,
        "4.7.10",
        f"will not authenticate to {_where(target)} as {target.credentials.username} in the "
        "clear: the connection has no TLS",
        host=target.host,
    )


def _auth_refused(reply: Reply, *, mechanism: str, username: str, where: str) -> Reply:
    """What a refused AUTH means for the recipients: try later, keeping the server's detail.

    A wrong or expired password is the operator's to fix, not the recipients' fault, and it
    refuses every message at once: bouncing them all would turn one configuration slip into mass
    non-delivery. So, like Postfix (``smtp_sasl_auth_soft_bounce = yes``, its default), a 535
    (RFC 4954 §6, 5.7.8 "authentication credentials invalid") defers as 4.7.8, and any other
    refusal as 4.7.x; the queue's expiry still ends it with a DSN, and the transcript says why.
    """
    subject, _, detail = (reply.enhanced or "").partition(".")[2].partition(".")
    if subject == "7" and detail:
        enhanced = f"4.7.{detail}"
    else:
        enhanced = "4.7.8" if reply.code == 535 else "4.7.0"
    return Reply(
        451, enhanced, f"{where} refused AUTH {mechanism} as {username}: {reply}", host=reply.host
    )


@attrs.frozen
class _Outcome:
    """How one transaction ended, for the loop that decides on the next one.

    ``refused``: the server refused MAIL, so it would refuse the next transaction too.
    ``over_limit``: recipients the server had no room for ("too many"), with its replies, in
    order. ``room``: how many RCPTs it answered before the first of those.
    """

    refused: Reply | None = None
    over_limit: Mapping[str, Reply] = attrs.field(factory=dict)
    room: int = 0


class _RcptReplies:
    """The RCPT replies of one transaction, sorted as they arrive: accepted, answered (refused
    for good or for now) and over the server's limit."""

    def __init__(self, session: _Session) -> None:
        self._session = session
        self.accepted: list[str] = []
        self.over_limit: dict[str, Reply] = {}
        self.room = 0

    def take(self, recipient: str, reply: _ServerReply, answers: dict[str, Reply]) -> None:
        if self._session.positive(reply, expected=2, awaiting="reply to RCPT"):
            self.accepted.append(recipient)
        else:
            answer = reply.to_reply(self._session.target.host)
            if _too_many(answer):
                self.over_limit[recipient] = answer
                return
            answers[recipient] = answer
        if not self.over_limit:
            self.room += 1

    def outcome(self) -> _Outcome:
        return _Outcome(over_limit=self.over_limit, room=self.room)


class SmtpTransport:
    """Sends messages over SMTP, keeping one connection per target for reuse.

    ``SmtpTransport(helo_name="mail.example.com")``; ``timeouts`` bounds every wait
    (:class:`SmtpTimeouts`); ``monotonic`` (seconds, :func:`time.monotonic` by default) ages kept
    connections, so a test can expire them without waiting. ``tls_context`` verifies certificates
    for :attr:`TlsPolicy.REQUIRED <spoolmail._core.routing.TlsPolicy.REQUIRED>` targets (default
    :func:`ssl.create_default_context`: the system's trust store; it must check host names);
    opportunistic and ``ENCRYPT`` connections use an internal context that checks nothing
    (TLS 1.2 at least). ``max_recipients`` caps the RCPTs of one transaction (100, IIS's default
    and RFC 5321 §4.5.3.1.8's minimum); more recipients go in further transactions on the same
    connection, each sending the message again. Safe to share between threads: each :meth:`send`
    uses its own connection. Call :meth:`close` (or use it as a context manager) to QUIT the
    connections it keeps. Kept connections are reused only for an equal :class:`Target`: same
    address, name, TLS policy and credentials.

    The session, as ``target.tls`` asks (RFC 3207):

    - ``NEVER``: no STARTTLS. ``OPPORTUNISTIC``: STARTTLS when offered, certificate unchecked;
      plain text when it is not offered or is refused; when the handshake fails, one new
      connection in plain text (never with credentials). ``ENCRYPT``: STARTTLS or nothing,
      certificate unchecked. ``REQUIRED``: STARTTLS or nothing, and the certificate must verify
      against ``tls_context`` and match the target's name (or its address, for a literal).
      After STARTTLS, EHLO again (RFC 3207 §4.2).
    - With ``target.credentials``: AUTH PLAIN (or LOGIN when PLAIN is not offered) after TLS,
      never in the clear (RFC 4954); the transcript shows ``AUTH PLAIN <redacted>``.
    - With PIPELINING (RFC 2920): MAIL, the RCPTs and DATA are written together (in groups of
      at most 4 KB, §3.1) and the replies read after, in order; without it, one at a time.
    - A kept connection is reused without RSET only when its last transaction succeeded
      moments ago; after a failed one (a refused MAIL, DATA or final ".") the next transaction
      starts with RSET (RFC 5321 §4.1.1.5).
    - A RCPT answered "too many recipients" (452, RFC 5321 §4.5.3.1.10) goes in the next
      transaction on the same connection, which holds no more than the server had room for; a
      transaction in which the server takes no recipient at all ends the delivery with that 452.

    What each outcome becomes, for every recipient not answered yet (RFC 3463 codes):

    - the server's own reply: 4xx/5xx to MAIL (everyone), to RCPT (that recipient), to DATA or
      the final "." (every recipient accepted in that transaction); 421 at any point, after
      which the connection closes;
    - ``451 4.4.1``: no connection (refused, unreachable, connect timeout) or a non-2xx greeting;
    - ``451 4.4.3``: the host name does not resolve;
    - ``451 4.4.2``: the connection broke or timed out after it was established;
    - ``451 4.5.0``: the server sent garbage or a reply of the wrong class, or refused RSET;
    - ``451 4.7.4``: TLS is required (``ENCRYPT``, ``REQUIRED``) but STARTTLS is not offered or
      is refused; or credentials are set and the server offers neither PLAIN nor LOGIN;
    - ``451 4.7.5``: the TLS handshake failed, or the certificate did not verify;
    - ``451 4.7.10``: credentials are set but the connection has no TLS;
    - ``451 4.7.8`` (or ``4.7.x`` after the server's ``5.7.x``): the server refused AUTH;
    - ``552 5.3.4``: the message exceeds the server's SIZE (no MAIL is sent);
    - ``553 5.6.7``: non-ASCII addresses and no SMTPUTF8 (no MAIL is sent);
    - ``554 5.6.7``: UTF-8 in the message's header fields (RFC 6532) and no SMTPUTF8;
    - ``553 5.1.7`` / ``553 5.1.3``: a sender / recipient address with control characters.
    """

    def __init__(
        self,
        *,
        helo_name: str,
        timeouts: SmtpTimeouts = _RFC_TIMEOUTS,
        monotonic: Callable[[], float] = time.monotonic,
        tls_context: ssl.SSLContext | None = None,
        max_recipients: int = _MAX_RECIPIENTS,
        max_idle: int = 10,
    ) -> None:
        # RFC 5321 §4.1.1.1: EHLO names this host by its FQDN or an address literal.
        if not _HELO_NAME.fullmatch(helo_name):
            raise ConfigurationError(
                f"helo_name must be this host's FQDN or an address literal, not {helo_name!r}"
            )
        if (
            isinstance(max_recipients, bool)
            or not isinstance(max_recipients, int)
            or max_recipients < 1
        ):
            raise ConfigurationError(
                f"max_recipients must be a whole number above 0, not {max_recipients!r}"
            )
        if tls_context is None:
            tls_context = ssl.create_default_context()
        elif tls_context.verify_mode != ssl.CERT_REQUIRED or not tls_context.check_hostname:
            raise ConfigurationError(
                "tls_context is what TlsPolicy.REQUIRED verifies certificates with: it needs "
                "verify_mode CERT_REQUIRED and check_hostname True"
            )
        self._helo_name = helo_name
        self._timeouts = timeouts
        self._monotonic = monotonic
        self._verifying = tls_context
        self._unverified = _unverified_context()
        self._max_recipients = max_recipients
        self._max_idle = max(1, max_idle)
        self._idle: dict[Target, list[_Session]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def send(
        self, target: Target, message: Outgoing, transcript: Transcript
    ) -> Mapping[str, Reply]:
        """Deliver ``message`` to ``target``; return a reply for each of its recipients."""
        recipients = tuple(dict.fromkeys(message.recipients))
        if not recipients:
            return {}
        answers: dict[str, Reply] = {}
        session: _Session | None = None
        try:
            session, probed = self._session(target, transcript)
            try:
                self._transact(session, message, recipients, answers, transcript)
            except _SessionError as ended:
                if probed or answers or ended.reply.status != "4.4.2":
                    raise
                # A connection reused without RSET was gone before MAIL got an answer: nothing
                # was sent, so once more on a fresh one (RFC 5321 section 4.1.4 lets MAIL follow
                # a finished transaction; the RSET probe is what this saved).
                transcript.note("the reused connection was gone; connecting again")
                self._discard(session, transcript)
                session = None
                session = self._open(target, transcript)
                self._transact(session, message, recipients, answers, transcript)
        except _SessionError as ended:
            transcript.note(f"session ended: {ended.reply}")
            _answer_all(answers, recipients, ended.reply)
        except BaseException:
            # The spool failed to read the message, or a bug: not the peer's doing, so it
            # propagates. The connection may be mid-command or mid-DATA; it is dropped without
            # QUIT, and a server that saw no final "." discards the partial message.
            if session is not None:
                session.usable = False
            raise
        finally:
            if session is not None:
                self._release(session, transcript)
        return {recipient: answers[recipient] for recipient in recipients}

    def close(self) -> None:
        """QUIT and close every kept connection. Safe to call at any time, more than once."""
        with self._lock:
            sessions = [s for kept in self._idle.values() for s in kept]
            self._idle.clear()
        for session in sessions:
            self._discard(session, None)

    # Connections.

    def _session(self, target: Target, transcript: Transcript) -> tuple[_Session, bool]:
        """A connection to ``target``, and whether it is known to work (new, or probed)."""
        kept = self._take_kept(target)
        if kept is not None:
            transcript.note(f"reusing the connection to {_where(target)}")
            if kept.clean and self._monotonic() - kept.last_used < _FRESH:
                # Its last transaction succeeded moments ago: MAIL may follow at once (RFC 5321
                # section 4.1.4). A round trip saved per message; send() reconnects if it was
                # gone after all.
                return kept, False
            if not kept.clean:
                # A failed transaction (a 5xx to the final ".", DATA ended with no recipient)
                # may have left the server mid-transaction: "503 nested MAIL command".
                transcript.note("the last transaction on it failed: RSET first")
            # RFC 5321 §4.1.1.5: RSET starts clean and, here, proves the connection still works.
            # A connection that fails it is replaced once, transparently.
            try:
                reply = kept.command("RSET", timeout=self._timeouts.rset, transcript=transcript)
                if reply.code // 100 == 2:
                    kept.clean = True
                    return kept, True
                transcript.note("the kept connection refused RSET; connecting again")
            except _SessionError as ended:
                transcript.note(
                    f"the kept connection is gone ({ended.reply.text}); connecting again"
                )
            self._discard(kept, transcript)
        return self._open(target, transcript), True

    def _open(self, target: Target, transcript: Transcript) -> _Session:
        if target.credentials is not None and target.tls is TlsPolicy.NEVER:
            # Known before connecting: nothing would be sent but a refusal to authenticate.
            raise _SessionError(_in_the_clear(target))
        try:
            return self._establish(target, transcript, tls=target.tls)
        except _HandshakeFailed as failed:
            # Opportunistic TLS must be no worse than plain text (RFC 7435 §1.3): a server
            # whose TLS is broken still gets its mail, over a new connection, as Postfix does
            # at security level "may" (PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE; Postfix
            # first lets the message wait out one retry, which needs its age, and a transport
            # does not know it). Not with credentials: AUTH never goes in the clear, and the
            # handshake's failure is the better explanation of the delay.
            if target.tls is not TlsPolicy.OPPORTUNISTIC or target.credentials is not None:
                raise
            transcript.note(f"{failed.reply.text}; connecting again in plain text (opportunistic)")
            return self._establish(target, transcript, tls=TlsPolicy.NEVER)

    def _establish(self, target: Target, transcript: Transcript, *, tls: TlsPolicy) -> _Session:
        session = _Session.connect(target, timeout=self._timeouts.connect, transcript=transcript)
        try:
            self._greet(session, transcript)
            if tls is not TlsPolicy.NEVER:
                self._start_tls(session, transcript, policy=tls)
            if target.credentials is not None:
                self._authenticate(session, transcript)
        except BaseException:
            self._discard(session, transcript)
            raise
        return session

    def _greet(self, session: _Session, transcript: Transcript) -> None:
        """Read the greeting and introduce ourselves."""
        host = session.target.host
        greeting = session.read_reply(
            timeout=self._timeouts.greeting, awaiting="greeting", transcript=transcript
        )
        if greeting.code // 100 != 2:
            # RFC 5321 §3.1: a 554 greeting refuses this session, not these recipients; like
            # Postfix (smtp_skip_5xx_greeting) treat it as a host problem: X.4.1, try later.
            raise _SessionError(
                Reply(
                    451,
                    "4.4.1",
                    f"{host} refused the session: {greeting.to_reply(host)}",
                    host=host,
                )
            )
        self._hello(session, transcript)

    def _hello(self, session: _Session, transcript: Transcript) -> None:
        """EHLO, or HELO to an old server; records what the server offers."""
        host = session.target.host
        ehlo = session.command(
            f"EHLO {self._helo_name}",
            timeout=self._timeouts.ehlo,
            transcript=transcript,
        )
        if session.positive(ehlo, expected=2, awaiting="reply to EHLO"):
            session.extensions = SmtpExtensions.from_ehlo(ehlo.lines)
            return
        if ehlo.code < 500:
            raise _SessionError(ehlo.to_reply(host))
        # RFC 5321 §3.2: a server that does not know EHLO answers 5xx; fall back to HELO.
        helo = session.command(
            f"HELO {self._helo_name}",
            timeout=self._timeouts.ehlo,
            transcript=transcript,
        )
        if not session.positive(helo, expected=2, awaiting="reply to HELO"):
            raise _SessionError(helo.to_reply(host))
        session.extensions = SmtpExtensions()

    def _start_tls(self, session: _Session, transcript: Transcript, *, policy: TlsPolicy) -> None:
        """STARTTLS as ``policy`` asks (RFC 3207), then EHLO again over TLS."""
        target = session.target
        where = _where(target)
        if not session.extensions.starttls:
            if policy is TlsPolicy.OPPORTUNISTIC:
                transcript.note("STARTTLS not offered; continuing in plain text (opportunistic)")
                return
            # RFC 3463 X.7.4 "security features not supported"; Postfix says 4.7.4 "TLS is
            # required, but was not offered by host" and defers, as here.
            raise _SessionError(
                Reply(
                    451,
                    "4.7.4",
                    f"TLS is required ({policy.value}), but {where} does not offer STARTTLS",
                    host=target.host,
                )
            )
        reply = session.command("STARTTLS", timeout=self._timeouts.starttls, transcript=transcript)
        if not session.positive(reply, expected=2, awaiting="reply to STARTTLS"):
            # RFC 3207 §4: after a refusal (454) the client decides whether to go on in the
            # clear; the same connection is fine for that, nothing has changed on it.
            if policy is TlsPolicy.OPPORTUNISTIC:
                transcript.note("STARTTLS refused; continuing in plain text (opportunistic)")
                return
            raise _SessionError(
                Reply(
                    451,
                    "4.7.4",
                    f"TLS is required ({policy.value}), but {where} refused STARTTLS: "
                    f"{reply.to_reply(target.host)}",
                    host=target.host,
                )
            )
        verify = policy is TlsPolicy.REQUIRED
        stale = session.start_tls(
            self._verifying if verify else self._unverified,
            server_hostname=_tls_name(target),
            timeout=self._timeouts.starttls,
        )
        if stale:
            transcript.note(
                f"discarded {stale} octets sent in plain text after the 220 to STARTTLS "
                "(RFC 3207 section 4.2)"
            )
        description = session.tls_description(verified=verify)
        transcript.note(description if verify else f"{description} ({policy.value} policy)")
        # RFC 3207 §4.2: forget what the server said in plain text and ask again.
        session.extensions = SmtpExtensions()
        self._hello(session, transcript)

    def _authenticate(self, session: _Session, transcript: Transcript) -> None:
        """AUTH PLAIN, or LOGIN when PLAIN is not offered (RFC 4954), over TLS only.

        Neither mechanism negotiates a security layer, so no EHLO follows (RFC 4954 §4).
        """
        target = session.target
        credentials = target.credentials
        assert credentials is not None  # noqa: S101 (called only with credentials)
        if not session.encrypted:
            raise _SessionError(_in_the_clear(target))
        offered = session.extensions.auth
        # PLAIN first: one round trip instead of three, and the same secret either way.
        if "PLAIN" in offered:
            mechanism = "PLAIN"
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd, as the initial response (RFC 4954 §4).
            token = _base64("\0".join(("", credentials.username, credentials.password)))
            reply = session.command(
                f"AUTH PLAIN {token}",
                timeout=self._timeouts.auth,
                transcript=transcript,
                shown="AUTH PLAIN <redacted>",
            )
        elif "LOGIN" in offered:
            mechanism = "LOGIN"
            reply = self._auth_login(session, transcript)
        else:
            shown = " ".join(sorted(offered)) or "none"
            raise _SessionError(
                Reply(
                    451,
                    "4.7.4",
                    f"{_where(target)} offers no AUTH mechanism spoolmail speaks (PLAIN, LOGIN); "
                    f"it offers: {shown}",
                    host=target.host,
                )
            )
        if session.positive(reply, expected=2, awaiting=f"reply to AUTH {mechanism}"):
            transcript.note(f"authenticated as {credentials.username} ({mechanism})")
            return
        raise _SessionError(
            _auth_refused(
                reply.to_reply(target.host),
                mechanism=mechanism,
                username=credentials.username,
                where=_where(target),
            )
        )

    def _auth_login(self, session: _Session, transcript: Transcript) -> _ServerReply:
        """AUTH LOGIN: the user name and the password, each after a 334 challenge."""
        credentials = session.target.credentials
        assert credentials is not None  # noqa: S101 (called only with credentials)
        reply = session.command("AUTH LOGIN", timeout=self._timeouts.auth, transcript=transcript)
        username = _base64(credentials.username)
        for secret, shown in ((username, username), (_base64(credentials.password), None)):
            if not session.positive(reply, expected=3, awaiting="reply to AUTH LOGIN"):
                return reply
            reply = session.command(
                secret,
                timeout=self._timeouts.auth,
                transcript=transcript,
                shown=shown or "<password redacted>",
            )
        return reply

    def _take_kept(self, target: Target) -> _Session | None:
        """The most recently used idle connection to ``target``; idle ones too old are closed."""
        now = self._monotonic()
        expired: list[_Session] = []
        with self._lock:
            for key, sessions in list(self._idle.items()):
                fresh = [s for s in sessions if now - s.last_used <= self._timeouts.idle]
                expired.extend(s for s in sessions if s not in fresh)
                if fresh:
                    self._idle[key] = fresh
                else:
                    del self._idle[key]
            kept = self._idle.get(target)
            session = kept.pop() if kept else None
        for old in expired:
            self._discard(old, None)
        return session

    def _release(self, session: _Session, transcript: Transcript) -> None:
        if not session.usable or self._timeouts.idle == 0:
            self._discard(session, transcript)
            return
        session.last_used = self._monotonic()
        with self._lock:
            # One idle connection per delivery thread that used this host, up to a bound.
            kept = self._idle.setdefault(session.target, [])
            kept.append(session)
            surplus = kept[: -self._max_idle] if len(kept) > self._max_idle else []
            del kept[: len(surplus)]
        for extra in surplus:
            self._discard(extra, None)

    def _discard(self, session: _Session, transcript: Transcript | None) -> None:
        # RFC 5321 §4.1.1.10: say QUIT before closing, when the session is in a state to hear it.
        if session.usable:
            with contextlib.suppress(_SessionError):
                session.command("QUIT", timeout=self._timeouts.quit, transcript=transcript)
        session.close()

    # Transactions.

    def _transact(
        self,
        session: _Session,
        message: Outgoing,
        recipients: tuple[str, ...],
        answers: dict[str, Reply],
        transcript: Transcript,
    ) -> None:
        """One or more transactions on ``session`` until every recipient has an answer."""
        host = session.target.host
        content = _examine(message, eight_bit_matters=session.extensions.eight_bit_mime)
        refusal = _refusal(
            session.extensions, message, recipients, host, utf8_headers=content.utf8_headers
        )
        if refusal is not None:
            transcript.note(f"not sent: {refusal}")
            _answer_all(answers, recipients, refusal)
            return
        pending = []
        for recipient in recipients:
            if not recipient or _UNSENDABLE.search(recipient):
                # RFC 3463 X.1.3: bad destination mailbox address syntax.
                answers[recipient] = Reply(
                    553, "5.1.3", f"recipient address {recipient!r} cannot be sent", host=host
                )
            else:
                pending.append(recipient)
        if not pending:
            return
        # RFC 6531 §3.4: SMTPUTF8 when the envelope or the message needs it, UTF-8 header fields
        # (RFC 6532) included.
        utf8 = content.utf8_headers or _needs_smtputf8(message.sender, pending)
        parameters = _mail_parameters(session.extensions, message, content=content, utf8=utf8)
        mail = f"MAIL FROM:<{message.sender}>{parameters}"
        limit = self._max_recipients
        while True:
            if not session.clean:
                # The transaction before failed at its end: start this one clean (RFC 5321
                # §4.1.1.5).
                self._reset(session, transcript)
            batch, pending = pending[:limit], pending[limit:]
            transaction = self._pipelined if session.extensions.pipelining else self._lockstep
            outcome = transaction(
                session,
                message=message,
                mail=mail,
                batch=batch,
                answers=answers,
                transcript=transcript,
                utf8=utf8,
            )
            if outcome.refused is not None:
                # The server refused the sender; it would refuse the next transaction alike.
                _answer_all(answers, pending, outcome.refused)
                return
            if outcome.over_limit:
                if outcome.room == 0:
                    # It took no recipient at all: another transaction now would get nowhere.
                    answers.update(outcome.over_limit)
                    _answer_all(answers, pending, next(iter(outcome.over_limit.values())))
                    return
                # RFC 5321 §4.5.3.1.10: the rest go in the next transaction, no larger than the
                # room the server had in this one.
                limit = min(limit, outcome.room)
                pending = [*outcome.over_limit, *pending]
                transcript.note(
                    f"{host} took {outcome.room} recipients in this transaction; "
                    f"{len(outcome.over_limit)} more go in the next (RFC 5321 section 4.5.3.1.10)"
                )
            if not pending:
                return
            transcript.note(f"next transaction on this connection: {len(pending)} recipients left")

    def _lockstep(
        self,
        session: _Session,
        *,
        message: Outgoing,
        mail: str,
        batch: Sequence[str],
        answers: dict[str, Reply],
        transcript: Transcript,
        utf8: bool,
    ) -> _Outcome:
        """One transaction, each command waiting for the reply to the one before."""
        host = session.target.host
        session.clean = False
        reply = session.command(mail, timeout=self._timeouts.mail, transcript=transcript, utf8=utf8)
        if not session.positive(reply, expected=2, awaiting="reply to MAIL"):
            refused = reply.to_reply(host)
            _answer_all(answers, batch, refused)
            return _Outcome(refused=refused)
        rcpts = _RcptReplies(session)
        for recipient in batch:
            reply = session.command(
                f"RCPT TO:<{recipient}>",
                timeout=self._timeouts.rcpt,
                transcript=transcript,
                utf8=utf8,
            )
            rcpts.take(recipient, reply, answers)
        if not rcpts.accepted:
            # RFC 5321 §3.3: no recipient accepted, nothing to send; end the transaction.
            self._reset(session, transcript)
            return rcpts.outcome()
        data = session.command("DATA", timeout=self._timeouts.data_start, transcript=transcript)
        self._send_message(
            session,
            message=message,
            accepted=rcpts.accepted,
            data=data,
            answers=answers,
            transcript=transcript,
        )
        return rcpts.outcome()

    def _pipelined(
        self,
        session: _Session,
        *,
        message: Outgoing,
        mail: str,
        batch: Sequence[str],
        answers: dict[str, Reply],
        transcript: Transcript,
        utf8: bool,
    ) -> _Outcome:
        """One transaction with PIPELINING (RFC 2920 §3.1): MAIL, every RCPT and DATA, which
        may end a group, are sent before their replies are read, in order."""
        host = session.target.host
        commands = [mail, *(f"RCPT TO:<{recipient}>" for recipient in batch), "DATA"]
        transcript.note(f"pipelining MAIL, {len(batch)} RCPT and DATA (RFC 2920)")
        rcpts = _RcptReplies(session)
        mail_reply: _ServerReply | None = None
        data: _ServerReply | None = None
        session.clean = False
        for start, group in _pipeline_groups(commands, utf8=utf8):
            session.send_lines(group, timeout=self._timeouts.mail, transcript=transcript, utf8=utf8)
            for index in range(start, start + len(group)):
                if index == 0:
                    mail_reply = session.read_reply(
                        timeout=self._timeouts.mail, awaiting="reply to MAIL", transcript=transcript
                    )
                    session.positive(mail_reply, expected=2, awaiting="reply to MAIL")
                elif index <= len(batch):
                    reply = session.read_reply(
                        timeout=self._timeouts.rcpt, awaiting="reply to RCPT", transcript=transcript
                    )
                    if mail_reply is not None and mail_reply.code // 100 == 2:
                        rcpts.take(batch[index - 1], reply, answers)
                else:
                    data = session.read_reply(
                        timeout=self._timeouts.data_start,
                        awaiting="reply to DATA",
                        transcript=transcript,
                    )
            assert mail_reply is not None  # noqa: S101 (the first group starts with MAIL)
            if mail_reply.code // 100 != 2:
                break
        assert mail_reply is not None  # noqa: S101 (the first group starts with MAIL)
        if mail_reply.code // 100 != 2:
            # The RCPTs and DATA after a refused MAIL were refused too ("503 need MAIL").
            if data is not None and data.code == 354:
                self._abandon_data(session, transcript)
            refused = mail_reply.to_reply(host)
            _answer_all(answers, batch, refused)
            return _Outcome(refused=refused)
        assert data is not None  # noqa: S101 (MAIL was accepted, so every group went)
        if not rcpts.accepted:
            # RFC 2920 §3.1: with every RCPT refused, the reply to DATA must still be checked;
            # refused, RSET ends the transaction, accepted, a lone "." does.
            if session.positive(data, expected=3, awaiting="reply to DATA"):
                self._abandon_data(session, transcript)
            else:
                self._reset(session, transcript)
            return rcpts.outcome()
        self._send_message(
            session,
            message=message,
            accepted=rcpts.accepted,
            data=data,
            answers=answers,
            transcript=transcript,
        )
        return rcpts.outcome()

    def _send_message(
        self,
        session: _Session,
        *,
        message: Outgoing,
        accepted: Sequence[str],
        data: _ServerReply,
        answers: dict[str, Reply],
        transcript: Transcript,
    ) -> None:
        """After the reply to DATA: stream the message, and answer the accepted recipients."""
        host = session.target.host
        if not session.positive(data, expected=3, awaiting="reply to DATA"):
            _answer_all(answers, accepted, data.to_reply(host))
            # MAIL and the RCPTs still stand; end the transaction before any next one.
            self._reset(session, transcript)
            return
        with message.open() as source:
            sent = session.send_data(source, timeout=self._timeouts.data_block)
        transcript.note(f"message data sent: {sent} octets (content not recorded)")
        end = session.read_reply(
            timeout=self._timeouts.data_end,
            awaiting="reply to the end of data",
            transcript=transcript,
        )
        # RFC 5321 §4.1.1.4: the reply to the final "." is the verdict for every accepted
        # recipient, whether 2xx, 4xx or 5xx; only a 3xx here is a protocol error. After a 2xx
        # the next MAIL may follow at once; after a refusal, RSET first, since not every server
        # forgets a failed transaction.
        session.clean = session.positive(end, expected=2, awaiting="reply to the end of data")
        _answer_all(answers, accepted, end.to_reply(host))

    def _abandon_data(self, session: _Session, transcript: Transcript) -> None:
        """End a DATA the server accepted although no recipient was: a lone "." (RFC 2920 §3.1);
        its reply concerns no recipient."""
        transcript.note("DATA accepted with no recipient accepted: ending it at once")
        transcript.sent(".")
        session.send_raw(b".\r\n", timeout=self._timeouts.data_block, sending="the end of data")
        session.read_reply(
            timeout=self._timeouts.data_end,
            awaiting="reply to the end of data",
            transcript=transcript,
        )

    def _reset(self, session: _Session, transcript: Transcript) -> None:
        """RSET: end an open transaction (RFC 5321 §4.1.1.5)."""
        host = session.target.host
        reply = session.command("RSET", timeout=self._timeouts.rset, transcript=transcript)
        if reply.code // 100 != 2:
            # The server is in a state nothing more can be done in (RFC 3463 X.5.0).
            session.usable = False
            raise _SessionError(
                Reply(451, "4.5.0", f"{host} refused RSET: {reply.to_reply(host)}", host=host)
            )
        session.clean = True
