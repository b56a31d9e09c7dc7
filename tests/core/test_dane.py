"""DANE's pure part (RFC 7672): TLSA records read, which are usable, certificate matching for
each usage, selector and matching type, and the decision table of section 2.2."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spoolmail._core.dane import (
    DaneState,
    DaneTarget,
    TlsaInvalid,
    TlsaRecord,
    apply_plan,
    match,
    parse_tlsa,
    plan,
    subject_public_key_info,
    tlsa_name,
    usable,
)
from spoolmail._core.routing import Target, TlsPolicy
from tests.tlscerts import make_certificates


@pytest.fixture(scope="module")
def ders(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """The DER of the test server certificate, and of the rogue one (another key)."""
    made = make_certificates(tmp_path_factory.mktemp("danecerts"))

    def der(path: Path) -> bytes:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        return certificate.public_bytes(serialization.Encoding.DER)

    return der(made.server_certificate), der(made.rogue_certificate)


def record(usage: int, selector: int, matching: int, certificate: bytes) -> TlsaRecord:
    selected = certificate if selector == 0 else subject_public_key_info(certificate)
    if matching == 1:
        selected = hashlib.sha256(selected).digest()
    elif matching == 2:
        selected = hashlib.sha512(selected).digest()
    return TlsaRecord(usage, selector, matching, selected)


# Reading records.


def test_parse_reads_dnspythons_presentation_form() -> None:
    digest = "ab" * 32
    parsed = parse_tlsa(f"3 1 1 {digest[:40]} {digest[40:]}")
    assert parsed == TlsaRecord(3, 1, 1, bytes.fromhex(digest))
    assert str(parsed) == f"3 1 1 {digest}"


@pytest.mark.parametrize(
    "text",
    ["3 1 1", "3 1 x abcd", "3 256 1 abcd", "3 1 1 abc", "3 1 1 zz", "-3 1 1 abcd", "", "³ 1 1 ab"],
)
def test_parse_refuses_malformed_records(text: str) -> None:
    assert isinstance(parse_tlsa(text), TlsaInvalid)


def test_long_data_is_shortened_in_the_transcript() -> None:
    assert str(TlsaRecord(3, 0, 0, bytes(100))) == f"3 0 0 {'0' * 32}...(100 octets)"


@pytest.mark.parametrize(
    ("usage", "selector", "matching", "data", "why"),
    [
        (0, 0, 1, bytes(32), "PKIX-TA(0) is not used for SMTP (RFC 7672 section 3.1.3)"),
        (1, 1, 1, bytes(32), "PKIX-EE(1) is not used for SMTP (RFC 7672 section 3.1.3)"),
        (4, 1, 1, bytes(32), "certificate usage 4 is unknown"),
        (3, 2, 1, bytes(32), "selector 2 is unknown"),
        (3, 1, 3, bytes(32), "matching type 3 is unknown"),
        (3, 1, 1, bytes(31), "a matching type 1 digest is 32 octets, not 31"),
        (3, 1, 2, bytes(32), "a matching type 2 digest is 64 octets, not 32"),
        (3, 0, 0, b"", "the certificate association data is empty"),
    ],
)
def test_unusable_records(usage: int, selector: int, matching: int, data: bytes, why: str) -> None:
    assert usable(TlsaRecord(usage, selector, matching, data), chain_available=True) == why


def test_dane_ta_needs_the_chain() -> None:
    ta = TlsaRecord(2, 0, 1, bytes(32))
    assert "needs the server's certificate chain" in str(usable(ta, chain_available=False))
    assert usable(ta, chain_available=True) is None
    assert usable(TlsaRecord(3, 1, 1, bytes(32)), chain_available=False) is None


# Matching.


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("matching", [0, 1, 2])
def test_dane_ee_matches_the_leaf(ders: tuple[bytes, bytes], selector: int, matching: int) -> None:
    server, rogue = ders
    wanted = record(3, selector, matching, server)
    assert match([wanted], [server]) == wanted
    assert match([wanted], [rogue]) is None


def test_a_wrong_digest_does_not_match(ders: tuple[bytes, bytes]) -> None:
    server, _ = ders
    right = record(3, 1, 1, server)
    wrong = TlsaRecord(3, 1, 1, bytes(b ^ 1 for b in right.data))
    assert match([wrong], [server]) is None
    assert match([wrong, right], [server]) == right


def test_the_full_certificate_must_be_exact(ders: tuple[bytes, bytes]) -> None:
    server, _ = ders
    assert match([TlsaRecord(3, 0, 0, server[:-1])], [server]) is None
    assert match([TlsaRecord(3, 0, 0, server + b"\0")], [server]) is None


def test_selector_one_matches_the_key_not_the_certificate(ders: tuple[bytes, bytes]) -> None:
    server, _ = ders
    by_key = record(3, 1, 1, server)
    by_certificate = record(3, 0, 1, server)
    assert by_key.data != by_certificate.data
    assert match([TlsaRecord(3, 1, 1, by_certificate.data)], [server]) is None


def test_nothing_matches_without_a_certificate_or_a_readable_one(
    ders: tuple[bytes, bytes],
) -> None:
    server, _ = ders
    assert match([record(3, 0, 1, server)], []) is None
    assert match([TlsaRecord(3, 1, 0, b"junk")], [b"not a certificate"]) is None


def test_dane_ta_and_pkix_records_are_not_matched_against_the_leaf(
    ders: tuple[bytes, bytes],
) -> None:
    server, _ = ders
    for usage in (0, 1, 2):
        assert match([record(usage, 0, 1, server)], [server]) is None


# The decision (section 2.2).

HOST = "mx.example.net"
EE = "3 1 1 " + "ab" * 32


def test_tlsa_name() -> None:
    assert tlsa_name("MX.Example.NET.", 25) == "_25._tcp.mx.example.net"


def test_an_insecure_mx_rrset_means_no_dane() -> None:
    decided = plan(HOST, 25, mx_secure=False, records=[EE], authenticated=True)
    assert decided.state is DaneState.NOT_APPLICABLE


def test_no_tlsa_records_means_no_dane() -> None:
    decided = plan(HOST, 25, mx_secure=True, missing=True, authenticated=True)
    assert decided.state is DaneState.NOT_APPLICABLE
    assert decided.notes == ("DANE: no TLSA records at _25._tcp.mx.example.net",)


def test_unvalidated_tlsa_records_are_ignored() -> None:
    decided = plan(HOST, 25, mx_secure=True, records=[EE], authenticated=False)
    assert decided.state is DaneState.NOT_APPLICABLE
    assert "not DNSSEC-validated" in decided.notes[0]


def test_a_usable_record_means_authentication() -> None:
    decided = plan(HOST, 25, mx_secure=True, records=[EE, "0 0 1 " + "cd" * 32], authenticated=True)
    assert decided.state is DaneState.AUTHENTICATE
    assert decided.records == (parse_tlsa(EE),)
    assert "PKIX-TA(0) is not used for SMTP" in decided.notes[0]


def test_unusable_records_only_mean_tls_without_authentication() -> None:
    decided = plan(HOST, 25, mx_secure=True, records=["1 1 1 " + "ab" * 32], authenticated=True)
    assert decided.state is DaneState.ENCRYPT
    assert decided.records == ()
    assert "TLS required to mx.example.net, not authenticated" in decided.notes[-1]


def test_ta_records_without_the_chain_mean_tls_without_authentication() -> None:
    ta = "2 0 1 " + "ab" * 32
    assert plan(HOST, 25, mx_secure=True, records=[ta], authenticated=True).state is (
        DaneState.ENCRYPT
    )


def test_a_failed_tlsa_lookup_defers_the_host() -> None:
    decided = plan(HOST, 25, mx_secure=True, failure="no nameserver answered (SERVFAIL)")
    assert decided.state is DaneState.DEFER
    assert decided.reply is not None
    assert (decided.reply.code, decided.reply.status) == (451, "4.7.5")
    assert "TLSA lookup for _25._tcp.mx.example.net failed" in decided.reply.text


def test_a_failed_tlsa_lookup_in_an_unsigned_zone_means_no_dane() -> None:
    decided = plan(HOST, 25, mx_secure=True, failure="timed out", host_secure=False)
    assert decided.state is DaneState.NOT_APPLICABLE


def test_an_insecure_mx_rrset_wins_over_a_failed_lookup() -> None:
    decided = plan(HOST, 25, mx_secure=False, failure="timed out")
    assert decided.state is DaneState.NOT_APPLICABLE


# What a plan does to a target.

TARGET = Target("192.0.2.1", 25, name=HOST)


def test_authentication_makes_a_dane_target() -> None:
    decided = plan(HOST, 25, mx_secure=True, records=[EE], authenticated=True)
    made = apply_plan(TARGET, decided)
    assert isinstance(made, DaneTarget)
    assert made.tls is TlsPolicy.ENCRYPT
    assert made.tlsa == decided.records
    assert made.tlsa_name == "_25._tcp.mx.example.net"
    assert (made.host, made.port, made.name) == (TARGET.host, TARGET.port, TARGET.name)
    assert made != attrs_evolved(TARGET)  # a kept plain connection is never reused for it


def attrs_evolved(target: Target) -> Target:
    return Target(target.host, target.port, name=target.name, tls=TlsPolicy.ENCRYPT)


def test_no_usable_record_requires_tls() -> None:
    decided = plan(HOST, 25, mx_secure=True, records=["1 1 1 " + "ab" * 32], authenticated=True)
    assert apply_plan(TARGET, decided).tls is TlsPolicy.ENCRYPT
    required = Target("192.0.2.1", 25, name=HOST, tls=TlsPolicy.REQUIRED)
    assert apply_plan(required, decided) == required  # MTA-STS's stronger check stays


def test_dane_authentication_replaces_mta_sts_verification() -> None:
    decided = plan(HOST, 25, mx_secure=True, records=[EE], authenticated=True)
    required = Target("192.0.2.1", 25, name=HOST, tls=TlsPolicy.REQUIRED)
    assert isinstance(apply_plan(required, decided), DaneTarget)


def test_a_route_without_tls_is_left_alone() -> None:
    decided = plan(HOST, 25, mx_secure=True, records=[EE], authenticated=True)
    never = Target("192.0.2.1", 25, name=HOST, tls=TlsPolicy.NEVER)
    assert apply_plan(never, decided) == never


def test_not_applicable_leaves_the_target() -> None:
    decided = plan(HOST, 25, mx_secure=False)
    assert apply_plan(TARGET, decided) is TARGET


# The key as the certificate writes it (selector 1).


def _tlv(tag: int, content: bytes) -> bytes:
    """A DER element (definite length)."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _elements(data: bytes) -> list[bytes]:
    """The DER elements one after another in ``data``, each whole (tag, length, content)."""
    found, position = [], 0
    while position < len(data):
        size, start = data[position + 1], position + 2
        if size >= 0x80:
            count = size & 0x7F
            size, start = int.from_bytes(data[start : start + count], "big"), start + count
        found.append(data[position : start + size])
        position = start + size
    return found


