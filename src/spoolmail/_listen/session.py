"""One inbound SMTP session: aiosmtpd's protocol, told what to do by spoolmail's rules.

aiosmtpd parses the commands, runs STARTTLS and reads DATA; this module is the glue that it
calls, and nothing more: the decisions are pure functions elsewhere (who may connect and relay:
``_core.relay``; the DSN parameters and the Received field: ``_core.esmtp``; reply codes:
``replies``). What it adds to aiosmtpd, and why:

- **Connection control and a session limit** before the greeting: a denied client gets
  ``554 5.7.1`` and only ``503`` until QUIT (RFC 5321 section 3.1); one over ``max_sessions``
  gets ``421 4.7.0`` and is closed.
- **Bare CR and LF are refused** (SMTP smuggling, as Postfix's ``smtpd_forbid_bare_newline =
  yes``): every line the session reads, command or DATA, must end in CRLF and hold no other CR
  or LF; otherwise ``521 5.5.2 Error: bare <LF> received`` and the connection is closed, with
  nothing queued. aiosmtpd reads DATA up to CRLF only, so ``<LF>.<LF>`` and ``<CR>.<CR>``
  never end a message; refusing them outright means no other MTA down the line can be made to
  read them differently either.
- **RFC 3461 parameters** are taken out of MAIL and RCPT before aiosmtpd sees them (it answers
  555 to parameters it does not know).
- **The commit before 250**: DATA's message goes to the listener's :class:`Committer` (a
  thread that commits concurrent sessions' messages as one group, with one sync); ``250 2.0.0
  Ok: queued as ID`` is sent only when that message is durable, ``451 4.3.0`` when its commit
  failed. A client that leaves before the end of DATA, or says RSET, has nothing queued.
- **AUTH PLAIN and LOGIN** only over TLS (aiosmtpd refuses them before with 538), checked in a
  worker thread against the embedder's callable; each failure waits a little longer, and a few
  of them end the session (``421 4.7.0``). No password is logged or kept.

Logs one INFO record per accepted message and per refusal (with the reply), never content.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import re
import socket
import ssl
import sys
import warnings
from base64 import b64decode
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs
from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    MISSING,
    SMTP,
    Envelope,
    Session,
    TLSSetupException,
    _AuthMechAttr,
    login_always_fail,
    sanitized_log,
    syntax,
)

from spoolmail._core.address import AddressRole, parse_mailbox
from spoolmail._core.envelope import Recipient
from spoolmail._core.esmtp import (
    MailDsn,
    RcptDsn,
    TlsFacts,
    protocol_name,
    received_field,
    split_mail_parameters,
    split_rcpt_parameters,
)
from spoolmail._core.headers import HEAD_END, crlf_lines, has_long_line
from spoolmail._core.relay import AccessPolicy, IPAddress, RcptVerdict, client_address
from spoolmail._core.routing import Router
from spoolmail._listen.committer import Committer
from spoolmail._listen.replies import enhance
from spoolmail._service.observers import log_line
from spoolmail._store.spool import Admission, Spool
from spoolmail.exceptions import MessageError, SpoolmailError

__all__ = ["Config", "Hooks", "SmtpSession"]

log = logging.getLogger("spoolmail.listener")
_mail_log = logging.getLogger("mail.log")  # aiosmtpd's own log, which it writes to as well

Credentials = Callable[[str, str], bool]
# RFC 5321 section 4.5.3.1.6: a text line is at most 998 octets and CRLF.
MAX_LINE = 998
# A path as nearly every client writes it: <dot-atom@dot-atom> in ASCII (RFC 5321 section 4.1.2).
# aiosmtpd reads paths with the email package's header parser (and defines a class on every
# call); this one is read by a regular expression, anything else still by aiosmtpd.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*)>")


# MAIL and RCPT without DSN parameters (frozen: one of each serves every session).
_NO_MAIL_DSN = MailDsn()
_NO_RCPT_DSN = RcptDsn()


@functools.lru_cache(maxsize=1024)
def _client(host: str) -> tuple[IPAddress | None, str]:
    """``client_address`` of a peer's host and its text, remembered: clients come back."""
    try:
        client: IPAddress | None = client_address(host)
    except ValueError:  # a Unix socket, say: no address to judge
        client = None
    return client, str(client)


@functools.lru_cache(maxsize=1024)
def _mailbox(address: str, role: AddressRole) -> str:
    """``parse_mailbox`` of a MAIL or RCPT address, remembered: clients send the same few."""
    return parse_mailbox(address, default_domain=None, role=role)


@attrs.frozen(kw_only=True)
class Config:
    """What every session of one listener shares: the spool, the rules and the limits."""

    spool: Spool
    router: Router
    access: AccessPolicy
    fqdn: str
    executor: Executor
    committer: Committer
    max_message_size: int
    max_recipients: int
    max_header_size: int
    max_sessions: int
    min_free_space: int
    max_auth_failures: int
    auth_failure_delay: float
    credentials: Credentials | None = None
    clock: Callable[[], datetime]


class _BareNewline(BaseException):
    """A line with a bare CR or LF: ends the session.

    A BaseException because aiosmtpd's command loop answers every ``Exception`` with a 500 and
    reads on; this one must leave that loop, to :meth:`SmtpSession._handle_client`.
    """

    def __init__(self, char: str) -> None:
        super().__init__(char)
        self.char = char


_CR = ord("\r")


