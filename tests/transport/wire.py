"""SMTP on bytes alone: a scripted server and a driver for the sans-IO client protocol.

:class:`Peer` is :class:`tests.smtpservers.RawServer` without a socket: it answers each command
by its verb with exactly the bytes a test gives (``None``: hang up), reads DATA up to
``CRLF.CRLF``, and records ``commands``, ``groups`` (the lines that came in one write: a
pipelining client sends several at once) and the wire bytes of each message (``data``). Like
aiosmtpd's handler in ``tests/smtpservers.py`` it can also answer RCPT by the recipient's local
part (``tempfail`` 451, ``reject`` 550, ``busy`` 421), limit the recipients of a transaction
(452 4.5.3), and refuse DATA when no RCPT was accepted (503); ``messages`` holds what it took.
:func:`converse` drives a :class:`~spoolmail._transport.protocol.ClientProtocol` goal against
it as the socket session would, and :func:`send` runs a whole delivery on one connection, as
``SmtpTransport.send`` does: no socket, no thread, no clock.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Credentials, Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import data_blocks, examine
from spoolmail._transport.protocol import (
    ClientProtocol,
    Done,
    Ended,
    NeedData,
    Send,
    SendMessage,
    StartTls,
)
from tests.smtpservers import DEFAULT_RAW_REPLIES, SHORT, TOO_MANY_RECIPIENTS

HOST = "127.0.0.1"
TARGET = Target(HOST, 2525, literal=True)
END_OF_DATA = b"\r\n.\r\n"
RCPT_ANSWERS: Mapping[str, bytes] = {
    "tempfail": b"451 4.3.0 Mailbox temporarily unavailable\r\n",
    "reject": b"550 5.1.1 No such user here\r\n",
    "busy": b"421 4.3.2 Shutting down\r\n",
}
# aiosmtpd's EHLO reply, with and without the extensions a test asks for.
AIOSMTPD_EHLO = b"250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"

HANDSHAKE = "TLS started: TLSv1.3, TEST_CIPHER (256 bits); certificate not verified"

Answer = bytes | None | Callable[[str], bytes | None]


def unstuff(wire: bytes) -> bytes:
    """What a server makes of DATA bytes (RFC 5321 §4.5.2): the message, terminator removed."""
    assert wire == b".\r\n" or wire.endswith(b"\r\n.\r\n")
    lines = wire[:-3].split(b"\r\n")[:-1] if wire != b".\r\n" else []
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in lines)


@attrs.frozen
class Taken:
    """One message the peer accepted: MAIL's line, the accepted recipients, the message."""

    mail: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    @property
    def mail_options(self) -> tuple[str, ...]:
        return tuple(self.mail.partition(">")[2].split())


