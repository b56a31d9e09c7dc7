"""The SMTP client: hands one queued message to one host and keeps the connection for the next.

:class:`SmtpTransport` implements the :class:`~spoolmail._transport.base.Transport` seam with its
own client on :mod:`socket` rather than :mod:`smtplib` (whose unbounded reads and exception-shaped
outcomes do not suit a queue that must never hang): greeting, EHLO with a HELO fallback, MAIL with
SIZE, BODY=8BITMIME and SMTPUTF8 when they apply, one RCPT per recipient, and DATA streamed from the
stored file with dot-stuffing and CRLF line ends, in constant memory. It reads the message only
through ``Outgoing.open`` (twice when the server offers 8BITMIME: a first streaming pass looks for
8-bit octets); it writes the commands and replies of the dialogue (never message content) into the
:class:`~spoolmail._core.transcript.Transcript` it is handed, and answers every recipient with a
:class:`~spoolmail._core.reply.Reply`: a refused, stalled, dropped or babbling server is a temporary
reply, not an exception. It never touches the spool, does no DNS of its own (a host name goes to the
system resolver inside :func:`socket.create_connection`, whose wait no timeout here bounds; MX
lookups and literal addresses are the router's job) and keeps no state beyond the connections it
holds open for reuse.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import BinaryIO

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail.exceptions import ConfigurationError, TransportError

__all__ = ["DataEncoder", "SmtpExtensions", "SmtpTimeouts", "SmtpTransport"]

# Message data is read and sent in blocks of this size, so memory stays flat whatever the size.
_CHUNK = 64 * 1024
# RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers exceed it in EHLO and 5xx
# texts, so tolerate four times that. The bound is about memory, not pedantry.
_MAX_REPLY_LINE = 2048
# A multiline reply longer than this is a server that will never stop talking.
_MAX_REPLY_LINES = 100
# RFC 5321 §4.2: Reply-code [ SP textstring ] CRLF, with "-" instead of SP on all but the last line.
_REPLY_LINE = re.compile(rb"([0-9]{3})(?:([ -])(.*))?", re.DOTALL)
# RFC 5321 §2.3.8: CR and LF occur only together; a bare CR or LF in a stored file ends a line too.
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Control characters can never be part of a path (RFC 5321 §4.1.2: qtextSMTP and quoted-pairSMTP
# are printable), and CR or LF in one would smuggle a command into the session.
_UNSENDABLE = re.compile(r"[\x00-\x1f\x7f]")
_HELO_NAME = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


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
    worth minutes. ``idle`` is how long an unused connection is kept for the next message to the
    same host (0: never keep one).
    """

    connect: float = attrs.field(default=30.0, converter=float, validator=_positive)
    greeting: float = attrs.field(default=300.0, converter=float, validator=_positive)  # §4.5.3.2.1
    ehlo: float = attrs.field(default=300.0, converter=float, validator=_positive)
    mail: float = attrs.field(default=300.0, converter=float, validator=_positive)  # §4.5.3.2.2
    rcpt: float = attrs.field(default=300.0, converter=float, validator=_positive)  # §4.5.3.2.3
    data_start: float = attrs.field(default=120.0, converter=float, validator=_positive)  # .2.4
    data_block: float = attrs.field(default=180.0, converter=float, validator=_positive)  # .2.5
    data_end: float = attrs.field(default=600.0, converter=float, validator=_positive)  # .2.6
    rset: float = attrs.field(default=20.0, converter=float, validator=_positive)
    quit: float = attrs.field(default=5.0, converter=float, validator=_positive)
    idle: float = attrs.field(default=30.0, converter=float, validator=_not_negative)


_RFC_TIMEOUTS = SmtpTimeouts()


@attrs.frozen(kw_only=True)
class SmtpExtensions:
    """What a server announced in its EHLO reply (RFC 5321 §4.1.1.1); after HELO, nothing.

    ``size`` is the SIZE limit in octets: ``None`` when SIZE was not announced, ``0`` when it was
    announced without a fixed limit (RFC 1870 §3). STARTTLS, AUTH and PIPELINING are recorded here
    for the code that will use them; this client does not yet.
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
            keyword, *params = line.split()
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
    return int(params[0]) if params and params[0].isdigit() else 0


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


def _printable(text: str, *, limit: int = 200) -> str:
    """``text`` made safe for one transcript line or reply text: no control characters, bounded."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _where(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"


