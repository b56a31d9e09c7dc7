"""DANE's TLSA base domain follows a validated CNAME of the MX host (RFC 7672 section 2.2.2,
RFC 7671 section 7): TLSA records are looked for at the fully expanded name first, then at the
MX host's own name; a chain not validated end to end is never followed; a failed lookup at the
expanded name is no "none". The same for a domain without MX records (the implicit MX). When
the TLSA lookup at the MX host's own name fails and its chain is not validated, the host's own
CNAME record (asked then only) tells whether its name is in a signed zone (section 2.2.2).

Real parts throughout: :class:`~tests.transport.test_hostile_dns.ScriptedDns` on 127.0.0.1
answers from a small zone (:class:`Zone`), CNAME chains in the answer and the AD bit where every
name of the answer is in a "signed" zone, as a validating resolver would; the service's own
:class:`~spoolmail._transport.dns.DnsResolver` resolves the MX hop and :class:`Dane` applies
DANE with it, as a delivery does; aiosmtpd on 127.0.0.1 shows a leaf and its intermediate
(``tests/tlscerts.py``), and records the SNI it was sent. The server's query log says which
names were asked. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import ssl
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from spoolmail._core.dane import (
    Alias,
    CnameAnswer,
    DaneState,
    DaneTarget,
    TlsaAnswer,
    plan,
    subject_public_key_info,
)
from spoolmail._core.reply import Reply
from spoolmail._core.routing import Hop, HopKind, Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing, Resolution
from spoolmail._transport.dane import Dane, chain_problem
from spoolmail._transport.dns import DnsResolver, Lookup
from spoolmail._transport.smtp import SmtpTransport
from tests.dnsserver import local_resolver
from tests.smtpservers import SmtpServer
from tests.tlscerts import Chain, make_chain
from tests.transport.test_dane import Answers
from tests.transport.test_hostile_dns import ScriptedDns

pytestmark = pytest.mark.integration

needs_chain_check = pytest.mark.skipif(
    chain_problem() is not None, reason=f"DANE-TA cannot be checked here: {chain_problem()}"
)

TTL = 300
SOA = "ns.test. hostmaster.test. 1 3600 600 86400 300"

DOMAIN = "cname.test"
MX_HOST = "mx.cname.test"  # MX 10 of cname.test, a CNAME of:
EXPANDED = "mx.provider.test"  # A 127.0.0.1, where the SMTP server listens
IMPLICIT = "alias.test"  # no MX records; a CNAME of:
IMPLICIT_HOST = "host.provider.test"  # A 127.0.0.1
EE = "3 1 1 " + "ab" * 32  # a DANE-EE record no certificate here matches


class Zone:
    """A script for :class:`ScriptedDns`: ``records`` (name -> type -> texts), ``cnames``
    (alias -> target), followed within one answer as a recursive resolver does, except for a
    CNAME question, answered with the alias's own record (RFC 1034 section 3.6.2). The AD bit
    is set when the query asks for it and every name the answer passed through is under one of
    ``signed`` and none of ``unsigned`` (an insecure delegation below a signed zone): a
    validating resolver sets it only when the whole answer is secure (RFC 4035 section
    3.2.3). A name in ``servfail`` fails the whole answer (SERVFAIL, no AD), and so does a
    question in ``failing`` (name, type): one type alone. A missing name is NXDOMAIN, a
    missing type NODATA, both with an SOA (kept ``TTL`` s)."""

    def __init__(
        self,
        records: Mapping[str, Mapping[str, list[str]]],
        *,
        cnames: Mapping[str, str],
        signed: Collection[str],
        unsigned: Collection[str] = (),
        servfail: Collection[str] = (),
        failing: Collection[tuple[str, str]] = (),
    ) -> None:
        self.records = records
        self.cnames = cnames
        self.signed = tuple(signed)
        self.unsigned = tuple(unsigned)
        self.servfail = frozenset(servfail)
        self.failing = frozenset(failing)

    def _is_signed(self, name: str) -> bool:
        def under(zones: tuple[str, ...]) -> bool:
            return any(name == zone or name.endswith(f".{zone}") for zone in zones)

        return under(self.signed) and not under(self.unsigned)

    def __call__(self, query: dns.message.Message, transport: str) -> list[bytes]:
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        passed = [name]
        cname_asked = rdtype == "CNAME" and name in self.cnames
        while name in self.cnames and len(passed) < 8:
            target = self.cnames[name]
            response.answer.append(
                dns.rrset.from_text(f"{name}.", TTL, "IN", "CNAME", f"{target}.")
            )
            if cname_asked:
                break  # the alias's own record is the answer: not chased
            name = target
            passed.append(name)
        if any(owner in self.servfail for owner in passed) or (passed[0], rdtype) in self.failing:
            failed = dns.message.make_response(query)
            failed.set_rcode(dns.rcode.SERVFAIL)
            return [failed.to_wire()]
        found = self.records.get(name)
        if found is not None and rdtype in found:
            response.answer.append(
                dns.rrset.from_text(f"{name}.", TTL, "IN", rdtype, *found[rdtype])
            )
        elif not cname_asked:
            if found is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text("test.", TTL, "IN", "SOA", SOA))
        if query.flags & dns.flags.AD and all(self._is_signed(owner) for owner in passed):
            response.flags |= dns.flags.AD
        return [response.to_wire()]


def zone(
    port: int,
    *,
    at_expanded: list[str] | None = None,
    at_original: list[str] | None = None,
    signed: Collection[str] = ("cname.test", "provider.test", "alias.test"),
    unsigned: Collection[str] = (),
    servfail: Collection[str] = (),
    failing: Collection[tuple[str, str]] = (),
    mx_alias: bool = True,
) -> Zone:
    """``cname.test`` MX ``mx.cname.test``, a CNAME of ``mx.provider.test`` (A 127.0.0.1), or
    without ``mx_alias`` A 127.0.0.1 itself; ``alias.test``, without MX records, a CNAME of
    ``host.provider.test`` (A 127.0.0.1); TLSA records ``at_expanded`` (``_port._tcp`` of both
    provider hosts) and ``at_original`` (of ``mx.cname.test`` and ``alias.test``)."""
    records: dict[str, dict[str, list[str]]] = {
        DOMAIN: {"MX": [f"10 {MX_HOST}."]},
        EXPANDED: {"A": ["127.0.0.1"]},
        IMPLICIT_HOST: {"A": ["127.0.0.1"]},
    }
    if not mx_alias:
        records[MX_HOST] = {"A": ["127.0.0.1"]}
    if at_expanded:
        records[f"_{port}._tcp.{EXPANDED}"] = {"TLSA": at_expanded}
        records[f"_{port}._tcp.{IMPLICIT_HOST}"] = {"TLSA": at_expanded}
    if at_original:
        records[f"_{port}._tcp.{MX_HOST}"] = {"TLSA": at_original}
        records[f"_{port}._tcp.{IMPLICIT}"] = {"TLSA": at_original}
    cnames = {IMPLICIT: IMPLICIT_HOST}
    if mx_alias:
        cnames[MX_HOST] = EXPANDED
    return Zone(
        records,
        cnames=cnames,
        signed=signed,
        unsigned=unsigned,
        servfail=servfail,
        failing=failing,
    )


class Monotonic:
    """The resolver's clock, moved by hand: no test waits for a TTL."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(server: ScriptedDns, clock: Monotonic | None = None) -> DnsResolver:
    """The service's resolver as ``MailService(dane=True)`` makes it: queries ask for AD."""
    resolver = local_resolver(server.port, timeout=0.5, lifetime=1.0)
    resolver.flags = dns.flags.RD | dns.flags.AD
    return DnsResolver(resolver=resolver, rng=random.Random(0), monotonic=clock or Monotonic())


