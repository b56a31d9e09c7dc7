"""Sessions and transactions of the SMTP client protocol, on bytes alone.

These were real-server tests until the conversation became a sans-IO protocol: each checks what
the client says, in which order and in how many writes, and what every reply means for the
recipients, which needs no socket. ``tests/transport/wire.py`` drives the protocol against a
:class:`Peer` that answers as the raw server or aiosmtpd of ``tests/smtpservers.py`` would, byte
for byte; its ``commands``, ``groups``, ``data`` and ``messages`` are what those servers record.
Connection reuse, timeouts, broken connections, TLS handshakes and streaming memory stay with
real servers on 127.0.0.1 (``test_smtp.py``, ``test_smtp_tls.py``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence

import attrs
import pytest

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Credentials, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.protocol import State
from tests.smtpservers import TOO_MANY_RECIPIENTS
from tests.transport.wire import (
    HANDSHAKE,
    HOST,
    TARGET,
    Peer,
    aiosmtpd_like,
    client,
    converse,
    deliver,
    open_session,
    send,
    transcript,
    unstuff,
)
from tests.transport.wire import outgoing as wire_outgoing

MESSAGE = (
    b"From: alice@example.net\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b".\r\n"
    b"the line above was a lone dot; SECRET-BODY-MARKER\r\n"
)
ASCII_MESSAGE = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
# RFC 6532: UTF-8 in header fields, addresses in ASCII.
UTF8_MESSAGE = (
    "From: Zoë <alice@example.net>\r\n"
    "To: bob@example.com\r\n"
    "Subject: Grüße aus Köln\r\n"
    "\r\n"
    "Viele Grüße.\r\n"
).encode()
# The raw server's EHLO reply without PIPELINING: the client must wait for each reply.
NO_PIPELINING: dict[str, bytes | None] = {
    "EHLO": b"250-raw.test greets you\r\n250 8BITMIME\r\n",
}
# Postfix's smtp-sink, byte for byte (postfix 3.8): the last line is "250 " and nothing else.
SMTP_SINK_EHLO = (
    b"250-smtp-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n"
    b"250-XCLIENT NAME HELO\r\n250-XFORWARD NAME ADDR PROTO HELO\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 \r\n"
)
QUEUED = Reply(250, "2.0.0", "Ok: queued", host=HOST)


def outgoing(
    data: bytes = MESSAGE,
    *,
    sender: str = "alice@example.net",
    recipients: Sequence[str] = ("bob@example.com",),
) -> Outgoing:
    return wire_outgoing(data, sender=sender, recipients=recipients)


@pytest.fixture
def log() -> Transcript:
    return transcript()


# What each recipient gets.


def test_each_recipient_gets_its_own_reply(log: Transcript) -> None:
    recipients = ["bob@example.com", "tempfail-carol@example.com", "reject-dave@example.com"]
    server = aiosmtpd_like()
    replies = send(server, outgoing(recipients=recipients), log)
    assert replies == {
        "bob@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST),
        "tempfail-carol@example.com": Reply(
            451, "4.3.0", "Mailbox temporarily unavailable", host=HOST
        ),
        "reject-dave@example.com": Reply(550, "5.1.1", "No such user here", host=HOST),
    }
    [received] = server.messages
    assert received.rcpt_tos == ("bob@example.com",)
    assert received.mail.startswith("MAIL FROM:<alice@example.net>")
    assert received.data == MESSAGE
    assert f"SIZE={len(MESSAGE)}" in received.mail_options


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        pytest.param(MESSAGE, MESSAGE, id="crlf-with-dots"),
        pytest.param(b"a\nb\n.c\n\n..d\n", b"a\r\nb\r\n.c\r\n\r\n..d\r\n", id="bare-lf"),
        pytest.param(b"Subject: x\r\n\r\nno final line end", None, id="no-final-crlf"),
        pytest.param(b"", b"", id="empty"),
    ],
)
def test_server_receives_the_stored_bytes(
    log: Transcript, stored: bytes, expected: bytes | None
) -> None:
    server = aiosmtpd_like()
    [reply] = send(server, outgoing(stored), log).values()
    assert reply.code == 250
    [received] = server.messages
    assert received.data == (expected if expected is not None else stored + b"\r\n")


@pytest.mark.parametrize("dot_lines", [True, False])
def test_a_message_whose_lines_intake_made_crlf_arrives_whole(
    log: Transcript, dot_lines: bool
) -> None:
    stored = b"Subject: x\r\n\r\n" + (b".a\r\n..\r\n.\r\n" if dot_lines else b"a.\r\n")
    server = aiosmtpd_like()
    message = attrs.evolve(outgoing(stored), dot_lines=dot_lines)
    [reply] = send(server, message, log).values()
    assert reply.code == 250
    [received] = server.messages
    assert received.data == stored


def test_null_sender_is_sent_as_empty_path(log: Transcript) -> None:
    server = Peer()
    [reply] = send(server, outgoing(sender=""), log).values()
    assert reply.code == 250
    assert "MAIL FROM:<>" in server.commands


def test_eight_bit_body_is_declared(log: Transcript) -> None:
    # 8-bit in the body only: UTF-8 in a header field would need SMTPUTF8 as well.
    eight_bit = b"Subject: coffee\r\n\r\ncaf\xc3\xa9\r\n"
    server = aiosmtpd_like()
    protocol = client()
    assert open_session(protocol, server, log) is None
    deliver(protocol, server, outgoing(eight_bit), log)
    deliver(protocol, server, outgoing(), log)
    first, second = server.messages
    assert "BODY=8BITMIME" in first.mail_options
    assert first.data == eight_bit
    assert "BODY=8BITMIME" not in second.mail_options


def test_helo_fallback_when_ehlo_is_refused(log: Transcript) -> None:
    server = Peer(replies={"EHLO": b"502 5.5.2 Error: command not recognized\r\n"})
    [reply] = send(server, outgoing(), log).values()
    assert reply == Reply(250, "2.0.0", "Ok: queued", host=HOST)
    assert server.commands[:3] == [
        "EHLO client.test",
        "HELO client.test",
        "MAIL FROM:<alice@example.net>",  # no ESMTP parameters after HELO
    ]
    assert unstuff(server.data[0]) == MESSAGE


def test_multiline_reply_is_joined(log: Transcript) -> None:
    multiline = (
        b"550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        b"550-5.1.1 Please try double-checking the recipient's email\r\n"
        b"550 5.1.1 address for typos.\r\n"
    )
    server = Peer(replies={**NO_PIPELINING, "RCPT": multiline})
    [reply] = send(server, outgoing(), log, quit_after=False).values()
    assert reply == Reply(
        550,
        "5.1.1",
        "The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos.",
        host=HOST,
    )
    assert "DATA" not in server.commands
    assert server.commands[-1] == "RSET"


def test_mail_rejected_answers_everyone(log: Transcript) -> None:
    recipients = ["bob@example.com", "carol@example.com"]
    server = aiosmtpd_like(mail_reply=b"550 5.7.1 Sender blocked\r\n")
    replies = send(server, outgoing(recipients=recipients), log)
    assert set(replies.values()) == {Reply(550, "5.7.1", "Sender blocked", host=HOST)}
    assert server.rcpt_tos == []


def test_final_reply_applies_to_accepted_recipients_only(log: Transcript) -> None:
    recipients = ["bob@example.com", "reject-dave@example.com"]
    server = aiosmtpd_like(data_reply=b"554 5.7.1 Message rejected as spam\r\n")
    replies = send(server, outgoing(recipients=recipients), log)
    assert replies == {
        "bob@example.com": Reply(554, "5.7.1", "Message rejected as spam", host=HOST),
        "reject-dave@example.com": Reply(550, "5.1.1", "No such user here", host=HOST),
    }


def test_size_limit_fails_without_mail(log: Transcript) -> None:
    server = aiosmtpd_like(size=100)
    replies = send(server, outgoing(b"x" * 500 + b"\r\n", recipients=["a@x.test", "b@x.test"]), log)
    assert {r.code for r in replies.values()} == {552}
    assert {r.enhanced for r in replies.values()} == {"5.3.4"}
    assert not any(command.startswith("MAIL") for command in server.commands)


def test_non_ascii_address_needs_smtputf8(log: Transcript) -> None:
    recipients = ["josé@example.com", "bob@example.com"]
    server = aiosmtpd_like(smtputf8=False)
    replies = send(server, outgoing(recipients=recipients), log)
    assert {(r.code, r.enhanced) for r in replies.values()} == {(553, "5.6.7")}
    assert not any(command.startswith("MAIL") for command in server.commands)


def test_non_ascii_address_is_delivered_with_smtputf8(log: Transcript) -> None:
    server = aiosmtpd_like(smtputf8=True)
    replies = send(server, outgoing(sender="zoë@example.net", recipients=["josé@example.com"]), log)
    assert replies == {"josé@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    [received] = server.messages
    assert "SMTPUTF8" in received.mail_options
    assert received.rcpt_tos == ("josé@example.com",)
    assert received.mail.startswith("MAIL FROM:<zoë@example.net>")


def test_unsendable_address_is_refused_before_the_server_sees_it(log: Transcript) -> None:
    evil = "bob@example.com>\r\nRCPT TO:<evil@example.com"
    server = Peer()
    replies = send(server, outgoing(recipients=[evil, "carol@example.com"]), log)
    assert replies[evil] == Reply(
        553, "5.1.3", f"recipient address {evil!r} cannot be sent", host=HOST
    )
    assert replies["carol@example.com"].code == 250
    assert not any("evil" in command for command in server.commands)


def test_a_421_greeting_ends_the_session_unusable(log: Transcript) -> None:
    server = Peer(greeting=b"421 4.3.2 Going down\r\n")
    protocol = client()
    assert open_session(protocol, server, log) == Reply(421, "4.3.2", "Going down", host=HOST)
    assert not protocol.usable
    assert server.commands == []


# Pipelining (RFC 2920) and recipients per transaction.


def test_pipelining_sends_the_transaction_at_once(log: Transcript) -> None:
    server = Peer()  # its EHLO offers PIPELINING
    replies = send(server, outgoing(recipients=["a@x.test", "b@x.test"]), log)
    assert {r.code for r in replies.values()} == {250}
    # MAIL, both RCPTs and DATA reached the server in one write: none waited for a reply.
    assert [
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<a@x.test>",
        "RCPT TO:<b@x.test>",
        "DATA",
    ] in server.groups
    assert unstuff(server.data[0]) == MESSAGE


def test_long_pipelined_transaction_goes_in_window_sized_groups(log: Transcript) -> None:
    recipients = [f"{'r' * 90}{n:02}@example.com" for n in range(60)]  # some 6 KB of RCPT
    server = Peer()
    replies = send(server, outgoing(recipients=recipients), log)
    assert {r.code for r in replies.values()} == {250}
    mail_group, rest_group = (g for g in server.groups if len(g) > 1)
    assert mail_group[0].startswith("MAIL FROM:")
    assert rest_group[-1] == "DATA"
    assert mail_group[1:] + rest_group[:-1] == [f"RCPT TO:<{r}>" for r in recipients]
    assert len("\r\n".join(mail_group)) < 4096


def test_without_pipelining_each_command_waits_for_its_reply(log: Transcript) -> None:
    server = Peer(replies=NO_PIPELINING)
    send(server, outgoing(recipients=["a@x.test", "b@x.test"]), log)
    assert server.commands == [
        "EHLO client.test",
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<a@x.test>",
        "RCPT TO:<b@x.test>",
        "DATA",
        "QUIT",
    ]
    assert all(len(group) == 1 for group in server.groups), server.groups


def test_pipelined_replies_stay_with_their_recipients(log: Transcript) -> None:
    recipients = [
        "tempfail-carol@example.com",
        "bob@example.com",
        "reject-dave@example.com",
        "erin@example.com",
    ]
    server = aiosmtpd_like(pipelining=True)
    replies = send(server, outgoing(recipients=recipients), log)
    assert replies == {
        "tempfail-carol@example.com": Reply(
            451, "4.3.0", "Mailbox temporarily unavailable", host=HOST
        ),
        "bob@example.com": QUEUED,
        "reject-dave@example.com": Reply(550, "5.1.1", "No such user here", host=HOST),
        "erin@example.com": QUEUED,
    }
    [received] = server.messages
    assert received.rcpt_tos == ("bob@example.com", "erin@example.com")
    assert received.data == MESSAGE
    assert "pipelining MAIL, 4 RCPT and DATA (RFC 2920)" in log.text


def test_pipelined_data_is_refused_when_no_recipient_was_accepted(log: Transcript) -> None:
    recipients = ["reject-dave@example.com", "tempfail-carol@example.com"]
    server = aiosmtpd_like(pipelining=True)
    protocol = client()
    assert open_session(protocol, server, log) is None
    replies = deliver(protocol, server, outgoing(recipients=recipients), log)
    assert {(r.code, r.enhanced) for r in replies.values()} == {(550, "5.1.1"), (451, "4.3.0")}
    assert server.messages == []
    # The server refused the pipelined DATA (503); RSET ended the transaction, and the
    # connection is fit for the next message.
    assert "> RSET" in log.text.split("< 503")[1]
    [reply] = deliver(protocol, server, outgoing(), log).values()
    assert reply.code == 250
    assert server.commands.count("EHLO client.test") == 1  # one connection


def test_pipelined_data_accepted_without_recipients_gets_a_lone_dot(log: Transcript) -> None:
    server = Peer(replies={"RCPT": b"550 5.1.1 No such user\r\n"})
    protocol = client()
    assert open_session(protocol, server, log) is None
    [reply] = deliver(protocol, server, outgoing(), log).values()
    assert reply == Reply(550, "5.1.1", "No such user", host=HOST)
    # The raw server says 354 to DATA whatever came before; RFC 2920 §3.1: send a lone ".".
    assert server.data == [b".\r\n"]
    assert "SECRET-BODY-MARKER" not in log.text
    deliver(protocol, server, outgoing(), log)
    assert protocol.usable  # the same connection went on


def test_pipelined_mail_refusal_answers_everyone(log: Transcript) -> None:
    refused: dict[str, bytes | None] = {
        "MAIL": b"550 5.7.1 Sender blocked\r\n",
        "RCPT": b"503 5.5.1 Error: need MAIL command\r\n",
        "DATA": b"503 5.5.1 Error: need RCPT command\r\n",
    }
    server = Peer(replies=refused)
    replies = send(server, outgoing(recipients=["a@x.test", "b@x.test"]), log)
    assert set(replies.values()) == {Reply(550, "5.7.1", "Sender blocked", host=HOST)}
    assert server.data == []


@pytest.mark.parametrize("offer_pipelining", [False, True], ids=["lockstep", "pipelining"])
def test_recipients_beyond_the_limit_go_in_further_transactions(
    log: Transcript, offer_pipelining: bool
) -> None:
    recipients = [f"user{n:03}@example.com" for n in range(250)]
    server = aiosmtpd_like(pipelining=offer_pipelining)
    replies = send(
        server, outgoing(recipients=recipients), log, protocol=client(max_recipients=100)
    )
    assert set(replies.values()) == {Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    assert [len(m.rcpt_tos) for m in server.messages] == [100, 100, 50]
    assert [r for m in server.messages for r in m.rcpt_tos] == recipients
    assert all(m.data == MESSAGE for m in server.messages)
    assert server.commands.count("EHLO client.test") == 1  # one connection, three messages
    assert "> RSET" not in log.text  # a completed transaction needs none


@pytest.mark.parametrize("offer_pipelining", [False, True], ids=["lockstep", "pipelining"])
def test_too_many_recipients_go_in_the_next_transaction(
    log: Transcript, offer_pipelining: bool
) -> None:
    recipients = [f"user{n:02}@example.com" for n in range(70)]
    server = aiosmtpd_like(pipelining=offer_pipelining, recipient_limit=30)
    replies = send(server, outgoing(recipients=recipients), log)
    assert set(replies.values()) == {Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    # The first transaction tried all 70 and learnt the server takes 30; the next ones hold 30.
    assert [len(m.rcpt_tos) for m in server.messages] == [30, 30, 10]
    assert len(server.rcpt_tos) == 70 + 40
    assert server.commands.count("EHLO client.test") == 1
    assert "(RFC 5321 section 4.5.3.1.10)" in log.text


def test_too_many_recipients_without_progress_is_temporary(log: Transcript) -> None:
    server = aiosmtpd_like(rcpt_answers={"full": TOO_MANY_RECIPIENTS.encode() + b"\r\n"})
    recipients = ["bob@example.com", "full-carol@example.com"]
    replies = send(server, outgoing(recipients=recipients), log)
    assert replies == {
        "bob@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST),
        "full-carol@example.com": Reply(452, "4.5.3", "Too many recipients", host=HOST),
    }
    # Tried once more on its own in a second transaction, which took no recipient: no third.
    assert server.rcpt_tos == [
        "bob@example.com",
        "full-carol@example.com",
        "full-carol@example.com",
    ]
    assert [m.rcpt_tos for m in server.messages] == [("bob@example.com",)]


def test_refused_data_resets_before_the_next_transaction(log: Transcript) -> None:
    server = Peer(replies={**NO_PIPELINING, "DATA": b"451 4.3.0 Try again later\r\n"})
    answers = send(
        server,
        outgoing(recipients=["a@x.test", "b@x.test"]),
        log,
        protocol=client(max_recipients=1),
    )
    assert set(answers.values()) == {Reply(451, "4.3.0", "Try again later", host=HOST)}
    assert server.commands[1:] == [
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<a@x.test>",
        "DATA",
        "RSET",
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<b@x.test>",
        "DATA",
        "RSET",
        "QUIT",
    ]


@pytest.mark.parametrize("offer_pipelining", [False, True], ids=["lockstep", "pipelining"])
def test_421_answers_everyone_not_yet_answered_and_closes(
    log: Transcript, offer_pipelining: bool
) -> None:
    server = aiosmtpd_like(pipelining=offer_pipelining)
    recipients = ["bob@example.com", "reject-dave@example.com", "busy@example.com", "eve@x.test"]
    protocol = client()
    replies = send(server, outgoing(recipients=recipients), log, protocol=protocol)
    shutting_down = Reply(421, "4.3.2", "Shutting down", host=HOST)
    assert replies == {
        "bob@example.com": shutting_down,
        "reject-dave@example.com": Reply(550, "5.1.1", "No such user here", host=HOST),
        "busy@example.com": shutting_down,
        "eve@x.test": shutting_down,
    }
    # Pipelined, the server read the RCPT after the 421 before the client hung up.
    assert server.rcpt_tos[:3] == recipients[:3]
    assert server.messages == []
    # Nothing more is said on that connection, not even QUIT; the next one is new.
    assert not protocol.usable
    assert "QUIT" not in server.commands
    again = aiosmtpd_like(pipelining=offer_pipelining)
    assert send(again, outgoing(), log) == {"bob@example.com": QUEUED}


# A failed transaction on a connection: the next one starts with RSET.


def test_a_refused_end_of_data_resets_within_one_delivery(log: Transcript) -> None:
    server = Peer(replies={**NO_PIPELINING, ".": b"554 5.7.1 Rejected\r\n"})
    answers = send(
        server,
        outgoing(ASCII_MESSAGE, recipients=["a@x.test", "b@x.test"]),
        log,
        protocol=client(max_recipients=1),
    )
    assert set(answers.values()) == {Reply(554, "5.7.1", "Rejected", host=HOST)}
    assert server.commands[1:] == [
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<a@x.test>",
        "DATA",
        "RSET",
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<b@x.test>",
        "DATA",
        "QUIT",
    ]


def test_data_ended_without_recipients_is_followed_by_rset(log: Transcript) -> None:
    # Pipelined: every RCPT refused, DATA accepted anyway, ended with a lone "." (RFC 2920 §3.1).
    server = Peer(
        replies={"RCPT": b"550 5.1.1 No such user\r\n", ".": b"554 5.5.1 No valid recipients\r\n"}
    )
    protocol = client()
    assert open_session(protocol, server, log) is None
    deliver(protocol, server, outgoing(ASCII_MESSAGE), log)
    deliver(protocol, server, outgoing(ASCII_MESSAGE), log)
    protocol.quit(log)
    converse(protocol, server)
    verbs = [command.split(" ", 1)[0].split(":", 1)[0] for command in server.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]


def test_a_successful_transaction_still_needs_no_rset(log: Transcript) -> None:
    server = Peer(replies=NO_PIPELINING)
    protocol = client()
    assert open_session(protocol, server, log) is None
    deliver(protocol, server, outgoing(ASCII_MESSAGE), log)
    deliver(protocol, server, outgoing(ASCII_MESSAGE), log)
    assert "RSET" not in server.commands
    assert server.commands.count("MAIL FROM:<alice@example.net>") == 2


def test_a_refused_rset_ends_the_session(log: Transcript) -> None:
    server = Peer(replies={**NO_PIPELINING, "DATA": b"451 4.3.0 Later\r\n", "RSET": b"500 no\r\n"})
    protocol = client()
    answers = send(server, outgoing(recipients=["a@x.test"]), log, protocol=protocol)
    assert answers == {"a@x.test": Reply(451, "4.3.0", "Later", host=HOST)}
    assert not protocol.usable
    assert "refused RSET" in log.text


def test_smtp_sinks_ehlo_reply_is_read(log: Transcript) -> None:
    server = Peer(replies={"EHLO": SMTP_SINK_EHLO})
    answers = send(server, outgoing(ASCII_MESSAGE), log)
    assert answers == {"bob@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    # PIPELINING from the reply was taken: MAIL, RCPT and DATA in one write.
    assert ["MAIL FROM:<alice@example.net>", "RCPT TO:<bob@example.com>", "DATA"] in server.groups


# Hostile replies at each step of a session.

HOSTILE = [
    pytest.param("greeting", b"\r\n", id="greeting-empty"),
    pytest.param("greeting", b"\xff\xfe\xfd\r\n", id="greeting-not-utf8"),
    pytest.param("greeting", b"220-raw.test\r\n" * 500, id="greeting-never-ends"),
    pytest.param("EHLO", b"250-raw.test\r\n" + b"250-" + b"A" * 5000 + b"\r\n", id="ehlo-long"),
    pytest.param("EHLO", b"250-raw.test\r\n250-SIZE \xc2\xb2\r\n250 \r\n", id="ehlo-size"),
    pytest.param("EHLO", b"250-raw.test\r\n" * 300, id="ehlo-never-ends"),
    pytest.param("EHLO", b"250-raw.test\r\n\r\n250 OK\r\n", id="ehlo-empty-line"),
    pytest.param("MAIL", b"\r\n", id="mail-empty"),
    pytest.param("MAIL", b"2\r\n", id="mail-short-code"),
    pytest.param("MAIL", b"550 5.7.1 \xc0\xaf\x00 no\r\n", id="mail-not-utf8"),
    pytest.param("RCPT", b"250-" + b"\xff" * 3000 + b"\r\n", id="rcpt-long"),
    pytest.param("RCPT", b"250-ok\r\n" * 2000, id="rcpt-never-ends"),
    pytest.param("DATA", b"354-go\r\n354 \r\n", id="data-multiline"),
    pytest.param(".", b"250-\r\n250-\r\n251 x\r\n", id="end-mixed-codes"),
    pytest.param(".", b"\xef\xbb\xbf250 ok\r\n", id="end-bom"),
    pytest.param(".", b"250 2.0.0 " + "ünïcödé".encode() + b"\r\n", id="end-utf8"),
]


@pytest.mark.parametrize(("step", "reply"), HOSTILE)
def test_hostile_replies_end_as_replies_for_every_recipient(
    log: Transcript, step: str, reply: bytes
) -> None:
    recipients = ["a@x.test", "b@x.test"]
    greeting = reply if step == "greeting" else b"220 raw.test ESMTP\r\n"
    replies = {} if step == "greeting" else {step: reply}
    server = Peer(greeting=greeting, replies=replies)
    protocol = client()
    answers = send(server, outgoing(ASCII_MESSAGE, recipients=recipients), log, protocol=protocol)
    # The client still works, on this connection or a new one.
    if protocol.usable and protocol.state is State.READY:
        again = deliver(protocol, server, outgoing(ASCII_MESSAGE), log)
    else:
        again = send(Peer(greeting=greeting, replies=replies), outgoing(ASCII_MESSAGE), log)
    assert set(answers) == set(recipients)
    assert set(again) == {"bob@example.com"}
    for answer in answers.values():
        assert isinstance(answer, Reply)
        if answer.code >= 400:
            assert answer.host == HOST
    problems = [a for a in answers.values() if a.code // 100 == 4 and a.enhanced == "4.5.0"]
    for problem in problems:
        # The reason reaches the transcript.
        assert any(problem.text in line for line in log.lines)


# SMTPUTF8 for UTF-8 header fields (RFC 6531 §3.4, RFC 6532).


def test_utf8_headers_go_with_smtputf8(log: Transcript) -> None:
    server = aiosmtpd_like(smtputf8=True)
    answers = send(server, outgoing(UTF8_MESSAGE), log)
    assert answers == {"bob@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    [received] = server.messages
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received.mail_options)
    assert received.data == UTF8_MESSAGE


def test_utf8_headers_fail_for_good_without_smtputf8(log: Transcript) -> None:
    server = aiosmtpd_like(smtputf8=False)
    answers = send(server, outgoing(UTF8_MESSAGE, recipients=["a@x.test", "b@x.test"]), log)
    assert {(r.code, r.enhanced) for r in answers.values()} == {(554, "5.6.7")}
    [answer] = set(answers.values())
    assert "SMTPUTF8" in answer.text
    # Nothing was sent that the server could not take.
    assert not any(command.startswith("MAIL") for command in server.commands)
    assert any(re.search(r"not sent: 554 5\.6\.7", line) for line in log.lines)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"Subject: Gr\xfc\xdfe\r\n\r\nhi\r\n", id="latin-1-header"),
        pytest.param(b"Subject: hi\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n", id="utf8-body"),
    ],
)
def test_eight_bit_that_is_no_utf8_header_needs_no_smtputf8(log: Transcript, data: bytes) -> None:
    server = aiosmtpd_like(smtputf8=False)
    [answer] = send(server, outgoing(data), log).values()
    assert answer.code == 250
    [received] = server.messages
    assert "BODY=8BITMIME" in received.mail_options
    assert "SMTPUTF8" not in received.mail_options
    assert received.data == data


# STARTTLS and AUTH policy (the handshake itself needs a socket: test_smtp_tls.py).

NAME = "mx1.example.test"
USER = "relay-user"
PASSWORD = "s3cret-Pa55"  # noqa: S105 (a throwaway password)
CREDENTIALS = Credentials(USER, PASSWORD)
EHLO_STARTTLS = b"250-raw.test\r\n250 STARTTLS\r\n"
EHLO_AUTH = b"250-raw.test\r\n250 AUTH PLAIN LOGIN\r\n"
WHERE = f"{NAME}[{HOST}]:{TARGET.port}"


def secrets_in(text: str) -> list[str]:
    """Any form of the password that must never reach a transcript."""
    forms = [
        PASSWORD,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
    ]
    return [form for form in forms if form in text]


def test_opportunistic_without_starttls_is_plain_text(log: Transcript) -> None:
    server = aiosmtpd_like()
    protocol = client(tls=TlsPolicy.OPPORTUNISTIC, name=NAME)
    [reply] = send(server, outgoing(), log, protocol=protocol).values()
    assert reply == QUEUED
    assert not server.tls_started
    assert "STARTTLS not offered; continuing in plain text (opportunistic)" in log.text
    assert "> STARTTLS" not in log.text


@pytest.mark.parametrize("tls", [TlsPolicy.ENCRYPT, TlsPolicy.REQUIRED])
def test_required_tls_without_starttls_is_temporary_and_sends_nothing(
    log: Transcript, tls: TlsPolicy
) -> None:
    server = aiosmtpd_like()
    protocol = client(tls=tls, name=NAME)
    replies = send(server, outgoing(recipients=["a@x.test", "b@x.test"]), log, protocol=protocol)
    expected = Reply(
        451,
        "4.7.4",
        f"TLS is required ({tls.value}), but {WHERE} does not offer STARTTLS",
        host=HOST,
    )
    assert replies == {"a@x.test": expected, "b@x.test": expected}
    assert not any(command.startswith("MAIL") for command in server.commands)
    assert "> QUIT" in log.text


@pytest.mark.parametrize(
    ("tls", "delivered"),
    [(TlsPolicy.OPPORTUNISTIC, True), (TlsPolicy.ENCRYPT, False)],
)
def test_refused_starttls(log: Transcript, tls: TlsPolicy, delivered: bool) -> None:
    server = Peer(replies={"EHLO": EHLO_STARTTLS, "STARTTLS": b"454 4.7.0 TLS not available\r\n"})
    protocol = client(tls=tls, name=NAME)
    [reply] = send(server, outgoing(), log, protocol=protocol).values()
    if delivered:
        # RFC 3207 §4: the same connection goes on in plain text.
        assert reply.code == 250
        assert server.commands.count("EHLO client.test") == 1
        assert "STARTTLS refused; continuing in plain text" in log.text
    else:
        assert (reply.code, reply.enhanced) == (451, "4.7.4")
        assert "refused STARTTLS: 454 4.7.0 TLS not available" in reply.text
        assert not any(c.startswith("MAIL") for c in server.commands)


def test_after_starttls_ehlo_again_and_plain_text_leftovers_are_dropped(log: Transcript) -> None:
    # A 220 with a forged reply after it in the same packet (RFC 3207 §4.2: never trusted).
    server = Peer(
        replies={
            "EHLO": b"250-raw.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
            "STARTTLS": b"220 2.0.0 Ready\r\n250 forged\r\n",
        }
    )
    protocol = client(tls=TlsPolicy.ENCRYPT, name=NAME)
    [reply] = send(server, outgoing(), log, protocol=protocol).values()
    assert reply == QUEUED
    assert protocol.encrypted
    assert server.commands[:3] == ["EHLO client.test", "STARTTLS", "EHLO client.test"]
    text = log.text
    assert "discarded 12 octets sent in plain text after the 220 to STARTTLS" in text
    assert f"{HANDSHAKE} (encrypt policy)" in text
    assert text.index("TLS started") < text.rindex("> EHLO") < text.index("> MAIL")


def test_no_auth_in_the_clear(log: Transcript) -> None:
    # Offers AUTH but no STARTTLS; the opportunistic policy cannot get TLS.
    server = Peer(replies={"EHLO": EHLO_AUTH})
    protocol = client(tls=TlsPolicy.OPPORTUNISTIC, credentials=CREDENTIALS, name=NAME)
    [reply] = send(server, outgoing(), log, protocol=protocol).values()
    assert reply == Reply(
        451,
        "4.7.10",
        f"will not authenticate to {WHERE} as {USER} in the clear: the connection has no TLS",
        host=HOST,
    )
    assert server.commands == ["EHLO client.test", "QUIT"]
    assert secrets_in(log.text) == []


EHLO_TLS_AUTH = b"250-raw.test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"


@pytest.mark.parametrize("mechanisms", [("PLAIN", "LOGIN"), ("LOGIN",)], ids=["plain", "login"])
def test_auth_after_starttls_keeps_the_password_out_of_the_transcript(
    log: Transcript, mechanisms: tuple[str, ...]
) -> None:
    ehlo = b"250-raw.test\r\n250-STARTTLS\r\n250 AUTH " + " ".join(mechanisms).encode() + b"\r\n"
    server = Peer(
        replies={
            "EHLO": ehlo,
            "STARTTLS": b"220 2.0.0 Ready\r\n",
            "AUTH": lambda line: (
                b"235 2.7.0 Authentication successful\r\n"
                if line.startswith("AUTH PLAIN")
                else b"334 VXNlcm5hbWU6\r\n"
            ),
            base64.b64encode(USER.encode()).decode().upper(): b"334 UGFzc3dvcmQ6\r\n",
            base64.b64encode(PASSWORD.encode()).decode().upper(): b"235 2.7.0 Ok\r\n",
        }
    )
    protocol = client(tls=TlsPolicy.ENCRYPT, credentials=CREDENTIALS, name=NAME)
    [reply] = send(server, outgoing(), log, protocol=protocol).values()
    assert reply == QUEUED
    mechanism = mechanisms[0]  # PLAIN when offered
    text = log.text
    if mechanism == "PLAIN":
        assert "> AUTH PLAIN <redacted>" in text
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        assert f"AUTH PLAIN {token}" in server.commands  # the server did get it
    else:
        assert "> AUTH LOGIN" in text
        assert "> <password redacted>" in text
    assert f"* authenticated as {USER} ({mechanism})" in text
    assert text.index("> STARTTLS") < text.index("> AUTH") < text.index("> MAIL")
    assert secrets_in(text) == []


def test_wrong_password_is_temporary_and_sends_nothing(log: Transcript) -> None:
    server = Peer(
        replies={
            "EHLO": EHLO_TLS_AUTH,
            "STARTTLS": b"220 2.0.0 Ready\r\n",
            "AUTH": b"535 5.7.8 Authentication credentials invalid\r\n",
        }
    )
    wrong = Credentials(USER, "not-" + PASSWORD)
    protocol = client(tls=TlsPolicy.ENCRYPT, credentials=wrong, name=NAME)
    replies = send(server, outgoing(recipients=["a@x.test", "b@x.test"]), log, protocol=protocol)
    expected = Reply(
        451,
        "4.7.8",
        f"{WHERE} refused AUTH PLAIN as {USER}: 535 5.7.8 Authentication credentials invalid",
        host=HOST,
    )
    assert replies == {"a@x.test": expected, "b@x.test": expected}
    token = base64.b64encode(f"\0{USER}\0not-{PASSWORD}".encode()).decode()
    assert [c for c in server.commands if c.startswith("AUTH")] == [f"AUTH PLAIN {token}"]
    assert not any(command.startswith("MAIL") for command in server.commands)
    assert "not-" + PASSWORD not in log.text
    assert "> QUIT" in log.text.split("< 535")[1]  # the session ends politely


def test_no_usable_auth_mechanism_is_temporary(log: Transcript) -> None:
    server = Peer(
        replies={
            "EHLO": b"250-raw.test\r\n250-STARTTLS\r\n250 AUTH CRAM-MD5\r\n",
            "STARTTLS": b"220 2.0.0 Ready\r\n",
        }
    )
    protocol = client(tls=TlsPolicy.ENCRYPT, credentials=CREDENTIALS, name=NAME)
    [reply] = send(server, outgoing(), log, protocol=protocol).values()
    assert (reply.code, reply.enhanced) == (451, "4.7.4")
    assert "offers no AUTH mechanism spoolmail speaks (PLAIN, LOGIN)" in reply.text
    assert "it offers: CRAM-MD5" in reply.text
    assert not any(command.startswith("MAIL") for command in server.commands)
