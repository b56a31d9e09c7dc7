"""Sharing one listening socket fairly among worker processes (``spoolmail run --workers``).

Each worker's event loop accepts from the same socket. Left alone, the loop that wakes first
takes every connection waiting, and with ``SO_REUSEPORT`` the kernel hashes each connection to a
worker: either way five lock-step clients can all land in one worker while the other has none
(and, where every worker listens, delivers none of their mail). So each worker
publishes how many sessions it has in a small table the workers share (an anonymous ``mmap``
made before the fork), and a worker accepts a connection only while no other worker has fewer
sessions; else it leaves the connection to them for :data:`PASS_FOR` and looks again. After
:data:`PASSES` looks it accepts anyway, so a worker that stopped (or is slow to wake) holds
nothing up for long; after :data:`FULL_PASSES` (half a second) when it is at its part of
``max_sessions``, since then it could only turn the client away. Only a worker writes its own
slot; a slot is one aligned 8-byte integer, so a reader sees an old or a new count, never half
of one.
"""

from __future__ import annotations

import mmap

__all__ = ["FULL_PASSES", "PASSES", "PASS_FOR", "RETIRED", "SessionCounts", "WorkerSlot"]

PASS_FOR = 0.002  # seconds a worker with more sessions leaves a waiting connection to others
PASSES = 5  # then it takes the connection itself
# A worker at its part of max_sessions leaves a connection to others longer, up to half a
# second: taking it would only turn the client away (421) while another worker has room.
FULL_PASSES = 250
RETIRED = 2**62  # the count of a worker whose listener stopped: nobody leaves it a connection


class SessionCounts:
    """The open sessions of each of ``workers`` processes, in memory they share once forked."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self._memory = mmap.mmap(-1, 8 * workers)
        self._slots = memoryview(self._memory).cast("q")

    def __len__(self) -> int:
        return len(self._slots)

    def slot(self, index: int) -> WorkerSlot:
        """Worker ``index``'s view: it publishes its count there and reads the others'."""
        if not 0 <= index < len(self._slots):
            raise IndexError(f"no worker {index} of {len(self._slots)}")
        return WorkerSlot(self._slots, index)


class WorkerSlot:
    """One worker's place in :class:`SessionCounts`."""

    def __init__(self, slots: memoryview, index: int) -> None:
        self._slots = slots
        self.index = index

    def publish(self, sessions: int) -> None:
        """This worker has ``sessions`` open sessions now."""
        self._slots[self.index] = sessions

    def fewest_elsewhere(self) -> int | None:
        """The fewest sessions another worker has (``None`` with no other worker)."""
        others = [count for i, count in enumerate(self._slots) if i != self.index]
        return min(others) if others else None

    def should_accept(self) -> bool:
        """Whether this worker should take a waiting connection: no other has fewer sessions."""
        fewest = self.fewest_elsewhere()
        return fewest is None or self._slots[self.index] <= fewest
