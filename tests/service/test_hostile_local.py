"""Hostile input on the local side: Drop delivery, BadMail requeue, the IIS import, routing.

Addresses that are odd but valid must land in Drop and come back from it unchanged (KB 306043:
a Drop file moved into Pickup is sent again to its envelope); an envelope damaged by hand must
never write a header field of its own into a Drop file; a domain named in either of its forms is
the same domain; a setting that cannot work is refused when it is read, not when mail fails.
Real Spools on both filesystems, a real MailService; the transport is the capturing one.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmail import MailService, Router, Spool
from spoolmail._core.address import parse_mailbox
from spoolmail._core.drop import render_drop_head
from spoolmail._core.pickup import PickupOptions, PickupRejected, parse_pickup
from spoolmail._core.routing import Hop, HopKind, RouteKind, parse_target
from spoolmail._service import iis
from spoolmail._store import pyfs
from spoolmail.exceptions import ConfigurationError, MessageError, SpoolmailError
from spoolmail.testing import CapturingTransport, FakeClock, StaticResolver

ARRIVAL = datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC)
OPTIONS = PickupOptions(
    fqdn="mail.example.com", default_domain="example.com", max_message_size=10**7
)


def service(
    spool: Spool,
    clock: FakeClock,
    router: Router | None = None,
    transport: CapturingTransport | None = None,
) -> MailService:
    return MailService(
        spool,
        router=router or Router(local_domains=["example.com"], smart_host="relay.test"),
        transport=transport or CapturingTransport(),
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        clock=clock,
        fqdn="mail.example.com",
    )


def envelope_of(data: bytes) -> tuple[str, tuple[str, ...]]:
    """What Pickup reads from ``data`` (a Drop file moved back, KB 306043)."""
    found = parse_pickup(data, options=OPTIONS, queue_id="q", now=ARRIVAL)
    assert not isinstance(found, PickupRejected), found.reason
    return found.sender, found.recipients


# -- odd addresses in Drop -------------------------------------------------------------------------

_QUOTED = st.text(
    st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), include_characters="\t"
    ),
    min_size=1,
    max_size=30,
).map(lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
_ATOM = st.from_regex(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\.[A-Za-z0-9_-]{1,10}){0,2}", fullmatch=True
)
_DOMAIN = st.sampled_from(
    ["example.com", "EXAMPLE.com", "bücher.example", "BÜCHER.example", "xn--bcher-kva.example"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(_ATOM, _QUOTED), _DOMAIN), min_size=1, max_size=5))
def test_any_address_the_intake_takes_comes_back_from_a_drop_file_unchanged(
    parts: list[tuple[str, str]],
) -> None:
    recipients = []
    for local, domain in parts:
        try:
            recipients.append(parse_mailbox(f"{local}@{domain}", default_domain=None))
        except MessageError:
            continue  # not an address (an invisible character, too long): refused at the door
    recipients = list(dict.fromkeys(recipients))  # as every envelope holds them: once each
    head = render_drop_head(
        b"Subject: s\r\n", sender="alice@example.net", recipients=recipients, arrival=ARRIVAL
    )
    if recipients:
        assert envelope_of(head + b"body\r\n") == ("alice@example.net", tuple(recipients))
    # Every line of the head is one field: nothing spilled into a field of its own.
    lines = head.split(b"\r\n")[:-2]
    names = [line.split(b":", 1)[0].lower() for line in lines if line[:1] not in (b" ", b"\t")]
    assert names == [b"x-sender"] + [b"x-receiver"] * len(recipients) + [
        b"subject",
        b"return-path",
        b"x-originalarrivaltime",
    ]


@pytest.mark.parametrize("control", ["\r\n", "\n", "\r", "\x00", "\x0b", "\x1b", "\x7f", "\x85"])
def test_a_control_character_in_an_envelope_address_is_never_written(control: str) -> None:
    bad = f"a{control}Bcc: evil@example.com"
    with pytest.raises(MessageError, match="contains a control character"):
        render_drop_head(b"Subject: s\r\n", sender="s@x.test", recipients=[bad], arrival=ARRIVAL)
    with pytest.raises(MessageError, match=r"the sender .* contains a control character"):
        render_drop_head(b"Subject: s\r\n", sender=bad, recipients=["b@x.test"], arrival=ARRIVAL)
    # A TAB is folding white space, as the address parser takes it in a quoted local part.
    tab = parse_mailbox('"a\tb"@example.com', default_domain=None)
    head = render_drop_head(b"", sender="s@x.test", recipients=[tab], arrival=ARRIVAL)
    assert envelope_of(head)[1] == (tab,)


def test_a_hand_edited_envelope_cannot_inject_a_header_into_drop(
    spool: Spool, clock: FakeClock
) -> None:
    """An envelope file holding a line break (edited by hand, or a .BDP requeued) wrote
    ``x-receiver: a`` and ``Bcc: evil@example.com`` as two lines of the Drop file. That
    recipient fails for good (it retried until it expired); the others are delivered."""
    queue_id = spool.admit(
        b"Subject: hi\r\n\r\nbody\r\n",
        sender="s@x.test",
        recipients=["a@example.com", "b@example.com"],
        origin="t",
    )
    envelope = json.loads(spool.fs.readbytes(f"Queue/{queue_id}.env"))
    envelope["recipients"][0]["address"] = "a\r\nBcc: evil@example.com"
    spool.fs.writebytes(f"Queue/{queue_id}.env", json.dumps(envelope).encode())
    transport = CapturingTransport()
    running = service(spool, clock, transport=transport)
    report = running.run_once()
    assert report.delivered[0] == (queue_id, "b@example.com")
    assert report.deferred == ()
    assert report.failed == ((queue_id, "a\r\nBcc: evil@example.com"),)
    assert envelope_of(spool.drop_message(queue_id)) == ("s@x.test", ("b@example.com",))
    assert b"evil" not in spool.drop_message(queue_id)
    # The sender is told why, in a DSN that quotes the address without its line break.
    dsns = [m for m in transport.messages if m.sender == ""]
    assert [d.recipients for d in dsns] == [("s@x.test",)]
    assert b"Status: 5.1.3" in dsns[0].data
    assert b"holds a control character" in dsns[0].data
    assert b"a Bcc: evil@example.com" in dsns[0].data
    assert b"\nBcc: evil" not in dsns[0].data
    running.close()


def test_a_hand_edited_sender_with_a_line_break_fails_its_local_recipients(
    spool: Spool, clock: FakeClock
) -> None:
    queue_id = spool.admit(
        b"Subject: hi\r\n\r\nbody\r\n", sender="s@x.test", recipients=["a@example.com"], origin="t"
    )
    envelope = json.loads(spool.fs.readbytes(f"Queue/{queue_id}.env"))
    envelope["sender"] = "s@x.test\nBcc: evil@example.com"
    spool.fs.writebytes(f"Queue/{queue_id}.env", json.dumps(envelope).encode())
    running = service(spool, clock)
    report = running.run_once()
    assert report.failed[0] == (queue_id, "a@example.com")
    assert spool.fs.listdir("Drop") == []
    assert report.badmail  # the DSN, to that same sender, fails alike: it ends in BadMail
    assert "553 5.1.7" in spool.fs.readtext(f"BadMail/{queue_id}-d1.BAD")
    running.close()


def test_a_message_ending_inside_its_header_keeps_return_path_a_field_of_its_own(
    spool: Spool, clock: FakeClock
) -> None:
    """``Spool.admit`` stores what it is given: a message without a final line end had
    ``Return-Path:`` glued onto its last header line in Drop."""
    queue_id = spool.admit(
        b"From: a@x.test\r\nSubject: no line end",
        sender="a@x.test",
        recipients=["b@example.com"],
        origin="t",
    )
    running = service(spool, clock)
    assert running.run_once().finished == (queue_id,)
    data = spool.drop_message(queue_id)
    assert b"Subject: no line end\r\nReturn-Path: <a@x.test>\r\nX-OriginalArrivalTime:" in data
    assert envelope_of(data) == ("a@x.test", ("b@example.com",))
    running.close()


def test_ten_thousand_local_recipients_are_one_drop_file_that_round_trips(
    spool: Spool, clock: FakeClock
) -> None:
    """As IIS: one Drop file per message, one x-receiver line per local recipient."""
    recipients = [f"r{n:05d}@Example.COM" for n in range(10_000)]
    spool.submit(b"Subject: many\r\n\r\nx\r\n", sender="a@x.test", recipients=recipients)
    running = service(spool, clock)
    [queue_id] = running.run_once().finished
    [name] = spool.fs.listdir("Drop")
    assert name == f"{queue_id}.eml"
    expected = tuple(r.lower() for r in recipients)  # the domain only: local parts keep case
    assert envelope_of(spool.drop_message(queue_id)) == ("a@x.test", expected)
    running.close()


# -- one domain, either form -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "address"),
    [
        ("bücher.example", "c@xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "c@BÜCHER.example"),
        ("[IPv6:2001:db8::1]", "c@[IPv6:2001:DB8:0::1]"),
        ("[IPv6:2001:db8::1]", "c@[ipv6:2001:db8::1]"),
    ],
)
def test_a_local_domain_in_another_form_is_still_local(
    spool: Spool, clock: FakeClock, local: str, address: str
) -> None:
    """RFC 5890 section 2.3.2.1: an A-label and its U-label are one domain; an IPv6 literal
    was never local at all (its "IPv6:" tag was lower-cased on one side only). Such mail went
    to the smart host (or the listener refused it as a relay)."""
    router = Router(local_domains=["example.com"], alias_domains=[local], smart_host="relay.test")
    recipient = parse_mailbox(address, default_domain=None)
    assert router.route(recipient).kind is RouteKind.LOCAL
    assert router.is_local(recipient.rpartition("@")[2])
    queue_id = spool.submit(b"Subject: s\r\n\r\nx\r\n", sender="a@x.test", recipients=[address])
    running = service(spool, clock, router)
    report = running.run_once()
    assert report.delivered == ((queue_id, recipient),)
    assert envelope_of(spool.drop_message(queue_id))[1] == (recipient,)
    running.close()


def test_routes_and_tls_domains_match_either_form() -> None:
    router = Router(
        local_domains=["example.com"],
        routes={"zürich.example": "[192.0.2.9]"},
        tls_domains={"xn--zrich-kva.example": "required"},
    )
    for address in ("y@zürich.example", "y@xn--zrich-kva.example", "y@ZÜRICH.example."):
        [hop] = router.route(address).hops
        assert (hop.name, hop.tls.value) == ("192.0.2.9", "required"), address


# -- smart host strings ----------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["²", "¹", "\u0662\u0665", "\uff12\uff15", "\U0001d7da\U0001d7dd"])
def test_a_port_in_other_digits_is_a_configuration_error_not_a_crash(port: str) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` a ValueError: ``spoolmail run --smart-host
    relay.test:²`` ended in a traceback."""
    for text in (f"relay.test:{port}", f"[192.0.2.1]:{port}", f"[::1]:{port}"):
        with pytest.raises(ConfigurationError, match="port must be 1-65535"):
            parse_target(text)


