"""STARTTLS and AUTH PLAIN/LOGIN, through smtplib on loopback with the test CA's certificates."""

from __future__ import annotations

import base64
import logging
import smtplib
import ssl
from pathlib import Path

import pytest

from spoolmail import PasswordFile, Spool
from spoolmail._listen.passwords import hash_password
from spoolmail.exceptions import ConfigurationError
from tests.listen.conftest import Connect, running
from tests.listen.raw import RawClient
from tests.tlscerts import TestCertificates, make_certificates

MESSAGE = b"From: app@client.test\r\nTo: x@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"
USERS = {"app": "s3cret-pass", "j\u00f6rg": "p\u00e4ss"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def check(user: str, password: str) -> bool:
    return USERS.get(user) == password


def tls_client(connect: Connect, listener: object, certificates: TestCertificates) -> smtplib.SMTP:
    client = connect(listener)
    context = certificates.client_context()
    context.check_hostname = False  # the test certificate names mx.test, we dial 127.0.0.1
    assert client.starttls(context=context)[0] == 220
    client.ehlo()
    return client


def test_starttls_then_auth_plain_relays_and_the_received_field_says_so(
    spool: Spool, connect: Connect, certificates: TestCertificates
) -> None:
    with running(
        spool,
        tls_certificate=certificates.server_certificate,
        tls_key=certificates.server_key,
        credentials=check,
    ) as listener:
        client = connect(listener)
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features  # not before TLS
        client = tls_client(connect, listener, certificates)
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        client.user, client.password = "app", USERS["app"]
        assert client.auth("PLAIN", client.auth_plain)[0] == 235
        assert client.sendmail("app@client.test", ["x@remote.test"], MESSAGE) == {}
        (item,) = spool.queued()
        stored = spool.message(item.id)
        assert b"\r\n\t(using TLSv1." in stored
        assert b" with cipher " in stored
        assert f"with ESMTPSA id {item.id}".encode() in stored


def test_auth_login_with_a_unicode_name(
    spool: Spool, connect: Connect, certificates: TestCertificates
) -> None:
    with running(spool, tls_context=certificates.server_context(), credentials=check) as listener:
        client = tls_client(connect, listener, certificates)
        # smtplib sends only ASCII in AUTH: the exchange by hand, as RFC 4954 has it.
        assert client.docmd("AUTH", "LOGIN") == (334, base64.b64encode(b"Username:"))
        user = base64.b64encode("j\u00f6rg".encode()).decode()
        assert client.docmd(user) == (334, base64.b64encode(b"Password:"))
        password = base64.b64encode(USERS["j\u00f6rg"].encode()).decode()
        assert client.docmd(password)[0] == 235
        client.mail("j@client.test")
        assert client.rcpt("x@remote.test")[0] == 250


def test_tls_alone_does_not_open_the_relay(
    spool: Spool, connect: Connect, certificates: TestCertificates
) -> None:
    with running(spool, tls_context=certificates.server_context(), credentials=check) as listener:
        client = tls_client(connect, listener, certificates)
        client.mail("a@client.test")
        assert client.rcpt("x@remote.test")[0] == 550
        assert client.rcpt("bob@example.com")[0] == 250
        client.data(MESSAGE)
        (item,) = spool.queued()
        assert b" with ESMTPS id " in spool.message(item.id)


def test_auth_before_tls_is_refused(
    spool: Spool, connect: Connect, certificates: TestCertificates
) -> None:
    with running(spool, tls_context=certificates.server_context(), credentials=check) as listener:
        client = connect(listener)
        plain = base64.b64encode(b"\0app\0" + USERS["app"].encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {plain}")
        assert (code, text[:7]) == (538, b"5.7.11 ")
        client.mail("a@client.test")
        assert client.rcpt("x@remote.test")[0] == 550


def test_without_credentials_there_is_no_auth(
    spool: Spool, connect: Connect, certificates: TestCertificates
) -> None:
    with running(spool, tls_context=certificates.server_context()) as listener:
        client = tls_client(connect, listener, certificates)
        assert "auth" not in client.esmtp_features
        assert client.docmd("AUTH", "PLAIN AGFwcABw")[0] == 504


def test_a_bad_password_is_535_and_never_logged(
    spool: Spool,
    connect: Connect,
    certificates: TestCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with running(spool, tls_context=certificates.server_context(), credentials=check) as listener:
        client = tls_client(connect, listener, certificates)
        client.user, client.password = "app", "wrong-horse"
        with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
            client.login("app", "wrong-horse")
        assert raised.value.smtp_code == 535
        assert raised.value.smtp_error.startswith(b"5.7.8 ")
        client.mail("a@client.test")
        assert client.rcpt("x@remote.test")[0] == 550
    text = caplog.text
    assert "wrong-horse" not in text
    assert base64.b64encode(b"wrong-horse").decode() not in text
    assert base64.b64encode(b"\0app\0wrong-horse").decode() not in text
    assert "AUTH failed for 'app'" in text


def test_repeated_failures_close_the_session(spool: Spool, certificates: TestCertificates) -> None:
    context = certificates.client_context()
    context.check_hostname = False
    with running(
        spool,
        tls_context=certificates.server_context(),
        credentials=check,
        limits={"max_auth_failures": 2},
    ) as listener:
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\nSTARTTLS\r\n")
        assert raw.replies(2)[1] == "220 2.0.0 Ready to start TLS"
        tls = context.wrap_socket(raw.sock, server_hostname="mx.test")
        bad = base64.b64encode(b"\0app\0nope")
        tls.sendall(b"EHLO c.test\r\nAUTH PLAIN " + bad + b"\r\nAUTH PLAIN " + bad + b"\r\n")
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        lines = received.decode().splitlines()
        assert lines[-3:] == [
            "535 5.7.8 Authentication credentials invalid",
            "535 5.7.8 Authentication credentials invalid",
            "421 4.7.0 mx.example.com Too many failed authentications",
        ]
        tls.close()


def test_malformed_auth_responses(
    spool: Spool, connect: Connect, certificates: TestCertificates
) -> None:
    with running(spool, tls_context=certificates.server_context(), credentials=check) as listener:
        client = tls_client(connect, listener, certificates)
        assert client.docmd("AUTH", "PLAIN not-base64!")[0] == 501
        assert client.docmd("AUTH", "PLAIN " + base64.b64encode(b"no-nuls").decode())[0] == 501
        assert client.docmd("AUTH", "PLAIN")[0] == 334
        assert client.docmd("*")[0] == 501  # the client gave up
        assert client.docmd("AUTH", "CRAM-MD5")[0] == 504
        client.mail("a@client.test")
        assert client.docmd("AUTH", "PLAIN AGFwcABw")[0] == 503  # not inside a transaction


def test_password_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    joerg = hash_password(USERS["j\u00f6rg"])
    path.write_text(
        f"# listener users\n\napp:{hash_password('s3cret-pass')}\nj\u00f6rg:{joerg}\n",
        encoding="utf-8",
    )
    users = PasswordFile(path)
    assert len(users) == 2
    assert users("app", "s3cret-pass")
    assert users("j\u00f6rg", "p\u00e4ss")
    assert not users("app", "s3cret-pas")
    assert not users("nobody", "s3cret-pass")
    assert "s3cret" not in repr(users)
    assert hash_password("x") != hash_password("x")  # salted


@pytest.mark.parametrize(
    "line",
    [
        "app:s3cret-pass",  # a password in the clear
        "app",
        ":scrypt$16384$8$1$AAAA$AAAA",
        "app:bcrypt$16384$8$1$AAAA$AAAA",
        "app:scrypt$1000$8$1$AAAA$AAAA",  # N not a power of two
        "app:scrypt$16384$8$1$!!$AAAA",
    ],
)
def test_a_bad_password_file_line_is_named_but_not_shown(tmp_path: Path, line: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# users\n{line}\n")
    with pytest.raises(ConfigurationError) as raised:
        PasswordFile(path)
    assert "line 2" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_tls_settings_are_checked(spool: Spool, certificates: TestCertificates) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        running(
            spool, tls_context=ssl.create_default_context(), tls_key=certificates.server_key
        ).__enter__()
    with pytest.raises(ConfigurationError, match="tls_key needs"):
        running(spool, tls_key=certificates.server_key).__enter__()
    with pytest.raises(ConfigurationError, match="tls_certificate"):
        running(spool, tls_certificate="/nonexistent.pem", tls_key="/x.key").__enter__()
