"""The hand-off (``_service.handoff``): a listening worker names what it accepts in the share of a
worker that does not listen and tells that one, which delivers it.

Two services, each on its own Spool over one filesystem (as two worker processes are), joined by
a real ``Handoff`` (its datagram socket pairs): the listener's messages are delivered by the
taker, once; a full inbox, a taker that is gone and hostile datagrams lose nothing.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail import MailService, Report, Router, Share, Spool
from spoolmail._core.ids import QueueIds
from spoolmail._service.handoff import WAKE, Handoff, received
from spoolmail._service.tick import Waker
from spoolmail._store import pyfs
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests import waiting

LISTENER, TAKER = Share(0, 2), Share(1, 2)


class Worker:
    """One worker: its own Spool on the shared filesystem, its own service and transport."""

    def __init__(self, filesystem: pyfs.FS, share: Share, clock: FakeClock) -> None:
        self.transport = CapturingTransport()
        self.spool = Spool(filesystem, clock=clock)
        self.service = MailService(
            self.spool,
            router=Router(local_domains=["example.com"], smart_host="relay.test"),
            host_resolver=StaticResolver(fallback="127.0.0.1"),
            transport=self.transport,
            clock=clock,
            fqdn="mail.example.com",
            share=share,
        )

    def accept(self, number: int) -> str:
        """What a listener's session does when DATA ends: an id from new_id, then admit."""
        queue_id = self.spool.new_id()
        return self.spool.admit(
            f"Subject: {number}\r\n\r\nbody\r\n".encode(),
            sender="alice@client.test",
            recipients=[f"user{number}@remote.test"],
            origin="smtp:127.0.0.1",
            queue_id=queue_id,
        )

    def sent(self) -> list[str]:
        return [sent.queue_id for sent in self.transport.messages]

    def close(self) -> None:
        self.service.close()
        self.spool.close()


@pytest.fixture
def handoff() -> Iterator[Handoff]:
    made = Handoff(2, 1)
    yield made
    made.close()


@pytest.fixture
def listener(filesystem: pyfs.FS, clock: FakeClock, handoff: Handoff) -> Iterator[Worker]:
    worker = Worker(filesystem, LISTENER, clock)
    worker.service._use_handoff(handoff)
    yield worker
    worker.close()


def taker(filesystem: pyfs.FS, clock: FakeClock, handoff: Handoff) -> Worker:
    worker = Worker(filesystem, TAKER, clock)
    worker.service._use_handoff(handoff)
    return worker


def delivered(report: Report) -> list[str]:
    return sorted(queue_id for queue_id, _recipient in report.delivered)


def serve_until(worker: Worker, count: int) -> None:
    """``run_forever`` in a thread (woken by its inbox, not by time) until ``count`` are sent."""
    loop = threading.Thread(target=worker.service.run_forever, kwargs={"poll_interval": 30.0})
    loop.start()
    try:
        waiting.until(f"{count} sent", lambda: len(worker.transport.messages) >= count)
    finally:
        worker.service.stop()
        loop.join(10)
    assert not loop.is_alive()


def test_what_a_listener_accepts_the_taker_delivers_once(
    filesystem: pyfs.FS, clock: FakeClock, handoff: Handoff, listener: Worker
) -> None:
    ids = [listener.accept(number) for number in range(20)]
    assert all(TAKER.owns_id(queue_id) for queue_id in ids)  # named in the taker's share
    assert delivered(listener.service.run_once()) == []  # told the taker; kept none itself
    other = taker(filesystem, clock, handoff)
    try:
        serve_until(other, 20)
        assert sorted(other.sent()) == sorted(ids)  # each once, all by the taker
        assert listener.sent() == []
        assert list(other.spool.queued()) == []
    finally:
        other.close()