@pytest.mark.parametrize("host", ["10.0.0.256", "256.1.1.1:25", "192.0.2", "12345", "relay.7."])
def test_a_mistyped_address_is_no_smart_host_name(host: str) -> None:
    """Taken as a host name, its NXDOMAIN is 550 5.4.4: every remote message failed for good."""
    with pytest.raises(ConfigurationError, match="is not a host name"):
        Router(smart_host=host)
    with pytest.raises(ConfigurationError, match="is not a host name"):
        Router(smart_host=Hop(HopKind.HOST, host.partition(":")[0]))
    assert parse_target("relay7.test").host == "relay7.test"
    assert parse_target("7relay.test:2525").port == 2525


# -- the IIS import --------------------------------------------------------------------------------

_IIS = "NTFS_00ff.EML"
_PIECES = [
    b"From: a@x.test", b"To: b@example.com", b'To: "x y" <q@example.com>', b"Sender: <>",
    b"\r\n", b"\n", b"\r", b"x-sender: a@b.test", b"x-receiver: z@example.com", b"Bcc:",
    b"\t folded", b"\x00", b"\xff\xfe", b"=?utf-8?q?x?= <a@b.test>", b"..", b".",
]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.lists(st.sampled_from(_PIECES), max_size=30).map(b"".join),
    )
)
def test_an_iis_queue_file_of_any_bytes_is_imported_whole_or_left_as_it_is(data: bytes) -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        spool._store.write("Queue", _IIS, data)
        try:
            done = iis.import_queue_file(
                spool._store,
                _IIS,
                clock=spool.clock,
                default_domain="example.com",
                max_message_size=10**6,
            )
        except MessageError:
            assert (spool.pickup(), iis.stranded_queue_files(spool._store)) == ([], [_IIS])
            return
        assert (spool.pickup(), iis.stranded_queue_files(spool._store)) == ([_IIS], [])
        picked = envelope_of(spool.fs.readbytes(f"Pickup/{_IIS}"))
        assert picked == (done.sender, done.recipients)


# -- BadMail requeue from two processes ------------------------------------------------------------

_ENTRY = "19ac9b2f1c0-000000000001"


def _requeue(root: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    with Spool(root) as spool:
        barrier.wait()
        with contextlib.suppress(SpoolmailError):  # the loser told the entry is gone: right
            spool.requeue_badmail(_ENTRY, recipients=["bob@example.com"], sender="a@x.test")


def test_two_processes_requeueing_one_badmail_entry_queue_it_once(tmp_path: Path) -> None:
    fork = multiprocessing.get_context("fork")
    duplicates = 0
    for attempt in range(5):
        root = tmp_path / str(attempt)
        with Spool(pyfs.OSFS(str(root), create=True)) as spool:
            spool._store.write("BadMail", f"{_ENTRY}.BAD", b"To: bob@example.com\r\n\r\nx\r\n")
            spool._store.write("BadMail", f"{_ENTRY}.BDR", b"4.3.0 envelope lost\n")
        barrier = fork.Barrier(2)
        workers = [fork.Process(target=_requeue, args=(str(root), barrier)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        with Spool(str(root)) as spool:
            duplicates += len(list(spool.queued())) - 1
    assert duplicates == 0
