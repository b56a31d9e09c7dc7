"""The listener through real clients on loopback: smtplib, and raw sockets where smtplib is too
polite (pipelining bursts, bare CR and LF). Everything asserted against the spool's Queue."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import attrs
import pytest

import spoolmail._store.store as store_module
from spoolmail import Durability, Notify, Ret, Router, Spool
from spoolmail.testing import FakeClock
from tests.listen.conftest import Connect, running
from tests.listen.raw import RawClient
from tests.waiting import until

MESSAGE = b"From: a@client.test\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def queued(spool: Spool) -> list[str]:
    return sorted(item.id for item in spool.queued())


# -- relay control ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "relay_networks", "authenticated_expected"),
    [
        ("bob@example.com", [], 250),  # local domain
        ("bob@EXAMPLE.com", [], 250),
        ("bob@example.org", [], 250),  # alias domain
        ("bob@remote.test", [], 550),  # unknown client: no relaying
        ("bob@remote.test", ["127.0.0.0/8"], 250),  # allowed network
        ("bob@remote.test", ["192.0.2.0/24", "::1"], 550),  # other networks only
    ],
)
def test_relay_matrix_without_auth(
    spool: Spool,
    connect: Connect,
    recipient: str,
    relay_networks: list[str],
    authenticated_expected: int,
) -> None:
    with running(spool, relay_networks=relay_networks) as listener:
        client = connect(listener)
        assert client.mail("a@client.test")[0] == 250
        code, text = client.rcpt(recipient)
        assert code == authenticated_expected
        if code == 550:
            assert text.startswith(b"5.7.1 Unable to relay")
            assert client.rcpt("bob@example.com")[0] == 250  # the session goes on
        client.data(MESSAGE)
        ids = queued(spool)
        assert len(ids) == 1
        envelope = spool.queued_message(ids[0]).envelope
        expected = [recipient.lower()] if code == 250 else ["bob@example.com"]
        assert [r.address.lower() for r in envelope.recipients] == expected


def test_capture_mode_takes_every_domain_from_anyone(spool: Spool, connect: Connect) -> None:
    with running(spool, router=Router(catch_all=True)) as listener:
        client = connect(listener)
        client.mail("a@client.test")
        assert client.rcpt("anyone@anywhere.test")[0] == 250
        assert client.rcpt("x@example.net")[0] == 250


def test_new_settings_serve_the_sessions_that_connect_after_them(
    spool: Spool, connect: Connect
) -> None:
    """The sessions share their settings, made again when a reload replaces the listener's
    router, name or limits (``_cli.listening.reconfigure``); a session under way keeps its."""
    with running(spool) as listener:
        before = connect(listener)
        before.mail("a@client.test")
        assert before.rcpt("x@new.test")[0] == 550
        listener.router = Router(local_domains=["example.com", "new.test"])
        listener.fqdn = "mx2.example.com"
        listener.limits = attrs.evolve(listener.limits, max_recipients=1)
        after = connect(listener)
        assert after.ehlo_resp is not None
        assert after.ehlo_resp.startswith(b"mx2.example.com")
        after.mail("a@client.test")
        assert after.rcpt("x@new.test")[0] == 250
        assert after.rcpt("y@new.test")[0] == 452
        assert before.rcpt("y@new.test")[0] == 550
        assert before.rcpt("bob@example.com")[0] == 250


def test_a_denied_client_gets_554_and_only_503_until_quit(spool: Spool) -> None:
    with running(spool, denied_clients=["127.0.0.0/8"]) as listener:
        raw = RawClient(listener)
        assert raw.greeting.startswith("554 5.7.1 ")
        raw.send(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nQUIT\r\n")
        assert raw.replies(3) == [
            "503 5.7.1 Access denied",
            "503 5.7.1 Access denied",
            "221 2.0.0 Bye",
        ]
        assert raw.closed()


def test_only_allowed_clients_may_connect(spool: Spool, connect: Connect) -> None:
    with running(spool, allowed_clients=["192.0.2.0/24"]) as listener:
        assert RawClient(listener).greeting.startswith("554 5.7.1")
    with running(spool, allowed_clients=["127.0.0.1"]) as listener:
        assert RawClient(listener).greeting.startswith("220 mx.example.com ESMTP")


# -- the commit before 250 -------------------------------------------------------------------------


def test_250_names_the_queue_id_and_the_message_is_queued_with_a_received_field(
    spool: Spool, connect: Connect
) -> None:
    with running(spool) as listener:
        client = connect(listener)
        assert client.sendmail("a@client.test", ["bob@example.com"], MESSAGE) == {}
        ids = queued(spool)
        assert len(ids) == 1
        stored = spool.message(ids[0])
        head, _, rest = stored.partition(b"\r\nFrom: ")
        assert rest == MESSAGE[len(b"From: ") :]
        assert head.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
        assert f"\tby mx.example.com (spoolmail) with ESMTP id {ids[0]}\r\n".encode() in head
        assert b"\tfor <bob@example.com>; " in head
        assert spool.queued_message(ids[0]).envelope.origin == "smtp:127.0.0.1"


def test_the_reply_carries_the_queue_id(spool: Spool, connect: Connect) -> None:
    with running(spool) as listener:
        client = connect(listener)
        client.mail("a@client.test")
        client.rcpt("bob@example.com")
        code, text = client.data(MESSAGE)
        assert code == 250
        assert text == f"2.0.0 Ok: queued as {queued(spool)[0]}".encode()


def test_a_commit_failure_is_451_and_nothing_is_queued(
    tmp_path: Path, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "MailRoot"
    with (
        Spool(root, clock=FakeClock(), durability=Durability.FSYNC) as spool,
        running(spool, limits={"min_free_space": 0}) as listener,
    ):
        client = connect(listener)
        client.mail("a@client.test")
        client.rcpt("bob@example.com")

        real = os.fsync

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store_module.os, "fsync", full)
        code, text = client.data(MESSAGE)
        monkeypatch.setattr(store_module.os, "fsync", real)
        assert code == 451
        assert text.startswith(b"4.3.0 ")
        assert queued(spool) == []
        assert list((root / "Queue").iterdir()) == []
        # The session survives, and the next try is queued.
        assert client.sendmail("a@client.test", ["bob@example.com"], MESSAGE) == {}
        assert len(queued(spool)) == 1


def test_low_disk_is_452_4_3_1_at_mail(tmp_path: Path, connect: Connect) -> None:
    with Spool(tmp_path / "MailRoot", clock=FakeClock()) as spool:
        free = spool.free_space()
        assert free is not None
        with running(spool, limits={"min_free_space": free * 1000}) as listener:
            client = connect(listener)
            assert client.mail("a@client.test") == (452, b"4.3.1 Insufficient system storage")
        with running(spool, limits={"min_free_space": 1}) as listener:
            assert connect(listener).mail("a@client.test")[0] == 250


def test_memoryfs_always_has_room(spool: Spool, connect: Connect) -> None:
    with running(spool, limits={"min_free_space": 10**18}) as listener:
        assert connect(listener).mail("a@client.test")[0] == 250


def test_rset_and_a_disconnect_mid_data_queue_nothing(spool: Spool, connect: Connect) -> None:
    with running(spool) as listener:
        client = connect(listener)
        client.mail("a@client.test")
        client.rcpt("bob@example.com")
        assert client.rset()[0] == 250
        assert client.rcpt("bob@example.com")[0] == 503  # RSET ended the transaction
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.com>\r\n")
        raw.send(b"DATA\r\n")
        assert [r[:3] for r in raw.replies(4)] == ["250", "250", "250", "354"]
        raw.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
        raw.sock.shutdown(socket.SHUT_RDWR)
        raw.close()
        # A full session after it proves the listener saw the disconnect and carried on.
        client = connect(listener)
        assert client.sendmail("a@client.test", ["bob@example.com"], MESSAGE) == {}
        assert len(queued(spool)) == 1
        assert b"half a message" not in spool.message(queued(spool)[0])


# -- limits ----------------------------------------------------------------------------------------


def test_size_is_announced_and_enforced_at_mail_and_data(spool: Spool, connect: Connect) -> None:
    with running(spool, limits={"max_message_size": 1000}) as listener:
        client = connect(listener)
        assert client.esmtp_features["size"] == "1000"
        code, text = client.mail("a@client.test", ["SIZE=1001"])
        assert (code, text[:6]) == (552, b"5.3.4 ")
        assert client.mail("a@client.test", ["SIZE=999"])[0] == 250
        client.rcpt("bob@example.com")
        code, text = client.data(MESSAGE + b"x" * 1000 + b"\r\n")
        assert (code, text[:6]) == (552, b"5.3.4 ")
        assert queued(spool) == []


def test_too_many_recipients_is_452_4_5_3(spool: Spool, connect: Connect) -> None:
    with running(spool, limits={"max_recipients": 2}) as listener:
        client = connect(listener)
        client.mail("a@client.test")
        assert client.rcpt("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com") == (452, b"4.5.3 Too many recipients")
        assert client.data(MESSAGE)[0] == 250
        (only,) = queued(spool)
        assert [r.address for r in spool.queued_message(only).envelope.recipients] == [
            "a@example.com",
            "b@example.com",
        ]


def test_a_line_over_998_octets_is_refused_after_data(spool: Spool, connect: Connect) -> None:
    with running(spool) as listener:
        client = connect(listener)
        client.mail("a@client.test")
        client.rcpt("bob@example.com")
        assert client.data(MESSAGE + b"x" * 998 + b"\r\n")[0] == 250  # exactly the limit
        client.mail("a@client.test")
        client.rcpt("bob@example.com")
        code, text = client.data(MESSAGE + b"x" * 999 + b"\r\n")
        assert (code, text[:6]) == (500, b"5.5.2 ")
        assert len(queued(spool)) == 1


@pytest.mark.parametrize("length", [600, 3000, 60000])
def test_a_command_line_over_the_limit_is_refused_and_the_session_goes_on(
    spool: Spool, length: int
) -> None:
    """Up to the stream reader's limit (64 KiB): 500, and the session goes on."""
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\nMAIL FROM:<" + b"a" * length + b"@client.test>\r\nNOOP\r\n")
        ehlo, mail, noop = raw.replies(3)
        assert ehlo.startswith("250 ")
        assert mail.startswith("500 5.5.2 ")
        assert noop.startswith("250 ")