class _StrictReader(asyncio.StreamReader):
    """aiosmtpd's stream reader, refusing a line with a bare CR or LF.

    aiosmtpd reads commands up to LF (so a bare LF ends a command) and DATA up to CRLF (so a
    bare LF or CR passes into the message); every read goes through ``readuntil``, checked here.
    A line longer than the reader's limit is dropped as it comes (never held whole) up to its
    CRLF, which is left for the next read: aiosmtpd's command loop, told of the overrun, reads
    the rest of the line (that CRLF) and says ``500``, as to any command line too long. Left to
    asyncio, a line whose LF was already in the buffer was read up to that LF, left alone on
    a line of its own: a bare LF, and the session ended.
    """

    if TYPE_CHECKING:  # StreamReader's own state, which typeshed does not declare
        _buffer: bytearray
        _eof: bool
        _exception: BaseException | None

        async def _wait_for_data(self, func_name: str) -> None: ...
        def _maybe_resume_transport(self) -> None: ...

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        try:
            line = await super().readuntil(separator)
        except asyncio.LimitOverrunError:
            if separator != b"\n":
                raise
            await self._skip_line()
            # What aiosmtpd's command loop (and the listener's) does with this error: it reads
            # ``consumed`` octets (none), then the rest of the line (its CRLF), then says 500.
            raise asyncio.LimitOverrunError("line over the limit, dropped", 0) from None
        if not line.endswith(b"\r\n"):
            raise _BareNewline("LF")
        body = line[:-2]
        if b"\n" in body:
            raise _BareNewline("LF")
        if b"\r" in body:
            raise _BareNewline("CR")
        return line

    async def readline(self) -> bytes:
        """asyncio's ``readline`` (aiosmtpd reads AUTH's answers with it): a line over the limit
        is a ValueError, the line dropped and what follows it kept, as asyncio does."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            return error.partial
        except asyncio.LimitOverrunError as error:
            del self._buffer[:2]  # the CRLF that readuntil left
            self._maybe_resume_transport()
            raise ValueError(error.args[0]) from None

    async def _skip_line(self) -> None:
        """Drop a line over the limit up to its CRLF, which is left in the buffer: the line is
        never held whole, only what the buffer holds at a time. Checked as a line is: its LF
        with no CR before it is a bare LF, a CR with no LF after it a bare CR."""
        bare_cr = False
        while True:
            if self._exception is not None:
                raise self._exception
            buffer = self._buffer
            end = buffer.find(b"\n")
            stop = end if end >= 0 else len(buffer)  # the line's octets in the buffer
            # A CR last is kept: it may be the line's end, with an LF in the next read.
            keep = stop - 1 if stop and buffer[stop - 1] == _CR else stop
            if buffer.find(b"\r", 0, keep) >= 0:
                bare_cr = True
            if end >= 0 and keep == stop:
                raise _BareNewline("LF")
            if end >= 0 and bare_cr:
                raise _BareNewline("CR")
            del buffer[:keep]
            self._maybe_resume_transport()
            if end >= 0:
                return
            if self._eof:
                raise asyncio.IncompleteReadError(b"", None)
            await self._wait_for_data("readuntil")

    async def read_message(self, max_size: int) -> bytearray | None:
        """DATA's content: what follows the 354 up to the line with the lone dot (read, not
        returned), still dot-stuffed; ``None`` when it is over ``max_size`` octets (read to its
        end all the same, as RFC 5321 section 4.2.5 implies). :attr:`dot_lines` tells
        afterwards whether a line of it begins with a dot (only then is there a dot to take).

        The whole message at once instead of aiosmtpd's line at a time: the buffer is searched
        for each CRLF and dot, the end (CRLF.CRLF) or a dot-stuffed line, and what comes before
        the end is taken in pieces (all but the last 4 octets, which may begin the end), each
        checked for a bare CR or LF as ``readuntil`` checks a line. What follows the dot
        (pipelined commands) stays in the buffer. Works on the buffer of
        ``asyncio.StreamReader`` as its own ``readuntil`` does.
        """
        content = bytearray()
        size = 0
        carry = b""  # a CR that ended the last piece: its LF may come in the next
        self.dot_lines = False
        while True:
            if self._exception is not None:
                raise self._exception
            buffer = self._buffer
            end = skip = -1
            if size == 0 and buffer[:3] == b".\r\n":
                end, skip = 0, 3  # an empty message
            else:
                if size == 0 and len(buffer) > 4 and buffer[0] == _DOT:
                    self.dot_lines = True  # the first line (the test above took ".\r\n")
                found, dotted = _end_of_data(buffer)
                self.dot_lines = self.dot_lines or dotted
                if found >= 0:
                    end, skip = found + 2, found + 5
            take = end if end >= 0 else max(len(buffer) - 4, 0)
            if take:
                piece = buffer[:take]
                carry = _checked(carry + piece if carry else piece)
                size += take
                if size <= max_size:
                    content += piece
                elif content:
                    content = bytearray()  # over the limit: kept no longer
            if end >= 0:
                del buffer[:skip]
                self._maybe_resume_transport()
                return content if size <= max_size else None
            if take:
                del buffer[:take]
                self._maybe_resume_transport()
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(content), None)
            await self._wait_for_data("read_message")


_DOT, _CR, _LF = b".\r\n"


def _end_of_data(buffer: bytearray) -> tuple[int, bool]:
    """Where the CRLF.CRLF that ends DATA begins in ``buffer`` (-1: not there yet), and whether
    a line before it begins with a dot (a CRLF and a dot, then anything but CRLF)."""
    dotted = False
    found = buffer.find(b"\r\n.")
    while found >= 0:
        tail = len(buffer) - found
        if tail < 5:  # CRLF. cut short: the next read tells
            return -1, dotted or (tail == 4 and buffer[found + 3] != _CR)
        if buffer[found + 3] == _CR and buffer[found + 4] == _LF:
            return found, dotted
        dotted = True
        found = buffer.find(b"\r\n.", found + 3)
    return -1, dotted


def _checked(data: bytes | bytearray) -> bytes:
    """Raise :class:`_BareNewline` if ``data`` has a CR or LF outside a CRLF; a CR at its very
    end is the caller's to check with what follows (returned)."""
    carry = b""
    if data.endswith(b"\r"):
        data, carry = data[:-1], b"\r"
    if crlf_lines(data) is None:
        for line in data.split(b"\r\n"):  # named as readuntil names it, line by line
            if b"\n" in line:
                raise _BareNewline("LF")
            if b"\r" in line:
                raise _BareNewline("CR")
    return carry


