"""Routing decisions and smart host parsing."""

from __future__ import annotations

import re

import pytest

from spoolmail._core.routing import (
    Credentials,
    Hop,
    HopKind,
    Route,
    RouteKind,
    Router,
    SmartHostMode,
    Target,
    TlsPolicy,
    parse_target,
)
from spoolmail.exceptions import ConfigurationError


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("relay.example.net", Target("relay.example.net", 25)),
        ("Relay.Example.NET.:2525", Target("relay.example.net", 2525)),
        ("[192.0.2.1]", Target("192.0.2.1", 25, literal=True)),
        ("[192.0.2.1]:587", Target("192.0.2.1", 587, literal=True)),
        ("[::1]:2525", Target("::1", 2525, literal=True)),
        ("[IPv6:::1]", Target("::1", 25, literal=True)),
        ("127.0.0.1:2525", Target("127.0.0.1", 2525, literal=True)),
    ],
)
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "cannot be empty"),
        ("[192.0.2.1", "unclosed"),
        ("[relay.example]", "IP address"),
        ("[192.0.2.1]x", "':port'"),
        ("relay:0", "1-65535"),
        ("relay:99999", "1-65535"),
        ("relay:smtp", "1-65535"),
        ("::1:25", "[::1]:port"),
        ("bad host", "not a host name"),
        ("-bad.example", "not a host name"),
    ],
)
def test_bad_smart_hosts_are_named(text: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=None) as info:
        parse_target(text)
    assert fragment in str(info.value)


def test_local_and_alias_domains_go_to_drop_any_case() -> None:
    router = Router(local_domains=["Example.COM"], alias_domains=["example.org."])
    assert router.route("bob@EXAMPLE.com").kind is RouteKind.LOCAL
    assert router.route("x@example.org").kind is RouteKind.LOCAL
    assert router.default_domain == "example.com"


def test_without_smart_host_remote_goes_to_the_mx() -> None:
    route = Router(local_domains=["example.com"]).route("x@Example.NET")
    assert route == Route(RouteKind.SMTP, (Hop(HopKind.MX, "example.net", 25),))
    assert route.description == "SMTP via MX of example.net"


def test_smart_host_always_by_default() -> None:
    router = Router(local_domains=["example.com"], smart_host="[127.0.0.1]:2525")
    assert router.mode is SmartHostMode.ALWAYS
    assert router.route("x@example.net").hops == (Hop(HopKind.ADDRESS, "127.0.0.1", 2525),)
    named = Router(local_domains=["example.com"], smart_host="relay.example.net:587")
    assert named.route("x@example.net").hops == (Hop(HopKind.HOST, "relay.example.net", 587),)


def test_smart_host_as_fallback_comes_after_the_mx() -> None:
    router = Router(
        local_domains=["example.com"],
        smart_host="relay.test",
        smart_host_mode=SmartHostMode.FALLBACK,
        smtp_port=2525,
    )
    assert router.route("x@example.net").hops == (
        Hop(HopKind.MX, "example.net", 2525),
        Hop(HopKind.HOST, "relay.test", 25),
    )


def test_a_domain_route_overrides_smart_host_and_mx() -> None:
    router = Router(
        local_domains=["example.com"],
        smart_host="relay.test",
        routes={"Partner.Example": "[192.0.2.7]:2525"},
    )
    assert router.route("x@partner.example").hops == (Hop(HopKind.ADDRESS, "192.0.2.7", 2525),)
    assert router.route("x@other.example").hops == (Hop(HopKind.HOST, "relay.test"),)


def test_tls_policy_globally_and_per_domain() -> None:
    router = Router(
        local_domains=["example.com"],
        tls=TlsPolicy.NEVER,
        tls_domains={"bank.example": "required"},
    )
    assert router.route("x@bank.example").hops[0].tls is TlsPolicy.REQUIRED
    assert router.route("x@shop.example").hops[0].tls is TlsPolicy.NEVER


def test_smart_host_credentials_never_go_in_the_clear() -> None:
    secret = Credentials("user", "s3cret")
    router = Router(local_domains=["example.com"], smart_host="relay.test", smart_host_auth=secret)
    [hop] = router.route("x@example.net").hops
    assert (hop.tls, hop.credentials) == (TlsPolicy.ENCRYPT, secret)
    assert "s3cret" not in repr(hop)
    verified = Router(
        local_domains=["example.com"],
        smart_host="relay.test",
        smart_host_auth=secret,
        tls=TlsPolicy.REQUIRED,
    )
    assert verified.route("x@example.net").hops[0].tls is TlsPolicy.REQUIRED


def test_routes_group_by_destination() -> None:
    router = Router(local_domains=["example.com"], smart_host="relay:25")
    assert router.route("a@x.net") == router.route("b@y.net")
    assert router.route("a@x.net") != router.route("a@example.com")
    mx = Router(local_domains=["example.com"])
    assert mx.route("a@x.net") == mx.route("b@X.NET")
    assert mx.route("a@x.net") != mx.route("a@y.net")


