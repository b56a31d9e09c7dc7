"""The resolver keeps DNS answers for their TTL: a second lookup within it asks the server
nothing, one after it asks again; a TTL of 0, a failure (SERVFAIL, a timeout) and a negative
answer without an SOA are never kept; the number kept is bounded; and a kept answer keeps its
AD bit, so DANE is never satisfied by an answer that was not authenticated.

The servers are real ones on 127.0.0.1: :class:`~tests.transport.test_hostile_dns.ScriptedDns`,
which counts every query it gets, and dnsmasq (``tests/dnsserver.py``). Time is the
resolver's injected ``monotonic``: no test waits for a TTL to run out.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

from spoolmail._core.dane import DaneTarget
from spoolmail._core.routing import Hop, HopKind
from spoolmail._core.transcript import Transcript
from spoolmail._transport.dane import Dane
from spoolmail._transport.dns import (
    MAX_CACHED_OCTETS,
    MAX_CACHED_RECORDS,
    MAX_NEGATIVE_TTL,
    DnsResolver,
)
from tests.dnsserver import RECORDS, DnsServer, local_resolver
from tests.transport.test_hostile_dns import ScriptedDns, notes

pytestmark = pytest.mark.integration

SOA = "ns.test. hostmaster.test. 1 3600 600 86400 {minimum}"
TLSA = "3 1 1 " + "ab" * 32

# name -> type -> (TTL, records); a name absent here does not exist.
ZONE: dict[str, dict[str, tuple[int, list[str]]]] = {
    "kept.test": {"MX": (300, ["10 mx.kept.test."])},
    "mx.kept.test": {"A": (300, ["127.0.0.2"])},  # AAAA: NODATA, with an SOA of minimum 60
    "zero.test": {"MX": (0, ["10 mx.zero.test."])},
    "mx.zero.test": {"A": (0, ["127.0.0.3"])},
    "short.test": {"MX": (300, ["10 mx.short.test."])},
    "mx.short.test": {"A": (5, ["127.0.0.4"])},  # the least TTL on the way decides
    "secure.test": {"MX": (300, ["10 mx.secure.test."])},
    "mx.secure.test": {"A": (300, ["127.0.0.5"])},
    "_25._tcp.mx.secure.test": {"TLSA": (300, [TLSA])},
    "insecure.test": {"MX": (300, ["10 mx.insecure.test."])},
    "mx.insecure.test": {"A": (300, ["127.0.0.6"])},
    "_25._tcp.mx.insecure.test": {"TLSA": (300, [TLSA])},
    **{f"n{n}.test": {"A": (300, [f"127.0.1.{n}"])} for n in range(1, 6)},
    # As many records as are kept, and one more; a TXT record of 3,000 octets, and a short one.
    "twenty.test": {"A": (300, [f"127.0.2.{n}" for n in range(1, 21)])},
    "many.test": {"A": (300, [f"127.0.2.{n}" for n in range(1, 22)])},
    "long.test": {"TXT": (300, [" ".join(['"' + "x" * 250 + '"'] * 12)])},
    "short-txt.test": {"TXT": (300, ['"v=STSv1; id=1"'])},
}
SIGNED = ("secure.test", "mx.secure.test", "_25._tcp.mx.secure.test")
"""Names a validating resolver vouches for: AD in its answer when the query asks for it."""


def script(query: dns.message.Message, transport: str) -> list[bytes]:
    """Answers from ZONE. ``*.servfail.test``: SERVFAIL; ``*.silent.test``: nothing (a
    timeout); ``nosoa.test``: NXDOMAIN without an SOA; ``bigsoa.test``: NXDOMAIN with an SOA
    of a day; any other missing name: NXDOMAIN with an SOA of minimum 120 (TTL 600); a missing
    type: NODATA with an SOA of minimum 60."""
    question = query.question[0]
    name = question.name.to_text().rstrip(".").lower()
    rdtype = dns.rdatatype.to_text(question.rdtype)
    response = dns.message.make_response(query)
    if name.endswith("silent.test"):
        return []
    if name.endswith("servfail.test"):
        response.set_rcode(dns.rcode.SERVFAIL)
        return [response.to_wire()]
    records = ZONE.get(name)
    minimum = 60
    if records is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        minimum = 86_400 if name == "bigsoa.test" else 120
    elif rdtype in records:
        ttl, texts = records[rdtype]
        response.answer.append(dns.rrset.from_text(question.name, ttl, "IN", rdtype, *texts))
        if name in SIGNED and query.flags & dns.flags.AD:
            response.flags |= dns.flags.AD  # RFC 6840 section 5.7: only when asked
    if not response.answer and name != "nosoa.test":
        soa = SOA.format(minimum=minimum)
        ttl = minimum if name == "bigsoa.test" else 600
        response.authority.append(dns.rrset.from_text("test.", ttl, "IN", "SOA", soa))
    return [response.to_wire()]


def new_transcript() -> Transcript:
    return Transcript(clock=lambda: datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC))


class Monotonic:
    """The resolver's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[ScriptedDns]:
    with ScriptedDns(script) as server:
        yield server


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


