"""The store: atomic writes, rename claims with one winner, owner leases, on both filesystems."""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.ids import QueueIds
from spoolmail._core.shares import Share
from spoolmail._store import pyfs
from spoolmail._store.orders import flush_order, post_flush_order
from spoolmail._store.store import (
    FOLDERS,
    Durability,
    FlushOrder,
    MailStore,
    PickupClaim,
    read_head,
)
from spoolmail.exceptions import LayoutError, StorageError
from spoolmail.testing import FakeClock


def make_store(filesystem: pyfs.FS, clock: FakeClock, seed: int = 1) -> MailStore:
    return MailStore(
        filesystem,
        durability=Durability.FSYNC,
        clock=clock,
        ids=QueueIds(random.Random(seed)),
        lease=timedelta(minutes=10),
    )


def test_creates_the_five_folders(filesystem: pyfs.FS, clock: FakeClock) -> None:
    make_store(filesystem, clock)
    assert sorted(filesystem.listdir("/")) == sorted(FOLDERS)


def test_write_is_atomic_and_leaves_sorttemp_clean(filesystem: pyfs.FS, clock: FakeClock) -> None:
    store = make_store(filesystem, clock)
    assert store.write("Queue", "a.eml", [b"one ", b"two"]) == 7
    assert store.read("Queue", "a.eml") == b"one two"
    store.write("Queue", "a.eml", b"replaced")
    assert store.read("Queue", "a.eml") == b"replaced"
    assert store.listdir("SortTemp") == []


