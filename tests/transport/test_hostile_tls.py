"""The SMTP client against hostile and broken TLS peers and hostile DANE (TLSA) data, over real
sockets and a real DNS server on 127.0.0.1.

What a server says during STARTTLS, the certificates it shows and the TLSA records the DNS
gives are hostile until checked: none of it may raise out of :meth:`SmtpTransport.send`, keep
the client past its deadlines, or send anything in the clear that the target's TLS policy (or
DANE, RFC 7672) forbids; every failure is a temporary reply whose text says why, and which is
also in the transcript. The peers (:class:`TlsPeer`) run a small script per connection on a
thread, plain text first and TLS after :meth:`Conversation.start_tls`, with certificates made at
test time (``tests/tlscerts.py``, and a few odd ones made here); the DNS is
:class:`~tests.transport.test_hostile_dns.ScriptedDns`, answering with the AD bit a validating
resolver would set. Waits are short; no test sleeps through a retry.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spoolmail._core.dane import DaneTarget, TlsaRecord, subject_public_key_info
from spoolmail._core.reply import Reply
from spoolmail._core.routing import Hop, HopKind, Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Resolution
from spoolmail._transport.dane import Dane
from spoolmail._transport.dns import DnsResolver
from tests.dnsserver import local_resolver
from tests.smtpservers import SHORT
from tests.tlscerts import TestCertificates
from tests.transport.test_dns import LIFETIME, SLACK
from tests.transport.test_hostile_dns import ScriptedDns, Zone, zone_script
from tests.transport.test_hostile_servers import (
    EHLO_PLAIN,
    GREETING,
    HOST,
    POLL,
    Hostile,
    Outcome,
    Wire,
    send,
    waits,
)

pytestmark = pytest.mark.integration

NAME = "mx1.example.test"  # on the test server certificate
DEADLINE = 0.3

EHLO_TLS = b"250-hostile.test\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
READY = b"220 2.0.0 Ready to start TLS\r\n"


@pytest.fixture
def log() -> Transcript:
    return Transcript(clock=lambda: datetime.datetime(2026, 11, 28, 10, 15, 2, tzinfo=datetime.UTC))


# A peer that runs a script, and can start TLS.


class Conversation(Wire):
    """One connection as a script sees it (:class:`Wire`), which can also run the server's side
    of a TLS handshake."""

    def __init__(self, conn: socket.socket, stopping: threading.Event) -> None:
        super().__init__(conn, stopping)
        self.tls = False

    def drip(self, data: bytes, *, every: float = 0.05) -> None:
        super().drip(data, every=every)

    def start_tls(self, context: ssl.SSLContext) -> bool:
        """The server's side of the handshake; whether it succeeded."""
        assert not self._buffer, "the client spoke in plain text after STARTTLS"
        self._conn.settimeout(5)
        try:
            tls = context.wrap_socket(self._conn, server_side=True)
        except OSError:
            return False
        tls.settimeout(POLL)
        self._conn = tls
        self.tls = True
        return True


Script = Callable[[Conversation], None]


class TlsPeer(Hostile):
    """A :class:`Hostile` peer whose connections are :class:`Conversation` s."""

    def __init__(self, script: Script) -> None:
        super().__init__(script, Conversation)  # type: ignore[arg-type]

    @property
    def conversations(self) -> list[Conversation]:
        return self.wires  # type: ignore[return-value]

    def target(self, tls: TlsPolicy, *, name: str | None = NAME) -> Target:  # type: ignore[override]
        return Target(HOST, self.port, name=name, literal=name is None, tls=tls)

    @property
    def plain_mail(self) -> list[str]:
        """MAIL commands that went in plain text: what a TLS policy must prevent."""
        return [
            command
            for conversation in self.conversations
            if not conversation.tls
            for command in conversation.commands
            if command.upper().startswith(("MAIL", "RCPT", "AUTH"))
        ]


@contextlib.contextmanager
def peer(script: Script) -> Iterator[TlsPeer]:
    server = TlsPeer(script)
    try:
        yield server
    finally:
        server.stop()


