"""Hostile servers over time and across connections, over real sockets on 127.0.0.1.

``test_hostile_servers.py`` checks what one reply may do to one session; here, what a server's
behaviour may do over many transactions, messages and connections: run the client round a loop
of "too many recipients", make it reconnect without end, get a message sent twice or lost
through a kept connection, slow a whole destination for a reply that asked nothing, or make it
hold a socket per host it ever met. The peers are ``test_hostile_servers.py``'s
:class:`Hostile`; the service runs on a spool in a temporary folder with a :class:`FakeClock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from spoolmail import Spool
from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.pool import MAX_KEPT, ConnectionPool
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.testing import FakeClock
from tests.transport.test_hostile_servers import (
    EHLO_PIPELINING,
    EHLO_PLAIN,
    FAST,
    GREETING,
    HOST,
    Wire,
    converse,
    hostile,
    outgoing,
    relaying_to,
)

pytestmark = pytest.mark.integration

QUEUED = Reply(250, "2.0.0", "queued", host=HOST)


@pytest.fixture
def log() -> Transcript:
    return Transcript(clock=lambda: datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC))


def addresses(count: int) -> list[str]:
    return [f"user{n:04}@x.test" for n in range(count)]


def rationing(
    rcpt: Callable[[int, int], bytes], *, ehlo: bytes = EHLO_PLAIN
) -> Callable[[Wire], None]:
    """A server that answers each RCPT with ``rcpt(nth in the transaction, nth on the
    connection)``, refuses DATA when it took no recipient, and queues every message."""

    def script(wire: Wire) -> None:
        if not wire.send(GREETING):
            return
        in_transaction = on_connection = taken = 0
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == "RCPT":
                answer = rcpt(in_transaction, on_connection)
                in_transaction += 1
                on_connection += 1
                taken += answer.startswith(b"2")
                reply = answer
            elif verb in ("MAIL", "RSET"):
                in_transaction = taken = 0
                reply = b"250 2.0.0 ok\r\n"
            elif verb == "EHLO":
                reply = ehlo
            elif verb == "DATA":
                reply = b"354 go ahead\r\n" if taken else b"554 5.5.1 no valid recipients\r\n"
            else:
                reply = b"221 bye\r\n" if verb == "QUIT" else b"250 2.0.0 ok\r\n"
            if not wire.send(reply) or verb == "QUIT":
                return
            if verb == "DATA" and taken:
                if wire.message() is None or not wire.send(b"250 2.0.0 queued\r\n"):
                    return
                in_transaction = taken = 0

    return script


def send(target: Target, log: Transcript, recipients: list[str]) -> dict[str, Reply]:
    with SmtpTransport(helo_name="client.test", timeouts=FAST) as transport:
        return dict(transport.send(target, outgoing(recipients), log))


def count(wire: Wire, verb: str) -> int:
    return sum(line.upper().startswith(verb) for line in wire.commands)


# Recipient limits (RFC 5321 section 4.5.3.1.10).


@pytest.mark.parametrize("ehlo", [EHLO_PLAIN, EHLO_PIPELINING], ids=["lockstep", "pipelined"])
@pytest.mark.parametrize(
    "refusal",
    [b"552 5.5.3 Too many recipients\r\n", b"552 Too many recipients\r\n"],
    ids=["enhanced", "rfc821"],
)
def test_an_rfc821_552_too_many_recipients_waits_instead_of_failing(
    log: Transcript, ehlo: bytes, refusal: bytes
) -> None:
    """RFC 821 listed "too many recipients" as 552; RFC 5321 §4.5.3.1.10 says clients SHOULD
    treat it as temporary. A server out of room from the first RCPT failed every recipient for
    good (a bounce each) instead of deferring them. Fails without the fix."""
    with hostile(rationing(lambda _n, _c: refusal, ehlo=ehlo)) as peer:
        replies = send(peer.target, log, addresses(3))
    assert set(replies) == set(addresses(3))
    for reply in replies.values():
        assert (reply.code, reply.enhanced, reply.host) == (452, "4.5.3", HOST), reply
        assert "Too many recipients" in reply.text, reply
    [wire] = peer.wires
    assert count(wire, "MAIL") == 1  # no second transaction that would get nowhere
    assert "< 552" in log.text


@pytest.mark.parametrize("ehlo", [EHLO_PLAIN, EHLO_PIPELINING], ids=["lockstep", "pipelined"])
def test_no_room_from_the_first_recipient_ends_after_one_transaction(
    log: Transcript, ehlo: bytes
) -> None:
    """Guard (correct before): 452 4.5.3 to every RCPT, even the first, of 1,000 recipients: one
    transaction of 100 RCPTs, then every recipient waits with the server's reply."""
    with hostile(rationing(lambda _n, _c: b"452 4.5.3 Too many recipients\r\n", ehlo=ehlo)) as peer:
        started = time.monotonic()
        replies = send(peer.target, log, addresses(1000))
        elapsed = time.monotonic() - started
    assert set(replies.values()) == {Reply(452, "4.5.3", "Too many recipients", host=HOST)}
    [wire] = peer.wires
    assert (count(wire, "MAIL"), count(wire, "RCPT")) == (1, 100)
    assert elapsed < 2