class Peer:
    """A scripted SMTP server on bytes (see the module docstring)."""

    def __init__(
        self,
        *,
        greeting: bytes | None = b"220 raw.test ESMTP\r\n",
        replies: Mapping[str, Answer] | None = None,
        hang_up_after: Collection[str] = (),
        rcpt_answers: Mapping[str, bytes] | None = None,
        recipient_limit: int | None = None,
        need_rcpt: bool = False,
    ) -> None:
        self.replies: dict[str, Answer] = {**DEFAULT_RAW_REPLIES, **(replies or {})}
        self.hang_up_after = frozenset(verb.upper() for verb in hang_up_after)
        self.rcpt_answers = dict(rcpt_answers or {})
        self.recipient_limit = recipient_limit
        self.need_rcpt = need_rcpt
        self.commands: list[str] = []
        self.groups: list[list[str]] = []
        self.data: list[bytes] = []
        self.messages: list[Taken] = []
        self.rcpt_tos: list[str] = []
        self.tls_started = False
        self.closed = greeting is None
        self._out = bytearray(greeting or b"")
        self._in = bytearray()
        self._in_data: bytearray | None = None
        self._mail: str | None = None
        self._accepted: list[str] = []

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive(self, data: bytes) -> None:
        """One write from the client."""
        assert not self.closed, "the client wrote to a closed connection"
        group: list[str] = []
        self._in += data
        while not self.closed:
            if self._in_data is not None:
                if not self._take_data():
                    break
                continue
            end = self._in.find(b"\n")
            if end < 0:
                break
            line = bytes(self._in[: end + 1]).rstrip(b"\r\n").decode("utf-8", "replace")
            del self._in[: end + 1]
            self.commands.append(line)
            if not group:
                self.groups.append(group)
            group.append(line)
            self._answer(line)

    def _take_data(self) -> bool:
        assert self._in_data is not None
        window = b"\r\n" + self._in_data + self._in
        end = window.find(END_OF_DATA)
        if end < 0:
            self._in_data += self._in
            self._in.clear()
            return False
        body = window[2 : end + len(END_OF_DATA)]
        self._in = bytearray(window[end + len(END_OF_DATA) :])
        self._in_data = None
        self.data.append(bytes(body))
        reply = self._reply(".", ".")
        if reply is not None and reply.startswith(b"2") and self._mail is not None:
            self.messages.append(Taken(self._mail, tuple(self._accepted), unstuff(body)))
        self._end_transaction()
        return True

    def _end_transaction(self) -> None:
        self._mail = None
        self._accepted = []

    def _reply(self, verb: str, line: str) -> bytes | None:
        answer = self.replies.get(verb, b"502 5.5.2 Command not recognized\r\n")
        reply = answer(line) if callable(answer) else answer
        if reply is None:
            self.closed = True
            return None
        self._out += reply
        return reply

    def _answer(self, line: str) -> None:
        verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
        if verb == "RCPT":
            reply = self._rcpt(line)
        elif verb == "DATA" and self.need_rcpt and not self._accepted:
            reply = b"503 5.5.1 Error: need RCPT command\r\n"
            self._out += reply
        else:
            reply = self._reply(verb, line)
        if reply is None:
            return
        if verb == "MAIL" and reply.startswith(b"2"):
            self._mail, self._accepted = line, []
        elif verb == "RSET":
            self._end_transaction()
        elif verb == "STARTTLS" and reply.startswith(b"220"):
            self.tls_started = True
        if verb == "QUIT" or verb in self.hang_up_after:
            self.closed = True
        elif verb == "DATA" and reply.startswith(b"354"):
            self._in_data = bytearray()

    def _rcpt(self, line: str) -> bytes | None:
        address = line.partition("<")[2].rpartition(">")[0]
        self.rcpt_tos.append(address)
        local = address.rpartition("@")[0].lower()
        for prefix, answer in self.rcpt_answers.items():
            if local.startswith(prefix):
                self._out += answer
                return answer
        if self.recipient_limit is not None and len(self._accepted) >= self.recipient_limit:
            reply = TOO_MANY_RECIPIENTS.encode() + b"\r\n"
            self._out += reply
            return reply
        reply = self._reply("RCPT", line)
        if reply is not None and reply.startswith(b"2") and self._mail is not None:
            self._accepted.append(address)
        return reply


def aiosmtpd_like(
    *,
    pipelining: bool = False,
    smtputf8: bool = False,
    size: int = 33_554_432,
    mail_reply: bytes | None = None,
    data_reply: bytes | None = None,
    rcpt_answers: Mapping[str, bytes] = RCPT_ANSWERS,
    recipient_limit: int | None = None,
) -> Peer:
    """A peer that answers as ``tests.smtpservers.smtp_server`` does."""
    ehlo = b"250-mx.test\r\n" + f"250-SIZE {size}\r\n".encode() + b"250-8BITMIME\r\n"
    if smtputf8:
        ehlo += b"250-SMTPUTF8\r\n"
    if pipelining:
        ehlo += b"250-PIPELINING\r\n"
    ehlo += b"250 HELP\r\n"
    replies: dict[str, Answer] = {"EHLO": ehlo}
    if mail_reply is not None:
        replies["MAIL"] = mail_reply
    if data_reply is not None:
        replies["."] = data_reply
    return Peer(
        greeting=b"220 mx.test ESMTP\r\n",
        replies=replies,
        rcpt_answers=rcpt_answers,
        recipient_limit=recipient_limit,
        need_rcpt=True,
    )


def transcript() -> Transcript:
    return Transcript(clock=lambda: datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC))


@attrs.define
class Lost:
    """The peer hung up (or never spoke) while the client waited for ``awaiting``."""

    awaiting: str