class _Session:
    """One open connection to one target: a bounded line reader, commands and replies.

    Every socket operation has a deadline. Any failure raises :class:`_SessionError` with the
    temporary reply that describes it and marks the session unusable, so it is neither reused nor
    sent a QUIT. Replies go to the transcript handed to each call (``None`` when closing a
    connection outside any delivery).
    """

    def __init__(self, sock: socket.socket, *, target: Target) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.target = target
        self.extensions = SmtpExtensions()
        self.usable = True
        self.last_used = 0.0

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
        self, line: str, *, timeout: float, transcript: Transcript | None, utf8: bool = False
    ) -> None:
        # Without SMTPUTF8 a command is ASCII (RFC 5321 §2.4); callers check before getting here.
        raw = line.encode("utf-8" if utf8 else "ascii") + b"\r\n"
        if transcript is not None:
            transcript.sent(_printable(line, limit=1000))
        self.send_raw(raw, timeout=timeout, sending=line.split(" ", 1)[0])

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
        code: int | None = None
        lines: list[str] = []
        while True:
            raw = self._read_line(deadline=deadline, timeout=timeout, awaiting=awaiting)
            parsed = _parse_reply_line(raw)
            if transcript is not None:
                transcript.received(_printable(raw.decode("utf-8", "replace"), limit=1000))
            if parsed is None:
                shown = _printable(raw.decode("utf-8", "replace"), limit=80)
                raise self._protocol_error(f'garbage ("{shown}")', awaiting)
            if code is not None and parsed[0] != code:
                # RFC 5321 §4.2.1: every line of a multiline reply carries the same code.
                raise self._protocol_error(f"lines with codes {code} and {parsed[0]}", awaiting)
            code, more, text = parsed
            lines.append(_printable(text, limit=1000))
            if not more:
                break
            if len(lines) >= _MAX_REPLY_LINES:
                raise self._protocol_error(f"more than {_MAX_REPLY_LINES} lines", awaiting)
        reply = _ServerReply(code, tuple(lines))
        if code == 421:
            self.usable = False
            raise _SessionError(reply.to_reply(self.target.host))
        return reply

    def _read_line(self, *, deadline: float, timeout: float, awaiting: str) -> bytes:
        while True:
            end = self._buffer.find(b"\n", 0, _MAX_REPLY_LINE)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                # A bare LF is taken as the end of a reply line: leniency here costs nothing.
                return line.rstrip(b"\n").removesuffix(b"\r")
            if len(self._buffer) >= _MAX_REPLY_LINE:
                raise self._protocol_error(f"a line longer than {_MAX_REPLY_LINE} octets", awaiting)
            self._receive(deadline=deadline, timeout=timeout, awaiting=awaiting)

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
        self._buffer += data

    def command(
        self, line: str, *, timeout: float, transcript: Transcript | None, utf8: bool = False
    ) -> _ServerReply:
        """Send one command line and read its reply."""
        self.send_line(line, timeout=timeout, transcript=transcript, utf8=utf8)
        verb = line.split(" ", 1)[0]
        return self.read_reply(timeout=timeout, awaiting=f"reply to {verb}", transcript=transcript)

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
        while block := source.read(_CHUNK):
            out = encoder.encode(block)
            self.send_raw(out, timeout=timeout, sending="the message")
            sent += len(out)
        out = encoder.finish()
        self.send_raw(out, timeout=timeout, sending="the message")
        return sent + len(out)

    def close(self) -> None:
        self.usable = False
        with contextlib.suppress(OSError):
            self._sock.close()


def _needs_smtputf8(sender: str, recipients: Iterable[str]) -> bool:
    return not sender.isascii() or not all(r.isascii() for r in recipients)


def _has_eight_bit(message: Outgoing) -> bool:
    # A first streaming pass over the stored file, only when the server offers 8BITMIME (the one
    # case where the answer changes what we send). A server without 8BITMIME gets the bytes as they
    # are, as most MTAs do; RFC 6152 §3's conversion to 7 bit is not implemented.
    with message.open() as source:
        while block := source.read(_CHUNK):
            if not block.isascii():
                return True
    return False


