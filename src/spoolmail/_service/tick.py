"""A service's tick and its wake-up: what ``MailService.run_once`` hands the delivery threads
(:class:`Tick`), and what ends ``run_forever``'s wait (:class:`Waker`). Kept apart from the
service (``_service.service``), which makes both."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

import attrs

from spoolmail._service.handoff import WAKE
from spoolmail._service.report import Tally
from spoolmail._service.threads import Batch

__all__ = ["Tick", "Waker"]


@attrs.define
class Tick:
    """One tick's deliveries: each due message attempted once, reports joined in due order.

    What it needs of the service comes as callables (no reference back to it): ``pop_due`` the
    ids due now, ``helped`` the other shares' waiting ids to help with (``_service.helping``),
    ``submit(batch, queue_id, helped)`` an attempt handed to the delivery threads,
    ``due_now(queue_id)`` an id scheduled again for the next tick."""

    pop_due: Callable[[], list[str]]
    helped: Callable[[], list[str]]
    submit: Callable[[Batch[Tally], str, bool], None]
    due_now: Callable[[str], None]
    attempted: set[str] = attrs.Factory(set)
    again: list[str] = attrs.Factory(list)
    running: Batch[Tally] = attrs.Factory(Batch)

    def dispatch(self) -> bool:
        """Hand what is due now to the delivery threads; whether anything is running."""
        for queue_id in self.pop_due():
            if queue_id in self.attempted:
                # Attempted once this tick already: whatever its policy says, next tick.
                self.again.append(queue_id)
                continue
            self.attempted.add(queue_id)
            self.submit(self.running, queue_id, False)
        return self.running.started

    def help(self) -> bool:
        """Hand the other shares' waiting messages to the threads, after a flush of everything
        (``_service.helping``); whether anything is running."""
        for queue_id in self.helped():
            if queue_id not in self.attempted:
                self.attempted.add(queue_id)
                self.submit(self.running, queue_id, True)
        return self.running.started

    def collect(self, tally: Tally) -> None:
        # One wait for them all: waiting on each message in turn woke this thread once per
        # message (two context switches, and the GIL handed over twice).
        for attempt in self.running.wait():
            tally.merge(attempt)

    def finish(self) -> None:
        for queue_id in self.again:
            self.due_now(queue_id)


class Waker:
    """A wake-up another thread can give the loop while it waits in ``select`` (for Pickup
    events): a connected socket pair, readable once :meth:`set` wrote a byte into it. Open
    only while ``run_forever`` runs (a service that only ever runs ``run_once`` holds none);
    a :meth:`set` with nobody waiting is dropped, as the loop's next tick comes first anyway.

    A worker that takes handed-off mail (``handoff``) uses its inbox as the pair: the other
    workers' datagrams (queue ids) wake it too, and :meth:`clear` returns what they held. The
    inbox outlives the service (the next one, after a SIGHUP, reads on), so it is not closed.
    """

    def __init__(self, inbox: tuple[socket.socket, socket.socket] | None = None) -> None:
        # Reentrant: set() runs in signal handlers (MailService.stop), on the main thread that
        # may be inside clear() or open() with the lock held; a plain Lock deadlocked there.
        self._lock = threading.RLock()
        self._inbox = inbox
        self._pair: tuple[socket.socket, socket.socket] | None = None

    def open(self) -> int:
        """Open the pair (if not yet); the descriptor to wait on."""
        with self._lock:
            if self._pair is None:
                if self._inbox is not None:
                    self._pair = self._inbox
                else:
                    reader, writer = socket.socketpair()
                    reader.setblocking(False)
                    writer.setblocking(False)
                    self._pair = (reader, writer)
            return self._pair[0].fileno()

    def set(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            if self._pair is not None:
                self._pair[1].send(WAKE)

    def clear(self) -> list[bytes]:
        """Empty the socket; what the other workers sent into an inbox (each datagram)."""
        held: list[bytes] = []
        with self._lock, contextlib.suppress(OSError):
            if self._pair is not None:
                while True:  # until the socket is empty (BlockingIOError)
                    data = self._pair[0].recv(4096)
                    if self._inbox is not None:
                        held.append(data)  # an empty datagram too: the next may not be
                    elif not data:
                        break
        return held

    def close(self) -> None:
        with self._lock:
            if self._pair is not None and self._pair is not self._inbox:
                for end in self._pair:
                    end.close()
            self._pair = None
