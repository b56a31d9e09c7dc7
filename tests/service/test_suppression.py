"""The suppression list: hard bounces recorded in ``Suppression/``, consulted before sending,
expiring, listed and removed (shared design, section 10). Both filesystems, the fake clock."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from spoolmail import MailService, RecipientState, Reply, Router, Spool, SuppressionList
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

BOUNCE = Reply(550, "5.1.1", "<bob@remote.test>: no such user", host="mx.remote.test")
POLICY = Reply(550, "5.7.1", "message refused as spam", host="mx.remote.test")


@pytest.fixture
def service(spool: Spool, transport: CapturingTransport, clock: FakeClock) -> Iterator[MailService]:
    service = MailService(
        spool,
        router=Router(local_domains=["example.com"]),
        transport=transport,
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=clock,
        fqdn="mail.example.com",
    )
    yield service
    service.close()


def send(spool: Spool, *to: str) -> None:
    head = f"From: alice@example.com\r\nTo: {', '.join(to)}\r\nSubject: hi\r\n\r\nhi\r\n"
    spool.submit(head.encode(), sender="alice@example.com", recipients=list(to))


def test_a_hard_bounce_is_suppressed_and_the_next_message_fails_at_once(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    transport.answers = {"bob@remote.test": BOUNCE, "carol@remote.test": POLICY}
    send(spool, "bob@remote.test", "carol@remote.test")
    first = service.run_once()
    assert len(first.failed) == 2
    listed = SuppressionList(spool).entries()
    assert [(e.address, e.reply, e.queue_id) for e in listed] == [
        ("bob@remote.test", BOUNCE, first.picked_up[0])
    ]  # carol's 5.7.1 is a policy refusal: not suppressed
    attempts = len(transport.attempts)
    clock.advance(days=1)
    send(spool, "Bob@Remote.test")
    second = service.run_once()
    [queue_id] = second.picked_up
    assert second.failed == ((queue_id, "Bob@remote.test"),)  # the domain lower-cased at intake
    assert len(transport.attempts) == attempts  # not sent
    assert len(second.dsns) == 1  # the sender hears of it, as of any failure
    dsn = " ".join(spool.drop_message(second.dsns[0]).decode().split())  # unwrapped
    assert "recipient suppressed after a hard bounce on 2026-11-28" in dsn
    assert "<bob@remote.test>: no such user" in dsn  # what the server said then
    assert "Remote-MTA" not in dsn  # no server was asked this time


def test_entries_expire_and_can_be_removed(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    transport.answers = {"bob@remote.test": BOUNCE, "dan@remote.test": BOUNCE}
    send(spool, "bob@remote.test", "dan@remote.test")
    service.run_once()
    suppression = SuppressionList(spool, days=30)
    assert [e.address for e in suppression.entries()] == ["bob@remote.test", "dan@remote.test"]
    assert suppression.remove("DAN@remote.test")
    assert not suppression.remove("dan@remote.test")
    assert [e.address for e in suppression.entries()] == ["bob@remote.test"]
    assert service.suppression is not None
    assert service.suppression.get("dan@remote.test") is None  # another object sees the change
    clock.advance(days=30)
    assert suppression.entries() == []
    assert suppression.prune() == 1
    transport.answers = {}
    send(spool, "bob@remote.test")
    report = service.run_once()
    assert len(report.delivered) == 1


def test_the_file_is_json_lines_an_operator_can_read(
    spool: Spool, service: MailService, transport: CapturingTransport
) -> None:
    transport.answers = {"bob@remote.test": BOUNCE}
    send(spool, "bob@remote.test")
    service.run_once()
    raw = spool._store.fs.readtext("Suppression/suppressed.jsonl")
    [line] = raw.splitlines()
    data = json.loads(line)
    assert data["address"] == "bob@remote.test"
    assert data["reply"]["text"] == "<bob@remote.test>: no such user"
    assert data["time"] == "2026-11-28T10:00:00+00:00"
    # A damaged line (a crash mid-write, a careless edit) costs that line only.
    spool._store.fs.appendtext("Suppression/suppressed.jsonl", '{"address": "x\n')
    assert [e.address for e in SuppressionList(spool).entries()] == ["bob@remote.test"]


def test_no_list_with_suppression_days_0(
    spool: Spool, transport: CapturingTransport, clock: FakeClock
) -> None:
    service = MailService(
        spool,
        transport=transport,
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=clock,
        suppression_days=0,
    )
    try:
        transport.answers = {"bob@remote.test": BOUNCE}
        send(spool, "bob@remote.test")
        service.run_once()
        assert service.suppression is None
        assert not spool._store.fs.exists("Suppression")
        send(spool, "bob@remote.test")
        service.run_once()
        assert [to for _, to in transport.attempts if to == ("bob@remote.test",)] == [
            ("bob@remote.test",)
        ] * 2
    finally:
        service.close()


def test_a_dsn_to_a_suppressed_sender_is_not_sent_either(
    spool: Spool, service: MailService, transport: CapturingTransport, clock: FakeClock
) -> None:
    # A bounce of mail from a suppressed remote sender goes nowhere: BadMail, as for any DSN
    # that cannot be delivered.
    SuppressionList(spool).add("eve@remote.test", BOUNCE, queue_id="x")
    transport.answers = {"nobody@remote.test": BOUNCE}
    spool.submit(
        b"From: eve@remote.test\r\nTo: nobody@remote.test\r\n\r\nhi\r\n",
        sender="eve@remote.test",
        recipients=["nobody@remote.test"],
    )
    report = service.run_once()
    assert len(report.badmail) == 1
    envelope = spool.badmail_item(report.badmail[0]).envelope
    assert envelope is not None
    states = {r.address: r.state for r in envelope.recipients}
    assert states == {"eve@remote.test": RecipientState.FAILED}
    del clock


@pytest.mark.parametrize(
    "given", [["bob@remote.test"], ("bob@remote.test",), None, b"bob@remote.test"]
)
def test_one_address_is_asked_for_by_name(spool: Spool, given: object) -> None:
    """A list given where one address goes is a TypeError that says so (it was an
    AttributeError about ``casefold``), and nothing on the list changes."""
    suppression = SuppressionList(spool, days=30)
    suppression.add("bob@remote.test", BOUNCE, queue_id="q1")
    for call in (suppression.remove, suppression.get):
        with pytest.raises(TypeError, match="one address as a string"):
            call(given)  # type: ignore[operator]
    with pytest.raises(TypeError, match="one address as a string"):
        suppression.add(given, BOUNCE, queue_id="q2")  # type: ignore[arg-type]
    assert [e.address for e in suppression.entries()] == ["bob@remote.test"]