def asked(server: ScriptedDns) -> list[tuple[str, str]]:
    """The questions the server got, in order, and forget them."""
    questions = [(name.rstrip("."), rdtype) for _, name, rdtype in server.queries]
    server.queries.clear()
    return questions


def now_transcript() -> Transcript:
    # A DANE-TA chain's dates are checked at the transcript's clock; make_chain dates from now.
    return Transcript(clock=lambda: datetime.now(UTC))


def message() -> Outgoing:
    data = b"Subject: DANE and CNAME\r\n\r\nHello.\r\n"

    @contextlib.contextmanager
    def opened() -> Iterator[BinaryIO]:
        yield io.BytesIO(data)

    return Outgoing("q1", "alice@example.com", ("bob@cname.test",), len(data), opened)


def ta_record(chain: Chain) -> str:
    """A DANE-TA(2) record naming the chain's intermediate (SPKI, SHA2-256)."""
    spki = subject_public_key_info(chain.intermediate.der)
    return f"2 1 1 {hashlib.sha256(spki).hexdigest()}"


def ee_record(chain: Chain) -> str:
    """A DANE-EE(3) record naming the chain's leaf (SPKI, SHA2-256): no name is checked."""
    spki = subject_public_key_info(chain.leaf.der)
    return f"3 1 1 {hashlib.sha256(spki).hexdigest()}"


