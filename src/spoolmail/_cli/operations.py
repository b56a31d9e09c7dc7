"""``spoolmail queue``, ``badmail`` and ``drop``: what the MailRoot holds, and an operator's orders.

Lists (a table, or JSON lines for scripts like ``postqueue -j``) and shows the Queue, BadMail and
Drop; ``queue flush|hold|release|delete`` and ``badmail requeue|delete`` are Postfix's postqueue /
postsuper as :class:`~spoolmail.Spool` methods (a running service sees the change at its next
tick). ``queue import-iis`` re-injects the ``NTFS_*.EML`` files an IIS Queue left behind
(``_service.iis``), which ``queue list`` points out. Each id is done on its own; the exit status
is the worst (see ``status``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from spoolmail._cli.settings import Settings
from spoolmail._cli.status import EX_OK, UsageError, each
from spoolmail._core.envelope import Envelope, Recipient
from spoolmail._core.states import State
from spoolmail._service import iis
from spoolmail._store.maillog import MailLog
from spoolmail._store.spool import BadMailItem, DropItem, QueuedMessage, Spool
from spoolmail.exceptions import NotFound

__all__ = ["add_commands"]


@contextlib.contextmanager
def _spool(settings: Settings) -> Iterator[Spool]:
    """The MailRoot for an operator's command, whose orders (hold, delete, requeue ...) go into
    the mail log like the service's outcomes, so that ``spoolmail log ID`` shows them too."""
    with Spool(settings.root) as spool:
        if not settings.log_days:
            yield spool
            return
        mail_log = MailLog(spool._store, days=settings.log_days)
        unsubscribe = spool.subscribe(mail_log)
        try:
            yield spool
        finally:
            unsubscribe()
            mail_log.close()


def add_commands(commands: Any) -> None:
    """Add ``queue``, ``badmail`` and ``drop`` to the command tree."""
    _queue_parser(commands)
    _badmail_parser(commands)
    _drop_parser(commands)


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
        help="list, show, flush, hold, release or delete queued messages; import IIS's",
        description="Without an action: list the Queue.",
        usage="%(prog)s [-h] [--json] [{list,show,flush,hold,release,delete,import-iis} ...]",
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

    import_iis = actions.add_parser(
        "import-iis",
        help="send the NTFS_*.EML files an IIS Queue left (their envelope is lost: it is "
        "read from the headers, so Bcc recipients are not sent)",
    )
    import_iis.add_argument("names", nargs="*", metavar="NAME", help="default: every one")
    import_iis.add_argument(
        "--dry-run", action="store_true", help="show the envelopes it would use; move nothing"
    )
    import_iis.set_defaults(handler=_queue_import_iis)


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


def _chosen(args: argparse.Namespace, everything: Callable[[], list[str]]) -> list[str]:
    """The ids a hold / release / delete acts on: those given, or with ``--all`` every one."""
    if args.all and args.ids:
        raise UsageError("give IDs or --all, not both")
    if not args.all and not args.ids:
        raise UsageError("give at least one ID, or --all")
    return everything() if args.all else list(args.ids)


def _print_json_lines(rows: Iterable[dict[str, object]], out: TextIO) -> None:
    for row in rows:
        print(json.dumps(row, ensure_ascii=False), file=out)


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


def _stranded_note(names: Sequence[str]) -> str:
    return (
        f"-- and {_plural(len(names), 'IIS queue file')} without envelope, not delivered until "
        f"imported with 'spoolmail queue import-iis': {', '.join(names)}"
    )


