"""What the service knows of each destination between attempts, shared by its delivery threads.

:class:`DeadDestinations` is the in-memory memory of hosts that just failed to answer, and of
hops whose lookup just failed: like Postfix's queue manager, other messages for such a host
(or hop) are passed over without a connection attempt (a lookup) of their own until the failed
message's retry time. Such a message was not attempted, so its attempt is not counted
(``delivery.passed_over``); and as ``postqueue -f`` does, an operator's flush forgets the notes
of the destinations it flushes (:meth:`DeadDestinations.forget`), so the flushed mail is
really tried. One thread at a time looks a hop up (:meth:`DeadDestinations.resolving`): the
others wait for its end, and then pass over as its note says, or find its answers in the
resolver's cache. :class:`Concurrency` holds each host's connections, with Postfix's slow start;
:class:`Throttles` the destinations that asked to be sent less (``_core.throttle``) and the
optional message rate per destination. All in memory, thread-safe; none of it reads or writes
the MailRoot.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import TypeVar

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Hop, Target
from spoolmail._core.throttle import RateBucket, Throttle, ThrottleRules, asks_to_slow_down
from spoolmail._transport.dns import HOP_BUDGET

__all__ = [
    "Concurrency",
    "DeadDestinations",
    "DeadNote",
    "Throttles",
    "destination",
]

log = logging.getLogger("spoolmail")


def _way(hop: Hop) -> tuple[object, ...]:
    """What a note remembers of a hop: how the host was found, whatever the TLS policy."""
    return (hop.kind, hop.name, hop.port)


_K = TypeVar("_K")


@attrs.frozen
class DeadNote:
    """Why and until when a host is left alone, and the hops that led to it (for a flush)."""

    until: datetime
    reply: Reply
    ways: frozenset[tuple[object, ...]] = frozenset()


def _holding(notes: dict[_K, DeadNote], key: _K, now: datetime) -> DeadNote | None:
    """``key``'s note if it still holds at ``now``; one whose time is up is dropped."""
    note = notes.get(key)
    if note is not None and now >= note.until:
        del notes[key]
        return None
    return note


@attrs.define
class _Resolving:
    """One hop's lookup under way: the threads waiting for its end, woken by ``ended``, which
    the first of them makes (most lookups are waited for by nobody)."""

    waiters: int = 0
    ended: threading.Condition | None = None
    over: bool = False