class Mx:
    """aiosmtpd on 127.0.0.1 showing ``chain``, recording the SNI names it was sent."""

    def __init__(self, chain: Chain, directory: Path) -> None:
        self.sni: list[str | None] = []
        context = chain.server_context(directory)

        def seen(_: ssl.SSLObject, name: str | None, __: ssl.SSLContext) -> None:
            self.sni.append(name)

        context.sni_callback = seen
        self.server = SmtpServer(tls_context=context)

    def __enter__(self) -> Mx:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.__exit__(None, None, None)

    @property
    def port(self) -> int:
        return self.server.port


def route(resolver: DnsResolver, domain: str, port: int, transcript: Transcript) -> Resolution:
    """What a delivery does before it connects: the MX hop resolved, then DANE applied."""
    resolution = resolver.resolve(Hop(HopKind.MX, domain, port), transcript)
    assert resolution.targets, resolution.reply
    return Dane(resolver).apply(domain, resolution, transcript)


def deliver(
    transport: SmtpTransport, resolution: Resolution, transcript: Transcript
) -> tuple[Target, Reply]:
    [target] = resolution.targets
    [reply] = transport.send(target, message(), transcript).values()
    return target, reply


@pytest.fixture(scope="module")
def provider_chain() -> Chain:
    """A leaf issued for the expanded names alone (the provider's hosts)."""
    return make_chain((EXPANDED, IMPLICIT_HOST))


# A validated CNAME chain, records at the expanded name.


@needs_chain_check
def test_records_at_the_expanded_name_are_used_and_the_certificate_checked_against_them(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path
) -> None:
    transcript = now_transcript()
    with (
        Mx(provider_chain, tmp_path) as mx,
        ScriptedDns(zone(mx.port, at_expanded=[ta_record(provider_chain)])) as server,
    ):
        resolution = route(resolver_for(server), DOMAIN, mx.port, transcript)
        questions = asked(server)
        target, reply = deliver(transport, resolution, transcript)
    assert reply.code == 250
    assert [m.tls for m in mx.server.messages] == [True]
    assert isinstance(target, DaneTarget)
    assert target.base_domain == EXPANDED
    assert target.tlsa_name == f"_{mx.port}._tcp.{EXPANDED}"
    assert target.reference_names == (EXPANDED, DOMAIN)
    # RFC 7672 section 8.1: the SNI names the TLSA base domain, here the expanded name.
    assert mx.sni == [EXPANDED]
    # The records at the expanded name were used: the MX host's own name was never asked.
    assert (f"_{mx.port}._tcp.{EXPANDED}", "TLSA") in questions
    assert (f"_{mx.port}._tcp.{MX_HOST}", "TLSA") not in questions
    text = transcript.text
    assert f"DANE: {MX_HOST} is an alias of {EXPANDED} (a DNSSEC-validated CNAME chain" in text
    assert f"the TLSA records at _{mx.port}._tcp.{EXPANDED} are used" in text
    assert "certificate matched TLSA 2 1 1" in text
    assert f"at _{mx.port}._tcp.{EXPANDED}" in text
    assert f"chain verified for {EXPANDED}" in text