def test_a_header_section_over_the_limit_is_refused(spool: Spool, connect: Connect) -> None:
    with running(spool, limits={"max_header_size": 200}) as listener:
        client = connect(listener)
        client.mail("a@client.test")
        client.rcpt("bob@example.com")
        header = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 50) for i in range(5))
        code, text = client.data(header + MESSAGE)
        assert (code, text[:6]) == (552, b"5.3.4 ")
        assert queued(spool) == []


def test_sessions_beyond_the_limit_get_421(spool: Spool) -> None:
    with running(spool, limits={"max_sessions": 2}) as listener:
        first, second = RawClient(listener), RawClient(listener)
        assert first.greeting.startswith("220")
        assert second.greeting.startswith("220")
        third = RawClient(listener)
        assert third.greeting.startswith("421 4.7.0 ")
        assert third.closed()
        first.send(b"QUIT\r\n")
        assert first.replies(1) == ["221 2.0.0 Bye"]
        assert first.closed()
        fourth = RawClient(listener)
        assert fourth.greeting.startswith("220")


def test_a_silent_client_is_closed_after_the_command_timeout(spool: Spool) -> None:
    with running(spool, limits={"command_timeout": 0.2}) as listener:
        raw = RawClient(listener)
        raw.sock.settimeout(10)
        assert raw.closed()


