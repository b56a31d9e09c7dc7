"""Queue ids: unique, time-sortable names for queued messages, never derived from their content.

An id is ``<milliseconds since 1970, 11 hex digits>-<sequence, 4 hex digits><48 random bits, 12
hex digits>``, e.g. ``19ac9b2f1c0-00005e1f0c2a9b7d``: sorting ids sorts messages by arrival (the
sequence orders the ids one factory makes within one millisecond), the random part keeps two
processes apart, and only ``[0-9a-f-]`` appear, so an id is safe in every file name and URL.
A DSN's id is its parent's id plus ``-d<n>`` (:func:`dsn_id`): recomputing it after a crash gives
the same name, so a DSN is queued once however often its parent's attempt is repeated.
Pure but for the default random source: the time is handed in, and so may be the random source.
The default (:class:`PooledRandom`) is the operating system's randomness, read 4 KiB at a time
and handed out once each (one ``getrandom`` call for hundreds of ids and names, not one each);
a forked child drops what it inherited, so a worker never repeats its parent's bits.
"""

from __future__ import annotations

import os
import random
import re
import threading
from datetime import datetime

import attrs

__all__ = ["PooledRandom", "QueueIds", "dsn_id", "is_made_id", "is_queue_id"]

_BASE32 = "0123456789abcdefghijklmnopqrstuv"
# A byte's low five bits as a base-32 digit: 256 is a multiple of 32, so each is uniform.
_BASE32_OF_BYTE = bytes(ord(_BASE32[value & 31]) for value in range(256))
_POOL_BYTES = 4096


class _Pool:
    """Random bytes from ``os.urandom`` in blocks; each byte handed out once (thread-safe)."""

    __slots__ = ("_at", "_data", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            at = self._at
            end = at + count
            if end > len(self._data):
                self._data = os.urandom(max(_POOL_BYTES, count))
                at, end = 0, count
            self._at = end
            return self._data[at:end]


_pool = _Pool()


def _forget_pool() -> None:
    # In a forked child: a new pool (and lock: another thread may have held the old one at the
    # fork), so parent and child never hand out the same bytes.
    global _pool  # noqa: PLW0603 (the one process-wide pool, replaced once per fork)
    _pool = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


class PooledRandom(random.SystemRandom):
    """``SystemRandom`` whose bits come from the process's pool of ``os.urandom`` bytes.

    As unpredictable as ``SystemRandom`` (the same source, each byte used once), without a
    system call per draw; safe across threads and forks.
    """

    def getrandbits(self, k: int, /) -> int:
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        count = (k + 7) // 8
        return int.from_bytes(_pool.take(count)) >> (count * 8 - k)

    def randbytes(self, n: int) -> bytes:
        return _pool.take(n)


_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MADE = re.compile(r"^[0-9a-f]{11}-[0-9a-f]{16}$")


def is_queue_id(text: str) -> bool:
    """Whether ``text`` can be a queue id: 1-128 characters of ``[A-Za-z0-9_-]``."""
    return bool(_ID.match(text))


def is_made_id(text: str) -> bool:
    """Whether ``text`` has the form :meth:`QueueIds.new` gives (not a DSN's, not any name)."""
    return bool(_MADE.match(text))


def dsn_id(parent: str, number: int) -> str:
    """The id of the ``number``-th DSN (1-based) about message ``parent``."""
    return f"{parent}-d{number}"


@attrs.define
class QueueIds:
    """Makes queue ids from a time (handed in) and a random source (default :class:`PooledRandom`).

    One factory never makes an id twice: its (milliseconds, sequence) pairs only grow. When the
    clock steps back, or more than 65,536 ids fall in one millisecond, the ids go on from the
    last one (a millisecond or so ahead of the clock) instead of starting that millisecond again.
    Not thread-safe by itself: the store serialises the calls (``MailStore.new_id``).
    """

    rng: random.Random = attrs.field(factory=PooledRandom)
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
        return self.rng.randbytes(length).translate(_BASE32_OF_BYTE).decode("ascii")
