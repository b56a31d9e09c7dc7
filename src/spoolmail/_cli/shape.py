"""``spoolmail queue shape``: the Queue by destination domain and age, as Postfix's ``qshape``.

One row per recipient domain, counting the recipients still to be delivered (``--sender``: per
sender domain, counting messages, as ``qshape -s``), one column per age bucket (minutes since
arrival: under 5, 10, 20 ... 1280, then older, as ``qshape``'s defaults), a TOTAL row first and
the busiest domains after it; beyond ``--top`` the rest is summed in one row. Held messages are
a queue of their own in Postfix (``qshape hold``): they are left out and counted in a footer,
and ``--held`` shapes them alone. :func:`measure` is pure (envelopes and a time in, a
:class:`Shape` out); the command reads the Queue once through ``Spool.queued``.
"""

from __future__ import annotations

import argparse
import bisect
import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from spoolmail._cli.settings import Settings
from spoolmail._cli.status import Unreadable, UsageError
from spoolmail._core.envelope import Envelope

if TYPE_CHECKING:
    from spoolmail._store.spool import Spool

# How the command opens the MailRoot (operations._spool: orders and reads go through it).
SpoolOf = Callable[[Settings], AbstractContextManager["Spool"]]

__all__ = [
    "Row",
    "Shape",
    "SpoolOf",
    "add_command",
    "as_json",
    "bucket_limits",
    "measure",
    "render",
]

_MINUTE = 60.0


def bucket_limits(*, first: int = 5, buckets: int = 10) -> tuple[int, ...]:
    """The buckets' upper bounds in minutes, doubling from ``first`` (the last bucket, older
    than the last bound, has none): ``(5, 10, 20, 40, 80, 160, 320, 640, 1280)`` by default."""
    if first < 1 or buckets < 2:
        raise ValueError("buckets start at 1 minute or more, and there are at least 2")
    return tuple(first * 2**n for n in range(buckets - 1))


@attrs.frozen
class Row:
    """One line of the shape: a domain (or TOTAL), its count, and the count in each bucket."""

    name: str
    buckets: tuple[int, ...]

    @property
    def count(self) -> int:
        return sum(self.buckets)


@attrs.frozen
class Shape:
    """The Queue by domain and age; ``other`` sums the ``other_domains`` beyond the top rows."""

    by: str  # "recipient" (pending recipients counted) or "sender" (messages counted)
    held: bool  # whether this is the shape of the messages on hold
    time: datetime
    limits: tuple[int, ...]
    total: Row
    rows: tuple[Row, ...]
    other: Row | None
    other_domains: int
    messages: int  # messages shaped
    left_out: int  # messages on hold (left out), or not on hold (with held=True)

    @property
    def columns(self) -> list[str]:
        return [str(limit) for limit in self.limits] + [f"{self.limits[-1]}+"]


def _sender_domain(sender: str) -> str:
    if not sender:
        return "<>"
    return sender.rpartition("@")[2].lower()


def measure(
    envelopes: Iterable[Envelope],
    *,
    now: datetime,
    by: str = "recipient",
    held: bool = False,
    limits: tuple[int, ...] = bucket_limits(),
    top: int = 20,
) -> Shape:
    """Count ``envelopes`` by domain and age at ``now``; ``top`` rows (0: every domain)."""
    if by not in ("recipient", "sender"):
        raise ValueError(f"by is 'recipient' or 'sender', not {by!r}")
    bounds = [limit * _MINUTE for limit in limits]
    width = len(limits) + 1
    counts: dict[str, list[int]] = {}
    total = [0] * width
    messages = left_out = 0
    for env in envelopes:
        if env.held != held:
            left_out += 1
            continue
        messages += 1
        # A clock set back makes a message from the future: it is new, not an error.
        age = max((now - env.arrival).total_seconds(), 0.0)
        bucket = bisect.bisect_right(bounds, age)
        if by == "sender":
            domains: Iterable[str] = (_sender_domain(env.sender),)
        else:
            domains = (r.domain for r in env.pending)
        for domain in domains:
            row = counts.get(domain)
            if row is None:
                row = counts[domain] = [0] * width
            row[bucket] += 1
            total[bucket] += 1
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1]), item[0]))
    shown = ranked if top <= 0 else ranked[:top]
    rest = ranked[len(shown) :]
    other = None
    if rest:
        summed = [sum(column) for column in zip(*(row for _, row in rest), strict=True)]
        other = Row(f"({len(rest)} other domains)", tuple(summed))
    return Shape(
        by=by,
        held=held,
        time=now,
        limits=limits,
        total=Row("TOTAL", tuple(total)),
        rows=tuple(Row(name, tuple(row)) for name, row in shown),
        other=other,
        other_domains=len(rest),
        messages=messages,
        left_out=left_out,
    )


