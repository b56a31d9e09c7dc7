"""The in-memory schedule: which queued message is due when, so a tick costs O(due messages).

A heap of (due time, queue id) with lazy deletion: :meth:`Schedule.set` pushes a new entry and
remembers the id's current time; stale heap entries are skipped when popped. It is built by one
scan of the Queue at start, updated as this process changes the Queue, and rebuilt by the
periodic rescan that notices other processes' changes (Postfix's qmgr rescans every 300 s).
Pure: no files, no clock; times are handed in.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime

__all__ = ["Schedule"]


class Schedule:
    """Due times of queued messages."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, str]] = []
        self._due: dict[str, datetime] = {}
        # Ids an operator's flush made due (Spool.flush_queue), until their attempt takes the
        # mark (take_flushed): that attempt commits the flush with its outcome.
        self._flushed: set[str] = set()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self._due

    def set(self, queue_id: str, due: datetime) -> None:
        """Schedule (or reschedule) ``queue_id`` at ``due``."""
        if self._due.get(queue_id) == due:
            return
        self._due[queue_id] = due
        heapq.heappush(self._heap, (due, queue_id))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._compact()

    def ids(self) -> frozenset[str]:
        """Every scheduled id."""
        return frozenset(self._due)

    def discard(self, queue_id: str) -> None:
        self._due.pop(queue_id, None)
        self._flushed.discard(queue_id)

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()
        self._flushed.clear()

    def flush(self, queue_ids: Iterable[str], now: datetime) -> int:
        """Make the scheduled ones of ``queue_ids`` due at ``now``, marked as flushed; how many.
        Ids not scheduled (held, being attempted, unknown) are left alone."""
        count = 0
        for queue_id in queue_ids:
            if queue_id in self._due:
                self.set(queue_id, now)
                self._flushed.add(queue_id)
                count += 1
        return count

    def take_flushed(self, queue_id: str) -> bool:
        """Whether a flush marked ``queue_id`` (the mark goes: its attempt is about to begin)."""
        if queue_id in self._flushed:
            self._flushed.discard(queue_id)
            return True
        return False

    def flushed(self) -> frozenset[str]:
        """The ids flushed whose attempt has not begun."""
        return frozenset(self._flushed)

    def next_due(self) -> datetime | None:
        """The earliest due time, or ``None`` when nothing is scheduled."""
        while self._heap:
            due, queue_id = self._heap[0]
            if self._due.get(queue_id) == due:
                return due
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: datetime, *, limit: int | None = None) -> list[str]:
        """Remove and return the ids due at ``now``, earliest first (at most ``limit``)."""
        due_ids: list[str] = []
        while self._heap and (limit is None or len(due_ids) < limit):
            due, queue_id = self._heap[0]
            if due > now:
                break
            heapq.heappop(self._heap)
            if self._due.get(queue_id) == due:
                del self._due[queue_id]
                due_ids.append(queue_id)
        return due_ids

    def _compact(self) -> None:
        self._heap = [(due, queue_id) for queue_id, due in self._due.items()]
        heapq.heapify(self._heap)
