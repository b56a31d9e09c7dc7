"""The listener in the ``spoolmail`` command: ``run --listen``, ``listen`` and ``listen-passwd``.

``spoolmail run --listen 127.0.0.1:2525`` serves the MailRoot and listens in one process;
``spoolmail listen --listen ...`` only listens (a ``spoolmail run`` elsewhere delivers the
Queue); with neither ``--listen`` nor a ``listen`` setting nothing listens. What needs root is
done first, by :func:`prepare`: binding the sockets (port 25), loading the TLS key and reading
the password file, which may be root's alone; then the command drops to its ``user`` and opens
the MailRoot, and :func:`start` serves on what was prepared. ``listen-passwd USER`` prints a
password file line, reading the password from stdin (never from a flag, which every user of the
machine can see). On SIGHUP a listener takes new routing (domains), access lists, name and
limits from the settings file for the sessions that begin after it (:func:`reconfigure`); the
sockets, TLS key and users need a restart. The listener's modules (aiosmtpd, asyncio) are imported
only when something is to listen: ``run`` without ``--listen`` never loads them.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import logging
import select
import signal
import socket
import ssl
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from spoolmail._cli import assemble, flags, privileges, reloading
from spoolmail._cli.settings import Settings
from spoolmail._cli.status import EX_OK, UsageError
from spoolmail._core.shares import WHOLE, Share, part
from spoolmail._store.given import check_given
from spoolmail.exceptions import ConfigurationError, SpoolmailError

if TYPE_CHECKING:
    from spoolmail._core.relay import AccessPolicy
    from spoolmail._core.routing import Router
    from spoolmail._listen.balance import SessionCounts, WorkerSlot
    from spoolmail._listen.listener import Listener, ListenerLimits
    from spoolmail._listen.passwords import PasswordFile
    from spoolmail._store.spool import Spool

log = logging.getLogger("spoolmail")

__all__ = [
    "LISTENER_KEYS",
    "Prepared",
    "access_policy",
    "add_commands",
    "add_listen_options",
    "addresses",
    "listener_limits",
    "prepare",
    "reconfigure",
    "start",
]

# The settings only the listener reads; their flags are in the "inbound SMTP" group.
LISTENER_KEYS = (
    "listen",
    "relay_networks",
    "listen_allow",
    "listen_deny",
    "tls_certificate",
    "tls_key",
    "auth_file",
    "max_sessions",
    "listen_timeout",
    "listen_reuse_port",
)


def add_listen_options(parser: argparse.ArgumentParser) -> None:
    """The listener's flags, shared by ``run`` and ``listen``."""
    group = parser.add_argument_group("inbound SMTP (the listener)")
    flags.add_setting_flags(group, LISTENER_KEYS)


def add_commands(commands: Any) -> None:
    """Add ``listen`` and ``listen-passwd`` to the command tree."""
    listen = commands.add_parser("listen")
    listen.set_defaults(handler=_listen)
    flags.add_setting_flags(
        listen,
        (
            "fqdn",
            "local_domains",
            "alias_domains",
            "catch_all",
            "max_message_size",
            "max_recipients",
            "min_free_space",
            "user",
        ),
    )
    add_listen_options(listen)

    passwd = commands.add_parser("listen-passwd")
    passwd.set_defaults(handler=_passwd)
    passwd.add_argument("user")


