"""The SMTP transport against real servers on 127.0.0.1: what needs a socket.

Connection reuse and its RSET probe (also after a failed transaction, RFC 5321 §4.1.1.5), kept
connections that die or age, QUIT on close, refused ports, stalled and garbage greetings, broken
replies and dropped connections, streaming in constant memory, and what the transcript of a real
session holds.
Servers come from ``tests/smtpservers.py``: aiosmtpd for well-behaved peers, raw sockets for
misbehaving ones. Waits are configured short (``SHORT``; 0.3 s where a test waits for a timeout
on purpose), so no test sleeps through a real SMTP timeout. What the client says and what each
reply means, on bytes alone, is in ``test_transactions.py`` and ``test_protocol.py``; reply
reading, DATA encoding and the pure decisions in ``test_replies.py``, ``test_data.py`` and
``test_policy.py``; STARTTLS and AUTH with real TLS in ``test_smtp_tls.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

import attrs
import pytest

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import INLINE
from spoolmail._transport.smtp import (
    SmtpTimeouts,
    SmtpTransport,
)
from spoolmail.exceptions import ConfigurationError
from tests.smtpservers import (
    SHORT,
    dropping_server,
    garbage_server,
    raw_server,
    smtp_server,
    stalling_server,
)

integration = pytest.mark.integration

HOST = "127.0.0.1"
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


# The raw server's EHLO reply without PIPELINING: the client must wait for each reply.
NO_PIPELINING: dict[str, bytes | None] = {
    "EHLO": b"250-raw.test greets you\r\n250 8BITMIME\r\n",
}


def outgoing(
    data: bytes = MESSAGE,
    *,
    sender: str = "alice@example.net",
    recipients: Sequence[str] = ("bob@example.com",),
) -> Outgoing:
    return Outgoing(
        id="test",
        sender=sender,
        recipients=recipients,
        size=len(data),
        open=lambda: io.BytesIO(data),
    )


def stored(tmp_path: Path, data: bytes) -> Outgoing:
    """A message stored as intake stores it: a file of CRLF lines, none starting with "."."""
    path = tmp_path / "ID.eml"
    path.write_bytes(data)
    return attrs.evolve(outgoing(data), open=lambda: path.open("rb"), dot_lines=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# Settings.


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="connect"):
        SmtpTimeouts(connect=0)
    with pytest.raises(ConfigurationError, match="helo_name"):
        SmtpTransport(helo_name="client.test\r\nMAIL FROM:<x>")
    for wrong in (0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="max_recipients"):
            SmtpTransport(helo_name="client.test", max_recipients=wrong)  # type: ignore[arg-type]
    assert SmtpTimeouts().data_end == 600.0
    assert SmtpTimeouts().starttls == 300.0
    # A wait poll() and the socket cannot take (it failed every delivery with a traceback).
    for huge in (1e300, float("inf"), 7 * 86400 + 1):
        with pytest.raises(ConfigurationError, match=r"data_end must be 604800 s \(7 days\)"):
            SmtpTimeouts(data_end=huge)
        with pytest.raises(ConfigurationError, match="idle must be 604800 s"):
            SmtpTimeouts(idle=huge)
    with pytest.raises(ConfigurationError, match="rcpt must be above 0 s, not nan"):
        SmtpTimeouts(rcpt=float("nan"))
    assert SmtpTimeouts(connect="7", idle=0).connect == 7.0  # type: ignore[arg-type]
    assert SmtpTimeouts(data_end=7 * 86400).data_end == 604800.0


def test_no_recipients_means_no_connection(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    # Port 9 (discard) on 127.0.0.1: any connection attempt would leave lines in the transcript.
    target = Target(HOST, 9, literal=True)
    assert transport.send(target, outgoing(recipients=()), transcript) == {}
    assert transcript.lines == []


# What the stored file is read for.


@integration
def test_what_the_envelope_knows_of_8bit_is_not_read_again(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    reads: list[str] = []

    def opened(data: bytes) -> io.BytesIO:
        reads.append("opened")
        return io.BytesIO(data)

    message = attrs.evolve(outgoing(), open=lambda: opened(MESSAGE), eight_bit=True)
    unknown = attrs.evolve(outgoing(), open=lambda: opened(MESSAGE))
    with smtp_server() as server:
        transport.send(server.target, message, transcript)
        # The hint decided BODY=8BITMIME; only the header section is read before the send, for
        # UTF-8 header fields (SMTPUTF8).
        assert reads == ["opened"] * 2
        transport.send(server.target, unknown, transcript)
        assert reads == ["opened"] * 4  # one pass for 8-bit octets and headers, then the send
        ascii_only = attrs.evolve(outgoing(), open=lambda: opened(MESSAGE), eight_bit=False)
        transport.send(server.target, ascii_only, transcript)
        assert reads == ["opened"] * 5  # all ASCII, as intake found: nothing to look for
    first, second, third = server.messages
    assert "BODY=8BITMIME" in first.mail_options
    assert "BODY=8BITMIME" not in second.mail_options
    assert "BODY=8BITMIME" not in third.mail_options


# Connection reuse.


@integration
def test_one_connection_carries_several_messages(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    with smtp_server() as server:
        for _ in range(3):
            [reply] = transport.send(server.target, outgoing(), transcript).values()
            assert reply.code == 250
        assert server.connections == 1
        assert len(server.messages) == 3
        # Used moments ago: MAIL follows at once, no RSET probe (RFC 5321 section 4.1.4).
        assert sum(line.endswith("> RSET") for line in transcript.lines) == 0
        assert transport.connection_counts() == (1, 2)  # opened once, kept twice


def test_a_connection_idle_for_a_while_is_probed_with_rset(transcript: Transcript) -> None:
    now = [100.0]
    with (
        SmtpTransport(
            helo_name="client.test", timeouts=SHORT, monotonic=lambda: now[0]
        ) as transport,
        smtp_server() as server,
    ):
        transport.send(server.target, outgoing(), transcript)
        now[0] += 5  # idle longer than a moment, shorter than the idle timeout
        [reply] = transport.send(server.target, outgoing(), transcript).values()
        assert reply.code == 250
        assert server.connections == 1
        assert transport.connection_counts() == (1, 1)  # the probed one counts as kept
    assert sum(line.endswith("> RSET") for line in transcript.lines) == 1


def test_parallel_senders_keep_their_connections(transcript: Transcript) -> None:
    with (
        SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport,
        smtp_server() as server,
    ):
        barrier = threading.Barrier(3)

        def send_two() -> None:
            barrier.wait()
            for _ in range(2):
                transport.send(server.target, outgoing(), Transcript(clock=transcript.clock))

        threads = [threading.Thread(target=send_two) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(server.messages) == 6
        # Each thread's connection was kept for its second message: no more than 3 were opened.
        assert server.connections <= 3


@integration
def test_dead_kept_connection_is_replaced(transport: SmtpTransport, transcript: Transcript) -> None:
    with smtp_server() as server:
        transport.send(server.target, outgoing(), transcript)
        server.drop_connections()
        [reply] = transport.send(server.target, outgoing(), transcript).values()
        assert reply == Reply(250, "2.0.0", "Ok: queued", host=HOST)
        assert server.connections == 2
        assert len(server.messages) == 2
    assert any("connecting again" in line for line in transcript.lines)


@integration
def test_max_messages_per_connection_closes_a_kept_connection(transcript: Transcript) -> None:
    with (
        SmtpTransport(
            helo_name="client.test", timeouts=SHORT, max_messages_per_connection=2
        ) as transport,
        smtp_server() as server,
    ):
        for _ in range(5):
            [reply] = transport.send(server.target, outgoing(), transcript).values()
            assert reply.code == 250
        assert [m.connection for m in server.messages] == [1, 1, 2, 2, 3]
    assert sum("as many as one may carry" in line for line in transcript.lines) == 2


@integration
def test_a_kept_connection_the_server_closes_with_421_is_replaced_at_once(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    """No limit of our own (the default): a server's own cap costs a new connection, not a
    deferred message."""
    with smtp_server(connection_cap=2) as server:
        for _ in range(5):
            [reply] = transport.send(server.target, outgoing(), transcript).values()
            assert reply.code == 250
        assert [m.connection for m in server.messages] == [1, 1, 2, 2, 3]
        assert transport.connection_counts() == (3, 4)
    notes = [line for line in transcript.lines if "connecting again" in line]
    assert len(notes) == 2
    assert "the reused connection was closed (421 4.7.0 Too many messages, closing)" in notes[0]


@integration
def test_a_421_on_a_new_connection_stands(transcript: Transcript) -> None:
    """Replaced once: when the new connection says 421 too, the message waits for its retry."""
    with (
        SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport,
        smtp_server(server_cap=1) as server,
    ):
        [first] = transport.send(server.target, outgoing(), transcript).values()
        assert first.code == 250
        [second] = transport.send(server.target, outgoing(), transcript).values()
        assert second == Reply(421, "4.7.0", "Too many messages, closing", host=HOST)
        assert len(server.messages) == 1
        assert len(server.handler.mail_froms) == 3  # the kept connection, then one new one
        [third] = transport.send(server.target, outgoing(), transcript).values()
        assert third.code == 421
        assert len(server.handler.mail_froms) == 4  # a new connection: not tried twice


@integration
@pytest.mark.parametrize("pipelining", [False, True])
def test_a_421_before_a_later_transaction_of_one_delivery_is_met_with_a_new_connection(
    transcript: Transcript, pipelining: bool
) -> None:
    """Five recipients in transactions of two, to a server taking one message a connection:
    each 421 at the next MAIL costs a new connection, not the rest of the recipients (they
    were deferred, and the destination throttled as if it had asked to slow down)."""
    recipients = [f"rcpt{n}@example.org" for n in range(5)]
    with (
        SmtpTransport(helo_name="client.test", timeouts=SHORT, max_recipients=2) as transport,
        smtp_server(connection_cap=1, offer_pipelining=pipelining) as server,
    ):
        replies = transport.send(server.target, outgoing(recipients=recipients), transcript)
        assert {r.code for r in replies.values()} == {250}
        assert [m.connection for m in server.messages] == [1, 2, 3]
        assert [m.rcpt_tos for m in server.messages] == [
            tuple(recipients[0:2]),
            tuple(recipients[2:4]),
            tuple(recipients[4:]),
        ]
    notes = [line for line in transcript.lines if "connecting again" in line]
    assert len(notes) == 2
    assert "closed before the next transaction (421 4.7.0" in notes[0]


@integration
def test_a_421_on_every_new_connection_stops_the_reconnecting(transcript: Transcript) -> None:
    """A new connection that takes nothing ends it: the rest keep the 421 for the retry."""
    recipients = [f"rcpt{n}@example.org" for n in range(5)]
    with (
        SmtpTransport(helo_name="client.test", timeouts=SHORT, max_recipients=2) as transport,
        smtp_server(server_cap=1) as server,
    ):
        replies = transport.send(server.target, outgoing(recipients=recipients), transcript)
        assert [replies[r].code for r in recipients] == [250, 250, 421, 421, 421]
        assert len(server.messages) == 1
        assert len(server.handler.mail_froms) == 3  # the first connection's two, one new one


@integration
def test_idle_connection_is_closed_on_the_next_call(transcript: Transcript) -> None:
    now = [1000.0]
    with (
        raw_server() as server,
        SmtpTransport(
            helo_name="client.test",
            timeouts=attrs.evolve(SHORT, idle=30),
            monotonic=lambda: now[0],
        ) as transport,
    ):
        transport.send(server.target, outgoing(), transcript)
        now[0] += 29
        transport.send(server.target, outgoing(), transcript)
        assert server.connections == 1
        now[0] += 31
        transport.send(server.target, outgoing(), transcript)
        assert server.connections == 2
        assert server.commands.count("QUIT") == 1


@integration
def test_close_quits_and_can_be_called_twice(transcript: Transcript) -> None:
    with raw_server() as server:
        transport = SmtpTransport(helo_name="client.test", timeouts=SHORT)
        transport.send(server.target, outgoing(), transcript)
        transport.close()
        assert server.commands[-1] == "QUIT"
        transport.close()
        [reply] = transport.send(server.target, outgoing(), transcript).values()
        assert reply.code == 250
        assert server.connections == 2
        transport.close()


# Servers that fail or misbehave.


@integration
def test_closed_port_is_temporary_for_everyone(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    port = free_port()
    replies = transport.send(
        Target(HOST, port, literal=True), outgoing(recipients=["a@x.test", "b@x.test"]), transcript
    )
    expected = Reply(
        451, "4.4.1", f"connection to {HOST}:{port} failed: Connection refused", host=HOST
    )
    assert replies == {"a@x.test": expected, "b@x.test": expected}


@integration
def test_stalled_greeting_is_temporary_within_the_timeout(transcript: Transcript) -> None:
    timeouts = attrs.evolve(SHORT, greeting=0.3)
    with stalling_server() as server, SmtpTransport(helo_name="c.test", timeouts=timeouts) as t:
        started = time.monotonic()
        [reply] = t.send(server.target, outgoing(), transcript).values()
        elapsed = time.monotonic() - started
    assert reply == Reply(
        451, "4.4.2", f"{HOST}:{server.port} sent no greeting within 0.3 s", host=HOST
    )
    assert 0.25 < elapsed < 3


class _SlowPeer:
    """A peer on 127.0.0.1 that misbehaves in time rather than in words: ``trickle`` sends its
    greeting one octet every 50 ms and never ends the line; ``no_reading`` goes along until its
    354 to DATA, then reads nothing more (its receive buffer kept small, so the client's send
    fills it). Each has one connection, served on a thread until the peer is closed."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._listener.bind((HOST, 0))
        self._listener.listen(1)
        self.port = int(self._listener.getsockname()[1])
        self.target = Target(HOST, self.port, literal=True)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn, contextlib.suppress(OSError):
            if self.behaviour == "trickle":
                for octet in b"220 slow.test ESMTP, one octet at a time":
                    if self._done.wait(0.05):
                        return
                    conn.sendall(bytes([octet]))
                self._done.wait()
                return
            conn.sendall(b"220 slow.test ESMTP\r\n")
            answers = {b"EHLO": b"250 slow.test\r\n", b"MAIL": b"250 ok\r\n"}
            answers |= {b"RCPT": b"250 ok\r\n", b"DATA": b"354 go on\r\n"}
            pending = b""
            while not self._done.is_set():
                pending += conn.recv(4096)
                while b"\r\n" in pending:
                    line, pending = pending.split(b"\r\n", 1)
                    verb = line[:4].upper()
                    conn.sendall(answers.get(verb, b"250 ok\r\n"))
                    if verb == b"DATA":
                        self._done.wait()  # and never read the message
                        return

    def close(self) -> None:
        self._done.set()
        self._listener.close()
        self._thread.join(timeout=5)