@needs_chain_check
@pytest.mark.parametrize(
    ("names", "passes"),
    [
        ((EXPANDED,), True),  # the TLSA base domain
        ((DOMAIN,), True),  # the next-hop domain (RFC 7672 section 3.2.2)
        ((MX_HOST,), False),  # the unexpanded MX host: not the base domain
        (("other.example.org",), False),  # an unrelated host
    ],
    ids=["expanded-name", "next-hop-domain", "original-mx-name", "unrelated-host"],
)
def test_a_dane_ta_chain_must_be_issued_for_the_base_domain_or_the_next_hop(
    transport: SmtpTransport, tmp_path: Path, names: tuple[str, ...], passes: bool
) -> None:
    chain = make_chain(names)
    transcript = now_transcript()
    with (
        Mx(chain, tmp_path) as mx,
        ScriptedDns(zone(mx.port, at_expanded=[ta_record(chain)])) as server,
    ):
        resolution = route(resolver_for(server), DOMAIN, mx.port, transcript)
        target, reply = deliver(transport, resolution, transcript)
    assert isinstance(target, DaneTarget)
    if passes:
        assert reply.code == 250
        assert f"chain verified for {names[0]}" in transcript.text
    else:
        assert (reply.code, reply.status) == (451, "4.7.5")
        assert f"TLSA records for _{mx.port}._tcp.{EXPANDED}: none matched" in reply.text
        assert f"no matching subjectAltName for {EXPANDED}" in reply.text
        assert mx.server.messages == []


# Nothing at the expanded name: the MX host's own name.


@pytest.mark.parametrize("expanded_has", ["nothing", "unvalidated records"])
def test_without_validated_records_at_the_expanded_name_the_original_name_is_asked(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path, expanded_has: str
) -> None:
    transcript = now_transcript()
    with Mx(provider_chain, tmp_path) as mx:
        if expanded_has == "nothing":
            dns_zone = zone(mx.port, at_original=[ee_record(provider_chain)])
        else:
            # The expanded name's TLSA RRset below an insecure delegation: no AD bit on it.
            dns_zone = zone(
                mx.port,
                at_expanded=["3 1 1 " + "00" * 32],
                at_original=[ee_record(provider_chain)],
                unsigned=[f"_tcp.{EXPANDED}"],
            )
        with ScriptedDns(dns_zone) as server:
            resolution = route(resolver_for(server), DOMAIN, mx.port, transcript)
            questions = asked(server)
            target, reply = deliver(transport, resolution, transcript)
    assert reply.code == 250
    assert isinstance(target, DaneTarget)
    assert target.base_domain == MX_HOST
    assert target.tlsa_name == f"_{mx.port}._tcp.{MX_HOST}"
    assert mx.sni == [MX_HOST]
    tlsa = [name for name, rdtype in questions if rdtype == "TLSA"]
    assert tlsa == [f"_{mx.port}._tcp.{EXPANDED}", f"_{mx.port}._tcp.{MX_HOST}"]
    none = "no TLSA records"
    if expanded_has == "unvalidated records":
        none = "TLSA records that are not DNSSEC-validated (no AD bit), ignored"
    assert f"and _{mx.port}._tcp.{EXPANDED} has {none}" in transcript.text
    assert f"looking at _{mx.port}._tcp.{MX_HOST} (RFC 7671 section 7)" in transcript.text
    assert f"(TLSA records at _{mx.port}._tcp.{MX_HOST})" in transcript.text
    assert "certificate matched TLSA 3 1 1" in transcript.text


# A chain not validated end to end: the expanded name is never asked.


def test_an_insecure_chain_is_not_followed(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path
) -> None:
    transcript = now_transcript()
    with Mx(provider_chain, tmp_path) as mx:
        # cname.test is signed, provider.test is not: the address answer has no AD bit. The
        # records at the expanded name would not match: asking them would fail the delivery.
        dns_zone = zone(
            mx.port,
            at_expanded=["3 1 1 " + "00" * 32],
            at_original=[ee_record(provider_chain)],
            signed=["cname.test"],
        )
        with ScriptedDns(dns_zone) as server:
            resolution = route(resolver_for(server), DOMAIN, mx.port, transcript)
            questions = asked(server)
            target, reply = deliver(transport, resolution, transcript)
    assert reply.code == 250
    assert isinstance(target, DaneTarget)
    assert target.base_domain == MX_HOST
    assert mx.sni == [MX_HOST]
    assert not any(name.endswith(f"._tcp.{EXPANDED}") for name, _ in questions)
    assert (f"_{mx.port}._tcp.{MX_HOST}", "TLSA") in questions
    assert (
        f"DANE: {MX_HOST} is an alias of {EXPANDED}, but the CNAME chain is not "
        "DNSSEC-validated end to end"
    ) in transcript.text


# A failed lookup at the expanded name is not "none".