def render(shape: Shape) -> list[str]:
    """The shape as ``qshape`` prints it: numbers and domains right-aligned, TOTAL first."""
    rows = [shape.total, *shape.rows, *([shape.other] if shape.other else [])]
    table = [["", "T", *shape.columns]]
    table.extend([row.name, str(row.count), *map(str, row.buckets)] for row in rows)
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        " ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in table
    ]
    if shape.by == "recipient":
        footer = (
            f"-- {_plural(shape.total.count, 'recipient')} still to be delivered, "
            f"in {_plural(shape.messages, 'message')}"
        )
    else:
        footer = f"-- {_plural(shape.messages, 'message')}"
    footer += ", by age in minutes since arrival"
    if shape.held:
        footer += "; messages on hold only"
    elif shape.left_out:
        footer += f"; {_plural(shape.left_out, 'message')} on hold not counted (--held)"
    return [*lines, footer]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _row_json(row: Row) -> dict[str, object]:
    return {"domain": row.name, "count": row.count, "buckets": list(row.buckets)}


def as_json(shape: Shape) -> dict[str, object]:
    """The shape for scripts: one object (see docs/operations.md for its keys)."""
    other = None
    if shape.other is not None:
        other = {
            "domains": shape.other_domains,
            "count": shape.other.count,
            "buckets": list(shape.other.buckets),
        }
    return {
        "by": shape.by,
        "held": shape.held,
        "time": shape.time.astimezone(UTC).isoformat(),
        "columns": shape.columns,
        "bucket_minutes": list(shape.limits),
        "total": {"count": shape.total.count, "buckets": list(shape.total.buckets)},
        "domains": [_row_json(row) for row in shape.rows],
        "other": other,
        "messages": shape.messages,
        "left_out": shape.left_out,
    }


def add_command(actions: Any, spool_of: SpoolOf) -> None:
    """Add ``shape`` to ``spoolmail queue``'s actions; ``spool_of(settings)`` opens the
    MailRoot (``operations._spool``)."""
    shape = actions.add_parser(
        "shape",
        help="the Queue by destination domain and age, as Postfix's qshape",
        description="Rows: recipient domains, counting recipients still to be delivered "
        "(--sender: sender domains, counting messages). Columns: age since arrival, in minutes "
        "(T: all ages). Messages on hold are left out unless --held.",
    )
    shape.add_argument(
        "--sender",
        dest="by",
        action="store_const",
        const="sender",
        default="recipient",
        help="rows by sender domain instead",
    )
    shape.add_argument("--held", action="store_true", help="the messages on hold, only")
    shape.add_argument(
        "--top",
        type=int,
        default=20,
        metavar="N",
        help="the N busiest domains, the others summed in one row (default 20, 0: all)",
    )
    shape.add_argument(
        "--buckets", type=int, default=10, metavar="N", help="age columns (default 10)"
    )
    shape.add_argument(
        "--bucket-minutes",
        type=int,
        default=5,
        metavar="M",
        help="the first column's upper bound, doubling in each next one (default 5)",
    )
    # SUPPRESS: "queue --json shape" keeps the --json given before "shape".
    shape.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object"
    )

    def handler(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
        return _shape(spool_of, settings, args, out)

    shape.set_defaults(handler=handler)


def _shape(spool_of: SpoolOf, settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    try:
        limits = bucket_limits(first=args.bucket_minutes, buckets=args.buckets)
    except ValueError as exc:
        raise UsageError(f"--buckets and --bucket-minutes: {exc}") from None
    unread = Unreadable()
    with spool_of(settings) as spool:
        result = measure(
            (item.envelope for item in spool.queued(unreadable=unread)),
            now=spool.clock(),
            by=args.by,
            held=args.held,
            limits=limits,
            top=args.top,
        )
    if args.json:
        print(json.dumps(as_json(result), ensure_ascii=False), file=out)
    else:
        for line in render(result):
            print(line, file=out)
    return unread.tell("not counted")
