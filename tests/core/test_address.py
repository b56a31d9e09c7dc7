"""Addresses as writers wrote them: what is accepted, what it becomes, and why the rest is not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.address import (
    AddressRole,
    _NotAnAddress,
    _parse_item,
    _parse_one,
    _plain,
    _split_list,
    format_path,
    parse_address_list,
    parse_domain,
    parse_mailbox,
)
from spoolmail.exceptions import MessageError

DEFAULT = "default.example"

VALID = [
    ("a@b.example", "a@b.example"),
    ("  <a@b.example>\t", "a@b.example"),
    ('"Name, Jr." <a@b.example>', "a@b.example"),
    ("Name <a@b.example>", "a@b.example"),
    ("Ann Lee<a@b.example>", "a@b.example"),
    ("=?utf-8?B?SsO2cmcgTcO8bGxlcg==?= <joerg@example.de>", "joerg@example.de"),
    ('"=?utf-8?Q?J=C3=B6rg?=" <joerg@example.de>', "joerg@example.de"),
    ("Jörg Müller <joerg@example.de>", "joerg@example.de"),
    ("a@b.example (a comment (nested) \\) here)", "a@b.example"),
    ("(before) a@b.example", "a@b.example"),
    ('"quoted \\" name" <a@b.example>', "a@b.example"),
    # KB Q221384 writes `x-sender: Sender`: IIS completed it with its default domain.
    ("Sender", f"Sender@{DEFAULT}"),
    ("<postmaster>", f"postmaster@{DEFAULT}"),
    # The domain is lower-cased; the local part is case-sensitive (RFC 5321 section 2.4).
    ("John.Smith@Example.COM", "John.Smith@example.com"),
    ("user+tag@example.com", "user+tag@example.com"),
    ("!#$%&'*+-/=?^_`{|}~@example.com", "!#$%&'*+-/=?^_`{|}~@example.com"),
    ('"john doe"@example.com', '"john doe"@example.com'),
    ('"a\\"b"@example.com', '"a\\"b"@example.com'),
    ("user@[192.0.2.1]", "user@[192.0.2.1]"),
    ("user@[IPv6:2001:DB8:0::1]", "user@[IPv6:2001:db8::1]"),
    ("<user@[ipv6:::1]>", "user@[IPv6:::1]"),
    ("jörg@bücher.DE", "jörg@bücher.de"),
    ("用户@例子.广告", "用户@例子.广告"),
    ("a@xn--bcher-kva.example", "a@xn--bcher-kva.example"),
    ("a@例子。广告", "a@例子.广告"),
    ("a@localhost", "a@localhost"),
    ("a@b-c.d-e.example", "a@b-c.d-e.example"),
    ("a@123.example", "a@123.example"),
    # RFC 5321 section 4.1.2: a source route is accepted and ignored.
    ("<@relay1.example,@relay2.example:a@b.example>", "a@b.example"),
    ("x" * 64 + "@example.com", "x" * 64 + "@example.com"),
    (
        "a@" + ".".join(["b" * 63] * 3) + "." + "c" * 59,
        "a@" + ".".join(["b" * 63] * 3) + "." + "c" * 59,
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_mailbox(text: str, expected: str) -> None:
    assert parse_mailbox(text, default_domain=DEFAULT) == expected
    assert parse_mailbox(text, default_domain=DEFAULT, role=AddressRole.SENDER) == expected


INVALID = [
    ("", "it is empty"),
    ("   ", "it is empty"),
    ("a@b.example, c@d.example", "holds 2 addresses where one is expected"),
    ("Name, Jr. <a@b.example>", "an unquoted comma in a display name?"),
    ("a b@example.com", "white space"),
    ("John Smith", "white space"),
    ("a@b.example\r\nBcc: x@y.example", "control character '\\r'"),
    ("a\x00@b.example", "control character '\\x00'"),
    ("a\x7f@b.example", "control character"),
    ("a@exa mple.com", "contains ' '"),
    ("a@", "domain is empty"),
    ("@example.com", "local part is empty"),
    ('""@example.com', "local part is empty"),
    ("a@@example.com", "more than one '@'"),
    ("a@b@example.com", "more than one '@'"),
    (".a@example.com", "leading, trailing or double '.'"),
    ("a.@example.com", "leading, trailing or double '.'"),
    ("a..b@example.com", "leading, trailing or double '.'"),
    ("a(b@example.com", "without its closing ')'"),
    ("a<b>c@example.com", "text after '>'"),
    ("a>b@example.com", "'>' without '<'"),
    ("<a@example.com", "without its closing '>'"),
    ("<<a@example.com>>", "'<' inside '<...>'"),
    ("A <a@example.com> <b@example.com>", "two '<...>' parts"),
    ('"a@example.com', "without its closing '\"'"),
    ("a,b@example.com", "holds 2 addresses"),
    ("a\\b@example.com", "local part contains '\\\\'"),
    ("a@-example.com", "starts or ends with '-'"),
    ("a@example-.com", "starts or ends with '-'"),
    ("a@example..com", "empty label"),
    ("a@.example.com", "empty label"),
    ("a@example.com.", "ends with '.'"),
    ("a@exa_mple.com", "contains '_'"),
    ("a@" + "b" * 64 + ".com", "longer than 63 octets"),
    ("a@" + "ü" * 60 + ".com", "longer than 63 octets"),
    ("a@" + ".".join(["b" * 63] * 4), "the limit is 253"),
    ("x" * 65 + "@example.com", "longer than 64 octets"),
    ("ü" * 33 + "@example.com", "longer than 64 octets"),
    ("x" * 64 + "@" + ".".join(["b" * 60] * 4) + ".com", "longer than 254 octets"),
    ("a@192.0.2.1", "write it as [192.0.2.1]"),
    ("a@[192.0.2.256]", "not an IPv4 or IPv6 address literal"),
    ("a@[IPv6:2001:db8::g]", "not an IPv4 or IPv6 address literal"),
    ("a@[Tag:whatever]", "not an IPv4 or IPv6 address literal"),
    ("a@[192.0.2.1", "without its closing ']'"),
    ("a@[192.0.2.1]x", "does not end with ']'"),
    ("a@b\u200b.example", "contains '\\u200b'"),
    ("a\u00a0b@example.com", "invisible character"),
    ("<@relay.example a@b.example>", "has no ':'"),
    ("group: a@b.example; c@d.example", "holds 2 addresses"),
    ("undisclosed-recipients:;", "it is empty"),
    ("a:b:c@d.example", "':' that starts no group"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID)
def test_invalid_mailbox(text: str, fragment: str) -> None:
    with pytest.raises(MessageError) as recipient:
        parse_mailbox(text, default_domain=DEFAULT)
    assert fragment in str(recipient.value)
    assert recipient.value.status == "5.1.3"  # RFC 3463: bad destination mailbox address syntax
    with pytest.raises(MessageError) as sender:
        parse_mailbox(text, default_domain=DEFAULT, role=AddressRole.SENDER)
    assert sender.value.status == "5.1.7"  # RFC 3463: bad sender's mailbox address syntax


def test_null_path_only_for_senders() -> None:
    assert parse_mailbox("<>", default_domain=DEFAULT, role=AddressRole.SENDER) == ""
    assert parse_mailbox(" < > ", default_domain=DEFAULT, role=AddressRole.SENDER) == ""
    assert (
        parse_mailbox('"Mail Delivery" <>', default_domain=DEFAULT, role=AddressRole.SENDER) == ""
    )
    with pytest.raises(MessageError, match="null path") as info:
        parse_mailbox("<>", default_domain=DEFAULT)
    assert info.value.status == "5.1.3"
    with pytest.raises(MessageError, match="null path"):
        parse_address_list("<>", default_domain=DEFAULT, role=AddressRole.SENDER)


def test_no_default_domain_refuses_a_bare_local_part() -> None:
    with pytest.raises(MessageError, match="'Sender' has no domain"):
        parse_mailbox("Sender", default_domain=None)
    assert parse_mailbox("a@b.example", default_domain=None) == "a@b.example"


LISTS = [
    ("", []),
    ("  ", []),
    ("undisclosed-recipients:;", []),
    ("undisclosed-recipients:", []),
    ("a@x.example", ["a@x.example"]),
    ("a@x.example, b@y.example", ["a@x.example", "b@y.example"]),
    ('"Lee, Ann" <a@x.example>, Bob <b@y.example>', ["a@x.example", "b@y.example"]),
    ("a@x.example,,b@y.example,", ["a@x.example", "b@y.example"]),  # RFC 5322 obs-addr-list
    ("a@x.example; b@y.example", ["a@x.example", "b@y.example"]),  # Outlook / CDO style
    ("team: a@x.example, b@y.example;, c@z.example", ["a@x.example", "b@y.example", "c@z.example"]),
    ("team: a@x.example, b@y.example; c@z.example", ["a@x.example", "b@y.example", "c@z.example"]),
    ("a@x.example (A, comma), b@y.example", ["a@x.example", "b@y.example"]),
    ("<a@[IPv6:::1]>, b@[192.0.2.1]", ["a@[IPv6:::1]", "b@[192.0.2.1]"]),
    ("a@x.example, a@x.example", ["a@x.example", "a@x.example"]),
    ("Sender", [f"Sender@{DEFAULT}"]),
    ("<@r1.example,@r2.example:a@x.example>, b@y.example", ["a@x.example", "b@y.example"]),
]


@pytest.mark.parametrize(("text", "expected"), LISTS)
def test_address_list(text: str, expected: list[str]) -> None:
    assert parse_address_list(text, default_domain=DEFAULT) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # In a list a bare word is far more likely half of an unquoted display name.
        ("Lee, Ann <a@x.example>", "'Lee' has no domain"),
        ("a@x.example, b c@y.example", "white space"),
        ("a@x.example, <>", "null path"),
        ("one: two: a@x.example;;", "':' that starts no group"),
        ("a@x.example, (unclosed", "without its closing ')'"),
    ],
)
def test_invalid_address_list(text: str, fragment: str) -> None:
    with pytest.raises(MessageError, match="is not an address list") as info:
        parse_address_list(text, default_domain=DEFAULT)
    assert fragment in str(info.value)
    assert info.value.status == "5.1.3"


def test_list_status_follows_the_role() -> None:
    with pytest.raises(MessageError) as info:
        parse_address_list("a b", default_domain=DEFAULT, role=AddressRole.SENDER)
    assert info.value.status == "5.1.7"


def test_long_values_are_quoted_briefly() -> None:
    with pytest.raises(MessageError) as info:
        parse_address_list("a@x.example, " * 10_000 + "@", default_domain=DEFAULT)
    assert len(str(info.value)) < 300


def test_format_path() -> None:
    assert format_path("a@b.example") == "<a@b.example>"
    assert format_path("") == "<>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("bücher.example", "bücher.example"),
        ("WIN-A1234567890", "win-a1234567890"),
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("[IPv6:0:0::1]", "[IPv6:::1]"),
        (".".join(["b" * 63] * 3) + "." + "c" * 61, ".".join(["b" * 63] * 3) + "." + "c" * 61),
    ],
)
def test_parse_domain(text: str, expected: str) -> None:
    assert parse_domain(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "-a.example", "a..example", "a.example.", "1.2.3.4"])
def test_parse_domain_refuses(text: str) -> None:
    with pytest.raises(MessageError, match="is not a domain"):
        parse_domain(text)


def _errors(text: str, role: AddressRole) -> list[MessageError]:
    errors = []
    for parser in (parse_mailbox, parse_address_list):
        try:
            parser(text, default_domain=DEFAULT, role=role)
        except MessageError as exc:
            errors.append(exc)
    return errors


@given(st.text(max_size=200), st.sampled_from(AddressRole))
def test_parsers_raise_only_message_error(text: str, role: AddressRole) -> None:
    for error in _errors(text, role):
        assert error.status == role.status
        assert "\n" not in str(error)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
TOP = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)
DOMAIN = st.builds(lambda labels, top: ".".join([*labels, top]), st.lists(LABEL, max_size=3), TOP)
ATOM = st.text(alphabet="abcXYZ0123456789!#$%&'*+-/=?^_`{|}~äß用", min_size=1, max_size=8)
LOCAL = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)
NAME = st.text(alphabet='abc XYZ,.;:<>@()\\"äö', max_size=20).map(
    lambda name: '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
)


@given(ADDRESS, NAME)
def test_canonical_addresses_come_back_unchanged(address: str, name: str) -> None:
    assert parse_mailbox(address, default_domain=DEFAULT) == address
    assert parse_mailbox(format_path(address), default_domain=None) == address
    assert parse_mailbox(f"{name} {format_path(address)}", default_domain=None) == address


@given(st.lists(st.tuples(NAME, ADDRESS), max_size=6))
def test_lists_of_named_addresses(entries: list[tuple[str, str]]) -> None:
    text = ", ".join(f"{name} <{address}>" for name, address in entries)
    assert parse_address_list(text, default_domain=DEFAULT) == [address for _, address in entries]


# A plain address is read by one regular expression; the scanner must read it the same way.
PLAINISH = st.from_regex(
    r"\A[ \t]{0,2}<?[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,70}@[A-Za-z0-9.-]{1,70}>?[ \t]{0,2}\Z"
) | st.text(alphabet="aZ09.-@<>_ \t", max_size=80)


@given(PLAINISH, st.sampled_from(AddressRole), st.none() | st.just(DEFAULT))
def test_the_plain_address_shortcut_reads_as_the_scanner_does(
    text: str, role: AddressRole, default: str | None
) -> None:
    plain = _plain(text)
    allow_null = role is AddressRole.SENDER
    try:
        one: str | None = _parse_one(text, default_domain=default, allow_null=allow_null)
    except _NotAnAddress:
        one = None
    try:
        items = _split_list(text)
        completion = default if len(items) == 1 else None
        many: list[str] | None = [
            _parse_item(item, default_domain=completion, allow_null=False) for item in items
        ]
    except _NotAnAddress:
        many = None
    if plain is not None:
        assert one == plain
        assert many == [plain]
    if one is not None:
        assert parse_mailbox(text, default_domain=default, role=role) == one
    if many is not None:
        assert parse_address_list(text, default_domain=default, role=role) == many


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("orders@Example.COM", "orders@example.com"),
        (" <a.b+c@x-y.example>\t", "a.b+c@x-y.example"),
        ("<a@b.example", None),
        ("a@b.example>", None),
        ("a@1.2.3.4", None),
        ("a@-b.example", None),
        ("a..b@example.com", None),
        (f"{'l' * 65}@example.com", None),
        (f"a@{'d' * 64}.example", None),
        ("Name <a@b.example>", None),
    ],
)
def test_the_plain_address_shortcut_takes_only_plain_ones(text: str, plain: str | None) -> None:
    assert _plain(text) == plain


@pytest.mark.parametrize("text", ['"\udcff"@x.test', '<"a\udcff b"@x.test>', '"\u200b"@x.test'])
def test_a_quoted_local_part_with_an_invisible_character_is_no_address(text: str) -> None:
    """A lone surrogate is a byte that was not UTF-8 (read with surrogateescape): a
    MessageError saying so, not the UnicodeEncodeError of measuring the local part."""
    with pytest.raises(MessageError, match="quoted local part contains the invisible"):
        parse_mailbox(text, default_domain=None)
