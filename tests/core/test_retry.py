"""Tests for spoolmail._core.retry: each preset against its source's numbers, the invariants every
policy keeps, the tenacity plumbing, and the short in-process retries.

Only injected times: no clock is read and nothing sleeps. `pytest -s` prints each preset's table.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from unittest import mock

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st
from tenacity import (
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_fixed,
    wait_random,
)

from spoolmail._core.retry import RetryPolicy, short_retrying
from spoolmail.exceptions import ConfigurationError, TransportError

# Microseconds on purpose: a deadline is hit exactly even when the arrival is not a round number.
ARRIVAL = datetime(2026, 11, 28, 10, 15, 2, 123456, tzinfo=UTC)
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

PRESETS: dict[str, Callable[[], RetryPolicy]] = {
    "iis": RetryPolicy.iis,
    "postfix": RetryPolicy.postfix,
    "qmail": RetryPolicy.qmail,
    "exim": RetryPolicy.exim,
}


def _offsets(times: list[datetime]) -> list[float]:
    """Seconds after ARRIVAL."""
    return [(t - ARRIVAL).total_seconds() for t in times]


def _gaps(times: list[datetime]) -> list[float]:
    offsets = _offsets(times)
    return [later - earlier for earlier, later in itertools.pairwise(offsets)]


def _show(policy: RetryPolicy, times: list[datetime]) -> None:
    """Print the schedule as a table, for `pytest -s`."""
    notice = policy.delay_notice_at(arrival=ARRIVAL)
    expiry = policy.expires_at(arrival=ARRIVAL)
    lines = [f"\n{policy.name}: {len(times)} attempts", "   #      minutes    h:mm:ss   gap (min)"]
    previous = 0.0
    for number, offset in enumerate(_offsets(times), start=1):
        hours, rest = divmod(round(offset), 3600)
        clock = f"{hours}:{rest // 60:02}:{rest % 60:02}"
        gap = (offset - previous) / MINUTE
        lines.append(f"{number:4} {offset / MINUTE:12.2f} {clock:>10} {gap:11.2f}")
        previous = offset
    if notice is not None:
        lines.append(f"delay notice due at {(notice - ARRIVAL).total_seconds() / HOUR:g} h")
    if expiry is not None:
        lines.append(f"expires at {(expiry - ARRIVAL).total_seconds() / HOUR:g} h; then given up")
    # T201: showing the table is the point of this helper.
    print("\n".join(lines))  # noqa: T201


def _assert_expires_after_last(policy: RetryPolicy, times: list[datetime]) -> None:
    assert times[-1] == policy.expires_at(arrival=ARRIVAL)
    assert policy.next_attempt(attempts=len(times), arrival=ARRIVAL, now=times[-1]) is None


# ------------------------------------------------------------------------------------ presets


def test_iis_schedule_follows_the_metabase_defaults() -> None:
    policy = RetryPolicy.iis()
    times = policy.schedule(arrival=ARRIVAL)
    _show(policy, times)

    # SmtpRemoteProgressiveRetry = 15,30,60,240: gaps 15, 30, 60, then 240 minutes for good,
    # until SmtpRemoteNDRExpireMinutes = 2880 puts the last attempt at 48 h exactly.
    assert [offset / MINUTE for offset in _offsets(times)] == [
        0, 15, 45, 105, 345, 585, 825, 1065, 1305, 1545, 1785, 2025, 2265, 2505, 2745, 2880,
    ]  # fmt: skip
    _assert_expires_after_last(policy, times)
    assert policy.expires_at(arrival=ARRIVAL) == ARRIVAL + timedelta(hours=48)
    # The delay notice: SmtpRemoteDelayExpireMinutes is 720 minutes.
    assert policy.delay_notice_at(arrival=ARRIVAL) == ARRIVAL + timedelta(hours=12)
    assert policy.name == "iis"


def test_postfix_schedule_doubles_the_age_within_the_backoff_bounds() -> None:
    policy = RetryPolicy.postfix()
    times = policy.schedule(arrival=ARRIVAL)
    _show(policy, times)
    gaps = _gaps(times)

    # qmgr: next = now + (time in queue), clamped to [minimal_backoff_time, maximal_backoff_time].
    assert gaps[:7] == [300, 300, 600, 1200, 2400, 4000, 4000]
    assert all(300 <= gap <= 4000 for gap in gaps)
    for age, gap in zip(_offsets(times)[:-2], gaps[:-1], strict=True):
        assert gap == min(max(age, 300), 4000)
    # maximal_queue_lifetime = 5d: the last attempt is at the deadline, then the message bounces.
    _assert_expires_after_last(policy, times)
    assert times[-1] - ARRIVAL == timedelta(days=5)
    assert policy.delay_notice is None  # delay_warning_time = 0h


def test_qmail_schedule_is_birth_plus_isqrt_age_plus_20_squared() -> None:
    policy = RetryPolicy.qmail()
    times = policy.schedule(arrival=ARRIVAL)
    _show(policy, times)
    offsets = _offsets(times)

    # next = birth + (isqrt(age) + 20)^2: from age 0 the ages are perfect squares, (20k)^2 s.
    assert offsets[:-1] == [(20 * k) ** 2 for k in range(len(offsets) - 1)]
    for age, following in itertools.pairwise(offsets[:-1]):
        assert following == (math.isqrt(int(age)) + 20) ** 2
    # queuelifetime = 604800 s: (20*38)^2 = 577600 is the last regular try, then the deadline.
    assert offsets[-2] == 577600
    _assert_expires_after_last(policy, times)
    assert times[-1] - ARRIVAL == timedelta(days=7)
    assert policy.delay_notice is None


def test_exim_schedule_follows_the_default_retry_rule() -> None:
    policy = RetryPolicy.exim()
    times = policy.schedule(arrival=ARRIVAL)
    _show(policy, times)
    offsets = _offsets(times)
    gaps = _gaps(times)

    # F,2h,15m: every 15 minutes while the time since the first failure is at most 2 h
    # (the attempt at exactly 2 h still uses it, retry.c: failing_interval <= timeout).
    fixed = [gap for offset, gap in zip(offsets, gaps, strict=False) if offset <= 2 * HOUR]
    assert fixed == [15 * MINUTE] * 9
    # G,16h,1h,1.5: 1 h, then x1.5 in whole seconds while at most 16 h.
    geometric = [
        gap for offset, gap in zip(offsets, gaps, strict=False) if 2 * HOUR < offset <= 16 * HOUR
    ]
    assert geometric == [3600, 5400, 8100, 12150, 18225, 27337]
    # F,4d,6h: every 6 hours, then the attempt at 4 days is the last.
    late = [gap for offset, gap in zip(offsets, gaps, strict=False) if offset > 16 * HOUR]
    assert late[:-1] == [6 * HOUR] * (len(late) - 1)
    assert 0 < late[-1] <= 6 * HOUR
    _assert_expires_after_last(policy, times)
    assert times[-1] - ARRIVAL == timedelta(days=4)
    assert policy.delay_notice == timedelta(hours=24)  # Exim's delay_warning default


def test_exim_rules_can_be_given_as_text() -> None:
    policy = RetryPolicy.exim(rules="F,1h,10m; G,1d,30m,2", delay_warning=None)
    offsets = _offsets(policy.schedule(arrival=ARRIVAL))
    assert [offset / MINUTE for offset in offsets[:10]] == [
        0, 10, 20, 30, 40, 50, 60, 70, 100, 160,
    ]  # fmt: skip
    assert offsets[-1] == DAY
    assert policy.delay_notice is None


def test_preset_settings_can_be_overridden() -> None:
    iis = RetryPolicy.iis(progressive_retry=(10,), delay_expire_minutes=None, ndr_expire_minutes=60)
    assert _offsets(iis.schedule(arrival=ARRIVAL)) == [0, 600, 1200, 1800, 2400, 3000, 3600]
    assert iis.delay_notice is None

    postfix = RetryPolicy.postfix(
        minimal_backoff_time=timedelta(minutes=10),
        maximal_backoff_time=1800,
        maximal_queue_lifetime=timedelta(hours=2),
        delay_warning_time=timedelta(hours=1),
    )
    assert _gaps(postfix.schedule(arrival=ARRIVAL))[:4] == [600, 600, 1200, 1800]
    assert postfix.delay_notice == timedelta(hours=1)

    local = RetryPolicy.qmail(chanskip=10, queuelifetime=timedelta(hours=1))
    assert _offsets(local.schedule(arrival=ARRIVAL))[:4] == [0, 100, 400, 900]


# ---------------------------------------------------------------------------- other builders


def test_from_intervals_repeats_the_last_interval() -> None:
    policy = RetryPolicy.from_intervals(
        [60, 120], lifetime=timedelta(minutes=10), delay_notice=None
    )
    assert _offsets(policy.schedule(arrival=ARRIVAL)) == [0, 60, 180, 300, 420, 540, 600]

    same = RetryPolicy.from_intervals(
        [timedelta(minutes=1), timedelta(minutes=2)],
        lifetime=timedelta(minutes=10),
        delay_notice=None,
    )
    assert same.schedule(arrival=ARRIVAL) == policy.schedule(arrival=ARRIVAL)


def test_a_policy_without_lifetime_or_stop_runs_until_the_limit() -> None:
    policy = RetryPolicy.from_intervals([60], lifetime=None, delay_notice=None)
    times = policy.schedule(arrival=ARRIVAL, limit=5)
    assert _offsets(times) == [0, 60, 120, 180, 240]
    assert policy.expires_at(arrival=ARRIVAL) is None


_EXPONENTIAL = 60.0


@given(
    attempts=st.integers(min_value=1, max_value=60),
    age=st.integers(min_value=0, max_value=30 * 86400 * 10**6).map(lambda us: us / 10**6),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_from_tenacity_exponential_with_jitter_stays_within_bounds(
    attempts: int, age: float, seed: int
) -> None:
    policy = RetryPolicy.from_tenacity(
        wait=wait_exponential(multiplier=_EXPONENTIAL, max=3600) + wait_random(0, 30)
    )
    now = ARRIVAL + timedelta(seconds=age)
    # wait_random draws from the module `random` inside tenacity.wait; a seeded generator in its
    # place makes the draw reproducible for this test only.
    with mock.patch.object(tenacity.wait, "random", random.Random(seed)):
        following = policy.next_attempt(attempts=attempts, arrival=ARRIVAL, now=now)
    with mock.patch.object(tenacity.wait, "random", random.Random(seed)):
        again = policy.next_attempt(attempts=attempts, arrival=ARRIVAL, now=now)

    assert following is not None
    assert following == again
    base = min(_EXPONENTIAL * 2 ** (attempts - 1), 3600)
    gap = (following - now).total_seconds()
    assert base - 1e-6 <= gap <= base + 30 + 1e-6


def test_from_tenacity_takes_stop_conditions() -> None:
    # stop_before_delay reads upcoming_sleep, so the wait must have been computed first.
    before = RetryPolicy.from_tenacity(wait=wait_fixed(600), stop=stop_before_delay(3600))
    assert _offsets(before.schedule(arrival=ARRIVAL)) == [0, 600, 1200, 1800, 2400, 3000]

    counted = RetryPolicy.from_tenacity(wait=wait_fixed(60), stop=stop_after_attempt(3))
    assert _offsets(counted.schedule(arrival=ARRIVAL)) == [0, 60, 120]

    # The lifetime joins the given stop: whichever comes first ends the retries.
    both = RetryPolicy.from_tenacity(
        wait=wait_fixed(60), stop=stop_after_attempt(100), lifetime=timedelta(minutes=2)
    )
    assert _offsets(both.schedule(arrival=ARRIVAL)) == [0, 60, 120]


def test_plain_functions_work_as_wait_and_stop() -> None:
    def wait(state: tenacity.RetryCallState) -> float:
        return 10.0 * state.attempt_number

    def stop(state: tenacity.RetryCallState) -> bool:
        return (state.seconds_since_start or 0) >= 60

    policy = RetryPolicy.from_tenacity(wait=wait, stop=stop)
    assert _offsets(policy.schedule(arrival=ARRIVAL)) == [0, 10, 30, 60]


def test_preset_waits_compose_with_tenacity_waits() -> None:
    jittered = RetryPolicy.from_tenacity(
        wait=RetryPolicy.postfix().wait + wait_fixed(7), lifetime=timedelta(days=1)
    )
    assert _gaps(jittered.schedule(arrival=ARRIVAL))[:3] == [307, 314, 628]


# ---------------------------------------------------------------------------------- invariants

_MAX_GAP = {
    "iis": 240 * MINUTE,
    "postfix": 4000.0,
    # (isqrt(a) + 20)^2 - a <= 40 * isqrt(a) + 400, and a < 7 days.
    "qmail": 40 * math.isqrt(604800) + 400.0,
    "exim": 27337.0,  # the longest G step of the default rule
}
# qmail: (s + 20)^2 - a > (s + 20)^2 - (s + 1)^2 >= 399 for s = isqrt(a).
_MIN_GAP = {"iis": 15 * MINUTE, "postfix": 300.0, "qmail": 399.0, "exim": 15 * MINUTE}


@given(
    preset=st.sampled_from(sorted(PRESETS)),
    attempts=st.integers(min_value=1, max_value=400),
    age=st.integers(min_value=0, max_value=9 * 86400 * 10**6).map(lambda us: us / 10**6),
    offset_hours=st.integers(min_value=-12, max_value=14),
)
def test_next_attempt_is_after_now_and_never_after_expiry(
    preset: str, attempts: int, age: float, offset_hours: int
) -> None:
    policy = PRESETS[preset]()
    # Any time zone on the way in; the same instants and UTC on the way out.
    arrival = ARRIVAL.astimezone(timezone(timedelta(hours=offset_hours)))
    now = arrival + timedelta(seconds=age)
    expiry = policy.expires_at(arrival=arrival)
    assert expiry is not None
    following = policy.next_attempt(attempts=attempts, arrival=arrival, now=now)

    if now >= expiry:
        assert following is None
        return
    assert following is not None
    assert following.tzinfo is UTC
    assert now < following <= expiry
    gap = (following - now).total_seconds()
    if following < expiry:
        assert _MIN_GAP[preset] <= gap <= _MAX_GAP[preset]
    else:
        assert gap <= _MAX_GAP[preset]
    # Pure: asking again gives the same answer.
    assert policy.next_attempt(attempts=attempts, arrival=arrival, now=now) == following


@given(
    attempts=st.integers(min_value=1, max_value=400),
    age=st.integers(min_value=0, max_value=8 * 86400 * 10**6).map(lambda us: us / 10**6),
)
def test_presets_match_their_formulas_at_any_age(attempts: int, age: float) -> None:
    now = ARRIVAL + timedelta(seconds=age)

    def expected(gap: float, lifetime: timedelta) -> datetime | None:
        expiry = ARRIVAL + lifetime
        if now >= expiry:
            return None
        return min(now + timedelta(seconds=gap), expiry)

    iis_gap = [15, 30, 60, 240][min(attempts, 4) - 1] * MINUTE
    postfix_gap = min(max(age, 300), 4000)
    qmail_gap = (math.isqrt(int(age)) + 20) ** 2 - age
    cases = [
        (RetryPolicy.iis(), expected(iis_gap, timedelta(days=2))),
        (RetryPolicy.postfix(), expected(postfix_gap, timedelta(days=5))),
        (RetryPolicy.qmail(), expected(qmail_gap, timedelta(days=7))),
    ]
    for policy, want in cases:
        got = policy.next_attempt(attempts=attempts, arrival=ARRIVAL, now=now)
        if want is None:
            assert got is None
        else:
            assert got is not None
            assert abs(got - want) <= timedelta(microseconds=1)


@given(
    preset=st.sampled_from(["postfix", "qmail"]),
    attempts=st.integers(min_value=1, max_value=200),
    ages=st.lists(st.integers(min_value=0, max_value=9 * 86400), min_size=2, max_size=2),
)
def test_age_based_presets_never_move_the_next_attempt_earlier_for_a_later_failure(
    preset: str, attempts: int, ages: list[int]
) -> None:
    policy = PRESETS[preset]()
    early, late = sorted(ages)
    first = policy.next_attempt(
        attempts=attempts, arrival=ARRIVAL, now=ARRIVAL + timedelta(seconds=early)
    )
    second = policy.next_attempt(
        attempts=attempts, arrival=ARRIVAL, now=ARRIVAL + timedelta(seconds=late)
    )
    if first is None:
        assert second is None
    elif second is not None:
        assert first <= second


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_schedule_rises_to_its_expiry(preset: str) -> None:
    policy = PRESETS[preset]()
    times = policy.schedule(arrival=ARRIVAL)
    assert times[0] == ARRIVAL
    assert all(earlier < later for earlier, later in itertools.pairwise(times))
    _assert_expires_after_last(policy, times)


def test_the_deadline_is_exact_to_the_microsecond() -> None:
    policy = RetryPolicy.iis()
    deadline = ARRIVAL + timedelta(days=2)
    tick = timedelta(microseconds=1)
    assert policy.next_attempt(attempts=15, arrival=ARRIVAL, now=deadline - tick) == deadline
    assert policy.next_attempt(attempts=16, arrival=ARRIVAL, now=deadline) is None


# -------------------------------------------------------------------------------- delay notice


@pytest.mark.parametrize(("preset", "hours"), [("iis", 12), ("exim", 24)])
def test_delay_notice_is_due_exactly_once_along_the_schedule(preset: str, hours: int) -> None:
    policy = PRESETS[preset]()
    sent_at = []
    already_sent = False
    for attempt_time in policy.schedule(arrival=ARRIVAL):
        if policy.delay_notice_due(arrival=ARRIVAL, now=attempt_time, already_sent=already_sent):
            sent_at.append(attempt_time)
            already_sent = True
    assert len(sent_at) == 1
    assert sent_at[0] - ARRIVAL >= timedelta(hours=hours)


def test_delay_notice_is_due_from_its_time_until_expiry_unless_sent() -> None:
    policy = RetryPolicy.iis()
    notice = ARRIVAL + timedelta(hours=12)
    tick = timedelta(microseconds=1)

    def due(now: datetime, *, sent: bool = False) -> bool:
        return policy.delay_notice_due(arrival=ARRIVAL, now=now, already_sent=sent)

    assert not due(notice - tick)
    assert due(notice)
    assert due(ARRIVAL + timedelta(hours=47))
    assert not due(ARRIVAL + timedelta(hours=48))  # expired: the failure DSN says it all
    assert not due(notice, sent=True)
    assert not due(ARRIVAL + timedelta(hours=47), sent=True)


@given(
    preset=st.sampled_from(["postfix", "qmail"]),
    age=st.integers(min_value=0, max_value=10 * 86400),
    sent=st.booleans(),
)
def test_policies_without_a_delay_notice_never_send_one(preset: str, age: int, sent: bool) -> None:
    policy = PRESETS[preset]()
    now = ARRIVAL + timedelta(seconds=age)
    assert policy.delay_notice_at(arrival=ARRIVAL) is None
    assert not policy.delay_notice_due(arrival=ARRIVAL, now=now, already_sent=sent)


# ---------------------------------------------------------------------------------- validation


def test_naive_datetimes_are_refused() -> None:
    policy = RetryPolicy.iis()
    naive = datetime(2026, 11, 28, 10, 15)  # noqa: DTZ001 - the naive value under test
    with pytest.raises(ConfigurationError, match="aware"):
        policy.next_attempt(attempts=1, arrival=naive, now=ARRIVAL)
    with pytest.raises(ValueError, match="aware"):
        policy.next_attempt(attempts=1, arrival=ARRIVAL, now=naive)
    with pytest.raises(ConfigurationError, match="aware"):
        policy.delay_notice_due(arrival=naive, now=ARRIVAL, already_sent=False)
    with pytest.raises(ConfigurationError, match="aware"):
        policy.expires_at(arrival=naive)
    with pytest.raises(ConfigurationError, match="aware"):
        policy.schedule(arrival=naive)


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5])
def test_attempts_counts_failures_so_it_is_at_least_one(attempts: int) -> None:
    with pytest.raises(ConfigurationError, match="attempts"):
        RetryPolicy.iis().next_attempt(attempts=attempts, arrival=ARRIVAL, now=ARRIVAL)


def test_now_before_arrival_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="before the message arrived"):
        RetryPolicy.iis().next_attempt(
            attempts=1, arrival=ARRIVAL, now=ARRIVAL - timedelta(seconds=1)
        )


@pytest.mark.parametrize(
    "intervals",
    [[], [0], [60, -5], [math.nan], [math.inf], [timedelta(0)], "60"],
)
def test_intervals_must_be_positive_and_finite(intervals: list[float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy.from_intervals(intervals, lifetime=None, delay_notice=None)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "soon", None])
def test_a_wait_strategy_returning_a_bad_number_is_reported(bad: object) -> None:
    policy = RetryPolicy.from_tenacity(wait=lambda _state: bad, name="broken")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match=r"'broken'.*returned"):
        policy.next_attempt(attempts=1, arrival=ARRIVAL, now=ARRIVAL)


def test_a_zero_wait_means_try_again_at_once() -> None:
    policy = RetryPolicy.from_tenacity(wait=wait_fixed(0), stop=stop_after_attempt(2))
    assert policy.next_attempt(attempts=1, arrival=ARRIVAL, now=ARRIVAL) == ARRIVAL


def test_a_wait_past_year_9999_is_reported() -> None:
    policy = RetryPolicy.from_tenacity(wait=wait_fixed(400_000 * 365 * DAY))
    with pytest.raises(ConfigurationError, match="9999"):
        policy.next_attempt(attempts=1, arrival=ARRIVAL, now=ARRIVAL)


@pytest.mark.parametrize(
    "settings",
    [
        {"lifetime": timedelta(0)},
        {"lifetime": timedelta(seconds=-1)},
        {"lifetime": 3600},
        {"delay_notice": timedelta(0)},
        {"lifetime": timedelta(hours=1), "delay_notice": timedelta(hours=1)},
        {"lifetime": timedelta(hours=1), "delay_notice": timedelta(hours=2)},
    ],
)
def test_durations_must_be_positive_and_the_notice_before_expiry(
    settings: dict[str, object],
) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy.from_tenacity(wait=wait_fixed(60), **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda: RetryPolicy.postfix(minimal_backoff_time=600, maximal_backoff_time=300),
        lambda: RetryPolicy.postfix(maximal_queue_lifetime=0),
        lambda: RetryPolicy.iis(progressive_retry=()),
        lambda: RetryPolicy.iis(ndr_expire_minutes=-1),
        lambda: RetryPolicy.qmail(chanskip=0),
        lambda: RetryPolicy.exim(rules="F,2h,15m; H,16h,1h,1.5"),
        lambda: RetryPolicy.exim(rules="F,2h"),
        lambda: RetryPolicy.exim(rules="X,2h,15m"),
        lambda: RetryPolicy.exim(rules="F,2x,15m"),
        lambda: RetryPolicy.exim(rules="F,0s,15m"),
        lambda: RetryPolicy.exim(rules="G,2h,15m,one"),
        lambda: RetryPolicy.exim(rules="G,2h,15m,1"),
        lambda: RetryPolicy.exim(rules="F,4d,6h; F,2h,15m"),
        lambda: RetryPolicy.iis().schedule(arrival=ARRIVAL, limit=0),
    ],
)
def test_bad_preset_settings_are_configuration_errors(call: Callable[[], object]) -> None:
    with pytest.raises(ConfigurationError):
        call()


# ------------------------------------------------------------------------------- short retries


class _Flaky:
    """Fails with `error` for the first `failures` calls, then answers."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self, host: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"250 {host} ready"


