"""The DNS answer cache as an operator sees it: ``MailService(dns_cache_size=...)`` sizes the
cache of the resolver the service builds (0: none), and ``stats()`` and the Prometheus metrics
count its hits, its misses and the answers it keeps.

A real service delivers to aiosmtpd on 127.0.0.1, looking its MX up in a real DNS server on
127.0.0.1 (:class:`~tests.transport.test_hostile_dns.ScriptedDns`), which counts every question
it gets: a miss is a question the server got, a hit one it did not. MTA-STS is off, so the
questions are the hop's alone: the MX, then the exchanger's AAAA and A.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import prometheus_client
import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._transport.dns import CACHE_SIZE
from spoolmail.exceptions import ConfigurationError
from spoolmail.metrics import MetricsCollector
from spoolmail.testing import FakeClock
from tests.dnsserver import local_resolver
from tests.messages import message
from tests.smtpservers import SmtpServer, smtp_server
from tests.transport.test_hostile_dns import LIFETIME, TIMEOUT, ScriptedDns

pytestmark = pytest.mark.integration

SOA = "ns.test. hostmaster.test. 1 3600 600 86400 60"
HOP_QUESTIONS = 3
"""The MX of ok.test, then mx.ok.test's AAAA (NODATA, kept for its SOA's minimum) and A."""


def script(query: dns.message.Message, transport: str) -> list[bytes]:
    """ok.test's MX is mx.ok.test, at 127.0.0.1 (no IPv6 address); nothing else exists."""
    question = query.question[0]
    name = question.name.to_text().rstrip(".").lower()
    response = dns.message.make_response(query)
    if name == "ok.test" and question.rdtype == dns.rdatatype.MX:
        response.answer.append(
            dns.rrset.from_text(question.name, 300, "IN", "MX", "10 mx.ok.test.")
        )
    elif name == "mx.ok.test" and question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", "127.0.0.1"))
    elif name not in ("ok.test", "mx.ok.test"):
        response.set_rcode(dns.rcode.NXDOMAIN)
    if not response.answer:
        response.authority.append(dns.rrset.from_text("test.", 600, "IN", "SOA", SOA))
    return [response.to_wire()]


@pytest.fixture
def dns_server() -> Iterator[ScriptedDns]:
    with ScriptedDns(script) as server:
        yield server


@pytest.fixture
def mx() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def make_service(
    spool: Spool, clock: FakeClock, dns_server: ScriptedDns, mx: SmtpServer
) -> Iterator[Any]:
    """``make_service(**options)``: a service asking ``dns_server`` through the resolver it
    builds itself (``dns_resolver``), delivering to ``mx``; closed at the end."""
    made: list[MailService] = []

    def make(**options: Any) -> MailService:
        options.setdefault(
            "dns_resolver", local_resolver(dns_server.port, timeout=TIMEOUT, lifetime=LIFETIME)
        )
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smtp_port=mx.port),
            clock=clock,
            fqdn="mail.example.com",
            mta_sts=False,
            **options,
        )
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


def deliver(spool: Spool, service: MailService, to: str) -> None:
    spool.submit(message(to))
    report = service.run_once()
    assert [address for _, address in report.delivered] == [to], report


def counts(service: MailService) -> tuple[int, int, int]:
    stats = service.stats(gauges=False)
    return stats.dns_cache_hits, stats.dns_cache_misses, stats.dns_cache_entries


def test_the_stats_count_the_caches_misses_hits_and_entries(
    spool: Spool, make_service: Any, dns_server: ScriptedDns, mx: SmtpServer
) -> None:
    service = make_service()
    assert counts(service) == (0, 0, 0)
    deliver(spool, service, "x@ok.test")
    # Every question asked is a miss, and each answer is kept.
    assert len(dns_server.queries) == HOP_QUESTIONS
    assert counts(service) == (0, HOP_QUESTIONS, HOP_QUESTIONS)
    deliver(spool, service, "y@ok.test")
    deliver(spool, service, "z@ok.test")
    # The next two deliveries asked nothing: all their lookups were hits.
    assert len(dns_server.queries) == HOP_QUESTIONS
    assert counts(service) == (2 * HOP_QUESTIONS, HOP_QUESTIONS, HOP_QUESTIONS)
    assert service.stats() == service.stats(gauges=False)  # counted alike with the gauges
    assert len(mx.messages) == 3


def test_a_cache_size_of_0_keeps_nothing(
    spool: Spool, make_service: Any, dns_server: ScriptedDns
) -> None:
    service = make_service(dns_cache_size=0)
    deliver(spool, service, "x@ok.test")
    deliver(spool, service, "y@ok.test")
    assert len(dns_server.queries) == 2 * HOP_QUESTIONS  # every lookup asked the server again
    assert counts(service) == (0, 0, 0)


def test_the_cache_size_bounds_the_entries(
    spool: Spool, make_service: Any, dns_server: ScriptedDns
) -> None:
    service = make_service(dns_cache_size=2)
    deliver(spool, service, "x@ok.test")
    assert counts(service) == (0, HOP_QUESTIONS, 2)  # the first answer dropped for the third
    deliver(spool, service, "y@ok.test")
    # The MX was dropped and asked again, which dropped the AAAA kept; the A was still kept.
    hits, misses, entries = counts(service)
    assert (hits + misses, entries) == (2 * HOP_QUESTIONS, 2)
    assert misses == len(dns_server.queries) > HOP_QUESTIONS


def test_a_host_resolver_of_the_callers_keeps_its_own_cache(
    spool: Spool, make_service: Any, dns_server: ScriptedDns
) -> None:
    """``dns_cache_size`` sizes only the resolver the service builds; the stats still count
    the cache of a ``DnsResolver`` given as ``host_resolver``."""
    service = make_service(host_resolver=dns_server.resolver(), dns_cache_size=0)
    deliver(spool, service, "x@ok.test")
    deliver(spool, service, "y@ok.test")
    assert len(dns_server.queries) == HOP_QUESTIONS
    assert counts(service) == (HOP_QUESTIONS, HOP_QUESTIONS, HOP_QUESTIONS)


def test_the_metrics_show_the_cache(spool: Spool, make_service: Any) -> None:
    service = make_service()
    deliver(spool, service, "x@ok.test")
    deliver(spool, service, "y@ok.test")
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(lambda: service))
    lines = set(prometheus_client.generate_latest(registry).decode().splitlines())
    assert "# TYPE spoolmail_dns_cache_hits_total counter" in lines
    assert "# TYPE spoolmail_dns_cache_misses_total counter" in lines
    assert "# TYPE spoolmail_dns_cache_entries gauge" in lines
    assert f"spoolmail_dns_cache_hits_total {float(HOP_QUESTIONS)}" in lines
    assert f"spoolmail_dns_cache_misses_total {float(HOP_QUESTIONS)}" in lines
    assert f"spoolmail_dns_cache_entries {float(HOP_QUESTIONS)}" in lines


@pytest.mark.parametrize("size", [-1, 1.5, True, "10", None])
def test_a_cache_size_that_is_not_0_or_more_answers_is_refused(
    spool: Spool, make_service: Any, size: object
) -> None:
    with pytest.raises(ConfigurationError, match=r"dns_cache_size must be 0 \(no cache\) or more"):
        make_service(dns_cache_size=size)


def test_the_default_is_the_resolvers(spool: Spool, make_service: Any) -> None:
    service = make_service()
    assert service._names._cache._size == CACHE_SIZE  # type: ignore[attr-defined]
