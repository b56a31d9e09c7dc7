"""MTA-STS (RFC 8461): the TXT record and policy file read strictly, MX patterns matched, the
cache's decisions, and what a policy does to a domain's MX targets.

:func:`parse_record` reads the ``_mta-sts.<domain>`` TXT strings (section 3.1),
:func:`parse_policy` the ``.well-known/mta-sts.txt`` body (section 3.2); both return a value or
an :class:`StsInvalid` saying why, and never raise on any input. :func:`mx_matches` is section
4.1's pattern rule. :func:`next_step` and :func:`after_fetch` are section 5.1's control flow as
pure functions of the cached policy, the TXT record and the time: use the cache, fetch, or go on
without a policy. :func:`apply_policy` keeps the MX targets an ``enforce`` policy allows and asks
for verified TLS to them (section 4.2: ``TlsPolicy.REQUIRED`` with the MX host's name), or says
why none is left. Pure: no DNS, no HTTPS, no clock; the adapter (``spoolmail._transport.mtasts``)
asks the questions and the time is handed in.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy

__all__ = [
    "FETCH_FAILURE_PAUSE",
    "MAX_AGE_LIMIT",
    "MAX_POLICY_SIZE",
    "CachedPolicy",
    "Step",
    "StsInvalid",
    "StsMode",
    "StsPolicy",
    "StsRecord",
    "Verdict",
    "after_fetch",
    "apply_policy",
    "mx_matches",
    "next_step",
    "parse_policy",
    "parse_record",
]

MAX_AGE_LIMIT = 31_557_600
"""Section 3.2: ``max_age`` is at most 31557600 seconds (about one year)."""
MAX_POLICY_SIZE = 64 * 1024
"""Section 3.3: senders may limit the policy body's size; 64 KiB, as Postfix's postfix-mta-sts-
resolver and Exim do."""
FETCH_FAILURE_PAUSE = timedelta(minutes=5)
"""After a failed fetch, how long the next message to the domain goes on without asking again
(section 3.3: senders "may wish to rate-limit" fetches), so one unreachable policy host does not
cost a 10 s HTTPS attempt per message."""

# Section 3.1: sts-id = 1*32(ALPHA / DIGIT); field names and values per the ABNF.
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_FIELD_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")  # VCHAR without ";" and "="
# Section 3.2: sts-policy-field-name and values of VCHAR and WSP.
_POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_POLICY_VALUE = re.compile(r"[\x20-\x7e\t]*")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class StsMode(enum.Enum):
    """A policy's mode (section 5)."""

    ENFORCE = "enforce"
    """Deliver only to listed MX hosts over verified TLS; otherwise not at all (defer)."""
    TESTING = "testing"
    """Deliver as usual; note (and report, RFC 8460) what enforce would have refused."""
    NONE = "none"
    """No policy: the domain is withdrawing it."""


@attrs.frozen
class StsInvalid:
    """Why a record or policy is not valid (the transcript says it)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@attrs.frozen
class StsRecord:
    """The ``_mta-sts`` TXT record: its ``id`` changes whenever the policy does."""

    id: str


@attrs.frozen
class StsPolicy:
    """A policy file: mode, the MX patterns, and how long it may be cached (seconds)."""

    mode: StsMode
    mx: tuple[str, ...]
    max_age: int

    def allows(self, host: str) -> bool:
        """Whether ``host`` matches one of the policy's ``mx`` patterns (section 4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_record(texts: Iterable[str]) -> StsRecord | StsInvalid | None:
    """The ``_mta-sts`` TXT record among ``texts`` (each record's strings already joined).

    Section 3.1: records not beginning with ``v=STSv1;`` are discarded; ``None`` when none is
    left (no policy); when more than one is left, or the one left does not parse, the domain has
    no usable policy either (:class:`StsInvalid`, which the caller treats as no policy).
    """
    candidates = [text for text in texts if text.startswith("v=STSv1;")]
    if not candidates:
        return None
    if len(candidates) > 1:
        return StsInvalid(f"{len(candidates)} v=STSv1 TXT records, there must be one")
    fields: dict[str, str] = {}
    parts = candidates[0].split(";")
    if parts and not parts[-1].strip(" \t"):
        parts = parts[:-1]  # a trailing ";" is allowed
    for part in parts:
        name, equals, value = part.strip(" \t").partition("=")
        if not equals or not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            return StsInvalid(f"TXT record field {part.strip()!r} is not name=value")
        fields.setdefault(name, value)
    record_id = fields.get("id")
    if record_id is None:
        return StsInvalid("TXT record has no id field")
    if not _ID.fullmatch(record_id):
        return StsInvalid(f"TXT record id {record_id!r} is not 1-32 letters and digits")
    return StsRecord(record_id)


