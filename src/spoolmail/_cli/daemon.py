"""``spoolmail run``: the daemon that serves the MailRoot, alone or as a group of workers.

``spoolmail run`` with no settings at all makes ``./MailRoot`` and serves it until Ctrl-C, with
local domain ``localhost`` and IIS's defaults; ``--once`` processes what is due and exits.
``assemble`` builds the service from the settings, ``workers`` forks and looks after the
workers (``--workers``, two per CPU by default; with a listener, the listening ones plus one
per CPU), ``listening`` adds the inbound listener (``--listen``; imported only then),
``reloading`` reads the settings again on SIGHUP.
Its module is imported only when the command is given (``main``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from spoolmail._cli import assemble, flags, listening, privileges, reloading, workers
from spoolmail._cli.settings import Settings
from spoolmail._cli.status import EX_FAILED, EX_OK, exit_status, report
from spoolmail._core.dkim import DkimPolicy
from spoolmail._core.shares import WHOLE, Share
from spoolmail._service import iis
from spoolmail._service.handoff import Handoff
from spoolmail._service.service import MailService, Report
from spoolmail._store.spool import Spool
from spoolmail.exceptions import SpoolmailError
from spoolmail.metrics import check_metrics, serve_metrics

if TYPE_CHECKING:
    from spoolmail._listen.listener import Listener

__all__ = ["add_command"]

log = logging.getLogger("spoolmail")


def add_command(commands: Any) -> None:
    """Add ``run`` to the command tree."""
    run = commands.add_parser("run")
    run.set_defaults(handler=_run)
    run.add_argument("--once", action="store_true", help="process what is due once, then exit")
    # Every setting but the global options' and the listener's, in the settings table's order.
    own = set(listening.LISTENER_KEYS) | {"root", "log_file", "syslog"}
    flags.add_setting_flags(run, [name for name in flags.flag_keys() if name not in own])
    listening.add_listen_options(run)


def _report_lines(report: Report) -> Iterable[str]:
    yield from (f"{queue_id}: queued from Pickup" for queue_id in report.picked_up)
    yield from (f"{queue_id}: delivered to {address}" for queue_id, address in report.delivered)
    yield from (f"{queue_id}: deferred for {address}" for queue_id, address in report.deferred)
    yield from (f"{queue_id}: failed for {address}" for queue_id, address in report.failed)
    yield from (f"{queue_id}: delivery status notification queued" for queue_id in report.dsns)
    yield from (f"{queue_id}: moved to BadMail" for queue_id in report.badmail)


def _log_report(report: Report) -> None:
    # Each outcome has its own record already (spoolmail.mail, one per recipient): the tick's
    # summary is for -v, and its lines are not even made without it (a tick a message or two
    # while SMTP mail trickles in).
    if not log.isEnabledFor(logging.DEBUG):
        return
    for line in _report_lines(report):
        log.debug("%s", line)


def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    # SIGHUP is held (main) until _serve's handler (or the supervisor's) is set, then read.
    if settings.metrics and not args.once:
        check_metrics(settings.metrics)  # the extra and the address, before any worker starts
    # The listener's sockets are bound (port 25), its key and users read, while still root;
    # the workers share them.
    prepared = None if args.once else listening.prepare(settings)
    wanted = 1
    if not args.once:
        listen = None if prepared is None else settings.listening_workers
        wanted = workers.requested(settings.workers, listen=listen)
    try:
        dkim = assemble.dkim_policy(settings)  # key files read while still root
        privileges.lose_root(settings)
        with Spool(settings.root, dkim=dkim) as spool:
            count = workers.worker_count(wanted, spool)
            if prepared is not None:
                prepared = prepared.keep(workers.listening(count, settings.listening_workers))
            if count == 1:
                return _serve(settings, args, out, spool, prepared)
            assemble.check(settings)  # once here, not in each worker after the fork
            # IIS's NTFS_*.EML Queue files are never delivered as they are: say so once.
            iis.warn_stranded(spool._store)
        return _supervise(
            count, settings=settings, args=args, out=out, prepared=prepared, dkim=dkim
        )
    finally:
        if prepared is not None:
            prepared.close()


def _supervise(
    count: int,
    *,
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO,
    prepared: listening.Prepared | None,
    dkim: DkimPolicy | None,
) -> int:
    """``run --workers N``: fork the workers (``workers``) and look after them; the banner and
    the metrics endpoint are the parent's, the work is theirs."""

    # The listening workers hand what their sessions queue to the others (_service.handoff).
    listeners = 0 if prepared is None else workers.listening(count, settings.listening_workers)
    handoff = Handoff(count, listeners) if 0 < listeners < count else None

    def work(share: Share, serving: Callable[[], None], stats: socket.socket) -> int:
        args.logs.as_worker(share.index)

        def started(daemon: _Daemon) -> None:
            # Through the daemon: a SIGHUP replaces its service.
            workers.stats_responder(stats, lambda gauges: daemon.service.stats(gauges=gauges))
            serving()

        try:
            mine = None if prepared is None else prepared.for_worker(share.index)
            with Spool(settings.root, dkim=dkim) as spool:
                return _serve(
                    settings,
                    args,
                    out,
                    spool,
                    mine,
                    share=share,
                    handoff=handoff,
                    on_serving=started,
                )
        except SpoolmailError as exc:  # as main() says it: the parent passes the status on
            report(exc)
            return exit_status(exc)

    # Listening workers wait more than they compute: the system places them best (cpu_for).
    pin = settings.pin_workers and prepared is None
    supervisor = workers.Supervisor(count, work, on_hangup=args.logs.reopen, pin=pin)
    stop_metrics = None

    def started() -> None:
        nonlocal stop_metrics
        if settings.metrics:
            stop_metrics = serve_metrics(lambda: supervisor, settings.metrics)
        addresses = listening.addresses(prepared) if prepared else []
        print(_banner(settings, addresses, workers=count), file=out, flush=True)

    try:
        return supervisor.run(on_started=started)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        if handoff is not None:
            handoff.close()


