"""``spoolmail queue``, ``badmail`` and ``drop``: what the MailRoot holds, and an operator's orders.

Lists (a table, or JSON lines for scripts like ``postqueue -j``) and shows the Queue, BadMail and
Drop; ``queue flush|hold|release|delete`` and ``badmail requeue|delete`` are Postfix's postqueue /
postsuper as :class:`~spoolmail.Spool` methods (a running service sees the change at its next
tick), for ids given, ids read from stdin (``-``, as ``postsuper -d -``), ``--all``, or every
message from a sender or to a domain (``Spool.select``); ``queue shape`` is qshape (``shape``).
``queue import-iis`` re-injects the ``NTFS_*.EML`` files an IIS Queue left behind
(``_service.iis``), which ``queue list`` points out. Each id is done on its own as it comes; the
exit status is the worst (see ``status``).

Ids on the command line and on stdin are checked (``is_queue_id``) before anything is done with
them; stdin is read a line at a time, a line kept to 4 KiB, so a stream of any length costs no
more memory than the ids done (remembered to do each once).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from spoolmail._cli import shape
from spoolmail._cli.settings import Settings
from spoolmail._cli.status import (
    EX_OK,
    PassedOver,
    Unreadable,
    UsageError,
    each,
    exit_status,
    printable,
    report,
    shown,
    worst,
)
from spoolmail._core.envelope import Envelope, Recipient, RecipientState
from spoolmail._core.ids import is_queue_id
from spoolmail._core.selection import domain_filter, sender_filter
from spoolmail._core.states import State
from spoolmail.exceptions import ConfigurationError, NotFound, SpoolmailError

if TYPE_CHECKING:
    from spoolmail._store.spool import BadMailItem, DropItem, Order, QueuedMessage, Spool

__all__ = ["add_commands"]


@contextlib.contextmanager
def _spool(settings: Settings) -> Iterator[Spool]:
    """The MailRoot for an operator's command, whose orders (hold, delete, requeue ...) go into
    the mail log like the service's outcomes, so that ``spoolmail log ID`` shows them too.

    The spool's modules are imported here, when a command opens it: ``queue flush --quiet``
    writes its order without them (:func:`_order_flush`)."""
    from spoolmail._store.maillog import MailLog  # noqa: PLC0415
    from spoolmail._store.spool import Spool  # noqa: PLC0415

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
        description="Without an action: list the Queue.",
        usage="%(prog)s [-h] [--json] [{list,show,shape,flush,hold,release,delete,import-iis} ...]",
    )
    queue.add_argument("--json", action="store_true", help="list: one JSON object a line")
    queue.set_defaults(handler=_queue_list)
    actions = queue.add_subparsers(dest="action", metavar="action")
    _list_parser(actions, "queued messages", _queue_list)

    show = actions.add_parser("show", help="envelope, recipients and transcript of a message")
    show.add_argument("id", metavar="ID")
    show.add_argument("--message", action="store_true", help="print the stored message instead")
    show.set_defaults(handler=_queue_show)

    shape.add_command(actions, _spool)

    flush = actions.add_parser(
        "flush",
        help="make messages due now (no ID, --sender or --domain: the whole Queue)",
    )
    _id_arguments(flush)
    _filter_arguments(flush, domain="every message with a recipient at DOMAIN still to be sent")
    flush.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="give the order and print nothing, as postqueue -f (errors still go to stderr)",
    )
    flush.set_defaults(handler=_queue_flush)

    for name, help_text, domain_help in (
        (
            "hold",
            "put messages on hold: never attempted, no expiry",
            "every message whose recipients still to be sent are all at DOMAIN",
        ),
        (
            "release",
            "release held messages: due at once",
            "every held message with a recipient at DOMAIN still to be sent",
        ),
        (
            "delete",
            "delete messages without telling their senders",
            "every message whose recipients still to be sent are all at DOMAIN",
        ),
    ):
        action = actions.add_parser(name, help=help_text)
        _id_arguments(action)
        action.add_argument("--all", action="store_true", help="every queued message")
        _filter_arguments(action, domain=domain_help)
        if name == "delete":
            action.add_argument("--yes", action="store_true", help="needed with --all alone")
            action.add_argument(
                "--dry-run", action="store_true", help="list what would be deleted; delete nothing"
            )
        action.set_defaults(handler=_queue_order, order=name)

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
        help="send entries again (a file rejected at Pickup goes back to Pickup)",
    )
    _id_arguments(requeue)
    requeue.add_argument("--all", action="store_true", help="every BadMail entry")
    # --sender / --domain choose entries; --from / --to change what is sent.
    _filter_arguments(
        requeue,
        domain="every entry with a recipient at DOMAIN not delivered: only those are sent again",
    )
    requeue.add_argument(
        "--to",
        action="append",
        dest="recipients",
        metavar="ADDRESS",
        help="only these recipients of the one ID given (repeat; default: every one not delivered)",
    )
    requeue.add_argument("--from", dest="new_sender", metavar="ADDRESS", help="a new sender")
    requeue.add_argument(
        "--dry-run", action="store_true", help="list what would be sent again; send nothing"
    )
    requeue.set_defaults(handler=_badmail_requeue)

    delete = actions.add_parser("delete", help="delete entries (message and reports)")
    _id_arguments(delete)
    delete.add_argument("--all", action="store_true", help="every BadMail entry")
    _filter_arguments(delete, domain="every entry whose recipients not delivered are all at DOMAIN")
    delete.add_argument("--yes", action="store_true", help="needed with --all alone")
    delete.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted; delete nothing"
    )
    delete.set_defaults(handler=_badmail_delete)


def _drop_parser(commands: Any) -> None:
    drop = commands.add_parser(
        "drop",
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


def _write_chunks(out: TextIO, chunks: Iterable[bytes]) -> None:
    """A file's bytes, read in chunks, as they are on a real stdout (pipe it into a file);
    decoded elsewhere. Memory stays bounded whatever the file's size."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for chunk in chunks:
            out.write(decoder.decode(chunk))
        out.write(decoder.decode(b"", final=True))
        return
    out.flush()
    for chunk in chunks:
        buffer.write(chunk)
    buffer.flush()


