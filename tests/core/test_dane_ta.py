"""DANE-TA(2) (RFC 7672 section 3.1.2, RFC 7671 section 5.2.2): the chain the server sent,
checked against TLSA records naming a trust anchor in it, at a given time, for the reference
names (``spoolmail._core.dane.match_trust_anchor`` and ``authenticate``). Certificates are made
in memory (tests/tlscerts.py) with fixed dates; nothing here reads a clock or a file."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spoolmail._core import dane
from spoolmail._core.dane import (
    MAX_CHAIN,
    Matched,
    TlsaRecord,
    Unmatched,
    authenticate,
    match_trust_anchor,
    subject_public_key_info,
)
from tests.tlscerts import Chain, Issued, issue_authority, issue_server

pytest.importorskip("cryptography.x509.verification")

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC)
NAMES = ("mx1.example.net", "example.net")  # the MX host, then the next-hop domain
YEAR = timedelta(days=365)


def authority(name: str, issuer: Issued | None = None) -> Issued:
    return issue_authority(name, issuer=issuer, not_before=T0, not_after=T0 + YEAR)


@pytest.fixture(scope="module")
def chain() -> Chain:
    root = authority("root")
    intermediate = authority("intermediate", root)
    leaf = issue_server(intermediate, ("mx1.example.net",), not_before=T0, not_after=T0 + YEAR)
    return Chain(root, intermediate, leaf)


def spki_sha256(certificate: Issued) -> TlsaRecord:
    return TlsaRecord(2, 1, 1, hashlib.sha256(subject_public_key_info(certificate.der)).digest())


def checked(
    record: TlsaRecord, ders: list[bytes], *, names: tuple[str, ...] = NAMES, now: datetime = NOW
) -> Matched | Unmatched:
    return match_trust_anchor([record], ders, names=names, now=now)


def test_an_intermediate_named_by_its_key_is_a_trust_anchor(chain: Chain) -> None:
    found = checked(spki_sha256(chain.intermediate), chain.ders)
    assert isinstance(found, Matched)
    assert found.record == spki_sha256(chain.intermediate)
    assert "trust anchor CN=intermediate" in found.how
    assert "(certificate 2 of 2), chain verified for mx1.example.net" in found.how


def test_the_root_sent_in_the_chain_is_a_trust_anchor(chain: Chain) -> None:
    record = TlsaRecord(2, 0, 1, hashlib.sha256(chain.root.der).digest())
    found = checked(record, [*chain.ders, chain.root.der])
    assert isinstance(found, Matched)
    assert "certificate 3 of 3" in found.how


def test_a_whole_certificate_record_matching_type_0(chain: Chain) -> None:
    found = checked(TlsaRecord(2, 0, 0, chain.intermediate.der), chain.ders)
    assert isinstance(found, Matched)


def test_the_next_hop_domain_is_a_reference_name(chain: Chain) -> None:
    """RFC 7672 section 3.2.2: a certificate for the next-hop domain does for its MX host."""
    leaf = issue_server(chain.intermediate, ("example.net",), not_before=T0, not_after=T0 + YEAR)
    found = checked(spki_sha256(chain.intermediate), [leaf.der, chain.intermediate.der])
    assert isinstance(found, Matched)
    assert "chain verified for example.net" in found.how


def test_a_leaf_for_another_name_is_refused(chain: Chain) -> None:
    found = checked(spki_sha256(chain.intermediate), chain.ders, names=("mx2.example.net",))
    assert isinstance(found, Unmatched)
    assert "no matching subjectAltName for mx2.example.net" in str(found)


@pytest.mark.parametrize(
    ("pattern", "verified"),
    [("*.example.net", True), ("*.net", False), ("mx*.example.net", False)],
)
def test_a_wildcard_only_as_the_leftmost_label(chain: Chain, pattern: str, verified: bool) -> None:
    leaf = issue_server(chain.intermediate, (pattern,), not_before=T0, not_after=T0 + YEAR)
    found = checked(
        spki_sha256(chain.intermediate),
        [leaf.der, chain.intermediate.der],
        names=("mx1.example.net",),
    )
    assert isinstance(found, Matched) is verified


def test_an_expired_leaf_is_refused_at_the_given_time(chain: Chain) -> None:
    leaf = issue_server(
        chain.intermediate, ("mx1.example.net",), not_before=T0, not_after=NOW - timedelta(1)
    )
    record = spki_sha256(chain.intermediate)
    found = checked(record, [leaf.der, chain.intermediate.der])
    assert isinstance(found, Unmatched)
    assert "not valid at validation time" in str(found)
    assert isinstance(checked(record, [leaf.der, chain.intermediate.der], now=T0), Matched)


def test_a_leaf_the_trust_anchor_did_not_sign_is_refused(chain: Chain) -> None:
    forged = issue_server(
        chain.intermediate,
        ("mx1.example.net",),
        not_before=T0,
        not_after=T0 + YEAR,
        signer=ec.generate_private_key(ec.SECP256R1()),
    )
    found = checked(spki_sha256(chain.intermediate), [forged.der, chain.intermediate.der])
    assert isinstance(found, Unmatched)
    assert "signature" in str(found)


def test_an_intermediate_that_is_not_a_ca_is_refused(chain: Chain) -> None:
    """The root is the trust anchor; the certificate between it and the leaf says it is no CA."""
    not_ca = issue_authority(
        "not a CA", issuer=chain.root, not_before=T0, not_after=T0 + YEAR, ca=False
    )
    leaf = issue_server(not_ca, ("mx1.example.net",), not_before=T0, not_after=T0 + YEAR)
    record = TlsaRecord(2, 0, 1, hashlib.sha256(chain.root.der).digest())
    found = checked(record, [leaf.der, not_ca.der, chain.root.der])
    assert isinstance(found, Unmatched)
    assert "basicConstraints" in str(found)


def test_a_record_matching_no_certificate_of_the_chain(chain: Chain) -> None:
    found = checked(TlsaRecord(2, 1, 1, bytes(32)), chain.ders)
    assert isinstance(found, Unmatched)
    assert "names none of the 1 certificates above the leaf" in str(found)


def test_a_record_naming_the_leaf_is_no_trust_anchor(chain: Chain) -> None:
    found = checked(spki_sha256(chain.leaf), chain.ders)
    assert isinstance(found, Unmatched)
    assert "names none" in str(found)


def test_a_chain_of_eleven_certificates_is_refused(chain: Chain) -> None:
    ders = [*chain.ders, *[chain.root.der] * (MAX_CHAIN + 1 - len(chain.ders))]
    assert len(ders) == 11
    found = checked(spki_sha256(chain.intermediate), ders)
    assert isinstance(found, Unmatched)
    assert "(11 certificates" in str(found)
    assert isinstance(checked(spki_sha256(chain.intermediate), ders[:MAX_CHAIN]), Matched)


def test_the_leaf_alone_is_no_chain(chain: Chain) -> None:
    found = checked(spki_sha256(chain.intermediate), chain.ders[:1])
    assert isinstance(found, Unmatched)
    assert "without the chain" in str(found)


def test_without_cryptography_ta_records_match_nothing(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> None:
        raise ImportError("No module named 'cryptography'")

    monkeypatch.setattr(dane, "_import_verification", missing)
    assert "pip install 'spoolmail[dane]'" in str(dane.verification_problem())
    found = checked(spki_sha256(chain.intermediate), chain.ders)
    assert isinstance(found, Unmatched)
    assert "needs cryptography 45 or later" in str(found)


def test_dane_ee_first_and_unchanged(chain: Chain) -> None:
    """authenticate: a DANE-EE(3) record matching the leaf needs no name and no date."""
    ee = TlsaRecord(3, 1, 1, spki_sha256(chain.leaf).data)
    far = NOW + 10 * YEAR
    found = authenticate([spki_sha256(chain.intermediate), ee], chain.ders, names=(), now=far)
    assert isinstance(found, Matched)
    assert found.record == ee
    assert "DANE-EE" in found.how
    found = authenticate([spki_sha256(chain.intermediate)], chain.ders, names=NAMES, now=NOW)
    assert isinstance(found, Matched)
    assert "DANE-TA" in found.how


def test_a_ca_whose_key_usage_forbids_signing_certificates_is_refused(chain: Chain) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no signing")]))
        .issuer_name(chain.root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + YEAR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(chain.root.key, hashes.SHA256())
    )
    middle = Issued(key, certificate)
    leaf = issue_server(middle, ("mx1.example.net",), not_before=T0, not_after=T0 + YEAR)
    record = TlsaRecord(2, 0, 1, hashlib.sha256(chain.root.der).digest())
    found = checked(record, [leaf.der, middle.der, chain.root.der])
    assert isinstance(found, Unmatched)
    assert "keyCertSign" in str(found)


def legacy_leaf(chain: Chain, common_name: str, **dates: datetime) -> Issued:
    """A leaf with no subjectAltName: named by its subject's common name alone."""
    dates.setdefault("not_before", T0)
    dates.setdefault("not_after", T0 + YEAR)
    return issue_server(
        chain.intermediate,
        (common_name,),
        alternative_names=False,
        **dates,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("common_name", "verified"),
    [
        ("mx1.example.net", True),
        ("MX1.Example.NET.", True),
        ("example.net", True),  # the next-hop domain
        ("*.example.net", True),
        ("*.net", False),
        ("mx*.example.net", False),
        ("mx2.example.net", False),
    ],
)
def test_a_leaf_without_a_dns_alternative_name_is_matched_by_its_common_name(
    chain: Chain, common_name: str, verified: bool
) -> None:
    """RFC 6125 section 6.4.4's fallback, as Postfix's DANE-TA: no DNS-ID, so the CN-ID."""
    leaf = legacy_leaf(chain, common_name)
    found = checked(spki_sha256(chain.intermediate), [leaf.der, chain.intermediate.der])
    assert isinstance(found, Matched) is verified
    if verified:
        assert isinstance(found, Matched)
        assert "the leaf's common name: it has no DNS name in a subjectAltName" in found.how
    else:
        assert "the leaf has no DNS name in a subjectAltName, and its common name" in str(found)


