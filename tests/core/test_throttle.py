"""Backing off when receivers ask: which replies ask, and the throttle's arithmetic (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.reply import Reply
from spoolmail._core.throttle import RateBucket, Throttle, ThrottleRules, asks_to_slow_down
from spoolmail.exceptions import ConfigurationError

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "line",
    [
        "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail from your IP",
        "421 4.7.0 Try again later, closing connection.",
        "450 4.7.1 Too many messages, slow down",
        "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)",
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
        "421 Too many concurrent SMTP connections; please try again later.",
        "451 Rate limit exceeded, try again later",
        "452 4.2.2 Too many messages, try again later",
    ],
)
def test_receivers_asking_to_slow_down(line: str) -> None:
    code, _, text = line.partition(" ")
    assert asks_to_slow_down(Reply.parse(int(code), text))


@pytest.mark.parametrize(
    "line",
    [
        "451 4.3.0 Mailbox temporarily unavailable",
        "452 4.5.3 Too many recipients",
        "421 4.4.2 connection timed out",
        "451 4.4.1 connection refused",
        "451 4.7.5 TLS handshake failed",
        "450 4.2.1 Mailbox busy",
        "550 5.7.1 Rate limit exceeded",  # permanent: not a request to slow down
        "250 2.0.0 Ok",
    ],
)
def test_replies_that_do_not_ask(line: str) -> None:
    code, _, text = line.partition(" ")
    assert not asks_to_slow_down(Reply.parse(int(code), text))


RULES = ThrottleRules(max_connections=10)
ASK = Reply(421, "4.7.0", "try again later", host="mx.test")


def test_halving_waiting_and_recovering() -> None:
    throttle = Throttle.fresh(RULES).asked(ASK, NOW, RULES)
    assert (throttle.connections, throttle.until, throttle.strikes) == (
        5,
        NOW + timedelta(minutes=1),
        1,
    )
    assert throttle.waiting(NOW)
    assert not throttle.waiting(NOW + timedelta(minutes=1))
    throttle = throttle.asked(ASK, NOW, RULES).asked(ASK, NOW, RULES)
    assert (throttle.connections, throttle.until) == (1, NOW + timedelta(minutes=4))
    for _ in range(8):
        throttle = throttle.accepted(RULES)
    assert throttle.connections == 9
    assert throttle.strikes == 0
    assert throttle.accepted(RULES) == Throttle.fresh(RULES)


@given(st.integers(min_value=1, max_value=60))
def test_waits_stay_within_the_bounds(strikes: int) -> None:
    throttle = Throttle.fresh(RULES)
    for _ in range(strikes):
        throttle = throttle.asked(ASK, NOW, RULES)
    assert throttle.until is not None
    assert RULES.first_wait <= throttle.until - NOW <= RULES.max_wait
    assert 1 <= throttle.connections <= RULES.max_connections


def test_a_message_rate() -> None:
    bucket = RateBucket.full(60, NOW)
    for _ in range(60):
        bucket, wait = bucket.take(60, NOW)
        assert wait is None
    bucket, wait = bucket.take(60, NOW)
    assert wait == timedelta(seconds=1)
    bucket, wait = bucket.take(60, NOW + timedelta(seconds=1))
    assert wait is None


def test_rules_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_messages_per_minute"):
        ThrottleRules(max_messages_per_minute=0)
    with pytest.raises(ConfigurationError, match="max_connections"):
        ThrottleRules(max_connections=0)
    with pytest.raises(ConfigurationError, match="first_wait cannot be negative: -1 day"):
        ThrottleRules(first_wait=timedelta(days=-1))
    shorter = r"max_wait \(0:00:30\) is shorter than first_wait \(0:01:00\)"
    with pytest.raises(ConfigurationError, match=shorter):
        ThrottleRules(first_wait=timedelta(minutes=1), max_wait=timedelta(seconds=30))
    assert ThrottleRules(first_wait=timedelta(0), max_wait=timedelta(0)).max_wait == timedelta(0)
