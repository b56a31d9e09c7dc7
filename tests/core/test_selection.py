"""``_core.selection``: what a sender or domain filter means, read and checked in one place."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolmail._core.address import AddressRole, parse_mailbox
from spoolmail._core.envelope import Envelope, Recipient, RecipientState
from spoolmail._core.selection import Selection, domain_filter, sender_filter
from spoolmail.exceptions import ConfigurationError

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def envelope(sender: str, *recipients: str | Recipient) -> Envelope:
    return Envelope(
        id="19ac9b2f1c0-000000000000",
        sender=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
        arrival=NOW,
        next_attempt=NOW,
    )


def pending(env: Envelope) -> tuple[Recipient, ...]:
    return tuple(env.pending)


@pytest.mark.parametrize(
    ("given_text", "read"),
    [
        ("", ""),
        ("<>", ""),
        ("  <>  ", ""),
        ("bob@example.com", "bob@example.com"),
        ("<Bob@EXAMPLE.com>", "Bob@example.com"),
        ("Bob <bob@example.com>", "bob@example.com"),
        ('"Bob, Jr." <bob@example.com> (the boss)', "bob@example.com"),
        ("@Example.COM.", "@example.com"),
        ("@[IPv6:2001:DB8::1]", "@[IPv6:2001:db8::1]"),
    ],
)
def test_a_sender_filter_is_read_as_the_intake_reads_a_sender(given_text: str, read: str) -> None:
    assert sender_filter(given_text) == read


@pytest.mark.parametrize(
    ("given_text", "read"),
    [
        ("example.com", "example.com"),
        (" @EXAMPLE.com. ", "example.com"),
        ("Bücher.example", "bücher.example"),
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("[IPv6:2001:DB8:0::1]", "[IPv6:2001:db8::1]"),
    ],
)
def test_a_domain_filter_is_canonical_as_a_recipients_domain(given_text: str, read: str) -> None:
    assert domain_filter(given_text) == read


@pytest.mark.parametrize(
    ("filter_", "text", "reason"),
    [
        (domain_filter, "exa mple", "contains ' '"),
        (domain_filter, "1.2.3.4", "write it as [1.2.3.4]"),
        (domain_filter, " . ", "it is empty"),
        (domain_filter, "@", "it is empty"),
        (domain_filter, "a..b", "empty label"),
        (sender_filter, "bob", "is not an address"),
        (sender_filter, "a@b.test, c@d.test", "2 addresses"),
        (sender_filter, "@exa mple", "contains ' '"),
        (sender_filter, "@", "it is empty"),
    ],
)
def test_a_filter_that_could_match_nothing_is_an_error_naming_why(
    filter_: object, text: str, reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(reason)):
        filter_(text)  # type: ignore[operator]


def test_domain_match_is_any_or_all() -> None:
    with pytest.raises(ConfigurationError, match="'any' or 'all', not 'every'"):
        Selection.of(None, "a.test", "every")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not an address"):  # ConfigurationError is one
        Selection.of("x y", None)


def test_a_selection_matches_sender_sender_domain_and_recipient_domain() -> None:
    alice = envelope("Alice@Example.com", "x@a.test", "y@b.test")
    dsn = envelope("", "x@a.test")
    assert Selection.of(None, None).everything
    assert Selection.of("Alice <alice@EXAMPLE.com>", None).matches(alice, pending)
    assert not Selection.of("alice@example.com", None).matches(dsn, pending)
    assert Selection.of("<>", None).matches(dsn, pending)
    assert not Selection.of("<>", None).matches(alice, pending)
    assert Selection.of("@EXAMPLE.com", None).matches(alice, pending)
    assert not Selection.of("@example.com", None).matches(dsn, pending)  # no domain at all
    assert Selection.of(None, "B.test.").matches(alice, pending)
    assert not Selection.of(None, "b.test", "all").matches(alice, pending)
    done = envelope("a@example.com", "x@a.test", Recipient("y@b.test", RecipientState.DELIVERED))
    assert Selection.of(None, "a.test", "all").matches(done, pending)
    assert not Selection.of(None, "b.test").matches(done, pending)  # delivered: not looked at


def test_a_sender_domain_is_compared_as_a_domain_not_case_folded() -> None:
    """``ß`` folds to ``ss`` but a domain is only lower-cased: the filter must not fold it."""
    sender = envelope("bob@straße.example", "x@a.test")
    assert Selection.of("@STRAßE.example", None).matches(sender, pending)
    assert not Selection.of("@strasse.example", None).matches(sender, pending)


# -- the sender filter, property-tested ---------------------------------------------------------

_ADDRESS_TEXT = st.lists(
    st.sampled_from([*'abcXYZ09.-_+@<>"() ,;:[]\\\tü', "IPv6:", "example.com", "192.0.2.1"]),
    max_size=25,
).map("".join)
_LOCAL = st.from_regex(
    r"[A-Za-z0-9+_-]{1,8}(\.[A-Za-z0-9+_-]{1,8}){0,2}", fullmatch=True
) | st.just('"john doe"')
_HOST = st.from_regex(r"[a-zA-Z0-9]{1,8}(\.[a-z0-9-]{1,8}){0,2}\.(test|example)", fullmatch=True)
_WRITTEN = st.builds(
    lambda local, host, form: form.format(f"{local}@{host}"),
    _LOCAL,
    _HOST | st.sampled_from(["[192.0.2.1]", "[IPv6:2001:db8::1]", "bücher.example"]),
    st.sampled_from(["{}", "<{}>", " {} ", "Bob <{}>", '"Bob, Jr." <{}>', "{} (comment)"]),
)


@settings(max_examples=400, deadline=None)
@given(text=_ADDRESS_TEXT | _WRITTEN)
def test_a_sender_filter_is_an_address_or_an_error(text: str) -> None:
    """Whatever is typed, the filter is an error or a sender that the intake could have
    stored, which it then leaves as it is: so it matches the messages from that sender."""
    try:
        sender, error = sender_filter(text), ""
    except ConfigurationError as exc:
        sender, error = "", str(exc)
    if error:
        assert text.strip() not in ("", "<>")  # a reason, and never for the null sender
        return
    if sender.startswith("@"):
        assert domain_filter(sender) == sender[1:]
        return
    stored = parse_mailbox(sender or "<>", default_domain=None, role=AddressRole.SENDER)
    assert stored == sender
    assert sender_filter(stored or "<>") == stored


@settings(max_examples=200, deadline=None)
@given(text=_ADDRESS_TEXT | _HOST)
def test_a_domain_filter_is_an_error_or_stays_as_it_is(text: str) -> None:
    try:
        domain, error = domain_filter(text), ""
    except ConfigurationError as exc:
        domain, error = "", str(exc)
    if error:
        assert "domain" in error or "empty" in error
        return
    assert domain_filter(domain) == domain
    assert envelope("", f"x@{domain}").recipients[0].domain == domain