def test_a_failed_lookup_at_the_expanded_name_defers_the_host(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path
) -> None:
    transcript = now_transcript()
    with Mx(provider_chain, tmp_path) as mx:
        failing = f"_{mx.port}._tcp.{EXPANDED}"
        # Nothing at the original name: taking the failure for "none" would mean no DANE.
        with ScriptedDns(zone(mx.port, servfail=[failing])) as server:
            resolution = route(resolver_for(server), DOMAIN, mx.port, transcript)
            questions = asked(server)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.status) == (451, "4.7.5")
    assert f"TLSA lookup for {failing} ({MX_HOST} is an alias of {EXPANDED}) failed" in (
        resolution.reply.text
    )
    assert (failing, "TLSA") in questions
    assert (f"_{mx.port}._tcp.{MX_HOST}", "TLSA") not in questions
    assert mx.server.messages == []


# The implicit MX: a domain without MX records is its own host.


@needs_chain_check
def test_the_implicit_mx_follows_its_validated_cname_too(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path
) -> None:
    transcript = now_transcript()
    with (
        Mx(provider_chain, tmp_path) as mx,
        ScriptedDns(zone(mx.port, at_expanded=[ta_record(provider_chain)])) as server,
    ):
        resolution = route(resolver_for(server), IMPLICIT, mx.port, transcript)
        questions = asked(server)
        target, reply = deliver(transport, resolution, transcript)
    assert reply.code == 250
    assert isinstance(target, DaneTarget)
    assert target.name == IMPLICIT
    assert target.base_domain == IMPLICIT_HOST
    # The next-hop domain is the domain itself: the original name stays a reference name.
    assert target.reference_names == (IMPLICIT_HOST, IMPLICIT)
    assert mx.sni == [IMPLICIT_HOST]
    assert (f"_{mx.port}._tcp.{IMPLICIT}", "TLSA") not in questions
    text = transcript.text
    assert f"DANE: {IMPLICIT} has no MX records (a DNSSEC-validated denial)" in text
    assert f"the TLSA records at _{mx.port}._tcp.{IMPLICIT_HOST} are used" in text
    assert f"chain verified for {IMPLICIT_HOST}" in text


def test_an_implicit_mx_whose_denial_is_not_validated_gets_no_dane(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path
) -> None:
    transcript = now_transcript()
    with Mx(provider_chain, tmp_path) as mx:
        # alias.test unsigned: the MX denial (and the alias) carry no AD bit.
        dns_zone = zone(mx.port, at_expanded=["3 1 1 " + "00" * 32], signed=["provider.test"])
        with ScriptedDns(dns_zone) as server:
            resolution = route(resolver_for(server), IMPLICIT, mx.port, transcript)
            questions = asked(server)
            target, reply = deliver(transport, resolution, transcript)
    assert reply.code == 250
    assert not isinstance(target, DaneTarget)
    assert target.tls is TlsPolicy.OPPORTUNISTIC
    assert [q for q in questions if q[1] == "TLSA"] == []
    assert "the denial is not DNSSEC-validated (no AD bit): DANE does not apply" in (
        transcript.text
    )


# The cache: the expanded name and the AD bit come with kept answers.


@pytest.mark.parametrize("domain", [DOMAIN, IMPLICIT])
def test_a_second_delivery_within_the_ttl_asks_nothing_and_decides_the_same(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path, domain: str
) -> None:
    clock = Monotonic()
    with (
        Mx(provider_chain, tmp_path) as mx,
        ScriptedDns(zone(mx.port, at_expanded=[ee_record(provider_chain)])) as server,
    ):
        resolver = resolver_for(server, clock)
        first_transcript, second_transcript = now_transcript(), now_transcript()
        first = route(resolver, domain, mx.port, first_transcript)
        assert asked(server) != []
        clock.now += TTL - 1
        second = route(resolver, domain, mx.port, second_transcript)
        assert asked(server) == []
        target, reply = deliver(transport, second, second_transcript)
    assert second == first
    assert isinstance(target, DaneTarget)
    assert target.base_domain in (EXPANDED, IMPLICIT_HOST)
    assert reply.code == 250
    assert "(cached" in second_transcript.text
    kept = [line for line in second_transcript.lines if "DANE:" in line]
    assert [line.partition(" * ")[2] for line in kept] == [
        line.partition(" * ")[2] for line in first_transcript.lines if "DANE:" in line
    ]


