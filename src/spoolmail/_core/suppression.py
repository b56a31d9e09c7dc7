"""The suppression list's rules: which failure is a hard bounce, and what a suppressed
recipient is answered.

A hard bounce is a permanent reply from a remote server (the recipient's server, or a smart host
passing its word on) saying the address or its domain does not exist: ``5.1.1`` (bad
destination mailbox), ``5.1.2`` (bad destination system) or ``5.1.10`` (RFC 7505: null MX),
RFC 3463 and RFC 7505 section 4.1. A ``5.7.x`` is a policy refusal (spam, authentication,
reputation): the address exists and may take mail another day, so it is never suppressed; and
spoolmail's own verdicts (a DNS NXDOMAIN it looked up, a local fault) carry no remote host and
do not count either (shared design, section 10). A :class:`Suppressed` entry is kept for a
number of days (30 by default) and then forgotten. Sending to a suppressed address fails at
once with :func:`suppressed_reply`, and the sender gets a DSN as for any failure (RFC 3464: the
DSN says the message was not delivered, which it was not). Pure: times are handed in.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import attrs

from spoolmail._core.reply import Reply

__all__ = [
    "HARD_BOUNCES",
    "Suppressed",
    "decode_suppressed",
    "encode_suppressed",
    "is_hard_bounce",
    "suppressed_reply",
    "suppression_key",
]

HARD_BOUNCES = frozenset({"5.1.1", "5.1.2", "5.1.10"})


def is_hard_bounce(reply: Reply) -> bool:
    """Whether ``reply`` is a remote server's word that the address does not exist.

    >>> is_hard_bounce(Reply(550, "5.1.1", "no such user", host="mx.example.net"))
    True
    >>> is_hard_bounce(Reply(550, "5.7.1", "spam", host="mx.example.net"))
    False
    >>> is_hard_bounce(Reply(550, "5.1.2", "domain example.invalid does not exist (DNS)"))
    False
    """
    return reply.code >= 500 and reply.host is not None and reply.enhanced in HARD_BOUNCES


def suppression_key(address: str) -> str:
    """How addresses are compared: without case. RFC 5321 lets a local part be case-sensitive,
    but no mailbox provider that said ``5.1.1`` to one spelling takes another."""
    return address.casefold()


@attrs.frozen
class Suppressed:
    """A recipient that hard-bounced: the address, when, the reply, and the message it was."""

    address: str
    time: datetime
    reply: Reply
    queue_id: str

    def until(self, keep: timedelta) -> datetime:
        """When the entry expires, kept ``keep``."""
        return self.time + keep

    def to_json(self) -> dict[str, Any]:
        """The entry as one JSON object, as the suppression file keeps it."""
        return {
            "address": self.address,
            "time": self.time.isoformat(timespec="seconds"),
            "reply": self.reply.to_json(),
            "queue_id": self.queue_id,
        }


def encode_suppressed(entry: Suppressed) -> str:
    """One line of the list's file (JSON, no newline inside)."""
    return json.dumps(entry.to_json(), ensure_ascii=False, separators=(", ", ": "))


def decode_suppressed(line: str) -> Suppressed | None:
    """The entry on ``line``, or ``None`` for a line that is not one (cut short by a crash,
    edited by hand): a damaged line costs its entry, never the list."""
    try:
        data = json.loads(line)
        time = datetime.fromisoformat(data["time"])
        if time.utcoffset() is None:
            return None
        return Suppressed(
            address=str(data["address"]),
            time=time,
            reply=Reply.from_json(data["reply"]),
            queue_id=str(data.get("queue_id", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def suppressed_reply(entry: Suppressed) -> Reply:
    """What a suppressed recipient is answered: permanent, spoolmail's own verdict (no host and
    no cause: no server was asked about this message, so the DSN names none as its Remote-MTA;
    the text quotes what the server said then)."""
    day = entry.time.date().isoformat()
    return Reply(
        550,
        "5.1.1",
        f"recipient suppressed after a hard bounce on {day} ({entry.reply}); "
        "not sent again until the entry expires or is removed",
    )