def make_resolver(
    server: ScriptedDns, clock: Monotonic, *, ad: bool = False, **options: int
) -> DnsResolver:
    resolver = local_resolver(server.port, timeout=0.2, lifetime=0.3)
    if ad:
        resolver.flags = dns.flags.RD | dns.flags.AD  # as MailService(dane=True) asks
    return DnsResolver(resolver=resolver, rng=random.Random(0), monotonic=clock, **options)


@pytest.fixture
def resolver(server: ScriptedDns, clock: Monotonic) -> DnsResolver:
    return make_resolver(server, clock)


def mx(domain: str) -> Hop:
    return Hop(HopKind.MX, domain, 25)


def asked(server: ScriptedDns) -> list[tuple[str, str]]:
    """The questions the server got, and forget them."""
    questions = [(name.rstrip("."), rdtype) for _, name, rdtype in server.queries]
    server.queries.clear()
    return questions


def resolve(resolver: DnsResolver, domain: str) -> tuple[list[str], list[str]]:
    """The hop's addresses, and the transcript's notes."""
    transcript = new_transcript()
    resolution = resolver.resolve(mx(domain), transcript)
    return [target.host for target in resolution.targets], notes(transcript)


def test_a_second_lookup_within_the_ttl_asks_the_server_nothing(
    resolver: DnsResolver, server: ScriptedDns, clock: Monotonic
) -> None:
    first, _ = resolve(resolver, "kept.test")
    assert first == ["127.0.0.2"]
    assert asked(server) == [("kept.test", "MX"), ("mx.kept.test", "AAAA"), ("mx.kept.test", "A")]
    clock.now += 59
    again, lines = resolve(resolver, "kept.test")
    assert again == first
    assert asked(server) == []
    # The transcript says where the answer came from, and for how long it is kept yet.
    assert "MX kept.test: 10 mx.kept.test (cached, 241 s left)" in lines
    assert "A mx.kept.test: 127.0.0.2 (cached, 241 s left)" in lines
    assert "AAAA mx.kept.test: no AAAA record (NODATA) (cached, 1 s left)" in lines


def test_an_answer_is_asked_again_once_its_ttl_is_over(
    resolver: DnsResolver, server: ScriptedDns, clock: Monotonic
) -> None:
    resolve(resolver, "kept.test")
    asked(server)
    clock.now += 60  # the NODATA's SOA minimum is over, the records' 300 s are not
    resolve(resolver, "kept.test")
    assert asked(server) == [("mx.kept.test", "AAAA")]
    clock.now += 239
    resolve(resolver, "kept.test")
    assert asked(server) == [("mx.kept.test", "AAAA")]  # kept again, until 60 s from now
    clock.now += 1  # 300 s since the first lookup
    addresses, lines = resolve(resolver, "kept.test")
    assert addresses == ["127.0.0.2"]
    assert asked(server) == [("kept.test", "MX"), ("mx.kept.test", "A")]
    assert "MX kept.test: 10 mx.kept.test" in lines