# A signed alias into an unsigned zone: the address answer has no AD bit, the alias's own
# CNAME record, asked for when the TLSA lookup at the MX host's name fails, tells whether that
# name is in a signed zone (RFC 7672 section 2.2.2).

PORT = 25  # the tests below do not connect: the TLSA names only
OWN_TLSA = f"_{PORT}._tcp.{MX_HOST}"


def route_only(server: ScriptedDns) -> tuple[Resolution, Transcript]:
    transcript = now_transcript()
    return route(resolver_for(server), DOMAIN, PORT, transcript), transcript


def test_the_resolver_asks_a_cname_question_and_does_not_follow_it() -> None:
    """dns.py as it stands: ``lookup(host, "CNAME")`` gives the alias's own record with the
    answer's AD bit, no expanded name (the records are the name's own), and keeps it."""
    with ScriptedDns(zone(PORT, signed=["cname.test"])) as server:
        resolver = resolver_for(server)
        first = resolver.lookup(MX_HOST, "CNAME", now_transcript())
        assert asked(server) == [(MX_HOST, "CNAME")]
        again = resolver.lookup(MX_HOST, "CNAME", now_transcript())
        assert asked(server) == []
    assert first == again
    assert first.records == (f"{EXPANDED}.",)
    assert first.authenticated  # cname.test is signed; provider.test, never asked, is not
    assert first.canonical == ""
    assert first.failure is None


def test_a_signed_alias_into_an_unsigned_zone_whose_tlsa_lookup_fails_is_deferred() -> None:
    # cname.test signed, provider.test not: the A answer through the chain has no AD bit.
    with ScriptedDns(zone(PORT, signed=["cname.test"], servfail=[OWN_TLSA])) as server:
        resolution, transcript = route_only(server)
        questions = asked(server)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.status) == (451, "4.7.5")
    assert f"TLSA lookup for {OWN_TLSA} failed" in resolution.reply.text
    assert f"{MX_HOST}'s own CNAME record is DNSSEC-validated, so {MX_HOST} is in a signed" in (
        resolution.reply.text
    )
    # Asked once, after the failed TLSA lookup, for the MX host's own name.
    assert questions.count((MX_HOST, "CNAME")) == 1
    assert questions.index((MX_HOST, "CNAME")) > questions.index((OWN_TLSA, "TLSA"))
    text = transcript.text
    assert f"CNAME {MX_HOST}: {EXPANDED}." in text
    assert (
        f"{MX_HOST}'s address records are not DNSSEC-validated, but they came through its "
        f"CNAME to {EXPANDED}, so its own CNAME record was asked for"
    ) in text


def test_an_unsigned_alias_into_an_unsigned_zone_whose_tlsa_lookup_fails_gets_no_dane(
    transport: SmtpTransport, provider_chain: Chain, tmp_path: Path
) -> None:
    with Mx(provider_chain, tmp_path) as mx:
        failing = f"_{mx.port}._tcp.{MX_HOST}"
        # An insecure delegation at mx.cname.test: the MX RRset is validated, the host is not.
        dns_zone = zone(mx.port, signed=["cname.test"], unsigned=[MX_HOST], servfail=[failing])
        with ScriptedDns(dns_zone) as server:
            transcript = now_transcript()
            resolution = route(resolver_for(server), DOMAIN, mx.port, transcript)
            questions = asked(server)
            target, reply = deliver(transport, resolution, transcript)
    assert reply.code == 250
    assert not isinstance(target, DaneTarget)
    assert target.tls is TlsPolicy.OPPORTUNISTIC
    assert (MX_HOST, "CNAME") in questions
    assert f"TLSA lookup for {failing} failed" in transcript.text
    assert f"DANE: {MX_HOST}'s CNAME record is not DNSSEC-validated either" in transcript.text
    assert "DANE does not apply" in transcript.text


