"""The ``spoolmail`` command: run the service, put messages into Pickup, look after the MailRoot.

``spoolmail run`` with no settings at all makes ``./MailRoot`` and serves it until Ctrl-C, with
local domain ``localhost`` and IIS's defaults. Settings come from flags or a TOML file
(``--config``, see ``settings``). ``queue``, ``badmail`` and ``drop`` list and show what the
MailRoot holds; ``queue flush|hold|release|delete`` and ``badmail requeue|delete`` are Postfix's
postqueue / postsuper as :class:`~spoolmail.Spool` methods (a running service sees the change at
its next tick). This module assembles a whole service from settings; nothing else in spoolmail
does. Tested through :func:`main` (argv in, exit status out).

Exit status (sysexits.h where it has a word for it): 0 done; 1 failed (no such id, an unreadable
envelope, a tick with errors); 2 bad usage (argparse, a wrong setting or address); 75
(``EX_TEMPFAIL``) try again later (a message being delivered right now, a filesystem error).
A command given several ids does each one it can and exits with the worst status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import attrs
import dns.nameserver
import dns.resolver

from spoolmail._cli.settings import RETRY_PRESETS, TLS_POLICIES, Settings, load_settings
from spoolmail._core.envelope import Envelope, Recipient
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Credentials, Router, SmartHostMode, TlsPolicy, parse_target
from spoolmail._core.states import State
from spoolmail._service.service import Limits, MailService, Report, machine_name
from spoolmail._store.spool import BadMailItem, DropItem, QueuedMessage, Spool
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.exceptions import ConfigurationError, MessageError, NotFound, SpoolmailError

__all__ = ["EX_FAILED", "EX_OK", "EX_TEMPFAIL", "EX_USAGE", "main"]

log = logging.getLogger("spoolmail")

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2  # argparse's own exit status for bad usage (sysexits' EX_USAGE is 64)
EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; the same command later may work

# The smart host's password may come from the environment rather than a file or a flag (flags
# are visible to every user of the machine in the process list).
PASSWORD_VARIABLE = "SPOOLMAIL_SMART_HOST_PASSWORD"  # noqa: S105 (the variable's name, no secret)

# When one command meets several failures, the exit status is the worst: a usage error beats a
# failure, which beats "try again later" (trying again will not fix the others).
_SEVERITY = {EX_OK: 0, EX_TEMPFAIL: 1, EX_FAILED: 2, EX_USAGE: 3}


class _UsageError(Exception):
    """A combination of arguments argparse cannot express; exit status 2, with the usage."""


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
    _queue_parser(commands)
    _badmail_parser(commands)
    _drop_parser(commands)
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


def _submit_parser(commands: Any) -> None:
    submit = commands.add_parser("submit", help="put a message into Pickup")
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


def _list_parser(actions: Any, what: str, handler: Callable[..., int]) -> None:
    listing = actions.add_parser("list", help=f"list {what} (the default)")
    # SUPPRESS: "queue --json list" keeps the --json given before "list".
    listing.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object a line"
    )
    listing.set_defaults(handler=handler)


def _queue_parser(commands: Any) -> None:
    queue = commands.add_parser(
        "queue",
        help="list, show, flush, hold, release or delete queued messages",
        description="Without an action: list the Queue.",
        usage="%(prog)s [-h] [--json] [{list,show,flush,hold,release,delete} ...]",
    )
    queue.add_argument("--json", action="store_true", help="list: one JSON object a line")
    queue.set_defaults(handler=_queue_list)
    actions = queue.add_subparsers(dest="action", metavar="action")
    _list_parser(actions, "queued messages", _queue_list)

    show = actions.add_parser("show", help="envelope, recipients and transcript of a message")
    show.add_argument("id", metavar="ID")
    show.add_argument("--message", action="store_true", help="print the stored message instead")
    show.set_defaults(handler=_queue_show)

    flush = actions.add_parser(
        "flush", help="make messages due now (no ID and no --domain: the whole Queue)"
    )
    flush.add_argument("ids", nargs="*", metavar="ID")
    flush.add_argument(
        "--domain", help="every message with a recipient at DOMAIN still to be delivered"
    )
    flush.set_defaults(handler=_queue_flush)

    for name, help_text, handler in (
        ("hold", "put messages on hold: never attempted, no expiry", _queue_hold),
        ("release", "release held messages: due at once", _queue_release),
        ("delete", "delete messages without telling their senders", _queue_delete),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("ids", nargs="*", metavar="ID")
        action.add_argument("--all", action="store_true", help="every queued message")
        if name == "delete":
            action.add_argument("--yes", action="store_true", help="needed with --all")
        action.set_defaults(handler=handler)


def _badmail_parser(commands: Any) -> None:
    badmail = commands.add_parser(
        "badmail",
        help="list, show, requeue or delete BadMail entries",
        description="Without an action: list BadMail.",
        usage="%(prog)s [-h] [--json] [{list,show,requeue,delete} ...]",
    )
    badmail.add_argument("--json", action="store_true", help="list: one JSON object a line")
    badmail.set_defaults(handler=_badmail_list)
    actions = badmail.add_subparsers(dest="action", metavar="action")
    _list_parser(actions, "BadMail entries", _badmail_list)

    show = actions.add_parser("show", help="reason, report (.BDR) and envelope of an entry")
    show.add_argument("id", metavar="ID")
    show.add_argument("--message", action="store_true", help="print the message (.BAD) instead")
    show.set_defaults(handler=_badmail_show)

    requeue = actions.add_parser(
        "requeue",
        help="send an entry again (a file rejected at Pickup goes back to Pickup)",
    )
    requeue.add_argument("id", metavar="ID")
    requeue.add_argument(
        "--to",
        action="append",
        dest="recipients",
        metavar="ADDRESS",
        help="only these recipients (repeat; default: every one not delivered)",
    )
    requeue.add_argument("--from", dest="sender", metavar="ADDRESS", help="a new sender")
    requeue.set_defaults(handler=_badmail_requeue)

    delete = actions.add_parser("delete", help="delete entries (message and reports)")
    delete.add_argument("ids", nargs="*", metavar="ID")
    delete.add_argument("--all", action="store_true", help="every BadMail entry")
    delete.add_argument("--yes", action="store_true", help="needed with --all")
    delete.set_defaults(handler=_badmail_delete)


def _drop_parser(commands: Any) -> None:
    drop = commands.add_parser(
        "drop",
        help="list or show Drop files",
        description="Without an action: list Drop.",
        usage="%(prog)s [-h] [--json] [{list,show} ...]",
    )
    drop.add_argument("--json", action="store_true", help="list: one JSON object a line")
    drop.set_defaults(handler=_drop_list)
    actions = drop.add_subparsers(dest="action", metavar="action")
    _list_parser(actions, "Drop files", _drop_list)
    show = actions.add_parser("show", help="print a Drop file as it is")
    show.add_argument("id", metavar="ID")
    show.set_defaults(handler=_drop_show)


# -- init, run, submit -----------------------------------------------------------------------------


def _init(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root):
        print(f"MailRoot ready at {settings.root}", file=out)
    return EX_OK


def _service(settings: Settings, spool: Spool) -> MailService:
    presets: dict[str, Callable[[], RetryPolicy]] = {
        "iis": RetryPolicy.iis,
        "postfix": RetryPolicy.postfix,
        "qmail": RetryPolicy.qmail,
        "exim": RetryPolicy.exim,
    }
    # IIS kept a separate, hourly schedule for local delivery; the other MTAs have one schedule.
    local = RetryPolicy.iis_local() if settings.retry == "iis" else None
    fqdn = settings.fqdn or machine_name()
    tls_context = None
    if settings.tls_ca_file is not None:
        try:
            tls_context = ssl.create_default_context(cafile=settings.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"tls_ca_file {settings.tls_ca_file!r}: {exc}") from None
    return MailService(
        spool,
        router=_router(settings),
        retry=presets[settings.retry](),
        local_retry=local,
        transport=SmtpTransport(
            helo_name=fqdn, tls_context=tls_context, max_recipients=settings.max_recipients
        ),
        fqdn=fqdn,
        limits=Limits(
            max_message_size=settings.max_message_size,
            max_hop_count=settings.max_hop_count,
            max_connections=settings.max_connections,
            max_connections_per_host=settings.max_connections_per_host,
        ),
        ndr_copy_to=settings.ndr_copy_to,
        masquerade_domain=settings.masquerade_domain,
        pickup_dot_stuffed=settings.pickup_dot_stuffed,
    )


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


def _router(settings: Settings) -> Router:
    credentials = None
    if settings.smart_host_user:
        password = settings.smart_host_password or os.environ.get(PASSWORD_VARIABLE)
        if not password:
            raise ConfigurationError(
                f"smart_host_user is set but no password: put smart_host_password in the "
                f"settings file or {PASSWORD_VARIABLE} in the environment"
            )
        credentials = Credentials(settings.smart_host_user, password)
    try:
        tls_domains = {d: TlsPolicy(p) for d, p in settings.tls_domains.items()}
    except ValueError as exc:
        raise ConfigurationError(f"tls_domains: {exc}") from None
    return Router(
        local_domains=settings.local_domains,
        alias_domains=settings.alias_domains,
        smart_host=settings.smart_host,
        smart_host_mode=SmartHostMode(settings.smart_host_mode)
        if settings.smart_host_mode
        else None,
        smart_host_auth=credentials,
        routes=settings.routes,
        tls=TlsPolicy(settings.tls),
        tls_domains=tls_domains,
        resolver=_dns_resolver(settings.dns_servers),
        smtp_port=settings.smtp_port,
    )


def _dns_resolver(servers: Sequence[str]) -> dns.resolver.Resolver | None:
    """A resolver asking only ``servers`` (``address`` or ``address:port``, ``[v6]:port``)."""
    if not servers:
        return None
    resolver = dns.resolver.Resolver(configure=False)
    nameservers = []
    for text in servers:
        target = parse_target(text, default_port=53)
        if not target.literal:
            raise ConfigurationError(f"dns_servers: {text!r} is not an IP address")
        nameservers.append(dns.nameserver.Do53Nameserver(target.host, target.port))
    resolver.nameservers = nameservers
    return resolver


def _report_lines(report: Report) -> Iterable[str]:
    yield from (f"{queue_id}: queued from Pickup" for queue_id in report.picked_up)
    yield from (f"{queue_id}: delivered to {address}" for queue_id, address in report.delivered)
    yield from (f"{queue_id}: deferred for {address}" for queue_id, address in report.deferred)
    yield from (f"{queue_id}: failed for {address}" for queue_id, address in report.failed)
    yield from (f"{queue_id}: delivery status notification queued" for queue_id in report.dsns)
    yield from (f"{queue_id}: moved to BadMail" for queue_id in report.badmail)


def _log_report(report: Report) -> None:
    for line in _report_lines(report):
        log.info("%s", line)


def _run(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        service = _service(settings, spool)
        try:
            if args.once:
                report = service.run_once()
                for line in _report_lines(report):
                    print(line, file=out)
                return EX_FAILED if report.errors else EX_OK

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
    return EX_OK


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
    return EX_OK


# -- shared helpers --------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _short(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _long(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sender(address: str) -> str:
    return address or "<>"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _recipient_json(recipient: Recipient) -> dict[str, object]:
    reply = recipient.reply
    return {
        "address": recipient.address,
        "state": recipient.state.value,
        "reply": None if reply is None else str(reply),
        "host": None if reply is None else reply.host,
        "updated": _time(recipient.updated),
    }


def _recipient_line(recipient: Recipient) -> str:
    reply = recipient.reply
    text = f"{recipient.state.value:<9}  {recipient.address}"
    if reply is not None:
        text += f": {reply}" + (f" (from {reply.host})" if reply.host else "")
    return text


def _columns(rows: Sequence[Sequence[str]], *, right: Iterable[int] = ()) -> list[str]:
    """Rows of cells as aligned lines, two spaces apart; ``right`` columns align right."""
    aligned = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if i in aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _write_bytes(out: TextIO, data: bytes) -> None:
    """A file's bytes as they are on a real stdout (pipe it into a file); decoded elsewhere."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode("utf-8", "replace"))
        return
    out.flush()
    buffer.write(data)
    buffer.flush()


