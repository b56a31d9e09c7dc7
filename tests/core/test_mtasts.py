"""MTA-STS's pure rules (RFC 8461): the TXT record, the policy file, MX patterns, the cache's
control flow and what a policy does to the MX targets. No DNS, no HTTPS, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.mtasts import (
    FETCH_FAILURE_PAUSE,
    CachedPolicy,
    Step,
    StsInvalid,
    StsMode,
    StsPolicy,
    StsRecord,
    after_fetch,
    apply_policy,
    mx_matches,
    next_step,
    parse_policy,
    parse_record,
)
from spoolmail._core.routing import Target, TlsPolicy

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
GOOD = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    "max_age: 604800\r\n"
)


def test_the_rfc_example_policy() -> None:
    assert parse_policy(GOOD) == StsPolicy(
        StsMode.ENFORCE, ("mail.example.com", "*.example.net"), 604800
    )
    # LF line ends, no final line end, unknown fields, trailing dot and case in mx.
    text = "version: STSv1\nmode: testing\nfoo: bar\nmx: MX1.Example.Test.\nmax_age: 0"
    assert parse_policy(text) == StsPolicy(StsMode.TESTING, ("mx1.example.test",), 0)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n") == StsPolicy(
        StsMode.NONE, (), 86400
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version is None"),
        ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "'STSv2'"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode is 'strict'"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 10\n", "lists no mx"),
        ("version: STSv1\nmode: enforce\nmx: *.*.a.test\nmax_age: 10\n", "not an MX pattern"),
        ("version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 10\n", "not an MX pattern"),
        ("version: STSv1\nmode: enforce\nmx: localhost\nmax_age: 10\n", "not an MX pattern"),
        ("<html>\n", "not 'key: value'"),
    ],
)
def test_what_is_not_a_policy(text: str, reason: str) -> None:
    found = parse_policy(text)
    assert isinstance(found, StsInvalid)
    assert reason in found.reason


@given(st.text(max_size=300))
def test_the_policy_parser_never_raises(text: str) -> None:
    found = parse_policy(text)
    assert isinstance(found, StsPolicy | StsInvalid)
    if isinstance(found, StsPolicy):
        assert 0 <= found.max_age <= 31_557_600


@given(
    st.lists(
        st.sampled_from(
            [
                "version: STSv1",
                "mode: enforce",
                "mode: testing",
                "mx: a.test",
                "mx: *.b.test",
                "max_age: 86400",
                "max_age: 99999999999",
                "x: y",
                "",
                "mx: *",
                "version:STSv1",
            ]
        ),
        max_size=8,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_policies_made_of_real_lines_parse_or_say_why(lines: list[str], end: str) -> None:
    found = parse_policy(end.join(lines))
    assert isinstance(found, StsPolicy | StsInvalid)


def test_the_txt_record() -> None:
    assert parse_record(["v=STSv1; id=20160831085700Z;"]) == StsRecord("20160831085700Z")
    assert parse_record(["v=STSv1;id=abc"]) == StsRecord("abc")
    assert parse_record(["v=spf1 -all"]) is None
    assert parse_record([]) is None
    assert isinstance(parse_record(["v=STSv1; id=1", "v=STSv1; id=2"]), StsInvalid)
    assert isinstance(parse_record(["v=STSv1; id=not-alnum"]), StsInvalid)
    assert isinstance(parse_record(["v=STSv1; id=" + "a" * 33]), StsInvalid)
    assert isinstance(parse_record(["v=STSv1;"]), StsInvalid)
    assert isinstance(parse_record(["v=STSv1; junk"]), StsInvalid)


@given(st.lists(st.text(max_size=80), max_size=3))
def test_the_record_parser_never_raises(texts: list[str]) -> None:
    assert isinstance(parse_record(texts), StsRecord | StsInvalid | None)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.example.com.", True),
        ("mail.example.com", "mail2.example.com", False),
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, *, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


# -- the control flow (section 5.1) ----------------------------------------------------------------

POLICY = StsPolicy(StsMode.ENFORCE, ("mx1.example.test",), 3600)
CACHED = CachedPolicy(POLICY, "1", NOW)


def test_next_step() -> None:
    record = StsRecord("1")
    assert next_step(None, None, NOW) is Step.NO_POLICY
    assert next_step(None, record, NOW) is Step.FETCH
    assert next_step(CACHED, record, NOW) is Step.USE_CACHED
    # The record gone (or its lookup failed): the cache still holds, until it expires.
    assert next_step(CACHED, None, NOW + timedelta(minutes=59)) is Step.USE_CACHED
    assert next_step(CACHED, None, NOW + timedelta(hours=1)) is Step.NO_POLICY
    assert next_step(CACHED, record, NOW + timedelta(hours=1)) is Step.FETCH
    assert next_step(CACHED, StsRecord("2"), NOW) is Step.FETCH
    # A fetch failed a moment ago: not again yet.
    failed = NOW
    later = NOW + FETCH_FAILURE_PAUSE
    assert next_step(CACHED, StsRecord("2"), NOW, failed=failed) is Step.USE_CACHED
    assert next_step(None, record, NOW, failed=failed) is Step.NO_POLICY
    assert next_step(None, record, later, failed=failed) is Step.FETCH


def test_after_fetch() -> None:
    record = StsRecord("2")
    fresh = StsPolicy(StsMode.TESTING, ("*.example.test",), 60)
    assert after_fetch(CACHED, record, fresh, NOW) == CachedPolicy(fresh, "2", NOW)
    assert after_fetch(CACHED, record, None, NOW) == CACHED
    assert after_fetch(CACHED, record, StsInvalid("x"), NOW) == CACHED
    assert after_fetch(CACHED, record, None, NOW + timedelta(hours=2)) is None
    assert after_fetch(None, record, None, NOW) is None


# -- what a policy does to the targets -------------------------------------------------------------

MX1 = Target("127.0.0.11", 25, name="mx1.example.test")
MX2 = Target("127.0.0.12", 25, name="mx2.other.test")


def test_enforce_keeps_the_listed_hosts_and_requires_verified_tls() -> None:
    verdict = apply_policy("example.test", POLICY, [MX2, MX1])
    assert verdict.targets == (
        Target("127.0.0.11", 25, name="mx1.example.test", tls=TlsPolicy.REQUIRED),
    )
    assert verdict.reply is None
    assert any("mx2.other.test is not in the policy" in note for note in verdict.notes)


def test_enforce_without_a_listed_host_defers() -> None:
    verdict = apply_policy("example.test", POLICY, [MX2])
    assert verdict.targets == ()
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == (451, "4.7.0")
    assert "lists none of its MX hosts (mx2.other.test)" in verdict.reply.text


def test_testing_and_none_change_nothing() -> None:
    testing = StsPolicy(StsMode.TESTING, ("mx1.example.test",), 60)
    verdict = apply_policy("example.test", testing, [MX1, MX2])
    assert verdict.targets == (MX1, MX2)
    assert verdict.notes == (
        "MTA-STS example.test (testing): mx2.other.test is not in the policy "
        "(mx1.example.test); enforce would refuse it",
    )
    none = StsPolicy(StsMode.NONE, (), 60)
    assert apply_policy("example.test", none, [MX2]).targets == (MX2,)
