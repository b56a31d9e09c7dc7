"""``spoolmail log ID``: what happened to a message, read from the mail log in ``Log/``.

Works after the message has left the Queue (the mail log keeps ``log_days`` days): every line
about the id, oldest first, as the daemon's log shows them (``describe``), or the stored JSON
lines with ``--json``. The DSN a message caused, and the message a BadMail requeue made, name
their parent's line too. The id comes from the command line, so it is checked before use and
only ever compared with what the lines say; it never becomes part of a path. The lines may have
been edited by hand: a line whose values are of the wrong type (a null where a time goes, a list
where a text does) is left out, and counted in one line on stderr; control characters are shown
escaped (``_cli.status.printable``, line ends too: one event, one line).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from spoolmail._cli.settings import Settings
from spoolmail._cli.status import EX_OK, UsageError, printable, printable_json, shown
from spoolmail._core.events import MailEvent, describe
from spoolmail._core.ids import is_queue_id
from spoolmail._store.maillog import MailLog
from spoolmail._store.spool import Spool
from spoolmail.exceptions import NotFound

__all__ = ["add_command"]


def add_command(commands: Any) -> None:
    """Add ``log`` to the command tree."""
    log = commands.add_parser(
        "log",
        description="Every event of one message, oldest first, from the mail log in Log/.",
    )
    log.add_argument("id", metavar="ID", help="the queue id")
    log.add_argument("--json", action="store_true", help="the mail log's JSON lines as stored")
    log.set_defaults(handler=_log)


def _log(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    queue_id: str = args.id
    if not is_queue_id(queue_id):
        raise UsageError(
            f"{shown(queue_id)} is not a queue id (1 to 128 letters, digits, '-' and '_', "
            "as `spoolmail queue` lists them)"
        )
    found = 0
    damaged: list[str] = []
    with Spool(settings.root) as spool:
        for line, event in MailLog(spool._store).read(queue_id, damaged=damaged.append):
            found += 1
            if args.json:
                print(printable_json(line), file=out)
            else:
                print(printable(describe_line(event)), file=out)
    if damaged:
        count = len(damaged)
        sys.stderr.write(
            f"spoolmail: {count} damaged {'line' if count == 1 else 'lines'} about {queue_id} "
            "in Log/ left out (cut short, not an event, or values of the wrong type)\n"
        )
    if not found:
        raise NotFound(f"the mail log in Log/ has nothing about {queue_id}")
    return EX_OK


def describe_line(event: MailEvent) -> str:
    """The event's line for people: its time and what happened."""
    return f"{event.time.isoformat(timespec='seconds')} {describe(event)}"