def test_each_command_restarts_the_timeout(spool: Spool) -> None:
    """One timer per session, moved on at each command: it fires only after real silence."""
    with running(spool, limits={"command_timeout": 0.4}) as listener:
        raw = RawClient(listener)
        started = time.monotonic()
        for _ in range(6):  # 0.9 s of talk, more than twice the timeout
            raw.send(b"NOOP\r\n")
            assert raw.replies(1)[0].startswith("250")
            time.sleep(0.15)
        raw.sock.settimeout(10)
        assert raw.closed()
        assert time.monotonic() - started >= 0.9 + 0.4 - 0.15


# -- pipelining and smuggling ----------------------------------------------------------------------


def test_pipelined_commands_in_one_send(spool: Spool) -> None:
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(
            b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.com>\r\n"
            b"RCPT TO:<eve@remote.test>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n"
            + MESSAGE
            + b".\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
            + MESSAGE
            + b".\r\nQUIT\r\n"
        )
        replies = raw.replies(12)
        assert [r[:9] for r in replies] == [
            "250 HELP",  # EHLO's last line
            "250 2.1.0",
            "250 2.1.5",
            "550 5.7.1",
            "250 2.1.5",
            "354 End d",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "250 2.0.0",
            "221 2.0.0",
        ]
        ids = queued(spool)
        assert len(ids) == 2
        senders = sorted(spool.queued_message(i).envelope.sender for i in ids)
        assert senders == ["", "a@client.test"]


