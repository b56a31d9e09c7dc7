"""Retry policy: when a queued message is tried again, warned about, or given up on.

A queued message carries two persisted facts, how many delivery attempts failed and when it
arrived (its first attempt, which is immediate), and the caller hands in the current time.
:class:`RetryPolicy` turns them into the next attempt time or ``None`` (expired: the failure DSN is
due), says whether the delay DSN is due and when the message expires. tenacity computes the waits
and the stop decision: the policy rebuilds the :class:`tenacity.RetryCallState` that
:class:`tenacity.Retrying` would hold between two attempts and asks the strategies, so any tenacity
wait or stop works, and the presets (IIS, Postfix, qmail, Exim) are tenacity wait strategies too.
:func:`short_retrying` builds the in-process loop for short retries (next MX host, reconnect once)
around a sleep the caller injects. Pure: no clock, no filesystem, no network; every time is handed
in. The one impurity is a caller's random wait strategy (``wait_random`` and friends draw from the
module ``random``): such a policy cannot be recomputed later, so the caller persists the time it
returned and never recomputes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import tenacity
from tenacity.stop import StopBaseT, stop_after_attempt, stop_after_delay
from tenacity.wait import WaitBaseT, wait_base, wait_chain, wait_fixed

from spoolmail.exceptions import ConfigurationError, TransportError

__all__ = ["RetryPolicy", "short_retrying"]


class _DeferredError(Exception):
    """The outcome put into a rebuilt call state: the last attempt failed temporarily.

    tenacity's ``seconds_since_start`` is only defined once an attempt has an outcome, and
    ``stop_after_delay`` raises without one; which exception it is does not matter to the waits.
    """


def _age(retry_state: tenacity.RetryCallState) -> float:
    age = retry_state.seconds_since_start
    if age is None:
        raise RuntimeError("this wait strategy needs an outcome: it reads the time since the start")
    return age


def _require_aware(name: str, value: datetime) -> None:
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{name} must be a datetime, not {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time means "local time of whichever host reads the envelope": after a move or a
        # DST change the schedule would shift silently, so refuse it instead of guessing.
        raise ConfigurationError(
            f"{name} must be an aware datetime (e.g. datetime.now(UTC)), not naive {value!r}"
        )


def _positive(value: float, *, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{what} must be a number, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{what} must be positive and finite, not {value!r}")
    return float(value)


def _seconds(value: timedelta | float, *, what: str) -> float:
    """A positive, finite number of seconds from a timedelta or a number of seconds."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ConfigurationError(f"{what} must be positive, not {value}")
        return value.total_seconds()
    return _positive(value, what=what)


