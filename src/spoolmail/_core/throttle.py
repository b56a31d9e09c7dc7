"""Backing off when a receiver asks: which replies mean "slow down", and what slowing down is.

A receiver that finds a sender too fast says so with a ``421`` (RFC 5321 section 3.8: the
service is closing the channel), or a temporary ``4.7.x`` with words like "rate limited" or
"try again later": Gmail's ``421 4.7.28`` ("unusual rate of unsolicited mail") and ``421
4.7.0`` ("try again later"), Outlook's ``451 4.7.500`` ("server busy"), Yahoo's ``421 4.7.0
[TSS04]``. :func:`asks_to_slow_down` recognises them. A destination that asked is
:class:`Throttle` d: its connection limit halves (Postfix's destination concurrency feedback:
additive increase, multiplicative decrease), and no new attempt starts before a wait that
doubles with each request in a row (1 minute up to 30 by default); every delivery it accepts
afterwards gives one connection back. :class:`RateBucket` is an optional per-destination message
rate (a token bucket, ``max_messages_per_minute``). Pure: the time is handed in; the service
keeps the state (``spoolmail._service.destinations.Throttles``).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import attrs

from spoolmail._core.reply import Reply
from spoolmail.exceptions import ConfigurationError

__all__ = ["RateBucket", "Throttle", "ThrottleRules", "asks_to_slow_down"]

# Words receivers use with a 4.7.x when they limit a sender's rate or connections. "rate"
# only as a word of its own ("rate", "ratelimit", "rates"): inside another ("corporate policy",
# "moderated", "separate") it asks nothing, and a whole destination would be slowed for it.
_SLOW_DOWN = re.compile(
    r"\brate|too many|try (again )?later|again later|busy|throttl|exceeded|slow down|"
    r"temporarily (deferred|rejected|limited)|unusual|reputation|tss0[0-9]",
    re.IGNORECASE,
)
# Without a 4.7.x, only words that cannot mean anything else ("busy" alone is a mailbox's).
_RATE_LIMITED = re.compile(
    r"\brate.?limit|too many (connections|messages|mails|emails|sessions)|sending rate|throttl|"
    r"try again later",
    re.IGNORECASE,
)


def asks_to_slow_down(reply: Reply) -> bool:
    """Whether ``reply`` is a receiver asking this sender to slow down.

    - ``421`` (closing the channel) unless its status is 4.4.x (network or routing trouble,
      which the dead-host rule handles);
    - a temporary ``4.7.x`` whose text speaks of rates, too many, busy or trying later;
    - any other temporary reply that says "rate limit", "too many connections" (or messages)
      or "try again later", except ``4.5.3`` (too many recipients in one transaction, which
      the client handles by starting another) and 4.4.x.

    >>> asks_to_slow_down(Reply.parse(421, "4.7.28 Our system has detected an unusual rate"))
    True
    >>> asks_to_slow_down(Reply.parse(451, "4.7.500 Server busy. Please try again later"))
    True
    >>> asks_to_slow_down(Reply.parse(451, "4.3.0 Mailbox temporarily unavailable"))
    False
    """
    if not 400 <= reply.code < 500:
        return False
    status = reply.status
    if status.startswith("4.4.") or status == "4.5.3":
        return False
    if reply.code == 421:
        return True
    if status.startswith("4.7."):
        return bool(_SLOW_DOWN.search(reply.text))
    return bool(_RATE_LIMITED.search(reply.text))


@attrs.frozen
class ThrottleRules:
    """How a destination is slowed: the connection limit it recovers to, the waits, and an
    optional message rate per minute (``None``: no limit)."""

    max_connections: int = 10
    first_wait: timedelta = timedelta(minutes=1)
    max_wait: timedelta = timedelta(minutes=30)
    max_messages_per_minute: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigurationError(
                f"max_connections must be 1 or more, not {self.max_connections}"
            )
        if self.max_messages_per_minute is not None and self.max_messages_per_minute < 1:
            raise ConfigurationError(
                f"max_messages_per_minute must be 1 or more (or None), not "
                f"{self.max_messages_per_minute}"
            )
        if self.first_wait < timedelta(0):
            raise ConfigurationError(f"first_wait cannot be negative: {self.first_wait}")
        if self.max_wait < self.first_wait:
            raise ConfigurationError(
                f"max_wait ({self.max_wait}) is shorter than first_wait ({self.first_wait})"
            )


@attrs.frozen
class Throttle:
    """One destination's throttle: its connection limit now, no attempt before ``until``, the
    requests in a row (``strikes``) and the reply that asked last."""

    connections: int
    until: datetime | None = None
    strikes: int = 0
    reason: Reply | None = None

    @classmethod
    def fresh(cls, rules: ThrottleRules) -> Throttle:
        return cls(rules.max_connections)

    @property
    def slowed(self) -> bool:
        return self.strikes > 0

    def waiting(self, now: datetime) -> bool:
        """Whether no attempt may start now."""
        return self.until is not None and now < self.until

    def asked(self, reply: Reply, now: datetime, rules: ThrottleRules) -> Throttle:
        """The receiver asked to slow down: halve the connections (at least one), and wait
        ``first_wait`` doubled for each request in a row, up to ``max_wait``."""
        strikes = self.strikes + 1
        wait = min(rules.first_wait * 2 ** min(strikes - 1, 20), rules.max_wait)
        return Throttle(max(1, self.connections // 2), now + wait, strikes, reply)

    def accepted(self, rules: ThrottleRules) -> Throttle:
        """A delivery went through: one connection back (additive increase); fully recovered
        (the limit back at its maximum), the throttle is forgotten."""
        connections = min(rules.max_connections, self.connections + 1)
        if connections >= rules.max_connections:
            return Throttle.fresh(rules)
        return Throttle(connections, self.until, 0, self.reason)


@attrs.frozen
class RateBucket:
    """A token bucket of messages: ``rate`` a minute, at most ``rate`` at once."""

    tokens: float
    stamp: datetime

    @classmethod
    def full(cls, rate: int, now: datetime) -> RateBucket:
        return cls(float(rate), now)

    def take(self, rate: int, now: datetime) -> tuple[RateBucket, timedelta | None]:
        """Take one message's token: the new bucket, and ``None``, or how long until a token
        is there (nothing taken).

        >>> from datetime import UTC
        >>> start = datetime(2026, 1, 1, tzinfo=UTC)
        >>> bucket = RateBucket.full(2, start)
        >>> bucket, wait = bucket.take(2, start); bucket, wait = bucket.take(2, start)
        >>> bucket.take(2, start)[1]
        datetime.timedelta(seconds=30)
        """
        elapsed = max(0.0, (now - self.stamp).total_seconds())
        tokens = min(float(rate), self.tokens + elapsed * rate / 60)
        if tokens >= 1:
            return RateBucket(tokens - 1, now), None
        return RateBucket(tokens, now), timedelta(seconds=(1 - tokens) * 60 / rate)
