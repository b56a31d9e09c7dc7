"""The store's transitions: the state table chooses the commit, each one atomic commit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import attrs
import pytest

import spoolmail._store.transitions as transitions_module
from spoolmail import Notify, Recipient, Ret, Spool
from spoolmail._core.badmail import orphan_report
from spoolmail._core.envelope import Envelope, decode_envelope, new_envelope
from spoolmail._core.states import TABLE, Commit, Event, State
from spoolmail._core.transcript import HISTORY_MARK
from spoolmail._store import pyfs
from spoolmail._store.recovery import recover
from spoolmail._store.transitions import Change, Transitions
from spoolmail.exceptions import InvalidTransition
from spoolmail.testing import FakeClock

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def spool(filesystem: pyfs.FS, clock: FakeClock) -> Iterator[Spool]:
    with Spool(filesystem, clock=clock) as spool:
        yield spool


def everything(filesystem: pyfs.FS) -> dict[str, bytes]:
    return {
        path: filesystem.readbytes(path)
        for path in filesystem.walk.files("/")
        if not path.endswith(".owner")
    }


def admitted(spool: Spool, clock: FakeClock, queue_id: str = "19ac9b2f1c0-000000000001") -> str:
    envelope = new_envelope(
        queue_id, sender="a@example.com", recipients=["b@example.com"], now=clock(), origin="test"
    )
    change = Change(id=queue_id, message=MESSAGE, envelope=envelope)
    assert spool._transitions.apply(State.NEW, Event.ACCEPTED, change) is State.QUEUED
    return queue_id


def test_every_commit_has_a_transition_and_a_method(spool: Spool) -> None:
    used = {found.commit for events in TABLE.values() for found in events.values()}
    assert used == set(Commit)
    for commit in Commit:
        assert callable(getattr(spool._transitions, commit.value))


def test_an_unlisted_pair_raises_and_changes_nothing(spool: Spool, clock: FakeClock) -> None:
    queue_id = admitted(spool, clock)
    before = everything(spool.fs)
    with pytest.raises(InvalidTransition, match=r"'badmail'.*'claimed'"):
        spool._transitions.apply(State.BADMAIL, Event.CLAIMED, Change(id=queue_id))
    assert everything(spool.fs) == before


def test_admit_writes_message_then_envelope(spool: Spool, clock: FakeClock) -> None:
    queue_id = admitted(spool, clock)
    assert spool._transitions.queued(queue_id)
    assert spool.message(queue_id) == MESSAGE
    assert spool.queued_message(queue_id).state is State.QUEUED
    assert not [n for n in spool._store.listdir("SortTemp") if n.endswith(".tmp")]


def test_admit_builds_the_envelope_from_the_written_size(spool: Spool, clock: FakeClock) -> None:
    sizes: list[int] = []

    def envelope(size: int, dkim: tuple[str, ...]) -> Envelope:
        assert dkim == ()  # the spool has no DKIM policy
        sizes.append(size)
        return new_envelope(
            "19ac9b2f1c0-000000000002",
            sender="",
            recipients=["b@x.test"],
            now=clock(),
            origin="test",
            size=size,
        )

    change = Change(
        id="19ac9b2f1c0-000000000002",
        message=[b"Subject: x\r\n", b"\r\nbody\r\n"],
        envelope=envelope,
    )
    spool._transitions.apply(State.PICKUP, Event.ACCEPTED, change)
    assert sizes == [20]
    assert decode_envelope(spool._transitions.envelope("19ac9b2f1c0-000000000002")).size == 20


def test_a_failing_message_stream_admits_nothing(spool: Spool, clock: FakeClock) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"Subject: x\r\n"
        raise ValueError("too big")

    envelope = new_envelope(
        "19ac9b2f1c0-000000000003", sender="", recipients=["b@x.test"], now=clock(), origin="test"
    )
    change = Change(id="19ac9b2f1c0-000000000003", message=chunks(), envelope=envelope)
    with pytest.raises(ValueError, match="too big"):
        spool._transitions.apply(State.NEW, Event.ACCEPTED, change)
    assert spool._store.listdir("Queue") == []
    assert not spool._transitions.queued("19ac9b2f1c0-000000000003")


def test_claim_hand_back_and_finish(spool: Spool, clock: FakeClock) -> None:
    transitions, queue_id = spool._transitions, admitted(spool, clock)
    assert transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id)) is State.DELIVERING
    assert transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id)) is None  # lost race
    assert transitions.claimed(queue_id)
    envelope = decode_envelope(transitions.claimed_envelope(queue_id))
    later = envelope.with_recipients(envelope.recipients)
    change = Change(id=queue_id, envelope=later, transcripts={"RTR": "remote\n"})
    assert transitions.apply(State.DELIVERING, Event.DEFERRED, change) is State.QUEUED
    assert not transitions.claimed(queue_id)
    assert spool.transcript(queue_id) == "remote\n"
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    assert transitions.apply(State.DELIVERING, Event.SETTLED, Change(id=queue_id)) is State.DONE
    assert spool._store.listdir("Queue") == []


def test_undeliverable_moves_the_message_and_its_envelope_to_badmail(
    spool: Spool, clock: FakeClock
) -> None:
    transitions, queue_id = spool._transitions, admitted(spool, clock)
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    envelope = decode_envelope(transitions.claimed_envelope(queue_id))
    change = Change(id=queue_id, envelope=envelope, report=orphan_report())
    assert transitions.apply(State.DELIVERING, Event.UNDELIVERABLE, change) is State.BADMAIL
    assert spool._store.listdir("Queue") == []
    item = spool.badmail_item(queue_id)
    assert item.has_message
    assert item.envelope == envelope
    assert item.reason.startswith("4.3.0 found in the Queue without an envelope")
    assert spool.badmail_message(queue_id) == MESSAGE


def test_badmail_requeue_admits_through_the_one_door(spool: Spool, clock: FakeClock) -> None:
    transitions, queue_id = spool._transitions, admitted(spool, clock)
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    change = Change(id=queue_id, report=orphan_report())
    transitions.apply(State.DELIVERING, Event.DAMAGED, change)
    new_id = spool.requeue_badmail(queue_id, recipients=["b@example.com"], sender="a@example.com")
    assert spool.queued_message(new_id).envelope.origin == f"requeue:{queue_id}"
    assert spool.message(new_id) == MESSAGE
    assert list(spool.badmail()) == []


def test_resubmit_and_discard(spool: Spool, clock: FakeClock) -> None:
    transitions = spool._transitions
    for queue_id in ("19ac9b2f1c0-000000000004", "19ac9b2f1c0-000000000005"):
        admitted(spool, clock, queue_id)
        transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
        transitions.apply(
            State.DELIVERING, Event.DAMAGED, Change(id=queue_id, report=orphan_report())
        )
    change = Change(id="19ac9b2f1c0-000000000004")
    assert transitions.apply(State.BADMAIL, Event.RESUBMITTED, change) is State.PICKUP
    assert spool.pickup() == ["19ac9b2f1c0-000000000004.eml"]
    assert transitions.apply(State.BADMAIL, Event.RESUBMITTED, change) is None  # gone
    change = Change(id="19ac9b2f1c0-000000000005")
    assert transitions.apply(State.BADMAIL, Event.DELETED, change) is State.DONE
    assert transitions.apply(State.BADMAIL, Event.DELETED, change) is None
    assert list(spool.badmail()) == []


def test_recovery_returns_what_it_did(spool: Spool, clock: FakeClock) -> None:
    transitions, store = spool._transitions, spool._store
    returned = admitted(spool, clock, "19ac9b2f1c0-000000000006")
    finishing = admitted(spool, clock, "19ac9b2f1c0-000000000007")
    orphan = admitted(spool, clock, "19ac9b2f1c0-000000000008")
    for queue_id in (returned, finishing):
        transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    store.remove("Queue", f"{finishing}.eml")  # a finish cut short after its first step
    store.remove("Queue", f"{orphan}.env")  # an admission cut short before the envelope
    # Older than a lease by the file's own time (recovery reads the filesystem's clock).
    old = time.time() - timedelta(minutes=11).total_seconds()
    store.fs.setinfo(f"Queue/{orphan}.eml", {"details": {"modified": old, "accessed": old}})
    taken: list[str] = []
    done = recover(transitions, take_in=lambda claim: taken.append(claim.id))
    assert done.returned == (returned,)
    assert done.finished == (finishing,)
    assert done.badmail == (orphan,)
    assert taken == []
    assert done.taken_in == ()
    assert {i for i, entry in done.files.items() if entry.envelope} == {returned}
    assert spool.queued_message(returned).state is State.QUEUED
    assert spool.badmail_item(orphan).reason.startswith("4.3.0 found in the Queue")


def test_transitions_is_the_spools(spool: Spool) -> None:
    assert isinstance(spool._transitions, Transitions)
    assert spool._transitions.files is spool._store


def test_an_untried_message_is_finished_without_looking_for_transcripts(
    spool: Spool, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Transcripts come only after a try: the finish of a message claimed untried deletes
    # its message and envelope, and no transcript (two deletes of nothing saved a message).
    transitions, queue_id = spool._transitions, admitted(spool, clock)
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    removed: list[str] = []
    remove = spool._store.remove

    def recorded(folder: str, name: str) -> bool:
        removed.append(name)
        return remove(folder, name)

    monkeypatch.setattr(spool._store, "remove", recorded)
    change = Change(id=queue_id, untried=True)
    assert transitions.apply(State.DELIVERING, Event.SETTLED, change) is State.DONE
    assert not [name for name in removed if name.endswith(("RTR", "LTR"))]
    assert spool._store.listdir("Queue") == []


def test_recovery_drops_transcripts_a_dead_hand_back_left_beside_an_untried_envelope(
    spool: Spool, clock: FakeClock
) -> None:
    # The owner died between writing the transcript and committing the envelope: the message
    # goes back untried, and the transcript of the attempt that never counted goes with it.
    transitions, store = spool._transitions, spool._store
    queue_id = admitted(spool, clock)
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    store.write("Queue", f"{queue_id}.RTR", b"an attempt cut short\n")
    done = recover(transitions, take_in=lambda claim: None)
    assert done.returned == (queue_id,)
    assert sorted(store.listdir("Queue")) == [f"{queue_id}.eml", f"{queue_id}.env"]


def test_recovery_keeps_the_transcripts_of_a_message_tried_before(
    spool: Spool, clock: FakeClock
) -> None:
    transitions, store = spool._transitions, spool._store
    queue_id = admitted(spool, clock)
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    envelope = decode_envelope(transitions.claimed_envelope(queue_id))
    tried = Change(
        id=queue_id, envelope=attrs.evolve(envelope, attempts=1), transcripts={"RTR": "one\n"}
    )
    transitions.apply(State.DELIVERING, Event.DEFERRED, tried)
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    store.write("Queue", f"{queue_id}.RTR", b"one\ntwo, cut short\n")
    recover(transitions, take_in=lambda claim: None)
    assert spool.transcript(queue_id) == "one\ntwo, cut short\n"


def test_an_untried_envelope_given_back_drops_what_a_failed_hand_back_wrote(
    spool: Spool, clock: FakeClock
) -> None:
    # An attempt whose commit failed after the transcript gives the envelope back as it was.
    transitions, store = spool._transitions, spool._store
    queue_id = admitted(spool, clock)
    transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id))
    envelope = decode_envelope(transitions.claimed_envelope(queue_id))
    store.write("Queue", f"{queue_id}.LTR", b"a commit that failed\n")
    change = Change(id=queue_id, envelope=envelope)
    assert transitions.apply(State.DELIVERING, Event.DEFERRED, change) is State.QUEUED
    assert sorted(store.listdir("Queue")) == [f"{queue_id}.eml", f"{queue_id}.env"]


# -- the envelopes admissions wrote, for a claim that follows in this process ---------------------


def admit_through_the_door(spool: Spool, **facts: object) -> str:
    return spool.admit(
        MESSAGE,
        sender="a@example.com",
        recipients=[
            Recipient("b@example.com", notify=Notify.FAILURE, orcpt="rfc822;b@example.com")
        ],
        origin="smtp:192.0.2.1",
        **facts,  # type: ignore[arg-type]
    )


def test_an_admitted_envelope_stands_for_its_own_bytes_once(spool: Spool) -> None:
    transitions = spool._transitions
    transitions.remember_written(True)
    queue_id = admit_through_the_door(spool, envid="e-1", ret=Ret.HDRS)
    raw = transitions.envelope(queue_id)
    written = transitions.written(queue_id, raw)
    decoded = decode_envelope(raw)
    assert written == decoded
    times = [written.arrival, written.next_attempt, decoded.arrival, decoded.next_attempt]
    assert {id(t.tzinfo) for t in times} == {id(UTC)}  # the same zone object as the reader's
    assert transitions.written(queue_id, raw) is None  # forgotten once asked for


def test_other_bytes_or_nothing_remembered_are_decoded(spool: Spool) -> None:
    transitions = spool._transitions
    queue_id = admit_through_the_door(spool)
    assert transitions.written(queue_id, transitions.envelope(queue_id)) is None  # not kept
    transitions.remember_written(True)
    queue_id = admit_through_the_door(spool)
    raw = transitions.envelope(queue_id)
    assert transitions.written(queue_id, raw.replace(b'"attempts": 0', b'"attempts": 1')) is None
    assert transitions.written(queue_id, raw) is None  # a mismatch forgets it too
    transitions.remember_written(False)
    queue_id = admit_through_the_door(spool)
    assert transitions.written(queue_id, transitions.envelope(queue_id)) is None


def test_times_in_another_zone_object_are_not_remembered(filesystem: pyfs.FS) -> None:
    """decode_envelope gives datetime.UTC back; a clock in another zone object (ZoneInfo's
    UTC, an offset) would make the written envelope differ from the file's: not kept."""
    for zone in (ZoneInfo("UTC"), timezone(timedelta(hours=1))):
        clock = FakeClock(datetime(2026, 12, 5, 9, 0, tzinfo=zone))
        with Spool(filesystem, clock=clock) as spool:
            spool._transitions.remember_written(True)
            queue_id = admit_through_the_door(spool)
            raw = spool._transitions.envelope(queue_id)
            assert spool._transitions.written(queue_id, raw) is None


def test_remembered_envelopes_are_capped_oldest_out(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transitions_module, "_WRITTEN_CAP", 2)
    transitions = spool._transitions
    transitions.remember_written(True)
    made = [admit_through_the_door(spool) for _ in range(3)]
    found = [transitions.written(q, transitions.envelope(q)) for q in made]
    assert [envelope is not None for envelope in found] == [False, True, True]


def test_a_transcript_that_is_not_utf8_is_read_with_replacement_characters(
    spool: Spool, clock: FakeClock, filesystem: pyfs.FS
) -> None:
    """A remote server's reply bytes, or a hand-edited file: read, never a UnicodeDecodeError in
    the middle of a transition (a DSN or BadMail report quotes the history)."""
    queue_id = admitted(spool, clock)
    head = f"bob@example.com: 451 4.4.1 try later\n{HISTORY_MARK}\n".encode()
    filesystem.writebytes(f"Queue/{queue_id}.RTR", head + b"<<< 451 caf\xe9 \xff\n")
    history = spool._transitions.transcript_history(queue_id, "RTR")
    assert history == "<<< 451 caf\N{REPLACEMENT CHARACTER} \N{REPLACEMENT CHARACTER}\n"