def test_a_ttl_of_0_is_not_kept_and_each_answer_keeps_its_own_ttl(
    resolver: DnsResolver, server: ScriptedDns, clock: Monotonic
) -> None:
    for _ in range(2):
        assert resolve(resolver, "zero.test")[0] == ["127.0.0.3"]
    assert asked(server).count(("zero.test", "MX")) == 2  # RFC 1035 3.2.1: this transaction only
    for _ in range(2):
        resolve(resolver, "short.test")
    assert asked(server).count(("mx.short.test", "A")) == 1
    clock.now += 5
    resolve(resolver, "short.test")
    assert asked(server) == [("mx.short.test", "A")]  # the MX's 300 s still hold


def test_dnsmasq_answers_are_kept_only_with_a_ttl() -> None:
    """dnsmasq gives its own records TTL 0 (tests/dnsserver.py) unless ``local-ttl`` says
    otherwise: those are asked every time, and with ``local-ttl=60`` once."""
    for extra, expected in (((), 2), (("local-ttl=60",), 1)):
        with DnsServer((*RECORDS, *extra)) as server:
            resolver = DnsResolver(resolver=server.resolver(), monotonic=Monotonic())
            for _ in range(2):
                transcript = new_transcript()
                assert len(resolver.resolve(mx("example.test"), transcript).targets) == 3
            assert len(re.findall(r"query\[MX\] example\.test ", server.log)) == expected


def test_failures_are_not_kept(resolver: DnsResolver, server: ScriptedDns) -> None:
    """SERVFAIL and silence are no answer: the next lookup asks again (holding back the
    domain's mail meanwhile is the failed-lookup notes' job), while an answer is kept."""
    for domain in ("servfail.test", "silent.test", "kept.test"):
        for _ in range(2):
            resolve(resolver, domain)
    questions = asked(server)
    assert questions.count(("servfail.test", "MX")) == 2
    assert questions.count(("silent.test", "MX")) >= 2  # dnspython may ask more than once
    assert questions.count(("kept.test", "MX")) == 1


def test_nxdomain_and_nodata_are_kept_for_their_soa_ttl(
    resolver: DnsResolver, server: ScriptedDns, clock: Monotonic
) -> None:
    """RFC 2308 section 5: the SOA's TTL or minimum, whichever is less; none without an SOA
    (dnspython's own cache keeps those 300 s); at most MAX_NEGATIVE_TTL."""
    transcript = new_transcript()
    for name in ("nxdomain.test", "nosoa.test", "bigsoa.test"):
        for _ in range(2):
            assert resolver.lookup(name, "MX", transcript).missing
    assert asked(server) == [
        ("nxdomain.test", "MX"),
        ("nosoa.test", "MX"),
        ("nosoa.test", "MX"),
        ("bigsoa.test", "MX"),
    ]
    resolve(resolver, "nxdomain.test")  # the routing lookup reads the same answer
    assert asked(server) == []
    clock.now += 119
    assert resolver.lookup("nxdomain.test", "MX", transcript).missing
    assert asked(server) == []
    clock.now += 1
    resolver.lookup("nxdomain.test", "MX", transcript)
    resolver.lookup("bigsoa.test", "MX", transcript)
    assert asked(server) == [("nxdomain.test", "MX")]
    clock.now = 1000 + MAX_NEGATIVE_TTL
    resolver.lookup("bigsoa.test", "MX", transcript)
    assert asked(server) == [("bigsoa.test", "MX")]


def test_the_cache_keeps_at_most_cache_size_answers(server: ScriptedDns, clock: Monotonic) -> None:
    resolver = make_resolver(server, clock, cache_size=2)
    transcript = new_transcript()
    for n in (1, 2, 1, 3):  # n1 used again after n2: n2 is the least recently used
        resolver.lookup(f"n{n}.test", "A", transcript)
    assert len(resolver._cache or ()) == 2
    assert asked(server) == [("n1.test", "A"), ("n2.test", "A"), ("n3.test", "A")]
    for n in (1, 3, 2):
        resolver.lookup(f"n{n}.test", "A", transcript)
    assert asked(server) == [("n2.test", "A")]
    for n in range(1, 6):
        resolver.lookup(f"n{n}.test", "A", transcript)
        assert len(resolver._cache or ()) <= 2


