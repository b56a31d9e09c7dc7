"""DANE lookups (RFC 7672): whether a domain's MX RRset is validated, each MX host's TLSA
records, and what they make of the MX targets.

:class:`Dane` asks a :class:`Lookups` (the delivery's own
:class:`~spoolmail._transport.dns.DnsResolver`) for the domain's MX RRset again, to read its AD
bit (the routing lookup does not keep it), then ``_port._tcp.<mx>`` TLSA for each MX host
the validated RRset names, and the host's A/AAAA only when that TLSA lookup fails. The decision
is the pure ``spoolmail._core.dane.plan``; this module only asks and applies it: hosts DANE
authenticates become :class:`~spoolmail._core.dane.DaneTarget` s (STARTTLS required, the
certificate checked against the records after the handshake, in the session), hosts whose TLSA
lookup failed are left out with ``451 4.7.5``. Every step is noted in the transcript. The AD bit
is worth what the resolver is: DANE is used only when the operator declares the resolver
validates DNSSEC over a trusted path (``MailService(dane=True)``, RFC 7672 section 2.1.3).

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

from spoolmail._core.dane import (
    MAX_CHAIN,
    MAX_CHAIN_OCTETS,
    DaneState,
    Plan,
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

    One domain's lookups (its MX again, then a TLSA and perhaps A and AAAA for each of up to
    ten hosts) take ``budget`` seconds at most in all (``HOP_BUDGET``, read from ``monotonic``),
    as the routing lookups do: silent name servers held a delivery for up to 31 lifetimes. A
    lookup the budget leaves unasked fails, and its host waits (``451``), as for any TLSA
    lookup that fails: DANE is never given up for want of time.
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
        if found.missing or not found.records:
            transcript.note(
                f"DANE: {domain} has no MX records; DANE for a domain without them (RFC 7672 "
                "section 2.2.2) is not applied"
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
        if not listed:
            transcript.note(f"DANE: {host} is not in the validated MX records: not applied")
            return Plan(DaneState.NOT_APPLICABLE)
        tlsa = self._lookups.lookup(tlsa_name(host, port), "TLSA", transcript, deadline=deadline)
        host_secure = True
        if tlsa.failure is not None:
            host_secure = self._addresses_secure(host, transcript, deadline)
        return plan(
            host,
            port,
            mx_secure=True,
            records=tlsa.records,
            missing=tlsa.missing,
            failure=tlsa.failure,
            authenticated=tlsa.authenticated,
            host_secure=host_secure,
            chain_available=self._chain_problem is None,
            chain_problem=self._chain_problem,
        )

    def _addresses_secure(self, host: str, transcript: Transcript, deadline: float) -> bool:
        """Whether ``host``'s A or AAAA answer is validated; a failure counts as validated
        (the cautious reading: DANE may apply, so the host waits)."""
        for rdtype in ("A", "AAAA"):
            found = self._lookups.lookup(host, rdtype, transcript, deadline=deadline)
            if found.failure is not None or (found.records and found.authenticated):
                return True
        return False