SMUGGLED = b"MAIL FROM:<eve@client.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nsmuggled\r\n"


@pytest.mark.parametrize(
    ("ending", "char"),
    [
        (b"\n.\n", "LF"),  # <LF>.<LF>
        (b"\r.\r", "CR"),  # <CR>.<CR>
        (b"\r\n.\n", "LF"),  # <CR><LF>.<LF>
        (b"\n.\r\n", "LF"),  # <LF>.<CR><LF>
    ],
)
def test_smuggling_inside_data_ends_the_session_with_nothing_queued(
    spool: Spool, ending: bytes, char: str
) -> None:
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.com>\r\n")
        raw.send(b"DATA\r\n")
        assert [r[:3] for r in raw.replies(4)] == ["250", "250", "250", "354"]
        raw.send(b"Subject: x\r\n\r\nbody" + ending + SMUGGLED + b".\r\n")
        assert raw.replies(1) == [f"521 5.5.2 mx.example.com Error: bare <{char}> received"]
        assert raw.closed()
    assert queued(spool) == []


@pytest.mark.parametrize(
    ("command", "char"),
    [
        (b"MAIL FROM:<a@client.test>\n", "LF"),
        (b"MAIL FROM:<a@client.test>\rRCPT TO:<bob@example.com>\r\n", "CR"),
        (b"NOOP\n", "LF"),
    ],
)
def test_a_bare_newline_in_a_command_ends_the_session(
    spool: Spool, command: bytes, char: str
) -> None:
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\n" + command)
        assert raw.replies(2)[1] == f"521 5.5.2 mx.example.com Error: bare <{char}> received"
        assert raw.closed()


@pytest.mark.parametrize("size", [2048, 65535, 65536, 65537, 65538, 1 << 20])
@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "in-pieces"])
def test_a_command_line_too_long_gets_500_whatever_its_length(
    spool: Spool, size: int, pieces: bool
) -> None:
    """``size`` octets with the CRLF: the reply a long line gets under the stream reader's limit
    (64 KiB) is the reply every longer line gets, sent at once or a little at a time."""
    line = b"NOOP " + b"x" * (size - 7) + b"\r\n"
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\n")
        raw.replies(1)
        if pieces:
            for start in range(0, len(line), 4096):
                raw.send(line[start : start + 4096])
        else:
            raw.send(line)
        raw.send(b"NOOP\r\nQUIT\r\n")
        replies = raw.replies(3)
        assert replies == ["500 5.5.2 Command line too long", "250 2.0.0 Ok", "221 2.0.0 Bye"]


@pytest.mark.parametrize(
    ("ending", "char"),
    [
        (b"\n", "LF"),  # the long line ends in a bare LF
        (b"\rx\r\n", "CR"),  # a bare CR near its end
        (b"\r\r\n", "CR"),
    ],
)
def test_a_bare_newline_in_a_line_too_long_still_ends_the_session(
    spool: Spool, ending: bytes, char: str
) -> None:
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\n")
        raw.replies(1)
        raw.send(b"NOOP " + b"x" * 100_000 + ending + b"NOOP\r\n")
        assert raw.replies(1) == [f"521 5.5.2 mx.example.com Error: bare <{char}> received"]
        assert raw.closed()