def _banner(settings: Settings, addresses: Sequence[str], *, workers: int = 1) -> str:
    where = (
        "capture mode: every recipient lands in Drop"
        if settings.catch_all
        else f"local domains: {', '.join(settings.local_domains)}; "
        f"smart host: {settings.smart_host or 'none'}"
    )
    listening_on = f"; listening on {', '.join(addresses)}" if addresses else ""
    processes = f"; {workers} workers" if workers > 1 else ""
    return f"spoolmail: serving {settings.root} ({where}){listening_on}{processes}; Ctrl-C stops"


@attrs.define
class _Daemon:
    """The service ``run`` serves with, and what SIGTERM and SIGHUP asked of it.

    The signal handlers only set a flag and end the current :meth:`MailService.run_forever`
    after its tick; the loop in :func:`_serve` does what was asked, between ticks.
    """

    settings: Settings
    service: MailService
    share: Share = WHOLE
    listener: Listener | None = None
    listening: Share = WHOLE  # the listener's place among the listening workers
    handoff: Handoff | None = None  # the workers' inboxes, where some listen and some do not
    stop_metrics: Callable[[], None] | None = None
    stopping: bool = False
    reloading: bool = False

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping after this tick", signum)
        self.stopping = True
        self.service.stop()

    def hangup(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: reading the settings again after this tick", signum)
        self.reloading = True
        self.service.stop()


def _serve(
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO,
    spool: Spool,
    prepared: listening.Prepared | None,
    *,
    share: Share = WHOLE,
    handoff: Handoff | None = None,
    on_serving: Callable[[_Daemon], None] | None = None,
) -> int:
    """Serve ``spool`` until a signal stops it: alone (``on_serving`` None: the banner and the
    metrics are this process's), or as one worker of several (``share``; ``on_serving`` tells
    the supervisor)."""
    daemon = _Daemon(
        settings, _service(settings, spool, share, handoff), share=share, handoff=handoff
    )
    try:
        if args.once:
            return _once(daemon.service, spool, out)
        signal.signal(signal.SIGINT, daemon.stop)
        signal.signal(signal.SIGTERM, daemon.stop)
        if hasattr(signal, "SIGHUP"):  # not on Windows
            signal.signal(signal.SIGHUP, daemon.hangup)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # held since main
        if prepared is not None:
            daemon.listener = listening.start(
                prepared, spool, router=daemon.service.router, settings=settings
            )
            daemon.listening = prepared.listening_share()
        if on_serving is not None:
            on_serving(daemon)
        else:
            # IIS's NTFS_*.EML Queue files are never delivered as they are: say so at each start
            # (a worker's parent said it).
            iis.warn_stranded(spool._store)
            if settings.metrics:
                daemon.stop_metrics = serve_metrics(lambda: daemon.service, settings.metrics)
            addresses = daemon.listener.addresses if daemon.listener else []
            print(_banner(settings, addresses), file=out, flush=True)
        while not daemon.stopping:
            if daemon.reloading:
                daemon.reloading = False
                _reload(daemon, args, spool)
                continue
            daemon.service.run_forever(
                poll_interval=daemon.settings.poll_interval, on_report=_log_report
            )
    finally:
        if daemon.stop_metrics is not None:
            daemon.stop_metrics()
        if daemon.listener is not None:
            daemon.listener.stop()
        daemon.service.close()
    return EX_OK


def _service(
    settings: Settings, spool: Spool, share: Share, handoff: Handoff | None
) -> MailService:
    """Worker ``share``'s service, joined to the group's hand-off where there is one."""
    if handoff is None:
        return assemble.service(settings, spool, share=share)
    service = assemble.service(settings, spool, share=share, handing_off=handoff.listening)
    service._use_handoff(handoff)
    return service


def _once(service: MailService, spool: Spool, out: TextIO) -> int:
    """``run --once``: one tick, its outcomes printed."""
    for name in iis.warn_stranded(spool._store):
        print(f"Queue/{name}: IIS queue file, not delivered until imported", file=out)
    report = service.run_once()
    for line in _report_lines(report):
        print(line, file=out)
    return EX_FAILED if report.errors else EX_OK


def _reload(daemon: _Daemon, args: argparse.Namespace, spool: Spool) -> None:
    """SIGHUP: reopen the log file, read the settings again and serve with a service built from
    them, as Postfix's ``postfix reload`` restarts its daemons. Between two ticks nothing is
    claimed, so the old service closes at once. A change that cannot be built (a CA file that
    does not load, a user without password) is logged and the settings in use stay."""
    args.logs.reopen()
    old = daemon.settings
    new = reloading.reread(old, args)
    if new is old:
        return
    try:
        access = listening.access_policy(new)
    except SpoolmailError as exc:
        log.error("SIGHUP: %s; the settings in use stay", exc)  # noqa: TRY400 (no traceback)
        return
    daemon.service.close()
    try:
        daemon.service = _service(new, spool, daemon.share, daemon.handoff)
    except SpoolmailError as exc:
        log.error("SIGHUP: %s; the settings in use stay", exc)  # noqa: TRY400 (no traceback)
        daemon.service = _service(old, spool, daemon.share, daemon.handoff)
        return
    daemon.settings = new
    if daemon.listener is not None:
        listening.reconfigure(
            daemon.listener,
            router=daemon.service.router,
            access=access,
            settings=new,
            share=daemon.listening,
        )
    reloading.in_use(old, new, args)
