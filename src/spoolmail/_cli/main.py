"""The ``spoolmail`` command: run the service, put messages into Pickup, look into the MailRoot.

``spoolmail run`` with no settings at all makes ``./MailRoot`` and serves it until Ctrl-C, with
local domain ``localhost`` and IIS's defaults. Settings come from flags or a TOML file
(``--config``, see ``settings``). This module assembles a whole service from settings; nothing
else in spoolmail does. Tested through :func:`main` (argv in, exit status out).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

import attrs

from spoolmail._cli.settings import RETRY_PRESETS, Settings, load_settings
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Router
from spoolmail._service.service import Limits, MailService, Report
from spoolmail._store.spool import Spool
from spoolmail.exceptions import SpoolmailError

__all__ = ["main"]

log = logging.getLogger("spoolmail")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spoolmail",
        description="An IIS-style MailRoot (Pickup, Queue, BadMail, Drop) mail spool.",
    )
    parser.add_argument("--config", type=Path, help="a TOML settings file ([spoolmail] table)")
    parser.add_argument("--root", help="the MailRoot folder or FS URL (default ./MailRoot)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    commands.add_parser("init", help="create the MailRoot folders and exit")

    run = commands.add_parser("run", help="process Pickup and the Queue until Ctrl-C")
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
    run.add_argument("--smart-host", help="relay remote mail here: host, host:port or [ip]")
    run.add_argument("--retry", choices=RETRY_PRESETS, help="the retry schedule (default iis)")
    run.add_argument("--max-message-size", type=int, metavar="BYTES")
    run.add_argument("--max-hop-count", type=int, metavar="N")
    run.add_argument(
        "--pickup-dot-stuffed",
        action="store_const",
        const=True,
        help="un-stuff leading dots in Pickup files, as IIS 5+ did",
    )
    run.add_argument("--poll-interval", type=float, metavar="SECONDS")

    submit = commands.add_parser("submit", help="put a message into Pickup")
    submit.add_argument("file", nargs="?", default="-", help="the message file (default stdin)")
    submit.add_argument("--from", dest="sender", help="envelope sender (x-sender)")
    submit.add_argument(
        "--to",
        action="append",
        dest="recipients",
        metavar="ADDRESS",
        help="envelope recipient (x-receiver; repeat)",
    )

    for name, what in (
        ("queue", "queued messages"),
        ("badmail", "BadMail entries"),
        ("drop", "Drop files"),
    ):
        listing = commands.add_parser(name, help=f"list {what}")
        listing.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _retry(name: str) -> RetryPolicy:
    presets: dict[str, Callable[[], RetryPolicy]] = {
        "iis": RetryPolicy.iis,
        "postfix": RetryPolicy.postfix,
        "qmail": RetryPolicy.qmail,
        "exim": RetryPolicy.exim,
    }
    return presets[name]()


def _service(settings: Settings, spool: Spool) -> MailService:
    return MailService(
        spool,
        router=Router(
            local_domains=settings.local_domains,
            alias_domains=settings.alias_domains,
            smart_host=settings.smart_host,
        ),
        retry=_retry(settings.retry),
        fqdn=settings.fqdn,
        limits=Limits(
            max_message_size=settings.max_message_size, max_hop_count=settings.max_hop_count
        ),
        pickup_dot_stuffed=settings.pickup_dot_stuffed,
    )


def _log_report(report: Report) -> None:
    for queue_id in report.picked_up:
        log.info("queued %s from Pickup", queue_id)
    for queue_id, address in report.delivered:
        log.info("%s delivered to %s", queue_id, address)
    for queue_id, address in report.deferred:
        log.info("%s deferred for %s", queue_id, address)
    for queue_id, address in report.failed:
        log.info("%s failed for %s", queue_id, address)
    for queue_id in report.dsns:
        log.info("queued DSN %s", queue_id)
    for queue_id in report.badmail:
        log.warning("%s moved to BadMail", queue_id)


def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        service = _service(settings, spool)
        try:
            if args.once:
                report = service.run_once()
                _log_report(report)
                return 1 if report.errors else 0

            def stop(signum: int, _frame: FrameType | None) -> None:
                log.info("signal %s: stopping after this tick", signum)
                service.stop()

            signal.signal(signal.SIGINT, stop)
            signal.signal(signal.SIGTERM, stop)
            print(
                f"spoolmail: serving {settings.root} (local domains: "
                f"{', '.join(settings.local_domains)}; "
                f"smart host: {settings.smart_host or 'none'}); "
                "Ctrl-C stops",
                file=out,
                flush=True,
            )
            service.run_forever(poll_interval=settings.poll_interval, on_report=_log_report)
        finally:
            service.close()
    return 0


def _submit(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise SpoolmailError(f"cannot read {args.file}: {exc}") from exc
    with Spool(settings.root) as spool:
        name = spool.submit(data, sender=args.sender, recipients=args.recipients)
    print(f"Pickup/{name}", file=out)
    return 0


def _listing(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        rows: list[dict[str, object]] = []
        if args.command == "queue":
            for item in spool.queued():
                env = item.envelope
                rows.append(
                    {
                        "id": env.id,
                        "state": item.state.value,
                        "sender": env.sender,
                        "arrival": env.arrival.isoformat(),
                        "next_attempt": env.next_attempt.isoformat(),
                        "attempts": env.attempts,
                        "size": env.size,
                        "recipients": [
                            {
                                "address": r.address,
                                "state": r.state.value,
                                "reply": str(r.reply or ""),
                            }
                            for r in env.recipients
                        ],
                    }
                )
        elif args.command == "badmail":
            rows.extend({"id": b.id, "reason": b.reason} for b in spool.badmail())
        else:
            rows.extend(
                {"id": d.id, "sender": d.sender, "recipients": list(d.recipients), "size": d.size}
                for d in spool.drop()
            )
    for row in rows:
        if args.json:
            print(json.dumps(row, ensure_ascii=False), file=out)
        else:
            print(_line(row), file=out)
    return 0


def _line(row: dict[str, object]) -> str:
    recipients = row.get("recipients", [])
    if isinstance(recipients, list):
        shown = ", ".join(
            f"{r['address']} ({r['state']})" if isinstance(r, dict) else str(r) for r in recipients
        )
        row = {**row, "recipients": shown}
    return "  ".join(f"{value}" for value in row.values())


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the ``spoolmail`` command; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    names = {field.name for field in attrs.fields(Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        settings = load_settings(args.config, overrides)
        if args.command == "init":
            with Spool(settings.root):
                print(f"MailRoot ready at {settings.root}", file=out)
            return 0
        if args.command == "run":
            return _run(settings, args, out)
        if args.command == "submit":
            return _submit(settings, args, out)
        return _listing(settings, args, out)
    except SpoolmailError as exc:
        sys.stderr.write(f"spoolmail: {exc}\n")
        return 2 if isinstance(exc, ValueError) else 1
