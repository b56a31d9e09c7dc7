"""Helping after a flush (``_service.helping``): a worker done with its own share of a flush of
everything attempts the other shares' waiting messages, each still delivered once.

Two services on one MailRoot, each with its own Spool (as two worker processes are). Help needs
an OS filesystem (an envelope's mtime against the flush order's); on MemoryFS each worker keeps
to its share. The first test relays to a real aiosmtpd server on 127.0.0.1 and runs both workers
at once; the others use the capturing transport and the fake clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from spoolmail import MailService, Reply, Router, Share, Spool
from spoolmail._service.handoff import Handoff
from spoolmail._store import pyfs
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests.smtpservers import smtp_server

LATER = Reply(451, "4.3.0", "mailbox busy", host="relay.test")


def message(number: int) -> bytes:
    return (
        f"From: alice@example.com\r\nTo: user{number}@remote.test\r\nSubject: {number}\r\n"
        f"Message-ID: <{number}@example.com>\r\n\r\nbody\r\n"
    ).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Worker:
    def __init__(self, filesystem: pyfs.FS, share: Share, **settings: object) -> None:
        clock = settings.get("clock")
        self.spool = Spool(filesystem, clock=clock) if clock else Spool(filesystem)  # type: ignore[arg-type]
        self.service = MailService(
            self.spool,
            fqdn="mail.example.com",
            share=share,
            pickup_settle=timedelta(0),
            **settings,  # type: ignore[arg-type]
        )

    def owned(self, ids: set[str]) -> set[str]:
        return {queue_id for queue_id in ids if self.service.share.owns_id(queue_id)}

    def close(self) -> None:
        self.service.close()
        self.spool.close()


def queue(operator: Spool, count: int) -> None:
    for number in range(count):
        operator._store.write("Pickup", f"message-{number}.eml", message(number))


def delivered(*reports: object) -> list[str]:
    return [queue_id for report in reports for queue_id, _ in report.delivered]  # type: ignore[attr-defined]


@pytest.fixture
def os_root(tmp_path: Path) -> Iterator[pyfs.FS]:
    root = tmp_path / "MailRoot"
    root.mkdir()
    with pyfs.OSFS(str(root)) as filesystem:
        yield filesystem


@contextlib.contextmanager
def capturing_pair(
    filesystem: pyfs.FS, clock: FakeClock
) -> Iterator[tuple[list[Worker], CapturingTransport]]:
    """Two workers relaying through one capturing transport; closed after."""
    transport = CapturingTransport()
    workers = [
        Worker(
            filesystem,
            share,
            router=Router(local_domains=["example.com"], smart_host="relay.test"),
            host_resolver=StaticResolver(fallback="127.0.0.1"),
            transport=transport,
            clock=clock,
        )
        for share in Share(0, 2).all()
    ]
    try:
        yield workers, transport
    finally:
        for worker in workers:
            worker.close()


@pytest.fixture
def pair(
    filesystem: pyfs.FS, clock: FakeClock
) -> Iterator[tuple[list[Worker], CapturingTransport]]:
    """On MemoryFS and on OSFS."""
    with capturing_pair(filesystem, clock) as made:
        yield made


@pytest.fixture
def os_pair(
    os_root: pyfs.FS, clock: FakeClock
) -> Iterator[tuple[list[Worker], CapturingTransport]]:
    """On OSFS only."""
    with capturing_pair(os_root, clock) as made:
        yield made


def defer_all(workers: list[Worker], transport: CapturingTransport, count: int) -> set[str]:
    """``count`` messages queued by the workers from Pickup and deferred (451) by each in turn;
    the transport still answers 451 after. Their ids."""
    queue(workers[0].spool, count)
    transport.answers = {f"user{n}@remote.test": LATER for n in range(count)}
    for worker in workers:
        worker.service.run_once()
    return deferred_earlier(workers[0].spool)


def deferred_earlier(spool: Spool) -> set[str]:
    """The ids of the Queue, their envelopes dated a second back on OS filesystems: deferred
    before the flush the test then writes, as mail waiting for a flush was. Files bear a clock
    of a few milliseconds' grain, in which a helper takes no envelope as older than the order."""
    ids = {item.id for item in spool.queued()}
    store = spool._store
    if store._os_root is not None:
        for queue_id in ids:
            path = store.fs.getsyspath(f"/Queue/{queue_id}.env")
            stamp = os.stat(path).st_mtime_ns - 1_000_000_000
            os.utime(path, ns=(stamp, stamp))
    return ids


