"""Transport test fixtures: a transcript on a fixed clock, a transport with short waits, and
throwaway TLS certificates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from spoolmail._core.transcript import Transcript
from spoolmail._transport.smtp import SmtpTimeouts, SmtpTransport
from tests.tlscerts import TestCertificates, make_certificates

# Long enough for a loaded CI machine, short enough that a hang shows up as a failure, not a stall.
SHORT = SmtpTimeouts(
    connect=5,
    greeting=5,
    ehlo=5,
    mail=5,
    rcpt=5,
    data_start=5,
    data_block=10,
    data_end=10,
    starttls=5,
    auth=5,
    rset=5,
    quit=1,
)


@pytest.fixture
def transcript() -> Transcript:
    return Transcript(clock=lambda: datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC))


@pytest.fixture
def transport() -> Iterator[SmtpTransport]:
    with SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport:
        yield transport


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    """A throwaway CA and server certificates, made once per test session (tests/tlscerts.py)."""
    return make_certificates(tmp_path_factory.mktemp("tls"))