def converse(talk: Conversation, answers: dict[str, bytes]) -> None:
    """Answer each command by its verb (``250 ok`` when ``answers`` has none), take DATA after
    354; until the client goes."""
    while (line := talk.command()) is not None:
        verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
        if not talk.send(answers.get(verb, b"250 2.0.0 ok\r\n")):
            return
        if verb == "QUIT":
            return
        if verb == "DATA" and (talk.message() is None or not talk.send(b"250 2.0.0 queued\r\n")):
            return


def starttls_then(
    context: ssl.SSLContext | None,
    *,
    ready: bytes = READY,
    after_ready: bytes = b"",
    ehlo: bytes = EHLO_TLS,
    ehlo_after_tls: bytes = EHLO_PLAIN,
) -> Script:
    """A script: greeting, EHLO offering STARTTLS, ``ready`` to STARTTLS (and ``after_ready``
    right behind it, in the same write), the handshake with ``context`` (none: hold), then a
    conversation over TLS. A client that does not ask for STARTTLS gets a plain conversation."""

    def script(talk: Conversation) -> None:
        answers = {"EHLO": ehlo, "DATA": b"354 go ahead\r\n"}
        if not talk.send(GREETING):
            return
        while (line := talk.command()) is not None and line.upper().startswith("EHLO"):
            if not talk.send(ehlo):
                return
        if line is None:
            return
        if line.upper() != "STARTTLS":
            # A client that does not ask for TLS: a plain conversation from this command on.
            if talk.send(b"250 2.0.0 ok\r\n"):
                converse(talk, answers)
            return
        if not talk.send(ready + after_ready):
            return
        if ready.startswith(b"220"):
            if context is None or not talk.start_tls(context):
                talk.hold()
                return
            answers["EHLO"] = ehlo_after_tls
        converse(talk, answers)

    return script


def deferred(outcome: Outcome, log: Transcript, *, enhanced: str, reason: str) -> Reply:
    """The one reply every recipient got: temporary, ``enhanced``, ``reason`` in its text, and
    in the transcript as the session's end."""
    [reply] = set(outcome.replies.values())
    assert (reply.code, reply.enhanced) == (451, enhanced), reply
    assert reason in reply.text, reply.text
    assert f"session ended: {reply}" in log.text, log.text
    return reply


def delivered(outcome: Outcome) -> None:
    assert {r.code for r in outcome.replies.values()} == {250}, outcome.replies


# Certificates made here: odd ones no real CA would sign.


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    name: str = NAME,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None = None,
    days: tuple[int, int] = (-1, 1),
    ca: bool = False,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer, issuer_name = issuer if issuer is not None else (key, subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def server_context(
    directory: Path, key: ec.EllipticCurvePrivateKey, chain: Sequence[bytes]
) -> ssl.SSLContext:
    """A server context showing ``chain`` (DER, the leaf first) with ``key``."""
    stem = hashlib.sha256(chain[0]).hexdigest()[:16]
    certificate = directory / f"{stem}.crt"
    private = directory / f"{stem}.key"
    certificate.write_text("".join(ssl.DER_cert_to_PEM_cert(der) for der in chain))
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, private)
    return context


def version_4(der: bytes) -> bytes:
    """``der`` claiming X.509 version 4 (the INTEGER 3 in tbsCertificate's ``[0]``), which
    OpenSSL carries through a handshake and ``cryptography`` refuses to read (InvalidVersion,
    which is not a ValueError). The signature no longer fits, which no one without a CA check
    (DANE-EE, opportunistic TLS) looks at."""
    explicit_v3 = b"\xa0\x03\x02\x01\x02"
    at = der.index(explicit_v3)
    return der[:at] + b"\xa0\x03\x02\x01\x03" + der[at + len(explicit_v3) :]


def spki_sha256(der: bytes) -> bytes:
    return hashlib.sha256(subject_public_key_info(der)).digest()


def dane_target(peer: TlsPeer, *records: TlsaRecord) -> DaneTarget:
    return DaneTarget(
        HOST,
        peer.port,
        name="mx.dane.test",
        tls=TlsPolicy.ENCRYPT,
        tlsa=records,
        tlsa_name=f"_{peer.port}._tcp.mx.dane.test",
    )


