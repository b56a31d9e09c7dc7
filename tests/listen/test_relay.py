"""The Connection and Relay decisions as a table: no sockets, values in and out (a Listener is
made, never started)."""

from __future__ import annotations

import re

import pytest

from spoolmail import Listener, Router, Spool
from spoolmail._core.relay import AccessPolicy, RcptVerdict, client_address
from spoolmail.exceptions import ConfigurationError

LAN = AccessPolicy(relay_networks=["192.0.2.0/24", "2001:db8::/32"])


@pytest.mark.parametrize(
    ("local", "client", "authenticated", "verdict"),
    [
        # Local and alias domains: from anyone.
        (True, "203.0.113.9", False, RcptVerdict.LOCAL),
        (True, "192.0.2.7", False, RcptVerdict.LOCAL),
        (True, "203.0.113.9", True, RcptVerdict.LOCAL),
        # Other domains: the relay networks, authenticated sessions, nobody else.
        (False, "192.0.2.7", False, RcptVerdict.RELAY),
        (False, "2001:db8::7", False, RcptVerdict.RELAY),
        (False, "::ffff:192.0.2.7", False, RcptVerdict.RELAY),  # a dual-stack socket's view
        (False, "203.0.113.9", True, RcptVerdict.RELAY),
        (False, "203.0.113.9", False, RcptVerdict.REFUSED),
        (False, "192.0.3.1", False, RcptVerdict.REFUSED),  # just outside the /24
        (False, "2001:db9::1", False, RcptVerdict.REFUSED),
        (False, "127.0.0.1", False, RcptVerdict.REFUSED),  # loopback is not trusted by default
    ],
)
def test_relay_verdict(local: bool, client: str, authenticated: bool, verdict: RcptVerdict) -> None:
    assert (
        LAN.rcpt_verdict(local=local, client=client_address(client), authenticated=authenticated)
        is verdict
    )


def test_by_default_nobody_relays() -> None:
    policy = AccessPolicy()
    for client in ("127.0.0.1", "::1", "10.0.0.1"):
        address = client_address(client)
        assert policy.rcpt_verdict(local=False, client=address, authenticated=False) is (
            RcptVerdict.REFUSED
        )
        assert policy.admits(address)


@pytest.mark.parametrize(
    ("allowed", "denied", "client", "admitted"),
    [
        ((), (), "203.0.113.9", True),
        (("192.0.2.0/24",), (), "192.0.2.7", True),
        (("192.0.2.0/24",), (), "203.0.113.9", False),  # IIS "Only the list below"
        ((), ("203.0.113.0/24",), "203.0.113.9", False),  # IIS "All except the list below"
        ((), ("203.0.113.0/24",), "192.0.2.7", True),
        (("192.0.2.0/24",), ("192.0.2.7",), "192.0.2.7", False),  # a deny wins
        (("192.0.2.0/24",), ("192.0.2.7",), "192.0.2.8", True),
        (("::1",), (), "::1", True),
        (("::1",), (), "127.0.0.1", False),
        (("::ffff:192.0.2.0/120",), (), "192.0.2.7", True),  # mapped network, plain client
        ((), ("192.0.2.7",), "::ffff:192.0.2.7", False),  # plain network, mapped client
    ],
)
def test_connection_control(
    allowed: tuple[str, ...], denied: tuple[str, ...], client: str, admitted: bool
) -> None:
    policy = AccessPolicy(allowed_clients=allowed, denied_clients=denied)
    assert policy.admits(client_address(client)) is admitted


def test_a_zone_is_dropped() -> None:
    assert str(client_address("fe80::1%eth0")) == "fe80::1"


@pytest.mark.parametrize("bad", ["*", "192.0.2.0/33", "example.com", "", "10.0.0.0/8,"])
def test_a_network_that_is_not_one_names_the_setting(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="relay_networks"):
        AccessPolicy(relay_networks=[bad])


def test_a_listener_takes_one_string_as_one_network() -> None:
    """``relay_networks="10.0.0.0/8"`` was read character by character ("'1' is not an address
    or a network"); one string is one network, as ``AccessPolicy`` and ``Router`` read it."""
    with Spool("mem://") as spool:
        listener = Listener(
            spool,
            addresses=["127.0.0.1:0"],
            router=Router(local_domains=["example.com"]),
            fqdn="mail.example.com",
            relay_networks="10.0.0.0/8",
            denied_clients="192.0.2.66",
        )
        assert listener.relay_networks == ("10.0.0.0/8",)
        with pytest.raises(TypeError, match=re.escape("addresses is a list")):
            Listener(spool, addresses="127.0.0.1:0", router=Router(), fqdn="mail.example.com")
