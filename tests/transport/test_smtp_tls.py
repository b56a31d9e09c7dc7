"""STARTTLS and AUTH in the SMTP client, against real servers on 127.0.0.1.

aiosmtpd offers STARTTLS with throwaway certificates (``tests/tlscerts.py``, made once per test
session) and AUTH PLAIN/LOGIN against a table of users; raw servers play the ones that offer
STARTTLS and then hang up. The transport trusts the test CA only. Every failure here must be
temporary, and nothing may be sent in the clear that the target's policy forbids: the servers'
records (``mail_froms``, ``commands``) show it was not. What the policies decide before any
handshake (STARTTLS not offered or refused, AUTH in the clear, a refused password, no usable
mechanism) is tested on bytes alone in ``test_transactions.py``.
"""

from __future__ import annotations

import base64
import io
import ssl
from collections.abc import Iterator, Sequence

import attrs
import pytest

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Credentials, Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport import smtp
from spoolmail._transport.base import Outgoing
from spoolmail._transport.session import unverified_context
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.exceptions import ConfigurationError
from tests.smtpservers import SHORT, SmtpServer, raw_server, smtp_server
from tests.tlscerts import TestCertificates

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
NAME = "mx1.example.test"  # on the test server certificate, with 127.0.0.1
MESSAGE = b"From: alice@example.net\r\nSubject: tls\r\n\r\nHello over TLS.\r\n"
USER = "relay-user"
PASSWORD = "s3cret-Pa55"  # noqa: S105 (a test server's throwaway password)
CREDENTIALS = Credentials(USER, PASSWORD)
QUEUED = Reply(250, "2.0.0", "Ok: queued", host=HOST)

# Raw servers' EHLO replies.
EHLO_STARTTLS = b"250-raw.test\r\n250 STARTTLS\r\n"
EHLO_AUTH = b"250-raw.test\r\n250 AUTH PLAIN LOGIN\r\n"


def outgoing(recipients: Sequence[str] = ("bob@example.com",)) -> Outgoing:
    return Outgoing(
        id="tls",
        sender="alice@example.net",
        recipients=recipients,
        size=len(MESSAGE),
        open=lambda: io.BytesIO(MESSAGE),
    )


def aimed(
    server_target: Target,
    tls: TlsPolicy,
    *,
    name: str | None = NAME,
    credentials: Credentials | None = None,
) -> Target:
    """The server's address as a resolver would hand it over: found under ``name``."""
    return attrs.evolve(
        server_target,
        literal=name is None,
        name=name,
        tls=tls,
        credentials=credentials,
    )


def secrets_in(text: str) -> list[str]:
    """Any form of the password that must never reach a transcript."""
    forms = [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    ]
    return [form for form in forms if form in text]


@pytest.fixture
def transport(certificates: TestCertificates) -> Iterator[SmtpTransport]:
    with SmtpTransport(
        helo_name="client.test", timeouts=SHORT, tls_context=certificates.client_context()
    ) as transport:
        yield transport


@pytest.fixture
def tls_server(certificates: TestCertificates) -> Iterator[SmtpServer]:
    """aiosmtpd offering STARTTLS with the trusted certificate, and AUTH (after TLS) for USER."""
    with smtp_server(
        tls_context=certificates.server_context(), auth_users={USER: PASSWORD}
    ) as server:
        yield server


def test_tls_context_must_verify() -> None:
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with pytest.raises(ConfigurationError, match="tls_context"):
        SmtpTransport(helo_name="client.test", tls_context=unverified)


# STARTTLS.


def test_opportunistic_uses_starttls_when_offered(
    transport: SmtpTransport, transcript: Transcript, tls_server: SmtpServer
) -> None:
    target = aimed(tls_server.target, TlsPolicy.OPPORTUNISTIC)
    [reply] = transport.send(target, outgoing(), transcript).values()
    assert reply == QUEUED
    [received] = tls_server.messages
    assert received.tls
    assert received.data == MESSAGE
    text = transcript.text
    assert f"* connecting to {NAME}[{HOST}]:{tls_server.port}" in text
    assert "> STARTTLS" in text
    assert "* TLS started: TLSv1." in text
    assert "certificate not verified (opportunistic policy)" in text
    # RFC 3207 §4.2: EHLO again, over TLS, before the transaction.
    assert text.count("> EHLO client.test") == 2
    assert text.index("TLS started") < text.rindex("> EHLO") < text.index("> MAIL")