@integration
def test_a_trickled_greeting_must_be_whole_within_its_timeout(transcript: Transcript) -> None:
    """RFC 5321 section 4.5.3.2: the deadline covers the whole reply; octets arriving now and
    then do not stretch it."""
    peer = _SlowPeer("trickle")
    timeouts = attrs.evolve(SHORT, greeting=0.3)
    try:
        with SmtpTransport(helo_name="c.test", timeouts=timeouts) as transport:
            started = time.monotonic()
            [reply] = transport.send(peer.target, outgoing(), transcript).values()
            elapsed = time.monotonic() - started
    finally:
        peer.close()
    assert reply == Reply(
        451, "4.4.2", f"{HOST}:{peer.port} sent no greeting within 0.3 s", host=HOST
    )
    assert 0.25 < elapsed < 3


@integration
def test_a_peer_that_stops_reading_times_the_data_out(transcript: Transcript) -> None:
    """RFC 5321 section 4.5.3.2.5: a data block the server does not take within the limit ends
    the session (and the socket, full, is not waited on for ever)."""
    peer = _SlowPeer("no_reading")
    timeouts = attrs.evolve(SHORT, data_block=0.3)
    message = (b"x" * 98 + b"\r\n") * (80 * 1024)  # 8 MiB: more than the buffers hold
    try:
        with SmtpTransport(helo_name="c.test", timeouts=timeouts) as transport:
            started = time.monotonic()
            [reply] = transport.send(peer.target, outgoing(message), transcript).values()
            elapsed = time.monotonic() - started
    finally:
        peer.close()
    assert (reply.code, reply.enhanced) == (451, "4.4.2")
    assert reply.text == f"{HOST}:{peer.port} took more than 0.3 s to take the message"
    assert 0.25 < elapsed < 3


