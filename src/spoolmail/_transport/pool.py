"""Connections kept open for reuse: at most a few idle ones per target, none too old.

:class:`ConnectionPool` holds idle sessions by :class:`~spoolmail._core.routing.Target` (equal
address, name, TLS policy and credentials) and hands back the freshest; it reads only the clock
it is given. It never opens, greets or closes a connection itself: what it lets go (too old, one
too many for its target or for the whole pool) it returns to the caller to close.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from spoolmail._core.routing import Target

__all__ = ["MAX_KEPT", "ConnectionPool"]

# Seconds between two looks at every target's idle sessions for those too old to keep.
_SWEEP = 1.0
# Idle sessions kept in all, whatever their targets; beyond it the least recently used goes.
# Each is an open socket: a run that met a new MX host every few milliseconds (mail to
# thousands of domains) kept one per host for the whole idle time, until the process ran out
# of file descriptors (a systemd service's soft limit is 1,024) and every new connection
# failed as if its host were dead. Ten targets' worth of max_idle (10) by default.
MAX_KEPT = 100


class _Kept(Protocol):
    last_used: float

    @property
    def target(self) -> Target: ...


_S = TypeVar("_S", bound=_Kept)


class ConnectionPool(Generic[_S]):
    """Idle sessions by target; safe to share between threads.

    ``idle``: seconds an unused session is kept (0: none is). ``max_idle``: how many idle
    sessions one target keeps, one per delivery thread that used it, up to this bound.
    ``max_kept``: how many are kept in all (:data:`MAX_KEPT`).
    """

    def __init__(
        self,
        *,
        idle: float,
        max_idle: int,
        monotonic: Callable[[], float],
        max_kept: int = MAX_KEPT,
    ) -> None:
        self._idle_time = idle
        self._max_idle = max_idle
        self._max_kept = max_kept
        self._monotonic = monotonic
        self._idle: dict[Target, list[_S]] = {}
        self._kept = 0
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    @property
    def keeps(self) -> bool:
        return self._idle_time > 0 and self._max_idle > 0

    def take(self, target: Target) -> tuple[_S | None, list[_S]]:
        """The most recently used idle session to ``target``, and the idle ones (of any target)
        that are now too old, for the caller to close."""
        now = self._monotonic()
        expired: list[_S] = []
        idle = self._idle_time
        with self._lock:
            if now >= self._next_sweep:
                # Other targets' idle sessions are looked at once a second, not at every take
                # (a take per message): one too old is closed that much later at most.
                self._next_sweep = now + _SWEEP
                for key, sessions in list(self._idle.items()):
                    fresh = [s for s in sessions if now - s.last_used <= idle]
                    if len(fresh) < len(sessions):
                        expired.extend(s for s in sessions if now - s.last_used > idle)
                        self._kept -= len(sessions) - len(fresh)
                    if fresh:
                        self._idle[key] = fresh
                    else:
                        del self._idle[key]
            kept = self._idle.get(target)
            session = None
            while kept:
                # The last kept is the freshest: once it is too old, so are the others.
                last = kept.pop()
                self._kept -= 1
                if now - last.last_used <= idle:
                    session = last
                    break
                expired.append(last)
            if kept is not None and not kept:
                del self._idle[target]
        return session, expired

    def keep(self, session: _S) -> list[_S]:
        """Keep ``session`` for reuse, marked used now; return the surplus (the target's
        oldest beyond ``max_idle``, the pool's least recently used beyond ``max_kept``), for
        the caller to close."""
        session.last_used = self._monotonic()
        idle = self._idle
        with self._lock:
            kept = idle.setdefault(session.target, [])
            kept.append(session)
            surplus = kept[: -self._max_idle] if len(kept) > self._max_idle else []
            del kept[: len(surplus)]
            self._kept += 1 - len(surplus)
            while self._kept > self._max_kept:
                # Each target's sessions are in the order they were kept: its first is its
                # oldest. A scan of the targets, only once the pool is full.
                oldest = min(idle, key=lambda key: idle[key][0].last_used)
                surplus.append(idle[oldest].pop(0))
                if not idle[oldest]:
                    del idle[oldest]
                self._kept -= 1
        return surplus

    def drain(self) -> list[_S]:
        """Every idle session, now the caller's to close."""
        with self._lock:
            sessions = [s for kept in self._idle.values() for s in kept]
            self._idle.clear()
            self._kept = 0
        return sessions