def test_a_dot_line_inside_a_line_does_not_end_data(spool: Spool) -> None:
    """Only CRLF.CRLF ends DATA; leading dots are un-stuffed (RFC 5321 section 4.5.2)."""
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"EHLO c.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.com>\r\n")
        raw.send(b"DATA\r\nSubject: dots\r\n\r\n..leading\r\n. not the end\r\n.\r\n")
        assert raw.replies(5)[4].startswith("250 2.0.0 Ok: queued as")
        (only,) = queued(spool)
        assert spool.message(only).endswith(b"\r\n.leading\r\n not the end\r\n")


# -- ESMTP: DSN, 8BITMIME, SMTPUTF8, enhanced codes ------------------------------------------------


def test_ehlo_advertises_the_extensions(spool: Spool, connect: Connect) -> None:
    with running(spool) as listener:
        features = connect(listener).esmtp_features
        for keyword in ("size", "8bitmime", "smtputf8", "pipelining", "dsn", "enhancedstatuscodes"):
            assert keyword in features, keyword
        assert "auth" not in features  # no credentials, and no TLS yet
        assert "starttls" not in features  # no certificate


def test_dsn_parameters_land_in_the_envelope(spool: Spool, connect: Connect) -> None:
    with running(spool) as listener:
        client = connect(listener)
        assert client.mail("a@client.test", ["RET=HDRS", "ENVID=QQ+2B1", "BODY=8BITMIME"])[0] == 250
        assert (
            client.rcpt("bob@example.com", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;b@x.test"])[0]
            == 250
        )
        assert client.rcpt("carol@example.com", ["NOTIFY=NEVER"])[0] == 250
        assert client.rcpt("dave@example.com")[0] == 250
        assert client.data(MESSAGE)[0] == 250
        envelope = spool.queued_message(queued(spool)[0]).envelope
        assert (envelope.ret, envelope.envid, envelope.eight_bit) == (Ret.HDRS, "QQ+2B1", True)
        assert [(r.notify, r.orcpt) for r in envelope.recipients] == [
            (Notify.SUCCESS | Notify.DELAY, "rfc822;b@x.test"),
            (Notify.NEVER, None),
            (None, None),
        ]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:<a@client.test> RET=MAYBE", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> ENVID=a=b", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> RET=FULL RET=HDRS", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> BODY=9BIT", "501 5.5.4"),
        ("MAIL FROM:<a@client.test> FROB=1", "555 5.5.4"),
        ("MAIL FROM:<not an address>", "501 5.1.7"),
        ("MAIL FROM:<a@client.test> ENVID=" + "x" * 101, "501 5.5.4"),
    ],
)
def test_bad_mail_parameters(spool: Spool, connect: Connect, command: str, reply: str) -> None:
    with running(spool) as listener:
        client = connect(listener)
        code, text = client.docmd(command)
        assert f"{code} {text.decode()}".startswith(reply)
        assert client.mail("a@client.test")[0] == 250  # no transaction was begun


@pytest.mark.parametrize(
    "params",
    [
        ["NOTIFY=NEVER,SUCCESS"],
        ["NOTIFY=LATER"],
        ["ORCPT=bob@example.com"],
        ["ORCPT=rfc822;a+zz"],
        ["NOTIFY=SUCCESS", "NOTIFY=DELAY"],
    ],
)
def test_bad_rcpt_parameters_are_501_5_5_4(
    spool: Spool, connect: Connect, params: list[str]
) -> None:
    with running(spool) as listener:
        client = connect(listener)
        client.mail("a@client.test")
        code, text = client.rcpt("bob@example.com", params)
        assert (code, text[:6]) == (501, b"5.5.4 ")
        assert client.rcpt("bob@example.com")[0] == 250


def test_smtputf8_addresses_need_smtputf8(spool: Spool, connect: Connect) -> None:
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send("EHLO c.test\r\nMAIL FROM:<j\u00f6rg@client.test>\r\n".encode())
        assert raw.replies(2)[1].startswith("553 5.6.7 ")
        raw.send("MAIL FROM:<a@client.test>\r\nRCPT TO:<\u00e5sa@example.com>\r\n".encode())
        assert raw.replies(2)[1].startswith("553 5.6.7 ")
        client = connect(listener)
        assert client.mail("j\u00f6rg@client.test", ["SMTPUTF8"])[0] == 250
        assert client.rcpt("\u00e5sa@example.com")[0] == 250
        code, _ = client.data("Subject: hej\r\n\r\nh\u00e4lsningar\r\n".encode())
        assert code == 250
        (only,) = queued(spool)
        envelope = spool.queued_message(only).envelope
        assert envelope.sender == "j\u00f6rg@client.test"
        assert envelope.recipients[0].address == "\u00e5sa@example.com"
        assert b" with UTF8SMTP id " in spool.message(only)


