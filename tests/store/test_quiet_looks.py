"""A tick's looks at Pickup and at the triggers list a folder only when inotify says something
came: an empty Pickup with no event since, and a SortTemp with no trigger renamed in since,
are not listed again (each listing was a few hundred microseconds of a busy service's tick).

What must not be missed is checked as carefully as the skips: a file or trigger that arrives
after a quiet look, one that was there before the watch began, one renamed in during the look,
a file still being written, and a watch that has gone. Real files in a temp dir; Linux only.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail import MailService, Router, Spool
from spoolmail._core.ids import QueueIds
from spoolmail._core.shares import Share
from spoolmail._store import pyfs
from spoolmail._store import store as store_module
from spoolmail._store.store import Durability, MailStore
from spoolmail.testing import CapturingTransport, FakeClock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def ready_in_turn(store: MailStore) -> list[str]:
    return [name for name, _size in store.pickup_ready_in_turn()]


def make_store(root: Path, clock: FakeClock, seed: int = 1) -> MailStore:
    return MailStore(
        pyfs.OSFS(str(root)),
        durability=Durability.FSYNC,
        clock=clock,
        ids=QueueIds(random.Random(seed)),
        lease=timedelta(minutes=10),
    )


class Listings:
    """Counts the store's listings of each folder."""

    def __init__(self, store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folders: list[str] = []
        real = store.listdir

        def counted(folder: str) -> list[str]:
            self.folders.append(folder)
            return real(folder)

        monkeypatch.setattr(store, "listdir", counted)

    def of(self, folder: str) -> int:
        return self.folders.count(folder)


# -- Pickup -----------------------------------------------------------------------------------


def test_an_empty_pickup_is_listed_again_only_after_an_event(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    listings = Listings(store, monkeypatch)
    assert ready_in_turn(store) == []
    assert ready_in_turn(store) == []
    assert ready_in_turn(store) == []
    assert listings.of("Pickup") == 1
    (tmp_path / "Pickup" / "one.eml").write_bytes(b"To: a@b.example\r\n\r\nx\r\n")
    assert ready_in_turn(store) == ["one.eml"]
    assert listings.of("Pickup") == 2


def test_a_file_there_before_the_watch_began_is_found(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    (tmp_path / "Pickup" / "early.eml").write_bytes(b"x")
    os.utime(tmp_path / "Pickup" / "early.eml", (0, 0))  # settled long ago
    assert ready_in_turn(store) == ["early.eml"]


def test_a_pickup_with_a_file_in_it_is_listed_at_every_look(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    listings = Listings(store, monkeypatch)
    # Still being written: not ready, and the next look must see it again.
    with (tmp_path / "Pickup" / "slow.eml").open("wb") as writer:
        writer.write(b"To: a@b.example\r\n")
        writer.flush()
        assert ready_in_turn(store) == []
        assert ready_in_turn(store) == []
        assert listings.of("Pickup") == 2
        writer.write(b"\r\nbody\r\n")
    assert ready_in_turn(store) == ["slow.eml"]


def test_files_of_other_shares_only_still_count_as_empty(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    store.share = Share(0, 2)
    names = [f"m{i}.eml" for i in range(40)]
    theirs = [name for name in names if not store.share.owns_name(name)]
    mine = [name for name in names if store.share.owns_name(name)]
    assert theirs
    assert mine
    (tmp_path / "Pickup" / theirs[0]).write_bytes(b"x")
    listings = Listings(store, monkeypatch)
    assert ready_in_turn(store) == []
    assert ready_in_turn(store) == []
    assert listings.of("Pickup") == 1
    (tmp_path / "Pickup" / mine[0]).write_bytes(b"x")
    assert ready_in_turn(store) == [mine[0]]


def test_an_entry_renamed_in_or_linked_after_a_quiet_look_is_seen(
    tmp_path: Path, clock: FakeClock, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = make_store(tmp_path, clock)
    assert ready_in_turn(store) == []
    outside = tmp_path_factory.mktemp("elsewhere") / "m.eml"
    outside.write_bytes(b"x")
    os.rename(outside, tmp_path / "Pickup" / "m.eml")
    assert ready_in_turn(store) == ["m.eml"]
    os.remove(tmp_path / "Pickup" / "m.eml")
    assert ready_in_turn(store) == []
    # A symbolic link is refused (yielded, so that intake sends it to BadMail), never skipped.
    os.symlink("/etc/passwd", tmp_path / "Pickup" / "link.eml")
    assert ready_in_turn(store) == ["link.eml"]


def test_a_watch_that_has_gone_means_a_listing_every_time(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    assert ready_in_turn(store) == []
    watcher = store.readiness.watcher
    assert watcher is not None
    watcher.close()
    listings = Listings(store, monkeypatch)
    assert ready_in_turn(store) == []  # a new watch, and a listing
    assert listings.of("Pickup") == 1
    assert store.readiness.watcher is not watcher


# -- triggers ---------------------------------------------------------------------------------


def watching(store: MailStore) -> None:
    """Start the store's trigger watch as a running service's wait does."""
    store._trigger_watch = store.trigger_watch()
    assert store._trigger_watch is not None


def test_sorttemp_is_listed_again_only_after_a_trigger_came(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    operator = make_store(tmp_path, clock, seed=2)  # another process: spoolmail queue ...
    watching(store)
    listings = Listings(store, monkeypatch)
    assert store.take_triggers().ids == set()  # the first look lists
    assert listings.of("SortTemp") == 1
    # Files renamed into SortTemp that are not triggers (spares, claims) change nothing.
    store.write("Queue", "x.eml", b"x")
    assert store.recycle("Queue", "x.eml")
    assert store.take_triggers().ids == set()
    assert store.take_triggers().ids == set()
    assert listings.of("SortTemp") == 1
    operator.write_trigger(["19ac9b2f1c0-000000000001"])
    assert store.take_triggers().ids == {"19ac9b2f1c0-000000000001"}
    assert listings.of("SortTemp") == 2
    operator.write_flush_trigger(domain="example.com")
    assert len(store.take_triggers().flushes) == 1


def test_a_trigger_left_before_the_watch_began_is_found(tmp_path: Path, clock: FakeClock) -> None:
    store = make_store(tmp_path, clock)
    make_store(tmp_path, clock, seed=2).write_trigger(None)
    watching(store)
    assert store.take_triggers().ids is None  # the whole Queue


def test_a_trigger_renamed_in_during_the_listing_is_taken_at_the_next_look(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    operator = make_store(tmp_path, clock, seed=2)
    watching(store)
    real = store.listdir

    def racing(folder: str) -> list[str]:
        names = real(folder)
        if folder == "SortTemp":
            operator.write_trigger(["19ac9b2f1c0-000000000002"])  # just after the listing
        return names

    monkeypatch.setattr(store, "listdir", racing)
    assert store.take_triggers().ids == set()
    monkeypatch.setattr(store, "listdir", real)
    assert store.take_triggers().ids == {"19ac9b2f1c0-000000000002"}


def test_a_worker_sees_the_copy_another_worker_made_for_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    first, second = make_store(tmp_path, clock, seed=3), make_store(tmp_path, clock, seed=4)
    first.share, second.share = Share(0, 2), Share(1, 2)
    watching(first)
    watching(second)
    assert first.take_triggers().ids == set()
    assert second.take_triggers().ids == set()
    make_store(tmp_path, clock, seed=5).write_trigger(["19ac9b2f1c0-000000000003"])
    assert first.take_triggers().ids == {"19ac9b2f1c0-000000000003"}
    assert second.take_triggers().ids == {"19ac9b2f1c0-000000000003"}  # first's copy


def test_a_closed_trigger_watch_means_a_listing_every_time(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    watching(store)
    assert store._trigger_watch is not None
    store.take_triggers()
    store._trigger_watch.close()
    listings = Listings(store, monkeypatch)
    store.take_triggers()
    store.take_triggers()
    assert listings.of("SortTemp") == 2


def test_a_rescan_lists_both_folders_whatever_the_watches_said(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path, clock)
    watching(store)
    assert ready_in_turn(store) == []
    store.take_triggers()
    listings = Listings(store, monkeypatch)
    store.look_everywhere()
    assert ready_in_turn(store) == []
    store.take_triggers()
    assert listings.of("Pickup") == 1
    assert listings.of("SortTemp") == 1
    # And quiet again after it.
    assert ready_in_turn(store) == []
    store.take_triggers()
    assert listings.of("Pickup") == 1
    assert listings.of("SortTemp") == 1


def test_the_services_rescan_takes_a_trigger_no_event_told_of(
    tmp_path: Path, clock: FakeClock
) -> None:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"]),
            transport=CapturingTransport(),
            clock=clock,
        )
        try:
            store = spool._store
            watching(store)
            service.run_once()
            service.run_once()
            # Written in place (the watch tells of names renamed in): behind its back.
            hidden = tmp_path / "MailRoot" / "SortTemp" / f"{store.owner}.hidden.trigger"
            hidden.write_bytes(b'{"ids": ["19ac9b2f1c0-000000000001"]}')
            service.run_once()
            assert hidden.exists()  # a quiet tick did not list SortTemp
            service.rescan()
            assert not hidden.exists()  # the rescan did, and took it
        finally:
            service.close()


# -- the wait: woken by SortTemp's other renames once a quiet while ----------------------------


class Wakes:
    """Counts the trigger watch's reads of its events (one a wake-up by SortTemp)."""

    def __init__(self, store: MailStore, monkeypatch: pytest.MonkeyPatch) -> None:
        watch = store._trigger_watch
        assert watch is not None
        self.count = 0
        real = watch.arrived

        def counted() -> bool:
            self.count += 1
            return real()

        monkeypatch.setattr(watch, "arrived", counted)


@pytest.fixture
def wake_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    pair = socket.socketpair()
    with pair[0], pair[1]:
        pair[0].setblocking(False)
        yield pair


def in_a_while(action: Callable[[], object], seconds: float = 0.02) -> threading.Thread:
    def later() -> None:
        time.sleep(seconds)  # the wait has begun (it is the wait's own timing under test)
        action()

    thread = threading.Thread(target=later)
    thread.start()
    return thread


def test_other_renames_into_sorttemp_wake_the_wait_once_a_quiet_while(
    tmp_path: Path,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    wake_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Another worker's spares and claims (here 300 recycled files) do not wake the loop each:
    it reads them together after ``_QUIET``; with nothing else, it waits its whole time."""
    store = make_store(tmp_path, clock)
    other = make_store(tmp_path, clock, seed=2)
    watching(store)
    wakes = Wakes(store, monkeypatch)
    for number in range(300):
        other.write("Queue", f"{number}.eml", b"x", durability=Durability.NONE)

    def recycle_all() -> None:
        for number in range(300):
            other.recycle("Queue", f"{number}.eml")  # the first 64 become spares, renamed in
            other.write("Queue", f"again{number}.eml", b"x", durability=Durability.NONE)
            if number % 10 == 9:
                time.sleep(0.01)  # spread over the whole wait, as a busy group's renames are

    writer = in_a_while(recycle_all)
    started = time.monotonic()
    store.wait_for_pickup(0.4, wake=wake_pair[0].fileno())
    waited = time.monotonic() - started
    writer.join()
    assert waited >= 0.39
    assert wakes.count <= 0.4 / store_module._QUIET + 3  # not one for each of 300 renames


@pytest.mark.parametrize("what", ["trigger", "wake"])
def test_a_trigger_or_a_wake_during_the_quiet_while_still_ends_the_wait(
    tmp_path: Path,
    clock: FakeClock,
    wake_pair: tuple[socket.socket, socket.socket],
    what: str,
) -> None:
    store = make_store(tmp_path, clock)
    other = make_store(tmp_path, clock, seed=2)
    watching(store)
    other.write("Queue", "x.eml", b"x")

    def come() -> None:
        other.recycle("Queue", "x.eml")  # a spare: the wait goes quiet
        time.sleep(0.005)
        if what == "trigger":
            other.write_trigger(["19ac9b2f1c0-000000000003"])
        else:
            wake_pair[1].send(b"!")

    thread = in_a_while(come)
    started = time.monotonic()
    store.wait_for_pickup(10.0, wake=wake_pair[0].fileno())
    thread.join()
    assert time.monotonic() - started < 5.0  # ended by it, not by the time
    if what == "trigger":
        assert store.take_triggers().ids == {"19ac9b2f1c0-000000000003"}


# -- reading the events -----------------------------------------------------------------------


def _event(name: bytes, *, mask: int = 0x80, cookie: int = 0, pad: int = 0) -> bytes:
    """One inotify event as the kernel writes it: the name NUL-terminated and padded."""
    padded = name + b"\0" * (1 + pad)
    return store_module._EVENT.pack(1, mask, cookie, len(padded)) + padded


_NAMES = st.text(alphabet="ab.-_rtige0123456789", max_size=20).map(str.encode) | st.sampled_from(
    [b"x.trigger", b"OWNER.TOKEN.w1of4.trigger", b"trigger", b".trigger.tmp", b"a.triggers"]
)


@given(
    st.lists(
        st.tuples(_NAMES, st.integers(0, 2**32 - 1), st.integers(0, 8)), min_size=1, max_size=12
    )
)
def test_the_quick_look_at_the_events_finds_what_the_exact_one_does(
    events: list[tuple[bytes, int, int]],
) -> None:
    data = b"".join(_event(name, cookie=cookie, pad=pad) for name, cookie, pad in events)
    expected = any(name.endswith(b".trigger") for name, _, _ in events)
    assert store_module.trigger_event(data, exact=True) is expected
    assert store_module.trigger_event(data, exact=False) is expected


def test_lost_events_are_found_when_reading_event_by_event() -> None:
    # The overflow event has no name; the kernel sends it only with its queue full, that is
    # after a read that filled the buffer, from which on the events are read one by one.
    overflow = store_module._EVENT.pack(-1, store_module._IN_Q_OVERFLOW, 0, 0)
    data = _event(b"spare.tmp") + overflow
    assert store_module.trigger_event(data, exact=True)
    assert not store_module.trigger_event(_event(b"spare.tmp"), exact=True)