@integration
def test_garbage_greeting_is_temporary(transport: SmtpTransport, transcript: Transcript) -> None:
    with garbage_server() as server:
        [reply] = transport.send(server.target, outgoing(), transcript).values()
    assert (reply.code, reply.enhanced) == (451, "4.5.0")
    assert "hello, I am not an SMTP server" in reply.text
    assert server.commands == []


@integration
@pytest.mark.parametrize(
    ("replies", "enhanced"),
    [
        pytest.param({"MAIL": b"what?\r\n"}, "4.5.0", id="garbage"),
        pytest.param({"MAIL": b"354 go ahead\r\n"}, "4.5.0", id="wrong-class"),
        pytest.param({"MAIL": None}, "4.4.2", id="hang-up"),
        pytest.param({"MAIL": b"250-a\r\n251 b\r\n"}, "4.5.0", id="mixed-codes"),
        pytest.param({"MAIL": b"250-" + b"x" * 5000 + b"\r\n"}, "4.5.0", id="too-long"),
    ],
)
def test_broken_reply_mid_session_is_temporary_and_not_reused(
    transport: SmtpTransport,
    transcript: Transcript,
    replies: dict[str, bytes | None],
    enhanced: str,
) -> None:
    with raw_server(replies=replies) as server:
        first = transport.send(
            server.target, outgoing(recipients=["a@x.test", "b@x.test"]), transcript
        )
        transport.send(server.target, outgoing(), transcript)
        assert server.connections == 2
    assert {(r.code, r.enhanced) for r in first.values()} == {(451, enhanced)}


