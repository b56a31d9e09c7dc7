"""Queue ids: unique, sortable by time, safe in file names."""

from __future__ import annotations

import os
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest

from spoolmail._core.ids import _BASE32, PooledRandom, QueueIds, dsn_id, is_made_id, is_queue_id


def test_ids_sort_by_time_and_are_file_safe() -> None:
    ids = QueueIds(random.Random(7))
    t0 = datetime(2026, 11, 28, tzinfo=UTC)
    made = [ids.new(t0 + timedelta(milliseconds=n)) for n in range(0, 5000, 7)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(is_queue_id(i) for i in made)


def test_dsn_ids_derive_from_the_parent() -> None:
    assert dsn_id("abc", 2) == "abc-d2"
    assert is_queue_id(dsn_id("abc", 2))


def test_not_ids() -> None:
    assert not is_queue_id("")
    assert not is_queue_id("a.b")
    assert not is_queue_id("../etc")
    assert not is_queue_id("x" * 129)


def test_one_factory_never_repeats_an_id_when_the_clock_steps_back() -> None:
    ids = QueueIds(random.Random(3))
    t0 = datetime(2026, 11, 28, tzinfo=UTC)
    made = [ids.new(t0) for _ in range(3)]
    made += [ids.new(t0 - timedelta(seconds=5)) for _ in range(3)]
    prefixes = [queue_id[:16] for queue_id in made]  # time and sequence, without the random part
    assert prefixes == sorted(prefixes)
    assert len(set(prefixes)) == len(prefixes)
    assert all(is_made_id(queue_id) for queue_id in made)


def test_a_full_millisecond_goes_on_in_the_next() -> None:
    ids = QueueIds(random.Random(3))
    t0 = datetime(2026, 11, 28, tzinfo=UTC)
    made = [ids.new(t0) for _ in range(0x10000 + 2)]
    assert made[0x10000][:16] == f"{int(t0.timestamp() * 1000) + 1:011x}-0000"
    assert len({queue_id[:16] for queue_id in made}) == len(made)
    assert made == sorted(made)


def test_tokens_are_base_32_and_the_pool_hands_out_each_byte_once() -> None:
    ids = QueueIds()
    tokens = [ids.token(12) for _ in range(2000)]  # several pools' worth of bytes
    assert all(len(token) == 12 and set(token) <= set(_BASE32) for token in tokens)
    assert len(set(tokens)) == len(tokens)
    seeded = QueueIds(random.Random(1)).token(10)
    assert seeded == QueueIds(random.Random(1)).token(10)


def test_pooled_bits_are_in_range_and_vary() -> None:
    rng = PooledRandom()
    assert rng.getrandbits(0) == 0
    draws = [rng.getrandbits(48) for _ in range(1000)]
    assert all(0 <= value < 1 << 48 for value in draws)
    assert len(set(draws)) == len(draws)
    assert max(rng.getrandbits(5) for _ in range(500)) == 31
    with pytest.raises(ValueError, match="non-negative"):
        rng.getrandbits(-1)


def test_pooled_random_is_safe_across_threads() -> None:
    rng = PooledRandom()
    results: list[list[bytes]] = [[] for _ in range(4)]

    def draw(out: list[bytes]) -> None:
        out.extend(rng.randbytes(8) for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [chunk for out in results for chunk in out]
    assert len(set(every)) == len(every) == 12000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_its_parents_bits() -> None:
    rng = PooledRandom()
    rng.randbytes(1)  # the parent's pool is filled before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(read)
        os.write(write, rng.randbytes(64))
        os._exit(0)
    os.close(write)
    child = b""
    while len(child) < 64:
        chunk = os.read(read, 64)
        if not chunk:
            break
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 64
    assert child != rng.randbytes(64)
