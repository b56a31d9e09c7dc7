"""The delivery threads (``_service.threads``): every piece of work runs once, a batch's wait
returns when all of it is done, and no more threads run than asked."""

from __future__ import annotations

import threading
from contextlib import closing

import pytest

from spoolmail._service.threads import Batch, DeliveryThreads


def test_a_batch_waits_for_all_its_work_and_gives_each_result() -> None:
    with closing(DeliveryThreads(3, name="test")) as threads:
        batch: Batch[str] = Batch()
        assert not batch.started
        for n in range(50):
            threads.submit(batch, str.upper, f"id{n}")
        assert batch.started
        assert sorted(batch.wait()) == sorted(f"ID{n}" for n in range(50))
        assert not batch.started  # the wait took them
        assert batch.wait() == []  # nothing pending: at once


def test_the_results_come_in_the_order_the_work_was_added_whatever_ends_first() -> None:
    """A tick joins its reports in due order (the command line prints them so)."""
    gates = {str(n): threading.Event() for n in range(6)}

    def work(queue_id: str) -> str:
        gates[queue_id].wait(5)
        return queue_id

    with closing(DeliveryThreads(6, name="order")) as threads:
        batch: Batch[str] = Batch()
        for n in range(6):
            threads.submit(batch, work, str(n))
        for n in reversed(range(6)):  # the last added ends first
            gates[str(n)].set()
        assert batch.wait() == ["0", "1", "2", "3", "4", "5"]


def test_no_more_threads_run_than_asked_and_they_are_reused() -> None:
    running = 0
    most = 0
    lock = threading.Lock()
    names: set[str] = set()
    gate = threading.Event()

    def work(queue_id: str) -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            names.add(threading.current_thread().name)
        gate.wait(5)
        with lock:
            running -= 1
        return queue_id

    with closing(DeliveryThreads(4, name="test")) as threads:
        batch: Batch[str] = Batch()
        for n in range(20):
            threads.submit(batch, work, str(n))
        gate.set()
        assert len(batch.wait()) == 20
        assert most == 4
        assert names == {"test_0", "test_1", "test_2", "test_3"}
        for thread in threading.enumerate():
            if thread.name.startswith("test_"):
                assert thread.daemon  # an exit without close() is not held up
        # A second batch runs on the same threads.
        second: Batch[str] = Batch()
        threads.submit(second, work, "again")
        assert second.wait() == ["again"]
        assert len([t for t in threading.enumerate() if t.name.startswith("test_")]) == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("test_")]


def test_one_thread_is_started_for_work_that_comes_one_at_a_time() -> None:
    with closing(DeliveryThreads(5, name="single")) as threads:
        for n in range(10):
            batch: Batch[int] = Batch()
            threads.submit(batch, len, "x" * n)
            assert batch.wait() == [n]
        assert len([t for t in threading.enumerate() if t.name.startswith("single_")]) == 1


class Stop(BaseException):
    pass


def test_an_exception_a_piece_of_work_raised_is_raised_by_the_wait_after_the_rest() -> None:
    done: list[str] = []

    def work(queue_id: str) -> str:
        if queue_id == "bad":
            raise Stop(queue_id)
        done.append(queue_id)
        return queue_id

    with closing(DeliveryThreads(2, name="test")) as threads:
        batch: Batch[str] = Batch()
        for queue_id in ("a", "bad", "b", "c"):
            threads.submit(batch, work, queue_id)
        with pytest.raises(Stop):
            batch.wait()
        assert sorted(done) == ["a", "b", "c"]  # the others still ran, and were waited for
        assert batch.wait() == []  # the error is spent
        threads.submit(batch, work, "d")  # and the threads go on
        assert batch.wait() == ["d"]


def test_close_lets_given_work_finish() -> None:
    threads = DeliveryThreads(1, name="test")
    batch: Batch[str] = Batch()
    for n in range(5):
        threads.submit(batch, str.strip, f" {n} ")
    threads.close()
    assert batch.wait() == ["0", "1", "2", "3", "4"]  # one thread: in order