def _check_duration(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{attribute.name} must be a timedelta or None, not {value!r}")
    if value <= timedelta(0):
        raise ConfigurationError(f"{attribute.name} must be positive (None = never), not {value}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When to try a queued message again, when to warn its sender, when to give up.

    ``wait`` is a tenacity wait strategy (any callable of a :class:`tenacity.RetryCallState`
    returning seconds, e.g. ``wait_exponential(multiplier=60, max=3600) + wait_random(0, 30)``) and
    ``stop`` an optional tenacity stop condition. ``lifetime`` (measured from arrival) is the
    expiration timeout: it acts as ``stop_after_delay(lifetime)`` combined with ``stop``, and it
    also moves an attempt that would fall after the deadline onto the deadline itself, so a
    message gets one last try at its expiry time and never lives past it. ``delay_notice``
    (measured from arrival) is when the one delay DSN is due; ``None`` means never. ``name`` is
    for docs and the command line.

    Build one with a preset (:meth:`iis`, :meth:`postfix`, :meth:`qmail`, :meth:`exim`),
    :meth:`from_intervals` or :meth:`from_tenacity`. Every time argument must be an aware
    :class:`~datetime.datetime`; every returned time is in UTC.
    """

    wait: WaitBaseT = attrs.field(validator=attrs.validators.is_callable())
    stop: StopBaseT | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.is_callable())
    )
    lifetime: timedelta | None = attrs.field(default=None, validator=_check_duration)
    delay_notice: timedelta | None = attrs.field(default=None, validator=_check_duration)
    name: str = "custom"

    def __attrs_post_init__(self) -> None:
        if (
            self.lifetime is not None
            and self.delay_notice is not None
            and self.delay_notice >= self.lifetime
        ):
            # The failure DSN is due at expiry; a delay notice at or after it would never go out.
            raise ConfigurationError(
                f"delay_notice ({self.delay_notice}) must come before lifetime ({self.lifetime})"
            )

    # ------------------------------------------------------------------------------- questions

    def next_attempt(self, *, attempts: int, arrival: datetime, now: datetime) -> datetime | None:
        """After ``attempts`` failed attempts (>= 1), the last one at ``now``: when to try next.

        ``None`` means the message has expired: give up and send the failure DSN. Otherwise the
        result is never before ``now`` and never after :meth:`expires_at`. The same arguments give
        the same answer unless the wait strategy itself is random; persist what this returns.
        """
        _require_aware("arrival", arrival)
        _require_aware("now", now)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(
                f"attempts counts failed attempts, so it is at least 1, not {attempts!r}"
            )
        if now < arrival:
            raise ConfigurationError(f"now ({now}) is before the message arrived ({arrival})")

        state = self._call_state(attempts=attempts, age=(now - arrival).total_seconds())
        # tenacity's own order (Retrying.iter): wait first, recorded as upcoming_sleep, then
        # stop, so stop_before_delay sees the sleep it is asked about.
        wait = self._wait_seconds(state)
        state.upcoming_sleep = wait
        if self._stopped(state):
            return None
        expiry = self.expires_at(arrival=arrival)
        if expiry is not None and wait >= (expiry - now).total_seconds():
            return expiry
        try:
            return (now + timedelta(seconds=wait)).astimezone(UTC)
        except OverflowError:
            raise ConfigurationError(
                f"retry policy {self.name!r}: a wait of {wait} s after {now} is past year 9999"
            ) from None

    def delay_notice_due(self, *, arrival: datetime, now: datetime, already_sent: bool) -> bool:
        """Whether the delay DSN should go out now: once, from ``delay_notice`` after arrival.

        Never at or after expiry: by then the last attempt either delivers the message or ends in
        the failure DSN, which says more than a delay notice would.
        """
        _require_aware("arrival", arrival)
        _require_aware("now", now)
        if already_sent or self.delay_notice is None:
            return False
        expiry = self.expires_at(arrival=arrival)
        if expiry is not None and now >= expiry:
            return False
        return now - arrival >= self.delay_notice

    def delay_notice_at(self, *, arrival: datetime) -> datetime | None:
        """When the delay DSN becomes due (for the service's wake-up schedule), or ``None``."""
        _require_aware("arrival", arrival)
        if self.delay_notice is None:
            return None
        return (arrival + self.delay_notice).astimezone(UTC)

    def expires_at(self, *, arrival: datetime) -> datetime | None:
        """The deadline, when the last attempt happens; ``None`` if only ``stop`` ends retries."""
        _require_aware("arrival", arrival)
        if self.lifetime is None:
            return None
        return (arrival + self.lifetime).astimezone(UTC)

    def schedule(self, *, arrival: datetime, limit: int = 1000) -> list[datetime]:
        """Every attempt time of a message that never gets through, first = ``arrival``.

        Built by feeding :meth:`next_attempt` its own output, each attempt failing at the moment
        it starts. The list ends with the last attempt (at the expiry time when ``lifetime`` is
        set), or after ``limit`` entries for a policy that never gives up.
        """
        _require_aware("arrival", arrival)
        if limit < 1:
            raise ConfigurationError(f"limit must be at least 1, not {limit!r}")
        times = [arrival.astimezone(UTC)]
        while len(times) < limit:
            following = self.next_attempt(attempts=len(times), arrival=arrival, now=times[-1])
            if following is None:
                break
            times.append(following)
        return times

    # ------------------------------------------------------------------------------- tenacity

    def _call_state(self, *, attempts: int, age: float) -> tenacity.RetryCallState:
        """The state ``Retrying`` would hold after attempt number ``attempts`` failed at ``age``."""
        retrying = tenacity.Retrying(wait=self.wait, stop=self.stop or tenacity.stop_never)
        state = tenacity.RetryCallState(retrying, None, (), {})
        state.attempt_number = attempts
        deferred = _DeferredError(f"attempt {attempts} was deferred")
        state.set_exception((_DeferredError, deferred, None))
        # set_exception (and the constructor) stamp time.monotonic(); strategies only ever read
        # the difference, seconds_since_start. Rebuilding it as 0 and the exact age keeps the
        # comparison with the lifetime exact: arrival.timestamp() differences lose microseconds
        # to float rounding, and a message due exactly at its deadline must expire exactly there.
        state.start_time = 0.0
        state.outcome_timestamp = age
        return state

    def _wait_seconds(self, state: tenacity.RetryCallState) -> float:
        raw: object = self.wait(state)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigurationError(
                f"retry policy {self.name!r}: wait strategy {self.wait!r} returned {raw!r} "
                f"after {state.attempt_number} attempts; a wait is a number of seconds"
            )
        seconds = float(raw)
        if not math.isfinite(seconds) or seconds < 0:
            raise ConfigurationError(
                f"retry policy {self.name!r}: wait strategy {self.wait!r} returned {raw!r} "
                f"after {state.attempt_number} attempts; a wait is finite and not negative"
            )
        return seconds

    def _stopped(self, state: tenacity.RetryCallState) -> bool:
        stops: list[StopBaseT] = []
        if self.stop is not None:
            stops.append(self.stop)
        if self.lifetime is not None:
            stops.append(stop_after_delay(self.lifetime))
        return any(stop(state) for stop in stops)

    # ------------------------------------------------------------------------------- builders

    @classmethod
    def from_tenacity(
        cls,
        *,
        wait: WaitBaseT,
        stop: StopBaseT | None = None,
        lifetime: timedelta | None = None,
        delay_notice: timedelta | None = None,
        name: str = "custom",
    ) -> RetryPolicy:
        """Any tenacity strategies: ``from_tenacity(wait=wait_exponential(multiplier=60, max=3600)
        + wait_random(0, 30), lifetime=timedelta(days=2))``. ``attempt_number`` is the count of
        failed attempts, ``seconds_since_start`` the message's age at the last one."""
        return cls(wait=wait, stop=stop, lifetime=lifetime, delay_notice=delay_notice, name=name)

    @classmethod
    def from_intervals(
        cls,
        intervals: Sequence[timedelta | float],
        *,
        lifetime: timedelta | None,
        delay_notice: timedelta | None,
        name: str = "custom",
    ) -> RetryPolicy:
        """Wait ``intervals[0]`` after the first failure, ``intervals[1]`` after the second, ...;
        the last interval repeats. Numbers are seconds."""
        if isinstance(intervals, str | bytes) or not intervals:
            raise ConfigurationError(f"intervals must be a non-empty sequence, not {intervals!r}")
        waits = [
            wait_fixed(_seconds(interval, what=f"retry interval {number}"))
            for number, interval in enumerate(intervals, start=1)
        ]
        # wait_chain picks strategy number attempt_number (1-based) and repeats the last one.
        return cls(
            wait=wait_chain(*waits),
            lifetime=lifetime,
            delay_notice=delay_notice,
            name=name,
        )

    @classmethod
    def iis(
        cls,
        *,
        progressive_retry: Sequence[float] = (15, 30, 60, 240),
        delay_expire_minutes: float | None = 720,
        ndr_expire_minutes: float = 2880,
    ) -> RetryPolicy:
        """The IIS SMTP virtual server's Delivery tab, with its installed defaults.

        IIS 6 metabase: ``SmtpRemoteProgressiveRetry = 15,30,60,240`` (minutes; first, second,
        third and every subsequent retry), ``SmtpRemoteDelayExpireMinutes = 720`` (delay
        notification after 12 hours; ``None`` turns it off) and ``SmtpRemoteNDRExpireMinutes =
        2880`` (expiration timeout, 2 days). From arrival: attempts at 0, 15, 45, 105, 345, 585 ...
        minutes, the delay DSN from 12 h, the last attempt exactly at 48 h.
        """
        if not progressive_retry:
            raise ConfigurationError(
                f"progressive_retry is a non-empty sequence of minutes, not {progressive_retry!r}"
            )
        delay = None
        if delay_expire_minutes is not None:
            delay = timedelta(minutes=_positive(delay_expire_minutes, what="delay_expire_minutes"))
        return cls.from_intervals(
            [_positive(m, what="progressive_retry minutes") * 60 for m in progressive_retry],
            lifetime=timedelta(minutes=_positive(ndr_expire_minutes, what="ndr_expire_minutes")),
            delay_notice=delay,
            name="iis",
        )

    @classmethod
    def iis_local(
        cls,
        *,
        retry_minutes: float = 60,
        delay_expire_minutes: float | None = 720,
        ndr_expire_minutes: float = 2880,
    ) -> RetryPolicy:
        """IIS's local delivery (Drop) schedule: every hour, delay notice at 12 h, 2 days.

        IIS 6 metabase: ``LocalRetryInterval = 60`` minutes (MD_LOCAL_RETRY_MINUTES),
        ``SmtpLocalDelayExpireMinutes = 720`` and ``SmtpLocalNDRExpireMinutes = 2880``.
        A Drop write fails only when the disk does (full, unwritable), so a steady hour suits.
        """
        delay = None
        if delay_expire_minutes is not None:
            delay = timedelta(minutes=_positive(delay_expire_minutes, what="delay_expire_minutes"))
        return cls.from_intervals(
            [_positive(retry_minutes, what="retry_minutes") * 60],
            lifetime=timedelta(minutes=_positive(ndr_expire_minutes, what="ndr_expire_minutes")),
            delay_notice=delay,
            name="iis-local",
        )

    @classmethod
    def postfix(
        cls,
        *,
        minimal_backoff_time: timedelta | float = 300,
        maximal_backoff_time: timedelta | float = 4000,
        maximal_queue_lifetime: timedelta | float = timedelta(days=5),
        delay_warning_time: timedelta | float | None = None,
    ) -> RetryPolicy:
        """Postfix's queue manager with the postconf(5) defaults (numbers are seconds).

        postconf(5): ``minimal_backoff_time`` (300s; 1000s before Postfix 2.4) and
        ``maximal_backoff_time`` (4000s) are the least and most time between attempts to deliver
        a deferred message; ``queue_run_delay`` (300s) is the time between scans of the deferred
        queue and should not exceed minimal_backoff_time. qmgr(8) calls the rule exponential
        backoff "by doubling the time between delivery attempts"; the code (``qmgr_active.c``,
        ``qmgr_active_done_3_generic``) does it by moving a deferred message into the future by
        the time it has been queued, clamped to [minimal, maximal]. The age doubles at each
        attempt, so each gap is the sum of all before it: 300, 300, 600, 1200, 2400, then 4000 s
        for good. That clamp of the age is this preset's wait. ``queue_run_delay`` is left out:
        it only decides how soon a scan notices a due message (up to 300 s late in Postfix),
        while spoolmail wakes at the due time.

        ``maximal_queue_lifetime`` (5d): qmgr returns a message whose attempt fails at or after
        that age (``event_time() >= create_time + var_max_queue_time``); spoolmail also moves the
        last attempt onto that deadline. ``delay_warning_time`` defaults to 0h, i.e. no warning.
        """
        minimal = _seconds(minimal_backoff_time, what="minimal_backoff_time")
        maximal = _seconds(maximal_backoff_time, what="maximal_backoff_time")
        if maximal < minimal:
            raise ConfigurationError(
                f"maximal_backoff_time ({maximal} s) must be at least "
                f"minimal_backoff_time ({minimal} s)"
            )
        lifetime = _seconds(maximal_queue_lifetime, what="maximal_queue_lifetime")
        delay = None
        if delay_warning_time is not None:
            delay = timedelta(seconds=_seconds(delay_warning_time, what="delay_warning_time"))
        return cls(
            wait=_PostfixBackoff(minimal=minimal, maximal=maximal),
            lifetime=timedelta(seconds=lifetime),
            delay_notice=delay,
            name="postfix",
        )

    @classmethod
    def qmail(
        cls,
        *,
        queuelifetime: timedelta | float = 604800,
        chanskip: int = 20,
    ) -> RetryPolicy:
        """qmail-send's remote channel: next attempt = birth + (⌊√age⌋ + 20)² seconds.

        This is qmail-send.c's ``nextretry()`` (docs/retries.md): ``n = squareroot(recent -
        birth) + chanskip[c]; return birth + n*n`` with ``chanskip = {10, 20}`` (local, remote).
        Ages at attempts are then perfect squares, so the attempts fall at (20k)² s after birth:
        0, 400, 1600, 3600, 6400 ... s. ``queuelifetime`` (control/queuelifetime, qmail-send(8):
        604800 s, 7 days): qmail tries once more after it and turns a deferral into a failure;
        spoolmail makes that last try exactly at the deadline. qmail sends no delay notice.
        """
        if isinstance(chanskip, bool) or not isinstance(chanskip, int) or chanskip < 1:
            raise ConfigurationError(f"chanskip must be a positive integer, not {chanskip!r}")
        lifetime = _seconds(queuelifetime, what="queuelifetime")
        return cls(
            wait=_QmailRetry(chanskip=chanskip),
            lifetime=timedelta(seconds=lifetime),
            name="qmail",
        )

    @classmethod
    def exim(
        cls,
        *,
        rules: str = "F,2h,15m; G,16h,1h,1.5; F,4d,6h",
        delay_warning: timedelta | None = timedelta(hours=24),
    ) -> RetryPolicy:
        """Exim's retry rules, by default those of its default configuration's ``* * ...`` line.

        Exim spec chapter 32, "Retry configuration": ``F,<cutoff>,<interval>`` retries at a fixed
        interval and ``G,<cutoff>,<interval>,<factor>`` at a geometrically growing one, each while
        the time since the first failure is at most its cutoff. The default: every 15 minutes
        for 2 hours, then 1 h, 1.5 h, 2.25 h ... until 16 hours, then every 6 hours; after 4 days
        (the last cutoff) the address times out, so that is the lifetime. The arithmetic follows
        ``retry.c`` (``retry_update``): whole seconds, a G gap is the previous gap times the
        factor (or the G interval when the previous gap was shorter). Exim keeps the previous gap
        in its retry database; here it is the gap of the ideal schedule at the message's age,
        which is the same number when attempts run on time. The first failure is the arrival
        (the first attempt is immediate). ``H`` rules draw random gaps and are refused.

        ``delay_warning``: Exim's main option defaults to 24h and Exim repeats the warning every
        24 h; spoolmail sends one delay DSN (docs/retries.md), at 24 h. ``None`` turns it off.
        """
        parsed = _parse_exim_rules(rules)
        return cls(
            wait=_EximRetryRules(parsed),
            lifetime=timedelta(seconds=parsed[-1].cutoff),
            delay_notice=delay_warning,
            name="exim",
        )


# ----------------------------------------------------------------------------- preset waits
# Each is a tenacity wait strategy (so `+ wait_random(0, 30)` and friends compose with it) that
# reads the message's age, seconds_since_start, rather than the attempt number.


class _PostfixBackoff(wait_base):
    """Postfix qmgr: wait for as long as the message has been queued, within [minimal, maximal]."""

    def __init__(self, *, minimal: float, maximal: float) -> None:
        self.minimal = minimal
        self.maximal = maximal

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return min(max(_age(retry_state), self.minimal), self.maximal)

    def __repr__(self) -> str:
        return f"<postfix backoff: age within [{self.minimal:g}, {self.maximal:g}] s>"


class _QmailRetry(wait_base):
    """qmail-send ``nextretry()``: until birth + (⌊√age⌋ + chanskip)², in whole seconds."""

    def __init__(self, *, chanskip: int) -> None:
        self.chanskip = chanskip

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        age = _age(retry_state)
        # squareroot() in qmail-send.c is the integer square root of whole seconds.
        root = math.isqrt(int(age)) + self.chanskip
        return root * root - age

    def __repr__(self) -> str:
        return f"<qmail retry: birth + (isqrt(age) + {self.chanskip})^2 s>"


@attrs.frozen
class _EximRule:
    """One Exim retry rule: ``F`` (factor None) or ``G``; all times in whole seconds."""

    cutoff: int
    interval: int
    factor_milli: int | None  # Exim keeps the G factor as an integer thousandth (retry.c)


_EXIM_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}
_EXIM_TIME = re.compile(r"(?:\d+[wdhms])*\d*")
_EXIM_FACTOR = re.compile(r"(\d+)(?:\.(\d{1,3}))?")


def _exim_seconds(text: str, *, rule: str) -> int:
    # Exim times: numbers each followed by w, d, h, m or s ("1h30m"); a bare number is seconds.
    if not text or not _EXIM_TIME.fullmatch(text):
        raise ConfigurationError(f"Exim retry rule {rule!r}: {text!r} is not a time like 2h")
    seconds = sum(
        int(number) * _EXIM_UNITS[unit] for number, unit in re.findall(r"(\d+)([wdhms]?)", text)
    )
    if seconds <= 0:
        raise ConfigurationError(f"Exim retry rule {rule!r}: {text!r} must be more than 0s")
    return seconds


def _parse_exim_rules(text: str) -> tuple[_EximRule, ...]:
    rules: list[_EximRule] = []
    for rule in (part.strip() for part in text.split(";")):
        fields = [field.strip() for field in rule.split(",")]
        kind = fields[0]
        if kind == "H":
            raise ConfigurationError(
                f"Exim retry rule {rule!r}: H rules draw random gaps, which spoolmail does not "
                "reproduce; use RetryPolicy.from_tenacity with a random wait instead"
            )
        if kind not in ("F", "G") or len(fields) != (3 if kind == "F" else 4):
            raise ConfigurationError(
                f"Exim retry rule {rule!r}: expected F,<cutoff>,<interval> or "
                "G,<cutoff>,<interval>,<factor>"
            )
        cutoff = _exim_seconds(fields[1], rule=rule)
        interval = _exim_seconds(fields[2], rule=rule)
        factor_milli = None
        if kind == "G":
            match = _EXIM_FACTOR.fullmatch(fields[3])
            if match is None:
                raise ConfigurationError(
                    f"Exim retry rule {rule!r}: factor {fields[3]!r} is not a number like 1.5"
                )
            factor_milli = int(match[1]) * 1000 + int((match[2] or "0").ljust(3, "0"))
            if factor_milli <= 1000:
                raise ConfigurationError(
                    f"Exim retry rule {rule!r}: a G factor must be more than 1 (use F for a "
                    "fixed interval)"
                )
        if rules and cutoff <= rules[-1].cutoff:
            raise ConfigurationError(
                f"Exim retry rule {rule!r}: cutoffs must grow, or the rule is never used"
            )
        rules.append(_EximRule(cutoff=cutoff, interval=interval, factor_milli=factor_milli))
    return tuple(rules)


class _EximRetryRules(wait_base):
    """Exim retry rules as a wait: the gap of the ideal schedule's step that the age falls in.

    The ideal schedule starts at the first failure (age 0) and steps as ``retry_update`` does: the
    rule is the first whose cutoff is at least the time since the first failure; ``F`` adds its
    interval; ``G`` adds its interval while the previous gap was shorter than that, else the
    previous gap times the factor. Past the last cutoff Exim times the address out; the final
    rule's step is returned, for a caller who pairs this wait with a longer lifetime.
    """

    def __init__(self, rules: tuple[_EximRule, ...]) -> None:
        self.rules = rules

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        age = _age(retry_state)
        start, previous_gap = 0, 0
        while True:
            rule = next((rule for rule in self.rules if start <= rule.cutoff), None)
            expired = rule is None
            rule = rule or self.rules[-1]
            if rule.factor_milli is None:
                gap = rule.interval
                if expired:
                    return float(gap)
                # Every step of an F rule has the same gap: jump over all of them at once.
                leaving = start + ((rule.cutoff - start) // gap + 1) * gap
                if age < leaving:
                    return float(gap)
                start, previous_gap = leaving, gap
                continue
            if previous_gap < rule.interval:
                gap = rule.interval
            else:
                gap = previous_gap * rule.factor_milli // 1000
            if expired or age < start + gap:
                return float(gap)
            start, previous_gap = start + gap, gap

    def __repr__(self) -> str:
        text = "; ".join(
            f"F,{r.cutoff}s,{r.interval}s"
            if r.factor_milli is None
            else f"G,{r.cutoff}s,{r.interval}s,{r.factor_milli / 1000:g}"
            for r in self.rules
        )
        return f"<exim retry rules: {text}>"


# ----------------------------------------------------------------------------- short retries


def short_retrying(
    *,
    sleep: Callable[[float], None],
    attempts: int = 2,
    wait: float = 0.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = TransportError,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """A :class:`tenacity.Retrying` for retries within one delivery: reconnect once, next MX host.

    At most ``attempts`` tries, ``wait`` seconds apart, only after an exception of type
    ``retry_on`` (anything else propagates at once); when they run out the last exception is
    re-raised as itself (``reraise=True``), never wrapped in ``tenacity.RetryError``. ``sleep`` is
    required because the core reads no clock: the transport passes ``time.sleep``, tests a fake
    that records the waits. Use as ``short_retrying(sleep=...)(connect, host)`` or
    ``for attempt in short_retrying(...): with attempt: ...``.
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigurationError(f"attempts must be a positive integer, not {attempts!r}")
    if not math.isfinite(wait) or wait < 0:
        raise ConfigurationError(f"wait must be a finite, non-negative number, not {wait!r}")
    return tenacity.Retrying(
        sleep=sleep,
        stop=stop_after_attempt(attempts),
        wait=wait_fixed(wait),
        retry=tenacity.retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
        reraise=True,
    )
