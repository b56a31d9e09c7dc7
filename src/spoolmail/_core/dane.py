"""DANE for SMTP (RFC 7672): TLSA records read, what they make of an MX host, and whether a
server's certificate matches them.

:func:`parse_tlsa` reads one TLSA record as dnspython prints it (``3 1 1 <hex>``);
:func:`usable` says why a record cannot be used for SMTP, if it cannot; :func:`plan` is the
decision for one MX host from what the DNS said (section 2.2): DANE does not apply (opportunistic
TLS as usual), TLS with the certificate matched against the usable records, TLS without
authentication (a secure RRset with no usable record), or no delivery to that host for now (the
TLSA lookup failed, so nobody can tell); and whose records those are, the TLSA base domain: the
host's name, or the name its DNSSEC-validated CNAME chain ends at (:class:`Alias`, section
2.2.2, RFC 7671 section 7); and, for an alias whose chain is not validated, whether its own
name is in a signed zone all the same (:class:`CnameAnswer`). :func:`authenticate` checks the
server's certificates (DER, the chain it sent) against usable records: DANE-EE(3) against the
leaf, DANE-TA(2) by verifying the chain to the certificate a record names (:func:`match` is
the DANE-EE part alone); :func:`apply_plan` turns a plan into the target the transport gets
(:class:`DaneTarget`: ``TlsPolicy.ENCRYPT``, the records and the names a DANE-TA chain must be
issued for, which the session checks after the handshake).

Pure: no DNS, no socket, no ssl, no clock (the time a chain is checked at is an argument). A
certificate's SubjectPublicKeyInfo is read from its DER as it stands
(:func:`subject_public_key_info`); the DANE-TA chain check (signatures, dates, basic constraints,
names) is ``cryptography``'s X.509 verifier, a library like ``hashlib`` doing arithmetic on
bytes, imported only when a DANE-TA record is checked (the optional ``dane`` extra): without it
those records are unusable (:func:`verification_problem`).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.x509 import verification

__all__ = [
    "DANE_EE_MATCHED",
    "MAX_CHAIN",
    "MAX_CHAIN_OCTETS",
    "Alias",
    "CnameAnswer",
    "DaneState",
    "DaneTarget",
    "Matched",
    "Plan",
    "TlsaAnswer",
    "TlsaInvalid",
    "TlsaRecord",
    "Unmatched",
    "apply_plan",
    "authenticate",
    "match",
    "match_trust_anchor",
    "parse_tlsa",
    "plan",
    "subject_public_key_info",
    "tlsa_name",
    "usable",
    "verification_problem",
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


def usable(  # noqa: PLR0911
    record: TlsaRecord, *, chain_available: bool, chain_problem: str | None = None
) -> str | None:
    """Why ``record`` cannot be used to authenticate an SMTP server, or ``None`` if it can.

    Section 3.1: DANE-EE(3) and DANE-TA(2) are for SMTP; PKIX-TA(0) and PKIX-EE(1) are not
    (section 3.1.3: there is no agreed set of trusted CAs for MTAs). DANE-TA(2) needs the
    certificate chain the server sent (Python's ssl: ``get_unverified_chain``, private before
    3.13) and a chain check (``cryptography``'s verifier): without either (``chain_available``
    false; ``chain_problem`` says which) TA records are treated as unusable. Unknown selectors
    or matching types (RFC 6698 section 4.1: records "with unknown parameters" are unusable),
    and digests of the wrong length, which could never match, are unusable too.
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
        why = chain_problem or "this Python's ssl does not give it (get_unverified_chain)"
        return (
            f"DANE-TA(2) needs the server's certificate chain checked, and {why}; treated as "
            "unusable"
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
    the reply when the host is not to be tried, and the TLSA base domain whose records decided
    (the host's name, or where its validated CNAME chain led: :class:`Alias`)."""

    state: DaneState
    records: tuple[TlsaRecord, ...] = ()
    notes: tuple[str, ...] = ()
    reply: Reply | None = None
    base_domain: str = ""


@attrs.frozen
class TlsaAnswer:
    """What the DNS said to one TLSA question: the records (presentation form), NXDOMAIN or
    NODATA (``missing``), why there was no answer (``failure``: SERVFAIL, a timeout), and the
    AD bit (``authenticated``)."""

    records: tuple[str, ...] = ()
    missing: bool = False
    failure: str | None = None
    authenticated: bool = False

    @property
    def secure(self) -> bool:
        """A DNSSEC-validated TLSA RRset is here: its owner is the TLSA base domain."""
        return self.failure is None and bool(self.records) and self.authenticated


@attrs.frozen
class CnameAnswer:
    """What the DNS said when asked for the CNAME record of an MX host itself: the record
    (``records``), NXDOMAIN or NODATA (``missing``), why there was no answer (``failure``), and
    the AD bit (``authenticated``).

    A CNAME question is answered with the alias's own RRset, not chased into the zone of its
    target (RFC 1034 section 3.6.2), so its AD bit is that of the first link of the host's
    chain alone: whether the host's own name is in a DNSSEC-signed zone, where a TLSA RRset at
    ``_port._tcp.<host>`` can be validated even when the chain leads into an unsigned zone and
    the address answer carries no AD bit (RFC 7672 section 2.2.2; Postfix asks the same
    question)."""

    records: tuple[str, ...] = ()
    missing: bool = False
    failure: str | None = None
    authenticated: bool = False

    @property
    def signed(self) -> bool:
        """The answer is DNSSEC-validated, records or a denial: the host's name is in a signed
        zone (a validated denial is signed NSEC or NSEC3 records of that zone)."""
        return self.failure is None and self.authenticated


@attrs.frozen
class Alias:
    """An MX host whose address records were reached through a CNAME chain: ``name`` is where
    the chain ends (the fully CNAME-expanded name); ``validated``, that the answer which
    followed it carried the AD bit (every link of the chain and the address records are
    DNSSEC-validated, "secure"); ``tlsa``, the TLSA lookup at ``_port._tcp.<name>``, asked only
    when ``validated`` (RFC 7672 section 2.2.2, RFC 7671 section 7); ``cname``, the answer to a
    CNAME question for the host itself (:class:`CnameAnswer`), asked only when the chain is not
    validated and the TLSA lookup at the host's own name failed (``None``: not asked)."""

    name: str
    validated: bool
    tlsa: TlsaAnswer = TlsaAnswer()
    cname: CnameAnswer | None = None


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
    chain_problem: str | None = None,
    alias: Alias | None = None,
    address_failure: str | None = None,
) -> Plan:
    """What DANE makes of MX host ``host``, from the DNS answers (section 2.2).

    ``mx_secure``: the MX RRset that named the host was validated (the AD bit), or for a domain
    without MX records, the denial was (the implicit MX, section 2.2.2). ``records``,
    ``missing``, ``failure``, ``authenticated``: the TLSA lookup at ``_port._tcp.host``.
    ``host_secure``: the host's address records were validated (read only when that TLSA
    lookup failed). ``chain_available``: DANE-TA(2) records can be checked (``chain_problem``:
    why not, for the notes; see :func:`usable`). ``alias``: the host is a CNAME, and where its
    chain led (:class:`Alias`). ``address_failure``: the host's address lookup failed, so
    whether it is an alias cannot be told.

    - An insecure MX RRset: DANE does not apply to its hosts (section 2.2.1: an attacker who
      can forge the MX records chooses the hosts, and their TLSA records with them).
    - The host's address lookup failed: not tried now, ``451 4.7.5`` (section 2.2.2 finds the
      TLSA base domain from that answer; guessing the host is no alias would ask the wrong
      name, and a failure is what an attacker can cause, section 2.1.1).
    - A validated CNAME chain (RFC 7672 section 2.2.2, RFC 7671 section 7): TLSA records are
      looked for at the fully expanded name first. A validated RRset there is used, and the
      expanded name is the TLSA base domain; none there (NXDOMAIN, NODATA, or records without
      the AD bit) sends the lookup on to the host's own name, as below; a failed lookup there
      is a failed TLSA lookup (the host waits, the original name is not asked instead: that
      is the downgrade a forged failure would want). A chain not validated end to end (the
      AD bit missing on the answer that followed it): the expanded name is never asked, an
      attacker may have chosen it.
    - A failed TLSA lookup (SERVFAIL, timeout; a validating resolver's answer to bogus data):
      the host is not tried now (sections 2.1.1 and 2.2.3: the client cannot tell whether
      TLSA records exist, and treating the failure as "none" is what a downgrade attack
      would want), ``451 4.7.5`` as Postfix gives for it; the next MX host may still be tried.
      Unless the host's address records are insecure: in an unsigned zone no TLSA record can
      be secure, and some broken nameservers fail TLSA queries there (Postfix does not ask
      them at all), so DANE does not apply. But insecure address records of an alias whose
      chain is not validated end to end say nothing of the host's own zone: a signed alias
      may lead into an unsigned zone, and its own name still have a secure TLSA RRset (section
      2.2.2: the host is in a signed zone when the first link of its chain is). Then
      ``alias.cname``, the answer to a CNAME question for the host, decides: validated, the
      host is in a signed zone and waits as above; not validated, DANE does not apply; failed
      (or never asked), the host waits too, since a failure is what an attacker who wants
      DANE off would cause (section 2.1.1).
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
    if address_failure is not None:
        text = (
            f"address lookup for {host} failed ({address_failure}): cannot tell where its TLSA "
            "records are (RFC 7672 section 2.2.2); not delivering through it now"
        )
        return Plan(DaneState.DEFER, reply=Reply(451, "4.7.5", text))
    notes: list[str] = []
    if alias is not None and not alias.validated:
        notes.append(
            f"DANE: {host} is an alias of {alias.name}, but the CNAME chain is not "
            f"DNSSEC-validated end to end: TLSA records looked for at {name} only (RFC 7672 "
            "section 2.2.2)"
        )
    elif alias is not None:
        expanded = tlsa_name(alias.name, port)
        found = alias.tlsa
        if found.failure is not None:
            text = (
                f"TLSA lookup for {expanded} ({host} is an alias of {alias.name}) failed "
                f"({found.failure}): cannot tell whether DANE applies to {host}; not delivering "
                "through it now (RFC 7672 section 2.2.3)"
            )
            return Plan(DaneState.DEFER, reply=Reply(451, "4.7.5", text))
        if found.secure:
            notes.append(
                f"DANE: {host} is an alias of {alias.name} (a DNSSEC-validated CNAME chain, "
                f"followed): the TLSA records at {expanded} are used, {alias.name} is the TLSA "
                "base domain (RFC 7672 section 2.2.2, RFC 7671 section 7)"
            )
            return _decided(
                host,
                alias.name,
                port,
                found.records,
                notes,
                chain_available=chain_available,
                chain_problem=chain_problem,
            )
        none = (
            "TLSA records that are not DNSSEC-validated (no AD bit), ignored"
            if found.records
            else "no TLSA records"
        )
        notes.append(
            f"DANE: {host} is an alias of {alias.name} (a DNSSEC-validated CNAME chain, "
            f"followed), and {expanded} has {none}: looking at {name} (RFC 7671 section 7)"
        )
    if failure is not None:
        return _failed(host, name, failure, host_secure=host_secure, alias=alias, notes=notes)
    if missing or not records:
        return Plan(DaneState.NOT_APPLICABLE, notes=(*notes, f"DANE: no TLSA records at {name}"))
    if not authenticated:
        note = f"DANE: TLSA records at {name} are not DNSSEC-validated (no AD bit): ignored"
        return Plan(DaneState.NOT_APPLICABLE, notes=(*notes, note))
    return _decided(
        host,
        host,
        port,
        records,
        notes,
        chain_available=chain_available,
        chain_problem=chain_problem,
    )


def _failed(
    host: str,
    name: str,
    failure: str,
    *,
    host_secure: bool,
    alias: Alias | None,
    notes: list[str],
) -> Plan:
    """The plan when the TLSA lookup at ``name``, the host's own ``_port._tcp.<host>``, failed
    (see :func:`plan`): the host waits unless it is known to be in an unsigned zone."""
    text = (
        f"TLSA lookup for {name} failed ({failure}): cannot tell whether DANE applies to "
        f"{host}; not delivering through it now (RFC 7672 section 2.2.3)"
    )
    if host_secure:
        return Plan(DaneState.DEFER, reply=Reply(451, "4.7.5", text))
    if alias is None or alias.validated:
        note = (
            f"DANE: TLSA lookup for {name} failed ({failure}), and {host}'s address "
            "records are not DNSSEC-validated: DANE does not apply"
        )
        return Plan(DaneState.NOT_APPLICABLE, notes=(*notes, note))
    # The address answer followed the chain into the target's zone; its missing AD bit may be
    # that zone's, not the host's (RFC 7672 section 2.2.2).
    link = alias.cname
    asked = (
        f"DANE: TLSA lookup for {name} failed ({failure}); {host}'s address records are not "
        f"DNSSEC-validated, but they came through its CNAME to {alias.name}, so its own CNAME "
        f"record was asked for (answered from {host}'s zone alone) to tell whether {host} is in "
        "a signed zone (RFC 7672 section 2.2.2)"
    )
    if link is None or link.failure is not None:
        why = "was not asked" if link is None else f"failed too ({link.failure})"
        text = (
            f"TLSA lookup for {name} failed ({failure}), and the CNAME lookup for {host}, asked "
            "to tell whether it is in a DNSSEC-signed zone (its address records, reached "
            f"through its CNAME to {alias.name}, are not validated), {why}: cannot tell whether "
            f"DANE applies to {host}, and a failure is what a downgrade attack would cause; not "
            "delivering through it now (RFC 7672 sections 2.1.1, 2.2.2, 2.2.3)"
        )
        return Plan(DaneState.DEFER, notes=(*notes, asked), reply=Reply(451, "4.7.5", text))
    if link.signed:
        text = (
            f"TLSA lookup for {name} failed ({failure}): {host}'s own CNAME record is "
            f"DNSSEC-validated, so {host} is in a signed zone, where TLSA records can be, though "
            f"the rest of its chain, to {alias.name}, is not: cannot tell whether DANE applies "
            f"to {host}; not delivering through it now (RFC 7672 sections 2.2.2, 2.2.3)"
        )
        return Plan(DaneState.DEFER, notes=(*notes, asked), reply=Reply(451, "4.7.5", text))
    note = (
        f"DANE: {host}'s CNAME record is not DNSSEC-validated either: {host} is not in a signed "
        "zone, DANE does not apply"
    )
    return Plan(DaneState.NOT_APPLICABLE, notes=(*notes, asked, note))


def _decided(
    host: str,
    base: str,
    port: int,
    records: Sequence[str],
    notes: list[str],
    *,
    chain_available: bool,
    chain_problem: str | None,
) -> Plan:
    """The plan for a validated TLSA RRset at ``_port._tcp.<base>``, the TLSA base domain of
    ``host``: its usable records, or TLS without authentication when none is."""
    name = tlsa_name(base, port)
    good: list[TlsaRecord] = []
    for text in records:
        parsed = parse_tlsa(text)
        why = str(parsed) if isinstance(parsed, TlsaInvalid) else None
        if isinstance(parsed, TlsaRecord):
            why = usable(parsed, chain_available=chain_available, chain_problem=chain_problem)
            if why is None:
                good.append(parsed)
                continue
            why = f"{parsed}: {why}"
        notes.append(f"DANE: unusable TLSA record at {name}: {why}")
    base = base.lower().rstrip(".")
    if good:
        shown = ", ".join(str(r) for r in good)
        notes.append(
            f"DANE: TLS required to {host}, the certificate must match {shown} (TLSA records "
            f"at {name})"
        )
        return Plan(DaneState.AUTHENTICATE, tuple(good), tuple(notes), base_domain=base)
    notes.append(
        f"DANE: no usable TLSA record at {name}: TLS required to {host}, not authenticated "
        "(RFC 7672 section 2.2)"
    )
    return Plan(DaneState.ENCRYPT, (), tuple(notes), base_domain=base)


@attrs.frozen
class DaneTarget(Target):
    """A target DANE authenticates: STARTTLS required (``TlsPolicy.ENCRYPT``, so no CA check),
    and after the handshake the certificate must match one of ``tlsa`` (usable records).

    ``base_domain`` is the TLSA base domain the records were found under (``tlsa_name`` is
    their owner, ``_port._tcp.<base_domain>``): the MX host's name, or the name its
    DNSSEC-validated CNAME chain ends at (:class:`Alias`). The session sends it as SNI (RFC
    7672 section 8.1, RFC 7671 section 7). ``next_hop`` is the domain the MX host was found
    for. Both are the names a chain verified by a DANE-TA(2) record may be issued for
    (:attr:`reference_names`). They are part of the target, so a connection authenticated for
    one domain is not kept for another's mail."""

    tlsa: tuple[TlsaRecord, ...] = ()
    tlsa_name: str = ""
    next_hop: str = ""
    base_domain: str = ""

    @property
    def reference_names(self) -> tuple[str, ...]:
        """The names a DANE-TA(2) chain's leaf may be issued for, RFC 7672 section 3.2.2: the
        TLSA base domain, first ("the primary reference identifier", RFC 7671 section 7), and
        the next-hop domain. When the base domain is the expanded name of a CNAME chain, the
        MX host's own (unexpanded) name is not one of them: the records are the expanded
        host's, and its certificate names it (Postfix checks the same names: the base domain
        and the next-hop domain). For a domain without MX records (the implicit MX) the
        next-hop domain is that domain, the original name itself. ``base_domain`` unset (a
        target made by hand): the name the target was found under."""
        names: list[str] = []
        for given in (self.base_domain or self.name or self.host, self.next_hop):
            name = given.lower().rstrip(".")
            if name and name not in names:
                names.append(name)
        return tuple(names)


def apply_plan(target: Target, dane: Plan, *, next_hop: str = "") -> Target:
    """``target`` as ``dane`` wants it reached (the plan must not be ``DEFER``); ``next_hop``
    is the domain whose MX records named it (see :class:`DaneTarget`).

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
    base = dane.base_domain or (target.name or target.host).lower().rstrip(".")
    return DaneTarget(
        **fields,
        tlsa=dane.records,
        tlsa_name=tlsa_name(base, target.port),
        next_hop=next_hop,
        base_domain=base,
    )


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
    """The first DANE-EE(3) record the server's certificate matches, or ``None``.

    ``chain`` is the server's certificates, DER, its own (the leaf) first. DANE-EE(3) records
    are matched against the leaf alone, with no name or expiry check (section 3.1.1: the key
    in DNS is the authentication). DANE-TA(2) records are not matched here (they need names
    and a time): :func:`authenticate` checks both kinds.
    """
    if not chain:
        return None
    leaf = chain[0]
    for record in records:
        if record.usage == 3 and _associated(record, leaf):  # DANE-EE
            return record
    return None


MAX_CHAIN = 10
"""The most certificates of a server's chain read for DANE-TA(2): a chain is hostile input, and
real ones have two to four (leaf, one or two intermediates, perhaps the root)."""
MAX_CHAIN_OCTETS = 100_000
"""The most octets of certificates read: OpenSSL's client takes no more by default either."""


@attrs.frozen
class Matched:
    """A usable record the server's certificates satisfy, and how, for the transcript."""

    record: TlsaRecord
    how: str


@attrs.frozen
class Unmatched:
    """No usable record was satisfied: why, record by record where there is more to say than
    "the certificate is not the one named"."""

    reasons: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def verification_problem() -> str | None:
    """Why DANE-TA(2) chains cannot be checked with what is installed, or ``None``: the check
    is ``cryptography``'s X.509 verifier with its extension policies (45 and later)."""
    try:
        _import_verification()
    except ImportError as error:
        return (
            f"the chain check needs cryptography 45 or later ({error}): "
            "pip install 'spoolmail[dane]'"
        )
    return None


def _import_verification() -> None:
    """Import what the chain check uses (one place, so tests can take it away)."""
    from cryptography.x509.verification import (  # noqa: PLC0415, F401 (the optional extra)
        ExtensionPolicy,
        PolicyBuilder,
    )


DANE_EE_MATCHED = "DANE-EE: name and dates not checked, RFC 7672 section 3.1.1"


def authenticate(
    records: Iterable[TlsaRecord],
    chain: Sequence[bytes],
    *,
    names: Sequence[str],
    now: datetime,
) -> Matched | Unmatched:
    """Whether the server's certificates satisfy one of the usable ``records`` (section 3):
    :func:`match` for DANE-EE(3) records (tried first, being cheaper), then
    :func:`match_trust_anchor` for DANE-TA(2) ones."""
    records = list(records)
    found = match(records, chain)
    if found is not None:
        return Matched(found, DANE_EE_MATCHED)
    return match_trust_anchor(records, chain, names=names, now=now)


def match_trust_anchor(
    records: Iterable[TlsaRecord],
    chain: Sequence[bytes],
    *,
    names: Sequence[str],
    now: datetime,
) -> Matched | Unmatched:
    """The DANE-TA(2) record the server's chain satisfies, or why none does.

    ``chain`` is the certificates the server sent, DER, the leaf first; ``names`` the reference
    identifiers (:attr:`DaneTarget.reference_names`); ``now`` the time the dates are checked at.
    Section 3.1.2 and RFC 7671 section 5.2.2: the record names a certificate the server sent
    above its leaf (section 3.1.2: servers "MUST" include the trust anchor in their chain, so a
    record naming a key alone, absent from the chain, is not looked for); that certificate is
    the trust anchor; the leaf must chain to it (signatures, dates at ``now``, basic
    constraints and path lengths) and be issued for one of ``names`` (section 3.2.2;
    subjectAltName DNS names, a wildcard only as the whole leftmost label, RFC 6125 section
    6.4.3). A record naming the leaf itself is not a trust anchor (that is what DANE-EE
    records are for). A chain longer than :data:`MAX_CHAIN` certificates or
    :data:`MAX_CHAIN_OCTETS` is not checked at all. Other records are ignored.
    """
    anchors = [r for r in records if r.usage == 2]
    if not anchors:
        return Unmatched()
    refused = _chain_refused(chain)
    if refused is not None:
        return Unmatched((f"DANE-TA: {refused}",))
    reasons: list[str] = []
    for record in anchors:
        depths = [
            d
            for d in range(1, len(chain))
            if chain[d] != chain[0] and _associated(record, chain[d])
        ]
        if not depths:
            reasons.append(
                f"DANE-TA {record}: names none of the {len(chain) - 1} certificates above the leaf"
            )
            continue
        for depth in depths:
            verified = _verify_chain(chain, depth, names=names, now=now)
            if isinstance(verified, _Verified):
                how = (
                    f"DANE-TA: trust anchor {verified.anchor} (certificate {depth + 1} of "
                    f"{len(chain)}), chain verified for {verified.name}, RFC 7672 section 3.1.2"
                )
                return Matched(record, how)
            reasons.append(f"DANE-TA {record}: {verified}")
    return Unmatched(tuple(reasons))


def _chain_refused(chain: Sequence[bytes]) -> str | None:
    """Why ``chain`` is not checked against DANE-TA records at all, or ``None``."""
    if not chain:
        return "the server sent no certificate"
    octets = sum(len(c) for c in chain)
    if len(chain) > MAX_CHAIN or octets > MAX_CHAIN_OCTETS:
        return (
            f"the server's chain ({len(chain)} certificates, {octets} octets) is longer than "
            f"the {MAX_CHAIN} certificates or {MAX_CHAIN_OCTETS} octets checked"
        )
    if len(chain) == 1:
        return "the server sent its certificate alone, without the chain to a trust anchor"
    return verification_problem()


@attrs.frozen
class _Verified:
    anchor: str
    name: str


def _verify_chain(
    chain: Sequence[bytes], depth: int, *, names: Sequence[str], now: datetime
) -> _Verified | str:
    """Whether ``chain[0]`` chains to ``chain[depth]`` (the trust anchor) through the other
    certificates, at ``now``, for one of ``names``: the names verified for, or why not."""
    from cryptography import x509  # noqa: PLC0415 (the optional extra)
    from cryptography.x509 import verification  # noqa: PLC0415

    try:
        certificates = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as error:
        return f"a certificate of the chain cannot be read ({_shown(error)})"
    leaf, anchor = certificates[0], certificates[depth]
    intermediates = [c for i, c in enumerate(certificates) if i not in (0, depth)]
    if not _dns_names(leaf):
        return _verify_by_common_name(leaf, anchor, intermediates, names=names, now=now)
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store([anchor]))
        .time(now)
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(ca_policy=_ca_policy(), ee_policy=_ee_policy())
    )
    errors: list[str] = []
    for name in names:
        try:
            subject = x509.DNSName(name)
        except ValueError:
            errors.append(f"{name!r} is not a DNS name the check takes")
            continue
        try:
            builder.build_server_verifier(subject).verify(leaf, intermediates)
        except (verification.VerificationError, ValueError) as error:
            errors.append(f"{name}: {_shown(error)}")
            continue
        return _Verified(_subject_shown(anchor), name)
    if not errors:
        return "no name to verify the chain for"
    return "chain not verified for " + "; ".join(errors)


