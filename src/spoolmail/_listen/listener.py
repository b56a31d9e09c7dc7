"""The :class:`Listener`: spoolmail's inbound SMTP server, started and stopped beside a service.

It binds its sockets (or takes sockets bound already, by a process that was root then), runs
aiosmtpd on an event loop of its own thread, and commits every accepted message to the spool's
Queue through ``Spool.admit_group`` from a thread of its own (:class:`Committer`), several
sessions' messages with one sync, so that the loop never waits for an fsync. A
:class:`~spoolmail.MailService` on the same spool, in this process or another, delivers what it
queued. Opens sockets and threads; writes only through ``Spool.admit_group``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
import ssl
import threading
import types
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from spoolmail._core.relay import AccessPolicy
from spoolmail._core.routing import Router
from spoolmail._listen.balance import FULL_PASSES, PASS_FOR, PASSES, RETIRED, WorkerSlot
from spoolmail._listen.committer import Committer
from spoolmail._service.service import MIN_FREE_SPACE, machine_name
from spoolmail._store.given import check_given
from spoolmail._store.spool import Spool
from spoolmail.exceptions import ConfigurationError, DependencyError, SpoolmailError

if TYPE_CHECKING:  # aiosmtpd is the optional "server" extra: imported when a listener starts
    from spoolmail._listen.session import Config, Hooks, SmtpSession

__all__ = [
    "Listener",
    "ListenerLimits",
    "bind",
    "parse_listen_address",
    "require_server",
    "share_with_workers",
    "socket_name",
]

log = logging.getLogger("spoolmail.listener")

_START_TIMEOUT = 30.0


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


def _not_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(f"{attribute.name} must be 0 or more, not {value!r}")


@attrs.frozen(kw_only=True)
class ListenerLimits:
    """What one client may ask of the listener; the defaults are IIS's and Postfix's.

    - ``max_message_size``: announced as SIZE in EHLO, refused at MAIL (``SIZE=``) and during
      DATA with ``552 5.3.4`` (IIS: 2,048 KB, the service's own limit).
    - ``max_recipients``: RCPT TO per message; the next gets ``452 4.5.3`` and the client sends
      the rest in another transaction (RFC 5321 section 4.5.3.1.8; IIS: 100).
    - ``max_header_size``: the header section, refused with ``552 5.3.4`` after DATA (1 MiB, as
      Pickup intake). Lines over 998 octets are refused with ``500 5.5.2``.
    - ``max_sessions``: concurrent sessions; one more gets ``421 4.7.0`` (Postfix: 100).
    - ``command_timeout``: seconds a client may stay silent, and the longest DATA may take
      (RFC 5321 section 4.5.3.2.7: 5 minutes).
    - ``min_free_space``: bytes free on the MailRoot's disk below which MAIL gets
      ``452 4.3.1`` (Postfix's ``queue_minfree``; the service's default, 100 MiB; 0: off).
    - ``max_auth_failures``: failed AUTH attempts before the session is closed;
      ``auth_failure_delay`` the seconds the first failure waits (the second twice that...).
    """

    max_message_size: int = attrs.field(default=2 * 1024 * 1024, validator=_positive)
    max_recipients: int = attrs.field(default=100, validator=_positive)
    max_header_size: int = attrs.field(default=1024 * 1024, validator=_positive)
    max_sessions: int = attrs.field(default=100, validator=_positive)
    command_timeout: float = attrs.field(default=300.0, validator=_positive)
    min_free_space: int = attrs.field(default=MIN_FREE_SPACE, validator=_not_negative)
    max_auth_failures: int = attrs.field(default=3, validator=_positive)
    auth_failure_delay: float = attrs.field(default=1.0, validator=_not_negative)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:2525"``, ``"[::1]:2525"``, ``"0.0.0.0:25"`` as ``(address, port)``.

    Only IP addresses: a host name would mean a DNS lookup at start, and which of its
    addresses to bind would be a guess.
    """
    host, colon, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: ambiguous
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ConfigurationError(
            f"listen: {text!r} is not ADDRESS:PORT (127.0.0.1:2525, [::1]:2525, 0.0.0.0:25)"
        ) from None
    if not colon or not 0 <= number <= 65535:
        raise ConfigurationError(f"listen: {text!r} has no valid port")
    return str(address), number


def bind(text: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``text`` (ADDRESS:PORT). Binding port 25 needs root (or
    CAP_NET_BIND_SERVICE): bind first, then drop privileges, then hand the socket over."""
    host, port = parse_listen_address(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128, reuse_port=reuse_port)
    except OSError as exc:
        raise SpoolmailError(f"cannot listen on {text}: {exc.strerror or exc}") from exc


def socket_name(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


class Listener:
    """An SMTP server that takes mail into a spool's Queue, as IIS's SMTP service did.

    ``Listener(spool, addresses=["127.0.0.1:2525", "[::1]:2525"], router=router)``, then
    ``start()`` and ``stop()``, or use it as a context manager. ``addresses`` are
    ``ADDRESS:PORT`` strings (port 0: any free port; :attr:`addresses` then tells which) or
    sockets already listening (bound while the process was root). The ``router`` says which
    domains are local (their mail is taken from anyone and ends in Drop; ``Router(catch_all=
    True)`` makes every domain local: capture mode).

    Relay control is IIS's, nobody relays by default: mail for any other domain is taken only
    from clients in ``relay_networks`` (``["192.0.2.0/24", "::1"]``) or after AUTH; others get
    ``550 5.7.1 Unable to relay``. ``allowed_clients`` (when given: only these) and
    ``denied_clients`` are IIS's Connection dialog. STARTTLS is offered with ``tls_context`` (a
    server :class:`ssl.SSLContext`) or ``tls_certificate`` and ``tls_key`` (PEM files);
    AUTH PLAIN and LOGIN only after it, and only when ``credentials`` (a callable ``(user,
    password) -> bool``, e.g. a :class:`PasswordFile`) is given. ``fqdn`` names this server
    (greeting, Received); ``limits`` are :class:`ListenerLimits`. ``reuse_port`` lets several
    processes listen on one port (SO_REUSEPORT; Linux shares connections among them).
    """

    def __init__(
        self,
        spool: Spool,
        *,
        addresses: Sequence[str | socket.socket],
        router: Router,
        relay_networks: Iterable[str] = (),
        allowed_clients: Iterable[str] = (),
        denied_clients: Iterable[str] = (),
        fqdn: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        tls_certificate: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        credentials: Callable[[str, str], bool] | None = None,
        limits: ListenerLimits | None = None,
        reuse_port: bool = False,
    ) -> None:
        if isinstance(addresses, str):
            raise TypeError("addresses is a list: addresses=['127.0.0.1:2525']")
        if not addresses:
            raise ConfigurationError("a Listener needs at least one address to listen on")
        for item in addresses:
            if isinstance(item, str):
                parse_listen_address(item)
        self.spool = spool
        self.router = router
        self.limits = limits or ListenerLimits()
        self.fqdn = fqdn or machine_name()
        self._requested = list(addresses)
        self._reuse_port = reuse_port
        # Given as they are: one string is one network there, not its characters.
        self._access = AccessPolicy(
            relay_networks=relay_networks,
            allowed_clients=allowed_clients,
            denied_clients=denied_clients,
        )
        self._tls = _tls_context(tls_context, tls_certificate, tls_key)
        self._credentials = credentials
        self._sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        # With workers sharing the sockets (share_with_workers), each accepts its fair part.
        self._balance: WorkerSlot | None = None
        self._sessions: set[SmtpSession] = set()
        self._accepting: set[asyncio.Task[Any]] = set()
        self._passes = 0
        self._executor: ThreadPoolExecutor | None = None
        self._committer: Committer | None = None
        self._hooks: Hooks | None = None
        self._hooks_made_of: tuple[object, ...] = ()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping = False

    @property
    def addresses(self) -> list[str]:
        """Where it listens, as ``127.0.0.1:2525`` and ``[::1]:2525`` (after :meth:`start`)."""
        return [socket_name(s) for s in self._sockets]

    @property
    def relay_networks(self) -> tuple[str, ...]:
        """The client networks allowed to relay, as given (CIDR)."""
        return tuple(str(n) for n in self._access.relay_networks)

    def __repr__(self) -> str:
        where = ", ".join(self.addresses) or "not started"
        return f"<Listener {self.fqdn} on {where}>"

    # -- start and stop ----------------------------------------------------------------------

    def start(self) -> Listener:
        """Bind (if not bound yet) and serve; returns when clients can connect."""
        if self._thread is not None:
            raise RuntimeError("this Listener is running already")
        _session_module()
        sockets: list[socket.socket] = []
        try:
            for item in self._requested:
                bound = (
                    item
                    if isinstance(item, socket.socket)
                    else bind(item, reuse_port=self._reuse_port)
                )
                sockets.append(bound)
        except BaseException:
            for sock in sockets:
                if sock not in self._requested:
                    sock.close()
            raise
        self._sockets = sockets
        self._hooks = None
        # Messages are committed by one thread, in groups (one sync for several sessions);
        # the pool is for the embedder's credentials check, which may be slow.
        self._committer = Committer(self.spool)
        self._committer.start()
        self._executor = ThreadPoolExecutor(
            max_workers=min(8, self.limits.max_sessions), thread_name_prefix="spoolmail-listen"
        )
        self._ready.clear()
        self._error = None
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="spoolmail-listener", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT) or self._error is not None:
            self.stop()
            raise SpoolmailError(f"the listener did not start: {self._error}") from self._error
        log.info("listening on %s", ", ".join(self.addresses))
        return self

    def _protocol(self) -> SmtpSession:
        if self._loop is None or self._executor is None or self._committer is None:
            raise RuntimeError("a connection arrived at a listener that is not running")
        session = _session_module()
        limits = self.limits
        # The sessions' shared settings, made again only when what they are made of was
        # replaced (a reload, see _cli.listening.reconfigure): each session takes the settings
        # of when it connects.
        made_of = (self.router, self._access, self.fqdn, limits)
        hooks = self._hooks
        if hooks is None or made_of != self._hooks_made_of:
            hooks = self._hooks = session.Hooks(self._config(session))
            self._hooks_made_of = made_of
        protocol: SmtpSession = session.SmtpSession(
            hooks,
            sessions=self._sessions,
            loop=self._loop,
            data_size_limit=limits.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.fqdn,
            ident="ESMTP spoolmail",
            tls_context=self._tls,
            timeout=limits.command_timeout,
            auth_require_tls=True,
            auth_exclude_mechanism=() if self._credentials is not None else ("PLAIN", "LOGIN"),
        )
        return protocol

    def _config(self, session: types.ModuleType) -> Config:
        """What every session shares (made once a start: a connection's set-up is costly)."""
        if self._executor is None or self._committer is None:
            raise RuntimeError("a connection arrived at a listener that is not running")
        limits = self.limits
        config: Config = session.Config(
            spool=self.spool,
            router=self.router,
            access=self._access,
            fqdn=self.fqdn,
            executor=self._executor,
            committer=self._committer,
            max_message_size=limits.max_message_size,
            max_recipients=limits.max_recipients,
            max_header_size=limits.max_header_size,
            max_sessions=limits.max_sessions,
            min_free_space=limits.min_free_space,
            max_auth_failures=limits.max_auth_failures,
            auth_failure_delay=limits.auth_failure_delay,
            credentials=self._credentials,
            clock=self.spool.clock,
        )
        return config

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            for sock in self._sockets:
                if self._balance is not None:
                    sock.setblocking(False)
                    loop.add_reader(sock.fileno(), self._accept, sock)
                    continue
                server = loop.run_until_complete(loop.create_server(self._protocol, sock=sock))
                self._servers.append(server)
        except BaseException as exc:  # noqa: BLE001 (handed to start(), which raises it)
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _accept(self, sock: socket.socket) -> None:
        """On the loop, a connection waits on a socket the workers share: take one, unless
        another worker has fewer sessions (then look again in a moment; after a few looks,
        take it anyway, or after half a second when this worker is at its session limit).
        One at a time, so that a burst is shared out too."""
        loop, balance = self._loop, self._balance
        if loop is None or balance is None:
            return
        full = len(self._sessions) >= self.limits.max_sessions
        if self._passes < (FULL_PASSES if full else PASSES) and not balance.should_accept():
            self._passes += 1
            loop.remove_reader(sock.fileno())
            loop.call_later(PASS_FOR, self._look_again, sock)
            return
        self._passes = 0
        try:
            connection, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:  # out of descriptors, for one: wait, as asyncio's server does
            log.warning("cannot accept a connection on %s: %s", socket_name(sock), exc)
            loop.remove_reader(sock.fileno())
            loop.call_later(1.0, self._look_again, sock)
            return
        connection.setblocking(False)
        task = loop.create_task(loop.connect_accepted_socket(self._protocol, connection))
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    def _look_again(self, sock: socket.socket) -> None:
        if self._loop is not None and sock.fileno() >= 0 and not self._stopping:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _shut(self) -> None:
        """On the loop: stop accepting, tell every client, close, then stop the loop."""
        self._stopping = True
        if isinstance(self._sessions, _PublishedSessions):
            self._sessions.retire()
        for server in self._servers:
            server.close()
        if self._balance is not None and self._loop is not None:
            for sock in self._sockets:
                if sock.fileno() >= 0:
                    self._loop.remove_reader(sock.fileno())
        for session in list(self._sessions):
            session.say_goodbye(f"421 4.3.2 {self.fqdn} Service shutting down")
        loop = self._loop
        if loop is None:
            return

        async def finish() -> None:
            for _ in range(200):  # the closed connections' callbacks end their sessions
                if not self._sessions:
                    break
                await asyncio.sleep(0.01)
            pending = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task(loop)]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            loop.stop()

        loop.create_task(finish())

    def stop(self) -> None:
        """Stop listening and end every session (``421 4.3.2``); mail being committed finishes
        first, so the spool may be closed as soon as this returns."""
        thread, loop = self._thread, self._loop
        if thread is not None and loop is not None and thread.is_alive():
            loop.call_soon_threadsafe(self._shut)
            thread.join(_START_TIMEOUT)
        if self._committer is not None:
            self._committer.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for sock in self._sockets:
            sock.close()
        self._thread = None
        self._loop = None
        self._servers = []
        self._executor = None
        self._committer = None

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def share_with_workers(listener: Listener, slot: WorkerSlot) -> None:
    """Make ``listener`` (not started yet) one of several worker processes' listeners on the
    same sockets (``spoolmail run --workers``): it publishes its number of sessions in ``slot``
    and accepts a connection only while no other worker has fewer (:mod:`.balance`)."""
    if listener._thread is not None:
        raise RuntimeError("this Listener is running already")
    listener._balance = slot
    listener._sessions = _PublishedSessions(slot.publish)


class _PublishedSessions(set["SmtpSession"]):
    """The listener's sessions, whose number is published for the other workers
    (:mod:`spoolmail._listen.balance`) as sessions begin and end."""

    def __init__(self, publish: Callable[[int], None]) -> None:
        super().__init__()
        self._publish = publish
        publish(0)

    def add(self, session: SmtpSession) -> None:
        super().add(session)
        self._publish(len(self))

    def retire(self) -> None:
        """The listener stops: from now on the other workers take every connection (a stopped
        worker's count would otherwise stay low, and they would keep leaving it connections)."""
        self._publish(RETIRED)
        self._publish = lambda _count: None

    def discard(self, session: object) -> None:
        super().discard(session)
        self._publish(len(self))


def require_server() -> None:
    """Raise :class:`~spoolmail.exceptions.DependencyError` now if the listener's SMTP server
    (aiosmtpd, the ``server`` extra) is not installed, instead of at its first session."""
    _session_module()


@functools.cache  # asked at every connection
def _session_module() -> types.ModuleType:
    try:
        from spoolmail._listen import session  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise DependencyError(
            f"the SMTP listener needs aiosmtpd ({exc}): pip install 'spoolmail[server]'"
        ) from exc
    return session


def _tls_context(
    context: ssl.SSLContext | None,
    certificate: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
) -> ssl.SSLContext | None:
    if context is not None:
        if certificate is not None or key is not None:
            raise ConfigurationError("give tls_context, or tls_certificate and tls_key: not both")
        return context
    if certificate is None and key is None:
        return None
    if certificate is None:
        raise ConfigurationError("tls_key needs tls_certificate")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    check_given(certificate, what="tls_certificate")  # a FIFO would hang the start
    if key is not None:
        check_given(key, what="tls_key")
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"tls_certificate {os.fspath(certificate)!r}: {exc}") from None
    return context
