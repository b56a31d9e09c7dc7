"""DANE lookups (RFC 7672): whether a domain's MX RRset is validated, each MX host's TLSA
records, and what they make of the MX targets.

:class:`Dane` asks a :class:`Lookups` (the delivery's own
:class:`~spoolmail._transport.dns.DnsResolver`) for the domain's MX RRset again, to read its AD
bit (the routing lookup does not keep it; a validated denial makes the domain its own host, the
implicit MX, RFC 7672 section 2.2.2), then for each MX host the validated RRset names its AAAA
and A (the routing's answers, from the cache as a rule), which say whether it is an alias and
whether its CNAME chain is validated, then TLSA at ``_port._tcp.<expanded name>`` first when it
is, and at ``_port._tcp.<mx>`` unless records there were used or that lookup failed (RFC 7671
section 7); and only when that last lookup failed for an alias whose chain is not validated,
the host's own CNAME record, whose AD bit says whether its name is in a signed zone (RFC 7672
section 2.2.2). The decision is the pure ``spoolmail._core.dane.plan``; this module only asks and
applies it: hosts DANE authenticates become :class:`~spoolmail._core.dane.DaneTarget` s
(STARTTLS required, the certificate checked against the records after the handshake, in the
session), hosts whose TLSA lookup failed are left out with ``451 4.7.5``. Every step is noted
in the transcript. The AD bit is worth what the resolver is: DANE is used only when the operator
declares the resolver validates DNSSEC over a trusted path (``MailService(dane=True)``, RFC 7672
section 2.1.3).

It also knows what this Python's ``ssl`` gives of a server's certificates: :func:`chain_problem`
says whether DANE-TA(2) records can be checked here, and :func:`peer_chain` reads the chain the
server sent, bounded, for the session's check.
"""

from __future__ import annotations

import _ssl
import ssl
import time
from collections.abc import Callable
from typing import Protocol

import attrs

from spoolmail._core.dane import (
    MAX_CHAIN,
    MAX_CHAIN_OCTETS,
    Alias,
    CnameAnswer,
    DaneState,
    Plan,
    TlsaAnswer,
    apply_plan,
    plan,
    tlsa_name,
    verification_problem,
)
from spoolmail._core.mx import host_key
from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Resolution
from spoolmail._transport.dns import HOP_BUDGET, Lookup

__all__ = ["Dane", "Lookups", "chain_problem", "peer_chain"]


def chain_problem() -> str | None:
    """Why DANE-TA(2) records cannot be checked here, or ``None`` when they can.

    They need the chain the server sent, which ``ssl`` gives as ``SSLSocket.
    get_unverified_chain`` from Python 3.13 and, from 3.10, only on the private ``_sslobj``
    (``_ssl._SSLSocket``); and the chain check, which is ``cryptography``'s (the ``dane``
    extra). Without either, TA records are unusable (RFC 7672 section 3.1.2 has the server
    publish one only with its chain), and a host with nothing else gets TLS without
    authentication."""
    public = hasattr(ssl.SSLSocket, "get_unverified_chain")
    private = hasattr(getattr(_ssl, "_SSLSocket", None), "get_unverified_chain")
    if not (public or private):
        return "this Python's ssl does not give the chain (get_unverified_chain)"
    return verification_problem()


def peer_chain(sock: ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, DER, its own first: the chain where ``ssl`` gives it
    (the public method first, the private one of 3.10-3.12 second), else the leaf alone.

    A chain is the server's input: at most ``MAX_CHAIN + 1`` certificates are read (one more
    than are checked, so the check can tell the chain is too long) and no more once
    ``MAX_CHAIN_OCTETS`` are in."""
    leaf = sock.getpeercert(binary_form=True)
    if not leaf:
        return []
    getter = getattr(sock, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
    try:
        found = getter() if getter is not None else None
    except (ssl.SSLError, ValueError):  # no session, or a closed one
        found = None
    chain = [leaf]
    octets = len(leaf)
    for certificate in list(found or [])[: MAX_CHAIN + 1]:
        # 3.13's public method gives DER already; the private one _ssl.Certificate objects.
        if isinstance(certificate, bytes):
            der = certificate
        else:
            der = certificate.public_bytes(_ssl.ENCODING_DER)
        if der != leaf:  # the leaf heads the chain OpenSSL keeps for a client
            chain.append(der)
            octets += len(der)
        if octets > MAX_CHAIN_OCTETS:
            break  # enough to be refused as too long
    return chain


class Lookups(Protocol):
    """One DNS question, with the answer's AD bit (``DnsResolver.lookup``)."""

    def lookup(
        self, name: str, rdtype: str, transcript: Transcript, *, deadline: float | None = None
    ) -> Lookup: ...