def test_one_recipient_a_transaction_finishes_in_one_transaction_a_recipient(
    log: Transcript,
) -> None:
    """Guard (correct before): a server with room for one recipient a transaction gets 1,000
    recipients in 1,000 transactions on one connection, each recipient tried once after the
    first transaction taught the client the server's room."""
    ok, full = b"250 2.1.5 ok\r\n", b"452 4.5.3 Too many recipients\r\n"
    with hostile(rationing(lambda n, _c: ok if n == 0 else full)) as peer:
        started = time.monotonic()
        replies = send(peer.target, log, addresses(1000))
        elapsed = time.monotonic() - started
    assert set(replies.values()) == {QUEUED}
    [wire] = peer.wires
    assert count(wire, "MAIL") == 1000
    assert count(wire, "RCPT") == 100 + 999
    assert count(wire, "DATA") == 1000
    assert elapsed < 20


def test_room_that_is_per_connection_defers_the_rest_without_a_loop(log: Transcript) -> None:
    """Guard (correct before): a server that takes three recipients a connection, then says
    452 to all: three delivered, the rest wait for the next attempt after one more
    transaction that took none."""
    ok, full = b"250 2.1.5 ok\r\n", b"452 4.5.3 Too many recipients\r\n"
    with hostile(rationing(lambda _n, c: ok if c < 3 else full)) as peer:
        replies = send(peer.target, log, addresses(50))
    delivered = [a for a, r in replies.items() if r == QUEUED]
    assert delivered == addresses(3)
    assert {replies[a] for a in addresses(50)[3:]} == {
        Reply(452, "4.5.3", "Too many recipients", host=HOST)
    }
    [wire] = peer.wires
    assert count(wire, "MAIL") == 2


# Kept connections: nothing lost, nothing sent twice.


@pytest.mark.parametrize("step", ["MAIL", "RCPT", "DATA"])
def test_421_before_the_message_on_a_kept_connection_sends_it_once_over_a_new_one(
    log: Transcript, step: str
) -> None:
    """Guard (correct before): a server that closes each connection with 421 at the second
    message's MAIL, RCPT or DATA (a cap on messages a connection): the message goes once, over
    a new connection, in the same attempt."""
    received: list[bytes] = []
    with (
        hostile(closing_after_one(received, at=step)) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        first = dict(transport.send(peer.target, outgoing(), log))
        second = dict(transport.send(peer.target, outgoing(), log))
    assert first == second == {"bob@example.com": QUEUED}
    assert len(received) == 2
    assert len(peer.wires) == 2
    assert "the reused connection was closed (421 4.7.0" in log.text


def closing_after_one(received: list[bytes], *, at: str) -> Callable[[Wire], None]:
    """A server whose every connection takes one message, then answers 421 and hangs up at
    ``at`` of the next: the verb of a command before its message (a cap on messages a
    connection), or "." for its final dot (after which it may have the message); each
    message's bytes go into ``received``."""

    def script(wire: Wire) -> None:
        wire.send(GREETING)
        carried = 0  # by this connection
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == at and carried == 1:
                wire.send(b"421 4.7.0 one message a connection, closing\r\n")
                return
            reply = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}.get(verb, b"250 ok\r\n")
            if not wire.send(reply) or verb == "QUIT":
                return
            if verb == "DATA":
                body = wire.message()
                if body is None:
                    return
                received.append(body)
                carried += 1
                if at == "." and carried == 2:
                    wire.send(b"421 4.3.0 shutting down\r\n")
                    return
                wire.send(b"250 2.0.0 queued\r\n")

    return script