def _error(exc: SpoolmailError) -> None:
    sys.stderr.write(f"spoolmail: {exc}\n")


def _status(exc: SpoolmailError) -> int:
    if exc.temporary:
        return EX_TEMPFAIL
    if isinstance(exc, ConfigurationError | MessageError):
        return EX_USAGE  # the arguments are wrong (a setting, an address, a message)
    return EX_FAILED  # NotFound, an unreadable envelope (EnvelopeError), anything else


def _worst(*statuses: int) -> int:
    return max(statuses, key=_SEVERITY.__getitem__)


def _each(ids: Iterable[str], action: Callable[[str], str | None], out: TextIO) -> int:
    """Do ``action`` to every id, printing its line; a failure is reported and the rest go on."""
    status = EX_OK
    for queue_id in dict.fromkeys(ids):
        try:
            line = action(queue_id)
        except SpoolmailError as exc:
            _error(exc)
            status = _worst(status, _status(exc))
            continue
        if line is not None:
            print(line, file=out)
    return status


def _chosen(args: argparse.Namespace, everything: Callable[[], list[str]]) -> list[str]:
    """The ids a hold / release / delete acts on: those given, or with ``--all`` every one."""
    if args.all and args.ids:
        raise _UsageError("give IDs or --all, not both")
    if not args.all and not args.ids:
        raise _UsageError("give at least one ID, or --all")
    return everything() if args.all else list(args.ids)