def test_helo_clients_get_plain_smtp(spool: Spool) -> None:
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"HELO old.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<bob@example.com>\r\n")
        raw.send(b"DATA\r\n" + MESSAGE + b".\r\n")
        assert raw.replies(5)[4].startswith("250 2.0.0")
        (only,) = queued(spool)
        assert (
            b"Received: from old.test ([127.0.0.1])\r\n\tby mx.example.com (spoolmail) with SMTP id"
            in spool.message(only)
        )


def test_every_refusal_carries_an_enhanced_code(spool: Spool) -> None:
    with running(spool) as listener:
        raw = RawClient(listener)
        raw.send(b"MAIL FROM:<a@client.test>\r\nEHLO c.test\r\nRCPT TO:<b@example.com>\r\n")
        raw.send(b"DATA\r\nBOGUS\r\nVRFY bob\r\n")
        replies = raw.replies(6)
        assert replies[0].startswith("503 5.5.1 ")
        assert replies[2].startswith("503 5.5.1 ")
        assert replies[3].startswith("503 5.5.1 ")
        assert replies[4].startswith("500 5.5.2 ")


# -- IPv6 ------------------------------------------------------------------------------------------


def test_ipv6_loopback(spool: Spool, connect: Connect) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("::1 cannot be bound here")
    probe.close()
    with running(spool, addresses=["127.0.0.1:0", "[::1]:0"], relay_networks=["::1"]) as listener:
        assert listener.addresses[1].startswith("[::1]:")
        client = connect(listener, index=1)
        client.mail("a@client.test")
        assert client.rcpt("bob@remote.test")[0] == 250  # ::1 may relay, 127.0.0.1 may not
        client.data(MESSAGE)
        (only,) = queued(spool)
        assert spool.queued_message(only).envelope.origin == "smtp:::1"
        assert b"Received: from client.test ([IPv6:::1])" in spool.message(only)
        v4 = connect(listener, index=0)
        v4.mail("a@client.test")
        assert v4.rcpt("bob@remote.test")[0] == 550


# -- transactions under way, for the committer's groups ------------------------------------------


def test_the_committer_knows_the_transactions_under_way(spool: Spool, connect: Connect) -> None:
    with running(spool) as listener:
        committer = listener._committer
        assert committer is not None
        client = connect(listener)
        assert committer.under_way == 0
        assert client.mail("a@client.test")[0] == 250
        assert committer.under_way == 1
        assert client.mail("a@client.test")[0] == 503  # nested: still one
        assert committer.under_way == 1
        assert client.rset()[0] == 250
        assert committer.under_way == 0
        assert client.mail("bad address")[0] != 250
        assert committer.under_way == 0
        assert client.mail("a@client.test")[0] == 250
        assert client.rcpt("bob@example.com")[0] == 250
        assert client.data(MESSAGE)[0] == 250
        assert committer.under_way == 0
        assert client.mail("a@client.test")[0] == 250
        assert client.rcpt("bob@example.com")[0] == 250
        assert client.data(b"Subject: " + b"x" * 1000 + b"\r\n\r\nhi\r\n")[0] == 500
        assert committer.under_way == 0
        assert client.mail("a@client.test")[0] == 250
        assert client.ehlo()[0] == 250  # EHLO resets the transaction
        assert committer.under_way == 0
        other = connect(listener)
        assert client.mail("a@client.test")[0] == 250
        assert other.mail("a@client.test")[0] == 250
        assert committer.under_way == 2
        client.close()  # gone mid-transaction, without QUIT
        until("the lost session's transaction ends", lambda: committer.under_way == 1)
        assert other.quit()[0] == 221
        until("the quit session's transaction ends", lambda: committer.under_way == 0)
    assert len(queued(spool)) == 1