# -- which ids an order is for: given, read from stdin, --all, or chosen by sender and domain ------

STDIN = "-"  # as an ID: read the ids from stdin, one a line (postsuper -d -)
# A stdin line longer than this (an id has at most 128 characters) is reported and skipped, read
# in pieces of this size, so a stream without line ends costs no memory.
_LINE_LIMIT = 4096


def _id_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ids", nargs="*", metavar="ID", help="queue ids; '-' reads them from stdin, one a line"
    )


def _filter_arguments(parser: argparse.ArgumentParser, *, domain: str) -> None:
    parser.add_argument(
        "--sender",
        metavar="ADDRESS",
        help="every one from ADDRESS ('<>': the null sender of DSNs; '@DOMAIN': any sender there)",
    )
    parser.add_argument("--domain", metavar="DOMAIN", help=domain)


def _check_selection(args: argparse.Namespace, *, required: bool = True) -> None:
    """Usage errors in how the ids are chosen: IDs, or ``--all`` and the filters. A filter no
    message could match (no address, no domain) is one too: a typo, not an empty search. And
    both filters are put in the form :meth:`Spool.select` compares (``_core.selection``)."""
    every = getattr(args, "all", False)
    filtered = args.sender is not None or args.domain is not None
    if args.ids.count(STDIN) > 1:
        raise UsageError("give '-' (the ids on stdin) once")
    if args.ids and every:
        raise UsageError("give IDs or --all, not both")
    if args.ids and filtered:
        flag = "--sender" if args.sender is not None else "--domain"
        raise UsageError(f"give IDs or {flag}, not both")
    if required and not (args.ids or every or filtered):
        raise UsageError("give at least one ID, or --all, --sender or --domain")
    if args.domain is not None:
        args.domain = _filter("--domain", domain_filter, args.domain)
    if args.sender is not None:
        args.sender = _filter("--sender", sender_filter, args.sender)


def _filter(flag: str, read: Callable[[str], str], text: str) -> str:
    """A filter as :meth:`Spool.select` compares it, or a UsageError naming what is wrong."""
    try:
        return read(text)
    except ConfigurationError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _one_id(text: str) -> str:
    """The one id of a ``show``, checked before the spool sees it (an error names it short)."""
    if not is_queue_id(text):
        raise NotFound(f"{shown(text)} is not a queue id")
    return text


def _given(ids: Sequence[str]) -> Iterator[str | NotFound]:
    """The ids of the command line in order, ``-`` replaced by those on stdin; a string that
    is no queue id becomes an error to report, and is never used."""
    for text in ids:
        if text == STDIN:
            yield from _stdin_ids()
        elif is_queue_id(text):
            yield text
        else:
            yield NotFound(f"{shown(text)} is not a queue id")