def _unstuffed(content: bytes | bytearray) -> bytes | bytearray:
    """RFC 5321 section 4.5.2: the leading dot of every line that has one removed."""
    if content.startswith(b"."):
        content = b"\r\n" + content
        return content.replace(b"\r\n.", b"\r\n")[2:]
    return content.replace(b"\r\n.", b"\r\n")


# The constructor options with which a session is set up by SmtpSession._quick_init.
_QUICK_OPTIONS = frozenset(
    {
        "loop",
        "data_size_limit",
        "enable_SMTPUTF8",
        "decode_data",
        "hostname",
        "ident",
        "tls_context",
        "timeout",
        "auth_require_tls",
        "auth_exclude_mechanism",
    }
)


class _Tables(NamedTuple):
    """What aiosmtpd's constructor finds by scanning a session and its handler, in its order:
    the AUTH mechanisms (name, the session's method's name, or the handler's method), the
    handler's hooks, how the EHLO hook is called, the commands (name, the method's name)."""

    auth: tuple[tuple[str, str, _AuthMechAttr | None], ...]
    hooks: dict[str, Callable[..., Any]]
    ehlo_hook_ver: str | None
    smtp: tuple[tuple[str, str], ...]


def _scan(session: SMTP, handler: object, exclude: tuple[str, ...]) -> _Tables:
    """aiosmtpd's scans of a session and its handler (``SMTP.__init__``), made for a class."""
    auth: dict[str, tuple[str, _AuthMechAttr | None]] = {}
    for owner in (session, handler):
        for attribute, method in inspect.getmembers(owner):
            if attribute.startswith("auth_"):
                default = attribute.replace("auth_", "").replace("__", "-")
                name = getattr(method, "__auth_mechanism_name__", default)
                own = owner is session
                auth[name] = (attribute, None if own else _AuthMechAttr(method, False))
    for name in exclude:
        auth.pop(name, None)
    hooks = {
        attribute.replace("handle_", ""): getattr(handler, attribute)
        for attribute in dir(handler)
        if attribute.startswith("handle_")
    }
    ehlo = hooks.get("EHLO")
    version: str | None = None
    if ehlo is not None:
        count = len(inspect.signature(ehlo).parameters)
        if count == 4:
            version = "old"
            warnings.warn(
                "Use the 5-argument handle_EHLO() hook instead of the 4-argument handle_EHLO() "
                "hook; support for the 4-argument handle_EHLO() hook will be removed in "
                "version 2.0",
                DeprecationWarning,
                stacklevel=2,
            )
        elif count == 5:
            version = "new"
        else:
            raise RuntimeError("Unsupported EHLO Hook")
    return _Tables(
        auth=tuple((name, attribute, made) for name, (attribute, made) in auth.items()),
        hooks=hooks,
        ehlo_hook_ver=version,
        smtp=tuple(
            (attribute.replace("smtp_", ""), attribute)
            for attribute in dir(session)
            if attribute.startswith("smtp_")
        ),
    )


class Transaction(Envelope):
    """aiosmtpd's envelope with what spoolmail records of one transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.dsn = _NO_MAIL_DSN
        self.recipients: list[Recipient] = []
        self.eight_bit = False
        # DATA's content, unstuffed (aiosmtpd's content and original_content, which are
        # bytes: this is the reader's buffer, not copied again for a type)
        self.message: bytes | bytearray = b""


def _command_size_limits() -> collections.defaultdict[str, int]:
    """aiosmtpd's command size limits before EHLO: 512 octets for every command."""
    return collections.defaultdict(lambda: SMTP.command_size_limit)


# Postfix's junk commands (smtpd_junk_command_limit, 100): each resets the silence timer, so a
# client that says NOOP now and then holds its session, and a place among max_sessions, for
# ever. At most this many between two accepted messages (a client that sends RSET or NOOP
# between its messages is not cut off); the next is answered 421 and the session ends.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY"})
JUNK_LIMIT = 100

# What one read from a client's socket may bring (see SmtpSession._cb_client_connected).
_READ_SIZE = 64 * 1024