@attrs.frozen
class Prepared:
    """What the listener needs root for, done: bound sockets, TLS, the users.

    With worker processes (``run --workers``) the workers share the sockets, and each takes
    its fair part of the connections (:mod:`spoolmail._listen.balance`: no worker accepts while
    another has fewer sessions). Neither a socket each with SO_REUSEPORT (the kernel hashes
    each connection to a worker, so five clients may all land in one) nor a shared socket left
    alone (the loop that wakes first accepts everything waiting) spreads a few busy clients.
    ``counts`` is made for the workers that run (:meth:`keep`); ``slot`` is one worker's.
    """

    sockets: tuple[socket.socket, ...]
    tls: ssl.SSLContext | None
    credentials: PasswordFile | None
    counts: SessionCounts | None = None
    slot: WorkerSlot | None = None

    def for_worker(self, index: int) -> Prepared | None:
        """Worker ``index``'s part: the shared sockets, its slot, the TLS and the users; None
        for a worker that does not listen (past the first ``keep(count)``)."""
        if self.counts is None:
            return self if index == 0 else None
        if index >= len(self.counts):
            return None
        return attrs.evolve(self, slot=self.counts.slot(index))

    def listening_share(self) -> Share:
        """This worker's place among the listening workers (what divides ``max_sessions``)."""
        if self.counts is None or self.slot is None:
            return WHOLE
        return Share(self.slot.index, len(self.counts))

    def keep(self, count: int) -> Prepared:
        """For ``count`` listening workers (the first ones of the group): above one, the table
        of their sessions (made before the fork, so that they share it)."""
        from spoolmail._listen.balance import SessionCounts  # noqa: PLC0415 (see above)

        return attrs.evolve(self, counts=SessionCounts(count) if count > 1 else None)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def prepare(settings: Settings) -> Prepared | None:
    """Bind, load the TLS key and read the password file (as root, before dropping it), or
    None when nothing is to listen. Worker processes share the sockets (:meth:`Prepared.keep`
    makes their table of sessions)."""
    if not settings.listen:
        return None
    from spoolmail._listen.listener import bind, require_server  # noqa: PLC0415 (see above)
    from spoolmail._listen.passwords import PasswordFile  # noqa: PLC0415

    # Before anything is bound or forked: without aiosmtpd each worker would start, print the
    # banner's "listening on", and only then fail. Imported here, the workers inherit it.
    require_server()

    tls = None
    if settings.tls_certificate or settings.tls_key:
        if not (settings.tls_certificate and settings.tls_key):
            raise ConfigurationError("tls_certificate and tls_key go together")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        check_given(settings.tls_certificate, what="tls_certificate")  # a FIFO would hang
        check_given(settings.tls_key, what="tls_key")
        try:
            tls.load_cert_chain(settings.tls_certificate, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"tls_certificate {settings.tls_certificate!r}: {exc}"
            ) from None
    credentials = PasswordFile(settings.auth_file) if settings.auth_file else None
    if credentials is not None and tls is None:
        raise ConfigurationError(
            "auth_file needs tls_certificate and tls_key: AUTH is over TLS only"
        )
    bound: list[socket.socket] = []
    try:
        # One by one: those bound before a failure are in the list, to be closed.
        bound.extend(bind(a, reuse_port=settings.listen_reuse_port) for a in settings.listen)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return Prepared(sockets=tuple(bound), tls=tls, credentials=credentials)


def addresses(prepared: Prepared) -> list[str]:
    """The first worker's listening addresses, as the banner shows them."""
    from spoolmail._listen.listener import socket_name  # noqa: PLC0415 (see above)

    return [socket_name(sock) for sock in prepared.sockets]


def listener_limits(settings: Settings, share: Share = WHOLE) -> ListenerLimits:
    """The listener's limits; ``max_sessions`` is the whole service's, so a listening worker
    (``share`` among the listening workers) gets its part of it."""
    from spoolmail._listen.listener import ListenerLimits  # noqa: PLC0415 (see above)

    return ListenerLimits(
        max_message_size=settings.max_message_size,
        max_recipients=settings.max_recipients,
        max_sessions=part(settings.max_sessions, share),
        command_timeout=settings.listen_timeout,
        min_free_space=settings.min_free_space,
    )


def access_policy(settings: Settings) -> AccessPolicy:
    """The relay and connection lists (checked: a bad network is a ConfigurationError)."""
    from spoolmail._core.relay import AccessPolicy  # noqa: PLC0415 (see above)

    return AccessPolicy(
        relay_networks=settings.relay_networks,
        allowed_clients=settings.listen_allow,
        denied_clients=settings.listen_deny,
    )


