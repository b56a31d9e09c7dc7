"""Real SMTP peers on 127.0.0.1 for tests: a scriptable aiosmtpd server and raw misbehaving ones.

:class:`SmtpServer` (or the :func:`smtp_server` context manager) runs aiosmtpd in its own thread
and event loop on a free port; its :class:`ScriptedHandler` answers each RCPT by the recipient's
local part (``tempfail...`` → 451, ``reject...`` → 550, anything else → 250), can override the
MAIL and DATA answers, offer PIPELINING, and limit the recipients of a transaction (452 4.5.3
beyond it); it records every MAIL FROM it saw, every AUTH attempt, and every accepted message
(envelope, exact bytes, which connection carried it, whether over TLS and by whom). The server
can offer STARTTLS (``tls_context``, see ``tests/tlscerts.py``), require it, and offer AUTH
PLAIN/LOGIN against a table of users. :class:`RawServer` (and :func:`raw_server`,
:func:`stalling_server`, :func:`dropping_server`, :func:`garbage_server`) speaks SMTP by hand on
:mod:`socket` and :mod:`threading`, for what aiosmtpd will not do: never greet, drop the line in
the middle of DATA or after a reply, answer garbage, or answer any command with exactly the bytes
a test wants; it records which commands arrived in one read (``groups``), which shows whether a
client pipelines. Every server listens on 127.0.0.1 and a free port unless given another
loopback ``host`` (e.g. ``127.0.0.11``, where the test DNS puts an MX host) and ``port`` (MX hosts
all listen on the one port the router reaches them on); a non-loopback ``host`` is refused. Every
``stop`` gives up after a timeout, raising instead of hanging the test run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import attrs
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from spoolmail._core.routing import Target
from spoolmail._transport.smtp import SmtpTimeouts

__all__ = [
    "AUTH_MECHANISMS",
    "DEFAULT_RAW_REPLIES",
    "DEFAULT_RCPT_ANSWERS",
    "SHORT",
    "TOO_MANY_RECIPIENTS",
    "RawServer",
    "ReceivedMessage",
    "ScriptedHandler",
    "SmtpServer",
    "dropping_server",
    "garbage_server",
    "raw_server",
    "smtp_server",
    "stalling_server",
]

LOCALHOST = "127.0.0.1"
STOP_TIMEOUT = 5.0

# RCPT answers by the local part's prefix; anything else is accepted.
DEFAULT_RCPT_ANSWERS: Mapping[str, str] = {
    "tempfail": "451 4.3.0 Mailbox temporarily unavailable",
    "reject": "550 5.1.1 No such user here",
}
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
CAPPED = "421 4.7.0 Too many messages, closing"
AUTH_MECHANISMS = frozenset({"PLAIN", "LOGIN"})

# Long enough for a loaded CI machine, short enough that a hang shows up as a failure, not a stall.
SHORT = SmtpTimeouts(
    connect=5,
    greeting=5,
    ehlo=5,
    mail=5,
    rcpt=5,
    data_start=5,
    data_block=10,
    data_end=10,
    starttls=5,
    auth=5,
    rset=5,
    quit=1,
)


@attrs.frozen
class ReceivedMessage:
    """One message a server accepted: the envelope as the server saw it and the exact bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    smtp_utf8: bool = False
    connection: int = 0
    """Which connection carried it: 1 for the first one this handler saw a MAIL on, and so on."""
    tls: bool = False
    login: str | None = None
    """The user the session authenticated as, if it did."""


