"""Helping: after an operator's flush of everything, a worker of a group whose own share is done
attempts the waiting messages of the other shares too.

Workers divide the Queue by a hash of each id (``_core.shares``), so their shares differ by
chance: 5,000 flushed messages fell 1,198, 1,231, 1,316 and 1,255 to four workers, and the
flush lasted as long as the largest share took, the last tenth of a second with one or two
workers left on two CPUs (bench/README.md, "Twenty-seventh round"). Postfix has one queue
manager and no shares. So a worker that has delivered its own part of a flush goes on with the
others' waiting messages, the newest first (their owners take theirs oldest first), until none
is left.

What makes it safe is what makes any worker's stray attempt safe: a claim is a rename, and only
one process wins it; the loser passes over. What keeps it to the flush: a message is helped
only while its envelope is older than the flush order's file (an attempt since rewrote it: it
was tried; the copy of the order the first worker to see it makes for each other worker bears
the original's time), and a worker schedules only its own share: what a helped
attempt leaves waiting (a deferral, a DSN) is told to its owner with a trigger
(``MailStore.write_trigger``), not kept here, so nothing waits on two schedules or on none.
A flush with a filter (a sender, a domain, ids) is not helped: telling its messages apart
would take reading every waiting envelope of the other shares. Nor does a listening worker help
(``_service.handoff``): it hands its own mail to the others to keep its CPU for its sessions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from spoolmail._core.shares import Share
from spoolmail._store.store import QueueFiles

__all__ = ["Helping"]


class Helping:
    """One worker's help with the other shares of a flush of everything. Thread-safe where the
    delivery threads call it (:meth:`untouched`, :meth:`hands_back`)."""

    def __init__(self, share: Share) -> None:
        self._share = share
        self._enabled = True
        # When the flush of everything was written (time.time_ns()'s scale); None: not helping.
        self._since: int | None = None
        self._lock = threading.Lock()
        self._told: set[str] = set()  # other shares' ids a helped attempt left waiting
        # Whether a pass has been made since the flush, and whether the last one attempted
        # anything: a pass that attempted nothing ends the help.
        self._passed = False
        self._attempted = False

    @property
    def active(self) -> bool:
        return self._since is not None

    def never(self) -> None:
        """Never help: a listening worker (``_service.handoff``) leaves delivery to the others,
        its CPU to its SMTP sessions."""
        self._enabled = False
        self._since = None

    def start(self, issued: int | None) -> None:
        """A flush of everything written at ``issued`` (its order's mtime; ``None``: no OS file,
        no help) was taken: help once this worker's own part is done."""
        if not self._enabled or self._share.whole or issued is None:
            return
        self._since = issued if self._since is None else max(self._since, issued)
        self._passed = False

    @property
    def over(self) -> bool:
        """Whether the help is done: the last pass attempted nothing (what waits in the other
        shares was tried since the flush, or taken by its owners). Ends it if so; a pass that
        lists the Queue again at every tick for a backlog of deferred mail would cost that
        listing and a look at each of its envelopes, every tick, for hours."""
        if self._passed and not self._attempted:
            self._since = None
        return self._since is None

    def candidates(self, files: Mapping[str, QueueFiles]) -> list[str]:
        """The other shares' waiting messages in ``files`` (the Queue, listed just now), newest
        first; none ends the help. Starts a pass: :meth:`untouched` notes what it attempts."""
        owns = self._share.owns_id
        found = [
            queue_id
            for queue_id, entry in files.items()
            if entry.envelope and entry.message and not entry.claims and not owns(queue_id)
        ]
        self._passed, self._attempted = True, False
        if not found:
            self._since = None
        return sorted(found, reverse=True)

    def untouched(self, signature: tuple[int, ...] | None) -> bool:
        """Whether an envelope of ``signature`` (``MailStore.signature``: inode, mtime, size)
        is as it was when the flush was written: not rewritten by an attempt since. ``None`` (gone,
        or no OS file to look at) is not."""
        since = self._since
        # Strictly older: the kernel stamps files with a clock of a few milliseconds' grain, so
        # an envelope an attempt rewrote just after the order can bear the order's very time.
        # One deferred just before it, in the same grain, is left to its owner's flush.
        untouched = since is not None and signature is not None and signature[1] < since
        if untouched:
            self._attempted = True  # a plain flag: any thread that sets it sets it true
        return untouched

    def hands_back(self, queue_id: str) -> bool:
        """Whether ``queue_id``, about to be scheduled here, is another share's that a helped
        attempt left waiting: noted for :meth:`tell_owners` instead."""
        if self._since is None or self._share.owns_id(queue_id):
            return False
        with self._lock:
            self._told.add(queue_id)
        return True

    def tell_owners(self, write_trigger: Callable[[Iterable[str]], None]) -> None:
        """Ask the owners to schedule what :meth:`hands_back` noted (one trigger)."""
        with self._lock:
            told, self._told = self._told, set()
        if told:
            write_trigger(sorted(told))
