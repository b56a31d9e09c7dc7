"""The ``spoolmail`` command: its tree, and ``init``, ``run`` and ``submit``.

``spoolmail run`` with no settings at all makes ``./MailRoot`` and serves it until Ctrl-C, with
local domain ``localhost`` and IIS's defaults. Settings come from flags or a TOML file
(``--config``, see ``settings``); ``assemble`` builds the service from them. ``queue``,
``badmail`` and ``drop`` live in ``operations``; exit statuses in ``status``. Tested through
:func:`main` (argv in, exit status out).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import attrs

from spoolmail._cli import (
    assemble,
    config,
    dkim,
    examples,
    flags,
    listening,
    maillog,
    operations,
    privileges,
    reloading,
    sendmail,
    suppress,
    workers,
)
from spoolmail._cli.logs import Logs
from spoolmail._cli.settings import Settings, load_settings
from spoolmail._cli.status import (
    EX_FAILED,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    UsageError,
    exit_status,
    report,
)
from spoolmail._core.dkim import DkimPolicy
from spoolmail._core.shares import WHOLE, Share
from spoolmail._listen.listener import Listener, socket_name
from spoolmail._service import iis
from spoolmail._service.service import MailService, Report
from spoolmail._store.spool import Spool
from spoolmail._store.submission import Pickup
from spoolmail.exceptions import SpoolmailError
from spoolmail.metrics import serve_metrics

__all__ = ["EX_FAILED", "EX_OK", "EX_TEMPFAIL", "EX_USAGE", "main"]

log = logging.getLogger("spoolmail")


# -- the command tree ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spoolmail",
        description="An IIS-style MailRoot (Pickup, Queue, BadMail, Drop) mail spool.",
    )
    _global_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    init = commands.add_parser("init", help="create the MailRoot folders and exit")
    init.set_defaults(handler=_init)
    _run_parser(commands)
    _submit_parser(commands)
    operations.add_commands(commands)
    maillog.add_command(commands)
    listening.add_commands(commands, lose_root=_lose_root)
    sendmail.add_command(commands)
    config.add_command(commands)
    suppress.add_commands(commands)
    dkim.add_commands(commands)
    _global_options_after(parser)
    examples.add_examples(parser)
    return parser


def _global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    """``--config``, ``--root``, ``-v``, ``--log-file`` and ``--syslog``: before the command,
    and (``default=SUPPRESS``) after it too, where one not given leaves the first alone."""
    where: Any = parser
    if default is argparse.SUPPRESS:
        where = parser.add_argument_group("global options (also before the command)")
    where.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="a TOML settings file ([spoolmail] table; see docs/settings.md)",
    )
    flags.add_setting_flags(where, ["root"], default=default)
    where.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if default is None else default,
        help="log every step, the SMTP dialogue too",
    )
    flags.add_setting_flags(where, ["log_file", "syslog"], default=default)


# Commands whose arguments are all their own: sendmail keeps Postfix's sendmail(1) options
# (-C is its settings file, -v verbose, and everything after the options is a recipient).
_OWN_ARGUMENTS = frozenset({"sendmail"})


def _global_options_after(parser: argparse.ArgumentParser) -> None:
    """Give every command (and every action of one, ``queue list``) the global options."""
    seen: set[int] = set()

    def visit(node: argparse.ArgumentParser) -> None:
        for action in node._actions:  # argparse lists subcommands nowhere else
            if not isinstance(action, argparse._SubParsersAction):
                continue
            for name, child in action.choices.items():
                if name in _OWN_ARGUMENTS or id(child) in seen:
                    continue
                seen.add(id(child))
                _global_options(child, default=argparse.SUPPRESS)
                visit(child)

    visit(parser)


def _run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="process Pickup and the Queue until Ctrl-C")
    run.set_defaults(handler=_run)
    run.add_argument("--once", action="store_true", help="process what is due once, then exit")
    # Every setting but the global options' and the listener's, in the settings table's order.
    own = set(listening.LISTENER_KEYS) | {"root", "log_file", "syslog"}
    flags.add_setting_flags(run, [name for name in flags.flag_keys() if name not in own])
    listening.add_listen_options(run)


def _submit_parser(commands: Any) -> None:
    submit = commands.add_parser(
        "submit", help="put a message into Pickup; prints the queue id it will have"
    )
    submit.set_defaults(handler=_submit)
    submit.add_argument("file", nargs="?", default="-", help="the message file (default stdin)")
    submit.add_argument("--from", dest="sender", help="envelope sender (x-sender)")
    submit.add_argument(
        "--to",
        action="append",
        dest="recipients",
        metavar="ADDRESS",
        help="envelope recipient (x-receiver; repeat)",
    )


# -- init, run, submit -----------------------------------------------------------------------------


def _init(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root):
        print(f"MailRoot ready at {settings.root}", file=out)
    return EX_OK


def _report_lines(report: Report) -> Iterable[str]:
    yield from (f"{queue_id}: queued from Pickup" for queue_id in report.picked_up)
    yield from (f"{queue_id}: delivered to {address}" for queue_id, address in report.delivered)
    yield from (f"{queue_id}: deferred for {address}" for queue_id, address in report.deferred)
    yield from (f"{queue_id}: failed for {address}" for queue_id, address in report.failed)
    yield from (f"{queue_id}: delivery status notification queued" for queue_id in report.dsns)
    yield from (f"{queue_id}: moved to BadMail" for queue_id in report.badmail)


def _log_report(report: Report) -> None:
    # Each outcome has its own record already (spoolmail.mail, one per recipient): the tick's
    # summary is for -v.
    for line in _report_lines(report):
        log.debug("%s", line)


def _lose_root(settings: Settings) -> None:
    """Become the service's user, or warn once that the service runs as root.

    Called once start-up needs root no more: after the settings are read, and before the
    MailRoot is opened, so that every file the service writes is its user's. The inbound
    listener, when there is one, binds its sockets before this (port 25 needs root).
    The warning goes to the log, on stderr: the daemon shows it at every start, while a
    ``--once`` run, whose log shows errors only, keeps its output for its results (``-v``
    shows it there too).
    """
    if settings.user is not None:
        identity = privileges.drop_privileges(*privileges.parse_user(settings.user))
        log.info("running as %s (uid %d, gid %d)", identity.user, identity.uid, identity.gid)
        return
    warning = privileges.root_warning()
    if warning is not None:
        log.warning("%s", warning)


def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    # The listener's sockets are bound (port 25), its key and users read, while still root:
    # a set of sockets for each worker that may run.
    wanted = 1 if args.once else workers.requested(settings.workers)
    prepared = None if args.once else listening.prepare(settings, workers=wanted)
    try:
        dkim = assemble.dkim_policy(settings)  # key files read while still root
        _lose_root(settings)
        with Spool(settings.root, dkim=dkim) as spool:
            count = workers.worker_count(wanted, spool)
            if prepared is not None:
                prepared = prepared.keep(count)
            if count == 1:
                return _serve(settings, args, out, spool, prepared)
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

    def work(share: Share, serving: Callable[[], None], stats: socket.socket) -> int:
        args.logs.as_worker(share.index)

        def started(daemon: _Daemon) -> None:
            # Through the daemon: a SIGHUP replaces its service.
            workers.stats_responder(stats, lambda: daemon.service.stats())  # noqa: PLW0108
            serving()

        try:
            mine = None if prepared is None else prepared.for_worker(share.index)
            with Spool(settings.root, dkim=dkim) as spool:
                return _serve(settings, args, out, spool, mine, share=share, on_serving=started)
        except SpoolmailError as exc:  # as main() says it: the parent passes the status on
            report(exc)
            return exit_status(exc)

    supervisor = workers.Supervisor(count, work, on_hangup=args.logs.reopen)
    stop_metrics = None

    def started() -> None:
        nonlocal stop_metrics
        if settings.metrics:
            stop_metrics = serve_metrics(lambda: supervisor, settings.metrics)
        addresses = [socket_name(sock) for sock in prepared.sockets] if prepared else []
        print(_banner(settings, addresses, workers=count), file=out, flush=True)

    try:
        return supervisor.run(on_started=started)
    finally:
        if stop_metrics is not None:
            stop_metrics()


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
    on_serving: Callable[[_Daemon], None] | None = None,
) -> int:
    """Serve ``spool`` until a signal stops it: alone (``on_serving`` None: the banner and the
    metrics are this process's), or as one worker of several (``share``; ``on_serving`` tells
    the supervisor)."""
    daemon = _Daemon(settings, assemble.service(settings, spool, share=share), share=share)
    try:
        if args.once:
            return _once(daemon.service, spool, out)
        signal.signal(signal.SIGINT, daemon.stop)
        signal.signal(signal.SIGTERM, daemon.stop)
        if hasattr(signal, "SIGHUP"):  # not on Windows
            signal.signal(signal.SIGHUP, daemon.hangup)
        if prepared is not None:
            daemon.listener = listening.start(
                prepared, spool, router=daemon.service.router, settings=settings
            )
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
        daemon.service = assemble.service(new, spool, share=daemon.share)
    except SpoolmailError as exc:
        log.error("SIGHUP: %s; the settings in use stay", exc)  # noqa: TRY400 (no traceback)
        daemon.service = assemble.service(old, spool, share=daemon.share)
        return
    daemon.settings = new
    if daemon.listener is not None:
        listening.reconfigure(
            daemon.listener, router=daemon.service.router, access=access, settings=new
        )
    log.info("SIGHUP: the new settings are in use")


def _submit(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise SpoolmailError(f"cannot read {args.file}: {exc}") from exc
    if "://" not in settings.root and Path(settings.root, "Pickup").is_dir():
        # Pickup alone, as an application on a locked-down MailRoot may write it.
        queue_id = Pickup(settings.root).submit(
            data, sender=args.sender, recipients=args.recipients
        )
    else:
        with Spool(settings.root) as spool:  # makes the MailRoot, as `init` would
            queue_id = spool.submit(data, sender=args.sender, recipients=args.recipients)
    # The id alone, for scripts: the Pickup file is <id>.eml and the message keeps the id in the
    # Queue, so `spoolmail queue show <id>` finds it once it is picked up.
    print(queue_id, file=out)
    return EX_OK


# -- shared helpers --------------------------------------------------------------------------------


# -- queue -----------------------------------------------------------------------------------------


# -- badmail ---------------------------------------------------------------------------------------


# -- drop ------------------------------------------------------------------------------------------


# -- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the ``spoolmail`` command; returns the exit status.

    0 done, 1 failed, 2 bad usage, 75 (EX_TEMPFAIL) try again later. Output goes to ``out``
    (default stdout), errors to stderr, never as a traceback.
    """
    out = out or sys.stdout
    parser = _parser()
    try:
        with contextlib.redirect_stdout(out):  # --help goes where the output goes
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    # The daemon logs what it does; a one-shot command prints its result on stdout instead,
    # and its log shows only errors (everything with -v).
    daemon = args.command in ("run", "listen") and not getattr(args, "once", False)
    logs = Logs(level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.ERROR)
    args.logs = logs
    handler: Callable[[Settings, argparse.Namespace, TextIO], int] = args.handler
    try:
        settings = load_settings(args.config, flags.overrides(args))
        if settings.log_file:
            logs.to_file(settings.log_file)
        if settings.syslog:
            logs.to_syslog(settings.syslog)
        return handler(settings, args, out)
    except UsageError as exc:
        sys.stderr.write(f"spoolmail: {exc}\n")
        return EX_USAGE
    except SpoolmailError as exc:
        report(exc)
        return exit_status(exc)
    finally:
        logs.close()
