"""The listener's group commit: one thread that queues what DATA brought, several at once.

Sessions hand their message over with :meth:`Committer.submit` (on the event loop) and await
the future it returns; the thread takes everything handed over since its last round and
commits it with one :meth:`Spool.admit_group` (the files of all of them written, then one sync
for all), then settles the futures on the loop in one callback. Each session's ``250`` is sent
only when its own message is durable; while one group syncs, the next gathers, so under load a
sync serves several sessions, and when one session is alone it costs what ``admit`` costs.
Writes only through ``Spool.admit_group``; never touches a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Sequence

from spoolmail._store.spool import Admission, Spool

__all__ = ["Committer"]

log = logging.getLogger("spoolmail.listener")

# A group's size bound: a sync is not kept waiting for an endless stream of new arrivals.
MAX_GROUP = 64

_Pending = tuple[Admission, "asyncio.Future[str]"]


class Committer:
    """The thread that commits the listener's messages into ``spool``'s Queue in groups."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
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
            first = self._handed.get()
            group = [] if first is None else [first]
            ending = first is None
            while len(group) < MAX_GROUP:
                try:
                    more = self._handed.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    ending = True
                else:
                    group.append(more)
            if group:
                self._commit(group)

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
