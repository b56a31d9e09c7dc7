"""The delivery threads: up to a number of threads that run what a service's tick hands them,
and one wait for all of a tick's work.

A tick hands each due message to a thread (``tick.Tick``) and waits for them all before
it ends. ``concurrent.futures.ThreadPoolExecutor`` did that with a ``Future`` for every
message: a ``Condition`` and its lock made per message, a semaphore looked at per submit, the
result set under the condition, and a ``wait`` that took every future's lock in turn: 15-16 us
of CPU a message. Here a message costs one put and one get on a ``SimpleQueue`` and two holds
of one plain lock, 5-6 us (bench/README.md, "Eighth round"); a tick's whole batch has one lock
its waiter blocks on, released by whichever thread finishes the batch's last piece of work.

The threads are daemons: a tick waits for everything it started, so when a program ends
without :meth:`DeliveryThreads.close` they only wait for work, and must not keep the
interpreter from ending. Nothing here knows of mail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

__all__ = ["Batch", "DeliveryThreads"]

R = TypeVar("R")


class Batch(Generic[R]):
    """What one tick handed the threads since its last :meth:`wait`: each piece of work's result,
    and whether all are in. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._added = 0
        # By the order of adding: a tick joins its reports in due order, whichever thread ends
        # first (and the command line prints them so).
        self._results: dict[int, R] = {}
        self._error: BaseException | None = None
        # Held while any piece of work is pending: taken by the first add, let go by the done
        # that leaves none pending (a plain Lock may be released by another thread), both under
        # _lock, so a wait blocks on it and nothing else.
        self._running = threading.Lock()

    @property
    def started(self) -> bool:
        """Whether anything was added since the last :meth:`wait`."""
        return bool(self._added)

    def add(self) -> int:
        """Count one more piece of work in; its place in the order of the results."""
        with self._lock:
            if not self._pending:
                self._running.acquire()
            self._pending += 1
            self._added += 1
            return self._added - 1

    def done(self, place: int, result: R) -> None:
        with self._lock:
            self._results[place] = result
            self._finish()

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._error = self._error or error
            self._finish()

    def _finish(self) -> None:
        # Under _lock.
        self._pending -= 1
        if not self._pending:
            self._running.release()

    def wait(self) -> list[R]:
        """Block until every piece of work added is done; their results, in the order they
        were added. An exception a piece of work raised is raised here (the first of them)."""
        with self._running:
            pass
        with self._lock:
            results, self._results = self._results, {}
            error, self._error = self._error, None
            self._added = 0
        if error is not None:
            raise error
        return [results[place] for place in sorted(results)]


class DeliveryThreads:
    """Up to ``count`` daemon threads, started as work needs them, running ``work(argument)`` for
    each :meth:`submit` and telling its batch the result."""

    def __init__(self, count: int, *, name: str) -> None:
        self._count = count
        self._name = name
        self._queue: SimpleQueue[tuple[Batch[Any], int, Callable[[str], Any], str] | None]
        self._queue = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Threads waiting for work that no submit has counted on yet.
        self._idle = 0

    def submit(self, batch: Batch[R], work: Callable[[str], R], argument: str) -> None:
        self._queue.put((batch, batch.add(), work, argument))
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes it
                return
            if len(self._threads) >= self._count:
                return  # it waits for the first thread done
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            batch, place, work, argument = item
            error: BaseException | None = None
            try:
                result = work(argument)
            except BaseException as exc:  # noqa: BLE001 (raised again by the batch's wait)
                error = exc
            # Idle before the batch hears of it: work its waiter submits next finds this thread.
            with self._lock:
                self._idle += 1
            if error is not None:
                batch.failed(error)
            else:
                batch.done(place, result)

    def close(self) -> None:
        """Let every thread finish what it was given, and end it."""
        with self._lock:
            threads, self._threads, self._idle = self._threads, [], 0
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()
