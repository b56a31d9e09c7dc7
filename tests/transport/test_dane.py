"""DANE's lookups and what they do to MX targets (``spoolmail._transport.dane``), with a table
of answers standing in for the DNS (every ``Lookup`` field, the AD bit included, as
``DnsResolver.lookup`` returns them; the real resolver is in tests/integration/test_dane.py),
and the session's check after the handshake against aiosmtpd with the test certificate."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import BinaryIO

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spoolmail._core.dane import DaneTarget, TlsaRecord, subject_public_key_info
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing, Resolution
from spoolmail._transport.dane import Dane
from spoolmail._transport.dns import Lookup
from spoolmail._transport.smtp import SmtpTransport
from tests.smtpservers import SmtpServer
from tests.tlscerts import TestCertificates

EE = "3 1 1 " + "ab" * 32
MX1 = Target("192.0.2.1", 25, name="mx1.example.net")
MX2 = Target("192.0.2.2", 25, name="mx2.example.net")
SECURE_MX = Lookup(("10 mx1.example.net.", "20 mx2.example.net."), authenticated=True)


class Answers:
    """``lookup`` from a table of ``(name, type)``; anything else is NXDOMAIN."""

    def __init__(self, table: Mapping[tuple[str, str], Lookup]) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []

    def lookup(
        self, name: str, rdtype: str, transcript: Transcript, *, deadline: float | None = None
    ) -> Lookup:
        self.asked.append((name, rdtype))
        return self.table.get((name, rdtype), Lookup(missing=True))


def fresh() -> Transcript:
    return Transcript(clock=lambda: datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC))


def applied(table: Mapping[tuple[str, str], Lookup], *targets: Target) -> Resolution:
    return Dane(Answers(table)).apply("example.net", Resolution(targets), fresh())


def test_an_unvalidated_mx_rrset_leaves_the_targets() -> None:
    answers = Answers({("example.net", "MX"): Lookup(SECURE_MX.records)})
    transcript = fresh()
    resolution = Dane(answers).apply("example.net", Resolution((MX1,)), transcript)
    assert resolution.targets == (MX1,)
    assert answers.asked == [("example.net", "MX")]  # no TLSA lookup at all
    assert "not DNSSEC-validated (no AD bit): DANE does not apply" in transcript.text


def test_a_domain_without_mx_records_gets_no_dane() -> None:
    assert applied({}, MX1).targets == (MX1,)


def test_a_failed_mx_lookup_defers() -> None:
    resolution = applied({("example.net", "MX"): Lookup(failure="timed out")}, MX1)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert resolution.reply.status == "4.4.3"


def test_usable_records_make_dane_targets() -> None:
    table = {
        ("example.net", "MX"): SECURE_MX,
        ("_25._tcp.mx1.example.net", "TLSA"): Lookup((EE,), authenticated=True),
    }
    first, second = applied(table, MX1, MX2).targets
    assert isinstance(first, DaneTarget)
    assert first.tls is TlsPolicy.ENCRYPT
    assert first.tlsa == (TlsaRecord(3, 1, 1, bytes.fromhex("ab" * 32)),)
    assert second == MX2  # no TLSA records: opportunistic as before


def test_a_host_outside_the_validated_mx_rrset_gets_no_dane() -> None:
    other = Target("192.0.2.9", 25, name="other.example.org")
    table = {
        ("example.net", "MX"): SECURE_MX,
        ("_25._tcp.other.example.org", "TLSA"): Lookup((EE,), authenticated=True),
    }
    assert applied(table, other).targets == (other,)


def test_a_failed_tlsa_lookup_leaves_the_host_out_and_tries_the_next() -> None:
    table = {
        ("example.net", "MX"): SECURE_MX,
        ("_25._tcp.mx1.example.net", "TLSA"): Lookup(failure="no nameserver answered"),
        ("mx1.example.net", "A"): Lookup(("192.0.2.1",), authenticated=True),
    }
    assert applied(table, MX1, MX2).targets == (MX2,)


def test_when_every_host_fails_its_tlsa_lookup_the_domain_waits() -> None:
    table = {
        ("example.net", "MX"): SECURE_MX,
        ("_25._tcp.mx1.example.net", "TLSA"): Lookup(failure="no nameserver answered"),
        ("mx1.example.net", "A"): Lookup(("192.0.2.1",), authenticated=True),
    }
    second = Target("192.0.2.3", 25, name="mx1.example.net")
    resolution = applied(table, MX1, second)
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.status) == (451, "4.7.5")
    assert "TLSA lookup for _25._tcp.mx1.example.net failed" in resolution.reply.text


def test_a_failed_tlsa_lookup_for_a_host_in_an_unsigned_zone_means_no_dane() -> None:
    table = {
        ("example.net", "MX"): SECURE_MX,
        ("_25._tcp.mx1.example.net", "TLSA"): Lookup(failure="no nameserver answered"),
        ("mx1.example.net", "A"): Lookup(("192.0.2.1",)),
    }
    assert applied(table, MX1).targets == (MX1,)


def test_each_host_is_looked_up_once_per_delivery() -> None:
    answers = Answers({("example.net", "MX"): SECURE_MX})
    again = Target("2001:db8::1", 25, name="mx1.example.net")
    Dane(answers).apply("example.net", Resolution((MX1, again)), fresh())
    assert answers.asked.count(("_25._tcp.mx1.example.net", "TLSA")) == 1


def test_a_route_without_tls_is_not_changed_and_says_so() -> None:
    never = Target("192.0.2.1", 25, name="mx1.example.net", tls=TlsPolicy.NEVER)
    table = {
        ("example.net", "MX"): SECURE_MX,
        ("_25._tcp.mx1.example.net", "TLSA"): Lookup((EE,), authenticated=True),
    }
    transcript = fresh()
    resolution = Dane(Answers(table)).apply("example.net", Resolution((never,)), transcript)
    assert resolution.targets == (never,)
    assert "tls=never: DANE not applied" in transcript.text


# The session's check after the handshake.


def leaf_digest(certificates: TestCertificates) -> bytes:
    pem = certificates.server_certificate.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(subject_public_key_info(der)).digest()


def message(*recipients: str) -> Outgoing:
    data = b"Subject: DANE\r\n\r\nHello.\r\n"

    @contextlib.contextmanager
    def opened() -> Iterator[BinaryIO]:
        yield io.BytesIO(data)

    return Outgoing("q1", "alice@example.com", recipients, len(data), opened)


@pytest.mark.parametrize("matches", [True, False])
def test_the_session_checks_the_certificate(
    transport: SmtpTransport,
    transcript: Transcript,
    certificates: TestCertificates,
    matches: bool,
) -> None:
    digest = leaf_digest(certificates) if matches else bytes(32)
    with SmtpServer(tls_context=certificates.server_context()) as server:
        target = DaneTarget(
            server.host,
            server.port,
            name="anything.example",  # DANE-EE checks no name (RFC 7672 section 3.1.1)
            tls=TlsPolicy.ENCRYPT,
            tlsa=(TlsaRecord(3, 1, 1, digest),),
            tlsa_name=f"_{server.port}._tcp.anything.example",
        )
        replies = transport.send(target, message("bob@example.net"), transcript)
    [reply] = replies.values()
    if matches:
        assert reply.code == 250
        assert [m.tls for m in server.messages] == [True]
        assert "certificate matched TLSA 3 1 1" in transcript.text
    else:
        assert (reply.code, reply.status) == (451, "4.7.5")
        assert "none matched the certificate" in reply.text
        assert server.messages == []
