"""Workers on one MailRoot (``MailService(share=...)``): each takes its share, none races.

Two services, each on its own Spool over one filesystem (as two worker processes are), on both
filesystems: every message is delivered once, by the worker whose share it is, and operators'
triggers (flush, release) reach both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from spoolmail import MailService, Reply, Router, Share, Spool
from spoolmail._store import pyfs
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

LATER = Reply(451, "4.3.0", "mailbox busy", host="relay.test")


def message(number: int) -> bytes:
    return (
        f"From: alice@example.com\r\nTo: user{number}@remote.test\r\nSubject: {number}\r\n\r\n"
        "body\r\n"
    ).encode()


class Worker:
    """One worker: its own Spool on the shared filesystem, its own service."""

    def __init__(
        self, filesystem: pyfs.FS, share: Share, transport: CapturingTransport, clock: FakeClock
    ) -> None:
        self.spool = Spool(filesystem, clock=clock)
        self.service = MailService(
            self.spool,
            router=Router(local_domains=["example.com"], smart_host="relay.test"),
            host_resolver=StaticResolver(fallback="127.0.0.1"),
            transport=transport,
            clock=clock,
            fqdn="mail.example.com",
            share=share,
            pickup_settle=timedelta(0),  # written by another Spool: no wait for its writer
        )

    def close(self) -> None:
        self.service.close()
        self.spool.close()


@pytest.fixture
def workers(
    filesystem: pyfs.FS, transport: CapturingTransport, clock: FakeClock
) -> Iterator[list[Worker]]:
    made = [Worker(filesystem, share, transport, clock) for share in Share(0, 2).all()]
    yield made
    for worker in made:
        worker.close()


@pytest.fixture
def operator(filesystem: pyfs.FS, clock: FakeClock) -> Iterator[Spool]:
    """An operator's or an application's Spool: no service, no share."""
    with Spool(filesystem, clock=clock) as spool:
        yield spool


def write_pickup(operator: Spool, count: int) -> None:
    store = operator._store
    for number in range(count):
        store.write("Pickup", f"message-{number}.eml", message(number))


def test_workers_divide_pickup_and_deliver_each_message_once(
    workers: list[Worker], operator: Spool, transport: CapturingTransport
) -> None:
    write_pickup(operator, 30)
    submitted = [operator.submit(message(100 + n)) for n in range(10)]  # named <id>.eml
    taken: dict[int, list[str]] = {}
    for index, worker in enumerate(workers):
        report = worker.service.run_once()
        taken[index] = list(report.picked_up)
        assert {queue_id for queue_id, _ in report.delivered} == set(report.picked_up)
        assert all(worker.service.share.owns_id(queue_id) for queue_id in report.picked_up)
    assert taken[0], "both workers had a share"
    assert taken[1], "both workers had a share"
    assert len(taken[0]) + len(taken[1]) == 40
    assert set(submitted) <= set(taken[0]) | set(taken[1])  # submit's ids were kept
    delivered = sorted(m.recipients[0] for m in transport.messages)
    assert delivered == sorted(f"user{n}@remote.test" for n in [*range(30), *range(100, 110)])
    assert operator._store.listdir("Pickup") == []


def test_a_worker_leaves_the_other_share_and_its_dsns_stay_with_it(
    workers: list[Worker], operator: Spool, transport: CapturingTransport
) -> None:
    write_pickup(operator, 20)
    first, second = workers
    transport.answers = {f"user{n}@remote.test": LATER for n in range(20)}
    report = first.service.run_once()
    left = operator._store.listdir("Pickup")
    assert left
    assert all(second.service.share.owns_name(name) for name in left)
    # A rescan schedules only its own share of the Queue.
    first.service.rescan()
    assert first.service._schedule.ids() == set(report.picked_up)


def test_a_flush_reaches_every_worker(
    workers: list[Worker], operator: Spool, transport: CapturingTransport
) -> None:
    write_pickup(operator, 20)
    transport.answers = {f"user{n}@remote.test": LATER for n in range(20)}
    deferred = [set(worker.service.run_once().picked_up) for worker in workers]
    assert all(deferred)
    transport.answers = {}
    operator.flush_queue()
    delivered: list[str] = []
    for worker, mine in zip(workers, deferred, strict=True):
        done = [queue_id for queue_id, _ in worker.service.run_once().delivered]
        # Its own share at least; on OS filesystems the first helps with the other's too
        # (tests/service/test_helping.py).
        assert mine <= set(done) | set(delivered)
        delivered += done
    assert sorted(delivered) == sorted(deferred[0] | deferred[1])  # each once
    assert list(operator.queued()) == []
    assert not [n for n in operator._store.listdir("SortTemp") if n.endswith(".trigger")]


def test_a_release_by_id_reaches_the_worker_whose_message_it_is(
    workers: list[Worker], operator: Spool, transport: CapturingTransport
) -> None:
    write_pickup(operator, 10)
    transport.answers = {f"user{n}@remote.test": LATER for n in range(10)}
    for worker in workers:
        worker.service.run_once()
    chosen = sorted(q.id for q in operator.queued())[:4]
    operator.hold(chosen)
    transport.answers = {}
    operator.release(chosen)  # due now, and a trigger with the ids
    delivered = set()
    for worker in workers:
        mine = {queue_id for queue_id, _ in worker.service.run_once().delivered}
        assert all(worker.service.share.owns_id(queue_id) for queue_id in mine)
        delivered |= mine
    assert delivered == set(chosen)


def test_a_trigger_for_another_worker_is_left_for_it(
    workers: list[Worker], operator: Spool
) -> None:
    store = operator._store
    first, second = workers
    store.write("SortTemp", "abc.def.w1of2.trigger", json.dumps({"all": True}).encode())
    assert first.spool._store.take_triggers().ids == set()  # not first's
    assert store.exists("SortTemp", "abc.def.w1of2.trigger")
    assert second.spool._store.take_triggers().ids is None  # second's: the whole Queue
    assert not store.exists("SortTemp", "abc.def.w1of2.trigger")


@pytest.mark.parametrize("name", ["abc.def.w0of3.trigger", "abc.def.w9of2.trigger", "a.b.trigger"])
def test_a_trigger_of_another_group_or_none_is_every_workers(
    workers: list[Worker], operator: Spool, name: str
) -> None:
    store = operator._store
    store.write("SortTemp", name, json.dumps({"ids": ["x1"]}).encode())
    got: dict[int, Any] = {}
    for index, worker in enumerate(workers):
        got[index] = worker.spool._store.take_triggers().ids
    assert got == {0: {"x1"}, 1: {"x1"}}
    assert not [n for n in store.listdir("SortTemp") if n.endswith(".trigger")]


def test_each_worker_recovers_the_dead_owner_s_claims_of_its_own_share(
    workers: list[Worker],
    operator: Spool,
    transport: CapturingTransport,
    filesystem: pyfs.FS,
    clock: FakeClock,
) -> None:
    """A rescan lists and recovers its own share of the Queue only (four workers on a queue of
    100,000 each sorted out all of it); every share has its worker, so nothing is left."""
    write_pickup(operator, 20)
    transport.answers = {f"user{n}@remote.test": LATER for n in range(20)}
    mine = [set(worker.service.run_once().picked_up) for worker in workers]
    chosen = [sorted(ids)[0] for ids in mine]  # one message of each share
    with Spool(filesystem, clock=clock) as dead:  # a process that dies while delivering them
        for queue_id in chosen:
            assert dead._store.claim_queued(queue_id)
        owner = dead._store.owner
        clock.advance(minutes=11)  # its lease runs out
        for index, worker in enumerate(workers):
            worker.service.rescan()
            claims = [operator._store.queue_files()[q].claims for q in chosen]
            # Worker 0 returned its own message's claim to the Queue, not worker 1's.
            expected = [() if n <= index else (owner,) for n in range(len(chosen))]
            assert claims == expected, index
    transport.answers = {}
    operator.flush_queue()
    delivered = set()
    for worker in workers:
        delivered |= {queue_id for queue_id, _ in worker.service.run_once().delivered}
    assert delivered == mine[0] | mine[1]