class Dane:
    """Applies DANE to one domain's MX targets: ``Dane(dns_resolver).apply(domain, ...)``.

    One domain's lookups (its MX again, then AAAA, A, one or two TLSA and at times a CNAME for
    each of up to ten hosts) take ``budget`` seconds at most in all (``HOP_BUDGET``, read from
    ``monotonic``), as the routing lookups do: silent name servers held a delivery for up to 31
    lifetimes. A lookup the budget leaves unasked fails, and its host waits (``451``), as for
    any TLSA lookup that fails: DANE is never given up for want of time.
    """

    def __init__(
        self,
        lookups: Lookups,
        *,
        budget: float = HOP_BUDGET,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookups = lookups
        self._budget = budget
        self._monotonic = monotonic
        # Asked once: whether DANE-TA(2) records can be checked does not change while running.
        self._chain_problem = chain_problem()

    def apply(self, domain: str, resolution: Resolution, transcript: Transcript) -> Resolution:
        """The MX ``resolution`` of ``domain`` with DANE applied (see the module docstring)."""
        deadline = self._monotonic() + self._budget
        secure = self._secure_exchanges(domain, transcript, deadline)
        if isinstance(secure, Reply):
            transcript.note(str(secure))
            return Resolution(reply=secure)
        if secure is None:
            return resolution
        plans: dict[tuple[str, int], Plan] = {}
        targets: list[Target] = []
        deferred: list[Reply] = []
        for target in resolution.targets:
            if target.literal or target.name is None:
                targets.append(target)
                continue
            host = host_key(target.name)
            key = (host, target.port)
            if key not in plans:
                plans[key] = self._plan(
                    host,
                    target.port,
                    listed=host in secure,
                    transcript=transcript,
                    deadline=deadline,
                )
                for note in plans[key].notes:
                    transcript.note(note)
            decided = plans[key]
            if decided.state is DaneState.DEFER:
                assert decided.reply is not None  # noqa: S101 (DEFER has one)
                if decided.reply not in deferred:
                    transcript.note(str(decided.reply))
                    deferred.append(decided.reply)
                continue
            if target.tls is TlsPolicy.NEVER and decided.state is not DaneState.NOT_APPLICABLE:
                transcript.note(f"DANE: the route to {host} says tls=never: DANE not applied")
            targets.append(apply_plan(target, decided, next_hop=domain))
        if targets:
            return Resolution(tuple(targets))
        return Resolution(reply=deferred[0] if deferred else resolution.reply)

    def _secure_exchanges(
        self, domain: str, transcript: Transcript, deadline: float
    ) -> set[str] | Reply | None:
        """The MX hosts of a validated MX RRset; ``None`` when DANE does not apply to the
        domain; a reply when the MX lookup failed this time."""
        found = self._lookups.lookup(domain, "MX", transcript, deadline=deadline)
        if found.failure is not None:
            return Reply(
                451,
                "4.4.3",
                f"MX lookup for {domain} failed ({found.failure}): cannot tell whether DANE "
                "applies (RFC 7672 section 2.2.1)",
            )
        if found.missing and found.authenticated:
            # RFC 7672 section 2.2.2: the domain is its own mail host (the implicit MX), and a
            # validated denial of its MX records is what a validated MX RRset is to MX hosts.
            transcript.note(
                f"DANE: {domain} has no MX records (a DNSSEC-validated denial): DANE applies to "
                "the domain itself, the implicit MX (RFC 7672 section 2.2.2)"
            )
            return {host_key(domain)}
        if found.missing or not found.records:
            transcript.note(
                f"DANE: {domain} has no MX records, and the denial is not DNSSEC-validated (no "
                "AD bit): DANE does not apply (RFC 7672 section 2.2.2)"
            )
            return None
        if not found.authenticated:
            transcript.note(
                f"DANE: the MX records of {domain} are not DNSSEC-validated (no AD bit): DANE "
                "does not apply (RFC 7672 section 2.2.1)"
            )
            return None
        hosts = set()
        for text in found.records:
            _, _, exchange = text.partition(" ")
            hosts.add(host_key(exchange.strip()))
        return hosts

    def _plan(
        self, host: str, port: int, *, listed: bool, transcript: Transcript, deadline: float
    ) -> Plan:
        """Ask what :func:`~spoolmail._core.dane.plan` decides from: the host's addresses
        (whether it is an alias, and of what), the TLSA records at the expanded name when its
        CNAME chain is validated, and those at its own name unless the expanded name's were
        used or its lookup failed (RFC 7672 section 2.2.2, RFC 7671 section 7).

        When the lookup at its own name failed and its address records are not validated
        because they came through a chain not validated end to end, the host's CNAME record
        too (:func:`_asks_cname`): answered from the host's own zone, its AD bit tells whether
        that zone is signed, and so whether the failure may hide secure TLSA records (RFC 7672
        section 2.2.2). Never otherwise: the common path costs no extra question."""
        if not listed:
            transcript.note(f"DANE: {host} is not in the validated MX records: not applied")
            return Plan(DaneState.NOT_APPLICABLE)
        alias, host_secure, address_failure = self._aliasing(host, transcript, deadline)
        if address_failure is None and alias is not None and alias.validated:
            found = self._tlsa(alias.name, port, transcript, deadline)
            alias = attrs.evolve(alias, tlsa=found)
        own = TlsaAnswer()
        if address_failure is None and (alias is None or _looks_further(alias)):
            own = self._tlsa(host, port, transcript, deadline)
        if alias is not None and _asks_cname(alias, own, host_secure=host_secure):
            asked = self._lookups.lookup(host, "CNAME", transcript, deadline=deadline)
            link = CnameAnswer(asked.records, asked.missing, asked.failure, asked.authenticated)
            alias = attrs.evolve(alias, cname=link)
        return plan(
            host,
            port,
            mx_secure=True,
            records=own.records,
            missing=own.missing,
            failure=own.failure,
            authenticated=own.authenticated,
            host_secure=host_secure,
            chain_available=self._chain_problem is None,
            chain_problem=self._chain_problem,
            alias=alias,
            address_failure=address_failure,
        )

    def _tlsa(self, host: str, port: int, transcript: Transcript, deadline: float) -> TlsaAnswer:
        found = self._lookups.lookup(tlsa_name(host, port), "TLSA", transcript, deadline=deadline)
        return TlsaAnswer(found.records, found.missing, found.failure, found.authenticated)

    def _aliasing(
        self, host: str, transcript: Transcript, deadline: float
    ) -> tuple[Alias | None, bool, str | None]:
        """What the host's AAAA and A answers say (the routing lookup's, from the cache as a
        rule): where its CNAME chain led (``None``: it is no alias), whether its address records
        are validated (a failure counts as validated, the cautious reading: DANE may apply, so
        a host whose TLSA lookup fails waits), and why no answer had an address, if one failed.

        The chain is validated when an answer that followed it carried the AD bit: a validating
        resolver sets it only when every record of the answer, each CNAME included, is secure
        (RFC 4035 section 3.2.3). Either family's answer will do, as either's addresses do for
        the connection; two validated answers naming different ends (a zone changing between
        the two questions) give no alias."""
        answers = [
            self._lookups.lookup(host, rdtype, transcript, deadline=deadline)
            for rdtype in ("AAAA", "A")
        ]
        held = [found for found in answers if found.records]
        failure = next((found.failure for found in answers if found.failure is not None), None)
        secure = failure is not None or any(found.authenticated for found in held)
        if not held:
            return None, secure, failure
        validated = {host_key(f.canonical) for f in held if f.canonical and f.authenticated}
        if len(validated) == 1:
            return Alias(validated.pop(), validated=True), secure, None
        others = sorted({host_key(f.canonical) for f in held if f.canonical})
        if others and not validated:
            return Alias(others[0], validated=False), secure, None
        if validated:
            transcript.note(
                f"DANE: the validated address answers of {host} end at different names "
                f"({', '.join(sorted(validated))}): TLSA records looked for at {host} only"
            )
        return None, secure, None


def _asks_cname(alias: Alias, own: TlsaAnswer, *, host_secure: bool) -> bool:
    """Whether the host's own CNAME record is asked for: the TLSA lookup at its own name
    failed, and its address records are not validated because the chain they came through is
    not (a validated chain, or validated addresses, already say the host's zone is signed)."""
    return own.failure is not None and not host_secure and not alias.validated


def _looks_further(alias: Alias) -> bool:
    """Whether the host's own name is asked after its alias's: the chain is not validated
    (the expanded name was never asked), or the expanded name has no validated TLSA records
    and its lookup did not fail (RFC 7671 section 7)."""
    return not alias.validated or (alias.tlsa.failure is None and not alias.tlsa.secure)