class SmtpSession(SMTP):
    """One connection. Made by the listener for each client; state lives here and in
    aiosmtpd's ``session`` and ``envelope``."""

    # The stream reader's limit. aiosmtpd sizes it by its DATA line limit (1,001 octets), so
    # the transport pauses and resumes (an epoll change each way) for every 2 KB of a message.
    # DATA is read whole here and its lines checked by the DATA hook (998 octets, 500 5.5.2);
    # a command line still gets its 500 past aiosmtpd's command size limit (512 octets), and
    # one past this limit the same 500 (see _StrictReader.readuntil).
    line_length_limit = 64 * 1024

    if TYPE_CHECKING:  # asyncio's FlowControlMixin's state, which typeshed does not declare
        _paused: bool
        _connection_lost: bool

    def __init__(self, hooks: Hooks, *, sessions: set[SmtpSession], **options: Any) -> None:
        if options.keys() <= _QUICK_OPTIONS and not options.get("decode_data"):
            self._quick_init(hooks, **options)
        else:  # aiosmtpd's options that spoolmail does not set
            super().__init__(hooks, **options)
        self.config = hooks.config
        # aiosmtpd's limits are one dict of its class, cleared by every new session and grown by
        # every EHLO of any (SIZE's and SMTPUTF8's room, added again each time): a client that
        # said EHLO a few thousand times could send MAIL lines as long as the reader's limit,
        # whose paths the email package's parser reads in quadratic time, seconds of the loop's.
        # Each session has its own, made again at each EHLO (see smtp_EHLO).
        self.command_size_limits: dict[str, int] = _command_size_limits()
        self.client: IPAddress | None = None
        self.client_name = "None"  # str(client), made once: Received, origin and log lines
        self.auth_failures = 0
        self.junk_commands = 0  # since the last accepted message (JUNK_LIMIT)
        self.user: str | None = None
        self._sessions = sessions
        self._next_mail = _NO_MAIL_DSN
        self._next_rcpt = _NO_RCPT_DSN
        self._silence_ends = 0.0
        self._in_transaction = False  # MAIL accepted, the message not yet handed over

    def _quick_init(
        self,
        hooks: Hooks,
        *,
        loop: asyncio.AbstractEventLoop,
        data_size_limit: int | None,
        enable_SMTPUTF8: bool,  # noqa: N803
        hostname: str,
        ident: str,
        tls_context: ssl.SSLContext | None,
        timeout: float,
        decode_data: bool = False,
        auth_require_tls: bool = True,
        auth_exclude_mechanism: tuple[str, ...] = (),
    ) -> None:
        """What aiosmtpd's constructor does for the options the listener gives it, with the
        tables it makes by scanning the handler and the session (``inspect.getmembers`` and
        ``dir``, a few hundred attributes: most of a connection's set-up) made once a listener:
        see :meth:`Hooks.tables`. The same attributes with the same values (a test compares)."""
        self.__ident__ = ident
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = hooks
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.hostname = hostname or socket.getfqdn()
        self.tls_context = tls_context
        if tls_context is not None:
            if tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
                _mail_log.warning(
                    "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
                    "this might cause client connection problems"
                )
            elif tls_context.check_hostname:
                _mail_log.warning(
                    "tls_context.check_hostname == True; this might cause client "
                    "connection problems"
                )
        self.require_starttls = None if tls_context is None else False  # as aiosmtpd sets it
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._auth_callback = login_always_fail
        self._authenticator = None
        self._auth_required = False
        tables = hooks.tables(self, tuple(auth_exclude_mechanism))
        self._auth_methods = {
            name: _AuthMechAttr(getattr(self, attribute), True) if builtin is None else builtin
            for name, attribute, builtin in tables.auth
        }
        if _mail_log.isEnabledFor(logging.INFO):
            mechanisms = (
                f"{name}(builtin)" if impl.is_builtin else name
                for name, impl in sorted(self._auth_methods.items())
            )
            _mail_log.info("Available AUTH mechanisms: " + " ".join(mechanisms))
        self._handle_hooks = dict(tables.hooks)
        self._ehlo_hook_ver = tables.ehlo_hook_ver
        self._smtp_methods = {name: getattr(self, attribute) for name, attribute in tables.smtp}
        self._enforce_call_limit = False

    # -- the connection ----------------------------------------------------------------------

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The reader aiosmtpd made in its constructor, given the check above. Its class is
        # swapped rather than the reader replaced: asyncio keeps references to it elsewhere.
        reader.__class__ = _StrictReader
        # asyncio's socket transport reads into a new bytes object of its ``max_size`` (256
        # KiB) for every recv: past glibc's mmap threshold, so each read of a six-octet command
        # was an mmap, an mremap and a munmap with the GIL held, a quarter of the listener's
        # time at five clients. A smaller read comes from the heap; a big DATA takes more reads.
        if getattr(writer.transport, "max_size", 0) > _READ_SIZE:
            writer.transport.max_size = _READ_SIZE  # type: ignore[attr-defined]
        super()._cb_client_connected(reader, writer)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's silence timer, restarted at every command, without a new timer each time:
        the deadline moves, and the timer, when it fires early, waits for the rest."""
        self._silence_ends = self.loop.time() + (duration or self._timeout_duration)
        timer = self._timeout_handle
        if timer is None or timer.cancelled() or timer.when() > self._silence_ends:
            if timer is not None:
                timer.cancel()
            self._timeout_handle = self.loop.call_at(self._silence_ends, self._timeout_cb)

    def _timeout_cb(self) -> None:
        if self.loop.time() < self._silence_ends:
            self._timeout_handle = self.loop.call_at(self._silence_ends, self._timeout_cb)
            return
        log.info("%s: connection timeout", self.client)
        self.close()

    async def _handle_client(self) -> None:
        if self.session is None or self.transport is None:
            return  # the connection went before it began
        peer = self.session.peer
        self.client, self.client_name = _client(
            str(peer[0]) if isinstance(peer, tuple) else str(peer)
        )
        if len(self._sessions) >= self.config.max_sessions:
            await self.push(f"421 4.7.0 {self.config.fqdn} Too many connections, try later")
            self.close()
            return
        # A client turned away waits for its QUIT (or the timeout) as a session: it counts
        # among them, or clients from denied networks could hold connections without bound.
        self._sessions.add(self)
        try:
            if self.client is None or not self.config.access.admits(self.client):
                await self._turn_away()
            elif self._proxy_timeout is None and not self._enforce_call_limit:
                await self._serve_commands()
            else:  # aiosmtpd's options that spoolmail does not set
                await super()._handle_client()
        except _BareNewline as bare:
            await self.push(f"521 5.5.2 {self.config.fqdn} Error: bare <{bare.char}> received")
            self.close()
        finally:
            self._sessions.discard(self)
            if self._original_transport is not None:
                # After STARTTLS: closing the TLS transport sent our close_notify, and asyncio
                # would wait up to 30 s for the client's; Postfix does not wait, nor does this.
                # Otherwise a client that never sends it keeps the connection open, counted
                # among no sessions (this one has ended), past the listener's stop.
                self._original_transport.close()

    async def _serve_commands(self) -> None:
        """aiosmtpd's command loop (``SMTP._handle_client``) without what spoolmail does not use
        (the PROXY header, call limits): the greeting, then each command read, checked and
        answered as aiosmtpd does, with the same replies and logging. Its per-line debug and
        info logs (``mail.log``) are formatted only when that logger would write them."""
        session = self.session
        if session is None:
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus_budget = BOGUS_LIMIT
        while self.transport is not None:
            try:
                command = await self._read_command(session)
                if command is None:
                    continue  # answered already
                name, arg = command
                method = self._smtp_methods.get(name)
                if method is None:
                    bogus_budget -= 1
                    await self._unknown(session, name, bogus_budget)
                    continue
                if name in JUNK_COMMANDS:
                    self.junk_commands += 1
                    if self.junk_commands > JUNK_LIMIT:
                        await self._too_much_junk(session)
                        return
                self._reset_timeout()
                await method(arg)
            except (asyncio.CancelledError, ConnectionResetError):
                _mail_log.info("%r Connection lost during _handle_client()", session.peer)
                self._writer.close()
                raise
            except Exception as error:  # noqa: BLE001 (aiosmtpd's: answered, the session goes on)
                await self._answer_exception(error)

    async def _read_command(self, session: Session) -> tuple[str, str | None] | None:
        """The next command's name and argument, checked as aiosmtpd checks them; None when
        the line was answered already (too long, bad syntax, refused before TLS)."""
        reader = self._reader
        try:
            line: bytes = await reader.readuntil()
        except asyncio.LimitOverrunError as error:
            # Too long: the rest of the line is read (and dropped) before the 500; the reader
            # has dropped all of it but its CRLF, the loop is aiosmtpd's.
            await reader.read(error.consumed)
            while True:
                try:
                    await reader.readuntil()
                    break
                except asyncio.LimitOverrunError as more:
                    await reader.read(more.consumed)
            await self.push("500 Command line too long")
            return None
        if _mail_log.isEnabledFor(logging.DEBUG):
            sanitized_log(_mail_log.debug, "_handle_client readline: %r", line)
        line = line.rstrip(b"\r\n")
        if _mail_log.isEnabledFor(logging.INFO):
            sanitized_log(_mail_log.info, "%r >> %r", session.peer, line)
        name_bytes, _, arg_bytes = line.partition(b" ")
        if not line or not name_bytes.isascii():
            await self.push("500 Error: bad syntax")
            return None
        name = name_bytes.upper().decode("ascii")
        arg: str | None = None
        if arg_bytes:
            arg_bytes = arg_bytes.strip()
            if self.enable_SMTPUTF8:
                arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
            elif arg_bytes.isascii():
                arg = arg_bytes.decode("ascii")
            else:
                await self.push("500 Error: strict ASCII mode")
                return None
        refusal = self._refusal(session, name, len(line))
        if refusal is not None:
            await self.push(refusal)
            return None
        return name, arg

    def _refusal(self, session: Session, name: str, size: int) -> str | None:
        """aiosmtpd's reply to a command refused before it runs, or None."""
        limit = self.command_size_limits[name] if session.extended_smtp else self.command_size_limit
        if size > limit:
            return "500 Command line too long"
        if not self._tls_handshake_okay and name != "QUIT":
            return "554 Command refused due to lack of security"
        if self.require_starttls and not self._tls_protocol and name not in ALLOWED_BEFORE_STARTTLS:
            return "530 Must issue a STARTTLS command first"  # RFC 3207 section 4
        return None

    async def _too_much_junk(self, session: Session) -> None:
        _mail_log.warning("%r too many junk commands", session.peer)
        await self.push(f"421 4.7.0 {self.config.fqdn} Error: too many junk commands")
        if self.transport is not None:
            self.transport.close()

    async def _unknown(self, session: Session, name: str, budget: int) -> None:
        """An unknown command: 500, or after a few of them 502 and the end (aiosmtpd's)."""
        _mail_log.warning("%r unrecognised: %s", session.peer, name)
        if budget < 1:
            _mail_log.warning("%r too many bogus commands", session.peer)
            await self.push("502 Too many unrecognized commands, goodbye.")  # 5.5.1 added
            if self.transport is not None:
                self.transport.close()
            return
        await self.push(f'500 Error: command "{name}" not recognized')

    async def _answer_exception(self, error: Exception) -> None:
        """What aiosmtpd's command loop does with a command's exception: the handler's reply
        (a TLS set-up failure ends the connection instead)."""
        if isinstance(error, TLSSetupException):
            # A client's doing (a scanner, plain text after STARTTLS, a handshake cut short),
            # not the listener's failure: one INFO line, not the handler's error and traceback.
            log.info("%s: TLS handshake failed: %s", self.client, error.__cause__ or error)
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(None)  # the reason is logged: no future left unread
            return
        try:
            status = await self.handle_exception(error)
        except Exception as inner:  # noqa: BLE001 (as aiosmtpd: described, not raised)
            try:
                _mail_log.exception("%r Exception in handle_exception()", self.session_peer)
                status = f"500 Error: ({inner.__class__.__name__}) {inner}"
            except Exception:  # noqa: BLE001
                status = "500 Error: Cannot describe error"
        await self.push(status)

    @property
    def session_peer(self) -> Any:
        return self.session.peer if self.session is not None else None

    async def _turn_away(self) -> None:
        """RFC 5321 section 3.1: a 554 greeting, then 503 to anything but QUIT (a few times)."""
        await self.push(f"554 5.7.1 {self.config.fqdn} Access denied for {self.client}")
        try:
            for _ in range(3):
                line = await self._reader.readuntil()
                if line.strip().upper() == b"QUIT":
                    await self.push("221 2.0.0 Bye")
                    break
                await self.push("503 5.7.1 Access denied")
        except (_BareNewline, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """End the connection (what was written is sent first)."""
        if self.transport is not None:
            self.transport.close()

    def say_goodbye(self, reply: str) -> None:
        """Send ``reply`` and close, from outside the session (the listener stopping)."""
        if self._writer is not None and self.transport is not None:
            self._writer.write(reply.encode("ascii") + b"\r\n")
        self.close()
        if self._original_transport is not None:
            # After STARTTLS: no waiting for the client's close_notify when the listener stops.
            self._original_transport.close()

    async def push(self, status: Any) -> None:
        """aiosmtpd's ``push`` (the reply written, then the writer drained), each reply with its
        RFC 3463 code. The drain is awaited only when it has something to do: a transport that
        is paused, closing or gone, or a reader that failed (a reply of a few dozen octets
        almost never finds one); otherwise it would return at once, at the cost of a few calls."""
        if isinstance(status, str):
            status = enhance(status)
            if status[:1] in ("4", "5"):
                log.info("%s refused: %s", self.client, status)
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        writer = self._writer
        writer.write(response + b"\r\n")
        if _mail_log.isEnabledFor(logging.DEBUG):
            _mail_log.debug("%r << %r", self.session_peer, response)
        if (
            self._paused
            or self._connection_lost
            or writer.transport.is_closing()
            or self._reader.exception() is not None
        ):
            await writer.drain()

    # -- EHLO and STARTTLS --------------------------------------------------------------------

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802 (aiosmtpd's name)
        """aiosmtpd's EHLO, which adds room to MAIL's limit each time, from the limits of a
        session without EHLO: MAIL gets that room once however many EHLOs a client sends."""
        self.command_size_limits = _command_size_limits()
        await super().smtp_EHLO(hostname)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's name)
        """aiosmtpd's STARTTLS, refused over TLS already (RFC 3207 section 4.2), and the session
        ended when its handshake was cut short.

        The silence timer closes a connection whose client never finishes the handshake; asyncio
        then wakes aiosmtpd's STARTTLS as if the handshake had ended well, but never tells the
        session the connection is lost: it waited for a command for ever, holding its place
        among ``max_sessions``. A handshake that ended well made a new aiosmtpd session with the
        TLS facts in it (``connection_made``) before STARTTLS wakes."""
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        await super().smtp_STARTTLS(arg)
        session = self.session
        if not arg and self.tls_context is not None and (session is None or session.ssl is None):
            raise TLSSetupException("the TLS handshake did not finish")

    # -- MAIL and RCPT: RFC 3461's parameters out before aiosmtpd sees them -------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's reading of a path and what follows it, without its parser for the usual
        ``<local@domain>``: the same answer (``rest`` without leading blanks), a fraction of
        the work. A comment after the path, quoted local parts, address literals, source
        routes and non-ASCII go to aiosmtpd's; a path that makes the email package's parser
        raise (``a@`` and ``"``: IndexError, others AttributeError) is malformed, ``(None,
        None)``, as aiosmtpd answers a path it refuses (``553 5.1.3``), not ``451 Internal
        error``."""
        found = _PLAIN_PATH.match(arg)
        if found is not None:
            rest = arg[found.end() :].lstrip(" \t")
            if not rest.startswith("("):
                address: str = found[1]
                limit = self.local_part_limit
                if limit and len(address.rpartition("@")[0]) > limit:
                    return None, None
                return address, rest
        try:
            return super()._getaddr(arg)
        except Exception:  # noqa: BLE001 (the parser's bugs: whatever it raises, it cannot read it)
            return None, None

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """aiosmtpd's reading of ``KEY=VALUE`` parameters, with SIZE's value in ASCII digits
        (RFC 1870 section 3): its own test, ``str.isdigit``, passes ``SIZE=\u00b2``, on which
        ``int`` raised, and the client got ``451 Internal error`` instead of a 501."""
        found: dict[str, str | bool] | None = super()._getparams(params)
        size = found.get("SIZE") if found is not None else None
        if isinstance(size, str) and not (size.isascii() and size.isdigit()):
            return None
        return found

    def _take_parameters(
        self, arg: str, keyword: str, split: Callable[[list[str]], tuple[Any, list[str]]]
    ) -> tuple[str, Any]:
        """``arg`` without its DSN parameters, and those parameters (None: none to take)."""
        stripped = self._strip_command_keyword(keyword, arg)
        if stripped is None:
            return arg, None
        address, rest = self._getaddr(stripped)
        if address is None or not rest or not rest.strip():
            return arg, None
        taken, others = split(rest.split())
        path = stripped[: len(stripped) - len(rest)].rstrip()
        return f"{keyword}{path} {' '.join(others)}".rstrip(), taken

    def _plain_path(self, arg: str | None, keyword: str) -> str | None:
        """The address of ``FROM:<local@domain>`` (``TO:``...) with nothing after the path, in a
        session that said HELO or EHLO and needs no AUTH: the case where aiosmtpd's MAIL and
        RCPT come to their hook with no parameters. None for anything else (aiosmtpd's path)."""
        session = self.session
        if arg is None or session is None or not session.host_name or self._auth_required:
            return None
        size = len(keyword)
        if arg[:size].upper() != keyword:
            return None
        found = _PLAIN_PATH.fullmatch(arg[size:].lstrip())
        if found is None:
            return None
        address: str = found[1]
        limit = self.local_part_limit
        if limit and len(address.rpartition("@")[0]) > limit:
            return None
        return address

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd's name)
        self._next_mail = _NO_MAIL_DSN
        envelope = self.envelope
        address = self._plain_path(arg, "FROM:")
        if address is not None and envelope is not None and not envelope.mail_from:
            # aiosmtpd's smtp_MAIL for a path without parameters: no SMTPUTF8, the hook's reply.
            envelope.smtp_utf8 = False
            status = await self._call_handler_hook("MAIL", address, [])
            if status is MISSING:
                envelope.mail_from = address
                status = "250 OK"
            _mail_log.info("%r sender: %s", self.session_peer, address)
            await self.push(status)
            return
        if arg is not None and self.session is not None and self.session.extended_smtp:
            try:
                arg, taken = self._take_parameters(arg, "FROM:", split_mail_parameters)
            except MessageError as exc:
                await self.push(f"501 {exc.status} {exc}")
                return
            self._next_mail = taken or _NO_MAIL_DSN
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802 (aiosmtpd's name)
        self._next_rcpt = _NO_RCPT_DSN
        envelope = self.envelope
        address = self._plain_path(arg, "TO:")
        if address is not None and envelope is not None and envelope.mail_from:
            # aiosmtpd's smtp_RCPT for a path without parameters: the hook's reply.
            status = await self._call_handler_hook("RCPT", address, [])
            if status is MISSING:
                envelope.rcpt_tos.append(address)
                status = "250 OK"
            _mail_log.info("%r recip: %s", self.session_peer, address)
            await self.push(status)
            return
        if arg is not None and self.session is not None and self.session.extended_smtp:
            try:
                arg, taken = self._take_parameters(arg, "TO:", split_rcpt_parameters)
            except MessageError as exc:
                await self.push(f"501 {exc.status} {exc}")
                return
            self._next_rcpt = taken or _NO_RCPT_DSN
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's name)
        """aiosmtpd's DATA, with the message read whole (:meth:`_StrictReader.read_message`)
        instead of a line at a time: the same replies, in the same cases."""
        session = self.session
        if (session is None or not session.host_name or self._auth_required) and (
            await self.check_helo_needed() or await self.check_auth_needed("DATA")
        ):
            return
        envelope = self.envelope
        if not isinstance(envelope, Transaction) or not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = self._reader
        if not isinstance(reader, _StrictReader):
            raise TypeError("DATA on a connection whose reader was not set up")
        try:
            content = await reader.read_message(self.data_size_limit or sys.maxsize)
        except asyncio.CancelledError:
            log.info("%s: connection lost during DATA", self.client)
            self._writer.close()
            raise
        if content is None:
            self.envelope = self._create_envelope()
            await self.push("552 Error: Too much mail data")
            return
        envelope.message = _unstuffed(content) if reader.dot_lines else content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)

    def _create_envelope(self) -> Transaction:
        self.end_transaction()
        return Transaction()

    def begin_transaction(self) -> None:
        """Tell the committer that a transaction is under way here (MAIL accepted): a group
        being gathered may wait a little for its message."""
        if not self._in_transaction:
            self._in_transaction = True
            self.config.committer.opened()

    def end_transaction(self) -> None:
        """Tell the committer that this session's transaction, if one is under way, has ended
        (its message handed over, RSET, HELO, a refusal, the client gone)."""
        if self._in_transaction:
            self._in_transaction = False
            self.config.committer.closed()

    def connection_lost(self, error: Exception | None) -> None:
        self.end_transaction()
        super().connection_lost(error)

    @property
    def tls_facts(self) -> TlsFacts | None:
        if self.transport is None or self._tls_protocol is None:
            return None
        tls = self.transport.get_extra_info("ssl_object")
        if not isinstance(tls, ssl.SSLObject | ssl.SSLSocket):
            return None
        cipher = tls.cipher()
        if cipher is None:
            return None
        return TlsFacts(version=tls.version() or cipher[1], cipher=cipher[0], bits=cipher[2])


def _ascii(text: str) -> bool:
    return text.isascii()


class Hooks:
    """aiosmtpd's handler: the ``handle_*`` hooks it calls (it finds them by name)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tables: dict[tuple[type, tuple[str, ...]], _Tables] = {}

    def tables(self, session: SmtpSession, exclude: tuple[str, ...]) -> _Tables:
        """aiosmtpd's tables of ``session`` (a new one, not yet connected) and of this handler:
        made for the first session of its class, the same for every other."""
        key = (type(session), exclude)
        tables = self._tables.get(key)
        if tables is None:
            tables = self._tables[key] = _scan(session, self, exclude)
        return tables

    async def handle_EHLO(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self,
        server: SmtpSession,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must set it itself
        keywords = [line[4:] for line in responses[1:]]
        keywords = [k for k in keywords if k not in ("HELP", "AUTH", "AUTH ")]
        if self.config.credentials is None:
            keywords = [k for k in keywords if not k.startswith("AUTH")]
        keywords += ["PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "HELP"]
        return [responses[0]] + [f"250-{k}" for k in keywords[:-1]] + [f"250 {keywords[-1]}"]

    async def handle_MAIL(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self,
        server: SmtpSession,
        session: Session,
        envelope: Transaction,
        address: str,
        mail_options: list[str],
    ) -> str:
        free = self.config.spool.free_space()
        if free is not None and free < self.config.min_free_space:
            # RFC 5321 section 4.5.3.1.10 / Postfix's queue_minfree: come back later.
            log.warning("%s: MAIL refused, %d bytes free on the MailRoot", server.client, free)
            return "452 4.3.1 Insufficient system storage"
        if not envelope.smtp_utf8 and not _ascii(address):
            return "553 5.6.7 Non-ASCII sender address needs SMTPUTF8 (RFC 6531)"
        try:
            sender = _mailbox(address, AddressRole.SENDER)
        except MessageError as exc:
            return f"501 {exc.status} Bad sender address syntax"
        # aiosmtpd takes an empty mail_from for "no MAIL yet": the null path stays "<>" here.
        envelope.mail_from = sender or "<>"
        envelope.mail_options.extend(mail_options)
        envelope.dsn = server._next_mail
        envelope.eight_bit = "BODY=8BITMIME" in mail_options
        server.begin_transaction()
        return "250 2.1.0 Ok"

    async def handle_RCPT(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self,
        server: SmtpSession,
        session: Session,
        envelope: Transaction,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.recipients) >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"  # RFC 5321 section 4.5.3.1.8
        if not envelope.smtp_utf8 and not _ascii(address):
            return "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8 (RFC 6531)"
        try:
            recipient = _mailbox(address, AddressRole.RECIPIENT)
        except MessageError as exc:
            return f"501 {exc.status} Bad recipient address syntax"
        if server.client is None:
            return "554 5.7.1 Unknown client"
        verdict = self.config.access.rcpt_verdict(
            local=self.config.router.is_local(recipient.rpartition("@")[2]),
            client=server.client,
            authenticated=bool(session.authenticated),
        )
        if verdict is RcptVerdict.REFUSED:
            return f"550 5.7.1 Unable to relay for {recipient}"
        dsn = server._next_rcpt
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.recipients.append(Recipient(recipient, notify=dsn.notify, orcpt=dsn.orcpt))
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self, server: SmtpSession, session: Session, envelope: Transaction
    ) -> str:
        content = envelope.message
        refusal = self._check_content(content)
        if refusal is not None:
            return refusal
        config = self.config
        queue_id = config.spool.new_id()
        tls = server.tls_facts
        received = received_field(
            helo=session.host_name or "",
            client=server.client_name,
            fqdn=config.fqdn,
            protocol=protocol_name(
                extended=session.extended_smtp,
                tls=tls is not None,
                authenticated=bool(session.authenticated),
                smtputf8=envelope.smtp_utf8,
            ),
            queue_id=queue_id,
            recipients=envelope.rcpt_tos,
            date=config.clock(),
            tls=tls,
        )
        message = received + content
        admission = Admission(
            message=message,
            sender="" if envelope.mail_from == "<>" else envelope.mail_from or "",
            recipients=list(envelope.recipients),
            origin=f"smtp:{server.client_name}",
            envid=envelope.dsn.envid,
            ret=envelope.dsn.ret,
            eight_bit=envelope.eight_bit or not content.isascii(),
            queue_id=queue_id,
            received_size=len(content),  # the DATA the limit applied to, without Received
        )
        server.end_transaction()  # before the hand-over: the committer need not wait for it
        try:
            await config.committer.submit(admission)
        except MessageError as exc:
            return f"554 {exc.status} {exc}"
        except SpoolmailError as exc:
            log.error("%s: message not queued: %s", server.client, exc)  # noqa: TRY400 (said)
            return "451 4.3.0 Error: queue file write error, try again later"
        server.junk_commands = 0  # as Postfix: the count starts again after mail is accepted
        if log.isEnabledFor(logging.INFO):
            sender = envelope.mail_from
            log_line(
                log,
                logging.INFO,
                f"{queue_id}: queued from {server.client_name}"
                f"{f' user={server.user}' if server.user else ''}"
                f" sender={sender if sender == '<>' else f'<{sender}>'}"
                f" recipients={len(envelope.recipients)} size={len(message)}",
            )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _check_content(self, content: bytes | bytearray) -> str | None:
        """A 5xx for a message whose lines or header section are over the limits, else None."""
        if has_long_line(content, MAX_LINE):
            return "500 5.5.2 Line longer than 998 octets (RFC 5321 4.5.3.1.6)"
        end = content.find(HEAD_END)  # the header block's size, without a copy of it
        if (len(content) if end < 0 else end + 2) > self.config.max_header_size:
            return f"552 5.3.4 Header section longer than {self.config.max_header_size} octets"
        return None

    # -- AUTH ----------------------------------------------------------------------------------

    async def handle_AUTH(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self, server: SmtpSession, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None:
        # aiosmtpd has refused AUTH before TLS (538), a second AUTH and unknown mechanisms.
        if envelope.mail_from is not None:
            return "503 5.5.1 AUTH not allowed during a mail transaction"  # RFC 4954 section 4
        credentials = self.config.credentials
        if credentials is None:
            return "502 5.5.1 AUTH not available"
        pair = await self._read_login(server, args)
        if pair is None:
            return None  # aiosmtpd or the decoder replied already
        user, password = pair
        loop = asyncio.get_running_loop()
        try:
            valid = await loop.run_in_executor(self.config.executor, credentials, user, password)
        except Exception:  # an embedder's callable: whatever it raises is a 454
            log.exception("%s: the credentials check failed", server.client)
            return "454 4.7.0 Temporary authentication failure"
        finally:
            del password
        if valid:
            session.authenticated = True
            server.user = user
            log.info("%s: authenticated as %s", server.client, user)
            return "235 2.7.0 Authentication successful"
        return await self._refuse_login(server, user)

    async def _refuse_login(self, server: SmtpSession, user: str) -> str | None:
        server.auth_failures += 1
        log.info("%s: AUTH failed for %r (%d)", server.client, user, server.auth_failures)
        # Slow guessing down: each failure waits longer, a few end the session.
        await asyncio.sleep(self.config.auth_failure_delay * server.auth_failures)
        if server.auth_failures >= self.config.max_auth_failures:
            await server.push("535 5.7.8 Authentication credentials invalid")
            await server.push(f"421 4.7.0 {self.config.fqdn} Too many failed authentications")
            server.close()
            return None
        return "535 5.7.8 Authentication credentials invalid"

    async def _read_login(self, server: SmtpSession, args: list[str]) -> tuple[str, str] | None:
        """The user name and password of AUTH PLAIN or LOGIN, or None when already answered."""
        mechanism = args[0].upper()
        initial = args[1] if len(args) > 1 else None
        if mechanism == "PLAIN":
            # RFC 4616: [authzid] NUL authcid NUL passwd; "=" is an empty initial response.
            blob = await _response(server, initial, b"")
            parts = blob.split(b"\x00") if blob is not None else []
            if blob is not None and len(parts) != 3:
                await server.push("501 5.5.2 Cannot split the response")
            pair = (parts[1], parts[2]) if len(parts) == 3 else None
        else:  # LOGIN, the only other mechanism offered
            login = await _response(server, initial, "Username:")
            secret = await _response(server, None, "Password:") if login is not None else None
            pair = (login, secret) if login is not None and secret is not None else None
        if pair is None:
            return None
        try:
            return pair[0].decode("utf-8"), pair[1].decode("utf-8")
        except UnicodeDecodeError:
            await server.push("501 5.5.2 User name and password must be UTF-8")
            return None

    async def handle_exception(self, error: Exception) -> str:
        log.error("listener session failed", exc_info=error)
        return "451 4.3.0 Internal error, try again later"


async def _response(
    server: SmtpSession, initial: str | None, challenge: str | bytes
) -> bytes | None:
    """The decoded answer: the initial response if given, else the client's answer to
    ``challenge``; None when it cannot be had (aborted, not base64), the client told why."""
    if initial is None:
        # aiosmtpd sends "334 " and the challenge (base64 unless empty), reads the answer and
        # replies 501 itself to "*" and to what is not base64. Its answer is never logged.
        try:
            if isinstance(challenge, bytes):
                answer = await server.challenge_auth(challenge, encode_to_b64=False)
            else:
                answer = await server.challenge_auth(challenge)
        except ValueError:  # a line over the reader's limit (dropped): not an internal error
            await server.push("500 5.5.2 Line too long")
            return None
        return answer if isinstance(answer, bytes) else None
    if initial == "=":
        return b""
    try:
        return b64decode(initial, validate=True)
    except ValueError:
        await server.push("501 5.5.2 Cannot decode the response")
        return None
