"""Waiting for another process or thread to reach a state: polled, with a deadline that fails
the test instead of hanging it. Nothing sleeps through an interval: the loop ends as soon as
the state is there."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["until"]


def until(what: str, check: Callable[[], bool], *, deadline: float = 20.0) -> None:
    """Poll ``check`` every 20 ms until it is true; fail naming ``what`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline:g} s: {what}")
        time.sleep(0.02)
