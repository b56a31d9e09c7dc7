"""A destination whose lookup failed (its DNS did not answer) is left alone until the failed
message's retry time, as a host that did not answer is (``test_dead_hosts``).

Postfix's "delivery temporarily suspended: Host or domain name not found": a domain whose name
servers are silent costs one lookup's timeouts per retry, not one per waiting message (each up
to the resolver's lifetime, times the lookups of a hop). A message passed over was not
attempted and keeps its attempt count; an operator's flush forgets the note; a name that does
not exist (a permanent answer) is not noted. The DNS server is a real one on 127.0.0.1
(:class:`~tests.transport.test_hostile_dns.ScriptedDns`), the filesystems both.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._core.routing import Hop, HopKind
from spoolmail.testing import CapturingTransport, FakeClock
from tests.messages import message
from tests.transport.test_hostile_dns import ScriptedDns

pytestmark = pytest.mark.integration

FAILING = "servfail.test"


def script(query: dns.message.Message, transport: str) -> list[bytes]:
    """SERVFAIL for anything under servfail.test; ok.test's MX is 127.0.0.2; nothing else."""
    question = query.question[0]
    name = question.name.to_text().rstrip(".").lower()
    response = dns.message.make_response(query)
    if name.endswith(FAILING):
        response.set_rcode(dns.rcode.SERVFAIL)
    elif name == "ok.test" and question.rdtype == dns.rdatatype.MX:
        response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "MX", "10 mx.ok.test."))
    elif name == "mx.ok.test" and question.rdtype == dns.rdatatype.A:
        response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.2"))
    elif name not in ("ok.test", "mx.ok.test"):
        response.set_rcode(dns.rcode.NXDOMAIN)
    return [response.to_wire()]


@pytest.fixture
def dns_server() -> Iterator[ScriptedDns]:
    with ScriptedDns(script) as server:
        yield server


@pytest.fixture
def router() -> Router:
    return Router(local_domains=["example.com"])


@pytest.fixture
def service(
    spool: Spool,
    transport: CapturingTransport,
    clock: FakeClock,
    dns_server: ScriptedDns,
    router: Router,
) -> Iterator[MailService]:
    service = MailService(
        spool,
        router=router,
        transport=transport,
        host_resolver=dns_server.resolver(),
        clock=clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()


def mx_queries(server: ScriptedDns, domain: str) -> int:
    return sum(name == f"{domain}." and rdtype == "MX" for _, name, rdtype in server.queries)


def test_a_failed_lookup_is_not_made_again_for_the_next_messages(
    spool: Spool,
    service: MailService,
    dns_server: ScriptedDns,
) -> None:
    spool.submit(message(f"x@{FAILING}"))
    [(first_id, _)] = service.run_once().deferred
    assert mx_queries(dns_server, FAILING) == 1
    assert service.stats(gauges=False).failed_lookups == 1
    spool.submit(message(f"y@{FAILING}"))
    spool.submit(message("z@ok.test"))  # another destination is not held up
    report = service.run_once()
    assert mx_queries(dns_server, FAILING) == 1
    [(second_id, _)] = report.deferred
    assert [address for _, address in report.delivered] == ["z@ok.test"]
    first = spool.queued_message(first_id).envelope
    second = spool.queued_message(second_id).envelope
    # Passed over, not attempted: its count as it was, due when the first message is.
    assert (second.attempts, second.first_attempt, second.last_attempt) == (0, None, None)
    assert second.next_attempt == first.next_attempt
    [recipient] = second.recipients
    assert recipient.reply is not None
    assert (recipient.reply.code, recipient.reply.enhanced) == (451, "4.4.3")
    assert f"MX of {FAILING}: the last lookup failed (451 4.4.3" in recipient.reply.text
    assert "SERVFAIL" in recipient.reply.text
    assert "the last lookup failed" in spool.transcript(second_id)


def test_at_the_retry_time_the_lookup_is_made_again_and_the_note_goes(
    spool: Spool,
    service: MailService,
    clock: FakeClock,
    dns_server: ScriptedDns,
) -> None:
    spool.submit(message(f"x@{FAILING}"))
    [(queue_id, _)] = service.run_once().deferred
    clock.set(spool.queued_message(queue_id).envelope.next_attempt)
    assert service.run_once().deferred == ((queue_id, f"x@{FAILING}"),)
    assert mx_queries(dns_server, FAILING) == 2  # tried again at its time, counted
    assert spool.queued_message(queue_id).envelope.attempts == 2


def test_a_flush_forgets_the_note(
    spool: Spool,
    service: MailService,
    clock: FakeClock,
    dns_server: ScriptedDns,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool.submit(message(f"x@{FAILING}"))
    [(queue_id, _)] = service.run_once().deferred
    clock.advance(minutes=1)
    caplog.set_level("INFO", logger="spoolmail")
    spool.flush([queue_id])
    service.run_once()
    assert mx_queries(dns_server, FAILING) == 2
    assert spool.queued_message(queue_id).envelope.attempts == 2
    assert f"MX of {FAILING}: failed-lookup note forgotten" in caplog.text


def test_a_name_that_does_not_exist_is_not_noted(
    spool: Spool,
    service: MailService,
    dns_server: ScriptedDns,
) -> None:
    """NXDOMAIN is an answer: each message fails for good on its own lookup."""
    spool.submit(message("x@nowhere.test"))
    assert len(service.run_once().failed) == 1
    assert service._delivery.dead.lookups == {}
    spool.submit(message("y@nowhere.test"))
    assert len(service.run_once().failed) == 1
    assert mx_queries(dns_server, "nowhere.test") == 2


@pytest.mark.parametrize(
    "router",
    [Router(local_domains=["example.com"], smart_host="[127.0.0.3]", smart_host_mode="fallback")],
)
def test_the_smart_host_still_takes_what_a_noted_domain_passes_on(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    clock: FakeClock,
    dns_server: ScriptedDns,
) -> None:
    """IIS's "attempt direct delivery before sending to smart host": a domain passed over for
    its failed lookup goes on to the smart host, as one whose lookup just failed does."""
    spool.submit(message(f"x@{FAILING}"))
    assert len(service.run_once().delivered) == 1
    spool.submit(message(f"y@{FAILING}"))
    assert len(service.run_once().delivered) == 1
    assert mx_queries(dns_server, FAILING) == 1
    assert [str(target) for target, _ in transport.attempts] == ["[127.0.0.3]:25"] * 2
    note = service._delivery.dead.skip_lookup(Hop(HopKind.MX, FAILING), clock)
    assert note is not None


@pytest.mark.parametrize("domain", [None, FAILING])
def test_a_queue_flush_forgets_the_note(
    spool: Spool,
    service: MailService,
    clock: FakeClock,
    dns_server: ScriptedDns,
    domain: str | None,
) -> None:
    """``postqueue -f`` and ``-s domain``: the flushed mail is really tried."""
    spool.submit(message(f"x@{FAILING}"))
    service.run_once()
    spool.submit(message(f"y@{FAILING}"))
    service.run_once()  # passed over
    assert mx_queries(dns_server, FAILING) == 1
    clock.advance(minutes=1)
    spool.flush_queue(domain=domain)
    service.run_once()
    # Looked up again: by both, or by one while the other, side by side with it, met
    # the new note (without the flush forgetting it, neither would have).
    assert mx_queries(dns_server, FAILING) in (2, 3)