@attrs.define
class DeadDestinations:
    """Hosts that just failed to answer, and hops whose lookup just failed, and until when
    nobody tries them again; and the hops being looked up now. Thread-safe.

    Each note also remembers the hops (an MX of a domain, a smart host, a route) through which
    messages met the host, so that a flush of those messages can forget it without a lookup.
    ``lookup_wait`` is the most a delivery waits for another's lookup of its hop
    (:meth:`resolving`): the resolver's budget for a hop's lookups (``HOP_BUDGET``).
    """

    marks: dict[Target, DeadNote] = attrs.Factory(dict)
    lookups: dict[Hop, DeadNote] = attrs.Factory(dict)
    """Hops whose lookup just failed (the DNS did not answer): their other messages are passed
    over until the note's time."""
    lookup_wait: float = HOP_BUDGET
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    # Hops being looked up now, only while they are: a long run meets many.
    _resolving: dict[Hop, _Resolving] = attrs.field(factory=dict, init=False, repr=False)

    @contextlib.contextmanager
    def resolving(self, hop: Hop) -> Iterator[None]:
        """Look ``hop`` up in the block, one thread at a time.

        A thread that finds another one looking ``hop`` up waits until that lookup ends (at
        most ``lookup_wait`` seconds; a lookup ends even when it raises) before its block runs:
        by then a lookup that failed for want of an answer has its note (:meth:`skip_lookup`,
        to look at in the block) and one that succeeded left its answers in the resolver's
        cache. When several messages for a domain whose DNS is silent are attempted at once,
        the first costs the lookup's timeouts and the others wait for it, not for timeouts of
        their own; a hop's lookups are bounded by the budget, so a waiter is never held longer
        than the lookup it waits for, and a service's stop waits no longer than before. A
        waiter past ``lookup_wait`` looks up on its own, holding nothing.
        """
        with self._lock:
            under_way = self._resolving.get(hop)
            if under_way is None:
                mine = self._resolving[hop] = _Resolving()
            else:
                mine = None
                self._wait(under_way)
        if mine is None:
            yield
            return
        try:
            yield
        finally:
            with self._lock:
                del self._resolving[hop]
                mine.over = True
                if mine.ended is not None:
                    mine.ended.notify_all()

    def _wait(self, under_way: _Resolving) -> None:
        """Wait (under the lock) for the end of ``under_way``, ``lookup_wait`` at most."""
        if under_way.ended is None:
            under_way.ended = threading.Condition(self._lock)
        under_way.waiters += 1
        try:
            under_way.ended.wait_for(lambda: under_way.over, timeout=self.lookup_wait)
        finally:
            under_way.waiters -= 1

    def skip(
        self, target: Target, clock: Callable[[], datetime], *, hop: Hop | None = None
    ) -> DeadNote | None:
        """``None`` if ``target`` may be tried now; else its note, with the reply to give the
        recipients passed over (and ``hop`` added to the ways it was met through). The time is
        read only when the host has a note."""
        if target not in self.marks:
            return None  # the usual case, seen without the lock (a dict look is atomic)
        now = clock()
        with self._lock:
            note = _holding(self.marks, target, now)
            if note is None:
                return None
            if hop is not None and _way(hop) not in note.ways:
                note = self.marks[target] = attrs.evolve(note, ways=note.ways | {_way(hop)})
        skipped = Reply(
            451,
            "4.4.1",
            f"{target} did not answer the last attempt ({note.reply}); not tried again before "
            f"{note.until.isoformat(timespec='seconds')}",
        )
        return attrs.evolve(note, reply=skipped)

    def reason(self, target: Target, clock: Callable[[], datetime]) -> Reply | None:
        """Why ``target`` is skipped now, or ``None`` if it may be tried."""
        note = self.skip(target, clock)
        return None if note is None else note.reply

    def mark(
        self, target: Target, until: datetime, reply: Reply, *, hop: Hop | None = None
    ) -> None:
        with self._lock:
            old = self.marks.get(target)
            ways = old.ways if old is not None else frozenset()
            self.marks[target] = DeadNote(until, reply, ways | ({_way(hop)} if hop else set()))

    def clear(self, target: Target) -> None:
        if target not in self.marks:
            return  # nothing noted: the usual case after a delivery
        with self._lock:
            self.marks.pop(target, None)

    def skip_lookup(self, hop: Hop, clock: Callable[[], datetime]) -> DeadNote | None:
        """``None`` if ``hop`` may be looked up now; else its note, with the reply to give the
        recipients passed over: another message's lookup of it failed moments ago. The time is
        read only when the hop has a note."""
        if hop not in self.lookups:
            return None  # the usual case, seen without the lock (a dict look is atomic)
        now = clock()
        with self._lock:
            note = _holding(self.lookups, hop, now)
        if note is None:
            return None
        skipped = Reply(
            451,
            "4.4.3",
            f"{hop}: the last lookup failed ({note.reply}); not looked up again before "
            f"{note.until.isoformat(timespec='seconds')}",
        )
        return attrs.evolve(note, reply=skipped)

    def mark_lookup(self, hop: Hop, until: datetime, reply: Reply) -> None:
        with self._lock:
            self.lookups[hop] = DeadNote(until, reply)

    def clear_lookup(self, hop: Hop) -> None:
        if hop not in self.lookups:
            return  # nothing noted: the usual case after a lookup
        with self._lock:
            self.lookups.pop(hop, None)

    def forget_lookups(self, hops: Iterable[Hop] | None = None) -> list[Hop]:
        """Forget the failed lookups of ``hops`` (of every hop: ``None``), as :meth:`forget`
        does the hosts (whatever the TLS policy); those forgotten."""
        with self._lock:
            if hops is None:
                gone = list(self.lookups)
            else:
                ways = {_way(hop) for hop in hops}
                gone = [hop for hop in self.lookups if _way(hop) in ways]
            for hop in gone:
                del self.lookups[hop]
        return gone

    def forget(self, hops: Iterable[Hop]) -> list[Target]:
        """Forget every host met through one of ``hops`` (an operator's flush); those forgotten.

        Postfix's ``postqueue -f`` likewise tells the queue manager to forget its dead
        destinations (``QMGR_REQ_FLUSH_DEAD``), so that the flush really tries them.
        """
        ways = {_way(hop) for hop in hops}
        with self._lock:
            gone = [target for target, note in self.marks.items() if note.ways & ways]
            for target in gone:
                del self.marks[target]
        return gone