def _subject_shown(certificate: x509.Certificate) -> str:
    try:
        return _shown(certificate.subject.rfc4514_string())
    except ValueError:  # a subject cryptography can read but not write out
        return "(a subject that cannot be shown)"


def _dns_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names of a certificate's subjectAltName (none without one)."""
    from cryptography import x509  # noqa: PLC0415 (the optional extra)

    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value.get_values_for_type(x509.DNSName))


def _verify_by_common_name(
    leaf: x509.Certificate,
    anchor: x509.Certificate,
    intermediates: list[x509.Certificate],
    *,
    names: Sequence[str],
    now: datetime,
) -> _Verified | str:
    """A leaf with no DNS name in a subjectAltName: the chain verified as for a server, with no
    name, then the subject's common name matched against ``names`` (RFC 6125 section 6.4.4's
    fallback, which Postfix's DANE-TA applies too; a wildcard only as the whole leftmost
    label)."""
    from cryptography.x509 import verification  # noqa: PLC0415 (the optional extra)
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    builder = (
        verification.PolicyBuilder()
        .store(verification.Store([anchor]))
        .time(now)
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(ca_policy=_ca_policy(), ee_policy=_ee_policy(need_names=False))
    )
    try:
        # The client verifier checks the path and the policies above, and names nothing.
        builder.build_client_verifier().verify(leaf, intermediates)
    except (verification.VerificationError, ValueError) as error:
        return f"chain not verified: {_shown(error)}"
    common = [
        value
        for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(value := attribute.value, str)
    ]
    for name in names:
        if any(_common_name_matches(value, name) for value in common):
            how = f"{name} (the leaf's common name: it has no DNS name in a subjectAltName)"
            return _Verified(_subject_shown(anchor), how)
    shown = ", ".join(_shown(value) for value in common[:3]) or "none"
    return (
        f"chain not verified for {' or '.join(names) or 'no name'}: the leaf has no DNS name in "
        f"a subjectAltName, and its common name ({shown}) is none of them"
    )


