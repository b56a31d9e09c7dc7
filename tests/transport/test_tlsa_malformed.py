"""A TLSA RRset with a malformed record (RFC 6698 section 4.1, RFC 7671): the others are used.

dnspython 2.9 refuses a whole DNS message when one TLSA record's data has the wrong length for
its matching type (a 31-octet SHA-256 digest), and the lookup fails as if the server had; DANE
would then defer the host's mail until it expires (RFC 7672 section 2.2). ``DnsResolver`` asks
once more and reads the answer itself, keeping what dnspython can read. dnspython will not
build such a record either, so the answers here are assembled octet by octet (RFC 1035 section
4.1) and sent by :class:`~tests.transport.test_hostile_dns.ScriptedDns` on 127.0.0.1.
"""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from spoolmail._core.dane import DaneTarget, TlsaRecord
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Resolution
from spoolmail._transport.dane import Dane
from tests.transport.test_hostile_dns import Script, ScriptedDns, notes

pytestmark = pytest.mark.integration

DOMAIN = "example.test"
HOST = "mx.example.test"
TLSA_NAME = f"_25._tcp.{HOST}"
GOOD = bytes([3, 1, 1]) + bytes.fromhex("ab" * 32)
SHORT = bytes([3, 1, 1]) + bytes.fromhex("cd" * 31)  # a SHA-256 digest one octet short
MX = Target("127.0.0.11", 25, name=HOST)
AD = dns.flags.QR | dns.flags.RD | dns.flags.RA | dns.flags.AD
TLSA = dns.rdatatype.TLSA


def tlsa_answer(query: dns.message.Message, records: list[bytes], *, flags: int = AD) -> bytes:
    """The answer to ``query`` with ``records`` as its TLSA records' data, unchecked: the
    header, the question as asked, and each record owned by the question's name (a pointer to
    offset 12, RFC 1035 section 4.1.4), TTL 300."""
    question = query.question[0]
    wire = struct.pack("!HHHHHH", query.id, flags, 1, len(records), 0, 0)
    wire += question.name.to_wire() + struct.pack("!HH", question.rdtype, question.rdclass)
    for data in records:
        wire += struct.pack("!HHHIH", 0xC00C, TLSA, 1, 300, len(data)) + data
    return wire


def zone(tlsa: Script, *, address_ad: bool = True) -> Script:
    """Validated answers: ``example.test`` MX ``mx.example.test``, its A 127.0.0.11 (with AD
    unless ``address_ad`` is false), TLSA at ``_25._tcp.mx.example.test`` as ``tlsa`` says."""

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        question = query.question[0]
        if question.rdtype == TLSA:
            return tlsa(query, transport)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA | dns.flags.AD
        name = question.name.to_text()
        if question.rdtype == dns.rdatatype.MX and name == f"{DOMAIN}.":
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "MX", f"10 {HOST}."))
        elif question.rdtype == dns.rdatatype.A and name == f"{HOST}.":
            response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "127.0.0.11"))
            if not address_ad:
                response.flags &= ~dns.flags.AD
        return [response.to_wire()]

    return script


def answering(*records: bytes, flags: int = AD) -> Script:
    return zone(lambda query, transport: [tlsa_answer(query, list(records), flags=flags)])


def text(data: bytes) -> str:
    return f"{data[0]} {data[1]} {data[2]} {data[3:].hex()}"


def test_the_good_record_is_kept_and_the_malformed_one_is_noted(
    transcript: Transcript,
) -> None:
    with ScriptedDns(answering(GOOD, SHORT)) as server:
        found = server.resolver().lookup(TLSA_NAME, "TLSA", transcript)
    assert found.failure is None
    assert found.authenticated
    assert text(GOOD) in found.records
    assert text(SHORT) in found.records  # for DANE to judge, as dnspython cannot
    assert any("1 malformed record dnspython cannot read" in line for line in notes(transcript))


def test_through_dane_the_good_record_authenticates(transcript: Transcript) -> None:
    with ScriptedDns(answering(GOOD, SHORT)) as server:
        resolution = Dane(server.resolver()).apply(DOMAIN, Resolution((MX,)), transcript)
    [target] = resolution.targets
    assert isinstance(target, DaneTarget)
    assert target.tls is TlsPolicy.ENCRYPT
    assert target.tlsa == (TlsaRecord(3, 1, 1, GOOD[3:]),)
    assert "a matching type 1 digest is 32 octets, not 31" in transcript.text


def test_only_a_malformed_record_means_tls_without_authentication(
    transcript: Transcript,
) -> None:
    """An RRset whose one record is malformed has no usable record: RFC 7672 section 2.2 has
    TLS required without authentication (as Postfix, which reads the record and finds it
    unusable), not a failed lookup that holds the host's mail until it expires."""
    with ScriptedDns(answering(SHORT)) as server:
        found = server.resolver().lookup(TLSA_NAME, "TLSA", transcript)
        resolution = Dane(server.resolver()).apply(DOMAIN, Resolution((MX,)), transcript)
    assert found.failure is None
    assert found.records == (text(SHORT),)
    [target] = resolution.targets
    assert not isinstance(target, DaneTarget)
    assert target.tls is TlsPolicy.ENCRYPT