def _print_json_lines(rows: Iterable[dict[str, object]], out: TextIO) -> None:
    for row in rows:
        print(json.dumps(row, ensure_ascii=False), file=out)


# -- queue -----------------------------------------------------------------------------------------


def _queue_state(item: QueuedMessage) -> str:
    if item.state is State.DELIVERING:
        return "delivering"
    return "held" if item.envelope.held else "queued"


def _queue_json(item: QueuedMessage) -> dict[str, object]:
    env = item.envelope
    return {
        "id": env.id,
        "state": _queue_state(item),
        "held": env.held,
        "held_since": _time(env.held_since),
        "arrival": _time(env.arrival),
        "next_attempt": _time(env.next_attempt),
        "last_attempt": _time(env.last_attempt),
        "attempts": env.attempts,
        "size": env.size,
        "sender": env.sender,
        "origin": env.origin,
        "recipients": [_recipient_json(r) for r in env.recipients],
    }


def _queue_list(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        items = list(spool.queued())
    if args.json:
        _print_json_lines((_queue_json(item) for item in items), out)
        return EX_OK
    if not items:
        print("The Queue is empty.", file=out)
        return EX_OK
    header = ["ID", "STATE", "ARRIVAL (UTC)", "NEXT ATTEMPT", "TRIES", "SIZE", "SENDER"]
    rows = [header]
    for item in items:
        env, state = item.envelope, _queue_state(item)
        upcoming = {"held": "on hold", "delivering": "now"}.get(state, _short(env.next_attempt))
        rows.append(
            [
                env.id,
                state,
                _short(env.arrival),
                upcoming,
                str(env.attempts),
                str(env.size),
                _sender(env.sender),
            ]
        )
    lines = _columns(rows, right=(4, 5))
    print(lines[0], file=out)
    for line, item in zip(lines[1:], items, strict=True):
        print(line, file=out)
        for recipient in item.envelope.recipients:
            print(f"    {_recipient_line(recipient)}", file=out)
    held = sum(1 for item in items if item.envelope.held)
    busy = sum(1 for item in items if item.state is State.DELIVERING)
    size = sum(item.envelope.size for item in items)
    print(
        f"-- {_plural(len(items), 'message')} ({held} on hold, {busy} being delivered), "
        f"{_plural(size, 'byte')}",
        file=out,
    )
    return EX_OK


def _envelope_lines(env: Envelope, *, schedule: bool) -> list[str]:
    """An envelope for people; ``schedule`` adds when it is tried next (queued messages)."""
    attempts = str(env.attempts)
    if env.last_attempt is not None:
        attempts += f" (first {_long(env.first_attempt)}, last {_long(env.last_attempt)})"
    lines = [
        f"Sender:       {_sender(env.sender)}",
        f"Arrival:      {_long(env.arrival)}",
        f"Attempts:     {attempts}",
    ]
    if schedule and env.held:
        lines.append(f"On hold:      since {_long(env.held_since)}; release it to send it")
    elif schedule:
        lines.append(f"Next attempt: {_long(env.next_attempt)}")
    if env.held_time:
        lines.append(f"Time on hold: {env.held_time} in earlier holds (not counted to expiry)")
    lines += [f"Size:         {_plural(env.size, 'byte')}", f"Origin:       {env.origin or '-'}"]
    if env.envid is not None:
        lines.append(f"Envelope ID:  {env.envid}")
    if env.about:
        lines.append(f"About:        {env.about}")
    lines.append("Recipients:" if env.recipients else "Recipients:   none known")
    lines.extend(f"  {_recipient_line(r)}" for r in env.recipients)
    return lines


def _queue_show(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        if args.message:
            _write_bytes(out, spool.message(args.id))
            return EX_OK
        item = spool.queued_message(args.id)
        transcript = spool.transcript(args.id)
    state = _queue_state(item)
    if state == "delivering":
        state += f" (by process {item.owner})"
    print(f"Queue ID:     {item.id}", file=out)
    print(f"State:        {state}", file=out)
    for line in _envelope_lines(item.envelope, schedule=True):
        print(line, file=out)
    print("", file=out)
    print("Transcript:", file=out)
    print(transcript.rstrip("\n") or "(no attempt yet)", file=out)
    return EX_OK


def _queue_flush(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if args.ids and args.domain:
        raise _UsageError("give IDs or --domain, not both")
    with Spool(settings.root) as spool:
        if args.ids:
            ids = list(args.ids)
        else:
            # Spool.flush(domain=...) would choose the same messages, but it stops at the first
            # one being delivered; here each is reported on its own line and the rest go on.
            wanted = args.domain.lower().rstrip(".") if args.domain else None
            items = [
                item
                for item in spool.queued()
                if wanted is None or any(r.domain == wanted for r in item.envelope.pending)
            ]
            if not items:
                print(
                    f"No queued message has a recipient at {wanted} still to be delivered."
                    if wanted
                    else "The Queue is empty.",
                    file=out,
                )
                return EX_OK
            busy = [item.id for item in items if item.state is State.DELIVERING]
            for queue_id in busy:
                print(f"{queue_id}: being delivered now", file=out)
            ids = [item.id for item in items if item.state is not State.DELIVERING]

        def flush(queue_id: str) -> str:
            held = spool.queued_message(queue_id).envelope.held
            spool.flush([queue_id])
            if held:
                return f"{queue_id}: on hold, not flushed (release it to send it)"
            return f"{queue_id}: flushed"

        return _each(ids, flush, out)


def _queue_hold(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        ids = _chosen(args, lambda: [q.id for q in spool.queued() if not q.envelope.held])
        if not ids:
            print("No queued message is left to hold.", file=out)

        def hold(queue_id: str) -> str:
            spool.hold([queue_id])
            return f"{queue_id}: on hold"

        return _each(ids, hold, out)


def _queue_release(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        ids = _chosen(args, lambda: [q.id for q in spool.queued() if q.envelope.held])
        if not ids:
            print("No queued message is on hold.", file=out)

        def release(queue_id: str) -> str:
            spool.release([queue_id])
            return f"{queue_id}: released"

        return _each(ids, release, out)


def _queue_delete(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        ids = _chosen(args, lambda: [q.id for q in spool.queued()])
        if not ids:
            print("The Queue is empty.", file=out)
        elif args.all and not args.yes:
            raise _UsageError(
                f"delete --all deletes every queued message ({len(ids)} now) and tells no "
                "sender; add --yes to do it"
            )

        def delete(queue_id: str) -> str:
            spool.delete([queue_id])
            return f"{queue_id}: deleted"

        return _each(ids, delete, out)


# -- badmail ---------------------------------------------------------------------------------------


def _badmail_json(item: BadMailItem) -> dict[str, object]:
    env = item.envelope
    return {
        "id": item.id,
        "reason": item.reason,
        "has_message": item.has_message,
        "origin": None if env is None else env.origin,
        "sender": None if env is None else env.sender,
        "recipients": [] if env is None else [_recipient_json(r) for r in env.recipients],
    }


def _badmail_list(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        items = list(spool.badmail())
    if args.json:
        _print_json_lines((_badmail_json(item) for item in items), out)
        return EX_OK
    if not items:
        print("BadMail is empty.", file=out)
        return EX_OK
    for line, item in zip(
        _columns([["ID", "REASON"], *([item.id, item.reason] for item in items)]),
        [None, *items],
        strict=True,
    ):
        print(line, file=out)
        if item is None:
            continue
        env = item.envelope
        if env is not None and env.recipients:
            recipients = ", ".join(r.address for r in env.recipients)
            print(f"    from {_sender(env.sender)} to {recipients}", file=out)
        if not item.has_message:
            print("    (the message itself is missing)", file=out)
    print(f"-- {len(items)} {'entry' if len(items) == 1 else 'entries'}", file=out)
    return EX_OK


def _badmail_show(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        if args.message:
            _write_bytes(out, spool.badmail_message(args.id))
            return EX_OK
        item = spool.badmail_item(args.id)
    print(f"BadMail ID:   {item.id}", file=out)
    print(f"Reason:       {item.reason}", file=out)
    message = f"BadMail/{item.id}.BAD" if item.has_message else "missing"
    print(f"Message:      {message}", file=out)
    if item.envelope is None:
        print("Envelope:     unknown (no readable .BDP)", file=out)
    else:
        for line in _envelope_lines(item.envelope, schedule=False):
            print(line, file=out)
    print("", file=out)
    print(f"Report (BadMail/{item.id}.BDR):", file=out)
    print(item.report.rstrip("\n"), file=out)
    return EX_OK


def _badmail_requeue(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        result = spool.requeue_badmail(args.id, recipients=args.recipients, sender=args.sender)
    if "." in result:  # a Pickup file name; a queue id has no dot
        print(f"{args.id}: returned to Pickup/{result}", file=out)
    else:
        print(f"{args.id}: requeued as {result}", file=out)
    return EX_OK


def _badmail_delete(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        ids = _chosen(args, lambda: [item.id for item in spool.badmail()])
        if not ids:
            print("BadMail is empty.", file=out)
        elif args.all and not args.yes:
            raise _UsageError(
                f"delete --all deletes every BadMail entry ({len(ids)} now); add --yes to do it"
            )

        def delete(queue_id: str) -> str:
            if not spool.delete_badmail([queue_id]):
                raise NotFound(f"no BadMail entry {queue_id!r}")
            return f"{queue_id}: deleted"

        return _each(ids, delete, out)


# -- drop ------------------------------------------------------------------------------------------


def _drop_json(item: DropItem) -> dict[str, object]:
    return {
        "id": item.id,
        "sender": item.sender,
        "recipients": list(item.recipients),
        "size": item.size,
    }


def _drop_list(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        items = list(spool.drop())
    if args.json:
        _print_json_lines((_drop_json(item) for item in items), out)
        return EX_OK
    if not items:
        print("Drop is empty.", file=out)
        return EX_OK
    rows = [["ID", "SIZE", "SENDER", "RECIPIENTS"]]
    rows.extend(
        [item.id, str(item.size), _sender(item.sender), ", ".join(item.recipients)]
        for item in items
    )
    for line in _columns(rows, right=(1,)):
        print(line, file=out)
    print(f"-- {_plural(len(items), 'file')}", file=out)
    return EX_OK


def _drop_show(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        _write_bytes(out, spool.drop_message(args.id))
    return EX_OK


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
    daemon = args.command == "run" and not getattr(args, "once", False)
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
    except _UsageError as exc:
        sys.stderr.write(f"spoolmail: {exc}\n")
        return EX_USAGE
    except SpoolmailError as exc:
        _error(exc)
        return _status(exc)