def test_a_failed_cname_lookup_defers_the_host_with_its_reason() -> None:
    dns_zone = zone(PORT, signed=["cname.test"], servfail=[OWN_TLSA], failing=[(MX_HOST, "CNAME")])
    with ScriptedDns(dns_zone) as server:
        resolution, transcript = route_only(server)
        questions = asked(server)
    assert (MX_HOST, "CNAME") in questions
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.status) == (451, "4.7.5")
    reply = resolution.reply.text
    assert f"TLSA lookup for {OWN_TLSA} failed" in reply
    assert f"the CNAME lookup for {MX_HOST}, asked to tell whether it is in a DNSSEC-signed" in (
        reply
    )
    assert "failed too (" in reply
    assert "SERVFAIL" in reply.partition("failed too (")[2]
    assert "a failure is what a downgrade attack would cause" in reply
    assert str(resolution.reply) in transcript.text


@pytest.mark.parametrize(
    ("dns_zone", "outcome"),
    [
        # The MX host is no alias: its address answer's AD bit is its own zone's.
        (
            zone(PORT, mx_alias=False, unsigned=[MX_HOST], servfail=[OWN_TLSA]),
            "no dane",
        ),
        (zone(PORT, mx_alias=False, servfail=[OWN_TLSA]), "deferred"),
        # An alias whose chain is validated: the host's zone is known to be signed.
        (zone(PORT, servfail=[OWN_TLSA]), "deferred"),
        # An unvalidated alias whose TLSA lookup did not fail.
        (zone(PORT, signed=["cname.test"], at_original=[EE]), "dane"),
        (zone(PORT, signed=["cname.test"]), "no dane"),
        # An unvalidated alias whose AAAA lookup failed: a failure counts as validated.
        (
            zone(
                PORT,
                signed=["cname.test"],
                servfail=[OWN_TLSA],
                failing=[(MX_HOST, "AAAA")],
            ),
            "deferred",
        ),
    ],
    ids=[
        "no-alias-unsigned-tlsa-failed",
        "no-alias-signed-tlsa-failed",
        "validated-alias-tlsa-failed",
        "unvalidated-alias-tlsa-records",
        "unvalidated-alias-no-tlsa",
        "unvalidated-alias-address-failure-tlsa-failed",
    ],
)
def test_no_cname_question_is_asked_on_the_common_path(dns_zone: Zone, outcome: str) -> None:
    with ScriptedDns(dns_zone) as server:
        resolution, _ = route_only(server)
        questions = asked(server)
    assert [q for q in questions if q[1] == "CNAME"] == []
    if outcome == "deferred":
        assert resolution.targets == ()
        assert resolution.reply is not None
        assert resolution.reply.status == "4.7.5"
    else:
        [target] = resolution.targets
        assert isinstance(target, DaneTarget) is (outcome == "dane")


# The decision itself, from answers given by hand (the parts no zone above reaches).


MX = Target("192.0.2.1", 25, name=MX_HOST)
SECURE_MX = Lookup((f"10 {MX_HOST}.",), authenticated=True)


def test_a_failed_address_lookup_defers_the_host() -> None:
    """Whether the host is an alias cannot be told: asking its own name instead is what a
    forged failure would want when the records are at the expanded name."""
    table = {
        (DOMAIN, "MX"): SECURE_MX,
        (MX_HOST, "AAAA"): Lookup(failure="no nameserver answered"),
        (MX_HOST, "A"): Lookup(failure="no nameserver answered"),
        (f"_25._tcp.{MX_HOST}", "TLSA"): Lookup(missing=True, authenticated=True),
    }
    answers = Answers(table)
    resolution = Dane(answers).apply(DOMAIN, Resolution((MX,)), now_transcript())
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.status) == (451, "4.7.5")
    assert f"address lookup for {MX_HOST} failed" in resolution.reply.text
    assert not any(rdtype == "TLSA" for _, rdtype in answers.asked)


def test_one_family_is_enough_to_follow_the_chain() -> None:
    """The A answer followed the validated chain; the AAAA lookup failed: the host's address
    records are known, and so is its alias."""
    table = {
        (DOMAIN, "MX"): SECURE_MX,
        (MX_HOST, "AAAA"): Lookup(failure="timed out"),
        (MX_HOST, "A"): Lookup(("192.0.2.1",), authenticated=True, canonical=EXPANDED),
        (f"_25._tcp.{EXPANDED}", "TLSA"): Lookup((EE,), authenticated=True),
    }
    [target] = Dane(Answers(table)).apply(DOMAIN, Resolution((MX,)), now_transcript()).targets
    assert isinstance(target, DaneTarget)
    assert target.base_domain == EXPANDED


