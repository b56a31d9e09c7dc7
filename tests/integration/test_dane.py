"""DANE through the whole service (RFC 7672): Pickup → ``run_once`` → dnsmasq (the MX record,
``mx1.example.test`` and a TLSA record at ``_<port>._tcp.mx1.example.test``) → aiosmtpd with
STARTTLS and the test certificate of ``tests/tlscerts.py`` at 127.0.0.11.

dnsmasq serves no DNSSEC, so its answers never carry the AD bit. The tests say so plainly:

- with the real answers (no AD bit) DANE does not apply, whatever the TLSA records say: a
  record that matches nothing does not stop the mail (opportunistic TLS as without DANE);
- :class:`Validated` stands in for a validating resolver: a ``DnsResolver`` whose lookups are
  dnsmasq's real answers with ``authenticated=True`` set, the one thing a validating resolver
  would add. Through it a matching record delivers, a record that matches nothing defers with
  ``4.7.5``, and unusable records require TLS.

Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import dns.flags
import dns.resolver
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spoolmail import MailService, Router, Spool
from spoolmail._core.dane import subject_public_key_info
from spoolmail._core.transcript import Transcript
from spoolmail._transport.dns import DnsResolver, Lookup
from spoolmail.exceptions import ConfigurationError
from spoolmail.testing import FakeClock, StaticResolver
from tests.dnsserver import DnsServer
from tests.integration import mxtls
from tests.integration.mxtls import FQDN, MX1, tls_mx, transport
from tests.smtpservers import SmtpServer
from tests.tlscerts import TestCertificates

pytestmark = pytest.mark.integration

DOMAIN = "dane.test"


class Validated(DnsResolver):
    """dnsmasq's real answers with the AD bit set: the seam for a validating resolver."""

    def lookup(
        self, name: str, rdtype: str, transcript: Transcript, *, deadline: float | None = None
    ) -> Lookup:
        found = super().lookup(name, rdtype, transcript)
        return attrs.evolve(found, authenticated=True) if found.records else found


def spki_sha256(certificates: TestCertificates) -> str:
    certificate = x509.load_pem_x509_certificate(certificates.server_certificate.read_bytes())
    der = certificate.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(subject_public_key_info(der)).hexdigest()


def tlsa_line(port: int, usage: int, selector: int, matching: int, data: str) -> str:
    """dnsmasq's ``dns-rr`` for a TLSA record (type 52, RFC 6698 section 2.1): the wire rdata."""
    return f"dns-rr=_{port}._tcp.mx1.example.test,52,{usage:02x}{selector:02x}{matching:02x}{data}"


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


@pytest.fixture
def make_service(
    spool: Spool,
    clock: FakeClock,
    certificates: TestCertificates,
    mx_port: int,
    tmp_path: Path,
) -> Iterator[Any]:
    made: list[MailService] = []
    servers: list[DnsServer] = []

    def make(*tlsa: str, validated: bool, **options: Any) -> MailService:
        records = (
            "host-record=mx1.example.test,127.0.0.11",
            f"mx-host={DOMAIN},mx1.example.test,10",
            *tlsa,
        )
        directory = tmp_path / f"dns{len(servers)}"
        directory.mkdir()
        server = DnsServer(records, directory=directory)
        server.start()
        servers.append(server)
        resolver = server.resolver()
        resolver.flags = dns.flags.RD | dns.flags.AD  # as dane=True asks: dnsmasq still has none
        names = (Validated if validated else DnsResolver)(resolver=resolver, local_names=[FQDN])
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smtp_port=mx_port),
            host_resolver=names,
            transport=transport(certificates),
            clock=clock,
            fqdn=FQDN,
            mta_sts=False,
            dane=True,
            **options,
        )
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()
    for server in servers:
        server.stop()


@pytest.fixture
def mx(certificates: TestCertificates, mx_port: int) -> Iterator[SmtpServer]:
    with tls_mx(certificates, mx_port) as server:
        yield server


def submit(spool: Spool, *recipients: str) -> None:
    mxtls.submit(spool, *recipients, subject="DANE")