def _content(element: bytes) -> bytes:
    """What follows an element's tag and length."""
    size = element[1]
    return element[2 + (size & 0x7F if size >= 0x80 else 0) :]


def test_the_key_of_every_kind_is_the_one_cryptography_writes(ders: tuple[bytes, bytes]) -> None:
    for der in ders:
        written = x509.load_der_x509_certificate(der).public_key()
        assert subject_public_key_info(der) == written.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def test_the_key_is_taken_as_the_certificate_writes_it_not_encoded_again() -> None:
    # An EC key written compressed (RFC 5480 section 2.2 allows it): decoded and encoded
    # again, it came out uncompressed, another string, and a 3 1 x record for the key as the
    # server's certificate holds it (what OpenSSL and Postfix hash) never matched.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.UTC)
    der = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    tbs, algorithm, signature = _elements(_content(der))
    fields = _elements(_content(tbs))
    uncompressed = fields[6]
    assert subject_public_key_info(der) == uncompressed
    identifier, _ = _elements(_content(uncompressed))
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    compressed = _tlv(0x30, identifier + _tlv(0x03, b"\x00" + point))
    fields[6] = compressed
    spliced = _tlv(0x30, _tlv(0x30, b"".join(fields)) + algorithm + signature)
    assert subject_public_key_info(spliced) == compressed
    assert match([record(3, 1, 1, spliced)], [spliced]) is not None


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",  # BER's indefinite length
        b"\x30\x03\x30\x01\x00",  # a TBSCertificate of one field
        b"\x31\x00",  # a SET, not a SEQUENCE
        b"\x30\x84\xff\xff\xff\xff\x00",  # a length past the end
        b"\x30\x85\x01\x00\x00\x00\x00\x00",  # a five-octet length
    ],
)
def test_a_certificate_that_is_not_der_of_that_shape_is_a_value_error(der: bytes) -> None:
    with pytest.raises(ValueError, match="cannot read the certificate"):
        subject_public_key_info(der)


def test_octets_after_the_certificate_are_refused(ders: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError, match="octets after its end"):
        subject_public_key_info(ders[0] + b"\x00")
    with pytest.raises(ValueError, match="cannot read the certificate"):
        subject_public_key_info(ders[0][:-1])