def start(prepared: Prepared, spool: Spool, *, router: Router, settings: Settings) -> Listener:
    """Serve on what :func:`prepare` made."""
    from spoolmail._listen.listener import Listener, share_with_workers  # noqa: PLC0415
    from spoolmail._service.service import machine_name  # noqa: PLC0415

    listener = Listener(
        spool,
        addresses=list(prepared.sockets),
        router=router,
        relay_networks=settings.relay_networks,
        allowed_clients=settings.listen_allow,
        denied_clients=settings.listen_deny,
        fqdn=settings.fqdn or machine_name(),
        tls_context=prepared.tls,
        credentials=prepared.credentials,
        limits=listener_limits(settings, prepared.listening_share()),
    )
    if prepared.slot is not None:
        share_with_workers(listener, prepared.slot)
    return listener.start()


def reconfigure(
    listener: Listener,
    *,
    router: Router,
    access: AccessPolicy,
    settings: Settings,
    share: Share = WHOLE,
) -> None:
    """After a SIGHUP: sessions that begin from now on get the new routing, access lists, name
    and limits (each session's settings are made when it connects; those under way keep
    theirs). ``access`` comes from :func:`access_policy`, made before anything changed."""
    from spoolmail._service.service import machine_name  # noqa: PLC0415 (see above)

    listener.router = router
    listener.fqdn = settings.fqdn or machine_name()
    listener.limits = listener_limits(settings, share)
    # The Listener takes its access lists at construction only; its sessions read this
    # attribute when they connect, so replacing it is what a new Listener would do.
    listener._access = access


def _listen(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from spoolmail._store.spool import Spool  # noqa: PLC0415 (see above)

    prepared = prepare(settings)
    if prepared is None:
        raise UsageError("spoolmail listen: where? give --listen ADDRESS:PORT or 'listen' setting")
    try:
        dkim = assemble.dkim_policy(settings)  # key files read while still root
        privileges.lose_root(settings)
        with Spool(settings.root, dkim=dkim) as spool:
            listener = start(prepared, spool, router=assemble.router(settings), settings=settings)
            asked = {"stop": False, "reload": False}
            # The handlers only set flags; the signal's byte on the wakeup fd ends the wait.
            # (A threading.Event set in a handler can wait forever for the lock its own
            # thread holds in clear().)
            woken, waker = socket.socketpair()
            for end in (woken, waker):
                end.setblocking(False)

            def stop(_signum: int, _frame: FrameType | None) -> None:
                asked["stop"] = True

            def hangup(_signum: int, _frame: FrameType | None) -> None:
                asked["reload"] = True

            # The wake-up first: a signal between a handler and it would wait for the next one.
            before = signal.set_wakeup_fd(waker.fileno(), warn_on_full_buffer=False)
            signal.signal(signal.SIGINT, stop)
            signal.signal(signal.SIGTERM, stop)
            if hasattr(signal, "SIGHUP"):
                signal.signal(signal.SIGHUP, hangup)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # held since main
            try:
                print(
                    f"spoolmail: listening on {', '.join(listener.addresses)} for "
                    f"{settings.root}; Ctrl-C stops",
                    file=out,
                    flush=True,
                )
                while not asked["stop"]:
                    select.select([woken], [], [], 3600)
                    with contextlib.suppress(BlockingIOError):
                        while woken.recv(4096):
                            pass
                    if asked["reload"] and not asked["stop"]:
                        asked["reload"] = False
                        settings = _reload(listener, settings, args)
            finally:
                signal.set_wakeup_fd(before)
                woken.close()
                waker.close()
                listener.stop()
    finally:
        prepared.close()
    return EX_OK


def _reload(listener: Listener, settings: Settings, args: argparse.Namespace) -> Settings:
    args.logs.reopen()
    new = reloading.reread(settings, args)
    if new is settings:
        return settings
    try:
        access = access_policy(new)
        router = assemble.router(new)
    except SpoolmailError as exc:
        log.error("SIGHUP: %s; the settings in use stay", exc)  # noqa: TRY400 (no traceback)
        return settings
    reconfigure(listener, router=router, access=access, settings=new)
    reloading.in_use(settings, new, args)
    return new


def _passwd(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if ":" in args.user or not args.user.strip():
        raise UsageError(f"listen-passwd: {args.user!r} cannot be a user name")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("listen-passwd: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("listen-passwd: an empty password")
    from spoolmail._listen.passwords import hash_password  # noqa: PLC0415 (see above)

    print(f"{args.user}:{hash_password(password)}", file=out)
    return EX_OK