@attrs.define
class Concurrency:
    """How many connections each host gets at once, with Postfix's slow start.

    A host that has not yet taken a message since it was last found silent gets one
    connection at a time, so a dead host costs one timeout, not one per waiting message (the
    others see it marked dead when their turn comes). Once it takes one, it gets up to
    ``per_host`` at once (IIS: "Limit number of connections per domain"). Thread-safe.
    """

    per_host: int
    _active: dict[Target, int] = attrs.field(factory=dict, init=False)
    _proven: set[Target] = attrs.field(factory=set, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    # One condition per host, all on one lock: a freed slot wakes one thread waiting for that
    # host, not every waiting thread (a herd that would cost more CPU than the delivery).
    _freed: dict[Target, threading.Condition] = attrs.field(factory=dict, init=False)
    _waiting: dict[Target, int] = attrs.field(factory=dict, init=False)

    def _limit(self, target: Target) -> int:
        return self.per_host if target in self._proven else 1

    @contextlib.contextmanager
    def slot(self, target: Target) -> Iterator[None]:
        self.take(target)
        try:
            yield
        finally:
            self.give(target)

    def take(self, target: Target) -> None:
        """Hold one of ``target``'s connections (waiting while its limit is in use); every
        ``take`` is followed by one :meth:`give`, as :meth:`slot` does."""
        with self._lock:
            active = self._active.get(target, 0)
            if active >= self._limit(target):
                active = self._wait(target)
            self._active[target] = active + 1

    def _wait(self, target: Target) -> int:
        """Wait (under the lock) until ``target`` has a connection free; how many are in use.
        The condition is made only now: most slots are taken without waiting."""
        freed = self._freed.get(target)
        if freed is None:
            freed = self._freed[target] = threading.Condition(self._lock)
        self._waiting[target] = self._waiting.get(target, 0) + 1
        try:
            while (active := self._active.get(target, 0)) >= self._limit(target):
                freed.wait()
        finally:
            self._waiting[target] -= 1
        return active

    def give(self, target: Target) -> None:
        with self._lock:
            active = self._active[target] - 1
            if self._waiting.get(target):
                self._active[target] = active
                if active < self._limit(target):
                    self._freed[target].notify()
            elif active:
                self._active[target] = active
            else:
                # Nobody uses or awaits the host: forget it (a long run meets many hosts).
                del self._active[target]
                self._waiting.pop(target, None)
                self._freed.pop(target, None)

    def active(self) -> dict[str, int]:
        """Connections in use now, by host (``name[address]:port``): hosts in use only."""
        with self._lock:
            return {str(t): n for t, n in self._active.items() if n}

    def answered(self, target: Target, *, alive: bool) -> None:
        with self._lock:
            if not alive:
                self._proven.discard(target)
            elif target not in self._proven:
                self._proven.add(target)
                freed = self._freed.get(target)
                if freed is not None:
                    freed.notify(self.per_host)  # the limit went up from one


def destination(hop: Hop) -> str:
    """The destination a throttle is kept for: the domain of an MX hop, else the host."""
    return hop.name.lower()


# Throttled destinations past which a new one first drops those long quiet, and rate buckets
# past which those full again are dropped (Throttles).
_MANY_THROTTLED = 1000
_MANY_BUCKETS = 10_000


@attrs.define
class Throttles:
    """Destinations that asked to be sent less (``_core.throttle``), and the optional message
    rate per destination. Thread-safe.

    :meth:`slot` holds one of a throttled destination's connections (waiting while its halved
    limit is in use); :meth:`check` says whether an attempt may start now, or until when it is
    passed over; :meth:`observe` reads a delivery's replies: a request to slow down throttles
    the destination, an accepted message gives a connection back.
    """

    rules: ThrottleRules = attrs.Factory(ThrottleRules)
    _states: dict[str, Throttle] = attrs.field(factory=dict, init=False)
    _buckets: dict[str, RateBucket] = attrs.field(factory=dict, init=False)
    _active: dict[str, int] = attrs.field(factory=dict, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _freed: threading.Condition = attrs.field(init=False, repr=False)
    _waiters: int = attrs.field(default=0, init=False, repr=False)
    _bucket_bound: int = attrs.field(default=_MANY_BUCKETS, init=False, repr=False)
    _throttle_bound: int = attrs.field(factory=lambda: _MANY_THROTTLED, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._freed = threading.Condition(self._lock)

    def throttled(self) -> dict[str, Throttle]:
        """The destinations slowed down now, by name."""
        with self._lock:
            return dict(self._states)

    @contextlib.contextmanager
    def slot(self, key: str) -> Iterator[None]:
        self.take(key)
        try:
            yield
        finally:
            self.give(key)

    def take(self, key: str, clock: Callable[[], datetime] | None = None) -> None:
        """Hold one of ``key``'s connections, waiting while its throttled limit is in use;
        every ``take`` is followed by one :meth:`give`, as :meth:`slot` does.

        With ``clock``, a destination in its wait period is not waited for: :meth:`check`
        passes the attempt over at once, and a delivery thread that waited for one of its
        connections first (while deliveries started before it asked finish, a big message's
        minutes) was kept from every other destination meanwhile."""
        with self._lock:
            while (state := self._states.get(key)) is not None and self._active.get(
                key, 0
            ) >= state.connections:
                if clock is not None and state.waiting(clock()):
                    break
                self._waiters += 1
                try:
                    self._freed.wait()
                finally:
                    self._waiters -= 1
            self._active[key] = self._active.get(key, 0) + 1

    def give(self, key: str) -> None:
        with self._lock:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
            if self._waiters:
                self._freed.notify_all()

    def check(self, key: str, clock: Callable[[], datetime]) -> tuple[Reply, datetime] | None:
        """``None`` if a delivery to ``key`` may start now (a message's token taken, when a
        rate is set); else the reply for its recipients and when to try again. The time is read
        only when ``key`` is throttled or a rate is set."""
        if key not in self._states and self.rules.max_messages_per_minute is None:
            return None  # the usual case, seen without the lock (a dict look is atomic)
        now = clock()
        with self._lock:
            held = self._held(key, now)
            if held is not None:
                return held
            rate = self.rules.max_messages_per_minute
            if rate is None:
                return None
            bucket = self._buckets.get(key) or RateBucket.full(rate, now)
            bucket, wait = bucket.take(rate, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._bucket_bound:
                # A bucket untouched for a minute is full again, as a new one would be: those
                # go. (All of them went: a destination that had just spent its rate got a full
                # bucket back.) The bound grows with what a minute really holds.
                full = now - timedelta(minutes=1)
                self._buckets = {k: b for k, b in self._buckets.items() if b.stamp > full}
                self._bucket_bound = max(_MANY_BUCKETS, 2 * len(self._buckets))
        if wait is None:
            return None
        until = now + wait
        reply = Reply(
            451,
            "4.7.0",
            f"{key}: at most {rate} message(s) a minute (max_messages_per_minute); next at "
            f"{until.isoformat(timespec='seconds')}",
        )
        return reply, until

    def observe(
        self, key: str, replies: Iterable[Reply], clock: Callable[[], datetime]
    ) -> Throttle | None:
        """Learn from a delivery's replies; the new throttle when the receiver asked to slow
        down, else ``None``."""
        replies = list(replies)
        if not self._states and all(200 <= r.code < 300 for r in replies):
            return None  # the usual case: nothing throttled, nothing asked (no lock taken)
        now = clock()
        asking = next((r for r in replies if asks_to_slow_down(r)), None)
        with self._lock:
            state = self._states.get(key)
            if asking is not None:
                if state is None and len(self._states) >= self._throttle_bound:
                    self._forget_quiet(now)
                state = (state or Throttle.fresh(self.rules)).asked(asking, now, self.rules)
                self._states[key] = state
                return state
            if state is not None and any(200 <= r.code < 300 for r in replies):
                recovered = state.accepted(self.rules)
                if recovered.slowed:
                    self._states[key] = recovered
                else:
                    del self._states[key]
                    log.info("%s: no longer throttled, deliveries go through again", key)
                self._freed.notify_all()
        return None

    def waiting(self, key: str, clock: Callable[[], datetime]) -> tuple[Reply, datetime] | None:
        """What :meth:`check` says while ``key`` waits after asking to slow down, without a
        rate's token: for a delivery about to connect, which may have waited for a connection
        while another one's was refused."""
        if key not in self._states:
            return None  # seen without the lock, as in check
        now = clock()
        with self._lock:
            return self._held(key, now)

    def _held(self, key: str, now: datetime) -> tuple[Reply, datetime] | None:
        state = self._states.get(key)
        if state is None or state.until is None or not state.waiting(now):
            return None
        reply = Reply(
            451,
            "4.7.0",
            f"{key} asked to slow down ({state.reason}); not tried again before "
            f"{state.until.isoformat(timespec='seconds')}, at most "
            f"{state.connections} connection(s) at once",
        )
        return reply, state.until

    def _forget_quiet(self, now: datetime) -> None:
        """Drop the destinations whose wait ended longer than ``max_wait`` ago (under the lock).

        A throttle goes at the destination's next accepted delivery; one that no mail went to
        again stayed for the service's life, and a long run meets many destinations."""
        quiet = now - self.rules.max_wait
        for key in [k for k, s in self._states.items() if s.until is None or s.until < quiet]:
            if not self._active.get(key):
                del self._states[key]
        # The next scan waits until as many again have asked: a thousand destinations all
        # asking within max_wait scanned every one of them for each new one.
        self._throttle_bound = max(_MANY_THROTTLED, 2 * len(self._states))
