"""What spoolmail reads back from its own folders (Queue, SortTemp, BadMail) when another local
user, a crashed process, a failing disk or a careless operator put something else there.

Guards the rules of docs/design.md sections 1-3 for everything but Pickup: no entry, however
odd, stops a rescan or a tick (the good messages beside it are delivered); a bad envelope or
message ends in BadMail with a reason or in one clear error; nothing outside the MailRoot is
read, written or deleted; a FIFO is never opened to wait on; a file that grows (a transcript)
is read in bounded memory; a delivery is never repeated because a file beside it is odd.
MemoryFS and OSFS where the filesystem does not matter; OSFS in a temp dir for links, FIFOs,
directories and sparse files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spoolmail import MailService, Reply, Report, Router, Spool
from spoolmail._store import pyfs
from spoolmail._store.store import MAX_ENVELOPE, TRIGGER_SUFFIX
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver
from tests.cli.test_hostile_badmail_drop import peak_of

LATER = Reply(451, "4.3.0", "mailbox busy", host="relay.test")
BAD_ID = "1a22198ed00-00000000000000ff"


@pytest.fixture
def spool(filesystem: pyfs.FS, clock: FakeClock) -> Iterator[Spool]:
    with Spool(filesystem, clock=clock) as spool:
        yield spool


@pytest.fixture
def os_spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    """A Spool on OSFS at ``tmp_path / "root"``: ``tmp_path`` itself is outside the MailRoot."""
    (tmp_path / "root").mkdir()
    with Spool(str(tmp_path / "root"), clock=clock) as spool:
        yield spool


@pytest.fixture
def transport() -> CapturingTransport:
    return CapturingTransport()


def make_service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> MailService:
    return MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host="relay.test:2525"),
        transport=transport,
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=clock,
        fqdn="mail.example.com",
    )


def message(to: str, body: str = "hello") -> bytes:
    return f"From: alice@example.net\r\nTo: {to}\r\nSubject: s\r\n\r\n{body}\r\n".encode()


def admit(spool: Spool, *to: str, body: str = "hello") -> str:
    return spool.admit(
        message(", ".join(to), body), sender="alice@example.net", recipients=to, origin="test"
    )


def waiting(spool: Spool, transport: CapturingTransport, clock: FakeClock, to: str) -> str:
    """A message that was tried once and waits for its retry, with a transcript (``.RTR``)."""
    transport.answers = {to: LATER}
    queue_id = admit(spool, to)
    service = make_service(spool, transport, clock)
    assert service.run_once().deferred == ((queue_id, to),)
    service.close()
    transport.answers = None
    return queue_id


def root_of(spool: Spool) -> Path:
    return Path(spool.fs.getsyspath("/"))


def delivered_to(transport: CapturingTransport, address: str) -> int:
    return sum(address in sent.recipients for sent in transport.messages)


def edit_envelope(spool: Spool, queue_id: str, change: Callable[[dict[str, object]], None]) -> None:
    data = json.loads(spool._store.read("Queue", f"{queue_id}.env"))
    change(data)
    spool._store.write("Queue", f"{queue_id}.env", json.dumps(data).encode())


# -- an envelope that names another message --------------------------------------------------------


def test_an_envelope_naming_another_message_is_moved_aside_and_that_one_is_untouched(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """Every commit of an attempt goes by the envelope's id. One naming a waiting message sent
    that message's body to its own recipients, finished it (its ``.eml`` deleted: lost), and
    stayed claimed for ever; the file's name is the id."""
    victim = waiting(spool, transport, clock, "bob@victim.test")
    liar = admit(spool, "carol@junk.test", body="liar body")
    edit_envelope(spool, liar, lambda data: data.update(id=victim))
    service = make_service(spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.badmail == (liar,)
    assert transport.messages == []
    item = spool.badmail_item(liar)
    assert "names another message" in item.reason
    assert b"liar body" in spool.badmail_message(liar)
    assert spool.queued_message(victim).envelope.recipients[0].address == "bob@victim.test"
    clock.advance(hours=1)
    assert service.run_once().delivered == ((victim, "bob@victim.test"),)
    [sent] = transport.messages
    assert sent.recipients == ("bob@victim.test",)
    assert b"hello" in sent.data
    assert spool._store.queue_files() == {}
    service.close()


def test_an_envelope_id_that_climbs_out_of_the_queue_reads_and_deletes_nothing_outside(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock, tmp_path: Path
) -> None:
    """An id is a file name: ``../../secret`` made the attempt open (and send) and then
    delete ``secret.eml`` beside the MailRoot."""
    secret = tmp_path / "secret.eml"
    secret.write_bytes(b"Subject: TOPSECRET\r\n\r\nTOPSECRET\r\n")
    liar = admit(os_spool, "carol@junk.test")
    edit_envelope(os_spool, liar, lambda data: data.update(id="../../secret"))
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.badmail == (liar,)
    assert transport.messages == []
    assert secret.read_bytes() == b"Subject: TOPSECRET\r\n\r\nTOPSECRET\r\n"
    service.close()


# -- an envelope that cannot be read stops no rescan -----------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link(path: Path) -> None:
    path.symlink_to(path.parent.parent.parent / "secret.env")


def _deep(path: Path) -> None:
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)