def _common_name_matches(value: str, name: str) -> bool:
    """Whether a certificate's common name ``value`` is the DNS name ``name``: equal but for
    case and a final dot, or ``*.`` for exactly the leftmost label of a name of three labels or
    more."""
    value, name = value.strip().rstrip(".").lower(), name.rstrip(".").lower()
    if not value or not name or "*" in name:  # a reference name is no pattern
        return False
    if value.startswith("*."):
        first, dot, rest = name.partition(".")
        return bool(first) and bool(dot) and rest.count(".") >= 1 and value[2:] == rest
    return value == name


def _ca_policy() -> verification.ExtensionPolicy:
    """What intermediates (and the trust anchor's path length) must satisfy: RFC 5280 as
    OpenSSL (and so Postfix) applies it, not the CA/Browser Forum's profile, since DANE-TA is
    mostly private CAs (RFC 7671 section 5.2). The verifier itself requires basicConstraints
    with cA asserted and honours pathLenConstraint; a keyUsage, when there is one, must allow
    certificate signing."""
    from cryptography import x509  # noqa: PLC0415 (the optional extra)
    from cryptography.x509.verification import Criticality, ExtensionPolicy  # noqa: PLC0415

    def key_usage(_: object, __: object, usage: x509.KeyUsage | None) -> None:
        if usage is not None and not usage.key_cert_sign:
            raise ValueError("a CA certificate whose keyUsage does not allow keyCertSign")

    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, key_usage)
    )


