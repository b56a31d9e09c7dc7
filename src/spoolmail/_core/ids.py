"""Queue ids: unique, time-sortable names for queued messages, never derived from their content.

An id is ``<milliseconds since 1970, 11 hex digits>-<sequence, 4 hex digits><48 random bits, 12
hex digits>``, e.g. ``19ac9b2f1c0-00005e1f0c2a9b7d``: sorting ids sorts messages by arrival (the
sequence orders the ids one factory makes within one millisecond), the random part keeps two
processes apart, and only ``[0-9a-f-]`` appear, so an id is safe in every file name and URL.
A DSN's id is its parent's id plus ``-d<n>`` (:func:`dsn_id`): recomputing it after a crash gives
the same name, so a DSN is queued once however often its parent's attempt is repeated.
Pure: the time and the random source are handed in (the store hands in
``_store.entropy.PooledRandom``: the system's randomness without a system call a draw).
"""

from __future__ import annotations

import random
import re
from datetime import datetime

import attrs

from spoolmail._core.base32 import token as _token

__all__ = ["QueueIds", "dsn_id", "is_made_id", "is_queue_id"]

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MADE = re.compile(r"[0-9a-f]{11}-[0-9a-f]{16}")


def is_queue_id(text: str) -> bool:
    """Whether ``text`` can be a queue id: 1-128 characters of ``[A-Za-z0-9_-]``."""
    return bool(_ID.fullmatch(text))  # not match: "$" would take a final newline


def is_made_id(text: str) -> bool:
    """Whether ``text`` has the form :meth:`QueueIds.new` gives (not a DSN's, not any name)."""
    return bool(_MADE.fullmatch(text))


def dsn_id(parent: str, number: int) -> str:
    """The id of the ``number``-th DSN (1-based) about message ``parent``."""
    return f"{parent}-d{number}"


@attrs.define
class QueueIds:
    """Makes queue ids from a time (handed in) and a random source (default SystemRandom).

    One factory never makes an id twice: its (milliseconds, sequence) pairs only grow. When the
    clock steps back, or more than 65,536 ids fall in one millisecond, the ids go on from the
    last one (a millisecond or so ahead of the clock) instead of starting that millisecond again.
    Not thread-safe by itself: the store serialises the calls (``MailStore.new_id``).
    """

    rng: random.Random = attrs.field(factory=random.SystemRandom)
    _last: tuple[int, int] = attrs.field(default=(-1, 0), init=False)

    def new(self, now: datetime) -> str:
        millis = int(now.timestamp() * 1000)
        last, sequence = self._last
        if millis > last:
            sequence = 0
        elif sequence < 0xFFFF:
            millis, sequence = last, sequence + 1
        else:
            millis, sequence = last + 1, 0
        self._last = (millis, sequence)
        return f"{millis:011x}-{sequence:04x}{self.rng.getrandbits(48):012x}"

    def token(self, length: int = 10) -> str:
        """A short random name part (owner tokens, temporary file names): base 32, 5 random bits
        a character."""
        return _token(self.rng.randbytes(length))
