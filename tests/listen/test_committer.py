"""The listener's committer: sessions' messages queued in groups, each session told its own fate.

No socket: admissions are handed over on an event loop, as the sessions' DATA hook does.
"""

from __future__ import annotations

import asyncio
import threading
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