def _ee_policy(*, need_names: bool = True) -> verification.ExtensionPolicy:
    """What the leaf must satisfy: a subjectAltName (its DNS names are matched; without
    ``need_names``, for a leaf that has no DNS name there, its subject's common name is, RFC
    6125 section 6.4.4), and an extendedKeyUsage, when there is one, that allows serverAuth. No
    authorityKeyIdentifier demanded (the CA/Browser Forum's rule, which private CAs need not
    follow). Unknown critical extensions are refused."""
    from cryptography import x509  # noqa: PLC0415 (the optional extra)
    from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415
    from cryptography.x509.verification import Criticality, ExtensionPolicy  # noqa: PLC0415

    def extended_key_usage(_: object, __: object, usage: x509.ExtendedKeyUsage | None) -> None:
        allowed = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)
        if usage is not None and not any(oid in usage for oid in allowed):
            raise ValueError("the leaf's extendedKeyUsage does not allow serverAuth")

    policy = ExtensionPolicy.permit_all()
    if need_names:
        policy = policy.require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    return policy.may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, extended_key_usage)


_PROCESSING = " (encountered processing"


def _shown(error: object) -> str:
    """An error's text fit for the transcript and a reply: the certificate's own fields that
    cryptography quotes after "encountered processing" left out, printable ASCII, 200
    characters at most (a certificate is the server's text)."""
    text = str(error).partition(_PROCESSING)[0]
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= 200 else f"{text[:197]}..."