def test_a_full_inbox_leaves_the_message_to_its_listener(
    filesystem: pyfs.FS,
    clock: FakeClock,
    handoff: Handoff,
    listener: Worker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stale = QueueIds().new(clock())
    while Share.of(stale, 2) != TAKER.index:
        stale = QueueIds().new(clock())
    with caplog.at_level(logging.WARNING, logger="spoolmail"):
        while handoff.send(stale):  # the taker is stuck: nothing reads its inbox
            pass
        queue_id = listener.accept(1)
    report = listener.service.run_once()
    assert delivered(report) == [queue_id]  # its claim is a rename: still once
    # Said once, not once a message: the worker's mail goes on all the same.
    told = [r.getMessage() for r in caplog.records if "inbox takes nothing" in r.getMessage()]
    assert len(told) == 1
    assert told[0].startswith(f"hand-off: worker {TAKER.index}'s inbox takes nothing")
    assert listener.sent() == [queue_id]
    # The taker comes back to a full inbox of an id that is no message: nothing happens.
    other = taker(filesystem, clock, handoff)
    inbox = handoff.inbox(TAKER)
    assert inbox is not None
    reports: list[Report] = []
    loop = threading.Thread(
        target=other.service.run_forever,
        kwargs={"poll_interval": 30.0, "on_report": reports.append},
    )
    loop.start()
    try:
        waiting.until("the inbox read", lambda: not select.select([inbox[0]], [], [], 0)[0])
        waiting.until("a tick after", lambda: len(reports) >= 2)
    finally:
        other.service.stop()
        loop.join(10)
        other.close()
    assert [report.errors for report in reports if report.errors] == []
    assert other.sent() == []


def test_nothing_depends_on_the_datagram(
    filesystem: pyfs.FS, clock: FakeClock, handoff: Handoff, listener: Worker
) -> None:
    """The taker was gone (and its inbox emptied): its successor's first rescan of its share
    finds every message the listener handed it."""
    ids = [listener.accept(number) for number in range(5)]
    inbox = handoff.inbox(TAKER)
    assert inbox is not None
    assert sorted(received(drain(inbox[0]), TAKER)) == sorted(ids)  # and lost
    successor = Worker(filesystem, TAKER, clock)  # no hand-off at all
    try:
        assert delivered(successor.service.run_once()) == sorted(ids)
    finally:
        successor.close()


def drain(sock: socket.socket) -> list[bytes]:
    held = []
    while True:
        try:
            held.append(sock.recv(4096))
        except BlockingIOError:
            return held


def test_what_comes_out_of_an_inbox_is_checked(clock: FakeClock) -> None:
    ids = QueueIds()
    mine = next(i for i in iter(lambda: ids.new(clock()), "") if TAKER.owns_id(i))
    others = next(i for i in iter(lambda: ids.new(clock()), "") if LISTENER.owns_id(i))
    datagrams = [
        WAKE,
        mine.encode(),
        others.encode(),  # not this worker's share
        b"../../etc/passwd",
        b"\xff\xfe",
        mine.encode() * 10,  # too long
        b"",
        f"{mine}-d1".encode(),  # a DSN's id is made by the worker that bounced, not handed
    ]
    assert list(received(datagrams, TAKER)) == [mine]


def test_a_group_without_takers_is_refused() -> None:
    for count, listening in ((2, 2), (2, 0), (1, 1)):
        with pytest.raises(ValueError, match="leave none to hand to"):
            Handoff(count, listening)


@given(st.integers(min_value=2, max_value=8), st.data())
def test_takes_is_the_shares_past_the_listening_ones(count: int, data: st.DataObject) -> None:
    listening = data.draw(st.integers(min_value=1, max_value=count - 1))
    clock = FakeClock()
    handoff = Handoff(count, listening)
    try:
        for _ in range(20):
            queue_id = QueueIds().new(clock() + timedelta(seconds=data.draw(st.integers(0, 99))))
            assert handoff.takes(queue_id) == (Share.of(queue_id, count) >= listening)
            assert handoff.gives(Share(listening - 1, count))
            assert not handoff.gives(Share(listening, count))
    finally:
        handoff.close()


def test_a_listener_keeps_no_envelope_it_hands_off(listener: Worker) -> None:
    """Its service reads back what this process queued from memory; what it hands off another
    process claims, so remembering it would only fill the memory's cap."""
    ids = [listener.accept(number) for number in range(5)]
    written = listener.spool._transitions._written
    assert written is not None  # a service is attached: it does remember its own
    assert set(ids).isdisjoint(written)


def test_an_empty_datagram_hides_none_after_it(handoff: Handoff, clock: FakeClock) -> None:
    inbox = handoff.inbox(TAKER)
    assert inbox is not None
    queue_id = next(i for i in iter(lambda: QueueIds().new(clock()), "") if TAKER.owns_id(i))
    waker = Waker(inbox)
    waker.open()
    inbox[1].send(b"")
    inbox[1].send(queue_id.encode())
    assert list(received(waker.clear(), TAKER)) == [queue_id]
    waker.close()
    inbox[1].send(WAKE)  # the inbox outlives the service's waker: still open


def test_the_busier_listener_gets_the_spares_the_other_does_not_need() -> None:
    """Every listening worker draws on one inbox of spares: one that writes more (three
    sessions of five against two) takes more, rather than creating files while the spares
    passed to the other overflow and are deleted."""
    handoff = Handoff(4, 2)
    try:
        busy, idle = handoff.spare_inbox(Share(0, 4)), handoff.spare_inbox(Share(1, 4))
        assert busy is not None
        assert busy is idle
        assert handoff.spare_inbox(Share(2, 4)) is None  # a taker passes, never draws
        names = [f"taker{number}.token{number}.tmp" for number in range(40)]
        assert all(handoff.pass_spare(name) for name in names)
        taken = []
        while select.select([busy], [], [], 0)[0]:
            taken.append(busy.recv(256).decode())
        assert taken == names
    finally:
        handoff.close()


def test_a_full_spare_inbox_refuses_and_nothing_blocks() -> None:
    handoff = Handoff(2, 1)
    try:
        passed = 0
        while handoff.pass_spare(f"taker.{passed:012d}.tmp"):
            passed += 1
            assert passed < 100_000, "a datagram inbox without bounds"
        assert passed > 64  # room for more than a pool's worth
        handoff.close()
        assert not handoff.pass_spare("taker.afterclose.tmp")
    finally:
        handoff.close()
