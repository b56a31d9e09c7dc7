"""The store's pooled random source: the system's randomness, one system call for many draws."""

from __future__ import annotations

import os
import random
import threading

import pytest

from spoolmail._core.base32 import ALPHABET
from spoolmail._core.ids import QueueIds
from spoolmail._store.entropy import PooledRandom


def test_tokens_are_base_32_and_the_pool_hands_out_each_byte_once() -> None:
    ids = QueueIds(PooledRandom())
    tokens = [ids.token(12) for _ in range(2000)]  # several pools' worth of bytes
    assert all(len(token) == 12 and set(token) <= set(ALPHABET) for token in tokens)
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