def test_421_to_the_final_dot_on_a_kept_connection_is_not_sent_again(log: Transcript) -> None:
    """Guard (correct before): after the final "." the server may have the message; its 421
    then defers the message, it is not sent again over a new connection at once."""
    received: list[bytes] = []
    with (
        hostile(closing_after_one(received, at=".")) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        transport.send(peer.target, outgoing(), log)
        second = dict(transport.send(peer.target, outgoing(), log))
    assert second == {"bob@example.com": Reply(421, "4.3.0", "shutting down", host=HOST)}
    assert len(received) == 2
    assert len(peer.wires) == 1


def test_421_to_a_later_transactions_final_dot_is_not_sent_again(log: Transcript) -> None:
    """A 421 before a later transaction of one delivery brings a new connection; one after that
    transaction's final "." does not: the server may have the message (RFC 1047)."""
    received: list[bytes] = []
    recipients = addresses(5)
    with (
        hostile(closing_after_one(received, at=".")) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST, max_recipients=2) as transport,
    ):
        replies = transport.send(peer.target, outgoing(recipients), log)
    assert [replies[r].code for r in recipients] == [250, 250, 421, 421, 421]
    assert len(received) == 2
    assert len(peer.wires) == 1


def test_a_kept_connection_the_server_closed_silently_is_replaced(log: Transcript) -> None:
    """Guard (correct before): the server hangs up after each message without a word; the next
    message goes once, over a new connection, with max_messages_per_connection unset."""
    received: list[bytes] = []

    def script(wire: Wire) -> None:
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            reply = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}.get(verb, b"250 ok\r\n")
            if not wire.send(reply):
                return
            if verb == "DATA":
                body = wire.message()
                if body is not None:
                    received.append(body)
                    wire.send(b"250 2.0.0 queued\r\n")
                return  # closed, silently

    with (
        hostile(script) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        replies = []
        for _ in range(3):
            time.sleep(0.05)  # the hang-up has arrived
            replies.append(dict(transport.send(peer.target, outgoing(), log)))
    assert replies == [{"bob@example.com": QUEUED}] * 3
    assert len(received) == 3
    assert len(peer.wires) == 3


def test_rset_taken_but_mail_refused_forever_answers_each_message_once(log: Transcript) -> None:
    """Guard (correct before): a server that says 250 to RSET and 451 to every MAIL. Each
    message gets that 451, on the one connection, in a few commands."""

    def script(wire: Wire) -> None:
        if wire.send(GREETING):
            converse(wire, {"EHLO": EHLO_PLAIN, "MAIL": b"451 4.3.0 not now\r\n"})

    with (
        hostile(script) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        replies = [dict(transport.send(peer.target, outgoing(), log)) for _ in range(5)]
    assert replies == [{"bob@example.com": Reply(451, "4.3.0", "not now", host=HOST)}] * 5
    [wire] = peer.wires
    assert count(wire, "MAIL") == 5
    assert count(wire, "RSET") == 4  # the one before each MAIL after a refused one


# Kept connections: bounded however many hosts.


@attrs.define
class _Idle:
    target: Target
    last_used: float = 0.0


def test_the_pool_keeps_at_most_max_kept_sessions_least_recently_used_first() -> None:
    now = [0.0]
    pool: ConnectionPool[_Idle] = ConnectionPool(
        idle=30, max_idle=2, monotonic=lambda: now[0], max_kept=3
    )
    sessions = [_Idle(Target(HOST, 25, name=f"mx{n}.test")) for n in range(5)]
    surplus = []
    for session in sessions:
        now[0] += 1
        surplus += pool.keep(session)
    assert surplus == sessions[:2]
    taken, expired = pool.take(sessions[3].target)
    assert (taken, expired) == (sessions[3], [])
    # One taken, two kept: room for one more without letting any go.
    assert pool.keep(_Idle(Target(HOST, 25, name="mx9.test"))) == []
    now[0] = 100.0  # every kept one too old: taken out, and the count with them
    assert sorted(s.target.name or "" for s in pool.take(sessions[0].target)[1]) == [
        "mx2.test",
        "mx4.test",
        "mx9.test",
    ]
    fresh = [_Idle(Target(HOST, 25, name=f"mx{n}.fresh")) for n in range(3)]
    assert [s for f in fresh for s in pool.keep(f)] == []
    assert pool.drain() == fresh


def test_connections_kept_to_many_hosts_are_bounded(log: Transcript) -> None:
    """Every host met within the idle time kept its connection, one socket each: a run to
    thousands of domains ran out of file descriptors. At most MAX_KEPT stay open, the most
    recently used. Fails without the fix."""
    closed: list[Wire] = []

    def script(wire: Wire) -> None:
        if wire.send(GREETING):
            converse(wire, {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"})
        closed.append(wire)

    hosts = MAX_KEPT + 50
    with (
        hostile(script) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        targets = [
            Target(HOST, peer.port, name=f"mx{n}.flow.test", tls=TlsPolicy.NEVER)
            for n in range(hosts)
        ]
        for target in targets:
            assert dict(transport.send(target, outgoing(), log)) == {"bob@example.com": QUEUED}
        deadline = time.monotonic() + 5
        while len(closed) < hosts - MAX_KEPT and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # and no more than those close
        open_now = len(peer.wires) - len(closed)
        # The most recently used is still kept, and reused.
        assert dict(transport.send(targets[-1], outgoing(), log)) == {"bob@example.com": QUEUED}
        assert len(peer.wires) == hosts
    assert open_now == MAX_KEPT


# Through the service: dead hosts and throttles.


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def submit(spool: Spool, *recipients: str) -> str:
    return spool.submit(
        b"From: alice@example.com\r\nSubject: s\r\n\r\nhi\r\n",
        sender="alice@example.com",
        recipients=list(recipients),
    )


def test_a_host_that_hangs_up_at_once_costs_one_connection(spool: Spool, clock: FakeClock) -> None:
    """Guard (correct before): a server that accepts each connection and closes it at once, for
    20 queued messages: one connection, every message deferred with the reason, no connection
    again until the host's retry time."""
    with hostile(lambda wire: None) as peer:
        service = relaying_to(peer, spool, clock)
        try:
            ids = [submit(spool, f"bob{n}@remote.test") for n in range(20)]
            first = service.run_once()
            clock.advance(minutes=5)
            again = service.run_once()
            connections = len(peer.wires)
            clock.advance(minutes=11)  # past the first retry (IIS: 15 minutes)
            retried = service.run_once()
        finally:
            service.close()
        transcript = spool.transcript(ids[-1])
    assert len(first.deferred) == 20
    assert (first.delivered, first.failed, first.errors) == ((), (), ())
    assert not again
    assert connections == 1
    assert len(retried.deferred) == 20
    assert len(peer.wires) == 2
    assert "closed the connection instead of the greeting" in transcript


def test_a_refusal_that_asks_nothing_does_not_slow_the_destination(
    spool: Spool, clock: FakeClock
) -> None:
    """A 4.7.1 refusal of one recipient "by corporate policy" read as a request to slow down
    ("rate" inside "corporate"): the whole destination was passed over for a minute, doubling,
    its connections halved. Fails without the fix."""

    def script(wire: Wire) -> None:
        if not wire.send(GREETING):
            return
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == "RCPT" and "<held@" in line:
                reply = b"451 4.7.1 <held@remote.test>: access denied by corporate policy\r\n"
            else:
                reply = {"EHLO": EHLO_PLAIN, "DATA": b"354 go\r\n"}.get(verb, b"250 ok\r\n")
            if not wire.send(reply) or verb == "QUIT":
                return
            if verb == "DATA" and (wire.message() is None or not wire.send(b"250 2.0.0 ok\r\n")):
                return

    with hostile(script) as peer:
        service = relaying_to(peer, spool, clock)
        try:
            held = submit(spool, "held@remote.test")
            first = service.run_once()
            other = submit(spool, "carol@remote.test")
            second = service.run_once()
        finally:
            service.close()
        transcript = spool.transcript(held)
    assert first.deferred == ((held, "held@remote.test"),)
    assert "corporate policy" in transcript
    assert second.delivered == ((other, "carol@remote.test"),)


def test_a_kept_connection_let_go_waits_briefly_for_quit(log: Transcript) -> None:
    """An idle connection closed because it grew too old is closed in a thread delivering
    other mail: a server that never answers its QUIT held that thread for the whole quit
    timeout (5 s) each time. It waits a second at most; the message goes on a new one."""
    received: list[bytes] = []

    def script(wire: Wire) -> None:
        if not wire.send(GREETING):
            return
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == "QUIT":
                continue  # no 221, and the connection stays open until the client goes
            reply = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}.get(verb, b"250 ok\r\n")
            if not wire.send(reply):
                return
            if verb == "DATA":
                body = wire.message()
                if body is None or not wire.send(b"250 2.0.0 queued\r\n"):
                    return
                received.append(body)

    now = [0.0]
    timeouts = attrs.evolve(FAST, quit=5.0, idle=30.0)
    with hostile(script) as peer:
        transport = SmtpTransport(
            helo_name="client.test", timeouts=timeouts, monotonic=lambda: now[0]
        )
        assert transport.send(peer.target, outgoing(), log) == {"bob@example.com": QUEUED}
        now[0] += 31  # the kept connection is too old now
        started = time.monotonic()
        assert transport.send(peer.target, outgoing(), log) == {"bob@example.com": QUEUED}
        elapsed = time.monotonic() - started
        assert len(peer.wires) == 2
        # The service's stop closes every kept connection, one after another, alike.
        started = time.monotonic()
        transport.close()
        closing = time.monotonic() - started
    assert len(received) == 2
    assert elapsed < 3
    assert closing < 3
