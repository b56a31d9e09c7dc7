"""Real SMTP clients against the listener on loopback: swaks and Postfix's smtp-source."""

from __future__ import annotations

import os
import subprocess

import pytest

from spoolmail import Spool
from tests.listen.conftest import host_port, running
from tests.peers import REQUIRE_ENV, require_program
from tests.tlscerts import TestCertificates, make_certificates


def swaks_with_tls() -> str:
    swaks = require_program("swaks", package="swaks")
    support = subprocess.run(
        [swaks, "--support"], capture_output=True, text=True, timeout=30, check=False
    )
    if "TLS not available" in support.stdout + support.stderr:
        why = "swaks has no TLS here (Debian package libnet-ssleay-perl)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{why}, and {REQUIRE_ENV}=1 requires it", pytrace=False)
        pytest.skip(why)
    return swaks


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def test_swaks_starttls_and_auth_relays(spool: Spool, certificates: TestCertificates) -> None:
    swaks = swaks_with_tls()
    with running(
        spool,
        tls_context=certificates.server_context(),
        credentials=lambda user, password: (user, password) == ("app", "s3cret"),
    ) as listener:
        host, port = host_port(listener)
        result = subprocess.run(
            [
                swaks,
                "--server",
                host,
                "--port",
                str(port),
                "--helo",
                "client.test",
                "--from",
                "app@client.test",
                "--to",
                "someone@remote.test",
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "app",
                "--auth-password",
                "s3cret",
                "--header",
                "Subject: from swaks",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "<~  235 2.7.0 Authentication successful" in result.stdout
        (item,) = spool.queued()
        assert [r.address for r in item.envelope.recipients] == ["someone@remote.test"]
        assert b" with ESMTPSA id " in spool.message(item.id)
        assert b"Subject: from swaks" in spool.message(item.id)


def test_swaks_is_refused_relaying_without_auth(spool: Spool) -> None:
    swaks = require_program("swaks", package="swaks")
    with running(spool) as listener:
        host, port = host_port(listener)
        result = subprocess.run(
            [
                swaks,
                "--server",
                host,
                "--port",
                str(port),
                "--helo",
                "client.test",
                "--from",
                "app@client.test",
                "--to",
                "someone@remote.test",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 24, result.stdout  # swaks: "RCPT TO" refused
        assert "<** 550 5.7.1 Unable to relay for someone@remote.test" in result.stdout
        assert list(spool.queued()) == []


def test_smtp_source_50_messages_over_5_sessions_all_queued_once(spool: Spool) -> None:
    smtp_source = require_program("smtp-source", package="postfix")
    with running(spool, limits={"max_sessions": 10}) as listener:
        host, port = host_port(listener)
        result = subprocess.run(
            [
                smtp_source,
                "-s",
                "5",
                "-m",
                "50",
                "-c",
                "-f",
                "load@client.test",
                "-t",
                "bob@example.com",
                f"{host}:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        items = list(spool.queued())
        assert len(items) == 50
        assert len({item.id for item in items}) == 50
        assert {item.envelope.sender for item in items} == {"load@client.test"}