def _refusal(
    extensions: SmtpExtensions, message: Outgoing, recipients: Sequence[str], host: str
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
    if _UNSENDABLE.search(message.sender):
        # RFC 3463 X.1.7: bad sender's mailbox address syntax.
        return Reply(553, "5.1.7", f"sender address {message.sender!r} cannot be sent", host=host)
    return None


def _mail_parameters(extensions: SmtpExtensions, message: Outgoing, *, utf8: bool) -> str:
    parameters = []
    if extensions.size is not None:
        # RFC 1870 §5: the size counts CRLFs but not stuffing dots or the final ".": exactly the
        # stored size.
        parameters.append(f"SIZE={message.size}")
    if extensions.eight_bit_mime and _has_eight_bit(message):
        parameters.append("BODY=8BITMIME")  # RFC 6152 §3
    if utf8:
        parameters.append("SMTPUTF8")  # RFC 6531
    return "".join(f" {p}" for p in parameters)


def _answer_all(answers: dict[str, Reply], recipients: Iterable[str], reply: Reply) -> None:
    for recipient in recipients:
        answers.setdefault(recipient, reply)


class SmtpTransport:
    """Sends messages over SMTP, keeping one connection per target for reuse.

    ``SmtpTransport(helo_name="mail.example.com")``; ``timeouts`` bounds every wait
    (:class:`SmtpTimeouts`); ``monotonic`` (seconds, :func:`time.monotonic` by default) ages kept
    connections, so a test can expire them without waiting. Safe to share between threads: each
    :meth:`send` uses its own connection. Call :meth:`close` (or use it as a context manager) to
    QUIT the connections it keeps.

    What each outcome becomes, for every recipient not answered yet (RFC 3463 codes):

    - the server's own reply: 4xx/5xx to MAIL (everyone), to RCPT (that recipient), to DATA or
      the final "." (every accepted recipient); 421 at any point, after which the connection closes;
    - ``451 4.4.1``: no connection (refused, unreachable, connect timeout) or a non-2xx greeting;
    - ``451 4.4.3``: the host name does not resolve;
    - ``451 4.4.2``: the connection broke or timed out after it was established;
    - ``451 4.5.0``: the server sent garbage or a reply of the wrong class;
    - ``552 5.3.4``: the message exceeds the server's SIZE (no MAIL is sent);
    - ``553 5.6.7``: non-ASCII addresses and no SMTPUTF8 (no MAIL is sent);
    - ``553 5.1.7`` / ``553 5.1.3``: a sender / recipient address with control characters.
    """

    def __init__(
        self,
        *,
        helo_name: str,
        timeouts: SmtpTimeouts = _RFC_TIMEOUTS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # RFC 5321 §4.1.1.1: EHLO names this host by its FQDN or an address literal.
        if not _HELO_NAME.fullmatch(helo_name):
            raise ConfigurationError(
                f"helo_name must be this host's FQDN or an address literal, not {helo_name!r}"
            )
        self._helo_name = helo_name
        self._timeouts = timeouts
        self._monotonic = monotonic
        self._idle: dict[Target, _Session] = {}
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
            session = self._session(target, transcript)
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
            sessions = list(self._idle.values())
            self._idle.clear()
        for session in sessions:
            self._discard(session, None)

    # Connections.

    def _session(self, target: Target, transcript: Transcript) -> _Session:
        kept = self._take_kept(target)
        if kept is not None:
            transcript.note(f"reusing the connection to {_where(target)}")
            # RFC 5321 §4.1.1.5: RSET starts clean and, here, proves the connection still works.
            # A connection that fails it is replaced once, transparently.
            try:
                reply = kept.command("RSET", timeout=self._timeouts.rset, transcript=transcript)
                if reply.code // 100 == 2:
                    return kept
                transcript.note("the kept connection refused RSET; connecting again")
            except _SessionError as ended:
                transcript.note(
                    f"the kept connection is gone ({ended.reply.text}); connecting again"
                )
            self._discard(kept, transcript)
        return self._open(target, transcript)

    def _open(self, target: Target, transcript: Transcript) -> _Session:
        session = _Session.connect(target, timeout=self._timeouts.connect, transcript=transcript)
        try:
            self._greet(session, transcript)
        except BaseException:
            self._discard(session, transcript)
            raise
        return session

    def _greet(self, session: _Session, transcript: Transcript) -> None:
        """Read the greeting and introduce ourselves: EHLO, or HELO to an old server.

        STARTTLS and AUTH, when they come, belong at the end of this: both follow EHLO and both
        are followed by a fresh EHLO (RFC 3207 §4.2, RFC 4954 §4).
        """
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

    def _take_kept(self, target: Target) -> _Session | None:
        now = self._monotonic()
        with self._lock:
            expired = [s for s in self._idle.values() if now - s.last_used > self._timeouts.idle]
            for session in expired:
                del self._idle[session.target]
            kept = self._idle.pop(target, None)
        for session in expired:
            self._discard(session, None)
        return kept

    def _release(self, session: _Session, transcript: Transcript) -> None:
        if not session.usable or self._timeouts.idle == 0:
            self._discard(session, transcript)
            return
        session.last_used = self._monotonic()
        with self._lock:
            previous = self._idle.get(session.target)
            self._idle[session.target] = session
        if previous is not None:
            # Another thread kept a connection to the same target meanwhile; one is enough.
            self._discard(previous, None)

    def _discard(self, session: _Session, transcript: Transcript | None) -> None:
        # RFC 5321 §4.1.1.10: say QUIT before closing, when the session is in a state to hear it.
        if session.usable:
            with contextlib.suppress(_SessionError):
                session.command("QUIT", timeout=self._timeouts.quit, transcript=transcript)
        session.close()

    # The transaction.

    def _transact(
        self,
        session: _Session,
        message: Outgoing,
        recipients: tuple[str, ...],
        answers: dict[str, Reply],
        transcript: Transcript,
    ) -> None:
        host = session.target.host
        refusal = _refusal(session.extensions, message, recipients, host)
        if refusal is not None:
            transcript.note(f"not sent: {refusal}")
            _answer_all(answers, recipients, refusal)
            return
        sendable = []
        for recipient in recipients:
            if not recipient or _UNSENDABLE.search(recipient):
                # RFC 3463 X.1.3: bad destination mailbox address syntax.
                answers[recipient] = Reply(
                    553, "5.1.3", f"recipient address {recipient!r} cannot be sent", host=host
                )
            else:
                sendable.append(recipient)
        if not sendable:
            return
        utf8 = _needs_smtputf8(message.sender, sendable)
        parameters = _mail_parameters(session.extensions, message, utf8=utf8)
        mail = session.command(
            f"MAIL FROM:<{message.sender}>{parameters}",
            timeout=self._timeouts.mail,
            transcript=transcript,
            utf8=utf8,
        )
        if not session.positive(mail, expected=2, awaiting="reply to MAIL"):
            _answer_all(answers, sendable, mail.to_reply(host))
            return
        accepted = self._recipients(session, sendable, answers, transcript, utf8=utf8)
        if not accepted:
            # RFC 5321 §3.3: no recipient accepted, nothing to send; end the transaction.
            rset = session.command("RSET", timeout=self._timeouts.rset, transcript=transcript)
            session.usable = rset.code // 100 == 2
            return
        data = session.command("DATA", timeout=self._timeouts.data_start, transcript=transcript)
        if not session.positive(data, expected=3, awaiting="reply to DATA"):
            _answer_all(answers, accepted, data.to_reply(host))
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
        # recipient, whether 2xx, 4xx or 5xx; only a 3xx here is a protocol error.
        session.positive(end, expected=2, awaiting="reply to the end of data")
        _answer_all(answers, accepted, end.to_reply(host))

    def _recipients(
        self,
        session: _Session,
        recipients: Sequence[str],
        answers: dict[str, Reply],
        transcript: Transcript,
        *,
        utf8: bool,
    ) -> list[str]:
        """RCPT TO for each recipient; rejected ones are answered now, accepted ones returned."""
        accepted = []
        for recipient in recipients:
            reply = session.command(
                f"RCPT TO:<{recipient}>",
                timeout=self._timeouts.rcpt,
                transcript=transcript,
                utf8=utf8,
            )
            if session.positive(reply, expected=2, awaiting="reply to RCPT"):
                accepted.append(recipient)
            else:
                answers[recipient] = reply.to_reply(session.target.host)
        return accepted
