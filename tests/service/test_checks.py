"""The start-up FCrDNS check against dnsmasq serving A and PTR records (``--ptr-record``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from spoolmail import MailService, Spool
from spoolmail._service.checks import check_host_name
from tests.dnsserver import DnsServer

RECORDS = (
    # Forward and reverse agree. 192.0.2.0/24 is TEST-NET: no packet goes there, only its name.
    "host-record=mail.fcrdns.test,192.0.2.25",
    "ptr-record=25.2.0.192.in-addr.arpa,mail.fcrdns.test",
    # The address points back elsewhere (ptr-record= wins over host-record='s own PTR).
    "host-record=other.fcrdns.test,192.0.2.26",
    "ptr-record=26.2.0.192.in-addr.arpa,cloud-vm-26.provider.test",
    # No PTR name: dnsmasq answers a PTR without a target as the root, ".".
    "host-record=noptr.fcrdns.test,192.0.2.27",
    "ptr-record=27.2.0.192.in-addr.arpa",
    "host-record=loop.fcrdns.test,127.0.0.44",
    "ptr-record=44.0.0.127.in-addr.arpa,loop.fcrdns.test",
)


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(RECORDS, directory=tmp_path_factory.mktemp("fcrdns")) as server:
        yield server


def test_forward_and_reverse_agree(dns_server: DnsServer) -> None:
    check = check_host_name("mail.fcrdns.test", dns_resolver=dns_server.resolver())
    assert check.ok, check.problems
    assert check.addresses == ("192.0.2.25",)
    assert dict(check.reverse) == {"192.0.2.25": ("mail.fcrdns.test",)}
    assert str(check) == (
        "mail.fcrdns.test: forward and reverse DNS agree (192.0.2.25 -> mail.fcrdns.test)"
    )


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("other.fcrdns.test", "192.0.2.26 points back to cloud-vm-26.provider.test, not to"),
        ("noptr.fcrdns.test", "192.0.2.27 has no PTR record"),
        ("nosuch.fcrdns.test", "does not resolve: host nosuch.fcrdns.test does not exist"),
        ("loop.fcrdns.test", "127.0.0.44 is not a public address"),
        ("localhost", "is not a fully qualified domain name"),
    ],
)
def test_what_receivers_would_frown_at(dns_server: DnsServer, name: str, problem: str) -> None:
    check = check_host_name(name, dns_resolver=dns_server.resolver())
    assert not check.ok
    assert any(problem in text for text in check.problems), check.problems


def test_the_sending_address_given(dns_server: DnsServer) -> None:
    check = check_host_name(
        "mail.fcrdns.test", dns_resolver=dns_server.resolver(), addresses=["192.0.2.26"]
    )
    assert any("192.0.2.26 is not one of its addresses" in p for p in check.problems)


def test_the_service_checks_its_ehlo_name_and_warns(
    dns_server: DnsServer, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    service = MailService(spool, dns_resolver=dns_server.resolver(), fqdn="other.fcrdns.test")
    try:
        assert service.helo_name == "other.fcrdns.test"
        with caplog.at_level(logging.WARNING, logger="spoolmail"):
            assert not service.check_host_name().ok
        assert "EHLO name other.fcrdns.test: 192.0.2.26 points back to" in caplog.text
    finally:
        service.close()
    named = MailService(spool, dns_resolver=dns_server.resolver(), helo_name="mail.fcrdns.test")
    try:
        assert named.check_host_name().ok
    finally:
        named.close()
