"""One lookup of a hop at a time: deliveries that need a hop another one is looking up wait
for that lookup, then pass over as its failed-lookup note says, or find its answers in the
resolver's cache; never longer than the wait bound, and nothing is kept once it ends.

The first tests drive ``DeadDestinations.resolving`` with threads alone; the others run a
service whose two delivery threads attempt two messages for one domain at once, against a real
DNS server on 127.0.0.1 (:class:`~tests.transport.test_hostile_dns.ScriptedDns`) that holds the
first MX question until the second delivery has come to the same hop, and counts the questions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._core.routing import Hop, HopKind
from spoolmail._core.transcript import Transcript
from spoolmail._service.destinations import DeadDestinations
from spoolmail._transport.base import Resolution
from spoolmail._transport.dns import DnsResolver
from spoolmail.testing import CapturingTransport, FakeClock
from tests.dnsserver import local_resolver
from tests.messages import message
from tests.transport.test_hostile_dns import ScriptedDns
from tests.waiting import until

HOP = Hop(HopKind.MX, "example.test", 25)
OTHER = Hop(HopKind.MX, "example.net", 25)
FAILING = "servfail.test"


class Looker:
    """A thread inside ``dead.resolving(hop)`` until released (or raising when told)."""

    def __init__(self, dead: DeadDestinations, hop: Hop, *, fail: bool = False) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.fail = fail
        self.error: RuntimeError | None = None
        self.thread = threading.Thread(target=self._run, args=(dead, hop), daemon=True)
        self.thread.start()

    def _run(self, dead: DeadDestinations, hop: Hop) -> None:
        try:
            with dead.resolving(hop):
                self._look()
        except RuntimeError as exc:
            self.error = exc

    def _look(self) -> None:
        self.inside.set()
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("a broken lookup")

    def finish(self) -> None:
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def lookers() -> Iterator[list[Looker]]:
    made: list[Looker] = []
    yield made
    for looker in made:
        looker.finish()


def waiters(dead: DeadDestinations, hop: Hop) -> int:
    under_way = dead._resolving.get(hop)
    return 0 if under_way is None else under_way.waiters


def test_a_second_lookup_of_a_hop_waits_for_the_first(lookers: list[Looker]) -> None:
    dead = DeadDestinations()
    first = Looker(dead, HOP)
    lookers.append(first)
    assert first.inside.wait(10)
    second = Looker(dead, HOP)
    lookers.append(second)
    until("the second lookup waits", lambda: waiters(dead, HOP) == 1)
    assert not second.inside.is_set()
    other = Looker(dead, OTHER)  # another hop is not held up by this one
    lookers.append(other)
    assert other.inside.wait(10)
    first.finish()
    assert second.inside.wait(10)
    second.finish()
    other.finish()
    assert dead._resolving == {}  # nothing kept once the lookups end


def test_a_waiter_waits_no_longer_than_the_bound(lookers: list[Looker]) -> None:
    """A lookup that overruns (it should not: the budget bounds it) holds the others back no
    longer than ``lookup_wait``: then they look up on their own."""
    dead = DeadDestinations(lookup_wait=0.05)
    first = Looker(dead, HOP)
    lookers.append(first)
    assert first.inside.wait(10)
    started = time.monotonic()
    second = Looker(dead, HOP)
    lookers.append(second)
    assert second.inside.wait(10)
    assert 0.04 <= time.monotonic() - started < 5
    assert not first.release.is_set()  # the first one still looks


def test_a_lookup_that_raises_still_lets_its_waiters_go(lookers: list[Looker]) -> None:
    dead = DeadDestinations()
    first = Looker(dead, HOP, fail=True)
    lookers.append(first)
    assert first.inside.wait(10)
    second = Looker(dead, HOP)
    lookers.append(second)
    until("the second lookup waits", lambda: waiters(dead, HOP) == 1)
    first.finish()
    assert first.error is not None  # raised through the block, as it was
    assert second.inside.wait(10)
    second.finish()
    assert dead._resolving == {}


# --- two delivery threads, one domain, a real DNS server ---------------------------------------


class HeldDns(ScriptedDns):
    """Holds the first MX question until ``release`` (the server thread waits, so later
    questions wait in its socket); SERVFAIL under servfail.test; ok.test's MX is mx.ok.test
    (A 127.0.0.2, no AAAA), all for 60 s."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._held = False
        super().__init__(self._script)

    def _script(self, query: dns.message.Message, transport: str) -> list[bytes]:
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        if question.rdtype == dns.rdatatype.MX and not self._held:
            self._held = True
            self.release.wait(10)
        response = dns.message.make_response(query)
        if name.endswith(FAILING):
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name == "ok.test" and question.rdtype == dns.rdatatype.MX:
            rrset = dns.rrset.from_text(question.name, 60, "IN", "MX", "10 mx.ok.test.")
            response.answer.append(rrset)
        elif name == "mx.ok.test" and question.rdtype == dns.rdatatype.A:
            rrset = dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.2")
            response.answer.append(rrset)
        else:
            if name not in ("ok.test", "mx.ok.test"):
                response.set_rcode(dns.rcode.NXDOMAIN)
            soa = "ns.test. hostmaster.test. 1 3600 600 86400 60"
            response.authority.append(dns.rrset.from_text("test.", 60, "IN", "SOA", soa))
        return [response.to_wire()]

    def asked(self, domain: str, rdtype: str) -> int:
        return sum(name == f"{domain}." and kind == rdtype for _, name, kind in self.queries)


