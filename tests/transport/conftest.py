"""Transport test fixtures: a transcript on a fixed clock, a transport with short waits, and
throwaway TLS certificates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from spoolmail._core.transcript import Transcript
from spoolmail._transport.smtp import SmtpTransport
from tests.smtpservers import SHORT
from tests.tlscerts import TestCertificates, make_certificates


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
