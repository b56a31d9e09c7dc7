"""MTA-STS lookups against real parts: TXT records from dnsmasq, policies from an HTTPS server on
127.0.0.1 with its own CA (``tests/policyserver.py``), reached by their real names (SNI and the
certificate check) at the address dnsmasq gives. Nothing leaves 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from spoolmail._core.mtasts import StsMode
from spoolmail._core.transcript import Transcript
from spoolmail._transport.dns import DnsResolver, Lookup
from spoolmail._transport.mtasts import HttpsPolicyFetcher, MtaSts
from spoolmail.testing import FakeClock
from tests.dnsserver import DnsServer
from tests.policyserver import (
    POLICY_HOSTS,
    Answer,
    HttpsCertificates,
    PolicyServer,
    make_https_certificates,
    policy,
)

STS_RECORDS = (
    *(f"host-record={host},127.0.0.1" for host in POLICY_HOSTS),
    *(
        f'txt-record=_mta-sts.{host.removeprefix("mta-sts.")},"v=STSv1; id=20260101"'
        for host in POLICY_HOSTS
    ),
    # Two valid records: no policy (RFC 8461 section 3.1).
    'txt-record=_mta-sts.twice.test,"v=STSv1; id=1"',
    'txt-record=_mta-sts.twice.test,"v=STSv1; id=2"',
    'txt-record=_mta-sts.other.test,"v=spf1 -all"',
    "server=/broken.test/#",  # REFUSED: a lookup that fails
)


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with DnsServer(STS_RECORDS, directory=tmp_path_factory.mktemp("stsdns")) as server:
        yield server


@pytest.fixture(scope="module")
def https_certificates(tmp_path_factory: pytest.TempPathFactory) -> HttpsCertificates:
    return make_https_certificates(tmp_path_factory.mktemp("stscerts"))


@pytest.fixture
def policy_server(https_certificates: HttpsCertificates) -> Iterator[PolicyServer]:
    with PolicyServer(https_certificates, rogue_hosts=("mta-sts.stsrogue.test",)) as server:
        yield server


@pytest.fixture
def resolver(dns_server: DnsServer) -> DnsResolver:
    return DnsResolver(resolver=dns_server.resolver())


@pytest.fixture
def fetcher(
    resolver: DnsResolver, policy_server: PolicyServer, https_certificates: HttpsCertificates
) -> HttpsPolicyFetcher:
    return HttpsPolicyFetcher(
        resolver,
        tls_context=https_certificates.client_context(),
        port=policy_server.port,
        timeout=1.0,
    )


def test_the_txt_record_is_read_with_its_strings_joined(
    resolver: DnsResolver, transcript: Transcript
) -> None:
    found = resolver.lookup("_mta-sts.sts.test", "TXT", transcript)
    assert found == Lookup(("v=STSv1; id=20260101",))
    assert resolver.lookup("_mta-sts.nosuch.test", "TXT", transcript).missing
    assert resolver.lookup("_mta-sts.x.broken.test", "TXT", transcript).failure


def test_a_policy_is_fetched_by_its_real_name_at_the_address_dns_gives(
    fetcher: HttpsPolicyFetcher, policy_server: PolicyServer, transcript: Transcript
) -> None:
    policy_server.answers["mta-sts.sts.test"] = policy("enforce", "mx1.example.test")
    text = fetcher.fetch("sts.test", transcript)
    assert text is not None
    assert "mode: enforce" in text
    assert policy_server.requests == ["mta-sts.sts.test"]
    assert policy_server.sni == ["mta-sts.sts.test"]
    assert "fetched https://mta-sts.sts.test/.well-known/mta-sts.txt" in transcript.text


@pytest.mark.parametrize(
    ("domain", "answer", "reason"),
    [
        (
            "stsredirect.test",
            Answer(
                status=301,
                headers=(("Location", "https://mta-sts.sts.test/.well-known/mta-sts.txt"),),
            ),
            "answered HTTP 301 (redirects are not followed)",
        ),
        ("ststype.test", Answer("version: STSv1\r\n", content_type="text/html"), "text/html"),
        ("stsbig.test", Answer(b"x" * (64 * 1024 + 1)), "is over 65536 bytes"),
        ("stsslow.test", Answer("version: STSv1\r\n", delay=2.0), "timed out"),
    ],
)
def test_what_is_not_a_policy_is_none(
    fetcher: HttpsPolicyFetcher,
    policy_server: PolicyServer,
    transcript: Transcript,
    domain: str,
    answer: Answer,
    reason: str,
) -> None:
    policy_server.answers[f"mta-sts.{domain}"] = answer
    assert fetcher.fetch(domain, transcript) is None
    assert reason in transcript.text
    # Never followed anywhere else.
    assert policy_server.requests == [f"mta-sts.{domain}"]


def test_a_certificate_from_an_untrusted_ca_is_refused(
    fetcher: HttpsPolicyFetcher, policy_server: PolicyServer, transcript: Transcript
) -> None:
    policy_server.answers["mta-sts.stsrogue.test"] = policy("enforce", "mx1.example.test")
    assert fetcher.fetch("stsrogue.test", transcript) is None
    assert "CERTIFICATE_VERIFY_FAILED" in transcript.text
    assert policy_server.requests == []


def test_no_policy_host_is_none(fetcher: HttpsPolicyFetcher, transcript: Transcript) -> None:
    assert fetcher.fetch("nosuch.test", transcript) is None
    assert "mta-sts.nosuch.test does not exist" in transcript.text


# -- the cache ------------------------------------------------------------------------------------


def test_a_policy_is_fetched_once_and_kept_for_its_max_age(
    resolver: DnsResolver,
    fetcher: HttpsPolicyFetcher,
    policy_server: PolicyServer,
    clock: FakeClock,
    transcript: Transcript,
) -> None:
    policy_server.answers["mta-sts.sts.test"] = policy("enforce", "mx1.example.test", max_age=3600)
    sts = MtaSts(resolver, fetcher=fetcher, clock=clock)
    found = sts.policy("sts.test", transcript)
    assert found is not None
    assert found.mode is StsMode.ENFORCE
    assert found.mx == ("mx1.example.test",)
    assert sts.policy("sts.test", transcript) == found
    assert policy_server.requests == ["mta-sts.sts.test"]
    clock.advance(hours=1)
    assert sts.policy("sts.test", transcript) == found
    assert policy_server.requests == ["mta-sts.sts.test"] * 2
    assert "(id 20260101, valid until" in transcript.text


def test_a_failed_refresh_keeps_the_cached_policy_and_waits_before_asking_again(
    resolver: DnsResolver,
    fetcher: HttpsPolicyFetcher,
    policy_server: PolicyServer,
    clock: FakeClock,
    transcript: Transcript,
) -> None:
    class NewId(DnsResolver):
        record = "v=STSv1; id=1"

        def lookup(
            self, name: str, rdtype: str, transcript: Transcript, *, deadline: float | None = None
        ) -> Lookup:
            if name.startswith("_mta-sts."):
                return Lookup((self.record,))
            return super().lookup(name, rdtype, transcript)

    names = NewId(resolver=resolver._dns())
    fetcher = HttpsPolicyFetcher(
        names, tls_context=fetcher._context, port=policy_server.port, timeout=1.0
    )
    sts = MtaSts(names, fetcher=fetcher, clock=clock)
    policy_server.answers["mta-sts.sts.test"] = policy("enforce", "mx1.example.test")
    first = sts.policy("sts.test", transcript)
    assert first is not None
    # The id changes: fetched again; the server fails, so the cached policy holds.
    names.record = "v=STSv1; id=2"
    policy_server.answers["mta-sts.sts.test"] = Answer(status=500)
    assert sts.policy("sts.test", transcript) == first
    assert "the cached policy still holds" in transcript.text
    assert sts.policy("sts.test", transcript) == first
    assert len(policy_server.requests) == 2  # not again within five minutes
    policy_server.answers["mta-sts.sts.test"] = policy("testing", "*.example.test")
    clock.advance(minutes=6)
    again = sts.policy("sts.test", transcript)
    assert again is not None
    assert again.mode is StsMode.TESTING
    cached = sts.cached("sts.test")
    assert cached is not None
    assert cached.id == "2"


def test_without_a_record_there_is_no_policy_unless_one_is_cached(
    resolver: DnsResolver,
    fetcher: HttpsPolicyFetcher,
    policy_server: PolicyServer,
    clock: FakeClock,
    transcript: Transcript,
) -> None:
    sts = MtaSts(resolver, fetcher=fetcher, clock=clock)
    assert sts.policy("nosuch.test", transcript) is None
    assert sts.policy("twice.test", transcript) is None
    assert sts.policy("other.test", transcript) is None
    assert "2 v=STSv1 TXT records, there must be one" in transcript.text
    # A fetch that fails without a cached policy: delivery goes on as though there were none.
    assert sts.policy("stsslow.test", transcript) is None
    assert "no policy to apply; delivering as usual" in transcript.text
    assert policy_server.requests == ["mta-sts.stsslow.test"]
    del clock  # (the fake clock only keeps the policies' times repeatable)


def test_the_default_fetch_timeout_bounds_a_stalled_server(tmp_path: Path) -> None:
    assert HttpsPolicyFetcher(DnsResolver())._timeout == 10.0
    assert timedelta(seconds=HttpsPolicyFetcher(DnsResolver())._timeout) <= timedelta(seconds=10)


def test_the_trust_store_is_loaded_at_the_first_fetch() -> None:
    """Loading it costs tens of milliseconds: a service that fetches no policy never pays."""
    fetcher = HttpsPolicyFetcher(DnsResolver())
    assert fetcher._context is None
    context = fetcher._tls_context()
    assert context is fetcher._tls_context()
    assert context.check_hostname
