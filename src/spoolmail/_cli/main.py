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
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import attrs

from spoolmail._cli import assemble, listening, maillog, operations, privileges, sendmail
from spoolmail._cli.settings import RETRY_PRESETS, TLS_POLICIES, Settings, load_settings
from spoolmail._cli.status import (
    EX_FAILED,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    UsageError,
    exit_status,
    report,
)
from spoolmail._service import iis
from spoolmail._service.service import Report
from spoolmail._store.spool import Spool
from spoolmail._store.submission import Pickup
from spoolmail.exceptions import ConfigurationError, SpoolmailError

__all__ = ["EX_FAILED", "EX_OK", "EX_TEMPFAIL", "EX_USAGE", "main"]

log = logging.getLogger("spoolmail")


# -- the command tree ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spoolmail",
        description="An IIS-style MailRoot (Pickup, Queue, BadMail, Drop) mail spool.",
    )
    parser.add_argument("--config", type=Path, help="a TOML settings file ([spoolmail] table)")
    parser.add_argument("--root", help="the MailRoot folder or FS URL (default ./MailRoot)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    init = commands.add_parser("init", help="create the MailRoot folders and exit")
    init.set_defaults(handler=_init)
    _run_parser(commands)
    _submit_parser(commands)
    operations.add_commands(commands)
    maillog.add_command(commands)
    listening.add_commands(commands, lose_root=_lose_root)
    sendmail.add_command(commands)
    return parser


def _run_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="process Pickup and the Queue until Ctrl-C")
    run.set_defaults(handler=_run)
    run.add_argument("--once", action="store_true", help="process what is due once, then exit")
    run.add_argument("--fqdn", help="this server's name (Received:, Message-ID, DSNs)")
    run.add_argument(
        "--local-domain",
        action="append",
        dest="local_domains",
        metavar="DOMAIN",
        help="a local domain delivered to Drop (repeat; the first is the default domain)",
    )
    run.add_argument(
        "--alias-domain",
        action="append",
        dest="alias_domains",
        metavar="DOMAIN",
        help="an alias domain, also delivered to Drop (repeat)",
    )
    run.add_argument(
        "--catch-all",
        action="store_const",
        const=True,
        help="capture mode: every recipient, whatever its domain, lands in Drop; nothing is sent",
    )
    run.add_argument("--smart-host", help="relay remote mail here: host, host:port or [ip]")
    run.add_argument(
        "--smart-host-mode",
        choices=("always", "fallback"),
        help="always the smart host (default), or MX first and the smart host on failure",
    )
    run.add_argument(
        "--smart-host-user",
        metavar="USER",
        help="AUTH to the smart host over TLS; the password comes from the settings file or "
        "SPOOLMAIL_SMART_HOST_PASSWORD, never from a flag",
    )
    run.add_argument(
        "--route",
        action="append",
        dest="route_items",
        metavar="DOMAIN=HOST",
        help="send a domain's mail to its own host (repeat)",
    )
    run.add_argument("--tls", choices=TLS_POLICIES, help="STARTTLS policy (default opportunistic)")
    run.add_argument(
        "--tls-domain",
        action="append",
        dest="tls_domain_items",
        metavar="DOMAIN=POLICY",
        help="STARTTLS policy for one domain (repeat)",
    )
    run.add_argument("--tls-ca-file", metavar="FILE", help="CA certificates for --tls required")
    run.add_argument(
        "--dns-server",
        action="append",
        dest="dns_servers",
        metavar="ADDRESS[:PORT]",
        help="ask this DNS server instead of the system's (repeat)",
    )
    run.add_argument("--smtp-port", type=int, metavar="PORT", help="port of MX hosts (25)")
    run.add_argument("--masquerade-domain", metavar="DOMAIN")
    run.add_argument("--max-connections", type=int, metavar="N")
    run.add_argument("--max-connections-per-host", type=int, metavar="N")
    run.add_argument("--max-recipients", type=int, metavar="N", help="RCPT TO per transaction")
    run.add_argument("--retry", choices=RETRY_PRESETS, help="the retry schedule (default iis)")
    run.add_argument("--max-message-size", type=int, metavar="BYTES")
    run.add_argument("--max-hop-count", type=int, metavar="N")
    run.add_argument(
        "--ndr-copy-to",
        metavar="ADDRESS",
        help='also send every failure DSN here (IIS "Send copy of Non-Delivery Report to")',
    )
    run.add_argument(
        "--pickup-dot-stuffed",
        action="store_const",
        const=True,
        help="un-stuff leading dots in Pickup files, as IIS 5+ did",
    )
    run.add_argument("--poll-interval", type=float, metavar="SECONDS")
    run.add_argument(
        "--pickup-settle",
        type=float,
        metavar="SECONDS",
        help="where no lease or inotify tells that a Pickup file's writer is done, take it once "
        "its size and time stayed unchanged this long (default 2)",
    )
    run.add_argument(
        "--min-free-space",
        type=int,
        metavar="BYTES",
        help="leave Pickup files waiting while the MailRoot's disk has less free "
        "(default 100 MiB, 0: no floor)",
    )
    run.add_argument(
        "--log-days",
        type=int,
        metavar="DAYS",
        help="days the mail log in Log/ keeps its daily files (default 30, 0: no mail log)",
    )
    run.add_argument(
        "--user",
        metavar="NAME[:GROUP]",
        help="started as root, become this user (and group) once start-up is done",
    )
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


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, str] | None:
    """``DOMAIN=VALUE`` flags as a mapping (``None`` when the flag was not given)."""
    if not items:
        return None
    pairs = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise ConfigurationError(f"{flag} takes DOMAIN=VALUE, not {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


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
    # The listener's sockets are bound (port 25), its key and users read, while still root.
    prepared = None if args.once else listening.prepare(settings)
    try:
        _lose_root(settings)
        with Spool(settings.root) as spool:
            return _serve(settings, args, out, spool, prepared)
    finally:
        if prepared is not None:
            prepared.close()


def _serve(
    settings: Settings,
    args: argparse.Namespace,
    out: TextIO,
    spool: Spool,
    prepared: listening.Prepared | None,
) -> int:
    service = assemble.service(settings, spool)
    listener = None
    try:
        # IIS's NTFS_*.EML Queue files are never delivered as they are: say so at each start.
        stranded = iis.warn_stranded(spool._store)
        if args.once:
            for name in stranded:
                print(f"Queue/{name}: IIS queue file, not delivered until imported", file=out)
            report = service.run_once()
            for line in _report_lines(report):
                print(line, file=out)
            return EX_FAILED if report.errors else EX_OK

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %s: stopping after this tick", signum)
            service.stop()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        if prepared is not None:
            listener = listening.start(prepared, spool, router=service.router, settings=settings)
        where = (
            "capture mode: every recipient lands in Drop"
            if settings.catch_all
            else f"local domains: {', '.join(settings.local_domains)}; "
            f"smart host: {settings.smart_host or 'none'}"
        )
        listening_on = f"; listening on {', '.join(listener.addresses)}" if listener else ""
        print(
            f"spoolmail: serving {settings.root} ({where}){listening_on}; Ctrl-C stops",
            file=out,
            flush=True,
        )
        service.run_forever(poll_interval=settings.poll_interval, on_report=_log_report)
    finally:
        if listener is not None:
            listener.stop()
        service.close()
    return EX_OK


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


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, not the one there was at the start."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 (logging must never break the command)
            self.handleError(record)


def _log_to_stderr(*, level: int) -> None:
    """Show spoolmail's log on stderr (set up once, however often ``main`` runs)."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
    # aiosmtpd logs every command a client sends at INFO on "mail.log" (addresses included):
    # the listener's own records say what matters; its dialogue is for -v.
    logging.getLogger("mail.log").setLevel(
        logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    )


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
    _log_to_stderr(
        level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.ERROR
    )
    names = {field.name for field in attrs.fields(Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    handler: Callable[[Settings, argparse.Namespace, TextIO], int] = args.handler
    try:
        overrides["routes"] = _pairs(getattr(args, "route_items", None), "--route")
        overrides["tls_domains"] = _pairs(getattr(args, "tls_domain_items", None), "--tls-domain")
        settings = load_settings(args.config, overrides)
        return handler(settings, args, out)
    except UsageError as exc:
        sys.stderr.write(f"spoolmail: {exc}\n")
        return EX_USAGE
    except SpoolmailError as exc:
        report(exc)
        return exit_status(exc)
