"""The listener's group commit: one thread that queues what DATA brought, several at once.

Sessions hand their message over with :meth:`Committer.submit` (on the event loop) and await
the future it returns; the thread takes everything handed over since its last round and
commits it with one :meth:`Spool.admit_group` (the files of all of them written, then one sync
for all), then settles the futures on the loop in one callback. Each session's ``250`` is sent
only when its own message is durable; while one group syncs, the next gathers, so under load a
sync serves several sessions, and when one session is alone it costs what ``admit`` costs.

A group also waits a little (at most :data:`GATHER`) for the messages of transactions under
way: sessions tell :meth:`Committer.opened` when MAIL is
accepted and :meth:`Committer.closed` when the transaction ends (its message handed over, RSET,
a refusal, the client gone). Clients that wait for each reply (most, and Postfix's
``smtp-source``) otherwise split into two halves that take turns, each paying a sync: waiting
for the other half makes one group of all of them, with one sync, one Queue fsync and one
wake-up of the loop. With no other transaction under way nothing waits.
Writes only through ``Spool.admit_group``; never touches a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence

from spoolmail._store.spool import Admission, Spool

__all__ = ["Committer"]

log = logging.getLogger("spoolmail.listener")

# A group's size bound: a sync is not kept waiting for an endless stream of new arrivals.
MAX_GROUP = 64
# How long a group may wait for the messages of transactions under way (seconds): a few round
# trips on a LAN, and short beside the sync it saves.
GATHER = 0.005

_Pending = tuple[Admission, "asyncio.Future[str]"]


class Committer:
    """The thread that commits the listener's messages into ``spool``'s Queue in groups."""

    def __init__(self, spool: Spool, *, gather: float = GATHER) -> None:
        self._spool = spool
        self._gather = gather
        # Transactions under way: changed on the loop only, read by the thread (a hint, so no
        # lock: a stale count costs a group at most ``gather`` seconds or one more sync).
        self._open = 0
        # A SimpleQueue: the loop's put is one call in C, no lock or condition in Python.
        self._handed: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="spoolmail-commit", daemon=True)
        self._thread.start()

    def submit(self, admission: Admission) -> asyncio.Future[str]:
        """Hand ``admission`` over (on the event loop); the future of its queue id, or of the
        exception ``Spool.admit`` would have raised."""
        if self._stopping:
            raise RuntimeError("the listener's committer has stopped")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._handed.put((admission, future))
        return future

    def opened(self) -> None:
        """On the loop: a session's transaction began (MAIL accepted); its message may follow."""
        self._open += 1

    def closed(self) -> None:
        """On the loop: that transaction ended, its message handed over (call this first) or
        not (RSET, a refusal, the client gone)."""
        self._open -= 1

    @property
    def under_way(self) -> int:
        """How many transactions are under way (opened and not yet closed)."""
        return self._open

    def stop(self) -> None:
        """Commit what was handed over already, then end the thread."""
        self._stopping = True
        self._handed.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        ending = False
        while not ending:
            group: list[_Pending] = []
            ending = self._take(group)
            if group:
                self._commit(group)

    def _take(self, group: list[_Pending]) -> bool:
        """Fill ``group`` with what is handed over (waiting for the first, then up to
        ``gather`` seconds while transactions are under way); True once stop() was asked."""
        item = self._handed.get()
        ending = False
        deadline = 0.0
        while True:
            if item is None:
                ending = True
            else:
                group.append(item)
            if len(group) >= MAX_GROUP:
                return ending
            try:
                item = self._handed.get_nowait()
                continue
            except queue.Empty:
                pass
            if ending or not group or self._open <= 0:
                return ending
            now = time.monotonic()
            if not deadline:
                deadline = now + self._gather
            if now >= deadline:
                return ending
            try:
                item = self._handed.get(timeout=deadline - now)
            except queue.Empty:
                return ending

    def _commit(self, group: Sequence[_Pending]) -> None:
        try:
            results = self._spool.admit_group([admission for admission, _ in group])
        except Exception as exc:  # a bug: each session of the group answers 451, none hangs
            log.exception("committing %d messages failed", len(group))
            results = [exc] * len(group)
        loop = group[0][1].get_loop()
        # RuntimeError: the loop has closed (the listener stopped), no one waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, group, results)


def _settle(group: Sequence[_Pending], results: Sequence[str | Exception]) -> None:
    """On the loop: each session learns its message's fate (unless it went away meanwhile)."""
    for (_, future), result in zip(group, results, strict=True):
        if future.done():
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)
