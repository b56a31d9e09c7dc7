"""An example at the end of every ``--help``: the command line a newcomer would type first.

Issue 16 asks that ``spoolmail --help`` and each subcommand's help end with an example.
:func:`add_examples` walks the finished parser tree and sets each parser's epilog from
:data:`EXAMPLES` (keyed by the command path); a test checks that no command lacks one. The
examples name only ``./MailRoot``, ``example.com`` and queue ids as ``spoolmail queue`` lists
them, so they are safe to paste.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

__all__ = ["EXAMPLES", "add_examples", "commands"]

_ID = "19ac9b2f1c0-00005e1f0c2a9b7d"

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("spoolmail run", "spoolmail --root /srv/mailroot queue list"),
    "init": ("spoolmail --root /srv/mailroot init",),
    "run": (
        "spoolmail run --local-domain example.com --smart-host relay.example.net:587",
        "spoolmail run --catch-all --listen 127.0.0.1:2525",
    ),
    "submit": ("spoolmail submit --from app@example.com --to ops@example.com < message.eml",),
    "queue": ("spoolmail queue",),
    "queue list": ("spoolmail queue list --json",),
    "queue show": (f"spoolmail queue show {_ID}",),
    "queue shape": ("spoolmail queue shape --top 10",),
    "queue flush": ("spoolmail queue flush --domain example.net",),
    "queue hold": (f"spoolmail queue hold {_ID}", "spoolmail queue hold --domain slow.example"),
    "queue release": ("spoolmail queue release --all",),
    "queue delete": ("spoolmail queue delete --sender spam@example.net --dry-run",),
    "queue import-iis": ("spoolmail queue import-iis",),
    "badmail": ("spoolmail badmail",),
    "badmail list": ("spoolmail badmail list --json",),
    "badmail show": (f"spoolmail badmail show {_ID}",),
    "badmail requeue": (f"spoolmail badmail requeue {_ID}", "spoolmail badmail requeue --all"),
    "badmail delete": (f"spoolmail badmail delete {_ID}",),
    "drop": ("spoolmail drop",),
    "drop list": ("spoolmail drop list --json",),
    "drop show": (f"spoolmail drop show {_ID}",),
    "log": (f"spoolmail log {_ID}",),
    "listen": ("spoolmail listen --listen 0.0.0.0:25 --relay-network 192.0.2.0/24",),
    "listen-passwd": ("spoolmail listen-passwd alice >> /etc/spoolmail/users",),
    "sendmail": ("printf 'Subject: hi\\n\\nhello\\n' | spoolmail sendmail -i ops@example.com",),
    "config": ("spoolmail --config /etc/spoolmail/spoolmail.toml config --all",),
    "suppress": ("spoolmail suppress list",),
    "suppress list": ("spoolmail suppress list --json",),
    "suppress remove": ("spoolmail suppress remove bob@example.net",),
    "check": ("spoolmail check --helo-name mail.example.com",),
    "dkim": ("spoolmail dkim keygen example.com 2026a --out /etc/spoolmail/dkim",),
    "dkim keygen": ("spoolmail dkim keygen example.com 2026a --algorithm ed25519",),
}


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree with its command path (``""`` for the top)."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def add_examples(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Set the epilog of ``parser`` (the command at ``path``) and of every parser below it to
    its examples (kept as written, not re-wrapped)."""
    for name, sub in commands(parser, path):
        lines = EXAMPLES.get(name)
        if not lines:
            continue
        label = "example" if len(lines) == 1 else "examples"
        sub.epilog = f"{label}:\n" + "\n".join(f"  {line}" for line in lines)
        if sub.formatter_class is argparse.HelpFormatter:
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
