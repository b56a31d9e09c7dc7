"""Connections per host: slow start, the per-host limit, one waiter woken per freed slot."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from spoolmail._core.routing import Target
from spoolmail._service.destinations import Concurrency

HOST = Target("127.0.0.11", name="mx1.test")
OTHER = Target("127.0.0.12", name="mx2.test")


def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for another thread to reach a state (polled; fails after 5 s instead of hanging)."""
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


class Holder:
    """A thread that takes a slot for ``target`` and keeps it until released."""

    def __init__(self, concurrency: Concurrency, target: Target) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(concurrency, target), daemon=True)
        self.thread.start()

    def _run(self, concurrency: Concurrency, target: Target) -> None:
        with concurrency.slot(target):
            self.inside.set()
            self.release.wait(5)

    def finish(self) -> None:
        self.release.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for holder in made:
        holder.finish()


def waiting(concurrency: Concurrency, target: Target) -> int:
    return concurrency._waiting.get(target, 0)


def test_an_unproven_host_gets_one_connection_at_a_time(holders: list[Holder]) -> None:
    concurrency = Concurrency(per_host=3)
    first = Holder(concurrency, HOST)
    holders.append(first)
    assert first.inside.wait(5)
    second = Holder(concurrency, HOST)
    holders.append(second)
    until(lambda: waiting(concurrency, HOST) == 1, "the second thread waits")
    assert not second.inside.is_set()
    # Another host is not held up by this one.
    other = Holder(concurrency, OTHER)
    holders.append(other)
    assert other.inside.wait(5)
    first.finish()
    assert second.inside.wait(5)


def test_a_proven_host_gets_up_to_the_limit_and_no_more(holders: list[Holder]) -> None:
    concurrency = Concurrency(per_host=3)
    first = Holder(concurrency, HOST)
    holders.append(first)
    assert first.inside.wait(5)
    waiters = [Holder(concurrency, HOST) for _ in range(3)]
    holders.extend(waiters)
    until(lambda: waiting(concurrency, HOST) == 3, "three threads wait")
    concurrency.answered(HOST, alive=True)  # the limit goes from one to three
    until(lambda: sum(w.inside.is_set() for w in waiters) == 2, "two more are let in")
    until(lambda: waiting(concurrency, HOST) == 1, "one still waits")
    first.finish()
    assert all(w.inside.wait(5) for w in waiters)


def test_a_silent_host_drops_back_to_one(holders: list[Holder]) -> None:
    concurrency = Concurrency(per_host=3)
    concurrency.answered(HOST, alive=True)
    inside = [Holder(concurrency, HOST) for _ in range(2)]
    holders.extend(inside)
    assert all(h.inside.wait(5) for h in inside)
    concurrency.answered(HOST, alive=False)
    late = Holder(concurrency, HOST)
    holders.append(late)
    until(lambda: waiting(concurrency, HOST) == 1, "the late thread waits")
    inside[0].finish()
    assert not late.inside.wait(0.05)  # one still inside: the limit is one again
    inside[1].finish()
    assert late.inside.wait(5)


def test_hosts_no_longer_in_use_are_forgotten() -> None:
    concurrency = Concurrency(per_host=3)
    for number in range(100):
        with concurrency.slot(Target(f"127.0.0.{number + 1}")):
            pass
    assert concurrency._active == concurrency._waiting == concurrency._freed == {}


def test_an_error_inside_the_slot_frees_it() -> None:
    concurrency = Concurrency(per_host=1)
    with pytest.raises(RuntimeError), concurrency.slot(HOST):
        raise RuntimeError("delivery failed")
    with concurrency.slot(HOST):  # would wait for ever if the slot were still taken
        pass