def _long_number(path: Path) -> None:
    path.write_bytes(b'{"version": 1, "next_attempt": ' + b"9" * 5000 + b"}")


@pytest.mark.parametrize(
    ("plant", "why"),
    [
        (_fifo, "FIFO"),
        (_link, "symbolic link"),
        (_deep, "nested too deep"),
        (_long_number, "4300 digits"),
    ],
    ids=["fifo", "symlink", "nested-too-deep", "5000-digit-number"],
)
def test_an_envelope_that_cannot_be_read_stops_no_rescan_and_goes_to_badmail(
    os_spool: Spool,
    transport: CapturingTransport,
    clock: FakeClock,
    tmp_path: Path,
    plant: Callable[[Path], None],
    why: str,
) -> None:
    """The rescan at start reads every envelope: one that raised anything but EnvelopeError
    (a FIFO or link: StorageError; JSON nested too deep: RecursionError; a number too long
    for int(): ValueError) ended it, and no message after it was scheduled, at every rescan."""
    (tmp_path / "secret.env").write_text("TOPSECRET")
    good = waiting(os_spool, transport, clock, "bob@remote.test")
    bad = admit(os_spool, "carol@remote.test")
    envelope = root_of(os_spool) / "Queue" / f"{bad}.env"
    envelope.unlink()
    plant(envelope)
    clock.advance(hours=1)
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.delivered == ((good, "bob@remote.test"),)
    assert report.badmail == (bad,)
    item = os_spool.badmail_item(bad)
    assert item.reason.startswith("4.3.0 the envelope file cannot be read")
    assert why in item.reason
    assert "TOPSECRET" not in item.report
    assert item.has_message
    assert os_spool._store.queue_files() == {}
    assert (tmp_path / "secret.env").read_text() == "TOPSECRET"
    service.close()


