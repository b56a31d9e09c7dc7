"""``spoolmail suppress list|remove`` and ``spoolmail check``: the operator's side of issue 13.

``suppress list`` shows the recipients that hard-bounced (5.1.1, 5.1.2, 5.1.10 from the
recipient's server) and are suppressed until their entry expires (``suppression_days``);
``suppress remove ADDRESS`` lets mail to one go again (after the mailbox was fixed). ``check``
asks, through the service's DNS, whether the EHLO name resolves forward and back to the same
name (FCrDNS), which receivers require: exit 0 when it does, 1 with the problems when not. The
addresses on the command line are hostile until parsed; none becomes part of a path. What the
list's file says is printed with control characters escaped (it may have been edited by hand).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from spoolmail._cli import assemble
from spoolmail._cli.flags import add_setting_flags
from spoolmail._cli.settings import Settings
from spoolmail._cli.status import EX_FAILED, EX_OK, UsageError, printable, printable_json
from spoolmail._core.address import parse_mailbox
from spoolmail._service.checks import check_host_name
from spoolmail._service.service import machine_name
from spoolmail._store.spool import Spool
from spoolmail._store.suppression import SuppressionList
from spoolmail.exceptions import MessageError

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Add ``suppress`` and ``check`` to the command tree."""
    suppress = commands.add_parser(
        "suppress",
        description="Recipients that hard-bounced are failed at once until their entry "
        "expires (suppression_days).",
    )
    actions = suppress.add_subparsers(dest="action", required=True, metavar="action")
    listing = actions.add_parser("list", help="every suppressed recipient")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(handler=_list)
    remove = actions.add_parser("remove", help="let mail to these addresses go again")
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS")
    remove.set_defaults(handler=_remove)
    check = commands.add_parser(
        "check",
    )
    check.add_argument(
        "--address",
        action="append",
        dest="public_addresses",
        default=[],
        metavar="IP",
        help="an address mail leaves this host from (repeat), when the name has others too",
    )
    add_setting_flags(check, ["fqdn", "helo_name", "dns_servers"])
    check.set_defaults(handler=_check)


def _list(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    with Spool(settings.root) as spool:
        entries = SuppressionList(spool, days=settings.suppression_days or 30).entries()
    for entry in entries:
        if args.json:
            record = {
                "address": entry.address,
                "time": entry.time.isoformat(),
                "reply": str(entry.reply),
                "queue_id": entry.queue_id,
            }
            print(printable_json(json.dumps(record, ensure_ascii=False)), file=out)
        else:
            line = f"{entry.address}  {entry.time.isoformat()}  {entry.queue_id}  {entry.reply}"
            print(printable(line), file=out)
    if not args.json:
        print(f"-- {len(entries)} suppressed", file=out)
    return EX_OK


def _remove(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    try:
        addresses = [parse_mailbox(a, default_domain=None) for a in args.addresses]
    except MessageError as exc:
        raise UsageError(str(exc)) from None
    status = EX_OK
    with Spool(settings.root) as spool:
        suppression = SuppressionList(spool, days=settings.suppression_days or 30)
        for address in addresses:
            if suppression.remove(address):
                print(f"{address}: no longer suppressed", file=out)
            else:
                print(f"{address}: was not suppressed", file=out)
                status = EX_FAILED
    return status


def _check(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    name = settings.helo_name or settings.fqdn or machine_name()
    resolver = assemble.dns_resolver(settings.dns_servers)
    found = check_host_name(name, dns_resolver=resolver, addresses=args.public_addresses)
    print(str(found), file=out)
    for problem in found.problems:
        print(f"  - {problem}", file=out)
    return EX_OK if found.ok else EX_FAILED
