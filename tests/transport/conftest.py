"""Transport test fixtures: a transcript on a fixed clock, a transport with short waits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from spoolmail._core.transcript import Transcript
from spoolmail._transport.smtp import SmtpTimeouts, SmtpTransport

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