def test_a_directory_in_place_of_an_envelope_is_one_error_and_its_message_goes_to_badmail(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """A directory is never deleted (it is not spoolmail's to delete): its message goes to
    BadMail, the directory stays, named by an error at each rescan that stops nothing else."""
    good = waiting(os_spool, transport, clock, "bob@remote.test")
    bad = admit(os_spool, "carol@remote.test")
    envelope = root_of(os_spool) / "Queue" / f"{bad}.env"
    envelope.unlink()
    envelope.mkdir()
    clock.advance(hours=1)
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.delivered == ((good, "bob@remote.test"),)
    assert [error for error in report.errors if "directory" not in error.lower()] == []
    assert os_spool.badmail_item(bad).has_message
    assert "is a directory" in os_spool.badmail_item(bad).reason
    assert delivered_to(transport, "carol@remote.test") == 0
    clock.advance(minutes=10)
    report = service.rescan()
    assert len(report.errors) == 1
    assert bad in report.errors[0]
    service.close()


# -- owner records: a hostile one vouches for no claim and stops nothing ---------------------------


@pytest.mark.parametrize(
    "record",
    [
        "fifo",
        "directory",
        '{"host": "HOST", "pid": 1, "renewed": "2026-11-28T10:00:00"}',
        '{"host": "HOST", "pid": 1e400, "renewed": "2026-11-28T10:00:00+00:00"}',
        '{"host": "HOST", "pid": 0, "renewed": "2026-11-28T10:00:00+00:00"}',
        '{"host": "HOST", "pid": -1, "renewed": "2026-11-28T10:00:00+00:00"}',
    ],
    ids=["fifo", "directory", "time-without-zone", "pid-infinite", "pid-0", "pid-minus-1"],
)
def test_a_hostile_owner_record_vouches_for_no_claim_and_stops_no_rescan(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock, record: str
) -> None:
    """A claim ``ID.evil.env`` and a record ``SortTemp/evil.owner`` that is no owner's: a FIFO
    or directory (StorageError), a time without zone (TypeError), an infinite pid
    (OverflowError) ended every rescan; pid 0 or -1 of this host probed a process group with
    ``kill`` and found it alive, holding the claim for a lease."""
    queue_id = admit(os_spool, "bob@remote.test")
    root = root_of(os_spool)
    (root / "Queue" / f"{queue_id}.env").rename(root / "Queue" / f"{queue_id}.evil.env")
    owner = root / "SortTemp" / "evil.owner"
    if record == "fifo":
        os.mkfifo(owner)
    elif record == "directory":
        owner.mkdir()
    else:
        owner.write_text(record.replace("HOST", os_spool._store._host))
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.delivered == ((queue_id, "bob@remote.test"),)
    assert os_spool._store.queue_files() == {}
    service.close()


# -- triggers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_planted_trigger_is_never_read_and_stops_no_tick(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock, tmp_path: Path, kind: str
) -> None:
    """Every tick (and every rescan) reads the triggers first: a FIFO, link or directory under
    a trigger's name raised out of it each time, and no queued message was scheduled again."""
    outside = tmp_path / "order.json"
    outside.write_text('{"all": true}')
    good = waiting(os_spool, transport, clock, "bob@remote.test")
    trigger = root_of(os_spool) / "SortTemp" / f"evil.x{TRIGGER_SUFFIX}"
    if kind == "fifo":
        os.mkfifo(trigger)
    elif kind == "symlink":
        trigger.symlink_to(outside)
    else:
        trigger.mkdir()
    clock.advance(hours=1)
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.delivered == ((good, "bob@remote.test"),)
    assert service.run_once().errors == ()  # a tick that reads only the triggers
    assert os.path.lexists(trigger) == (kind == "directory")  # its name, not the target
    assert outside.read_text() == '{"all": true}'
    service.close()