class ScriptedHandler:
    """aiosmtpd handler: per-recipient answers by local part, optional MAIL/DATA overrides.

    ``mail_reply`` (e.g. ``"550 5.7.1 Go away"``) answers every MAIL FROM instead of accepting it;
    ``data_reply`` answers the end of DATA (the message is recorded only when it starts with 2).
    ``offer_pipelining`` adds PIPELINING to the EHLO reply (aiosmtpd reads pipelined commands
    fine but never says so). ``recipient_limit`` answers :data:`TOO_MANY_RECIPIENTS` to a RCPT
    once a transaction holds that many accepted recipients. ``connection_cap`` answers 421 to a
    MAIL on a connection that carried that many messages (as servers that limit the messages
    of one connection do), ``server_cap`` to every MAIL once the server took that many.
    ``logins`` records each AUTH attempt as ``(mechanism, user, success)``.
    """

    def __init__(
        self,
        *,
        rcpt_answers: Mapping[str, str] = DEFAULT_RCPT_ANSWERS,
        mail_reply: str | None = None,
        data_reply: str | None = None,
        offer_pipelining: bool = False,
        recipient_limit: int | None = None,
        connection_cap: int | None = None,
        server_cap: int | None = None,
    ) -> None:
        self.rcpt_answers = dict(rcpt_answers)
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.offer_pipelining = offer_pipelining
        self.recipient_limit = recipient_limit
        self.connection_cap = connection_cap
        self.server_cap = server_cap
        self.mail_froms: list[tuple[str, tuple[str, ...]]] = []
        self.rcpt_tos: list[str] = []
        self.messages: list[ReceivedMessage] = []
        self.logins: list[tuple[str, str, bool]] = []
        # Connection numbers by protocol object; SmtpServer keeps every protocol alive, so an
        # id() is never reused while it matters.
        self._connections: dict[int, int] = {}

    def connection(self, server: SMTP) -> int:
        return self._connections.setdefault(id(server), len(self._connections) + 1)

    async def handle_EHLO(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With a 5-argument hook aiosmtpd leaves remembering the client's name to the hook.
        session.host_name = hostname
        if self.offer_pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        self.mail_froms.append((address, tuple(mail_options)))
        connection = self.connection(server)
        if self.mail_reply is not None:
            return self.mail_reply
        if self._capped(connection):
            return CAPPED
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    def _capped(self, connection: int) -> bool:
        if self.server_cap is not None and len(self.messages) >= self.server_cap:
            return True
        if self.connection_cap is None:
            return False
        carried = sum(message.connection == connection for message in self.messages)
        return carried >= self.connection_cap

    async def handle_RCPT(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self.rcpt_tos.append(address)
        local = address.rpartition("@")[0].lower()
        for prefix, answer in self.rcpt_answers.items():
            if local.startswith(prefix):
                return answer
        if self.recipient_limit is not None and len(envelope.rcpt_tos) >= self.recipient_limit:
            return TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(  # noqa: N802 (aiosmtpd finds hooks by this name)
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        reply = self.data_reply or "250 2.0.0 Ok: queued"
        if reply.startswith("2"):
            self.messages.append(
                ReceivedMessage(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or b""),
                    mail_options=tuple(envelope.mail_options),
                    smtp_utf8=envelope.smtp_utf8,
                    connection=self.connection(server),
                    tls=session.ssl is not None,
                    login=_login(session),
                )
            )
        return reply


def _login(session: Session) -> str | None:
    data = session.auth_data if session.authenticated else None
    return data.login.decode("utf-8", "replace") if isinstance(data, LoginPassword) else None


def _loopback(host: str) -> str:
    """``host`` if it is a loopback address: test servers never listen anywhere else."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"test servers listen on loopback addresses only, not {host!r}")
    return host


def _wait(thread: threading.Thread, what: str, timeout: float) -> None:
    thread.join(timeout)
    if thread.is_alive():
        raise RuntimeError(f"{what} did not stop within {timeout:g} s")


class SmtpServer:
    """aiosmtpd on 127.0.0.1 and a free port, in a thread with its own event loop.

    ``with SmtpServer(data_size_limit=10_000) as server: ... server.target ...``. aiosmtpd's
    Controller cannot bind port 0 and defaults to ::1, so this runs ``loop.create_server`` itself.
    ``host`` and ``port`` choose another loopback address and a fixed port (``host="127.0.0.11",
    port=p``: an MX host of the test DNS, reached on the router's ``smtp_port``).
    ``connections`` counts accepted connections; ``handler`` holds what was received.

    ``tls_context`` (a server context) offers STARTTLS, ``require_starttls`` refuses mail before
    it (530). ``auth_users`` (``{"user": "password"}``) offers AUTH ``auth_mechanisms`` and
    checks logins against the table; aiosmtpd offers AUTH only after STARTTLS unless
    ``auth_require_tls`` is false, and ``auth_required`` refuses mail before AUTH (530).
    """

    def __init__(
        self,
        handler: ScriptedHandler | None = None,
        *,
        data_size_limit: int | None = 33_554_432,
        enable_smtputf8: bool = False,
        hostname: str = "mx.test",
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        auth_users: Mapping[str, str] | None = None,
        auth_mechanisms: Collection[str] = AUTH_MECHANISMS,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        self.handler = handler if handler is not None else ScriptedHandler()
        self.host = _loopback(host)
        self.port = port
        self.connections = 0
        self._auth_users = dict(auth_users or {})
        self._smtp_options: dict[str, Any] = {
            "data_size_limit": data_size_limit,
            "enable_SMTPUTF8": enable_smtputf8,
            # Without it aiosmtpd asks socket.getfqdn(), which may wait for DNS.
            "hostname": hostname,
            "tls_context": tls_context,
            "require_starttls": require_starttls,
            "auth_required": auth_required,
            "auth_require_tls": auth_require_tls,
            "authenticator": self._authenticate,
            "auth_exclude_mechanism": sorted(AUTH_MECHANISMS - set(auth_mechanisms)),
        }
        self._protocols: list[SMTP] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def target(self) -> Target:
        return Target(self.host, self.port, literal=True)

    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.handler.messages

    @property
    def transactions_per_connection(self) -> list[int]:
        """How many messages each connection carried, in connection order."""
        counts = Counter(message.connection for message in self.messages)
        return [counts[connection] for connection in sorted(counts)]

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            self.handler.logins.append((mechanism, "", False))
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        success = user in self._auth_users and self._auth_users[user] == password
        self.handler.logins.append((mechanism, user, success))
        return AuthResult(success=success, handled=False, auth_data=auth_data)

    def start(self) -> SmtpServer:
        self._thread = threading.Thread(target=self._run, name=f"aiosmtpd-{id(self)}", daemon=True)
        self._thread.start()
        if not self._ready.wait(STOP_TIMEOUT):
            raise RuntimeError(f"aiosmtpd did not start within {STOP_TIMEOUT:g} s")
        if self._error is not None:
            raise RuntimeError("aiosmtpd failed to start") from self._error
        return self

    def _protocol(self) -> SMTP:
        assert self._loop is not None
        self.connections += 1
        protocol = SMTP(self.handler, loop=self._loop, **self._smtp_options)
        self._protocols.append(protocol)
        return protocol

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                loop.create_server(self._protocol, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except Exception as error:  # noqa: BLE001 (start() re-raises it in the test's thread)
            self._error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def _in_loop(self, action: Any) -> None:
        """Run ``action()`` in the server's loop and wait for it (bounded)."""
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(STOP_TIMEOUT):
            raise RuntimeError(f"aiosmtpd's loop did not respond within {STOP_TIMEOUT:g} s")

    def _close_transports(self) -> None:
        for protocol in self._protocols:
            # After STARTTLS, protocol.transport is the TLS layer, whose close() waits for the
            # client's close_notify, and the loop stops first: the socket would outlive it
            # (ResourceWarning). aiosmtpd keeps the socket's own transport as
            # _original_transport; close that too.
            for transport in (protocol.transport, getattr(protocol, "_original_transport", None)):
                if transport is not None:
                    transport.close()

    def drop_connections(self) -> None:
        """Close every open client connection from the server side, without a word."""
        self._in_loop(self._close_transports)

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        if self._thread is None or self._loop is None or self._loop.is_closed():
            return

        def shut() -> None:
            assert self._loop is not None
            if self._server is not None:
                self._server.close()
            self._close_transports()
            self._loop.stop()

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(shut)
        _wait(self._thread, "aiosmtpd", timeout)

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def smtp_server(
    handler: ScriptedHandler | None = None,
    *,
    mail_reply: str | None = None,
    data_reply: str | None = None,
    offer_pipelining: bool = False,
    recipient_limit: int | None = None,
    connection_cap: int | None = None,
    server_cap: int | None = None,
    **options: Any,
) -> Iterator[SmtpServer]:
    """A started :class:`SmtpServer`; ``mail_reply``, ``data_reply``, ``offer_pipelining``,
    ``recipient_limit``, ``connection_cap`` and ``server_cap`` build its handler if none is
    given; ``options`` go to :class:`SmtpServer`."""
    if handler is None:
        handler = ScriptedHandler(
            mail_reply=mail_reply,
            data_reply=data_reply,
            offer_pipelining=offer_pipelining,
            recipient_limit=recipient_limit,
            connection_cap=connection_cap,
            server_cap=server_cap,
        )
    with SmtpServer(handler, **options) as server:
        yield server


# Raw servers.

DEFAULT_RAW_REPLIES: Mapping[str, bytes | None] = {
    "EHLO": b"250-raw.test greets you\r\n250-8BITMIME\r\n250 PIPELINING\r\n",
    "HELO": b"250 raw.test\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ".": b"250 2.0.0 Ok: queued\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "NOOP": b"250 2.0.0 Ok\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
}
_POLL = 0.05
_END_OF_DATA = b"\r\n.\r\n"


@attrs.define
class _Reads:
    """One connection's count of reads, and the group of commands the latest read brought."""

    count: int = 0
    group_read: int = -1
    group: list[str] = attrs.Factory(list)


class RawServer:
    """SMTP by hand: a listening socket on 127.0.0.1 (or ``host`` and ``port``, as
    :class:`SmtpServer`) and a thread per connection.

    ``greeting`` is sent on connect (``None``: never greet, just hold the line). ``replies`` maps a
    command verb (``"EHLO"``, ``"MAIL"``...; ``"."`` for the end of DATA) to the exact bytes to
    answer, or to ``None`` to close the connection instead of answering; it is merged over
    :data:`DEFAULT_RAW_REPLIES` (whose EHLO offers PIPELINING). ``hang_up_after`` names verbs
    after whose reply the server closes the connection (``{"STARTTLS"}``: a 220, then nothing).
    ``drop_in_data_after`` closes the connection once that many octets of DATA have arrived.
    Records ``commands`` (every command line, all connections), ``groups`` (the command lines
    that arrived in one read of the socket, per read: a client that pipelines sends several
    at once, one that waits for each reply cannot), ``connections``, and per message the wire
    bytes of DATA (``data``; only with ``keep_data``) and their length and SHA-256 (``digests``,
    always).
    """

    def __init__(
        self,
        *,
        greeting: bytes | None = b"220 raw.test ESMTP\r\n",
        replies: Mapping[str, bytes | None] | None = None,
        hang_up_after: Collection[str] = (),
        drop_in_data_after: int | None = None,
        keep_data: bool = True,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        self.greeting = greeting
        self.replies: dict[str, bytes | None] = {**DEFAULT_RAW_REPLIES, **(replies or {})}
        self.hang_up_after = frozenset(verb.upper() for verb in hang_up_after)
        self.drop_in_data_after = drop_in_data_after
        self.keep_data = keep_data
        self.commands: list[str] = []
        self.groups: list[list[str]] = []
        self.data: list[bytes] = []
        self.digests: list[tuple[int, str]] = []
        self.connections = 0
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((_loopback(host), port))
        except (OSError, ValueError):
            self._listener.close()  # a chosen port can be taken: no socket left to the GC
            raise
        self._listener.listen(16)
        self._listener.settimeout(_POLL)
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def target(self) -> Target:
        return Target(self.host, self.port, literal=True)

    def start(self) -> RawServer:
        self._spawn(self._accept, "accept")
        return self

    def _spawn(self, run: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=run, args=args, name=f"raw-{name}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            self._spawn(self._serve, "conn", conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(_POLL)
        with contextlib.suppress(OSError), conn:
            if self.greeting is None:
                self._stopping.wait()
                return
            conn.sendall(self.greeting)
            self._converse(conn, bytearray(), _Reads())

    def _recv(self, conn: socket.socket, reads: _Reads) -> bytes | None:
        """Some bytes, or ``None`` when the peer closed or the server is stopping."""
        while not self._stopping.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            reads.count += 1
            return data or None
        return None

    def _record(self, line: str, reads: _Reads) -> None:
        # The server reads again only once its buffer holds no complete line, so a line taken
        # from the buffer came with the latest read.
        with self._lock:
            self.commands.append(line)
            if reads.group_read != reads.count:
                reads.group_read = reads.count
                reads.group = []
                self.groups.append(reads.group)
            reads.group.append(line)

    def _converse(self, conn: socket.socket, buffer: bytearray, reads: _Reads) -> None:
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                data = self._recv(conn, reads)
                if data is None:
                    return
                buffer += data
                continue
            line = bytes(buffer[: end + 1]).rstrip(b"\r\n").decode("utf-8", "replace")
            del buffer[: end + 1]
            self._record(line, reads)
            verb = line.split(" ", 1)[0].upper()
            reply = self.replies.get(verb, b"502 5.5.2 Command not recognized\r\n")
            if reply is None:
                return
            conn.sendall(reply)
            if verb == "QUIT" or verb in self.hang_up_after:
                return
            if verb == "DATA" and reply.startswith(b"354"):
                rest = self._receive_data(conn, buffer, reads)
                if rest is None:
                    return
                buffer = rest
                end_reply = self.replies["."]
                if end_reply is None:
                    return
                conn.sendall(end_reply)

    def _receive_data(
        self, conn: socket.socket, buffer: bytearray, reads: _Reads
    ) -> bytearray | None:
        """Read DATA up to and including CRLF.CRLF in constant memory (unless ``keep_data``);
        return what followed it, or ``None`` if the connection ended first."""
        digest = hashlib.sha256()
        kept = bytearray()
        size = 0
        tail = b"\r\n"  # DATA starts at the beginning of a line
        pending = bytes(buffer)
        while True:
            if (
                self.drop_in_data_after is not None
                and size + len(pending) >= self.drop_in_data_after
            ):
                # Checked first: a client may send the whole message and its end in one write.
                return None
            window = tail + pending
            end = window.find(_END_OF_DATA)
            if end >= 0:
                body = pending[: end + len(_END_OF_DATA) - len(tail)]
                rest = pending[len(body) :]
                digest.update(body)
                size += len(body)
                if self.keep_data:
                    kept += body
                with self._lock:
                    self.digests.append((size, digest.hexdigest()))
                    if self.keep_data:
                        self.data.append(bytes(kept))
                return bytearray(rest)
            digest.update(pending)
            size += len(pending)
            if self.keep_data:
                kept += pending
            tail = window[-4:]
            data = self._recv(conn, reads)
            if data is None:
                return None
            pending = data

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            _wait(thread, thread.name, timeout)

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def raw_server(
    *,
    greeting: bytes | None = b"220 raw.test ESMTP\r\n",
    replies: Mapping[str, bytes | None] | None = None,
    hang_up_after: Collection[str] = (),
    drop_in_data_after: int | None = None,
    keep_data: bool = True,
    host: str = LOCALHOST,
    port: int = 0,
) -> Iterator[RawServer]:
    """A started :class:`RawServer`."""
    with RawServer(
        greeting=greeting,
        replies=replies,
        hang_up_after=hang_up_after,
        drop_in_data_after=drop_in_data_after,
        keep_data=keep_data,
        host=host,
        port=port,
    ) as server:
        yield server


def stalling_server(
    *, host: str = LOCALHOST, port: int = 0
) -> contextlib.AbstractContextManager[RawServer]:
    """Accepts connections and never says a word."""
    return raw_server(greeting=None, host=host, port=port)


def dropping_server(
    *, after: int = 1, host: str = LOCALHOST, port: int = 0
) -> contextlib.AbstractContextManager[RawServer]:
    """Goes along until DATA, then hangs up once ``after`` octets of the message have arrived."""
    return raw_server(drop_in_data_after=after, host=host, port=port)


def garbage_server(
    *, greeting: bytes = b"hello, I am not an SMTP server\r\n"
) -> contextlib.AbstractContextManager[RawServer]:
    """Answers the connection with something that is not an SMTP reply."""
    return raw_server(greeting=greeting)
