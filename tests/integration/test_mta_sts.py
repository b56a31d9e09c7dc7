"""MTA-STS through the whole service (RFC 8461): Pickup → ``run_once`` → dnsmasq (MX, the
``_mta-sts`` TXT record, ``mta-sts.<domain>``) → the policy over HTTPS on 127.0.0.1
(``tests/policyserver.py``) → aiosmtpd with STARTTLS at the MX address. The MX host is
``mx1.example.test`` (127.0.0.11), whose certificate the test CA of ``tests/tlscerts.py`` signs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._transport.dns import DnsResolver
from spoolmail._transport.mtasts import HttpsPolicyFetcher
from spoolmail.testing import FakeClock
from tests.dnsserver import DnsServer
from tests.integration import mxtls
from tests.integration.mxtls import FQDN, MX1, tls_mx, transport
from tests.policyserver import (
    POLICY_HOSTS,
    HttpsCertificates,
    PolicyServer,
    make_https_certificates,
    policy,
)
from tests.smtpservers import SmtpServer
from tests.tlscerts import TestCertificates

pytestmark = pytest.mark.integration

DOMAINS = [host.removeprefix("mta-sts.") for host in POLICY_HOSTS]
RECORDS = (
    "host-record=mx1.example.test,127.0.0.11",
    *(f"mx-host={domain},mx1.example.test,10" for domain in DOMAINS),
    *(f"host-record=mta-sts.{domain},127.0.0.1" for domain in DOMAINS),
    *(f'txt-record=_mta-sts.{domain},"v=STSv1; id=1"' for domain in DOMAINS),
)


@pytest.fixture(scope="module")
def sts_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(RECORDS, directory=tmp_path_factory.mktemp("stsdns")) as server:
        yield server


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> HttpsCertificates:
    return make_https_certificates(tmp_path_factory.mktemp("stscerts"))


@pytest.fixture
def policies(https: HttpsCertificates) -> Iterator[PolicyServer]:
    with PolicyServer(https) as server:
        server.answers = {
            "mta-sts.sts.test": policy("enforce", "mx1.example.test"),
            "mta-sts.stsbad.test": policy("enforce", "mx.other.test", "*.other.test"),
            "mta-sts.ststesting.test": policy("testing", "mx.other.test"),
            "mta-sts.stscert.test": policy("enforce", "*.example.test"),
        }
        yield server


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


@pytest.fixture
def make_service(
    spool: Spool,
    clock: FakeClock,
    sts_dns: DnsServer,
    https: HttpsCertificates,
    policies: PolicyServer,
    certificates: TestCertificates,
    mx_port: int,
) -> Iterator[Any]:
    made: list[MailService] = []

    def make(**options: Any) -> MailService:
        dns = sts_dns.resolver()
        fetcher = HttpsPolicyFetcher(
            DnsResolver(resolver=dns), tls_context=https.client_context(), port=policies.port
        )
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smtp_port=mx_port),
            dns_resolver=dns,
            transport=transport(certificates),
            clock=clock,
            fqdn=FQDN,
            mta_sts_fetcher=fetcher,
            **options,
        )
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture
def mx(certificates: TestCertificates, mx_port: int) -> Iterator[SmtpServer]:
    with tls_mx(certificates, mx_port) as server:
        yield server


def submit(spool: Spool, *recipients: str) -> None:
    mxtls.submit(spool, *recipients, subject="STS")


def test_enforce_delivers_over_verified_tls_to_a_listed_mx(
    spool: Spool, make_service: Any, mx: SmtpServer, policies: PolicyServer
) -> None:
    service = make_service()
    submit(spool, "bob@sts.test", "tempfail@sts.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@sts.test"),)
    [received] = mx.messages
    assert received.tls
    transcript = spool.transcript(queue_id)
    assert "MTA-STS sts.test: mode enforce, mx mx1.example.test (id 1" in transcript
    assert "certificate verified for mx1.example.test" in transcript
    assert policies.requests == ["mta-sts.sts.test"]


def test_enforce_defers_when_no_mx_is_listed(
    spool: Spool, make_service: Any, mx: SmtpServer
) -> None:
    service = make_service()
    submit(spool, "bob@stsbad.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "bob@stsbad.test"),)
    assert mx.connections == 0
    [recipient] = spool.queued_message(queue_id).envelope.recipients
    assert recipient.reply is not None
    assert (recipient.reply.code, recipient.reply.status) == (451, "4.7.0")
    assert "lists none of its MX hosts (mx1.example.test)" in recipient.reply.text
    assert "mx1.example.test is not in the policy" in spool.transcript(queue_id)


def test_enforce_defers_when_the_certificate_does_not_verify(
    spool: Spool, make_service: Any, certificates: TestCertificates, mx_port: int
) -> None:
    rogue = certificates.server_context(rogue=True)
    with SmtpServer(host=MX1, port=mx_port, tls_context=rogue) as server:
        service = make_service()
        submit(spool, "bob@stscert.test")
        report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "bob@stscert.test"),)
    assert server.messages == []
    [recipient] = spool.queued_message(queue_id).envelope.recipients
    assert recipient.reply is not None
    assert recipient.reply.status == "4.7.5"
    assert "certificate verify failed" in recipient.reply.text


def test_testing_mode_delivers_and_says_what_enforce_would_refuse(
    spool: Spool, make_service: Any, mx: SmtpServer
) -> None:
    service = make_service()
    submit(spool, "bob@ststesting.test", "tempfail@ststesting.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@ststesting.test"),)
    transcript = spool.transcript(queue_id)
    assert "mx1.example.test is not in the policy (mx.other.test); enforce would refuse it" in (
        transcript
    )


def test_mta_sts_can_be_switched_off(
    spool: Spool, make_service: Any, mx: SmtpServer, policies: PolicyServer
) -> None:
    service = make_service(mta_sts=False)
    submit(spool, "bob@stsbad.test")
    report = service.run_once()
    assert len(report.delivered) == 1
    assert policies.requests == []
    with contextlib.suppress(Exception):
        service.close()