def test_a_record_too_short_for_its_fields_is_unusable_too(transcript: Transcript) -> None:
    with ScriptedDns(answering(GOOD, b"\x03\x01")) as server:
        found = server.resolver().lookup(TLSA_NAME, "TLSA", transcript)
        resolution = Dane(server.resolver()).apply(DOMAIN, Resolution((MX,)), transcript)
    assert found.records == (text(GOOD), "\\# 2 0301")
    [target] = resolution.targets
    assert isinstance(target, DaneTarget)
    assert target.tlsa == (TlsaRecord(3, 1, 1, GOOD[3:]),)


def test_without_the_ad_bit_the_answer_is_read_but_not_trusted(transcript: Transcript) -> None:
    unvalidated = AD & ~dns.flags.AD
    with ScriptedDns(answering(GOOD, SHORT, flags=unvalidated)) as server:
        found = server.resolver().lookup(TLSA_NAME, "TLSA", transcript)
    assert found.records == (text(GOOD), text(SHORT))
    assert not found.authenticated


def test_the_second_question_asks_for_ad_as_the_first(transcript: Transcript) -> None:
    asked: list[int] = []

    def tlsa(query: dns.message.Message, transport: str) -> list[bytes]:
        asked.append(query.flags & (dns.flags.AD | dns.flags.RD | dns.flags.CD))
        return [tlsa_answer(query, [GOOD, SHORT])]

    with ScriptedDns(zone(tlsa)) as server:
        resolver = server.resolver()
        resolver._dns().flags = dns.flags.RD | dns.flags.AD  # as MailService(dane=True) does
        found = resolver.lookup(TLSA_NAME, "TLSA", transcript)
    assert found.authenticated
    assert len(asked) >= 2  # dnspython's questions (it may ask again over UDP), then ours
    assert set(asked) == {dns.flags.RD | dns.flags.AD}


def test_over_tcp_too(transcript: Transcript) -> None:
    """Truncated over UDP: dnspython asks over TCP, refuses the answer there (``NoNameservers``
    at once, where over UDP it drops it and times out), and so does the second question."""

    def tlsa(query: dns.message.Message, transport: str) -> list[bytes]:
        if transport == "udp":
            return [tlsa_answer(query, [], flags=AD | dns.flags.TC)]
        return [tlsa_answer(query, [GOOD, SHORT])]

    with ScriptedDns(zone(tlsa)) as server:
        found = server.resolver().lookup(TLSA_NAME, "TLSA", transcript)
    assert found.records == (text(GOOD), text(SHORT))
    assert [q[0] for q in server.queries] == ["udp", "tcp", "udp", "tcp"]
    assert "no nameserver answered" in notes(transcript)[0]


def test_the_answer_read_so_is_cached_as_any_other(transcript: Transcript) -> None:
    with ScriptedDns(answering(GOOD, SHORT)) as server:
        resolver = server.resolver()
        first = resolver.lookup(TLSA_NAME, "TLSA", transcript)
        asked = len(server.queries)
        again = resolver.lookup(TLSA_NAME, "TLSA", transcript)
    assert again == first
    assert len(server.queries) == asked
    assert "(cached, " in notes(transcript)[-1]


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda query: b"\x00", id="a single octet"),
        pytest.param(
            lambda query: struct.pack("!HH", query.id, AD) + b"\xff" * 40,
            id="a header, then junk",
        ),
        pytest.param(
            lambda query: tlsa_answer(query, [SHORT])[:-5],
            id="a record cut short",
        ),
        pytest.param(
            lambda query: tlsa_answer(query, [SHORT, GOOD]) + b"\x00",
            id="trailing junk",
        ),
    ],
)
def test_garbage_for_tlsa_is_still_a_failure_and_defers(
    transcript: Transcript, garbage: object
) -> None:
    assert callable(garbage)
    with ScriptedDns(zone(lambda query, transport: [garbage(query)])) as server:
        found = server.resolver().lookup(TLSA_NAME, "TLSA", transcript)
        resolution = Dane(server.resolver()).apply(DOMAIN, Resolution((MX,)), transcript)
    assert found.failure is not None
    assert found.records == ()
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.status) == (451, "4.7.5")


def test_a_malformed_record_that_is_not_tlsa_is_not_read_leniently(
    transcript: Transcript,
) -> None:
    """An A record of three octets: dnspython refuses it, and so does the second reading."""

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        wire = bytearray(tlsa_answer(query, [GOOD]))
        wire[7] = 2  # two answer records: the TLSA one, and this A one
        return [bytes(wire) + struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 3) + b"\x7f\0\0"]

    with ScriptedDns(script) as server:
        found = server.resolver().lookup(TLSA_NAME, "TLSA", transcript)
    assert found.failure is not None


def test_an_a_lookup_is_not_asked_twice(transcript: Transcript) -> None:
    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        return [tlsa_answer(query, [SHORT])]  # type TLSA in the answer to an A query

    with ScriptedDns(script) as server:
        found = server.resolver().lookup(HOST, "A", transcript)
    assert found.failure is not None
    assert "asked" not in transcript.text