def test_default_domain_is_the_first_local_domain() -> None:
    assert Router(local_domains=["b.test", "a.test"]).default_domain == "b.test"


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"local_domains": []}, "at least one local domain"),
        ({"smart_host_mode": SmartHostMode.FALLBACK}, "needs a smart_host"),
        ({"smtp_port": 0}, "smtp_port must be 1-65535"),
    ],
)
def test_bad_router_settings_are_named(settings: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        Router(**settings)  # type: ignore[arg-type]


def test_targets_read_well() -> None:
    assert (
        str(Target("127.0.0.11", 25, name="mx1.example.test")) == "mx1.example.test[127.0.0.11]:25"
    )
    assert str(Target("192.0.2.1", 587, literal=True)) == "[192.0.2.1]:587"


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"local_domains": ["*"]}, "local_domains: '*' is not a domain (wildcards"),
        ({"local_domains": ["example.com", "*.example.com"]}, "'*.example.com' is not a domain"),
        ({"alias_domains": ["*"]}, "alias_domains: '*' is not a domain"),
        ({"alias_domains": ["exa mple.org"]}, "alias_domains: 'exa mple.org' is not a domain"),
        ({"local_domains": ["example..com"]}, "'example..com' is not a domain"),
        ({"routes": {"*": "relay.test"}}, "routes: '*' is not a domain"),
        ({"routes": {"partner.example": "*"}}, "'*' is not a host name"),
        ({"routes": {"partner.example": Hop(HopKind.HOST, "*")}}, "'*' is not a host name"),
        (  # "$" matched before a final newline
            {"routes": {"partner.example": Hop(HopKind.HOST, "relay.test\n")}},
            "'relay.test\\n' is not a host name",
        ),
        ({"tls_domains": {"*": "required"}}, "tls_domains: '*' is not a domain"),
        ({"smart_host": "*"}, "'*' is not a host name"),
        ({"smart_host": "*.relay.test:25"}, "is not a host name"),
        ({"smart_host": Hop(HopKind.HOST, "*")}, "smart_host: '*' is not a host name"),
        ({"smart_host": Hop(HopKind.ADDRESS, "relay.test")}, "'relay.test' is not an IP address"),
        ({"smart_host": Hop(HopKind.MX, "*")}, "smart_host: '*' is not a domain"),
        ({"local_domains": [7]}, "local_domains: a domain is a string, not 7"),
    ],
)
def test_what_is_not_a_domain_is_refused(settings: dict[str, object], fragment: str) -> None:
    """A wildcard was taken as a domain named "*" and its mail sent to real MX hosts (issue 8)."""
    with pytest.raises(ConfigurationError) as info:
        Router(**settings)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_domains_are_kept_canonical() -> None:
    router = Router(
        local_domains=["Example.COM.", "[192.0.2.1]", "bücher.example"],
        routes={"Partner.Example.": "[192.0.2.7]"},
        smart_host=Hop(HopKind.HOST, "relay.test"),
    )
    assert router.local_domains == ("example.com", "[192.0.2.1]", "bücher.example")
    assert set(router.routes) == {"partner.example"}
    assert router.route("x@[192.0.2.1]").kind is RouteKind.LOCAL
    assert router.route("x@partner.example").hops == (Hop(HopKind.ADDRESS, "192.0.2.7"),)


def test_catch_all_routes_every_domain_to_drop() -> None:
    router = Router(local_domains=["example.com"], smart_host="relay.test", catch_all=True)
    for address in ("a@example.com", "b@elsewhere.example", "c@[192.0.2.1]", "d@xn--bcher-kva.ch"):
        assert router.route(address).kind is RouteKind.LOCAL, address
    assert Router(local_domains=["example.com"]).route("b@elsewhere.example").kind is (
        RouteKind.SMTP
    )


def test_a_domain_is_routed_once_and_the_answer_kept() -> None:
    router = Router(local_domains=["example.com"], smart_host="relay.test")
    first = router.route("a@Elsewhere.Example.")
    assert router.route("b@elsewhere.example") is first
    assert router == Router(local_domains=["example.com"], smart_host="relay.test")


def test_a_tls_policy_given_by_its_name_is_the_member() -> None:
    """``Router(tls="required")`` kept the string: the transport compares with ``is``, so the
    certificate went unchecked (``"required"`` is not ``TlsPolicy.REQUIRED``)."""
    router = Router(local_domains=["example.com"], tls="Required")
    assert router.tls is TlsPolicy.REQUIRED
    assert router.route("x@remote.test").hops[0].tls is TlsPolicy.REQUIRED
    assert Hop(HopKind.HOST, "relay.test", tls="encrypt").tls is TlsPolicy.ENCRYPT
    assert Target("192.0.2.1", tls=" never ").tls is TlsPolicy.NEVER
    mode = Router(
        local_domains=["example.com"], smart_host="relay.test", smart_host_mode="FALLBACK"
    )
    assert mode.smart_host_mode is SmartHostMode.FALLBACK


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (
            {"tls": "sometimes"},
            "tls: a TLS policy is one of 'never', 'opportunistic', 'encrypt', 'required', "
            "not 'sometimes'",
        ),
        ({"tls": True}, "tls: a TLS policy is one of"),
        (
            {"tls_domains": {"bank.example": "verify"}},
            "tls_domains['bank.example']: a TLS policy is one of",
        ),
        (
            {"smart_host": "relay.test", "smart_host_mode": "sometimes"},
            "smart_host_mode is one of 'none', 'always', 'fallback', not 'sometimes'",
        ),
        ({"catch_all": "no"}, "catch_all is True or False, not 'no'"),
    ],
)
def test_a_router_setting_that_is_no_choice_is_refused(given: dict[str, object], said: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(said)):
        Router(local_domains=["example.com"], **given)
    with pytest.raises(ConfigurationError, match="a TLS policy is one of"):
        Hop(HopKind.HOST, "relay.test", tls="verify")