def test_cache_size_0_keeps_nothing(server: ScriptedDns, clock: Monotonic) -> None:
    for options, expected in (({"cache_size": 0}, 2), ({}, 1)):  # the default keeps
        resolver = make_resolver(server, clock, **options)
        for _ in range(2):
            resolve(resolver, "kept.test")
        assert asked(server).count(("kept.test", "MX")) == expected
    for wrong in (-1, True, False, 2.5, "10"):  # a bool is an int, and was taken as 1 or 0
        with pytest.raises(ValueError, match="cache_size"):
            make_resolver(server, clock, cache_size=wrong)


def test_a_kept_answer_keeps_its_ad_bit(server: ScriptedDns, clock: Monotonic) -> None:
    resolver = make_resolver(server, clock, ad=True)
    transcript = new_transcript()
    for _ in range(2):
        assert resolver.lookup("secure.test", "MX", transcript).authenticated
        assert not resolver.lookup("insecure.test", "MX", transcript).authenticated
    assert asked(server) == [("secure.test", "MX"), ("insecure.test", "MX")]


def test_an_answer_to_a_query_that_did_not_ask_for_ad_is_not_given_to_one_that_does(
    server: ScriptedDns, clock: Monotonic
) -> None:
    """A validating resolver sets AD only when asked (RFC 6840 section 5.7): an answer got
    without asking says nothing of validation, and one got asking is not given for it either."""
    plain = local_resolver(server.port, timeout=0.2, lifetime=0.3)
    resolver = DnsResolver(resolver=plain, monotonic=clock)
    transcript = new_transcript()
    assert not resolver.lookup("secure.test", "MX", transcript).authenticated
    plain.flags = dns.flags.RD | dns.flags.AD
    assert resolver.lookup("secure.test", "MX", transcript).authenticated
    assert resolver.lookup("secure.test", "MX", transcript).authenticated
    plain.flags = dns.flags.RD
    assert not resolver.lookup("secure.test", "MX", transcript).authenticated
    assert asked(server) == [("secure.test", "MX")] * 2


@pytest.mark.parametrize(("domain", "dane"), [("secure.test", True), ("insecure.test", False)])
def test_dane_reads_the_ad_bit_of_the_kept_answer(
    server: ScriptedDns, clock: Monotonic, domain: str, dane: bool
) -> None:
    """DANE asks the domain's MX again for its AD bit: the routing lookup's kept answer gives
    it, and only an authenticated one makes the hosts DANE targets (RFC 7672 section 2.2.1)."""
    resolver = make_resolver(server, clock, ad=True)
    transcript = new_transcript()
    resolution = resolver.resolve(mx(domain), transcript)
    asked(server)
    applied = Dane(resolver, monotonic=clock).apply(domain, resolution, transcript)
    [target] = applied.targets
    assert isinstance(target, DaneTarget) is dane
    questions = asked(server)
    assert (domain, "MX") not in questions  # the kept answer, with its AD bit
    assert questions == ([(f"_25._tcp.mx.{domain}", "TLSA")] if dane else [])
    if not dane:
        assert any("not DNSSEC-validated" in line for line in notes(transcript))


def test_a_big_answer_is_used_but_not_kept(resolver: DnsResolver, server: ScriptedDns) -> None:
    """A name's owner chooses its answers: kept whatever their size, ten thousand names of
    64 KiB each would fill hundreds of megabytes. Over MAX_CACHED_RECORDS records or
    MAX_CACHED_OCTETS octets, an answer is used and asked again next time. Guard: one at the
    bounds is kept."""
    assert (MAX_CACHED_RECORDS, MAX_CACHED_OCTETS) == (20, 2_048)
    for name, count in (("many.test", 21), ("twenty.test", 20)):
        for _ in range(2):
            found = resolver.lookup(name, "A", new_transcript())
            assert len(found.records) == count
    assert asked(server) == [("many.test", "A"), ("many.test", "A"), ("twenty.test", "A")]
    for name in ("long.test", "long.test", "short-txt.test", "short-txt.test"):
        assert resolver.lookup(name, "TXT", new_transcript()).records
    assert asked(server) == [("long.test", "TXT"), ("long.test", "TXT"), ("short-txt.test", "TXT")]