def test_validated_answers_naming_different_ends_follow_neither() -> None:
    table = {
        (DOMAIN, "MX"): SECURE_MX,
        (MX_HOST, "AAAA"): Lookup(("2001:db8::1",), authenticated=True, canonical="a.test"),
        (MX_HOST, "A"): Lookup(("192.0.2.1",), authenticated=True, canonical="b.test"),
        (f"_25._tcp.{MX_HOST}", "TLSA"): Lookup((EE,), authenticated=True),
    }
    transcript = now_transcript()
    answers = Answers(table)
    [target] = Dane(answers).apply(DOMAIN, Resolution((MX,)), transcript).targets
    assert isinstance(target, DaneTarget)
    assert target.base_domain == MX_HOST
    assert [name for name, rdtype in answers.asked if rdtype == "TLSA"] == [f"_25._tcp.{MX_HOST}"]
    assert "end at different names (a.test, b.test)" in transcript.text


def test_plan_uses_the_expanded_name_only_for_a_validated_chain() -> None:
    secure = TlsaAnswer((EE,), authenticated=True)
    used = plan(MX_HOST, 25, mx_secure=True, alias=Alias(EXPANDED, validated=True, tlsa=secure))
    assert (used.state, used.base_domain) == (DaneState.AUTHENTICATE, EXPANDED)
    unvalidated = plan(
        MX_HOST,
        25,
        mx_secure=True,
        records=(EE,),
        authenticated=True,
        alias=Alias(EXPANDED, validated=False, tlsa=secure),
    )
    assert (unvalidated.state, unvalidated.base_domain) == (DaneState.AUTHENTICATE, MX_HOST)
    none = plan(MX_HOST, 25, mx_secure=True, missing=True, alias=Alias(EXPANDED, validated=False))
    assert none.state is DaneState.NOT_APPLICABLE


@pytest.mark.parametrize(
    ("cname", "state"),
    [
        (CnameAnswer((f"{EXPANDED}.",), authenticated=True), DaneState.DEFER),
        # A validated denial is signed NSEC(3) records: the name's zone is signed all the same.
        (CnameAnswer(missing=True, authenticated=True), DaneState.DEFER),
        (CnameAnswer((f"{EXPANDED}.",)), DaneState.NOT_APPLICABLE),
        (CnameAnswer(missing=True), DaneState.NOT_APPLICABLE),
        (CnameAnswer(failure="timed out"), DaneState.DEFER),
        (None, DaneState.DEFER),  # not asked: as cautious as a failure
    ],
    ids=["signed", "signed-denial", "unsigned", "unsigned-denial", "failed", "not-asked"],
)
def test_plan_reads_the_cname_answer_of_an_unvalidated_alias_whose_tlsa_lookup_failed(
    cname: CnameAnswer | None, state: DaneState
) -> None:
    alias = Alias(EXPANDED, validated=False, cname=cname)
    decided = plan(MX_HOST, 25, mx_secure=True, failure="SERVFAIL", host_secure=False, alias=alias)
    assert decided.state is state
    if state is DaneState.DEFER:
        assert decided.reply is not None
        assert (decided.reply.code, decided.reply.status) == (451, "4.7.5")
    if cname is not None and cname.failure is not None:
        assert decided.reply is not None
        assert "failed too (timed out)" in decided.reply.text


def test_plan_does_not_read_the_cname_answer_where_it_does_not_decide() -> None:
    """A host whose addresses are validated waits anyway; a validated chain, or no alias, with
    unvalidated addresses: the host's zone is the one that answered, DANE does not apply."""
    signed = CnameAnswer((f"{EXPANDED}.",), authenticated=True)
    unsigned = CnameAnswer((f"{EXPANDED}.",))
    waits = plan(
        MX_HOST,
        25,
        mx_secure=True,
        failure="SERVFAIL",
        host_secure=True,
        alias=Alias(EXPANDED, validated=False, cname=unsigned),
    )
    assert waits.state is DaneState.DEFER
    for alias in (None, Alias(EXPANDED, validated=True, cname=signed)):
        decided = plan(
            MX_HOST, 25, mx_secure=True, failure="SERVFAIL", host_secure=False, alias=alias
        )
        assert decided.state is DaneState.NOT_APPLICABLE