def test_without_the_ad_bit_dane_does_not_apply(
    spool: Spool, make_service: Any, mx: SmtpServer, mx_port: int
) -> None:
    """Real dnsmasq, no AD bit: a TLSA record that matches nothing changes nothing."""
    service = make_service(tlsa_line(mx_port, 3, 1, 1, "00" * 32), validated=False)
    submit(spool, "bob@dane.test", "tempfail@dane.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@dane.test"),)
    transcript = spool.transcript(queue_id)
    assert "MX records of dane.test are not DNSSEC-validated (no AD bit): DANE does not " in (
        transcript
    )
    assert "certificate not verified (opportunistic policy)" in transcript


def test_a_matching_record_delivers(
    spool: Spool,
    make_service: Any,
    mx: SmtpServer,
    mx_port: int,
    certificates: TestCertificates,
) -> None:
    digest = spki_sha256(certificates)
    service = make_service(tlsa_line(mx_port, 3, 1, 1, digest), validated=True)
    submit(spool, "bob@dane.test", "tempfail@dane.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@dane.test"),)
    [received] = mx.messages
    assert received.tls
    transcript = spool.transcript(queue_id)
    assert f"TLSA _{mx_port}._tcp.mx1.example.test: 3 1 1 {digest}" in transcript
    assert f"certificate matched TLSA 3 1 1 {digest} at _{mx_port}._tcp.mx1.example.test" in (
        transcript
    )


def test_a_record_that_matches_nothing_defers(
    spool: Spool, make_service: Any, mx: SmtpServer, mx_port: int
) -> None:
    service = make_service(tlsa_line(mx_port, 3, 1, 1, "00" * 32), validated=True)
    submit(spool, "bob@dane.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "bob@dane.test"),)
    assert mx.messages == []
    [recipient] = spool.queued_message(queue_id).envelope.recipients
    assert recipient.reply is not None
    assert (recipient.reply.code, recipient.reply.status) == (451, "4.7.5")
    assert (
        f"TLSA records for _{mx_port}._tcp.mx1.example.test: none matched the certificate"
        in recipient.reply.text
    )


def test_unusable_records_require_tls(spool: Spool, make_service: Any, mx_port: int) -> None:
    """PKIX-EE(1) is unusable for SMTP: TLS is still required (RFC 7672 section 2.2)."""
    service = make_service(tlsa_line(mx_port, 1, 1, 1, "00" * 32), validated=True)
    with SmtpServer(host=MX1, port=mx_port) as plain:  # no STARTTLS
        submit(spool, "bob@dane.test")
        report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "bob@dane.test"),)
    assert plain.messages == []
    [recipient] = spool.queued_message(queue_id).envelope.recipients
    assert recipient.reply is not None
    assert recipient.reply.status == "4.7.4"
    assert "does not offer STARTTLS" in recipient.reply.text


def test_unusable_records_take_any_certificate(
    spool: Spool, make_service: Any, mx_port: int, certificates: TestCertificates
) -> None:
    """TLS without authentication: even a certificate no CA vouches for."""
    service = make_service(tlsa_line(mx_port, 1, 1, 1, "00" * 32), validated=True)
    rogue = certificates.server_context(rogue=True)
    with SmtpServer(host=MX1, port=mx_port, tls_context=rogue) as server:
        submit(spool, "bob@dane.test", "tempfail@dane.test")
        report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@dane.test"),)
    assert [m.tls for m in server.messages] == [True]
    transcript = spool.transcript(queue_id)
    assert "PKIX-EE(1) is not used for SMTP (RFC 7672 section 3.1.3)" in transcript
    assert "TLS required to mx1.example.test, not authenticated" in transcript
    assert "certificate not verified (encrypt policy)" in transcript


def test_dane_needs_the_services_own_dns(spool: Spool) -> None:
    with pytest.raises(ConfigurationError, match="dane=True needs the service's own DNS"):
        MailService(spool, host_resolver=StaticResolver(), dane=True)


def test_dane_sets_the_ad_flag_on_queries(spool: Spool) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    service = MailService(spool, dns_resolver=resolver, dane=True, fqdn=FQDN)
    try:
        assert resolver.flags is not None
        assert resolver.flags & dns.flags.AD
        assert resolver.flags & dns.flags.RD
    finally:
        service.close()