def _queue_list(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
        items = list(spool.queued())
        stranded = iis.stranded_queue_files(spool._store)
    if args.json:
        _print_json_lines((_queue_json(item) for item in items), out)
        if stranded:  # not on stdout: scripts read one queued message a line there
            sys.stderr.write(f"spoolmail: {_stranded_note(stranded).removeprefix('-- and ')}\n")
        return EX_OK
    if not items:
        print("The Queue is empty.", file=out)
        if stranded:
            print(_stranded_note(stranded), file=out)
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
    if stranded:
        print(_stranded_note(stranded), file=out)
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
    with _spool(settings) as spool:
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
        raise UsageError("give IDs or --domain, not both")
    with _spool(settings) as spool:
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

        return each(ids, flush, out)


def _queue_import_iis(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
        names = list(args.names) or iis.stranded_queue_files(spool._store)
        if not names:
            print("No IIS queue file (NTFS_*.EML) in the Queue.", file=out)
            return EX_OK
        print(f"Note: {iis.BCC_WARNING}.", file=out)

        def move(name: str) -> str:
            done = iis.import_queue_file(
                spool._store,
                name,
                clock=spool.clock,
                default_domain=settings.local_domains[0],
                max_message_size=settings.max_message_size,
                dot_stuffed=settings.pickup_dot_stuffed,
                dry_run=args.dry_run,
            )
            where = "would go to" if args.dry_run else "to"
            return (
                f"Queue/{done.name}: {where} Pickup/{done.pickup}, from {_sender(done.sender)} "
                f"to {', '.join(done.recipients)}"
            )

        return each(names, move, out)


def _queue_hold(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
        ids = _chosen(args, lambda: [q.id for q in spool.queued() if not q.envelope.held])
        if not ids:
            print("No queued message is left to hold.", file=out)

        def hold(queue_id: str) -> str:
            spool.hold([queue_id])
            return f"{queue_id}: on hold"

        return each(ids, hold, out)


def _queue_release(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
        ids = _chosen(args, lambda: [q.id for q in spool.queued() if q.envelope.held])
        if not ids:
            print("No queued message is on hold.", file=out)

        def release(queue_id: str) -> str:
            spool.release([queue_id])
            return f"{queue_id}: released"

        return each(ids, release, out)


def _queue_delete(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
        ids = _chosen(args, lambda: [q.id for q in spool.queued()])
        if not ids:
            print("The Queue is empty.", file=out)
        elif args.all and not args.yes:
            raise UsageError(
                f"delete --all deletes every queued message ({len(ids)} now) and tells no "
                "sender; add --yes to do it"
            )

        def delete(queue_id: str) -> str:
            spool.delete([queue_id])
            return f"{queue_id}: deleted"

        return each(ids, delete, out)


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
    with _spool(settings) as spool:
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
    with _spool(settings) as spool:
        if args.message:
            _write_bytes(out, spool.badmail_message(args.id))
            return EX_OK
        item = spool.badmail_item(args.id)
    print(f"BadMail ID:   {item.id}", file=out)
    print(f"Reason:       {item.reason}", file=out)
    message = item.message_path if item.has_message else "missing"
    print(f"Message:      {message}", file=out)
    if item.envelope is None:
        print("Envelope:     unknown (no readable .BDP)", file=out)
    else:
        for line in _envelope_lines(item.envelope, schedule=False):
            print(line, file=out)
    print("", file=out)
    print(f"Report ({item.report_path}):", file=out)
    print(item.report.rstrip("\n"), file=out)
    return EX_OK


def _badmail_requeue(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
        result = spool.requeue_badmail(args.id, recipients=args.recipients, sender=args.sender)
    if "." in result:  # a Pickup file name; a queue id has no dot
        print(f"{args.id}: returned to Pickup/{result}", file=out)
    else:
        print(f"{args.id}: requeued as {result}", file=out)
    return EX_OK


def _badmail_delete(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
        ids = _chosen(args, lambda: [item.id for item in spool.badmail()])
        if not ids:
            print("BadMail is empty.", file=out)
        elif args.all and not args.yes:
            raise UsageError(
                f"delete --all deletes every BadMail entry ({len(ids)} now); add --yes to do it"
            )

        def delete(queue_id: str) -> str:
            if not spool.delete_badmail([queue_id]):
                raise NotFound(f"no BadMail entry {queue_id!r}")
            return f"{queue_id}: deleted"

        return each(ids, delete, out)


def _drop_json(item: DropItem) -> dict[str, object]:
    return {
        "id": item.id,
        "sender": item.sender,
        "recipients": list(item.recipients),
        "size": item.size,
    }


def _drop_list(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with _spool(settings) as spool:
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
    with _spool(settings) as spool:
        _write_bytes(out, spool.drop_message(args.id))
    return EX_OK
