"""``Spool.select``, ``select_badmail`` and ``carry_out``: operators' bulk orders, in memory."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from spoolmail import RecipientState, Spool
from spoolmail._core.envelope import Envelope, Recipient, encode_envelope
from spoolmail.exceptions import ConfigurationError, NotFound, SpoolmailError
from spoolmail.testing import FakeClock

DELIVERED, FAILED = RecipientState.DELIVERED, RecipientState.FAILED


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def spool(clock: FakeClock) -> Iterator[Spool]:
    with Spool("mem://", clock=clock) as spool:
        yield spool


def queue(spool: Spool, sender: str, *recipients: Recipient | str, held: bool = False) -> str:
    """A message committed straight into the Queue with exactly this envelope."""
    now = spool.clock()
    queue_id = spool.new_id()
    envelope = Envelope(
        id=queue_id,
        sender=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
        arrival=now,
        next_attempt=now + timedelta(minutes=15),
        held_since=now if held else None,
    )
    spool._store.commit_queued(queue_id, b"Subject: s\r\n\r\nbody\r\n", encode_envelope(envelope))
    return queue_id


def badmail(spool: Spool, sender: str, *recipients: Recipient | str) -> str:
    queue_id = spool.new_id()
    envelope = Envelope(
        id=queue_id,
        sender=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
        arrival=spool.clock(),
        next_attempt=spool.clock(),
        origin="smtp:192.0.2.1",
        attempts=1,
    )
    spool.fs.writebytes(f"BadMail/{queue_id}.BAD", b"Subject: s\r\n\r\nbody\r\n")
    spool.fs.writebytes(f"BadMail/{queue_id}.BDR", b"5.0.0 failed\n")
    spool.fs.writebytes(f"BadMail/{queue_id}.BDP", encode_envelope(envelope))
    return queue_id


def ids(items: Iterator[object]) -> list[str]:
    return [item.id for item in items]  # type: ignore[attr-defined]


def test_select_by_sender_address_null_sender_and_domain(spool: Spool) -> None:
    alice = queue(spool, "Alice@Example.com", "x@a.test")
    dsn = queue(spool, "", "y@a.test")
    bob = queue(spool, "bob@other.test", "z@b.test")
    assert ids(spool.select()) == [alice, dsn, bob]
    assert ids(spool.select(sender="alice@EXAMPLE.com")) == [alice]
    assert ids(spool.select(sender="<alice@example.com>")) == [alice]
    assert ids(spool.select(sender="<>")) == ids(spool.select(sender="")) == [dsn]
    assert ids(spool.select(sender="@example.COM.")) == [alice]
    assert ids(spool.select(sender="@nowhere.test")) == []


def test_select_by_domain_any_or_all_pending(spool: Spool) -> None:
    only = queue(spool, "a@example.com", "x@A.test", "y@a.test")
    mixed = queue(spool, "a@example.com", "x@a.test", "z@b.test")
    # b.test's recipient is done: what is left to deliver is all at a.test.
    done_elsewhere = queue(
        spool, "a@example.com", "x@a.test", Recipient("z@b.test", state=DELIVERED)
    )
    only_done = queue(spool, "a@example.com", Recipient("x@a.test", state=FAILED), "z@b.test")
    assert ids(spool.select(domain="A.TEST.")) == [only, mixed, done_elsewhere]
    assert ids(spool.select(domain="a.test", domain_match="all")) == [only, done_elsewhere]
    assert ids(spool.select(domain="b.test", domain_match="all")) == [only_done]
    assert ids(spool.select(sender="a@example.com", domain="@b.test")) == [mixed, only_done]
    with pytest.raises(ValueError, match="'any' or 'all'"):
        spool.select(domain="a.test", domain_match="every")  # type: ignore[arg-type]


def test_select_badmail_looks_at_recipients_not_delivered(spool: Spool) -> None:
    first = badmail(spool, "", Recipient("x@a.test", state=FAILED))
    second = badmail(
        spool,
        "bob@example.com",
        Recipient("x@a.test", state=FAILED),
        Recipient("z@b.test", state=DELIVERED),
    )
    lost = spool.new_id()  # an entry whose envelope is unknown matches no filter
    spool.fs.writebytes(f"BadMail/{lost}.BDR", b"4.3.0 envelope lost\n")
    assert ids(spool.select_badmail()) == [first, second, lost]
    assert ids(spool.select_badmail(domain="a.test", domain_match="all")) == [first, second]
    assert ids(spool.select_badmail(domain="b.test")) == []
    assert ids(spool.select_badmail(sender="<>")) == [first]
    assert not spool.badmail_item(first).rejected_at_pickup


def test_carry_out_streams_and_yields_each_outcome(spool: Spool) -> None:
    first = queue(spool, "a@example.com", "x@a.test")
    second = queue(spool, "a@example.com", "y@a.test")
    taken: list[str] = []

    def given() -> Iterator[str]:
        for queue_id in (first, "19ac9b2f1c0-000000000000", "../x", second):
            taken.append(queue_id)
            yield queue_id

    outcomes = spool.carry_out("hold", given())
    assert next(outcomes) == (first, None)
    assert taken == [first]  # the next id is not read before this outcome is taken
    missing, bad, last = list(outcomes)
    assert isinstance(missing[1], NotFound)
    assert "no queued message" in str(missing[1])
    assert isinstance(bad[1], NotFound)
    assert "is not a queue id" in str(bad[1])
    assert last == (second, None)
    assert all(item.envelope.held for item in spool.queued())
    # One trigger file for the running service, however many were done.
    triggers = [n for n in spool.fs.listdir("SortTemp") if "trigger" in n]
    assert len(triggers) == 1


def test_carry_out_each_order(spool: Spool, clock: FakeClock) -> None:
    queue_id = queue(spool, "a@example.com", "x@a.test", held=True)
    assert list(spool.carry_out("release", [queue_id])) == [(queue_id, None)]
    assert not spool.queued_message(queue_id).envelope.held
    clock.advance(minutes=1)
    assert list(spool.carry_out("flush", [queue_id])) == [(queue_id, None)]
    assert spool.queued_message(queue_id).envelope.next_attempt <= clock()
    assert list(spool.carry_out("delete", [queue_id])) == [(queue_id, None)]
    [(_, error)] = list(spool.carry_out("delete", [queue_id]))
    assert isinstance(error, SpoolmailError)
    assert list(spool.queued()) == []


def test_carry_out_tells_the_service_in_batches(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("spoolmail._store.spool._TRIGGER_BATCH", 2)
    told: list[list[str]] = []
    monkeypatch.setattr(spool._store, "write_trigger", lambda ids: told.append(list(ids)))
    made = [queue(spool, "a@example.com", f"x{n}@a.test") for n in range(5)]
    outcomes = spool.carry_out("hold", made)
    for _ in range(3):
        next(outcomes)
    assert told == [made[:2]]
    outcomes.close()  # stopped early: what was done is still told
    assert told == [made[:2], made[2:3]]


@pytest.mark.parametrize("where", ["mem://", "osfs"])
@pytest.mark.parametrize(
    "damage", [b"", b'{"format": "spoolmail-envel', b"\x00\x01 not json", b'{"v": 1}']
)
def test_queued_tells_of_each_envelope_it_cannot_read(
    tmp_path: Path, clock: FakeClock, where: str, damage: bytes
) -> None:
    """A listing leaves a damaged envelope out, but never silently when asked: the id and why."""
    url = "mem://" if where == "mem://" else str(tmp_path / "MailRoot")
    with Spool(url, clock=clock) as spool:
        good = queue(spool, "a@example.com", "b@example.net")
        bad = queue(spool, "a@example.com", "c@example.net")
        spool._store.write("Queue", f"{bad}.env", damage)
        told: list[tuple[str, str]] = []
        listed = [item.id for item in spool.queued(unreadable=lambda i, why: told.append((i, why)))]
        assert listed == [good]
        assert [queue_id for queue_id, _ in told] == [bad]
        assert told[0][1]  # a reason, for the operator
        assert [item.id for item in spool.queued()] == [good]  # as before: left out


@pytest.mark.parametrize("where", ["mem://", "osfs"])
def test_a_badmail_message_without_its_report_is_still_an_entry(
    tmp_path: Path, clock: FakeClock, where: str
) -> None:
    """A .BAD whose .BDR went (deleted by hand, not copied over from IIS) is listed, with a
    reason that says so, and can be sent again or deleted: never a file nobody is shown."""
    url = "mem://" if where == "mem://" else str(tmp_path / "MailRoot")
    with Spool(url, clock=clock) as spool:
        kept = badmail(spool, "a@example.com", "b@example.net")
        bare = badmail(spool, "a@example.com", "c@example.net")
        spool.fs.remove(f"BadMail/{bare}.BDR")
        spool.fs.remove(f"BadMail/{bare}.BDP")
        only_report = badmail(spool, "a@example.com", "d@example.net")
        spool.fs.remove(f"BadMail/{only_report}.BAD")
        items = {item.id: item for item in spool.badmail()}
        assert sorted(items) == sorted([kept, bare, only_report])
        assert items[bare].reason == "(no report: its .BDR file is missing)"
        assert items[bare].has_message
        assert items[bare].envelope is None
        assert not items[only_report].has_message
        with pytest.raises(SpoolmailError, match="give the recipients and the sender"):
            spool.requeue_badmail(bare)
        new_id = spool.requeue_badmail(bare, recipients=["c@example.net"], sender="a@example.com")
        assert spool.message(new_id) == b"Subject: s\r\n\r\nbody\r\n"
        assert sorted(item.id for item in spool.badmail()) == sorted([kept, only_report])
        spool.fs.writebytes(f"BadMail/{bare}.BAD", b"Subject: again\r\n\r\n")
        assert spool.delete_badmail([bare]) == [bare]
        assert sorted(spool.fs.listdir("BadMail")) == sorted(
            [
                f"{kept}.BAD",
                f"{kept}.BDR",
                f"{kept}.BDP",
                f"{only_report}.BDR",
                f"{only_report}.BDP",
            ]
        )


@pytest.mark.parametrize(
    ("filters", "complaint"),
    [
        ({"domain": "exa mple"}, "'exa mple' is not a domain: the domain 'exa mple' contains ' '"),
        ({"domain": ""}, "'' is not a domain: it is empty"),
        ({"domain": "192.0.2.1"}, "write it as [192.0.2.1]"),
        ({"sender": "bob"}, "'bob' is not an address"),
        ({"sender": "@exa mple"}, "contains ' '"),
    ],
)
def test_a_filter_that_could_match_nothing_is_an_error_at_the_call(
    spool: Spool, filters: dict[str, str], complaint: str
) -> None:
    """A typo must not look like an empty Queue: each method that chooses by filters says what
    is wrong at once (before a generator is started, before a trigger is written)."""
    queue(spool, "bob@example.com", "x@exa.test")
    badmail(spool, "bob@example.com", Recipient("x@exa.test", state=FAILED))
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        spool.select(**filters)
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        spool.select_badmail(**filters)
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        spool.flush_queue(**filters)
    assert not [n for n in spool.fs.listdir("SortTemp") if n.endswith(".trigger")]
    if "domain" in filters:
        before = next(spool.select()).envelope
        with pytest.raises(ConfigurationError, match=re.escape(complaint)):
            spool.flush(domain=filters["domain"])  # "" was once the whole Queue
        assert spool.queued_message(before.id).envelope == before


def test_a_sender_is_read_as_the_intake_reads_it(spool: Spool) -> None:
    bob = queue(spool, "bob@bücher.example", "x@a.test")
    assert ids(spool.select(sender='"Bob, Jr." <BOB@Bücher.example> (boss)')) == [bob]
    assert ids(spool.select(sender="@BÜCHER.example")) == [bob]
    assert ids(spool.select_badmail(sender="Bob <bob@bücher.example>")) == []
    assert ids(spool.select(domain="[IPv6:2001:DB8:0::1]")) == []


def test_one_string_for_many_ids_or_addresses_is_a_type_error(spool: Spool) -> None:
    """Iterated, one string is its characters: ``delete("19ac...")`` tried to delete ``"1"``,
    ``"9"``... and answered that no such message exists. It is refused before anything is done."""
    queue_id = queue(spool, "a@example.com", "x@a.test")
    entry = badmail(spool, "", Recipient("x@a.test", state=FAILED))
    said = re.escape(f"queue_ids is an iterable of strings, not one string: [{queue_id!r}]?")
    for order in (spool.hold, spool.release, spool.flush, spool.delete):
        with pytest.raises(TypeError, match=said):
            order(queue_id)
    with pytest.raises(TypeError, match=said):
        spool.carry_out("hold", queue_id)
    with pytest.raises(TypeError, match="queue_ids is an iterable of strings"):
        spool.delete_badmail(entry)
    with pytest.raises(TypeError, match=re.escape("recipients is an iterable of strings, not")):
        spool.requeue_badmail(entry, recipients="x@a.test")
    long = "x" * 50
    with pytest.raises(TypeError, match=re.escape(f"[{'x' * 40 + '...'!r}]?")):
        spool.delete(long)
    assert [item.id for item in spool.queued()] == [queue_id]
    assert not spool.queued_message(queue_id).envelope.held
    assert [item.id for item in spool.badmail()] == [entry]


def test_an_unknown_order_is_an_error_at_the_call(spool: Spool) -> None:
    taken: list[str] = []

    def ids() -> Iterator[str]:
        taken.append("asked")
        yield "19ac9b2f1c0-000000000000"

    with pytest.raises(ConfigurationError, match="one of 'hold', 'release', 'flush', 'delete'"):
        spool.carry_out("zap", ids())  # type: ignore[arg-type]
    assert taken == []