# DANE's check of the certificate.


def test_a_certificate_cryptography_cannot_read_is_matched_by_its_key(
    log: Transcript, tmp_path: Path
) -> None:
    """Bug: a DANE-EE(3) SPKI(1) record made the session parse the server's certificate with
    ``cryptography``, whose InvalidVersion (an Exception, not a ValueError) went out of
    ``send``. The key is read from the certificate's DER as it stands now, without
    cryptography: DANE-EE binds the key and ignores the rest (RFC 7672 section 3.1.1), so the
    record matches and the mail goes, as OpenSSL and Postfix would send it."""
    key = _key()
    good = _der(_certificate(key))
    odd = version_4(good)
    context = server_context(tmp_path, key, [odd])
    with peer(starttls_then(context)) as server:
        target = dane_target(server, TlsaRecord(3, 1, 1, spki_sha256(good)))
        outcome = send(target, log)
    delivered(outcome)
    assert "certificate matched TLSA 3 1 1" in log.text
    assert server.plain_mail == []


def test_an_unreadable_certificate_still_matches_a_full_certificate_record(
    log: Transcript, tmp_path: Path
) -> None:
    """The same certificate, with a 3 0 1 record (the whole certificate's digest) after a
    3 1 1 one of another key: the second matches, and the mail goes."""
    key = _key()
    odd = version_4(_der(_certificate(key)))
    context = server_context(tmp_path, key, [odd])
    with peer(starttls_then(context)) as server:
        target = dane_target(
            server,
            TlsaRecord(3, 1, 1, bytes(32)),
            TlsaRecord(3, 0, 1, hashlib.sha256(odd).digest()),
        )
        outcome = send(target, log)
    delivered(outcome)
    assert "certificate matched TLSA 3 0 1" in log.text
    assert server.conversations[0].tls