def _stdin_ids() -> Iterator[str | NotFound]:
    """Ids from stdin as they come, one a line; blank lines and ``#`` comments are skipped."""
    stream = getattr(sys.stdin, "buffer", None)
    readline: Callable[[int], bytes] = (
        stream.readline
        if stream is not None
        else lambda size: sys.stdin.readline(size).encode("utf-8", "replace")
    )
    number = 0
    while line := readline(_LINE_LIMIT):
        number += 1
        if len(line) >= _LINE_LIMIT and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # the rest of it, never kept
                line = readline(_LINE_LIMIT)
            yield NotFound(f"stdin line {number}: longer than {_LINE_LIMIT} bytes, no queue id")
            continue
        # Latin-1 maps every byte to a character, so a stray byte is shown as it is (\xff).
        text = line.split(b"#", 1)[0].strip().decode("latin-1")
        if not text:
            continue
        if is_queue_id(text):
            yield text
        else:
            yield NotFound(f"stdin line {number}: {shown(text)} is not a queue id")


class _Tally:
    """A bulk order's outcomes as they come: a line each on ``out``, errors on stderr, and the
    worst exit status (``status.each``, streamed). The ids done are remembered so that one given
    twice is done once: memory grows with the messages done, not with the input."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.status = EX_OK
        self._done: set[str] = set()

    def fresh(self, items: Iterable[str | SpoolmailError]) -> Iterator[str]:
        """The ids not done yet; an error among them is reported on its way."""
        for item in items:
            if isinstance(item, SpoolmailError):
                self.fail(item)
            elif item not in self._done:
                yield item

    def fail(self, exc: SpoolmailError) -> None:
        report(exc)
        self.status = worst(self.status, exit_status(exc))

    def done(self, queue_id: str, line: str | None) -> None:
        self._done.add(queue_id)
        if line is not None:
            print(line, file=self.out)

    def run(self, ids: Iterable[str], action: Callable[[str], str | None]) -> int:
        """Do ``action`` to each id (its line printed, its failure reported); the status."""
        for queue_id in ids:
            try:
                line = action(queue_id)
            except SpoolmailError as exc:
                self.fail(exc)
            else:
                self.done(queue_id, line)
        return self.status

    def outcomes(
        self,
        results: Iterable[tuple[str, SpoolmailError | None]],
        line: Callable[[str], str | None],
    ) -> int:
        """Report what ``Spool.carry_out`` yields; the status."""
        for queue_id, error in results:
            if error is None:
                self.done(queue_id, line(queue_id))
            else:
                self.fail(error)
        return self.status


def _criteria(args: argparse.Namespace, *, every: bool, recipients: str) -> str:
    """The filters in words: ' from a@b with every recipient still to be delivered at d'."""
    words = ""
    if args.sender is not None:
        words += f" from {_sender(args.sender)}"
    if args.domain is not None:
        words += (
            f" with every recipient {recipients} at {args.domain}"
            if every
            else f" with a recipient at {args.domain} {recipients}"
        )
    return words


def _undelivered(envelope: Envelope) -> list[Recipient]:
    return [r for r in envelope.recipients if r.state is not RecipientState.DELIVERED]


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
    from spoolmail._service import iis  # noqa: PLC0415 (see _spool)

    unread = Unreadable()
    with _spool(settings) as spool:
        items = list(spool.queued(unreadable=unread))
        stranded = iis.stranded_queue_files(spool._store)
    if args.json:
        _print_json_lines((_queue_json(item) for item in items), out)
        if stranded:  # not on stdout: scripts read one queued message a line there
            sys.stderr.write(f"spoolmail: {_stranded_note(stranded).removeprefix('-- and ')}\n")
        return unread.tell("not listed")
    if not items:
        print("No queued message can be read." if unread.found else "The Queue is empty.", file=out)
        if stranded:
            print(_stranded_note(stranded), file=out)
        return unread.tell("not listed")
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
    return unread.tell("not listed")


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
    queue_id = _one_id(args.id)
    with _spool(settings) as spool:
        if args.message:
            _write_chunks(out, spool.message_chunks(queue_id))
            return EX_OK
        item = spool.queued_message(queue_id)
        transcript = spool.transcript(queue_id)
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
    _check_selection(args, required=False)  # nothing chosen: the whole Queue
    if args.quiet and not args.ids:
        _order_flush(settings, sender=args.sender, domain=args.domain)
        return EX_OK
    with _spool(settings) as spool:
        tally = _Tally(out)
        held: set[str] = set()  # flushed, they stay held: said so, not an error
        if args.ids and args.quiet:
            ids: Iterable[str] = tally.fresh(_given(args.ids))
            return tally.outcomes(spool.carry_out("flush", ids), lambda _: None)
        if args.ids:

            def noting(ids: Iterable[str]) -> Iterator[str]:
                for queue_id in ids:
                    with contextlib.suppress(SpoolmailError):  # carry_out reports it
                        if spool.queued_message(queue_id).envelope.held:
                            held.add(queue_id)
                    yield queue_id

            ids = noting(tally.fresh(_given(args.ids)))
        else:
            # One trigger, first: a service makes the messages due in memory at once
            # (Spool.flush_queue) while this lists what the flush takes, for the operator.
            spool.flush_queue(sender=args.sender, domain=args.domain)
            unread = Unreadable()
            items = list(spool.select(sender=args.sender, domain=args.domain, unreadable=unread))
            if not items:
                criteria = _criteria(args, every=False, recipients="still to be delivered")
                print(
                    f"No queued message{criteria}." if criteria else "The Queue is empty.", file=out
                )
            for item in items:
                if item.state is State.DELIVERING:
                    print(f"{item.id}: being delivered now", file=out)
                elif item.envelope.held:
                    print(f"{item.id}: on hold, not flushed (release it to send it)", file=out)
                else:
                    print(f"{item.id}: flushed", file=out)
            return unread.tell("passed over")

        def line(queue_id: str) -> str:
            if queue_id in held:
                return f"{queue_id}: on hold, not flushed (release it to send it)"
            return f"{queue_id}: flushed"

        return tally.outcomes(spool.carry_out("flush", ids), line)


def _order_flush(settings: Settings, *, sender: str | None, domain: str | None) -> None:
    """``queue flush --quiet`` without ids: the order alone, as ``postqueue -f`` gives it.

    One trigger file that a running service takes at once (``Spool.flush_queue``), and nothing
    read: listing what the flush takes reads every envelope (seconds of CPU for a big Queue,
    taken from the workers doing the flush). Nor the mail log: a flush order writes no event
    (the service logs the flush). Through the store, as ``Spool.flush_queue`` writes it: the
    Spool's own modules (events, DKIM, email) would double what this command costs.
    """
    from spoolmail._core.ids import QueueIds  # noqa: PLC0415 (see _spool)
    from spoolmail._store import pyfs  # noqa: PLC0415
    from spoolmail._store.store import Durability, MailStore  # noqa: PLC0415

    filesystem = pyfs.open_root(settings.root)
    try:
        store = MailStore(
            filesystem,
            durability=Durability.FSYNC,
            clock=lambda: datetime.now(UTC),
            ids=QueueIds(),
        )
        try:
            store.write_flush_trigger(sender=sender, domain=domain)
        finally:
            store.close()
    finally:
        filesystem.close()


def _queue_import_iis(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from spoolmail._service import iis  # noqa: PLC0415 (see _spool)

    with _spool(settings) as spool:
        names = list(args.names) or iis.stranded_queue_files(spool._store)
        if not names:
            print("No IIS queue file (NTFS_*.EML) in the Queue.", file=out)
            return EX_OK
        print(f"Note: {iis.BCC_WARNING}.", file=out)

        def move(name: str) -> str:
            if not iis.is_iis_queue_file(name):  # checked here to be named short and safe
                raise NotFound(f"Queue/{shown(name)} is not an IIS queue file (NTFS_<hex>.EML)")
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


# What an order on the Queue prints for each message done, and what it prints when none is
# chosen by --all alone.
_DONE = {"hold": "on hold", "release": "released", "delete": "deleted"}
_NOTHING = {
    "hold": "No queued message is left to hold.",
    "release": "No queued message is on hold.",
    "delete": "The Queue is empty.",
}
_NONE_MATCHING = {
    "hold": "No queued message left to hold",
    "release": "No queued message on hold",
    "delete": "No queued message",
}


def _queue_order(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """``queue hold|release|delete``: ids given, ``-`` for stdin, ``--all``, or the filters."""
    order: Order = args.order
    _check_selection(args)
    dry_run = getattr(args, "dry_run", False)
    passed_over = Unreadable()  # what --all or the filters could not read
    unread: set[str] = set()  # what delete --all deletes all the same
    with _spool(settings) as spool:
        tally = _Tally(out)
        if args.ids:
            ids = tally.fresh(_given(args.ids))
        else:
            items = _chosen_messages(spool, args, order, out, passed_over)
            filtered = args.sender is not None or args.domain is not None
            if order == "delete" and not filtered:
                # Every queued message: one whose envelope cannot be read too (deleting it
                # reads nothing), rather than a Queue that is not empty after it.
                unread = {queue_id for queue_id, _ in passed_over.found}
                passed_over.found.clear()
            if not items and not unread:
                every = order != "release"
                criteria = _criteria(args, every=every, recipients="still to be delivered")
                print(
                    f"{_NONE_MATCHING[order]}{criteria}." if filtered else _NOTHING[order], file=out
                )
                return passed_over.tell("passed over")
            if order == "delete" and not filtered and not (args.yes or dry_run):
                raise UsageError(
                    f"delete --all deletes every queued message ({len(items) + len(unread)} now) "
                    "and tells no sender; add --yes to do it"
                )
            ids = tally.fresh([item.id for item in items] + sorted(unread))
        if dry_run:

            def would_delete(queue_id: str) -> str:
                if queue_id in unread:
                    return f"{queue_id}: would be deleted (its envelope cannot be read)"
                return _would_delete(spool.queued_message(queue_id))

            status = tally.run(ids, would_delete)
        else:
            status = tally.outcomes(
                spool.carry_out(order, ids), lambda queue_id: f"{queue_id}: {_DONE[order]}"
            )
    return worst(status, passed_over.tell("passed over"))


def _chosen_messages(
    spool: Spool,
    args: argparse.Namespace,
    order: Order,
    out: TextIO,
    unreadable: Unreadable,
) -> list[QueuedMessage]:
    """The messages ``--all`` and the filters choose for ``order``, oldest first; those whose
    envelope cannot be read are passed over, told to ``unreadable``.

    A hold or a delete by ``--domain`` takes only a message whose recipients still to be
    delivered are all at the domain: one also for elsewhere is left alone, with a line saying
    so, as holding or deleting it would delay or lose mail for another domain. A release takes
    a held message with any recipient there (it delays nothing).
    """
    domain = args.domain
    chosen = []
    for item in spool.select(sender=args.sender, domain=domain, unreadable=unreadable):
        env = item.envelope
        if (order == "hold" and env.held) or (order == "release" and not env.held):
            continue
        if domain is not None and order != "release":
            others = [r.address for r in env.pending if r.domain != domain]
            if others:
                not_done = "not held" if order == "hold" else "not deleted"
                print(f"{item.id}: {not_done}, also for {', '.join(others)}", file=out)
                continue
        chosen.append(item)
    return chosen


def _would_delete(item: QueuedMessage) -> str:
    env = item.envelope
    pending = ", ".join(r.address for r in env.pending) or "nobody still to be delivered"
    busy = "; being delivered now" if item.state is State.DELIVERING else ""
    return f"{item.id}: would be deleted (from {_sender(env.sender)} to {pending}{busy})"


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
    passed_over = PassedOver("BadMail")
    with _spool(settings) as spool:
        items = list(spool.badmail(passed_over=passed_over))
    passed_over.tell()
    if args.json:
        _print_json_lines((_badmail_json(item) for item in items), out)
        return EX_OK
    if not items:
        print("BadMail is empty.", file=out)
        return EX_OK
    for line, item in zip(
        _columns([["ID", "REASON"], *([item.id, printable(item.reason)] for item in items)]),
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
    queue_id = _one_id(args.id)
    with _spool(settings) as spool:
        if args.message:
            _write_chunks(out, spool.badmail_message_chunks(queue_id))
            return EX_OK
        item = spool.badmail_item(queue_id)
    print(f"BadMail ID:   {item.id}", file=out)
    print(f"Reason:       {printable(item.reason)}", file=out)
    message = item.message_path if item.has_message else "missing"
    print(f"Message:      {message}", file=out)
    if item.envelope is None:
        print("Envelope:     unknown (no readable .BDP)", file=out)
    else:
        for line in _envelope_lines(item.envelope, schedule=False):
            print(line, file=out)
    print("", file=out)
    print(f"Report ({item.report_path}):", file=out)
    print(printable(item.report.rstrip("\n"), lines=True), file=out)
    return EX_OK


def _badmail_requeue(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    _check_selection(args)
    if args.recipients and (len(args.ids) != 1 or args.ids == [STDIN]):
        raise UsageError("--to names recipients of one entry: give exactly one ID with it")
    domain = args.domain
    with _spool(settings) as spool:
        tally = _Tally(out)
        if args.ids:
            ids = tally.fresh(_given(args.ids))
        else:
            entries = list(spool.select_badmail(sender=args.sender, domain=domain))
            if not entries:
                criteria = _criteria(args, every=False, recipients="not delivered")
                print(f"No BadMail entry{criteria}." if criteria else "BadMail is empty.", file=out)
                return EX_OK
            ids = tally.fresh(item.id for item in entries)

        def requeue(queue_id: str) -> str:
            recipients = args.recipients
            chosen = ""
            if domain is not None:
                item = spool.badmail_item(queue_id)
                if item.envelope is not None and not item.rejected_at_pickup:
                    # Only the recipients at the domain: the others failed for other reasons.
                    recipients = [
                        r.address for r in _undelivered(item.envelope) if r.domain == domain
                    ]
                    chosen = f" for {', '.join(recipients)}"
            if args.dry_run:
                return _would_requeue(spool.badmail_item(queue_id), recipients, args.new_sender)
            result = spool.requeue_badmail(queue_id, recipients=recipients, sender=args.new_sender)
            if "." in result:  # a Pickup file name; a queue id has no dot
                return f"{queue_id}: returned to Pickup/{result}"
            return f"{queue_id}: requeued as {result}{chosen}"

        return tally.run(ids, requeue)


def _would_requeue(item: BadMailItem, recipients: Sequence[str] | None, sender: str | None) -> str:
    """What ``requeue_badmail`` would do, in words; what it would refuse, refused."""
    if item.rejected_at_pickup:
        return f"{item.id}: would return to Pickup"
    env = item.envelope
    if env is None and (not recipients or sender is None):
        raise NotFound(
            f"BadMail entry {item.id!r} has no readable envelope: it needs --to and --from"
        )
    if recipients is None:
        recipients = [r.address for r in _undelivered(env)] if env is not None else []
    new_sender = "" if sender is None else f" from {sender}"
    return f"{item.id}: would be requeued{new_sender} for {', '.join(recipients)}"


def _badmail_delete(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    _check_selection(args)
    domain = args.domain
    with _spool(settings) as spool:
        tally = _Tally(out)
        if args.ids:
            ids = tally.fresh(_given(args.ids))
        else:
            entries = []
            for item in spool.select_badmail(sender=args.sender, domain=domain):
                if domain is not None and item.envelope is not None:
                    # As for the Queue: an entry also for another domain is left alone.
                    others = [r.address for r in _undelivered(item.envelope) if r.domain != domain]
                    if others:
                        print(f"{item.id}: not deleted, also for {', '.join(others)}", file=out)
                        continue
                entries.append(item)
            filtered = args.sender is not None or domain is not None
            if not entries:
                criteria = _criteria(args, every=True, recipients="not delivered")
                print(f"No BadMail entry{criteria}." if filtered else "BadMail is empty.", file=out)
                return EX_OK
            if not filtered and not (args.yes or args.dry_run):
                raise UsageError(
                    f"delete --all deletes every BadMail entry ({len(entries)} now); "
                    "add --yes to do it"
                )
            ids = tally.fresh(item.id for item in entries)

        def delete(queue_id: str) -> str:
            if args.dry_run:
                item = spool.badmail_item(queue_id)
                return f"{queue_id}: would be deleted ({item.reason})"
            if not spool.delete_badmail([queue_id]):
                raise NotFound(f"no BadMail entry {queue_id!r}")
            return f"{queue_id}: deleted"

        return tally.run(ids, delete)


def _drop_json(item: DropItem) -> dict[str, object]:
    return {
        "id": item.id,
        "sender": item.sender,
        "recipients": list(item.recipients),
        "size": item.size,
    }


def _drop_list(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    passed_over = PassedOver("Drop")
    with _spool(settings) as spool:
        items = list(spool.drop(passed_over=passed_over))
    passed_over.tell()
    if args.json:
        _print_json_lines((_drop_json(item) for item in items), out)
        return EX_OK
    if not items:
        print("Drop is empty.", file=out)
        return EX_OK
    rows = [["ID", "SIZE", "SENDER", "RECIPIENTS"]]
    rows.extend(
        [
            item.id,
            str(item.size),
            printable(_sender(item.sender)),
            printable(", ".join(item.recipients)),
        ]
        for item in items
    )
    for line in _columns(rows, right=(1,)):
        print(line, file=out)
    print(f"-- {_plural(len(items), 'file')}", file=out)
    return EX_OK


def _drop_show(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    queue_id = _one_id(args.id)
    with _spool(settings) as spool:
        _write_chunks(out, spool.drop_message_chunks(queue_id))
    return EX_OK
