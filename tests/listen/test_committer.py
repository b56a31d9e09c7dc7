"""The listener's committer: sessions' messages queued in groups, each session told its own fate.

No socket: admissions are handed over on an event loop, as the sessions' DATA hook does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from spoolmail import Spool
from spoolmail._listen.committer import Committer
from spoolmail._store.spool import Admission
from spoolmail.exceptions import MessageError
from spoolmail.testing import FakeClock

MESSAGE = b"From: a@client.test\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def admission(recipient: str) -> Admission:
    return Admission(message=MESSAGE, sender="a@client.test", recipients=[recipient], origin="t")


def test_messages_that_arrive_during_a_sync_share_the_next_one() -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        groups: list[int] = []
        first_taken, release = threading.Event(), threading.Event()
        real = spool.admit_group

        def admit_group(admissions: Sequence[Admission]) -> list[str | Exception]:
            groups.append(len(admissions))
            first_taken.set()
            release.wait(10)  # the first group's sync takes a while
            return real(admissions)

        spool.admit_group = admit_group  # type: ignore[method-assign]
        committer = Committer(spool)
        committer.start()

        async def sessions() -> list[str | BaseException]:
            first = committer.submit(admission("bob0@example.com"))
            await asyncio.to_thread(first_taken.wait, 10)
            others = [committer.submit(admission(f"bob{i}@example.com")) for i in range(1, 6)]
            release.set()
            return await asyncio.gather(first, *others, return_exceptions=True)

        try:
            results = asyncio.run(sessions())
        finally:
            committer.stop()
        assert groups == [1, 5]
        assert sorted(m.id for m in spool.queued()) == sorted(map(str, results))


def recording(spool: Spool) -> list[int]:
    """The size of every group ``spool.admit_group`` is given, from now on."""
    groups: list[int] = []
    real = spool.admit_group

    def admit_group(admissions: Sequence[Admission]) -> list[str | Exception]:
        groups.append(len(admissions))
        return real(admissions)

    spool.admit_group = admit_group  # type: ignore[method-assign]
    return groups


def test_a_group_waits_for_the_message_of_a_transaction_under_way() -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        groups = recording(spool)
        committer = Committer(spool, gather=30.0)
        committer.start()

        async def sessions() -> list[str]:
            committer.opened()
            committer.opened()
            committer.closed()  # the first session's message is handed over
            first = committer.submit(admission("bob0@example.com"))
            await asyncio.sleep(0.1)  # the committer has it, and waits for the second
            assert not first.done()
            committer.closed()
            second = committer.submit(admission("bob1@example.com"))
            return await asyncio.wait_for(asyncio.gather(first, second), 10)

        try:
            results = asyncio.run(sessions())
        finally:
            committer.stop()
        assert groups == [2]
        assert sorted(m.id for m in spool.queued()) == sorted(results)


def test_with_no_transaction_under_way_nothing_waits() -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        groups = recording(spool)
        committer = Committer(spool, gather=30.0)
        committer.start()

        async def alone() -> str:
            committer.opened()
            committer.closed()
            return await asyncio.wait_for(committer.submit(admission("bob@example.com")), 10)

        try:
            asyncio.run(alone())
        finally:
            committer.stop()
        assert groups == [1]


def test_a_transaction_that_never_ends_delays_a_group_only_a_little() -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        groups = recording(spool)
        committer = Committer(spool, gather=0.2)
        committer.start()

        async def one_left_open() -> float:
            committer.opened()  # a client that said MAIL and then nothing
            start = time.monotonic()
            await asyncio.wait_for(committer.submit(admission("bob@example.com")), 10)
            return time.monotonic() - start

        try:
            waited = asyncio.run(one_left_open())
        finally:
            committer.stop()
        assert groups == [1]
        assert 0.15 < waited < 9


def test_stopping_ends_a_wait_and_commits_what_was_handed_over() -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        committer = Committer(spool, gather=30.0)
        committer.start()

        async def hand_over() -> asyncio.Future[str]:
            committer.opened()
            return committer.submit(admission("bob@example.com"))

        loop = asyncio.new_event_loop()
        try:
            future = loop.run_until_complete(hand_over())
            start = time.monotonic()
            committer.stop()
            assert time.monotonic() - start < 10
            loop.run_until_complete(asyncio.sleep(0))  # the settling callback
            assert [future.result()] == [m.id for m in spool.queued()]
        finally:
            loop.close()


def test_each_session_hears_its_own_refusal() -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        committer = Committer(spool)
        committer.start()

        async def sessions() -> list[str | BaseException]:
            futures = [
                committer.submit(admission(r))
                for r in ("bob@example.com", "bob@", "carol@example.com")
            ]
            return await asyncio.gather(*futures, return_exceptions=True)

        try:
            good, bad, other = asyncio.run(sessions())
        finally:
            committer.stop()
        assert isinstance(bad, MessageError)
        assert sorted(m.id for m in spool.queued()) == sorted([str(good), str(other)])


def test_a_stopped_committer_takes_nothing_more() -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        committer = Committer(spool)
        committer.start()
        committer.stop()

        async def late() -> None:
            committer.submit(admission("bob@example.com"))

        with pytest.raises(RuntimeError, match="stopped"):
            asyncio.run(late())