def test_a_file_is_read_to_its_end_without_a_read_past_it(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MailRoot files are written whole and never again: the size the open saw ends them.
    store = make_store(pyfs.OSFS(str(tmp_path)), clock)
    data = bytes(range(256)) * 1000
    store.write("Queue", "a.eml", data)
    store.write("Queue", "empty.env", b"")
    reads: list[int] = []
    read = os.read

    def counted(fd: int, size: int) -> bytes:
        reads.append(size)
        return read(fd, size)

    monkeypatch.setattr(os, "read", counted)
    assert store.read("Queue", "a.eml") == data
    assert store.read("Queue", "empty.env") == b""
    assert reads == [len(data)]  # one read, no read of nothing after the end (none if empty)
    reads.clear()
    with store.open("Queue", "a.eml") as handle:
        assert os.fstat(handle.fileno()).st_size == len(data)
        parts = []
        while part := handle.read(100_000):
            parts.append(part)
        assert handle.read(10) == b""
    assert b"".join(parts) == data
    assert len(reads) == 3  # 100,000 + 100,000 + 56,000: the end is known
    with pytest.raises(ValueError, match="closed"):
        handle.read(1)
    with store.open("Queue", "a.eml") as handle:
        assert handle.read() == data
        buffer = bytearray(10)
        assert handle.readinto(buffer) == 0


def test_failed_write_leaves_nothing(filesystem: pyfs.FS, clock: FakeClock) -> None:
    store = make_store(filesystem, clock)

    def chunks():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        store.write("Queue", "b.eml", chunks())
    assert not store.exists("Queue", "b.eml")
    assert store.listdir("SortTemp") == []


def test_rename_reports_a_lost_race(filesystem: pyfs.FS, clock: FakeClock) -> None:
    store = make_store(filesystem, clock)
    store.write("Pickup", "m.txt", b"x")
    assert store.rename(("Pickup", "m.txt"), ("SortTemp", "mine"))
    assert not store.rename(("Pickup", "m.txt"), ("SortTemp", "theirs"))
    with pytest.raises(ValueError, match="onto itself"):
        store.rename(("SortTemp", "mine"), ("SortTemp", "mine"))
    assert store.read("SortTemp", "mine") == b"x"


def test_pickup_names_skip_writers_temp_files_and_folders(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    store = make_store(filesystem, clock)
    for name in ("b.eml", "a.txt", ".hidden", "x.tmp", "Y.TMP", "noext"):
        store.write("Pickup", name, b"x")
    filesystem.makedir("Pickup/sub")
    assert store.pickup_names() == ["a.txt", "b.eml", "noext"]


def test_claim_race_has_exactly_one_winner(filesystem: pyfs.FS, clock: FakeClock) -> None:
    # Separate stores on the same MailRoot stand for separate processes.
    stores = [make_store(filesystem, clock, seed) for seed in range(8)]
    stores[0].write("Pickup", "race.eml", b"x")
    barrier = threading.Barrier(len(stores))
    results: list[PickupClaim | None] = [None] * len(stores)

    def claim(index: int) -> None:
        barrier.wait()
        results[index] = stores[index].claim_pickup("race.eml")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert stores[0].pickup_claims() == winners
    assert store_read_claim(stores[0], winners[0]) == b"x"


def store_read_claim(store: MailStore, claim: PickupClaim) -> bytes:
    return store.read("SortTemp", claim.file)


@given(st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s and "\x00" not in s))
def test_claim_file_names_round_trip(name: str) -> None:
    claim = PickupClaim("19ac9b2f1c0-5e1f0c2a9b7d", "owner1", name)
    back = PickupClaim.from_file(claim.file)
    assert back is not None
    assert (back.id, back.owner) == (claim.id, claim.owner)
    assert len(claim.file.encode()) <= 255
    if not claim.file.endswith("~.pickup"):
        assert back.name == name


def test_not_claim_files() -> None:
    assert PickupClaim.from_file("owner.tok.tmp") is None
    assert PickupClaim.from_file("bad id.owner.name.pickup") is None
    assert PickupClaim.from_file("id.pickup") is None


def test_own_owner_is_alive_and_unknown_owners_are_dead(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    store = make_store(filesystem, clock)
    assert store.owner_alive(store.owner)
    assert not store.owner_alive("nobody")


def test_owner_alive_until_its_lease_ends(filesystem: pyfs.FS, clock: FakeClock) -> None:
    other, store = make_store(filesystem, clock, 1), make_store(filesystem, clock, 2)
    other.announce()
    assert store.owner_alive(other.owner)
    clock.advance(minutes=11)
    assert not store.owner_alive(other.owner)
    assert store.dead_owners() == [other.owner]


def test_owner_on_this_host_is_dead_when_its_process_is(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    store = make_store(filesystem, clock)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    record = {"host": os.uname().nodename, "pid": int(gone.stdout), "renewed": clock().isoformat()}
    store.write("SortTemp", "ghost.owner", json.dumps(record).encode())
    if os.name == "posix":
        assert not store.owner_alive("ghost")
    record["host"] = "elsewhere.example"
    store.write("SortTemp", "ghost.owner", json.dumps(record).encode())
    assert store.owner_alive("ghost")  # another host: only its lease can tell


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/stat is Linux's")
def test_owner_killed_but_not_yet_reaped_is_dead(filesystem: pyfs.FS, clock: FakeClock) -> None:
    # A killed worker whose parent died with it is a zombie until init reaps it: kill(pid, 0)
    # still finds it, yet it claims nothing more.
    store = make_store(filesystem, clock)
    with subprocess.Popen([sys.executable, "-c", "pass"]) as child:
        until = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < until, "the child never ended"
            time.sleep(0.01)
        record = {"host": os.uname().nodename, "pid": child.pid, "renewed": clock().isoformat()}
        store.write("SortTemp", "zombie.owner", json.dumps(record).encode())
        assert not store.owner_alive("zombie")
    record["pid"] = os.getppid()  # a live process of this host
    store.write("SortTemp", "zombie.owner", json.dumps(record).encode())
    assert store.owner_alive("zombie")


def test_an_owner_record_dated_more_than_a_day_ahead_vouches_for_no_one(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    """Another host's record renewed a day or more ahead of this clock (a hand edit's 2062, a
    clock gone wrong) vouched for its claims until this clock caught up. Guard: a host a little
    ahead keeps them (its skew and a lease), and this host's own owners are told by their
    process, whatever the record's date (this clock may have been set back)."""
    store = make_store(filesystem, clock)

    def record(host: str, ahead: timedelta, pid: int = 4242) -> None:
        renewed = (clock() + ahead).isoformat()
        data = {"host": host, "pid": pid, "renewed": renewed}
        store.write("SortTemp", "ahead.owner", json.dumps(data).encode())

    record("elsewhere.example", timedelta(days=1, minutes=1))
    assert not store.owner_alive("ahead")
    record("elsewhere.example", timedelta(days=36 * 365))
    assert not store.owner_alive("ahead")
    record("elsewhere.example", timedelta(hours=3))
    assert store.owner_alive("ahead")
    record(os.uname().nodename, timedelta(days=30), pid=os.getpid())
    assert store.owner_alive("ahead")


def test_damaged_owner_record_counts_as_dead(filesystem: pyfs.FS, clock: FakeClock) -> None:
    store = make_store(filesystem, clock)
    store.write("SortTemp", "broken.owner", b"{not json")
    assert not store.owner_alive("broken")


def test_queue_claim_release_finish(filesystem: pyfs.FS, clock: FakeClock) -> None:
    store = make_store(filesystem, clock)
    store.commit_queued("q1", b"message", b"env-1")
    assert store.queue_files()["q1"].envelope
    assert store.claim_queued("q1")
    assert not store.claim_queued("q1")
    files = store.queue_files()["q1"]
    assert (files.envelope, files.claims) == (False, (store.owner,))
    store.release("q1", b"env-2")
    assert store.read("Queue", "q1.env") == b"env-2"
    assert store.claim_queued("q1")
    store.write("Queue", "q1.RTR", b"t")
    store.finish("q1")
    assert store.queue_files() == {}


@pytest.mark.parametrize("kinds", [(), ("RTR",), ("LTR",), ("RTR", "LTR")])
def test_a_finish_removes_whichever_transcripts_there_are(
    filesystem: pyfs.FS, clock: FakeClock, kinds: tuple[str, ...]
) -> None:
    store = make_store(filesystem, clock)
    store.commit_queued("q1", b"message", b"env-1")
    assert store.claim_queued("q1")
    for kind in kinds:
        store.write("Queue", f"q1.{kind}", b"t")
    store.finish("q1")
    assert store.listdir("Queue") == []


def test_a_finish_removes_a_transcript_s_name_even_as_a_dangling_link(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = make_store(pyfs.OSFS(str(tmp_path)), clock)
    store.commit_queued("q1", b"message", b"env-1")
    assert store.claim_queued("q1")
    (tmp_path / "Queue" / "q1.LTR").symlink_to(tmp_path / "nowhere")
    store.finish("q1")
    assert store.listdir("Queue") == []


def test_take_over_has_one_winner(filesystem: pyfs.FS, clock: FakeClock) -> None:
    dead, a, b = (make_store(filesystem, clock, s) for s in (1, 2, 3))
    dead.commit_queued("q1", b"m", b"e")
    assert dead.claim_queued("q1")
    assert a.take_over_queued("q1", dead.owner)
    assert not b.take_over_queued("q1", dead.owner)
    assert a.queue_files()["q1"].claims == (a.owner,)


def test_commit_badmail_moves_the_message_last(filesystem: pyfs.FS, clock: FakeClock) -> None:
    store = make_store(filesystem, clock)
    store.write("SortTemp", "claim", b"raw")
    store.commit_badmail("q9", message=("SortTemp", "claim"), report=b"why", envelope=b"env")
    assert store.read("BadMail", "q9.BAD") == b"raw"
    assert store.read("BadMail", "q9.BDR") == b"why"
    assert store.read("BadMail", "q9.BDP") == b"env"


def test_sweep_removes_only_dead_owners_files(filesystem: pyfs.FS, clock: FakeClock) -> None:
    dead, live, store = (make_store(filesystem, clock, s) for s in (1, 2, 3))
    dead.announce()
    clock.advance(minutes=11)
    live.announce()
    store.write("SortTemp", f"{dead.owner}.abc.tmp", b"x")
    store.write("SortTemp", f"{live.owner}.abc.tmp", b"x")
    store.write("SortTemp", "appwriter.fresh.tmp", b"x")  # no record: an application's submit
    store.write("SortTemp", "appwriter2.old.tmp", b"x")
    an_hour_ago = time.time() - 3600
    filesystem.setinfo("SortTemp/appwriter2.old.tmp", {"details": {"modified": an_hour_ago}})
    assert store.sweep_temp() == 3
    assert sorted(store.listdir("SortTemp")) == sorted(
        [f"{live.owner}.abc.tmp", f"{live.owner}.owner", "appwriter.fresh.tmp"]
    )


# -- spares: finished files written over instead of new files created ----------------------------


def os_store(tmp_path: Path, clock: FakeClock) -> MailStore:
    return make_store(pyfs.OSFS(str(tmp_path)), clock)


def test_a_finished_file_is_written_over_by_the_next_write(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = os_store(tmp_path, clock)
    store.write("Queue", "a.eml", b"a long message " * 100)
    inode = os.stat(tmp_path / "Queue" / "a.eml").st_ino
    assert store.recycle("Queue", "a.eml")
    assert not store.exists("Queue", "a.eml")
    [spare] = store.spares
    assert store.listdir("SortTemp") == [spare]
    store.write("Queue", "b.eml", b"short")
    assert store.read("Queue", "b.eml") == b"short"  # nothing of the longer file is left
    assert os.stat(tmp_path / "Queue" / "b.eml").st_ino == inode
    assert store.spares == ()
    assert store.listdir("SortTemp") == []


def test_spares_are_few_and_small(tmp_path: Path, clock: FakeClock) -> None:
    store = os_store(tmp_path, clock)
    store.write("Queue", "big.eml", b"x" * (256 * 1024 + 1))
    assert store.recycle("Queue", "big.eml")
    assert store.spares == ()
    assert store.listdir("SortTemp") == []
    for number in range(70):
        store.write("Queue", f"{number}.eml", b"x")
    for number in range(70):
        assert store.recycle("Queue", f"{number}.eml")
    assert len(store.spares) == 64
    assert sorted(store.listdir("SortTemp")) == sorted(store.spares)
    assert not store.recycle("Queue", "0.eml")  # already gone: as remove says


def test_a_spare_deleted_behind_the_stores_back_is_not_missed(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = os_store(tmp_path, clock)
    store.write("Queue", "a.eml", b"first")
    store.recycle("Queue", "a.eml")
    [spare] = store.spares
    os.unlink(tmp_path / "SortTemp" / spare)
    store.write("Queue", "b.eml", b"second")
    assert store.read("Queue", "b.eml") == b"second"


def test_closing_removes_the_spares_and_a_sweep_those_of_the_dead(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = os_store(tmp_path, clock)
    store.announce()
    for name in ("a.eml", "b.eml"):
        store.write("Queue", name, b"x")
    for name in ("a.eml", "b.eml"):
        store.recycle("Queue", name)
    assert len(store.listdir("SortTemp")) == 3  # two spares and the owner record
    store.close()
    assert store.listdir("SortTemp") == []

    dying = make_store(pyfs.OSFS(str(tmp_path)), clock, seed=2)
    dying.announce()
    dying.write("Queue", "c.eml", b"x")
    dying.recycle("Queue", "c.eml")
    clock.advance(minutes=11)  # its lease runs out without a close
    assert os_store(tmp_path, clock).sweep_temp() == 2  # the spare and the record


@given(st.lists(st.integers(0, 3000), min_size=1, max_size=12), st.data())
def test_a_spare_written_over_holds_what_was_written_and_is_cut_only_when_longer(
    sizes: list[int], data: st.DataObject
) -> None:
    """Spares of every length, kept here or passed from another process, written over by
    files of every length: each reads back exactly, and a spare is truncated only when it was
    longer than what was written over it (a truncation is a call that changes the inode even
    to its own length, bench/README.md "Fifteenth round")."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clock = FakeClock()
        store, other = os_store(root, clock), make_store(pyfs.OSFS(str(root)), clock, seed=2)
        inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.setblocking(False)
        store.exchange_spares(inbox=inbox)
        other.exchange_spares(give=lambda name: outbox.send(name.encode()) > 0)
        truncated: list[int] = []
        real = os.ftruncate

        def ftruncate(fd: int, length: int) -> None:
            truncated.append(length)
            real(fd, length)

        try:
            for number, size in enumerate(sizes):
                content = bytes([65 + number % 26]) * size
                store.write("Queue", f"{number}.eml", content)
                assert store.read("Queue", f"{number}.eml") == content
                (store if data.draw(st.booleans()) else other).recycle("Queue", f"{number}.eml")
            for number, size in enumerate(data.draw(st.lists(st.integers(0, 3000), max_size=12))):
                spare_sizes = {
                    os.stat(root / "SortTemp" / n).st_size for n in os.listdir(root / "SortTemp")
                }
                content = bytes([97 + number % 26]) * size
                truncated.clear()
                with pytest.MonkeyPatch.context() as patch:
                    patch.setattr(os, "ftruncate", ftruncate)
                    store.write("Queue", f"new{number}.eml", content)
                assert store.read("Queue", f"new{number}.eml") == content
                assert truncated in ([], [size])
                if truncated:
                    assert any(length > size for length in spare_sizes)
        finally:
            store.exchange_spares()
            inbox.close()
            outbox.close()


@pytest.mark.parametrize(
    "freed",
    [
        # A finish frees a message and then its envelope, as intake writes them.
        ("0.eml", "0.env", "1.eml", "1.env", "2.eml", "2.env"),
        # Delivery threads finish side by side: two messages' files, then their envelopes.
        ("0.eml", "1.eml", "0.env", "1.env", "2.eml", "2.env"),
        ("0.eml", "1.eml", "2.eml", "0.env", "1.env", "2.env"),
    ],
)
def test_files_freed_in_any_order_are_written_over_kind_by_kind_without_a_truncation(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, freed: tuple[str, ...]
) -> None:
    # A write of known length takes the oldest of the first few spares that is no longer than
    # it: each envelope lands on an envelope's file, each message on a message's.
    store = os_store(tmp_path, clock)
    for number in range(3):
        store.write("Queue", f"{number}.eml", b"m" * 2000)
        store.write("Queue", f"{number}.env", b"e" * 1000)
    for name in freed:
        store.recycle("Queue", name)
    truncated: list[int] = []
    monkeypatch.setattr(os, "ftruncate", lambda _fd, length: truncated.append(length))
    for number in range(3):
        store.write("Queue", f"new{number}.eml", b"n" * 2000)
        store.write("Queue", f"new{number}.env", b"f" * 1000)
    assert truncated == []
    assert store.spares == ()
    assert store.read("Queue", "new2.eml") == b"n" * 2000
    assert store.read("Queue", "new2.env") == b"f" * 1000


def full_pool(store: MailStore) -> None:
    for number in range(64):
        store.write("Queue", f"pool{number}.eml", b"x")
    for number in range(64):
        store.recycle("Queue", f"pool{number}.eml")
    assert len(store.spares) == 64


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """An inbox for spares, as _service.handoff makes them: the end to read, the end to send."""
    inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    inbox.setblocking(False)
    with inbox, outbox:
        yield inbox, outbox


def test_spares_are_passed_on_first_and_written_over_there(
    tmp_path: Path, clock: FakeClock, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A worker that delivers what another accepted passes what it finishes to that one
    (_service.handoff), before it keeps any itself: the listener writes over the file the
    deliverer finished."""
    deliverer = os_store(tmp_path, clock)
    listener = make_store(pyfs.OSFS(str(tmp_path)), clock, seed=2)
    inbox, outbox = pair
    passed: list[str] = []

    def give(name: str) -> bool:
        passed.append(name)
        outbox.send(name.encode())
        return True

    deliverer.exchange_spares(give=give)
    listener.exchange_spares(inbox=inbox)
    deliverer.write("Queue", "done.eml", b"delivered " * 10)
    inode = os.stat(tmp_path / "Queue" / "done.eml").st_ino
    assert deliverer.recycle("Queue", "done.eml")
    assert deliverer.spares == ()  # an empty pool, yet passed on
    [name] = passed
    assert name.startswith(deliverer.owner + ".")  # its own until the listener takes it
    listener.write("Queue", "new.eml", b"new")
    assert os.stat(tmp_path / "Queue" / "new.eml").st_ino == inode  # not a new file
    assert listener.read("Queue", "new.eml") == b"new"
    assert name not in os.listdir(tmp_path / "SortTemp")
    # Nothing waits: the next write creates its file.
    listener.write("Queue", "newer.eml", b"newer")
    assert os.stat(tmp_path / "Queue" / "newer.eml").st_ino != inode


def test_a_spare_not_taken_is_kept_then_deleted_past_a_full_pool(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = os_store(tmp_path, clock)
    store.exchange_spares(give=lambda _name: False)  # the listeners' inbox is full
    store.write("Queue", "kept.eml", b"x")
    assert store.recycle("Queue", "kept.eml")
    assert len(store.spares) == 1  # kept for this process's own writes
    store.write("Queue", "done.eml", b"x")
    full_pool(store)
    assert store.recycle("Queue", "done.eml")
    assert len(store.spares) == 64
    assert sorted(store.listdir("SortTemp")) == sorted(store.spares)  # no stray file


@pytest.mark.parametrize(
    "name",
    [
        "../Queue/victim.eml",
        "../../outside.tmp",
        "/etc/passwd",
        "owner.token.tmp/../../x",
        "owner.token.tmp\x00",
        "gone.token.tmp",  # well formed, but no such file (swept with its dead owner)
        "ünïcode.token.tmp",
        "",
    ],
)
def test_a_passed_spares_name_is_checked_before_it_is_used(
    tmp_path: Path, clock: FakeClock, pair: tuple[socket.socket, socket.socket], name: str
) -> None:
    """The inbox is another process's word: only a plain temp file's name in SortTemp is
    taken; anything else is passed over and a new file made."""
    (tmp_path / "outside.tmp").write_bytes(b"not ours")
    store = os_store(tmp_path, clock)
    store.write("Queue", "victim.eml", b"keep me")
    inbox, outbox = pair
    outbox.send(name.encode())
    store.exchange_spares(inbox=inbox)
    store.write("Queue", "new.eml", b"new")
    assert store.read("Queue", "new.eml") == b"new"
    assert store.read("Queue", "victim.eml") == b"keep me"
    assert (tmp_path / "outside.tmp").read_bytes() == b"not ours"
    assert store.listdir("SortTemp") == []


def test_elsewhere_recycling_is_deleting(clock: FakeClock) -> None:
    store = make_store(pyfs.MemoryFS(), clock)
    store.write("Queue", "a.eml", b"x")
    assert store.recycle("Queue", "a.eml")
    assert store.spares == ()
    assert store.listdir("SortTemp") == []


def test_read_head_across_chunks() -> None:
    data = b"A: " + b"x" * 200_000 + b"\r\n\r\nbody"
    head, rest = read_head(io.BytesIO(data), limit=1 << 20)
    assert head == data[: data.index(b"\r\n\r\n") + 2]
    assert rest == b"body"


def test_folders_on_two_devices_are_refused(tmp_path: Path, clock: FakeClock) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    root = tmp_path / "MailRoot"
    root.mkdir()
    elsewhere = (
        Path(os.environ.get("TMPDIR_SHM", shm)) / f"spoolmail-{os.getpid()}-{random.random()}"
    )
    elsewhere.mkdir()
    try:
        (root / "SortTemp").symlink_to(elsewhere)
        with pyfs.OSFS(str(root)) as filesystem, pytest.raises(LayoutError, match="one filesystem"):
            make_store(filesystem, clock)
    finally:
        elsewhere.rmdir()


def test_a_folder_linked_within_the_filesystem_is_followed(
    tmp_path: Path, clock: FakeClock
) -> None:
    """An operator may link ``Drop`` into a consumer's tree on the same filesystem: what the
    store writes there lands in the link's target, and no folder is made beside the link."""
    root = tmp_path / "MailRoot"
    root.mkdir()
    shared = tmp_path / "consumer" / "incoming"
    shared.mkdir(parents=True)
    (root / "Drop").symlink_to(shared)
    with pyfs.OSFS(str(root)) as filesystem:
        store = make_store(filesystem, clock)
        store.write("Drop", "x.eml", b"x-sender: a@b\r\n\r\nbody")
        assert (root / "Drop").is_symlink()
        assert (shared / "x.eml").read_bytes() == b"x-sender: a@b\r\n\r\nbody"
        assert store.listdir("Drop") == ["x.eml"]


def test_folders_are_found_whatever_their_case(filesystem: pyfs.FS, clock: FakeClock) -> None:
    """A MailRoot copied from IIS has ``Badmail``, ``pickup``...: used as is, never doubled."""
    for name in ("pickup", "QUEUE", "Badmail", "drop", "sorttemp"):
        filesystem.makedir(name)
    store = make_store(filesystem, clock)
    assert sorted(filesystem.listdir("/")) == ["Badmail", "QUEUE", "drop", "pickup", "sorttemp"]
    filesystem.writebytes("pickup/a.eml", b"x")
    assert store.pickup_names() == ["a.eml"]
    store.write("BadMail", "x.BDR", b"why")
    assert filesystem.readbytes("Badmail/x.BDR") == b"why"
    claim = store.claim_pickup("a.eml")
    assert claim is not None
    assert filesystem.exists(f"sorttemp/{claim.file}")


def test_of_two_spellings_the_exact_one_wins_and_is_logged(
    filesystem: pyfs.FS, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    filesystem.makedir("Badmail")
    filesystem.makedir("BadMail")
    caplog.set_level("WARNING", logger="spoolmail")
    store = make_store(filesystem, clock)
    store.write("BadMail", "x.BDR", b"why")
    assert filesystem.exists("BadMail/x.BDR")
    assert not filesystem.exists("Badmail/x.BDR")
    assert "the MailRoot has BadMail and Badmail" in caplog.text


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors ``os.fsync`` is called with (each still fsync'd)."""
    calls: list[int] = []
    real_fsync = os.fsync

    def counted(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return calls


def test_a_hint_trigger_is_not_fsynced_a_flush_order_and_its_copies_are(
    tmp_path: Path, clock: FakeClock, synced: list[int]
) -> None:
    """A trigger naming ids (or the whole Queue) is a hint to running services: a power cut
    ends them and a starting service scans the Queue, so it needs no fsync. A flush order
    waits for a service that may not run yet: it is fsync'd, and so are its copies."""
    store = make_store(pyfs.OSFS(str(tmp_path)), clock)
    store.write_trigger(["19ac9b2f1c0-000000000001"])
    store.write_trigger(None)
    assert synced == []
    store.write_flush_trigger(domain="example.com")
    assert len(synced) == 2  # the file, then SortTemp
    # A worker of two takes each and writes a copy for the other: each as its original.
    store.share = Share(0, 2)
    synced.clear()
    triggers = store.take_triggers()
    assert triggers.ids is None  # the whole Queue
    assert len(triggers.flushes) == 1
    assert len(synced) == 2  # the flush order's copy only
    copies = [n for n in store.listdir("SortTemp") if n.endswith(".w1of2.trigger")]
    assert len(copies) == 3


def test_a_flush_order_posted_without_the_store_is_the_one_the_store_writes(
    tmp_path: Path, clock: FakeClock, synced: list[int]
) -> None:
    """``queue flush --quiet`` writes its order with the standard library alone
    (``orders.post_flush_order``): the same bytes and kind of name as the store's, fsync'd the
    same way (the file, then SortTemp), no temp file left, read as a flush of everything."""
    store = make_store(pyfs.OSFS(str(tmp_path)), clock)
    post_flush_order(str(tmp_path / "SortTemp"))
    assert len(synced) == 2
    (posted,) = store.listdir("SortTemp")
    store.write_flush_trigger()
    (written,) = set(store.listdir("SortTemp")) - {posted}
    for name in (posted, written):
        owner, token, suffix = name.split(".")
        assert (len(owner), len(token), suffix) == (10, 12, "trigger")
        assert set(owner + token) <= set("0123456789abcdefghijklmnopqrstuv")
    assert store.read("SortTemp", posted) == store.read("SortTemp", written) == flush_order()
    assert json.loads(flush_order()) == {"flush": {"sender": None, "domain": None}}
    triggers = store.take_triggers()
    assert triggers.flushes == (FlushOrder(), FlushOrder())
    assert store.listdir("SortTemp") == []


def test_a_flush_order_that_cannot_be_written_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FileNotFoundError):
        post_flush_order(str(tmp_path / "missing"))
    # The order's name taken by a folder that is not empty: the rename fails after the write.
    monkeypatch.setattr(os, "urandom", bytes)  # bytes(n): n zero bytes
    taken = tmp_path / "0000000000.000000000000.trigger"
    taken.mkdir()
    (taken / "x").write_text("")
    with pytest.raises(IsADirectoryError):
        post_flush_order(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == [taken.name]


def test_a_damaged_trigger_is_read_as_the_whole_queue(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(pyfs.OSFS(str(tmp_path)), clock)
    for damaged in (b"", b"\x00" * 40, b'{"ids": ["a"'):
        store.write("SortTemp", f"{store.owner}.x.trigger", damaged)
        assert store.take_triggers().ids is None


def test_held_is_for_one_holder_at_a_time_and_says_when_the_file_went(
    filesystem: pyfs.FS, clock: FakeClock
) -> None:
    store = make_store(filesystem, clock)
    store.write("BadMail", "a.BAD", b"x")
    with store.held("BadMail", "a.BAD"):
        assert store.read("BadMail", "a.BAD") == b"x"
    with pytest.raises(FileNotFoundError), store.held("BadMail", "missing.BAD"):
        pass


def test_held_says_the_file_went_when_it_went_just_before_the_lock(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(pyfs.OSFS(str(tmp_path)), clock)
    store.write("BadMail", "a.BAD", b"x")
    flock = fcntl.flock

    def late(fd: int, operation: int) -> None:
        # The holder before this one finished with the entry and removed it meanwhile.
        (tmp_path / "BadMail" / "a.BAD").unlink()
        flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", late)
    with pytest.raises(FileNotFoundError), store.held("BadMail", "a.BAD"):
        pytest.fail("held a file that is gone")


def test_held_is_refused_while_another_process_holds_it_and_free_once_it_died(
    tmp_path: Path, clock: FakeClock
) -> None:
    store = make_store(pyfs.OSFS(str(tmp_path)), clock)
    store.write("BadMail", "a.BAD", b"x")
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY);"
            " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
            str(tmp_path / "BadMail" / "a.BAD"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"held\n"
            with (
                pytest.raises(StorageError, match="being changed by another process") as refused,
                store.held("BadMail", "a.BAD"),
            ):
                pytest.fail("held what another process holds")
            assert refused.value.temporary
        finally:
            holder.kill()  # killed, not let go: the kernel drops its lock
    with store.held("BadMail", "a.BAD"):
        pass
    os.replace(tmp_path / "BadMail" / "a.BAD", tmp_path / "BadMail" / "b.BAD")
    (tmp_path / "BadMail" / "a.BAD").write_bytes(b"another file under the name")
    with store.held("BadMail", "a.BAD"):
        pass
