"""Throwaway TLS certificates for tests, made at test time with ``cryptography``.

:func:`make_certificates` writes into a directory (a session-scoped temporary one, see
``tests/transport/conftest.py``) a test CA, a server certificate it signs for
:data:`SERVER_NAMES` and :data:`SERVER_ADDRESSES`, and a "rogue" certificate for the same names
signed by a second CA that nothing trusts. :class:`TestCertificates` turns them into
:class:`ssl.SSLContext` objects: a server context for aiosmtpd's STARTTLS and a client context
trusting only the test CA. No key is ever committed; each test session makes new ones (EC P-256,
a few milliseconds). Certificates carry the extensions strict verification wants (basic
constraints, key usage, key identifiers), so they pass ``VERIFY_X509_STRICT`` too.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "SERVER_ADDRESSES",
    "SERVER_NAMES",
    "Chain",
    "Issued",
    "TestCertificates",
    "issue_authority",
    "issue_server",
    "make_certificates",
    "make_chain",
]

SERVER_NAMES = ("mx1.example.test", "localhost")
SERVER_ADDRESSES = ("127.0.0.1", "::1")
_VALIDITY = datetime.timedelta(days=2)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "spoolmail tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _now() -> datetime.datetime:
    # An hour back, so a clock a little behind the one that signed still accepts it.
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)


def _authority(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _server(
    authority: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    names: tuple[str, ...],
    addresses: tuple[str, ...],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key, ca_certificate = authority
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def _write(
    directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
) -> tuple[Path, Path]:
    key_path = directory / f"{stem}.key"
    certificate_path = directory / f"{stem}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, certificate_path


@attrs.frozen
class TestCertificates:
    """PEM files of the test CA and of two server certificates, and contexts made from them."""

    __test__ = False  # not a pytest test class, whatever its name

    ca: Path
    server_certificate: Path
    server_key: Path
    rogue_certificate: Path
    rogue_key: Path

    def server_context(self, *, rogue: bool = False) -> ssl.SSLContext:
        """A server context with the trusted certificate, or (``rogue``) the untrusted one."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if rogue:
            context.load_cert_chain(self.rogue_certificate, self.rogue_key)
        else:
            context.load_cert_chain(self.server_certificate, self.server_key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts the test CA and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca))


def make_certificates(
    directory: Path,
    *,
    names: tuple[str, ...] = SERVER_NAMES,
    addresses: tuple[str, ...] = SERVER_ADDRESSES,
) -> TestCertificates:
    """Make a CA, a server certificate it signs and a rogue one (another CA's, for the same
    ``names`` and ``addresses``), as PEM files in ``directory``."""
    authority = _authority("spoolmail test CA")
    _, ca = _write(directory, "ca", *authority)
    server_key, server_certificate = _write(
        directory, "server", *_server(authority, names, addresses)
    )
    rogue_key, rogue_certificate = _write(
        directory, "rogue", *_server(_authority("spoolmail rogue CA"), names, addresses)
    )
    return TestCertificates(
        ca=ca,
        server_certificate=server_certificate,
        server_key=server_key,
        rogue_certificate=rogue_certificate,
        rogue_key=rogue_key,
    )


# A chain for DANE-TA(2): a root CA, an intermediate it signs, a leaf the intermediate signs, made
# in memory (tests/core) or written out for a TLS server showing leaf and intermediate.


@attrs.frozen
class Issued:
    """A key and its certificate, in memory."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def issue_authority(
    common_name: str,
    *,
    issuer: Issued | None = None,
    path_length: int | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    ca: bool = True,
) -> Issued:
    """A CA certificate: self-signed without ``issuer``, else signed by it (an intermediate).
    ``ca=False`` makes one whose basicConstraints deny it is a CA (a broken intermediate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now()
    signer = issuer.key if issuer is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.certificate.subject if issuer is not None else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    )
    return Issued(key, builder.sign(signer, hashes.SHA256()))


def issue_server(
    issuer: Issued,
    names: tuple[str, ...],
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    signer: ec.EllipticCurvePrivateKey | None = None,
    common_name: str | None = None,
    alternative_names: bool = True,
) -> Issued:
    """A server certificate for ``names`` (subjectAltName DNS names) issued by ``issuer``;
    ``signer``, when given, signs it instead of the issuer's key (a forged issuer). Its subject's
    common name is ``common_name`` or the first name; ``alternative_names=False`` leaves the
    subjectAltName out (a legacy certificate named by its common name alone)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name or names[0]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
    return Issued(key, builder.sign(signer or issuer.key, hashes.SHA256()))


@attrs.frozen
class Chain:
    """Root CA, intermediate and leaf, in memory; :meth:`server_context` shows the leaf and the
    intermediate (not the root, as most servers do)."""

    root: Issued
    intermediate: Issued
    leaf: Issued

    @property
    def ders(self) -> list[bytes]:
        """What the server sends: the leaf, then the intermediate."""
        return [self.leaf.der, self.intermediate.der]

    def server_context(self, directory: Path) -> ssl.SSLContext:
        stem = f"chain-{self.leaf.certificate.serial_number:x}"
        key_path, certificate_path = _write(directory, stem, self.leaf.key, self.leaf.certificate)
        intermediate = self.intermediate.certificate.public_bytes(serialization.Encoding.PEM)
        certificate_path.write_bytes(certificate_path.read_bytes() + intermediate)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate_path, key_path)
        return context


def make_chain(names: tuple[str, ...] = SERVER_NAMES) -> Chain:
    """A root, an intermediate (path length 0) and a leaf for ``names``."""
    root = issue_authority("spoolmail test root")
    intermediate = issue_authority("spoolmail test intermediate", issuer=root, path_length=0)
    return Chain(root, intermediate, issue_server(intermediate, names))