def test_short_retrying_sleeps_through_the_injected_sleep() -> None:
    waits: list[float] = []
    flaky = _Flaky(2, TransportError("connection dropped"))
    retrying = short_retrying(sleep=waits.append, attempts=3, wait=1.5)
    assert retrying(flaky, "mx1.example.test") == "250 mx1.example.test ready"
    assert flaky.calls == 3
    assert waits == [1.5, 1.5]


def test_short_retrying_reraises_the_last_error_itself() -> None:
    waits: list[float] = []
    seen: list[int] = []
    error = TransportError("refused")
    flaky = _Flaky(5, error)
    retrying = short_retrying(
        sleep=waits.append,
        attempts=2,
        before_sleep=lambda state: seen.append(state.attempt_number),
    )
    with pytest.raises(TransportError) as raised:
        retrying(flaky, "mx1.example.test")
    assert raised.value is error
    assert flaky.calls == 2
    assert waits == [0.0]
    assert seen == [1]


def test_short_retrying_lets_other_errors_through_at_once() -> None:
    waits: list[float] = []
    flaky = _Flaky(1, KeyError("bug"))
    with pytest.raises(KeyError):
        short_retrying(sleep=waits.append, attempts=3)(flaky, "mx1.example.test")
    assert flaky.calls == 1
    assert waits == []


def test_short_retrying_works_as_an_iterator() -> None:
    waits: list[float] = []
    flaky = _Flaky(1, OSError("reset"))
    for attempt in short_retrying(sleep=waits.append, attempts=2, wait=0.25, retry_on=OSError):
        with attempt:
            answer = flaky("mx2.example.test")
    assert answer == "250 mx2.example.test ready"
    assert waits == [0.25]


@pytest.mark.parametrize(("attempts", "wait"), [(0, 0.0), (True, 0.0), (2, -1.0), (2, math.nan)])
def test_short_retrying_validates_its_settings(attempts: int, wait: float) -> None:
    with pytest.raises(ConfigurationError):
        short_retrying(sleep=lambda _seconds: None, attempts=attempts, wait=wait)


def test_iis_local_retries_hourly_for_two_days() -> None:
    arrival = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    policy = RetryPolicy.iis_local()
    times = policy.schedule(arrival=arrival)
    gaps = {later - earlier for earlier, later in itertools.pairwise(times)}
    assert gaps == {timedelta(hours=1)}
    assert times[-1] - arrival == timedelta(days=2)
    assert len(times) == 49
    assert policy.delay_notice == timedelta(hours=12)