@integration
@pytest.mark.parametrize("size", [200, 4 * 1024 * 1024], ids=["small", "large"])
def test_dropped_in_data_is_temporary(
    transport: SmtpTransport, transcript: Transcript, size: int
) -> None:
    message = (b"x" * 98 + b"\r\n") * (size // 100)
    with dropping_server(after=1) as server:
        replies = transport.send(
            server.target, outgoing(message, recipients=["a@x.test", "b@x.test"]), transcript
        )
    assert {(r.code, r.enhanced) for r in replies.values()} == {(451, "4.4.2")}
    assert server.digests == []


class _FailingFile(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 0:
            raise OSError("disk on fire")
        return super().read(size)


@integration
def test_spool_read_failure_propagates_and_drops_the_connection(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    big = b"y" * 98 + b"\r\n"
    failing = attrs.evolve(outgoing(big * 2000), open=lambda: _FailingFile(big * 2000))
    with smtp_server() as server:
        with pytest.raises(OSError, match="disk on fire"):
            transport.send(server.target, failing, transcript)
        [reply] = transport.send(server.target, outgoing(), transcript).values()
        assert reply.code == 250
        assert server.connections == 2
        assert [m.data for m in server.messages] == [MESSAGE]


# Streaming and the transcript.


@attrs.define
class _LazyMessage:
    """A message generated as it is read: 80-octet lines, never all in memory."""

    size: int
    largest_read: list[int]
    position: int = 0

    LINE = b"0123456789" * 7 + b"abcdefgh\r\n"

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None, "read() without a size would load the whole message"
        assert size > 0, "read() without a size would load the whole message"
        self.largest_read.append(size)
        count = min(size, self.size - self.position)
        start = self.position % len(self.LINE)
        repeated = self.LINE * (count // len(self.LINE) + 2)
        self.position += count
        return repeated[start : start + count]

    def __enter__(self) -> _LazyMessage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


def _lazy_digest(size: int) -> str:
    digest = hashlib.sha256()
    source = _LazyMessage(size, [])
    while block := source.read(1 << 20):
        digest.update(block)
    digest.update(b".\r\n")
    return digest.hexdigest()


@integration
def test_large_message_is_streamed_in_constant_memory(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    size = 20 * 1024 * 1024
    reads: list[int] = []
    message = Outgoing(
        id="big",
        sender="a@x.test",
        recipients=("b@x.test",),
        size=size,
        open=cast(
            Callable[[], AbstractContextManager[BinaryIO]], lambda: _LazyMessage(size, reads)
        ),
    )
    with raw_server(keep_data=False) as server:
        tracemalloc.start()
        try:
            [reply] = transport.send(server.target, message, transcript).values()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert reply.code == 250
    assert server.digests == [(size + 3, _lazy_digest(size))]
    assert max(reads) <= 64 * 1024
    assert peak < 4 * 1024 * 1024, f"peak traced memory {peak} octets for a {size}-octet message"


@integration
@pytest.mark.parametrize("size", [2, INLINE, INLINE + 1, 3 * 1024 * 1024 + 10])
def test_a_file_that_is_its_own_data_goes_as_it_is(
    transport: SmtpTransport,
    transcript: Transcript,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    # Intake found every line CRLF and none starting with ".": the file goes as it is, by
    # sendfile, or, up to INLINE octets, read whole and sent with the final "." in one write.
    line = b"0123456789. no line starts with a dot.\r\n"
    data = (line * (size // len(line) + 1))[: size - 2] + b"\r\n"
    calls: list[int] = []
    sendfile = os.sendfile

    def counted(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        return sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", counted)
    message = stored(tmp_path, data)
    with raw_server(keep_data=False) as server:
        [reply] = transport.send(server.target, message, transcript).values()
        # Not from a file (no descriptor): block by block, same bytes.
        [again] = transport.send(
            server.target, attrs.evolve(message, open=lambda: io.BytesIO(data)), transcript
        ).values()
    assert (reply.code, again.code) == (250, 250)
    expected = (size + 3, hashlib.sha256(data + b".\r\n").hexdigest())
    assert server.digests == [expected, expected]
    if size <= INLINE:
        assert not calls, "a small file went by sendfile"
    else:
        assert calls, "sendfile was not used"
    assert f"message data sent: {size + 3} octets" in transcript.text


@integration
@pytest.mark.parametrize("size", [100, INLINE + 100])
def test_a_stored_file_cut_meanwhile_is_not_ended_with_a_dot(
    transport: SmtpTransport,
    transcript: Transcript,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
) -> None:
    # The file is shorter when read than when its size was taken: what went must not become a
    # whole message with a "." after it; the attempt fails for now (4.3.0).
    data = b"x" * (size - 2) + b"\r\n"
    pread = os.pread

    def cut(fd: int, count: int, offset: int) -> bytes:
        read = pread(fd, count, offset)
        return read if count <= 2 else read[:-50]  # the last two octets are still there

    monkeypatch.setattr(os, "pread", cut)
    monkeypatch.setattr(os, "sendfile", lambda *_: 0)  # nothing left where the file was
    message = stored(tmp_path, data)
    with raw_server() as server:
        [reply] = transport.send(server.target, message, transcript).values()
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert "the stored message ended after" in reply.text
    assert server.digests == []


@integration
def test_a_small_file_and_its_final_dot_leave_in_one_write(
    transport: SmtpTransport,
    transcript: Transcript,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = b"Subject: one write\r\n\r\nbody\r\n"
    writes: list[bytes] = []
    send = socket.socket.send

    def recorded(sock: socket.socket, payload: bytes, *flags: int) -> int:
        writes.append(bytes(payload))
        return send(sock, payload, *flags)

    monkeypatch.setattr(socket.socket, "send", recorded)
    message = stored(tmp_path, data)
    with raw_server() as server:
        [reply] = transport.send(server.target, message, transcript).values()
    assert reply.code == 250
    assert data + b".\r\n" in writes
    assert server.data == [data + b".\r\n"]


@integration
def test_transcript_has_the_dialogue_but_not_the_message(
    transport: SmtpTransport, transcript: Transcript
) -> None:
    with smtp_server() as server:
        transport.send(server.target, outgoing(), transcript)
    text = transcript.text
    assert f"* connecting to {HOST}:{server.port}" in text
    assert "< 220 mx.test" in text
    assert "> EHLO client.test" in text
    assert f"> MAIL FROM:<alice@example.net> SIZE={len(MESSAGE)}" in text
    assert "< 250 2.1.0 Ok" in text
    assert "> RCPT TO:<bob@example.com>" in text
    assert "> DATA" in text
    assert "< 354 " in text
    assert f"message data sent: {len(MESSAGE) + 3 + 3} octets" in text  # 3 stuffed dots, ".\r\n"
    assert "< 250 2.0.0 Ok: queued" in text
    assert "SECRET-BODY-MARKER" not in text
    assert "Subject" not in text


# A failed transaction on a kept connection: the next one starts with RSET.


@integration
def test_a_refused_end_of_data_is_followed_by_rset(transcript: Transcript) -> None:
    replies = {**NO_PIPELINING, ".": b"500 5.0.0 Error: command failed\r\n"}
    with (
        raw_server(replies=replies) as server,
        SmtpTransport(helo_name="client.test", timeouts=SHORT) as transport,
    ):
        [first] = transport.send(server.target, outgoing(ASCII_MESSAGE), transcript).values()
        # At once, well within the moment in which a used connection is trusted without RSET.
        [second] = transport.send(server.target, outgoing(ASCII_MESSAGE), transcript).values()
        assert server.connections == 1
    assert first == second == Reply(500, "5.0.0", "Error: command failed", host=HOST)
    # RFC 5321 §4.1.1.5: RSET ends what the failed transaction left, before the next MAIL.
    assert server.commands[1:] == [
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<bob@example.com>",
        "DATA",
        "RSET",
        "MAIL FROM:<alice@example.net>",
        "RCPT TO:<bob@example.com>",
        "DATA",
        "QUIT",
    ]
    assert "the last transaction on it failed: RSET first" in "\n".join(transcript.lines)


@integration
def test_max_idle_zero_keeps_no_connection(transcript: Transcript) -> None:
    """``max_idle=0`` keeps none (it kept one: the pool made it at least 1); below 0 is an
    error, not a silent 1."""
    with SmtpTransport(helo_name="client.test", max_idle=0) as transport, smtp_server() as server:
        for _ in range(3):
            [reply] = transport.send(server.target, outgoing(), transcript).values()
            assert reply.code == 250
        assert server.connections == 3
        assert transport.connection_counts() == (3, 0)
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ConfigurationError, match="max_idle must be a whole number, 0 to keep"):
            SmtpTransport(helo_name="client.test", max_idle=bad)  # type: ignore[arg-type]