def converse(
    protocol: ClientProtocol,
    peer: Peer,
    *,
    message: Outgoing | None = None,
    handshake: str | None = HANDSHAKE,
) -> Done | Ended | Lost:
    """Run the protocol's current goal against ``peer`` as the socket session does.
    ``handshake``: the description a successful TLS handshake gives (``None``: it fails)."""
    while True:
        event = protocol.next_event()
        if isinstance(event, Send):
            peer.receive(event.data)
        elif isinstance(event, NeedData):
            data = peer.take_output()
            if not data:
                protocol.close()
                return Lost(event.awaiting)
            protocol.receive_data(data)
        elif isinstance(event, StartTls):
            if handshake is None:
                protocol.close()
                return Lost("TLS handshake")
            protocol.tls_started(handshake)
        elif isinstance(event, SendMessage):
            assert message is not None
            sent = 0
            with message.open() as source:
                # As the session does: a writer that made the lines CRLF is trusted.
                for block in data_blocks(source, crlf=message.dot_lines is not None):
                    peer.receive(block)
                    sent += len(block)
            protocol.message_sent(sent)
        else:
            return event


def outgoing(
    data: bytes,
    *,
    sender: str = "alice@example.net",
    recipients: Sequence[str] = ("bob@example.com",),
    eight_bit: bool | None = None,
) -> Outgoing:
    return Outgoing(
        id="test",
        sender=sender,
        recipients=recipients,
        size=len(data),
        open=lambda: io.BytesIO(data),
        eight_bit=eight_bit,
    )


def client(
    *,
    tls: TlsPolicy = TlsPolicy.NEVER,
    credentials: Credentials | None = None,
    max_recipients: int = 100,
    name: str | None = None,
) -> ClientProtocol:
    target = attrs.evolve(TARGET, tls=tls, credentials=credentials, name=name, literal=not name)
    return ClientProtocol(
        target=target,
        helo_name="client.test",
        timeouts=SHORT,
        tls=tls,
        max_recipients=max_recipients,
    )


def lost_reply(protocol: ClientProtocol, lost: Lost) -> Reply:
    # What the socket session says when the peer closes instead of answering (4.4.2).
    return Reply(
        451,
        "4.4.2",
        f"{HOST}:{TARGET.port} closed the connection instead of the {lost.awaiting}",
        host=protocol.target.host,
    )


def open_session(
    protocol: ClientProtocol,
    peer: Peer,
    log: Transcript,
    *,
    handshake: str | None = HANDSHAKE,
) -> Reply | None:
    """Open the session; the reply that ended it, if it did (then QUIT when still possible)."""
    protocol.open(log)
    outcome = converse(protocol, peer, handshake=handshake)
    if isinstance(outcome, Done):
        return None
    reply = outcome.reply if isinstance(outcome, Ended) else lost_reply(protocol, outcome)
    log.note(f"session ended: {reply}")
    if protocol.usable:
        protocol.quit(log)
        converse(protocol, peer)
    return reply


def deliver(
    protocol: ClientProtocol, peer: Peer, message: Outgoing, log: Transcript
) -> dict[str, Reply]:
    """One message on an open session, as ``SmtpTransport.send`` does after connecting."""
    recipients = tuple(dict.fromkeys(message.recipients))
    answers: dict[str, Reply] = {}
    content = examine(message, eight_bit_matters=protocol.extensions.eight_bit_mime)
    protocol.deliver(message, recipients, content=content, answers=answers, transcript=log)
    outcome = converse(protocol, peer, message=message)
    if not isinstance(outcome, Done):
        reply = outcome.reply if isinstance(outcome, Ended) else lost_reply(protocol, outcome)
        log.note(f"session ended: {reply}")
        for recipient in recipients:
            answers.setdefault(recipient, reply)
    return {recipient: answers[recipient] for recipient in recipients}


def send(
    peer: Peer,
    message: Outgoing,
    log: Transcript,
    *,
    protocol: ClientProtocol | None = None,
    quit_after: bool = True,
    handshake: str | None = HANDSHAKE,
) -> dict[str, Reply]:
    """A whole delivery on one connection: open, deliver, QUIT (``quit_after``)."""
    protocol = protocol or client()
    ended = open_session(protocol, peer, log, handshake=handshake)
    if ended is not None:
        return dict.fromkeys(dict.fromkeys(message.recipients), ended)
    answers = deliver(protocol, peer, message, log)
    if quit_after and protocol.usable:
        protocol.quit(log)
        converse(protocol, peer)
    return answers