class CountingResolver(DnsResolver):
    """A DnsResolver that counts the hops it is asked to resolve."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls = 0
        self._counting = threading.Lock()

    def resolve(self, hop: Hop, transcript: Transcript) -> Resolution:
        with self._counting:
            self.calls += 1
        return super().resolve(hop, transcript)


@pytest.fixture
def dns_server() -> Iterator[HeldDns]:
    with HeldDns() as server:
        try:
            yield server
        finally:
            server.release.set()


@pytest.fixture
def resolver(dns_server: HeldDns) -> CountingResolver:
    # Timeouts well beyond the hold: a question is never sent twice.
    return CountingResolver(resolver=local_resolver(dns_server.port, timeout=5, lifetime=10))


@pytest.fixture
def service(
    spool: Spool, transport: CapturingTransport, clock: FakeClock, resolver: CountingResolver
) -> Iterator[MailService]:
    service = MailService(
        spool,
        router=Router(local_domains=["example.com"]),
        transport=transport,
        host_resolver=resolver,
        clock=clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()


def run_both_at_once(
    spool: Spool, service: MailService, dns_server: HeldDns, resolver: CountingResolver, to: str
) -> Any:
    """Submit two messages for ``to``'s domain and run a tick; the first MX question is held
    until the other delivery waits for it (or, without the sharing, looks up on its own)."""
    spool.submit(message(f"x@{to}"))
    spool.submit(message(f"y@{to}"))
    reports: list[Any] = []
    tick = threading.Thread(target=lambda: reports.append(service.run_once()), daemon=True)
    tick.start()
    try:
        until("the first MX question arrives", lambda: dns_server.asked(to, "MX") == 1)
        dead = service._delivery.dead
        until(
            "the second delivery comes to the hop",
            lambda: resolver.calls >= 2 or any(r.waiters for r in dead._resolving.values()),
        )
    finally:
        dns_server.release.set()
        tick.join(20)
    assert not tick.is_alive()
    assert dead._resolving == {}
    [report] = reports
    return report


def test_two_deliveries_for_a_failing_domain_make_one_lookup(
    spool: Spool, service: MailService, dns_server: HeldDns, resolver: CountingResolver
) -> None:
    report = run_both_at_once(spool, service, dns_server, resolver, FAILING)
    assert dns_server.asked(FAILING, "MX") == 1
    assert resolver.calls == 1
    assert len(report.deferred) == 2
    envelopes = sorted(
        (spool.queued_message(queue_id).envelope for queue_id, _ in report.deferred),
        key=lambda envelope: envelope.attempts,
    )
    passed, tried = envelopes
    assert tried.attempts == 1
    # The other one waited for that lookup and was passed over with its note, unattempted.
    assert (passed.attempts, passed.last_attempt) == (0, None)
    [recipient] = passed.recipients
    assert recipient.reply is not None
    assert (recipient.reply.code, recipient.reply.enhanced) == (451, "4.4.3")
    assert f"MX of {FAILING}: the last lookup failed (451 4.4.3" in recipient.reply.text
    assert "SERVFAIL" in recipient.reply.text


def test_two_deliveries_for_a_domain_share_one_successful_lookup(
    spool: Spool,
    service: MailService,
    transport: CapturingTransport,
    dns_server: HeldDns,
    resolver: CountingResolver,
) -> None:
    """The one that waited resolves from the answers the first one's lookup left in the cache."""
    report = run_both_at_once(spool, service, dns_server, resolver, "ok.test")
    assert len(report.delivered) == 2
    assert [str(target) for target, _ in transport.attempts] == ["mx.ok.test[127.0.0.2]:25"] * 2
    assert resolver.calls == 2
    assert dns_server.asked("ok.test", "MX") == 1
    assert dns_server.asked("mx.ok.test", "A") == 1
    assert dns_server.asked("mx.ok.test", "AAAA") == 1
