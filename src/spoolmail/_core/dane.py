"""DANE for SMTP (RFC 7672): TLSA records read, what they make of an MX host, and whether a
server's certificate matches them.

:func:`parse_tlsa` reads one TLSA record as dnspython prints it (``3 1 1 <hex>``);
:func:`usable` says why a record cannot be used for SMTP, if it cannot; :func:`plan` is the
decision for one MX host from what the DNS said (section 2.2): DANE does not apply (opportunistic
TLS as usual), TLS with the certificate matched against the usable records, TLS without
authentication (a secure RRset with no usable record), or no delivery to that host for now (the
TLSA lookup failed, so nobody can tell). :func:`match` checks the server's certificates (DER)
against usable records; :func:`apply_plan` turns a plan into the target the transport gets
(:class:`DaneTarget`: ``TlsPolicy.ENCRYPT`` and the records, which the session checks after the
handshake).

Pure: no DNS, no socket, no ssl, and no ``cryptography``: a certificate's SubjectPublicKeyInfo
is read from its DER as it stands (:func:`subject_public_key_info`).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Sequence

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy

__all__ = [
    "DaneState",
    "DaneTarget",
    "Plan",
    "TlsaInvalid",
    "TlsaRecord",
    "apply_plan",
    "match",
    "parse_tlsa",
    "plan",
    "subject_public_key_info",
    "tlsa_name",
    "usable",
]

_HEX = re.compile(r"[0-9A-Fa-f]+")
_DIGEST_SIZES = {1: 32, 2: 64}  # SHA2-256 and SHA2-512 (RFC 6698 section 2.1.3)
_USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}  # RFC 7218 section 2.1


def tlsa_name(host: str, port: int) -> str:
    """Section 2.2.3 (RFC 6698 section 3): ``_25._tcp.mx.example.net``."""
    return f"_{port}._tcp.{host.lower().rstrip('.')}"


@attrs.frozen
class TlsaInvalid:
    """Why a TLSA record's text is not one."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@attrs.frozen
class TlsaRecord:
    """One TLSA record (RFC 6698 section 2.1): certificate usage, selector, matching type and
    the certificate association data."""

    usage: int
    selector: int
    matching: int
    data: bytes = attrs.field(repr=lambda data: data.hex())

    def __str__(self) -> str:
        shown = self.data.hex()
        if len(shown) > 64:
            shown = f"{shown[:32]}...({len(self.data)} octets)"
        return f"{self.usage} {self.selector} {self.matching} {shown}"


def parse_tlsa(text: str) -> TlsaRecord | TlsaInvalid:
    """A record from its presentation form (RFC 6698 section 2.2): three numbers 0-255, then
    the data in hexadecimal, which may be split by white space (dnspython splits it)."""
    fields = text.split()
    if len(fields) < 4:
        return TlsaInvalid(f"TLSA record {text[:80]!r} has fewer than four fields")
    numbers: list[int] = []
    for field in fields[:3]:
        # ASCII digits: str.isdigit() takes "²", which int() then refuses with a ValueError.
        if not (field.isascii() and field.isdigit()) or int(field) > 255:
            return TlsaInvalid(f"TLSA record {text[:80]!r}: {field!r} is not 0-255")
        numbers.append(int(field))
    data = "".join(fields[3:])
    if not _HEX.fullmatch(data) or len(data) % 2:
        return TlsaInvalid(f"TLSA record {text[:80]!r}: the data is not hexadecimal octets")
    return TlsaRecord(numbers[0], numbers[1], numbers[2], bytes.fromhex(data))


def usable(record: TlsaRecord, *, chain_available: bool) -> str | None:  # noqa: PLR0911
    """Why ``record`` cannot be used to authenticate an SMTP server, or ``None`` if it can.

    Section 3.1: DANE-EE(3) and DANE-TA(2) are for SMTP; PKIX-TA(0) and PKIX-EE(1) are not
    (section 3.1.3: there is no agreed set of trusted CAs for MTAs). DANE-TA(2) needs the
    certificate chain the server sent, which Python's ssl gives only from 3.13
    (``SSLSocket.get_unverified_chain``): without it (``chain_available`` false) TA records are
    treated as unusable. Unknown selectors or matching types (RFC 6698 section 4.1: records
    "with unknown parameters" are unusable), and digests of the wrong length, which could
    never match, are unusable too.
    """
    name = _USAGES.get(record.usage)
    if record.usage in (0, 1):
        return f"{name}({record.usage}) is not used for SMTP (RFC 7672 section 3.1.3)"
    if name is None:
        return f"certificate usage {record.usage} is unknown"
    if record.selector not in (0, 1):
        return f"selector {record.selector} is unknown"
    if record.matching not in (0, 1, 2):
        return f"matching type {record.matching} is unknown"
    size = _DIGEST_SIZES.get(record.matching)
    if size is not None and len(record.data) != size:
        return f"a matching type {record.matching} digest is {size} octets, not {len(record.data)}"
    if not record.data:
        return "the certificate association data is empty"
    if record.usage == 2 and not chain_available:
        return (
            "DANE-TA(2) needs the server's certificate chain, which this Python's ssl does not "
            "give (3.13+: get_unverified_chain); treated as unusable"
        )
    return None


