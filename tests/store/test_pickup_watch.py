"""Waiting for Pickup: a complete file (closed after writing, or renamed in) ends the wait at
once where inotify watches the folder; writes alone, hidden names and the timeout do not.

Real files in a temp dir; Linux only where inotify is (the suite runs on Linux; elsewhere the
service polls and these tests have nothing to check).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolmail._store.entries import CloseWatcher, is_candidate

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, CloseWatcher]]:
    watcher = CloseWatcher.start(str(tmp_path))
    assert watcher is not None
    try:
        yield tmp_path, watcher
    finally:
        watcher.close()


def later(action: object, delay: float = 0.05) -> threading.Thread:
    """Run ``action`` on another thread after ``delay`` seconds (the waiter is then blocked)."""
    assert callable(action)
    thread = threading.Timer(delay, action)
    thread.start()
    return thread


def test_a_file_closed_after_writing_ends_the_wait(watched: tuple[Path, CloseWatcher]) -> None:
    folder, watcher = watched
    writer = later(lambda: (folder / "one.eml").write_bytes(b"x"))
    started = time.monotonic()
    assert watcher.wait(30)
    assert time.monotonic() - started < 10
    writer.join()


def test_a_file_renamed_in_ends_the_wait(
    watched: tuple[Path, CloseWatcher], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder, watcher = watched
    outside = tmp_path_factory.mktemp("elsewhere") / "m.eml"
    outside.write_bytes(b"x")
    writer = later(lambda: os.rename(outside, folder / "m.eml"))
    assert watcher.wait(30)
    writer.join()


def test_writes_to_an_open_file_and_hidden_names_do_not_end_it(
    watched: tuple[Path, CloseWatcher],
) -> None:
    folder, watcher = watched
    handle = (folder / "slow.eml").open("wb")
    try:
        handle.write(b"a")
        handle.flush()
        (folder / ".hidden.tmp").write_bytes(b"work in progress")  # closed, but hidden
        (folder / "x.TMP").write_bytes(b"also hidden")
        assert not watcher.wait(0.3)
    finally:
        handle.close()
    assert watcher.wait(5)  # the close is what completes it


def test_the_timeout_ends_it_and_the_wake_socket_too(watched: tuple[Path, CloseWatcher]) -> None:
    _, watcher = watched
    started = time.monotonic()
    assert not watcher.wait(0.2)
    assert time.monotonic() - started >= 0.19
    reader, writer = socket.socketpair()
    with reader, writer:
        waker = later(lambda: writer.send(b"!"))
        assert watcher.wait(30, wake=reader.fileno())
        waker.join()


def test_a_closed_watcher_returns_at_once(watched: tuple[Path, CloseWatcher]) -> None:
    _, watcher = watched
    watcher.close()
    assert not watcher.wait(30)


@pytest.mark.parametrize(
    ("name", "candidate"),
    [("a.eml", True), ("A", True), (".a.eml", False), ("a.tmp", False), ("a.TMP", False)],
)
def test_candidates(name: str, candidate: bool) -> None:
    assert is_candidate(name) is candidate
