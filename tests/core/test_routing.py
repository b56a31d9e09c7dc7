"""Routing decisions and smart host parsing."""

from __future__ import annotations

import pytest

from spoolmail._core.routing import Route, RouteKind, Router, Target, parse_target
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


def test_remote_goes_to_the_smart_host() -> None:
    router = Router(local_domains=["example.com"], smart_host="[127.0.0.1]:2525")
    assert router.route("x@example.net") == Route(
        RouteKind.SMTP, (Target("127.0.0.1", 2525, literal=True),)
    )


def test_without_smart_host_remote_waits_with_a_reason() -> None:
    route = Router(local_domains=["example.com"]).route("x@example.net")
    assert route.kind is RouteKind.NONE
    assert route.reply is not None
    assert route.reply.code == 451
    assert "no smart host" in route.reply.text


def test_routes_group_by_destination() -> None:
    router = Router(local_domains=["example.com"], smart_host="relay:25")
    assert router.route("a@x.net") == router.route("b@y.net")
    assert router.route("a@x.net") != router.route("a@example.com")


def test_default_domain_is_the_first_local_domain() -> None:
    assert Router(local_domains=["b.test", "a.test"]).default_domain == "b.test"


def test_router_needs_a_local_domain() -> None:
    with pytest.raises(ConfigurationError, match="at least one local domain"):
        Router(local_domains=[])