def test_a_bug_in_the_handshake_surfaces_as_itself(
    log: Transcript, certificates: TestCertificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug: an exception that is no SessionError in the middle of opening a session (a bug; it
    was how the certificate above went out) made the transport say QUIT on the connection, which
    the protocol refuses with a goal in progress: InvalidTransition replaced the real error. Now
    the connection is dropped without a word and the error is what propagates."""

    def broken(*_: object) -> None:
        raise RuntimeError("a bug in the TLSA check")

    monkeypatch.setattr("spoolmail._transport.session.match", broken)
    with (
        peer(starttls_then(certificates.server_context())) as server,
        pytest.raises(RuntimeError, match="a bug in the TLSA check"),
    ):
        send(dane_target(server, TlsaRecord(3, 1, 1, bytes(32))), log)
    assert "QUIT" not in server.conversations[0].commands


# STARTTLS answered, and the handshake, as a hostile server does them.


@pytest.mark.parametrize("tls", [TlsPolicy.OPPORTUNISTIC, TlsPolicy.ENCRYPT, TlsPolicy.REQUIRED])
def test_replies_injected_behind_the_220_to_starttls_are_discarded(
    log: Transcript, certificates: TestCertificates, tls: TlsPolicy
) -> None:
    """CVE-2011-0411's class (RFC 3207 section 4.2): plain-text bytes behind "220 ready", in the
    same segment, must not be read as the first replies over TLS. A client that read them would
    take the injected 250 as the reply to its EHLO over TLS, and each real reply after it as the
    one to the command before. Guards correct behaviour."""
    injected = b"250-injected.test\r\n250 AUTH PLAIN\r\n250 2.1.0 injected\r\n"
    script = starttls_then(certificates.server_context(), after_ready=injected)
    with peer(script) as server:
        outcome = send(server.target(tls), log, tls_context=certificates.client_context())
    delivered(outcome)
    assert server.plain_mail == []
    assert f"discarded {len(injected)} octets sent in plain text after the 220" in log.text
    assert "injected" not in "".join(line for line in log.lines if " < " in line)


@pytest.mark.parametrize("tls", [TlsPolicy.ENCRYPT, TlsPolicy.REQUIRED])
def test_replies_injected_after_the_220_in_their_own_segment_fail_the_handshake(
    log: Transcript, certificates: TestCertificates, tls: TlsPolicy
) -> None:
    """The same, arriving after the client read the 220: OpenSSL reads them as a TLS record and
    the handshake fails; with TLS required nothing more is said. Guards correct behaviour."""

    def script(talk: Conversation) -> None:
        talk.send(GREETING)
        while (line := talk.command()) is not None:
            if line.upper() == "STARTTLS":
                talk.send(READY)
                time.sleep(0.05)
                talk.send(b"250-injected.test\r\n250 8BITMIME\r\n")
                talk.hold()
                return
            talk.send(EHLO_TLS)

    with peer(script) as server:
        outcome = send(server.target(tls), log, tls_context=certificates.client_context())
    deferred(outcome, log, enhanced="4.7.5", reason="TLS handshake with")
    assert server.plain_mail == []
    assert len(server.conversations) == 1


@pytest.mark.parametrize(
    ("ready", "tls", "enhanced", "reason"),
    [
        pytest.param(
            b"454 4.7.0 TLS not available\r\n",
            TlsPolicy.ENCRYPT,
            "4.7.4",
            "refused",
            id="454-encrypt",
        ),
        pytest.param(
            b"500 5.5.1 unknown\r\n", TlsPolicy.REQUIRED, "4.7.4", "refused", id="500-required"
        ),
        pytest.param(
            b"354 what\r\n",
            TlsPolicy.OPPORTUNISTIC,
            "4.5.0",
            "unexpected 354",
            id="354-opportunistic",
        ),
        pytest.param(
            b"\x16\x03\x01\x00\x05hello\r\n",
            TlsPolicy.ENCRYPT,
            "4.5.0",
            "garbage",
            id="tls-bytes-instead-of-a-reply",
        ),
    ],
)
def test_starttls_refused_or_answered_with_nonsense_is_temporary(
    log: Transcript, ready: bytes, tls: TlsPolicy, enhanced: str, reason: str
) -> None:
    """No TLS where the policy requires it: deferred, with nothing sent in the clear. Guards
    correct behaviour."""
    with peer(starttls_then(None, ready=ready)) as server:
        outcome = send(server.target(tls), log)
    deferred(outcome, log, enhanced=enhanced, reason=reason)
    assert server.plain_mail == []


def test_starttls_refused_under_opportunistic_goes_on_in_plain_text(log: Transcript) -> None:
    """RFC 3207 section 4: after a 454 the client may go on in the clear; on the same
    connection. Guards correct behaviour."""
    with peer(starttls_then(None, ready=b"454 4.7.0 TLS not available\r\n")) as server:
        outcome = send(server.target(TlsPolicy.OPPORTUNISTIC), log)
    delivered(outcome)
    assert len(server.conversations) == 1
    assert "STARTTLS refused; continuing in plain text (opportunistic)" in log.text


@pytest.mark.parametrize("tls", [TlsPolicy.ENCRYPT, TlsPolicy.REQUIRED])
def test_a_handshake_that_never_comes_is_cut_off_at_the_starttls_deadline(
    log: Transcript, tls: TlsPolicy
) -> None:
    """220 to STARTTLS, then silence: the handshake ends at ``starttls``. Guards correct
    behaviour."""
    with peer(starttls_then(None)) as server:
        outcome = send(server.target(tls), log, timeouts=waits(starttls=DEADLINE))
    deferred(outcome, log, enhanced="4.7.5", reason=f"no progress within {DEADLINE:g} s")
    assert outcome.elapsed < 3 * DEADLINE + 0.5
    assert server.plain_mail == []


def test_a_handshake_dripped_an_octet_at_a_time_ends_at_the_starttls_deadline(
    log: Transcript,
) -> None:
    """A server dripping a TLS record (a ServerHello header announcing 16 KiB) an octet every
    50 ms never lets a wait of the handshake run out; the deadline is the whole handshake's.
    Guards correct behaviour (CPython's ssl bounds a handshake as a whole)."""

    def script(talk: Conversation) -> None:
        talk.send(GREETING)
        while (line := talk.command()) is not None:
            if line.upper() == "STARTTLS":
                talk.send(READY)
                talk.drip(b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000)
                return
            talk.send(EHLO_TLS)

    with peer(script) as server:
        outcome = send(server.target(TlsPolicy.ENCRYPT), log, timeouts=waits(starttls=DEADLINE))
    deferred(outcome, log, enhanced="4.7.5", reason="TLS handshake with")
    assert outcome.elapsed < 3 * DEADLINE + 0.5


def test_an_opportunistic_handshake_that_stalls_falls_back_once_to_plain_text(
    log: Transcript,
) -> None:
    """Opportunistic TLS is never worse than none (RFC 7435): the handshake's deadline, then one
    new connection without STARTTLS. Guards correct behaviour."""
    with peer(starttls_then(None)) as server:
        outcome = send(
            server.target(TlsPolicy.OPPORTUNISTIC), log, timeouts=waits(starttls=DEADLINE)
        )
    delivered(outcome)
    assert len(server.conversations) == 2
    assert "STARTTLS" not in server.conversations[1].commands
    assert "connecting again in plain text (opportunistic)" in log.text


def test_starttls_offered_again_after_tls_is_not_asked_twice(
    log: Transcript, certificates: TestCertificates
) -> None:
    """RFC 3207 section 4.2: a server that offers STARTTLS again over TLS is not asked again
    (a second STARTTLS would be refused, or start TLS inside TLS). Guards correct behaviour."""
    script = starttls_then(certificates.server_context(), ehlo_after_tls=EHLO_TLS)
    with peer(script) as server:
        outcome = send(
            server.target(TlsPolicy.REQUIRED), log, tls_context=certificates.client_context()
        )
    delivered(outcome)
    [conversation] = server.conversations
    assert conversation.commands.count("STARTTLS") == 1
    assert conversation.tls


# Certificates.


@pytest.mark.parametrize("odd", ["expired", "not-yet-valid", "self-signed", "wrong-name"])
@pytest.mark.parametrize("tls", list(TlsPolicy))
def test_odd_certificates_under_each_policy(
    log: Transcript, tmp_path: Path, odd: str, tls: TlsPolicy
) -> None:
    """``REQUIRED`` refuses every odd certificate (4.7.5, nothing sent); ``ENCRYPT`` and
    opportunistic TLS do not check it (RFC 7435) and deliver over TLS; ``NEVER`` never asks.
    Guards correct behaviour."""
    ca_key = _key()
    ca = _certificate(ca_key, name="hostile test CA", ca=True, days=(-30, 30))
    key = _key()
    signed_by = (ca_key, ca.subject)
    leaf = {
        "expired": lambda: _certificate(key, issuer=signed_by, days=(-10, -1)),
        "not-yet-valid": lambda: _certificate(key, issuer=signed_by, days=(1, 10)),
        "self-signed": lambda: _certificate(key),
        "wrong-name": lambda: _certificate(key, issuer=signed_by, name="other.example.test"),
    }[odd]()
    context = server_context(tmp_path, key, [_der(leaf)])
    trusting = ssl.create_default_context(cadata=_der(ca))
    with peer(starttls_then(context)) as server:
        outcome = send(server.target(tls), log, tls_context=trusting)
    if tls is TlsPolicy.REQUIRED:
        deferred(outcome, log, enhanced="4.7.5", reason="certificate verify failed")
        assert server.plain_mail == []
        assert not any(c.messages for c in server.conversations)
    else:
        delivered(outcome)
        assert server.conversations[-1].tls is (tls is not TlsPolicy.NEVER)


def test_a_huge_certificate_chain_is_refused_in_bounded_time(
    log: Transcript, tmp_path: Path
) -> None:
    """A chain of about 600 KB (OpenSSL's client takes at most 100 KB of certificates by
    default): the handshake fails at once, and TLS required sends nothing. Guards correct
    behaviour."""
    key = _key()
    filler = _der(_certificate(_key(), name="f" * 60, ca=True))
    chain = [_der(_certificate(key)), *[filler] * (600_000 // len(filler))]
    context = server_context(tmp_path, key, chain)
    with peer(starttls_then(context)) as server:
        outcome = send(server.target(TlsPolicy.ENCRYPT), log)
    deferred(outcome, log, enhanced="4.7.5", reason="TLS handshake with")
    assert outcome.elapsed < SHORT.starttls / 2
    assert server.plain_mail == []


# DANE from a real DNS server: TLSA records as a hostile zone publishes them.

DOMAIN = "dane.test"
MX_HOST = "mx.dane.test"
SPKI_OF_NOTHING = "ab" * 32


def validating(zone: Zone, *, failing: Sequence[str] = ()) -> Callable[..., list[bytes]]:
    """``zone_script(zone)`` with the AD bit of a validating resolver on every answer; names in
    ``failing`` get SERVFAIL (what such a resolver says for bogus data, RFC 4035 section 5.5)."""
    answer = zone_script(zone)

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        if query.question[0].name.to_text().lower() in failing:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return [response.to_wire()]
        # AD is bit 0x20 of the header's fourth octet (RFC 4035 section 3.2.3).
        return [wire[:3] + bytes([wire[3] | 0x20]) + wire[4:] for wire in answer(query, transport)]

    return script


def dane_zone(port: int, tlsa: Sequence[str]) -> Zone:
    zone: Zone = {
        (f"{DOMAIN}.", "MX"): [f"10 {MX_HOST}."],
        (f"{MX_HOST}.", "A"): [HOST],
    }
    if tlsa:
        zone[(f"_{port}._tcp.{MX_HOST}.", "TLSA")] = list(tlsa)
    return zone


def through_dane(
    dns_server: ScriptedDns, server: TlsPeer, log: Transcript, *, lifetime: float = 5.0
) -> tuple[Sequence[Target], Outcome | Reply]:
    """What the delivery does for an MX hop with DANE: resolve, apply DANE, send to the first
    target (or the reply saying why there is none). The DNS waits are longer than
    ScriptedDns.resolver's by default: a thousand TLSA records take dnspython (and the scripted
    server) a tenth of a second each way, over UDP and again over TCP."""
    resolver = DnsResolver(
        resolver=local_resolver(dns_server.port, timeout=min(lifetime, 3.0), lifetime=lifetime)
    )
    resolution = resolver.resolve(Hop(HopKind.MX, DOMAIN, server.port), log)
    resolution = Dane(resolver).apply(DOMAIN, resolution, log)
    if not resolution.targets:
        assert resolution.reply is not None
        return (), resolution.reply
    return resolution.targets, send(resolution.targets[0], log)


def leaf_spki_sha256(certificates: TestCertificates) -> str:
    pem = certificates.server_certificate.read_bytes()
    return spki_sha256(_der(x509.load_pem_x509_certificate(pem))).hex()


def test_danes_lookups_of_a_domain_stop_when_its_budget_is_spent(log: Transcript) -> None:
    """Ten MX hosts whose TLSA (and then A and AAAA) answers never come: 31 lookups held the
    delivery for as many lifetimes. They take the budget at most in all (each is given no
    more than is left), and every host still waits, never sent to without DANE."""
    hosts = [f"m{n}.{DOMAIN}" for n in range(10)]
    answer = validating({(f"{DOMAIN}.", "MX"): [f"10 {host}." for host in hosts]})

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        return answer(query, transport) if query.question[0].rdtype == dns.rdatatype.MX else []

    targets = tuple(Target(f"127.0.0.{n + 10}", 25, name=host) for n, host in enumerate(hosts))
    budget = 2 * LIFETIME
    with ScriptedDns(script) as dns_server:
        # The resolver's own lifetime far past the budget: a lookup gets what is left of it.
        resolver = DnsResolver(
            resolver=local_resolver(dns_server.port, timeout=0.2, lifetime=20 * LIFETIME)
        )
        started = time.monotonic()
        resolution = Dane(resolver, budget=budget).apply(DOMAIN, Resolution(targets), log)
        elapsed = time.monotonic() - started
    assert elapsed < budget + 0.3 + SLACK
    assert resolution.targets == ()
    assert resolution.reply is not None
    assert (resolution.reply.code, resolution.reply.enhanced) == (451, "4.7.5")
    assert "not asked, " in log.text  # the hosts past the budget were not looked up


def test_a_failed_tlsa_lookup_defers_without_a_connection(log: Transcript) -> None:
    """RFC 7672 section 2.2: SERVFAIL for the TLSA RRset of a host in a signed zone means nobody
    can tell whether DANE applies; the host is not tried (never in the clear). Guards correct
    behaviour."""
    with peer(starttls_then(None)) as server:
        zone = dane_zone(server.port, [f"3 1 1 {SPKI_OF_NOTHING}"])
        failing = [f"_{server.port}._tcp.{MX_HOST}."]
        with ScriptedDns(validating(zone, failing=failing)) as dns_server:
            targets, reply = through_dane(dns_server, server, log)
    assert targets == ()
    assert isinstance(reply, Reply)
    assert (reply.code, reply.enhanced) == (451, "4.7.5")
    assert "TLSA lookup for" in reply.text
    assert server.conversations == []


@pytest.mark.parametrize(
    "rdata",
    [b"\x03", b"\x03\x01\x01\xab\xcd", b"\x03\x01\x02" + b"\xab" * 32],
    ids=["one-octet", "short-sha256", "short-sha512"],
)
def test_a_tlsa_record_dnspython_cannot_read_is_unusable(log: Transcript, rdata: bytes) -> None:
    """A TLSA answer with a record one octet long (RFC 6698 section 2.1 needs three and data),
    or a digest of the wrong length: dnspython 2.9 refuses the whole answer, where RFC 7671
    makes the record unusable. The answer is asked for again and read here: its one record is
    unusable, so TLS is required without authentication (RFC 7672 section 2.2), never in the
    clear; it was a failed lookup, which held the host's mail until it expired."""
    zone = {(f"{DOMAIN}.", "MX"): [f"10 {MX_HOST}."], (f"{MX_HOST}.", "A"): [HOST]}
    signed = validating(zone)

    def script(query: dns.message.Message, transport: str) -> list[bytes]:
        if query.question[0].rdtype != dns.rdatatype.TLSA:
            return signed(query, transport)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AD
        wire = bytearray(response.to_wire())
        wire[7] = 1  # one answer record: the question's name, TLSA, ``rdata``
        wire += struct.pack("!HHHIH", 0xC00C, 52, 1, 60, len(rdata)) + rdata
        return [bytes(wire)]

    with ScriptedDns(script) as dns_server:
        resolver = DnsResolver(
            resolver=local_resolver(dns_server.port, timeout=LIFETIME, lifetime=LIFETIME)
        )
        started = time.monotonic()
        resolution = resolver.resolve(Hop(HopKind.MX, DOMAIN, 25), log)
        resolution = Dane(resolver).apply(DOMAIN, resolution, log)
    # dnspython ignores the answer it cannot read and waits for another, to its lifetime; then
    # one more question, answered at once.
    assert time.monotonic() - started < 2 * LIFETIME + SLACK
    [target] = resolution.targets
    assert not isinstance(target, DaneTarget)
    assert target.tls is TlsPolicy.ENCRYPT
    assert "unusable TLSA record" in log.text


UNUSABLE = (
    f"0 0 1 {SPKI_OF_NOTHING}",  # PKIX-TA: not for SMTP (RFC 7672 section 3.1.3)
    f"1 1 1 {SPKI_OF_NOTHING}",  # PKIX-EE: likewise
    f"2 1 3 {SPKI_OF_NOTHING}",  # DANE-TA with an unknown matching type
    f"4 1 1 {SPKI_OF_NOTHING}",  # an unknown usage
    f"3 2 1 {SPKI_OF_NOTHING}",  # an unknown selector
    f"3 1 3 {SPKI_OF_NOTHING}",  # an unknown matching type
)


@pytest.mark.parametrize("starttls", [True, False], ids=["starttls", "no-starttls"])
def test_only_unusable_tlsa_records_mean_tls_without_authentication(
    log: Transcript, certificates: TestCertificates, starttls: bool
) -> None:
    """RFC 7672 section 2.2 (and 3.1.3): a secure TLSA RRset none of whose records is usable
    still means TLS: delivered over TLS without authentication, never in the clear. Guards
    correct behaviour."""
    script = starttls_then(certificates.server_context(), ehlo=EHLO_TLS if starttls else EHLO_PLAIN)
    with (
        peer(script) as server,
        ScriptedDns(validating(dane_zone(server.port, UNUSABLE))) as dns_server,
    ):
        targets, outcome = through_dane(dns_server, server, log)
    [target] = targets
    assert not isinstance(target, DaneTarget)
    assert target.tls is TlsPolicy.ENCRYPT
    assert isinstance(outcome, Outcome)
    for record in UNUSABLE:
        assert f"unusable TLSA record at _{server.port}._tcp.{MX_HOST}: {record}" in log.text
    if starttls:
        delivered(outcome)
        assert server.conversations[0].tls
    else:
        deferred(outcome, log, enhanced="4.7.4", reason="does not offer STARTTLS")
    assert server.plain_mail == []


@pytest.mark.parametrize("matching", [True, False], ids=["last-matches", "none-matches"])
def test_a_thousand_tlsa_records_are_checked_in_bounded_time(
    log: Transcript, certificates: TestCertificates, matching: bool
) -> None:
    """A TLSA RRset as big as a DNS message holds (over TCP): every record is read and checked
    against the certificate, quickly; the one that matches, if any, is found. Guards correct
    behaviour."""
    records = [f"3 1 1 {hashlib.sha256(str(n).encode()).hexdigest()}" for n in range(1000)]
    if matching:
        records.append(f"3 1 1 {leaf_spki_sha256(certificates)}")
    with (
        peer(starttls_then(certificates.server_context())) as server,
        ScriptedDns(validating(dane_zone(server.port, records))) as dns_server,
    ):
        targets, outcome = through_dane(dns_server, server, log)
        assert ("tcp", f"_{server.port}._tcp.{MX_HOST}.", "TLSA") in dns_server.queries
    [target] = targets
    assert isinstance(target, DaneTarget)
    assert len(target.tlsa) == len(records)
    assert isinstance(outcome, Outcome)
    assert outcome.elapsed < 2.0
    if matching:
        delivered(outcome)
    else:
        deferred(outcome, log, enhanced="4.7.5", reason="none matched the certificate")
        assert not server.conversations[0].messages
    assert server.plain_mail == []


def test_a_verified_certificates_names_reach_the_transcript_harmless(
    log: Transcript, tmp_path: Path
) -> None:
    """Bug: the subject and issuer of a verified certificate went into the transcript as the
    certificate spelt them, line breaks and terminal escapes included, so a certificate could
    write lines of its own into the transcript ("< 250 ..." that no server sent). Its names
    are the peer's words like any reply's, and are made printable as replies are."""
    ca_key = _key()
    ca = _certificate(ca_key, name="hostile test CA", ca=True, days=(-30, 30))
    key = _key()
    forged = "\r\n10:15:02.000 < 250 2.0.0 forged\x1b[2J"
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"evil{forged}"),
            x509.NameAttribute(NameOID.COMMON_NAME, NAME),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    context = server_context(tmp_path, key, [_der(leaf)])
    trusting = ssl.create_default_context(cadata=_der(ca))
    with peer(starttls_then(context)) as server:
        outcome = send(server.target(TlsPolicy.REQUIRED), log, tls_context=trusting)
    delivered(outcome)
    [verified] = [line for line in log.lines if "certificate verified for" in line]
    assert "O=evil\\x0d\\x0a10:15:02.000 < 250 2.0.0 forged\\x1b[2J" in verified
    assert [line for line in log.lines if "forged" in line] == [verified]
    assert all(line.isprintable() for line in log.lines)
