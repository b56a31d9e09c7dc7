"""Integration fixtures: the test DNS (dnsmasq), throwaway TLS certificates, and the MX port.

The DNS server (``tests/dnsserver.py``) puts the test domains' mail hosts at 127.0.0.x addresses
(``mx1.example.test`` at 127.0.0.11 and so on), and a router reaches every MX host on one port,
its ``smtp_port``: so every MX server of a test listens on that same port, each at its own
address (Linux routes the whole of 127.0.0.0/8 to the loopback interface). ``mx_port`` is a port
free on all of those addresses when the test starts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import pytest

from tests.dnsserver import RECORDS, dns_server_fixture
from tests.tlscerts import TestCertificates, make_certificates

__all__ = ["MAIL_HOST_ADDRESSES", "certificates", "dns_server_fixture", "mx_port"]

MAIL_HOST_ADDRESSES: tuple[str, ...] = tuple(
    sorted(
        {
            value
            for line in RECORDS
            if line.startswith("host-record=")
            for value in line.split(",")[1:]
            if ipaddress.ip_address(value).version == 4
            and ipaddress.ip_address(value) in ipaddress.ip_network("127.0.0.0/24")
        }
    )
)
"""The IPv4 addresses of the DNS records' single mail hosts (127.0.0.11, .12, .13, .21, .31);
the ``many.test`` blocks (127.0.1-3.x) are for resolver tests, not for servers."""

_PORT_TRIES = 20


def port_free_on(addresses: tuple[str, ...]) -> int:
    """A TCP port that nothing listens on at any of ``addresses`` right now."""
    for _ in range(_PORT_TRIES):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            first.bind((addresses[0], 0))
            port: int = first.getsockname()[1]
            try:
                for address in addresses[1:]:
                    probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    probe.bind((address, port))
            except OSError:
                continue  # taken at one of them: draw another
            return port
    raise RuntimeError(f"no port free on all of {', '.join(addresses)} in {_PORT_TRIES} tries")


@pytest.fixture
def mx_port() -> int:
    """The port this test's MX servers listen on, at every address in the test DNS."""
    return port_free_on(MAIL_HOST_ADDRESSES)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    """A throwaway CA and server certificates, made once per test session (tests/tlscerts.py)."""
    return make_certificates(tmp_path_factory.mktemp("tls"))
