"""MX delivery through the whole service: Pickup → ``MailService.run_once`` → real DNS → real SMTP.

Every test submits into Pickup of a MailRoot on disk (OSFS in ``tmp_path``), runs the service
on a :class:`~spoolmail.testing.FakeClock`, and looks at the outcome from both ends: the spool
and the report (delivered, deferred, failed; the DSN a local sender gets in Drop; the transcript
of a message that stays queued), and the servers (who received what, over TLS or not, as which
user, over how many connections). Names are looked up in a real dnsmasq (``tests/dnsserver.py``,
the session's :data:`~tests.dnsserver.RECORDS`), through the router's resolver and the
``DnsResolver`` the service builds from it; mail goes to aiosmtpd and raw servers listening at
the 127.0.0.x addresses those records give, all on one port, the router's ``smtp_port``
(``mx_port``, see ``conftest.py``). docs/design.md#testing, docs/delivery.md.

A message delivered in full leaves no transcript behind; a test that reads one gives the
message a ``tempfail@`` recipient as well, whom every scripted server defers (451), so the
message stays queued with its transcript.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import random
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest

from spoolmail import (
    Credentials,
    Limits,
    MailService,
    RecipientState,
    Reply,
    Report,
    Router,
    SmartHostMode,
    Spool,
    TlsPolicy,
)
from spoolmail._transport.dns import DnsResolver
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.testing import FakeClock
from tests.dnsserver import DnsServer
from tests.smtpservers import (
    SHORT,
    ScriptedHandler,
    SmtpServer,
    dropping_server,
    stalling_server,
)
from tests.tlscerts import TestCertificates

pytestmark = pytest.mark.integration

FQDN = "mail.example.com"
SENDER = "alice@example.com"
"""A sender at the local domain: the DSNs about her mail are delivered to Drop."""

# Where tests/dnsserver.py's RECORDS put the mail hosts.
MX1 = "127.0.0.11"  # mx1.example.test, MX 10 of example.test
MX2 = "127.0.0.12"  # mx2.example.test, MX 10 of example.test
BACKUP = "127.0.0.13"  # backup.example.test, MX 20 of example.test
IMPLICIT = "127.0.0.21"  # implicit.test: no MX record, so its own A record (implicit MX)

# dnsmasq answers in well under a millisecond; only slow.test waits for the lifetime.
DNS_TIMEOUT = 0.2
DNS_LIFETIME = 0.5
STALL_GREETING = 0.3
# How long a tick against a server that never greets may take: the greeting timeout and some
# room for a loaded machine, far below any of RFC 5321's minutes.
STALL_BUDGET = 3.0

ContextT = TypeVar("ContextT")


class InOrder(random.Random):
    """Leaves MX hosts of equal preference in name order (``mx1`` before ``mx2``), for tests
    that need to know which host is tried first."""

    def shuffle(self, x: Any) -> None:
        pass


@attrs.define
class Servers:
    """The servers of one test: MX hosts at their 127.0.0.x address on ``port``, and others
    (smart hosts, routes) on 127.0.0.1 and a port of their own. All stop when the test ends."""

    stack: contextlib.ExitStack
    port: int

    def mx(self, host: str, handler: ScriptedHandler | None = None, **options: Any) -> SmtpServer:
        """An aiosmtpd server as the mail host at ``host`` (``options``: see SmtpServer)."""
        return self.start(SmtpServer(handler, host=host, port=self.port, **options))

    def start(self, server: contextlib.AbstractContextManager[ContextT]) -> ContextT:
        return self.stack.enter_context(server)


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


@pytest.fixture
def servers(mx_port: int) -> Iterator[Servers]:
    with contextlib.ExitStack() as stack:
        yield Servers(stack, mx_port)


ServiceFactory = Callable[..., MailService]


@pytest.fixture
def make_service(
    spool: Spool, clock: FakeClock, dns_server: DnsServer, servers: Servers
) -> Iterator[ServiceFactory]:
    """``make_service(**router_options)``: a MailService for ``example.com`` that finds MX hosts
    in the test DNS and reaches them on ``servers.port``. ``rng`` orders equal MX preferences
    (default: the service's own DnsResolver, shuffling at random); ``transport``,
    ``masquerade_domain`` and ``limits`` go to the service. Closed before the servers stop."""
    made: list[MailService] = []

    def make(
        *,
        rng: random.Random | None = None,
        transport: SmtpTransport | None = None,
        masquerade_domain: str | None = None,
        limits: Limits | None = None,
        **router_options: Any,
    ) -> MailService:
        router = Router(
            local_domains=["example.com"],
            smtp_port=servers.port,
            **router_options,
        )
        dns = dns_server.resolver(timeout=DNS_TIMEOUT, lifetime=DNS_LIFETIME)
        service = MailService(
            spool,
            router=router,
            dns_resolver=dns,
            transport=transport or SmtpTransport(helo_name=FQDN, timeouts=SHORT),
            host_resolver=None
            if rng is None
            else DnsResolver(resolver=dns, local_names=[FQDN], rng=rng),
            clock=clock,
            fqdn=FQDN,
            masquerade_domain=masquerade_domain,
            limits=limits,
        )
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


def submit(spool: Spool, *recipients: str, body: bytes = b"Hello.\r\n") -> None:
    """Put a message from :data:`SENDER` to ``recipients`` into Pickup."""
    head = (
        f"From: Alice <{SENDER}>\r\nTo: {', '.join(recipients)}\r\nSubject: MX test\r\n\r\n"
    ).encode()
    spool.submit(head + body, sender=SENDER, recipients=list(recipients))


def reply_to(spool: Spool, queue_id: str, address: str) -> Reply:
    """The last reply about ``address`` of a message that is still queued."""
    [recipient] = [
        r for r in spool.queued_message(queue_id).envelope.recipients if r.address == address
    ]
    assert recipient.reply is not None
    return recipient.reply


def states(spool: Spool, queue_id: str) -> dict[str, RecipientState]:
    return {r.address: r.state for r in spool.queued_message(queue_id).envelope.recipients}


def failure_dsn(spool: Spool, report: Report) -> tuple[str, list[email.message.Message]]:
    """The one failure DSN this tick sent the (local) sender: its human-readable text and its
    per-recipient fields (RFC 3464)."""
    [dsn_id] = report.dsns
    assert spool.drop_item(dsn_id).recipients == (SENDER,)
    dsn = email.message_from_bytes(spool.drop_message(dsn_id), policy=email.policy.default)
    assert dsn["Subject"] == "Delivery Status Notification (Failure)"
    assert isinstance(dsn, email.message.EmailMessage)
    # multipart/report: the explanation, the delivery-status, the original.
    text, status, *_ = dsn.iter_parts()
    payload = status.get_payload()
    assert isinstance(payload, list)
    if status.get_content_type() == "message/global-delivery-status":
        # RFC 6533, for a UTF-8 recipient: the email package reads this type as one message,
        # the per-message fields its header and the per-recipient groups its body.
        [fields] = payload
        body = fields.get_payload()
        assert isinstance(body, str)
        blocks = re.split(r"\r?\n\r?\n", body.strip())
        return text.get_content(), [email.message_from_string(block) for block in blocks]
    # The per-message fields, then one group of fields per recipient.
    groups = [fields for fields in payload[1:] if isinstance(fields, email.message.Message)]
    return text.get_content(), groups


# --- MX order ------------------------------------------------------------------------------------


def test_mx_preference_order_and_equal_preferences_shared(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    # example.test: MX 10 mx1, MX 10 mx2, MX 20 backup. The seeded draw spreads the 20
    # messages over both preference-10 hosts; the backup is never needed.
    mx1, mx2, backup = servers.mx(MX1), servers.mx(MX2), servers.mx(BACKUP)
    service = make_service(rng=random.Random(5321))
    for n in range(20):
        submit(spool, f"user{n}@example.test")
    report = service.run_once()
    assert len(report.delivered) == 20
    assert len(report.finished) == 20
    assert len(mx1.messages) >= 1
    assert len(mx2.messages) >= 1
    assert len(mx1.messages) + len(mx2.messages) == 20
    assert backup.connections == 0


def test_first_mx_down_the_next_one_is_used(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    # Nothing listens at mx1 (127.0.0.11): its connection is refused, mx2 takes the mail.
    mx2, backup = servers.mx(MX2), servers.mx(BACKUP)
    service = make_service(rng=InOrder())
    submit(spool, "bob@example.test", "tempfail@example.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@example.test"),)
    assert report.deferred == ((queue_id, "tempfail@example.test"),)
    [received] = mx2.messages
    assert received.rcpt_tos == ("bob@example.test",)
    # The backup was asked only about the recipient mx2 deferred.
    assert backup.handler.rcpt_tos == ["tempfail@example.test"]
    assert backup.messages == []

    transcript = spool.transcript(queue_id)
    port = servers.port
    tried = [
        transcript.index(f"connecting to {name}.example.test[{address}]:{port}")
        for name, address in (("mx1", MX1), ("mx2", MX2), ("backup", BACKUP))
    ]
    assert tried == sorted(tried)
    assert f"connection to mx1.example.test[{MX1}]:{port} failed: Connection refused" in transcript
    assert f"connected to mx2.example.test[{MX2}]:{port}" in transcript
    assert f"connected to backup.example.test[{BACKUP}]:{port}" in transcript


def test_4xx_at_the_first_mx_sends_the_deferred_recipients_to_the_next(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    # mx1 defers tempfail@ (451) and takes bob@; mx2 takes anyone and gets tempfail@ alone.
    mx1 = servers.mx(MX1)
    mx2 = servers.mx(MX2, ScriptedHandler(rcpt_answers={}))
    backup = servers.mx(BACKUP)
    service = make_service(rng=InOrder())
    submit(spool, "bob@example.test", "tempfail@example.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert sorted(report.delivered) == [
        (queue_id, "bob@example.test"),
        (queue_id, "tempfail@example.test"),
    ]
    assert report.finished == (queue_id,)
    assert [m.rcpt_tos for m in mx1.messages] == [("bob@example.test",)]
    assert [m.rcpt_tos for m in mx2.messages] == [("tempfail@example.test",)]
    assert backup.connections == 0


def test_all_mx_down_defers_until_one_comes_back(
    spool: Spool, servers: Servers, make_service: ServiceFactory, clock: FakeClock
) -> None:
    service = make_service()
    submit(spool, "bob@example.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "bob@example.test"),)
    assert reply_to(spool, queue_id, "bob@example.test").enhanced == "4.4.1"
    transcript = spool.transcript(queue_id)
    for name, address in (("mx1", MX1), ("mx2", MX2), ("backup", BACKUP)):
        where = f"{name}.example.test[{address}]:{servers.port}"
        assert f"connection to {where} failed: Connection refused" in transcript

    # The backup comes back; nothing is tried before the retry time, then the mail goes.
    backup = servers.mx(BACKUP)
    next_attempt = spool.queued_message(queue_id).envelope.next_attempt
    clock.set(next_attempt - timedelta(seconds=1))
    assert not service.run_once()
    clock.set(next_attempt)
    report = service.run_once()
    assert report.delivered == ((queue_id, "bob@example.test"),)
    assert report.finished == (queue_id,)
    assert [m.rcpt_tos for m in backup.messages] == [("bob@example.test",)]
    assert list(spool.queued()) == []


def test_implicit_mx_is_the_domain_own_address(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.mx(IMPLICIT)
    service = make_service()
    submit(spool, "carol@implicit.test", "tempfail@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "carol@implicit.test"),)
    assert [m.rcpt_tos for m in server.messages] == [("carol@implicit.test",)]
    transcript = spool.transcript(queue_id)
    assert "MX implicit.test: implicit MX" in transcript
    assert f"connected to implicit.test[{IMPLICIT}]:{servers.port}" in transcript


def test_an_mx_host_whose_name_fails_is_skipped(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    # partial.test: MX 10 mx.broken.test (its DNS server refuses), MX 20 backup.example.test.
    backup = servers.mx(BACKUP)
    service = make_service()
    submit(spool, "bob@partial.test", "tempfail@partial.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@partial.test"),)
    assert [m.rcpt_tos for m in backup.messages] == [("bob@partial.test",)]
    transcript = spool.transcript(queue_id)
    assert "A mx.broken.test: no nameserver answered" in transcript
    assert f"connected to backup.example.test[{BACKUP}]:{servers.port}" in transcript


# --- DNS verdicts --------------------------------------------------------------------------------


def test_null_mx_fails_at_once_without_a_connection(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    service = make_service()
    submit(spool, "dave@nullmx.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.failed == ((queue_id, "dave@nullmx.test"),)
    assert report.deferred == ()
    text, [status] = failure_dsn(spool, report)
    assert status["Final-Recipient"] == "rfc822; dave@nullmx.test"
    assert status["Status"] == "5.1.10"
    assert "null MX" in text
    assert status["Remote-MTA"] is None  # no host was asked


def test_nxdomain_fails_with_5_1_2(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    service = make_service()
    submit(spool, "erin@nosuch.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.failed == ((queue_id, "erin@nosuch.test"),)
    text, [status] = failure_dsn(spool, report)
    assert status["Status"] == "5.1.2"
    assert "NXDOMAIN" in text
    assert status["Remote-MTA"] is None


@pytest.mark.parametrize(
    ("domain", "why"),
    [("mail.broken.test", "REFUSED"), ("mail.slow.test", "timed out")],
)
def test_dns_failure_defers_with_4_4_3(
    spool: Spool, servers: Servers, make_service: ServiceFactory, domain: str, why: str
) -> None:
    service = make_service()
    submit(spool, f"frank@{domain}")
    started = time.monotonic()
    report = service.run_once()
    elapsed = time.monotonic() - started
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, f"frank@{domain}"),)
    assert report.dsns == ()
    reply = reply_to(spool, queue_id, f"frank@{domain}")
    assert reply.enhanced == "4.4.3"
    assert why in reply.text
    assert f"MX {domain}:" in spool.transcript(queue_id)
    assert elapsed < DNS_LIFETIME + 2.0


# --- routes and smart hosts ----------------------------------------------------------------------


def test_fallback_smart_host_takes_what_the_mx_hosts_could_not(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    # example.test's MX hosts are all down; implicit.test's is up.
    direct = servers.mx(IMPLICIT)
    smart = servers.start(SmtpServer())
    service = make_service(smart_host=str(smart.target), smart_host_mode=SmartHostMode.FALLBACK)
    submit(spool, "bob@example.test", "carol@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert sorted(report.delivered) == [
        (queue_id, "bob@example.test"),
        (queue_id, "carol@implicit.test"),
    ]
    assert [m.rcpt_tos for m in direct.messages] == [("carol@implicit.test",)]
    assert [m.rcpt_tos for m in smart.messages] == [("bob@example.test",)]


def test_a_route_overrides_mx_and_dns(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    mx1, mx2, backup = servers.mx(MX1), servers.mx(MX2), servers.mx(BACKUP)
    partner = servers.start(SmtpServer())
    service = make_service(
        routes={
            # By name: looked up as a host (A record), not as MX.
            "example.test": f"backup.example.test:{servers.port}",
            # By address: no lookup at all, so a domain the DNS does not know still gets mail.
            "nosuch.test": str(partner.target),
        }
    )
    submit(spool, "bob@example.test", "erin@nosuch.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.finished == (queue_id,)
    assert [m.rcpt_tos for m in backup.messages] == [("bob@example.test",)]
    assert [m.rcpt_tos for m in partner.messages] == [("erin@nosuch.test",)]
    assert mx1.connections == mx2.connections == 0


# --- TLS and AUTH --------------------------------------------------------------------------------


def test_starttls_opportunistic_encrypts_without_checking(
    spool: Spool,
    servers: Servers,
    make_service: ServiceFactory,
    certificates: TestCertificates,
) -> None:
    # The certificate names mx1.example.test, not implicit.test: no matter, nothing is checked.
    server = servers.mx(IMPLICIT, tls_context=certificates.server_context())
    service = make_service()
    submit(spool, "carol@implicit.test", "tempfail@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "carol@implicit.test"),)
    [received] = server.messages
    assert received.tls
    transcript = spool.transcript(queue_id)
    assert "> STARTTLS" in transcript
    assert "certificate not verified (opportunistic policy)" in transcript


def test_starttls_required_verifies_the_mx_name(
    spool: Spool,
    servers: Servers,
    make_service: ServiceFactory,
    certificates: TestCertificates,
) -> None:
    mx1 = servers.mx(MX1, tls_context=certificates.server_context())
    service = make_service(
        rng=InOrder(),
        tls_domains={"example.test": TlsPolicy.REQUIRED},
        transport=SmtpTransport(
            helo_name=FQDN, timeouts=SHORT, tls_context=certificates.client_context()
        ),
    )
    submit(spool, "bob@example.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@example.test"),)
    [received] = mx1.messages
    assert received.tls


def test_starttls_required_refuses_a_certificate_for_another_name(
    spool: Spool,
    servers: Servers,
    make_service: ServiceFactory,
    certificates: TestCertificates,
) -> None:
    # A certificate the test CA signed, but for mx1.example.test, not implicit.test.
    server = servers.mx(IMPLICIT, tls_context=certificates.server_context())
    service = make_service(
        tls_domains={"implicit.test": TlsPolicy.REQUIRED},
        transport=SmtpTransport(
            helo_name=FQDN, timeouts=SHORT, tls_context=certificates.client_context()
        ),
    )
    submit(spool, "carol@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "carol@implicit.test"),)
    reply = reply_to(spool, queue_id, "carol@implicit.test")
    assert reply.enhanced == "4.7.5"
    assert "implicit.test" in reply.text
    assert server.handler.mail_froms == []


def test_starttls_required_but_not_offered_defers_before_mail(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.mx(IMPLICIT)  # no tls_context: no STARTTLS in its EHLO reply
    service = make_service(tls_domains={"implicit.test": TlsPolicy.REQUIRED})
    submit(spool, "carol@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "carol@implicit.test"),)
    reply = reply_to(spool, queue_id, "carol@implicit.test")
    assert reply.enhanced == "4.7.4"
    assert "does not offer STARTTLS" in reply.text
    assert server.connections == 1
    assert server.handler.mail_froms == []


def test_auth_to_the_smart_host_over_tls(
    spool: Spool,
    servers: Servers,
    make_service: ServiceFactory,
    certificates: TestCertificates,
) -> None:
    smart = servers.start(
        SmtpServer(tls_context=certificates.server_context(), auth_users={"relay": "s3cret"})
    )
    service = make_service(
        smart_host=str(smart.target), smart_host_auth=Credentials("relay", "s3cret")
    )
    submit(spool, "bob@example.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "bob@example.test"),)
    assert smart.handler.logins == [("PLAIN", "relay", True)]
    [received] = smart.messages
    assert received.tls
    assert received.login == "relay"


def test_auth_with_a_wrong_password_defers(
    spool: Spool,
    servers: Servers,
    make_service: ServiceFactory,
    certificates: TestCertificates,
) -> None:
    smart = servers.start(
        SmtpServer(tls_context=certificates.server_context(), auth_users={"relay": "s3cret"})
    )
    service = make_service(
        smart_host=str(smart.target), smart_host_auth=Credentials("relay", "guessed")
    )
    submit(spool, "bob@example.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "bob@example.test"),)
    assert report.dsns == ()
    reply = reply_to(spool, queue_id, "bob@example.test")
    assert reply.enhanced == "4.7.8"
    assert smart.handler.logins == [("PLAIN", "relay", False)]
    assert smart.handler.mail_froms == []
    transcript = spool.transcript(queue_id)
    assert "AUTH PLAIN <redacted>" in transcript
    assert "guessed" not in transcript


# --- what a server can take ----------------------------------------------------------------------


def test_non_ascii_recipient_without_smtputf8_fails_5_6_7(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.mx(IMPLICIT, enable_smtputf8=False)
    service = make_service()
    submit(spool, "józef@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.failed == ((queue_id, "józef@implicit.test"),)
    _, [status] = failure_dsn(spool, report)
    assert status["Status"] == "5.6.7"
    assert "SMTPUTF8" in status["Diagnostic-Code"]
    assert server.connections == 1
    assert server.handler.mail_froms == []


def test_non_ascii_recipient_with_smtputf8_is_delivered(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.mx(IMPLICIT, enable_smtputf8=True)
    service = make_service()
    submit(spool, "józef@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.delivered == ((queue_id, "józef@implicit.test"),)
    [received] = server.messages
    assert received.smtp_utf8
    assert received.rcpt_tos == ("józef@implicit.test",)


def test_message_over_the_servers_size_fails_5_3_4(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.mx(IMPLICIT, data_size_limit=1024)
    service = make_service()
    submit(spool, "carol@implicit.test", body=b"0123456789abcdef\r\n" * 256)
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.failed == ((queue_id, "carol@implicit.test"),)
    _, [status] = failure_dsn(spool, report)
    assert status["Status"] == "5.3.4"
    assert "1024-octet limit" in status["Diagnostic-Code"]
    assert server.connections == 1
    assert server.handler.mail_froms == []


# --- servers that misbehave ----------------------------------------------------------------------


def test_a_stalling_server_defers_and_the_tick_ends_quickly(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.start(stalling_server(host=IMPLICIT, port=servers.port))
    service = make_service(
        transport=SmtpTransport(
            helo_name=FQDN, timeouts=attrs.evolve(SHORT, greeting=STALL_GREETING)
        )
    )
    submit(spool, "carol@implicit.test")
    started = time.monotonic()
    report = service.run_once()
    elapsed = time.monotonic() - started
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "carol@implicit.test"),)
    reply = reply_to(spool, queue_id, "carol@implicit.test")
    assert reply.enhanced == "4.4.2"
    assert f"sent no greeting within {STALL_GREETING:g} s" in reply.text
    assert server.connections == 1
    assert server.commands == []
    assert elapsed < STALL_BUDGET


def test_a_server_that_drops_the_connection_mid_data_defers_4_4_2(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.start(dropping_server(after=1, host=IMPLICIT, port=servers.port))
    service = make_service()
    submit(spool, "carol@implicit.test")
    report = service.run_once()
    [queue_id] = report.picked_up
    assert report.deferred == ((queue_id, "carol@implicit.test"),)
    reply = reply_to(spool, queue_id, "carol@implicit.test")
    assert reply.enhanced == "4.4.2"
    assert "DATA" in server.commands
    assert server.digests == []  # no message arrived whole
    assert states(spool, queue_id) == {"carol@implicit.test": RecipientState.PENDING}


# --- the connection and the envelope -------------------------------------------------------------


def test_one_connection_carries_many_messages(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.mx(IMPLICIT)
    # One connection per host at a time: every message after the first must reuse it.
    service = make_service(limits=Limits(max_connections_per_host=1))
    for n in range(20):
        submit(spool, f"user{n}@implicit.test")
    report = service.run_once()
    assert len(report.delivered) == 20
    assert server.connections == 1
    assert server.transactions_per_connection == [20]


def test_masquerade_domain_in_mail_from(
    spool: Spool, servers: Servers, make_service: ServiceFactory
) -> None:
    server = servers.mx(IMPLICIT)
    service = make_service(masquerade_domain="masq.example.net")
    submit(spool, "carol@implicit.test")
    report = service.run_once()
    assert len(report.delivered) == 1
    [received] = server.messages
    assert received.mail_from == "alice@masq.example.net"
    # First hop's envelope only (KB Q303734): the header is left alone.
    assert f"From: Alice <{SENDER}>".encode() in received.data