def triggers(spool: Spool) -> list[dict[str, object]]:
    store = spool._store
    return [
        json.loads(store.read("SortTemp", name))
        for name in store.listdir("SortTemp")
        if name.endswith(".trigger")
    ]


def test_both_workers_at_once_deliver_every_flushed_message_once_over_smtp(
    os_root: pyfs.FS,
) -> None:
    port = free_port()
    workers = [
        Worker(os_root, share, router=Router(smart_host=f"[127.0.0.1]:{port}"))
        for share in Share(0, 2).all()
    ]
    try:
        with Spool(os_root) as operator:
            queue(operator, 60)
            for worker in workers:  # nothing listens yet: every message is deferred
                report = worker.service.run_once()
                assert report.picked_up
                assert len(report.deferred) == len(report.picked_up)
            waiting = deferred_earlier(operator)
            assert len(waiting) == 60
            with smtp_server(port=port) as server:
                operator.flush_queue()
                reports: list[object] = []
                threads = [
                    threading.Thread(target=lambda w=w: reports.append(w.service.run_once()))
                    for w in workers
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
                got = Counter(m.rcpt_tos[0] for m in server.messages)
            assert got == Counter(f"user{n}@remote.test" for n in range(60))  # each once
            assert sorted(delivered(*reports)) == sorted(waiting)
            assert list(operator.queued()) == []
    finally:
        for worker in workers:
            worker.close()


def test_a_worker_done_with_its_share_delivers_the_other_shares_flushed_mail(
    pair: tuple[list[Worker], CapturingTransport], filesystem: pyfs.FS
) -> None:
    (first, second), transport = pair
    waiting = defer_all([first, second], transport, 30)
    transport.answers = {}
    first.spool.flush_queue()
    helped = set(delivered(first.service.run_once()))
    if isinstance(filesystem, pyfs.MemoryFS):
        assert helped == first.owned(waiting)  # no mtimes to go by: each keeps to its share
        assert set(delivered(second.service.run_once())) == second.owned(waiting)
    else:
        assert helped == waiting
        assert delivered(second.service.run_once()) == []
    assert len(transport.messages) == 30
    assert list(first.spool.queued()) == []


def test_what_a_helped_attempt_leaves_waiting_goes_back_to_its_owner(
    os_pair: tuple[list[Worker], CapturingTransport],
) -> None:
    (first, second), transport = os_pair
    theirs = second.owned(defer_all([first, second], transport, 20))
    first.spool.flush_queue()
    report = first.service.run_once()  # still 451: its own and the second's deferred again
    assert theirs <= {queue_id for queue_id, _ in report.deferred}
    assert not theirs & first.service._schedule.ids()  # not kept on the helper's schedule
    # ... but told to their owner, which schedules them at their new time.
    [told] = [order for order in triggers(first.spool) if "ids" in order]
    assert set(told["ids"]) == theirs  # type: ignore[arg-type]
    second.service.run_once()
    assert theirs <= second.service._schedule.ids()
    # The help ends: a tick that helped with nothing ends it, so that a backlog of the other
    # shares' deferred mail is not listed and looked at again at every tick.
    tried = len(transport.messages)
    for _ in range(2):
        first.service.run_once()
    assert not first.service._helping.active
    assert len(transport.messages) == tried


def test_a_message_tried_since_the_flush_is_not_tried_again_by_a_helper(
    os_pair: tuple[list[Worker], CapturingTransport],
) -> None:
    (first, second), transport = os_pair
    waiting = defer_all([first, second], transport, 20)
    first.spool.flush_queue()
    # The second flushes its share, then helps with the first's: all tried, all deferred again.
    assert {q for q, _ in second.service.run_once().deferred} == waiting
    # Files bear a clock of a few milliseconds' grain: those attempts can bear the order's very
    # time. The copy the second made for the first bears the order's.
    store = first.spool._store
    [copy] = [name for name in store.listdir("SortTemp") if name.endswith(".w0of2.trigger")]
    issued = Path(store.fs.getsyspath(f"/SortTemp/{copy}")).stat().st_mtime_ns
    for queue_id in waiting:
        os.utime(store.fs.getsyspath(f"/Queue/{queue_id}.env"), ns=(issued, issued))
    tried = len(transport.messages)
    transport.answers = {}
    # The first flushes its own share again (its order), and none of the second's.
    assert set(delivered(first.service.run_once())) == first.owned(waiting)
    assert len(transport.messages) - tried == len(first.owned(waiting))


def test_the_copy_of_a_flush_order_bears_the_time_it_was_issued(
    os_pair: tuple[list[Worker], CapturingTransport],
) -> None:
    """The help of every worker goes by when the order was written, not by when the worker
    that took it first made each other worker its copy (fsync'd, a millisecond or more each)."""
    (first, second), transport = os_pair
    defer_all([first, second], transport, 4)
    first.spool.flush_queue()
    store = first.spool._store
    [order] = [name for name in store.listdir("SortTemp") if name.endswith(".trigger")]
    issued = Path(store.fs.getsyspath(f"/SortTemp/{order}")).stat().st_mtime_ns - 3_000_000_000
    os.utime(store.fs.getsyspath(f"/SortTemp/{order}"), ns=(issued, issued))
    second.service.run_once()  # takes the order, leaves the first its copy
    [copy] = [name for name in store.listdir("SortTemp") if name.endswith(".w0of2.trigger")]
    assert Path(store.fs.getsyspath(f"/SortTemp/{copy}")).stat().st_mtime_ns == issued


def test_a_flush_with_a_filter_is_not_helped(
    pair: tuple[list[Worker], CapturingTransport],
) -> None:
    (first, second), transport = pair
    waiting = defer_all([first, second], transport, 20)
    transport.answers = {}
    first.spool.flush_queue(domain="remote.test")
    assert set(delivered(first.service.run_once())) == first.owned(waiting)
    assert set(delivered(second.service.run_once())) == second.owned(waiting)


def test_without_a_flush_a_worker_keeps_to_its_share(
    pair: tuple[list[Worker], CapturingTransport], clock: FakeClock
) -> None:
    (first, second), transport = pair
    waiting = defer_all([first, second], transport, 20)
    transport.answers = {}
    clock.advance(timedelta(days=1))  # every message due again by its retry time
    assert set(delivered(first.service.run_once())) == first.owned(waiting)
    assert {item.id for item in first.spool.queued()} == second.owned(waiting)


def test_a_listening_worker_does_not_help(
    os_pair: tuple[list[Worker], CapturingTransport],
) -> None:
    (listening, taking), transport = os_pair
    handoff = Handoff(2, 1)  # the first listens, hands its sessions' mail to the second
    try:
        for worker in (listening, taking):
            worker.service._use_handoff(handoff)
        # Pickup is never handed off: each takes its own share.
        waiting = defer_all([listening, taking], transport, 20)
        transport.answers = {}
        listening.spool.flush_queue()
        assert set(delivered(listening.service.run_once())) == listening.owned(waiting)
        assert set(delivered(taking.service.run_once())) == taking.owned(waiting)
    finally:
        handoff.close()
