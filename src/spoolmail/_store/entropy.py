"""The random source the store hands its id factory: the system's randomness, pooled.

:class:`PooledRandom` is ``SystemRandom`` whose bits come from ``os.urandom`` read 4 KiB at a
time and handed out once each: one ``getrandom`` call for hundreds of queue ids, owner tokens
and temporary names, not one each. It is thread-safe, and a forked child (a worker) drops the
bytes it inherited, so parent and child never hand out the same ones.
"""

from __future__ import annotations

import os
import random
import threading

__all__ = ["PooledRandom"]

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