def test_a_reference_name_is_no_pattern_for_a_common_name(chain: Chain) -> None:
    leaf = legacy_leaf(chain, "*.example.net")
    ders = [leaf.der, chain.intermediate.der]
    for name in ("*.example.net", "a.*.example.net"):  # an MX host named so matches nothing
        found = checked(spki_sha256(chain.intermediate), ders, names=(name,))
        assert isinstance(found, Unmatched)


def test_the_common_name_is_not_read_when_the_leaf_has_dns_alternative_names(
    chain: Chain,
) -> None:
    leaf = issue_server(
        chain.intermediate,
        ("mx2.example.net",),
        common_name="mx1.example.net",
        not_before=T0,
        not_after=T0 + YEAR,
    )
    found = checked(spki_sha256(chain.intermediate), [leaf.der, chain.intermediate.der])
    assert isinstance(found, Unmatched)
    assert "no matching subjectAltName for mx1.example.net" in str(found)


def test_a_leaf_named_by_its_common_name_still_needs_a_verified_chain(chain: Chain) -> None:
    expired = legacy_leaf(chain, "mx1.example.net", not_after=T0 + timedelta(days=2))
    found = checked(spki_sha256(chain.intermediate), [expired.der, chain.intermediate.der])
    assert isinstance(found, Unmatched)
    assert "chain not verified" in str(found)
    stranger = authority("stranger")
    forged = issue_server(
        stranger, ("mx1.example.net",), alternative_names=False, not_before=T0, not_after=T0 + YEAR
    )
    found = checked(spki_sha256(chain.intermediate), [forged.der, chain.intermediate.der])
    assert isinstance(found, Unmatched)