def test_the_unverified_context_is_made_at_the_first_starttls_only(
    transcript: Transcript, tls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making a TLS context costs about 10 ms, in every worker at its start: a transport makes
    the opportunistic one when a server first offers STARTTLS, and keeps it."""
    made: list[ssl.SSLContext] = []

    def counted() -> ssl.SSLContext:
        made.append(unverified_context())
        return made[-1]

    monkeypatch.setattr(smtp, "unverified_context", counted)
    with SmtpTransport(helo_name="client.test", timeouts=SHORT, max_idle=0) as transport:
        plain = aimed(tls_server.target, TlsPolicy.NEVER)
        assert list(transport.send(plain, outgoing(), transcript).values()) == [QUEUED]
        assert made == []
        target = aimed(tls_server.target, TlsPolicy.OPPORTUNISTIC)
        for _ in range(2):  # max_idle=0: a new connection, and a new handshake, each time
            assert list(transport.send(target, outgoing(), transcript).values()) == [QUEUED]
        assert transport.connection_counts() == (3, 0)
    assert len(made) == 1
    assert [received.tls for received in tls_server.messages] == [False, True, True]


def test_never_does_not_start_tls(
    transport: SmtpTransport, transcript: Transcript, tls_server: SmtpServer
) -> None:
    [reply] = transport.send(
        aimed(tls_server.target, TlsPolicy.NEVER), outgoing(), transcript
    ).values()
    assert reply == QUEUED
    assert not tls_server.messages[0].tls
    assert "> STARTTLS" not in transcript.text


def test_opportunistic_handshake_failure_falls_back_to_plain_text(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    # Says 220 to STARTTLS, then hangs up instead of doing TLS.
    with raw_server(
        replies={"EHLO": EHLO_STARTTLS, "STARTTLS": b"220 2.0.0 Ready to start TLS\r\n"},
        hang_up_after={"STARTTLS"},
    ) as server:
        [reply] = transport.send(
            aimed(server.target, TlsPolicy.OPPORTUNISTIC), outgoing(), transcript
        ).values()
    assert reply == Reply(250, "2.0.0", "Ok: queued", host=HOST)
    assert server.connections == 2
    assert server.commands.count("STARTTLS") == 1
    assert server.data, "the message went on the second, plain connection"
    text = transcript.text
    assert f"TLS handshake with {NAME}[{HOST}]:{server.port} failed: " in text
    assert "connecting again in plain text (opportunistic)" in text


@pytest.mark.parametrize("tls", [TlsPolicy.ENCRYPT, TlsPolicy.REQUIRED])
def test_required_tls_handshake_failure_is_temporary(
    transport: SmtpTransport, transcript: Transcript, tls: TlsPolicy
) -> None:
    with raw_server(
        replies={"EHLO": EHLO_STARTTLS, "STARTTLS": b"220 2.0.0 Ready to start TLS\r\n"},
        hang_up_after={"STARTTLS"},
    ) as server:
        replies = transport.send(
            aimed(server.target, tls), outgoing(["a@x.test", "b@x.test"]), transcript
        )
    assert {(r.code, r.enhanced) for r in replies.values()} == {(451, "4.7.5")}
    assert all("TLS handshake with" in r.text for r in replies.values())
    assert server.connections == 1
    assert not any(c.startswith("MAIL") for c in server.commands)


def test_opportunistic_handshake_failure_with_credentials_is_temporary(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    with raw_server(
        replies={"EHLO": EHLO_STARTTLS, "STARTTLS": b"220 2.0.0 Ready to start TLS\r\n"},
        hang_up_after={"STARTTLS"},
    ) as server:
        target = aimed(server.target, TlsPolicy.OPPORTUNISTIC, credentials=CREDENTIALS)
        [reply] = transport.send(target, outgoing(), transcript).values()
    assert (reply.code, reply.enhanced) == (451, "4.7.5")
    assert server.connections == 1


def test_encrypt_does_not_check_the_certificate(
    transport: SmtpTransport, transcript: Transcript, certificates: TestCertificates
) -> None:
    with smtp_server(tls_context=certificates.server_context(rogue=True)) as server:
        target = aimed(server.target, TlsPolicy.ENCRYPT, name="wrong.example.test")
        [reply] = transport.send(target, outgoing(), transcript).values()
    assert reply == QUEUED
    assert server.messages[0].tls
    assert "certificate not verified (encrypt policy)" in transcript.text


@pytest.mark.parametrize("name", [NAME, None], ids=["by-name", "literal-address"])
def test_required_verifies_the_certificate(
    transport: SmtpTransport, transcript: Transcript, tls_server: SmtpServer, name: str | None
) -> None:
    target = aimed(tls_server.target, TlsPolicy.REQUIRED, name=name)
    [reply] = transport.send(target, outgoing(), transcript).values()
    assert reply == QUEUED
    assert tls_server.messages[0].tls
    checked = name or HOST  # a literal is checked against the certificate's IP addresses
    assert (
        f"certificate verified for {checked}: subject O=spoolmail tests, CN={NAME}, "
        "issuer O=spoolmail tests, CN=spoolmail test CA"
    ) in transcript.text


def test_required_with_the_wrong_name_is_temporary_and_sends_nothing(
    transport: SmtpTransport, transcript: Transcript, tls_server: SmtpServer
) -> None:
    target = aimed(tls_server.target, TlsPolicy.REQUIRED, name="wrong.example.test")
    [reply] = transport.send(target, outgoing(), transcript).values()
    assert (reply.code, reply.enhanced) == (451, "4.7.5")
    assert "certificate is not valid for 'wrong.example.test'" in reply.text
    assert tls_server.handler.mail_froms == []


def test_required_with_an_untrusted_ca_is_temporary_and_sends_nothing(
    transport: SmtpTransport, transcript: Transcript, certificates: TestCertificates
) -> None:
    with smtp_server(tls_context=certificates.server_context(rogue=True)) as server:
        [reply] = transport.send(
            aimed(server.target, TlsPolicy.REQUIRED), outgoing(), transcript
        ).values()
    assert (reply.code, reply.enhanced) == (451, "4.7.5")
    assert "certificate verify failed" in reply.text
    assert server.handler.mail_froms == []
    assert "session ended: 451 4.7.5" in transcript.text


def test_required_uses_the_system_trust_store_by_default(
    transcript: Transcript, tls_server: SmtpServer
) -> None:
    with SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport:
        [reply] = transport.send(
            aimed(tls_server.target, TlsPolicy.REQUIRED), outgoing(), transcript
        ).values()
    # The throwaway CA is in no system store.
    assert (reply.code, reply.enhanced) == (451, "4.7.5")


# AUTH.


@pytest.mark.parametrize("mechanisms", [("PLAIN", "LOGIN"), ("LOGIN",)], ids=["plain", "login"])
def test_auth_after_starttls(
    transport: SmtpTransport,
    transcript: Transcript,
    certificates: TestCertificates,
    mechanisms: tuple[str, ...],
) -> None:
    with smtp_server(
        tls_context=certificates.server_context(),
        auth_users={USER: PASSWORD},
        auth_mechanisms=mechanisms,
        auth_required=True,
    ) as server:
        target = aimed(server.target, TlsPolicy.ENCRYPT, credentials=CREDENTIALS)
        [reply] = transport.send(target, outgoing(), transcript).values()
    assert reply == QUEUED
    mechanism = mechanisms[0]  # PLAIN when offered
    assert server.handler.logins == [(mechanism, USER, True)]
    [received] = server.messages
    assert (received.tls, received.login) == (True, USER)
    text = transcript.text
    if mechanism == "PLAIN":
        assert "> AUTH PLAIN <redacted>" in text
    else:
        assert "> AUTH LOGIN" in text
        assert "> <password redacted>" in text
    assert f"* authenticated as {USER} ({mechanism})" in text
    assert text.index("> STARTTLS") < text.index("> AUTH") < text.index("> MAIL")
    assert secrets_in(text) == []


def test_credentials_with_tls_never_do_not_connect(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    with raw_server(replies={"EHLO": EHLO_AUTH}) as server:
        target = aimed(server.target, TlsPolicy.NEVER, credentials=CREDENTIALS)
        [reply] = transport.send(target, outgoing(), transcript).values()
    assert (reply.code, reply.enhanced) == (451, "4.7.10")
    assert server.connections == 0


# Connection reuse with TLS and credentials.


def test_kept_connections_are_keyed_by_tls_policy_and_credentials(
    transport: SmtpTransport, transcript: Transcript, tls_server: SmtpServer
) -> None:
    plain = aimed(tls_server.target, TlsPolicy.NEVER)
    encrypted = aimed(tls_server.target, TlsPolicy.ENCRYPT)
    authenticated = aimed(tls_server.target, TlsPolicy.ENCRYPT, credentials=CREDENTIALS)
    for target in (plain, encrypted, authenticated, plain, encrypted, authenticated):
        [reply] = transport.send(target, outgoing(), transcript).values()
        assert reply == QUEUED
    assert tls_server.connections == 3
    assert [(m.connection, m.tls, m.login) for m in tls_server.messages] == [
        (1, False, None),
        (2, True, None),
        (3, True, USER),
        (1, False, None),
        (2, True, None),
        (3, True, USER),
    ]
    assert tls_server.handler.logins == [("PLAIN", USER, True)]
