"""MX rules: ordering by preference, shuffling equal ones, null MX, dropping this host, verdicts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.mx import host_key, no_exchange, order_exchanges
from spoolmail._core.reply import Reply, Severity


def order(
    records: list[tuple[int, str]], *, local_names: tuple[str, ...] = (), seed: int = 0
) -> tuple[str, ...] | Reply:
    return order_exchanges(
        "example.test", records, local_names=local_names, rng=random.Random(seed)
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("MX1.Example.TEST.", "mx1.example.test"),
        ("mx1.example.test", "mx1.example.test"),
        (".", ""),
    ],
)
def test_host_key_ignores_case_and_the_trailing_dot(name: str, key: str) -> None:
    assert host_key(name) == key


@pytest.mark.parametrize(
    ("records", "local_names", "expected"),
    [
        pytest.param([(10, "mx1.example.test.")], (), ("mx1.example.test",), id="one"),
        pytest.param(
            [(20, "b.test"), (5, "c.test"), (10, "a.test")],
            (),
            ("c.test", "a.test", "b.test"),
            id="by-preference",
        ),
        pytest.param(
            [(10, "A.Test."), (20, "a.test")], (), ("a.test",), id="listed-twice-keeps-best"
        ),
        pytest.param(
            [(0, "."), (10, "mx1.example.test")],
            (),
            ("mx1.example.test",),
            id="dot-beside-real-mx-skipped",
        ),
        pytest.param(
            [(10, "mx1.test"), (20, "me.test"), (30, "mx3.test")],
            ("ME.test.",),
            ("mx1.test",),
            id="self-and-worse-dropped",
        ),
        pytest.param(
            [(10, "mx1.test"), (20, "mx2.test"), (20, "me.test")],
            ("me.test",),
            ("mx1.test",),
            id="equal-preference-to-self-dropped",
        ),
        pytest.param(
            [(10, "mx1.test"), (20, "me.test"), (5, "me.test")],
            ("me.test",),
            None,
            id="self-listed-twice-best-counts",
        ),
        pytest.param([(10, "mx1.test")], ("other.test", ""), ("mx1.test",), id="self-not-listed"),
    ],
)
def test_order(
    records: list[tuple[int, str]], local_names: tuple[str, ...], expected: tuple[str, ...] | None
) -> None:
    result = order(records, local_names=local_names)
    if expected is None:
        assert isinstance(result, Reply)
        assert (result.code, result.enhanced) == (550, "5.4.6")
    else:
        assert result == expected


@pytest.mark.parametrize("records", [[(0, ".")], [(10, ".")], [(0, "."), (5, ".")]])
def test_null_mx_is_a_permanent_556(records: list[tuple[int, str]]) -> None:
    assert order(records) == Reply(
        556, "5.1.10", "example.test does not accept mail (null MX, RFC 7505)"
    )


def test_this_host_as_best_mx_is_a_routing_loop() -> None:
    reply = order([(10, "me.test"), (20, "other.test")], local_names=("me.test",))
    assert reply == Reply(
        550,
        "5.4.6",
        "mail for example.test loops back to myself "
        "(this host is its best MX, RFC 5321 section 5.1)",
    )
    assert reply.severity is Severity.PERMANENT


def test_no_records_is_the_callers_implicit_mx() -> None:
    with pytest.raises(ValueError, match="implicit MX"):
        order([])


def test_equal_preferences_are_shuffled_by_the_rng() -> None:
    records = [(10, "mx1.test"), (10, "mx2.test"), (20, "backup.test")]
    seen = {order(records, seed=seed) for seed in range(40)}
    assert seen == {
        ("mx1.test", "mx2.test", "backup.test"),
        ("mx2.test", "mx1.test", "backup.test"),
    }


def test_a_seeded_rng_repeats_its_order_whatever_the_answer_order() -> None:
    records = [(10, f"mx{n}.test") for n in range(6)]
    assert order(records, seed=7) == order(list(reversed(records)), seed=7)


# Names drawn from a small pool, in any case and with or without the trailing dot, so that
# equal preferences, duplicates and self-listing all happen often.
_POOL = [f"mx{n}.example.test" for n in range(6)]
_names = st.builds(
    lambda name, upper, dot: (name.upper() if upper else name) + ("." if dot else ""),
    st.sampled_from(_POOL),
    st.booleans(),
    st.booleans(),
)
_records = st.lists(st.tuples(st.integers(0, 4), _names), min_size=1, max_size=10)


def _best(records: list[tuple[int, str]]) -> dict[str, int]:
    best: dict[str, int] = {}
    for preference, name in records:
        key = host_key(name)
        best[key] = min(preference, best.get(key, preference))
    return best


@given(records=_records, seed=st.integers(0, 2**32))
def test_order_is_a_permutation_consistent_with_preferences(
    records: list[tuple[int, str]], seed: int
) -> None:
    result = order(records, seed=seed)
    best = _best(records)
    assert isinstance(result, tuple)
    assert sorted(result) == sorted(best)
    preferences = [best[name] for name in result]
    assert preferences == sorted(preferences)


@given(records=_records, me=st.sampled_from(_POOL), seed=st.integers(0, 2**32))
def test_self_and_every_worse_exchange_are_dropped(
    records: list[tuple[int, str]], me: str, seed: int
) -> None:
    result = order(records, local_names=(me.upper() + ".",), seed=seed)
    best = _best(records)
    if me not in best:
        assert result == order(records, seed=seed)
        return
    better = {name for name, preference in best.items() if preference < best[me]}
    if better:
        assert isinstance(result, tuple)
        assert set(result) == better
    else:
        assert isinstance(result, Reply)
        assert result.enhanced == "5.4.6"


@given(records=_records, nulls=st.integers(1, 3), seed=st.integers(0, 2**32))
def test_root_exchanges_never_appear_and_alone_mean_null_mx(
    records: list[tuple[int, str]], nulls: int, seed: int
) -> None:
    with_root = records + [(0, ".")] * nulls
    assert order(with_root, seed=seed) == order(records, seed=seed)
    null = order([(0, ".")] * nulls, seed=seed)
    assert isinstance(null, Reply)
    assert null.enhanced == "5.1.10"


NXDOMAIN = Reply(550, "5.4.4", "host a.test does not exist (DNS NXDOMAIN)")
NO_ADDRESS = Reply(550, "5.4.4", "host b.test has no address (no AAAA or A record)")
TIMED_OUT = Reply(451, "4.4.3", "address lookup for c.test failed: AAAA and A: timed out")


def test_exchangers_that_all_failed_for_good_make_a_permanent_verdict() -> None:
    assert no_exchange("example.test", [NXDOMAIN, NO_ADDRESS]) == Reply(
        550,
        "5.4.4",
        "no mail exchanger of example.test has an address: "
        "host a.test does not exist (DNS NXDOMAIN); host b.test has no address "
        "(no AAAA or A record)",
    )


def test_one_temporary_failure_makes_the_verdict_temporary_and_comes_first() -> None:
    reply = no_exchange("example.test", [NXDOMAIN, TIMED_OUT])
    assert (reply.code, reply.enhanced) == (451, "4.4.3")
    assert reply.text == (
        "no mail exchanger of example.test can be reached now: "
        "address lookup for c.test failed: AAAA and A: timed out; "
        "host a.test does not exist (DNS NXDOMAIN)"
    )


def test_a_verdict_names_three_failures_and_counts_the_rest() -> None:
    reply = no_exchange("example.test", [NXDOMAIN] * 5)
    assert reply.text.endswith("(DNS NXDOMAIN); and 2 more")
    assert reply.text.count("does not exist") == 3


def test_a_verdict_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="at least one"):
        no_exchange("example.test", [])