class DaneState(enum.Enum):
    """What DANE makes of one MX host."""

    NOT_APPLICABLE = "not applicable"
    """Opportunistic TLS as without DANE (insecure MX or TLSA data, or no TLSA records)."""
    AUTHENTICATE = "authenticate"
    """TLS required, and the certificate must match a usable record."""
    ENCRYPT = "encrypt"
    """TLS required, not authenticated: a secure TLSA RRset, none of it usable."""
    DEFER = "defer"
    """No delivery to this host now: whether DANE applies cannot be told."""


@attrs.frozen
class Plan:
    """The decision for one MX host: the state, the usable records, the transcript's notes,
    and the reply when the host is not to be tried."""

    state: DaneState
    records: tuple[TlsaRecord, ...] = ()
    notes: tuple[str, ...] = ()
    reply: Reply | None = None


def plan(  # noqa: PLR0911 (one return per rule of section 2.2)
    host: str,
    port: int,
    *,
    mx_secure: bool,
    records: Sequence[str] = (),
    missing: bool = False,
    failure: str | None = None,
    authenticated: bool = False,
    host_secure: bool = True,
    chain_available: bool = False,
) -> Plan:
    """What DANE makes of MX host ``host``, from the DNS answers (section 2.2).

    ``mx_secure``: the MX RRset that named the host was validated (the AD bit). ``records``,
    ``missing``, ``failure``, ``authenticated``: the TLSA lookup at ``_port._tcp.host``.
    ``host_secure``: the host's address records were validated (asked only when the TLSA
    lookup failed).

    - An insecure MX RRset: DANE does not apply to its hosts (section 2.2.1: an attacker who
      can forge the MX records chooses the hosts, and their TLSA records with them).
    - A failed TLSA lookup (SERVFAIL, timeout; a validating resolver's answer to bogus data):
      the host is not tried now (sections 2.1.1 and 2.2.3: the client cannot tell whether
      TLSA records exist, and treating the failure as "none" is what a downgrade attack
      would want), ``451 4.7.5`` as Postfix gives for it; the next MX host may still be tried.
      Unless the host's address records are insecure: in an unsigned zone no TLSA record can
      be secure, and some broken nameservers fail TLSA queries there (Postfix does not ask
      them at all), so DANE does not apply.
    - No TLSA records (NXDOMAIN, NODATA), or an unvalidated TLSA RRset: DANE does not apply
      (section 2.2: only secure TLSA records count).
    - A secure RRset with a usable record: TLS required, the certificate matched against the
      usable records (section 2.2, section 3).
    - A secure RRset with no usable record: TLS required, without authentication (section 2.2:
      "Any connection to the MTA MUST be made via TLS, but authentication is not required";
      section 2.2.3: no delivery "unless a TLS session is negotiated via STARTTLS").
    """
    name = tlsa_name(host, port)
    if not mx_secure:
        return Plan(DaneState.NOT_APPLICABLE)
    if failure is not None:
        if not host_secure:
            note = (
                f"DANE: TLSA lookup for {name} failed ({failure}), and {host}'s address "
                "records are not DNSSEC-validated: DANE does not apply"
            )
            return Plan(DaneState.NOT_APPLICABLE, notes=(note,))
        text = (
            f"TLSA lookup for {name} failed ({failure}): cannot tell whether DANE applies to "
            f"{host}; not delivering through it now (RFC 7672 section 2.2.3)"
        )
        return Plan(DaneState.DEFER, reply=Reply(451, "4.7.5", text))
    if missing or not records:
        return Plan(DaneState.NOT_APPLICABLE, notes=(f"DANE: no TLSA records at {name}",))
    if not authenticated:
        note = f"DANE: TLSA records at {name} are not DNSSEC-validated (no AD bit): ignored"
        return Plan(DaneState.NOT_APPLICABLE, notes=(note,))
    good: list[TlsaRecord] = []
    notes: list[str] = []
    for text in records:
        parsed = parse_tlsa(text)
        why = str(parsed) if isinstance(parsed, TlsaInvalid) else None
        if isinstance(parsed, TlsaRecord):
            why = usable(parsed, chain_available=chain_available)
            if why is None:
                good.append(parsed)
                continue
            why = f"{parsed}: {why}"
        notes.append(f"DANE: unusable TLSA record at {name}: {why}")
    if good:
        shown = ", ".join(str(r) for r in good)
        notes.append(f"DANE: TLS required to {host}, the certificate must match {shown}")
        return Plan(DaneState.AUTHENTICATE, tuple(good), tuple(notes))
    notes.append(
        f"DANE: no usable TLSA record at {name}: TLS required to {host}, not authenticated "
        "(RFC 7672 section 2.2)"
    )
    return Plan(DaneState.ENCRYPT, (), tuple(notes))


