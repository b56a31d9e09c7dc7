"""What the MTA-STS and DANE integration tests share: the sending host's names, a STARTTLS
MX server at ``mx1.example.test`` (127.0.0.11) with the test CA's certificate, a client transport
that trusts that CA, and a message to submit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from spoolmail import Spool
from spoolmail._transport.smtp import SmtpTransport
from tests.smtpservers import SHORT, SmtpServer
from tests.tlscerts import TestCertificates

__all__ = ["FQDN", "MX1", "SENDER", "submit", "tls_mx", "transport"]

FQDN = "mail.example.com"
SENDER = "alice@example.com"
MX1 = "127.0.0.11"


@contextmanager
def tls_mx(certificates: TestCertificates, port: int) -> Iterator[SmtpServer]:
    """``mx1.example.test``'s server: aiosmtpd with STARTTLS and the test CA's certificate."""
    with SmtpServer(host=MX1, port=port, tls_context=certificates.server_context()) as server:
        yield server


def transport(certificates: TestCertificates) -> SmtpTransport:
    """The SMTP client, trusting the test CA (a verified handshake with ``tls_mx``)."""
    return SmtpTransport(helo_name=FQDN, timeouts=SHORT, tls_context=certificates.client_context())


def submit(spool: Spool, *recipients: str, subject: str) -> None:
    head = f"From: {SENDER}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    spool.submit(head.encode(), sender=SENDER, recipients=list(recipients))