def test_a_huge_trigger_is_not_read_into_memory(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """A trigger is read whole; a planted one of 256 MiB (sparse: no disk) is a damaged order,
    read as "look at the whole Queue" without being read."""
    good = waiting(os_spool, transport, clock, "bob@remote.test")
    trigger = root_of(os_spool) / "SortTemp" / f"evil.x{TRIGGER_SUFFIX}"
    with trigger.open("wb") as handle:
        handle.truncate(256 * 1024 * 1024)
    clock.advance(hours=1)
    service = make_service(os_spool, transport, clock)
    report, peak = peak_of(service.run_once)
    assert report.errors == ()
    assert report.delivered == ((good, "bob@remote.test"),)
    assert peak < 32 * 1024 * 1024
    assert not trigger.exists()
    service.close()


# -- what recovery finds ---------------------------------------------------------------------------


def test_directories_where_recovery_deletes_files_stop_no_rescan(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """Recovery removes a transcript left without its message and a dead owner's stale claim;
    a directory under either name raised out of the whole pass, so that nothing was
    scheduled. Each is now one error naming it, and left."""
    good = waiting(os_spool, transport, clock, "bob@remote.test")
    other = admit(os_spool, "carol@remote.test")
    queue = root_of(os_spool) / "Queue"
    (queue / f"{BAD_ID}.RTR").mkdir()
    (queue / f"{other}.dead.env").mkdir()
    clock.advance(hours=1)
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert sorted(report.delivered) == sorted(
        [(good, "bob@remote.test"), (other, "carol@remote.test")]
    )
    assert len(report.errors) == 2
    assert any(BAD_ID in error and "RTR" in error for error in report.errors)
    assert any(other in error and "dead.env" in error for error in report.errors)
    assert (queue / f"{BAD_ID}.RTR").is_dir()
    service.close()


# -- transcripts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_planted_transcript_never_repeats_a_delivery(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock, tmp_path: Path, kind: str
) -> None:
    """A message waiting for two recipients whose transcript is a FIFO, a link or a directory:
    the attempt that delivers one and defers the other could not commit (reading or writing
    the transcript failed), so it was given back as before, and the recipient delivered was
    sent the message again at every try."""
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    transport.answers = {"carol@remote.test": LATER, "dan@remote.test": LATER}
    queue_id = admit(os_spool, "carol@remote.test", "dan@remote.test")
    service = make_service(os_spool, transport, clock)
    assert len(service.run_once().deferred) == 2
    transcript = root_of(os_spool) / "Queue" / f"{queue_id}.RTR"
    transcript.unlink()
    if kind == "fifo":
        os.mkfifo(transcript)
    elif kind == "symlink":
        transcript.symlink_to(outside)
    else:
        transcript.mkdir()
    transport.answers = {"dan@remote.test": LATER}
    for _ in range(3):
        clock.advance(hours=2)
        assert service.run_once().errors == ()
    assert delivered_to(transport, "carol@remote.test") == 1
    assert outside.read_text() == "precious"
    assert os_spool.queued_message(queue_id).envelope.attempts == 4
    service.close()


def test_a_huge_transcript_is_read_in_bounded_memory(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """The history is read and written again at every attempt: a transcript of 256 MiB
    (sparse: no disk) was read whole, into twice its size of memory."""
    queue_id = waiting(os_spool, transport, clock, "bob@remote.test")
    transcript = root_of(os_spool) / "Queue" / f"{queue_id}.RTR"
    with transcript.open("r+b") as handle:
        handle.truncate(256 * 1024 * 1024)
    transport.answers = {"bob@remote.test": LATER}
    clock.advance(hours=1)
    service = make_service(os_spool, transport, clock)
    report, peak = peak_of(service.run_once)
    assert report.errors == ()
    assert report.deferred == ((queue_id, "bob@remote.test"),)
    assert peak < 64 * 1024 * 1024
    assert transcript.stat().st_size < 8 * 1024 * 1024
    assert "earlier attempts left out" in os_spool.transcript(queue_id)
    service.close()


def test_a_long_history_keeps_its_latest_attempts_whole(spool: Spool, clock: FakeClock) -> None:
    """Guard (the cut): past the bound, the oldest attempts go, from a section's start; a
    history under it is kept whole."""
    transitions = make_service(spool, CapturingTransport(), clock)._transitions
    head = "<bob@remote.test>\npending: 451\n\nDelivery attempts, oldest first:\n"
    short = "--- one\n12:00:00.000 * a\n"
    spool._store.write("Queue", f"{BAD_ID}.RTR", (head + short).encode())
    assert transitions.transcript_history(BAD_ID, "RTR") == short
    sections = [f"--- attempt {n}\n12:00:00.000 * {'x' * 1000}\n" for n in range(6000)]
    spool._store.write("Queue", f"{BAD_ID}.RTR", (head + "".join(sections)).encode())
    history = transitions.transcript_history(BAD_ID, "RTR")
    first, rest = history.split("\n", 1)
    assert first.startswith("(earlier attempts left out")
    assert rest.startswith("--- attempt ")
    assert rest.endswith(sections[-1])
    assert rest in "".join(sections)
    assert len(history) <= 4 * 1024 * 1024 + 100


# -- guards: what was handled before ---------------------------------------------------------------


def test_names_that_are_no_queue_files_are_left_alone(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """Guard (correct before): names that do not fit ``ID.kind`` (no id, a dotted owner, a
    backup, a name not in UTF-8) are neither read, moved, nor deleted, and stop nothing."""
    good = waiting(os_spool, transport, clock, "bob@remote.test")
    queue = root_of(os_spool) / "Queue"
    odd = ["notes.txt", "no id.env", f"{good}.eml.bak", f"{good}.a.b.env", ".hidden.env", "x"]
    for name in odd:
        (queue / name).write_text("{}")
    os.mkfifo(queue / f"{BAD_ID}.fifo")
    raw = os.fsencode(str(queue)) + b"/\xff\xfe.env"
    with open(raw, "wb") as handle:
        handle.write(b"{}")
    clock.advance(hours=1)
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.delivered == ((good, "bob@remote.test"),)
    assert report.badmail == ()
    clock.advance(minutes=30)
    assert service.rescan().errors == ()
    left = set(os.listdir(queue))
    assert left == {*odd, f"{BAD_ID}.fifo", os.fsdecode(b"\xff\xfe.env")}
    service.close()


def test_an_envelope_without_its_message_goes_to_badmail_naming_the_file(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """Guard (correct before): ``ID.env`` alone (its ``.eml`` deleted by hand) is moved aside
    with the reason; the message beside it is delivered."""
    good = admit(spool, "bob@remote.test")
    bad = admit(spool, "carol@remote.test")
    spool._store.remove("Queue", f"{bad}.eml")
    service = make_service(spool, transport, clock)
    report = service.run_once()
    assert report.delivered == ((good, "bob@remote.test"),)
    assert report.badmail == (bad,)
    assert report.errors == ()
    item = spool.badmail_item(bad)
    assert f"the message file Queue/{bad}.eml is missing" in item.reason
    assert not item.has_message
    assert spool._store.queue_files() == {}
    service.close()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.update(attempts="3"), "field 'attempts' must be int"),
        (lambda d: d.update(recipients={"a": 1}), "needs a list of recipients"),
        (lambda d: d.update(recipients=[{"address": 5}]), "field 'address' must be str"),
        (lambda d: d.update(next_attempt="tomorrow"), "not an ISO 8601 time"),
        (lambda d: d.update(next_attempt="2026-11-28T10:00:00"), "has no time zone"),
        (lambda d: d.update(held_seconds=1e300), "held_seconds"),
        (lambda d: d.update(size=1e400), "field 'size' must be int"),
        (lambda d: d.update(sender=None), "field 'sender' must be str"),
    ],
    ids=["attempts-str", "rcpts-object", "address-int", "time-text", "naive", "held", "inf", "nul"],
)
def test_a_wrong_but_valid_json_envelope_goes_to_badmail_naming_the_field(
    spool: Spool,
    transport: CapturingTransport,
    clock: FakeClock,
    change: Callable[[dict[str, object]], None],
    why: str,
) -> None:
    """Guard (correct before): the service moves it aside with the field named; the message
    beside it goes."""
    good = admit(spool, "bob@remote.test")
    bad = admit(spool, "carol@remote.test")
    edit_envelope(spool, bad, change)
    service = make_service(spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.delivered == ((good, "bob@remote.test"),)
    assert report.badmail == (bad,)
    assert why in spool.badmail_item(bad).reason
    service.close()


@pytest.mark.parametrize(
    "field",
    ["arrival", "next_attempt", "notice_at", "first_attempt", "held_since"],
)
@pytest.mark.parametrize(
    "moment",
    ["0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59"],
    ids=["year-1", "year-1-east", "year-10000-in-utc"],
)
def test_times_at_the_ends_of_the_calendar_stop_nothing(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, field: str, moment: str
) -> None:
    """Guard (correct before): no OverflowError from the schedule, the retry arithmetic or
    the delay notice; the message is delivered, waits, or stays held, and the others go."""
    good = admit(spool, "bob@remote.test")
    odd = admit(spool, "carol@remote.test")
    edit_envelope(spool, odd, lambda data: data.update({field: moment}))
    service = make_service(spool, transport, clock)
    report = service.run_once()
    clock.advance(hours=1)
    later = service.run_once()
    assert report.errors == later.errors == ()
    assert (good, "bob@remote.test") in report.delivered
    sent = delivered_to(transport, "carol@remote.test")
    if field == "held_since" or (field == "next_attempt" and moment.startswith("9999")):
        assert sent == 0
        assert spool.queued_message(odd).envelope.id == odd
    else:
        assert sent == 1
    service.close()


def test_five_thousand_and_duplicate_recipients_in_an_envelope_are_delivered_once_each(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """Guard (correct before): an envelope edited to hold 5,000 recipients, each twice."""
    queue_id = admit(spool, "bob@remote.test")

    def many(data: dict[str, object]) -> None:
        [first] = data["recipients"]  # type: ignore[misc]
        data["recipients"] = [
            dict(first, address=f"u{n % 5000}@remote.test") for n in range(10_000)
        ]

    edit_envelope(spool, queue_id, many)
    service = make_service(spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert {address for _, address in report.delivered} == {
        f"u{n}@remote.test" for n in range(5000)
    }
    assert spool._store.queue_files() == {}
    service.close()


@pytest.mark.parametrize("owner", ["", "x" * 200, "%2F%2E%2E%2F", "\udcff\udcfe"])
def test_a_claim_of_any_owner_name_is_returned_and_delivered(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock, owner: str
) -> None:
    """A claimed envelope whose owner part is empty, long, quoted or not UTF-8 names no
    record (its owner is dead): the claim goes back and is delivered. The empty owner
    (``ID..env``) was read as "this process" by the recovery and the finish, which said the
    claim was returned and left it, the message stuck for ever (the others: guard)."""
    queue_id = admit(os_spool, "bob@remote.test")
    queue = os.fsencode(str(root_of(os_spool) / "Queue"))
    os.rename(
        queue + os.fsencode(f"/{queue_id}.env"), queue + os.fsencode(f"/{queue_id}.{owner}.env")
    )
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.delivered == ((queue_id, "bob@remote.test"),)
    assert os_spool._store.queue_files() == {}
    service.close()


def test_a_claim_whose_owner_has_dots_is_no_claim_and_its_message_goes_to_badmail(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """Guard (correct before): owners have no dots, so ``ID.a.b.env`` is no claim: the message
    is one without an envelope, moved to BadMail once a lease old; the file is left."""
    queue_id = admit(os_spool, "bob@remote.test")
    queue = root_of(os_spool) / "Queue"
    (queue / f"{queue_id}.env").rename(queue / f"{queue_id}.a.b.env")
    old = os.stat(queue / f"{queue_id}.eml").st_mtime - 3600
    os.utime(queue / f"{queue_id}.eml", (old, old))
    service = make_service(os_spool, transport, clock)
    report = service.run_once()
    assert report.errors == ()
    assert report.badmail == (queue_id,)
    assert "without an envelope" in os_spool.badmail_item(queue_id).reason
    assert os_spool.badmail_message(queue_id).endswith(b"hello\r\n")
    assert os.listdir(queue) == [f"{queue_id}.a.b.env"]
    service.close()


def test_a_huge_transcript_is_shown_by_its_end_in_bounded_memory(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """``Spool.transcript`` (the CLI's ``queue show``) read a transcript whole: 256 MiB of one
    (sparse: no disk) took twice that in memory. It shows the last 4 MiB, from a whole line."""
    queue_id = waiting(os_spool, transport, clock, "bob@remote.test")
    transcript = root_of(os_spool) / "Queue" / f"{queue_id}.RTR"
    with transcript.open("r+b") as handle:
        handle.truncate(256 * 1024 * 1024)
        handle.write(b"--- attempt 1\n")
        handle.seek(0, 2)
        handle.write(b"\n--- the latest attempt\n12:00:00.000 * the end\n")
    shown, peak = peak_of(lambda: os_spool.transcript(queue_id))
    assert peak < 32 * 1024 * 1024
    assert shown.startswith("(the beginning left out: the transcript is over 4194304 bytes)\n")
    assert shown.endswith("--- the latest attempt\n12:00:00.000 * the end\n")
    assert "attempt 1" not in shown


def test_a_huge_envelope_is_not_read_into_memory(
    os_spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    """Every envelope was read whole, by the rescan, the attempt and a listing: a planted one
    of 160 MiB (sparse: no disk) took that and more. Past ``MAX_ENVELOPE`` it is not read:
    the listing names it, the attempt moves its message to BadMail with the reason."""
    good = waiting(os_spool, transport, clock, "bob@remote.test")
    bad = admit(os_spool, "carol@remote.test")
    with (root_of(os_spool) / "Queue" / f"{bad}.env").open("r+b") as handle:
        handle.truncate(160 * 1024 * 1024)
    clock.advance(hours=1)
    unreadable: list[tuple[str, str]] = []
    service = make_service(os_spool, transport, clock)

    def list_then_run() -> tuple[list[str], Report]:
        queued = os_spool.queued(unreadable=lambda *why: unreadable.append(why))
        return [item.envelope.id for item in queued], service.run_once()

    (listed, report), peak = peak_of(list_then_run)
    assert peak < 32 * 1024 * 1024
    assert listed == [good]
    [(queue_id, why)] = unreadable
    assert queue_id == bad
    assert f"over {MAX_ENVELOPE} bytes" in why
    assert report.delivered == ((good, "bob@remote.test"),)
    assert report.badmail == (bad,)
    assert f"over {MAX_ENVELOPE} bytes" in os_spool.badmail_item(bad).reason
    service.close()