def parse_policy(text: str) -> StsPolicy | StsInvalid:  # noqa: PLR0911 (one return per rule)
    """The policy file's body (section 3.2), read strictly but for blank lines.

    ``key: value`` lines ended by LF or CRLF; ``version`` must be ``STSv1``, ``mode`` one of
    ``enforce``, ``testing``, ``none``, ``max_age`` whole seconds up to :data:`MAX_AGE_LIMIT`,
    and ``mx`` (any number of lines; at least one unless the mode is ``none``) a host name or a
    ``*.`` wildcard of one. Unknown fields are ignored (extensions); of a repeated field other
    than ``mx`` the first counts.

    Lines that are empty or only spaces and tabs are skipped, although the grammar has no room
    for them: a policy that does not parse is no policy, so refusing a domain's ``enforce``
    policy for a blank line its editor left would deliver its mail without the TLS it asks
    for, a worse outcome than reading past the line (as postfix-mta-sts-resolver does).
    """
    if len(text) > MAX_POLICY_SIZE:
        return StsInvalid(f"policy is over {MAX_POLICY_SIZE} bytes")
    fields: dict[str, str] = {}
    patterns: list[str] = []
    lines = text.replace("\r\n", "\n").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip(" \t"):
            continue
        name, colon, value = line.partition(":")
        if not colon or not _POLICY_NAME.fullmatch(name) or not _POLICY_VALUE.fullmatch(value):
            return StsInvalid(f"policy line {number} is not 'key: value': {line[:80]!r}")
        value = value.strip(" \t")
        if name == "mx":
            pattern = _mx_pattern(value)
            if pattern is None:
                return StsInvalid(f"policy line {number}: {value[:80]!r} is not an MX pattern")
            patterns.append(pattern)
        else:
            fields.setdefault(name, value)
    if fields.get("version") != "STSv1":
        return StsInvalid(f"policy version is {fields.get('version')!r}, not 'STSv1'")
    try:
        mode = StsMode(fields.get("mode"))
    except ValueError:
        return StsInvalid(f"policy mode is {fields.get('mode')!r}: enforce, testing or none")
    raw_age = fields.get("max_age", "")
    if not _MAX_AGE.fullmatch(raw_age) or int(raw_age) > MAX_AGE_LIMIT:
        return StsInvalid(f"policy max_age {raw_age!r} is not 0-{MAX_AGE_LIMIT} seconds")
    if not patterns and mode is not StsMode.NONE:
        return StsInvalid(f"policy in mode {mode.value} lists no mx")
    return StsPolicy(mode, tuple(dict.fromkeys(patterns)), int(raw_age))


def _mx_pattern(value: str) -> str | None:
    """``value`` as a lower-case pattern without a trailing dot, or ``None`` if it is not a host
    name or ``*.`` followed by one."""
    pattern = value.lower().rstrip(".")
    host = pattern[2:] if pattern.startswith("*.") else pattern
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        return None
    return pattern


def mx_matches(pattern: str, host: str) -> bool:
    """Section 4.1: ``host`` matches ``pattern`` exactly (without case or trailing dot), or the
    pattern is ``*.`` and a domain and ``host`` is exactly one label more of that domain.

    >>> mx_matches("*.mail.example.net", "mx1.mail.example.net")
    True
    >>> mx_matches("*.mail.example.net", "a.b.mail.example.net"), mx_matches("*.example.net",
    ...     "example.net")
    (False, False)
    """
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


@attrs.frozen
class CachedPolicy:
    """A policy as cached: with the TXT id it was fetched under, and when."""

    policy: StsPolicy
    id: str
    fetched: datetime

    @property
    def expires(self) -> datetime:
        return self.fetched + timedelta(seconds=self.policy.max_age)

    def valid(self, now: datetime) -> bool:
        return now < self.expires