@attrs.frozen
class DaneTarget(Target):
    """A target DANE authenticates: STARTTLS required (``TlsPolicy.ENCRYPT``, so no CA check),
    and after the handshake the certificate must match one of ``tlsa`` (usable records)."""

    tlsa: tuple[TlsaRecord, ...] = ()
    tlsa_name: str = ""


def apply_plan(target: Target, dane: Plan) -> Target:
    """``target`` as ``dane`` wants it reached (the plan must not be ``DEFER``).

    A route whose TLS policy is ``NEVER`` (an operator's per-domain override) is left alone.
    Authentication replaces MTA-STS's CA check (``REQUIRED``) for the host: RFC 8461 section 2
    leaves a host with DANE TLSA records to DANE.
    """
    if target.tls is TlsPolicy.NEVER or dane.state in (DaneState.NOT_APPLICABLE, DaneState.DEFER):
        return target
    if dane.state is DaneState.ENCRYPT:
        if target.tls is TlsPolicy.OPPORTUNISTIC:
            return attrs.evolve(target, tls=TlsPolicy.ENCRYPT)
        return target
    fields = attrs.asdict(target, recurse=False)
    fields["tls"] = TlsPolicy.ENCRYPT
    name = tlsa_name(target.name or target.host, target.port)
    return DaneTarget(**fields, tlsa=dane.records, tlsa_name=name)


def subject_public_key_info(certificate: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER certificate (selector 1, RFC 6698 section 2.1.2),
    its octets as they stand in the certificate.

    RFC 6698 hashes the SPKI as the certificate encodes it, and so do OpenSSL and Postfix. A
    key decoded and encoded again (cryptography's ``public_bytes``) is another string for an
    EC point written compressed, and no string at all for a key type cryptography does not
    know (RSA-PSS) or a certificate it refuses (an X.509 version past 3, which OpenSSL hands
    over when it checks no CA): the record could never match. So the certificate's DER is
    walked to its seventh field (sixth without a version): nothing else of it is read.

    Raises :class:`ValueError` when the certificate is not DER of that shape."""
    _, start, end = _der_tlv(certificate, 0, _SEQUENCE)  # Certificate
    _, position, tbs_end = _der_tlv(certificate, start, _SEQUENCE)  # TBSCertificate
    if end != len(certificate):
        raise ValueError("cannot read the certificate: octets after its end")
    # version [0] EXPLICIT (absent in X.509 v1), serialNumber, signature, issuer, validity,
    # subject, subjectPublicKeyInfo (RFC 5280 section 4.1).
    fields = 6
    if position < tbs_end and certificate[position] == _VERSION:
        fields = 7
    for _ in range(fields - 1):
        position = _der_tlv(certificate, position, None, limit=tbs_end)[2]
    _, _, spki_end = _der_tlv(certificate, position, _SEQUENCE, limit=tbs_end)
    return certificate[position:spki_end]


_SEQUENCE = 0x30
_VERSION = 0xA0  # [0] EXPLICIT, constructed


def _der_tlv(
    data: bytes, offset: int, tag: int | None, *, limit: int | None = None
) -> tuple[int, int, int]:
    """The DER element at ``offset`` (of ``tag`` when given): its tag, where its content starts
    and where it ends, within ``limit`` (the enclosing element's end)."""
    limit = len(data) if limit is None else limit
    if offset + 2 > limit:
        raise ValueError("cannot read the certificate: it ends inside an element")
    found, first = data[offset], data[offset + 1]
    if tag is not None and found != tag:
        raise ValueError(f"cannot read the certificate: tag {found:#04x} where {tag:#04x} is")
    if found & 0x1F == 0x1F:
        raise ValueError("cannot read the certificate: a multi-octet tag")
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > limit:  # BER's indefinite form, or absurd
            raise ValueError("cannot read the certificate: a length DER does not write")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    if start + length > limit:
        raise ValueError("cannot read the certificate: an element longer than what holds it")
    return found, start, start + length


def _associated(record: TlsaRecord, certificate: bytes) -> bool:
    """Whether ``certificate`` (DER) is what ``record`` names (RFC 6698 section 2.1)."""
    if record.selector == 0:
        selected = certificate
    else:
        try:
            selected = subject_public_key_info(certificate)
        except ValueError:
            return False
    if record.matching == 1:
        selected = hashlib.sha256(selected).digest()
    elif record.matching == 2:  # SHA2-512 (RFC 6698 section 2.1.3)
        selected = hashlib.sha512(selected).digest()
    return selected == record.data


def match(records: Iterable[TlsaRecord], chain: Sequence[bytes]) -> TlsaRecord | None:
    """The first usable record the server's certificates match, or ``None``.

    ``chain`` is the server's certificates, DER, its own (the leaf) first. DANE-EE(3) records
    are matched against the leaf alone, with no name or expiry check (section 3.1.1: the key
    in DNS is the authentication). DANE-TA(2) records are not matched here: this release
    treats them as unusable (see :func:`usable`).
    """
    if not chain:
        return None
    leaf = chain[0]
    for record in records:
        if record.usage == 3 and _associated(record, leaf):  # DANE-EE
            return record
    return None