class Step(enum.Enum):
    """What to do about a domain's policy before a delivery (section 5.1)."""

    USE_CACHED = "use the cached policy"
    FETCH = "fetch the policy"
    NO_POLICY = "no policy"


def next_step(
    cached: CachedPolicy | None,
    record: StsRecord | None,
    now: datetime,
    *,
    failed: datetime | None = None,
) -> Step:
    """Section 5.1 before a delivery, given the cache and what the TXT lookup found.

    - No (valid) TXT record: the cached policy while it has not expired (an attacker who
      strips the record must not switch the policy off), else none.
    - A record whose id the cache holds: the cached policy, until it expires.
    - Otherwise fetch, unless a fetch for this domain failed less than
      :data:`FETCH_FAILURE_PAUSE` ago (``failed``): then the cache if valid, else none.
    """
    usable = cached is not None and cached.valid(now)
    if record is None:
        return Step.USE_CACHED if usable else Step.NO_POLICY
    if usable and cached is not None and cached.id == record.id:
        return Step.USE_CACHED
    if failed is not None and now < failed + FETCH_FAILURE_PAUSE:
        return Step.USE_CACHED if usable else Step.NO_POLICY
    return Step.FETCH


def after_fetch(
    cached: CachedPolicy | None,
    record: StsRecord,
    fetched: StsPolicy | StsInvalid | None,
    now: datetime,
) -> CachedPolicy | None:
    """The cache entry after a fetch: the new policy under the record's id; after a failure
    (``None``, or a body that does not parse) the old one while it is valid (section 5.1:
    "If the policy fetch fails ... continue with the cached policy"), else nothing (section 3.3:
    as though the domain had no policy: a fetch problem never stops mail)."""
    if isinstance(fetched, StsPolicy):
        return CachedPolicy(fetched, record.id, now)
    if cached is not None and cached.valid(now):
        return cached
    return None


@attrs.frozen
class Verdict:
    """What a policy did to a domain's targets: those to try, and the notes for the transcript;
    ``reply`` when none is left."""

    targets: tuple[Target, ...]
    notes: tuple[str, ...] = ()
    reply: Reply | None = None


def apply_policy(domain: str, policy: StsPolicy, targets: Sequence[Target]) -> Verdict:
    """The MX ``targets`` of ``domain`` under ``policy`` (section 5).

    ``enforce``: only targets whose MX name the policy lists, each with
    ``TlsPolicy.REQUIRED`` (STARTTLS, a certificate valid for that MX name from a trusted CA,
    section 4.2), whatever TLS policy the router gave; when none is listed, ``451 4.7.0`` for
    all (deferred: a policy that does not match its own MX hosts is usually fixed within
    hours; section 5.1 says not to deliver). ``testing``: the
    targets unchanged, with a note per host enforce would have refused. ``none``: unchanged.
    """
    if policy.mode is StsMode.NONE:
        return Verdict(tuple(targets))
    listed = [t for t in targets if t.name is not None and policy.allows(t.name)]
    unlisted = sorted({t.name or t.host for t in targets if t not in listed})
    patterns = ", ".join(policy.mx)
    if policy.mode is StsMode.TESTING:
        notes = tuple(
            f"MTA-STS {domain} (testing): {name} is not in the policy ({patterns}); "
            "enforce would refuse it"
            for name in unlisted
        )
        return Verdict(tuple(targets), notes)
    notes = tuple(
        f"MTA-STS {domain} (enforce): {name} is not in the policy ({patterns}); not tried"
        for name in unlisted
    )
    if not listed:
        hosts = ", ".join(unlisted)
        reply = Reply(
            451,
            "4.7.0",
            f"MTA-STS policy of {domain} (mode enforce, mx {patterns}) lists none of its MX "
            f"hosts ({hosts}); not delivering until it does (RFC 8461 section 5)",
        )
        return Verdict((), notes, reply)
    required = tuple(attrs.evolve(t, tls=TlsPolicy.REQUIRED) for t in listed)
    notes += (f"MTA-STS {domain} (enforce): TLS with a certificate valid for the MX name required",)
    return Verdict(required, notes)
