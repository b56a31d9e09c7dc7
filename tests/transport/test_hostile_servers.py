"""The SMTP client against hostile and broken servers on 127.0.0.1, over real sockets.

What a server says is hostile until checked: no reply may make the client wait past its
deadline, hold more than its bounds (``MAX_REPLY_LINE``, ``MAX_REPLY_LINES``,
``MAX_REPLY_OCTETS``, plus one socket read of ``CHUNK``), raise out of
:meth:`SmtpTransport.send`, or leave a recipient without an answer; and every failure is a
temporary reply whose text says what went wrong and which also reaches the transcript. The
same replies on bytes alone are in ``test_replies.py``, ``test_protocol.py`` and
``test_transactions.py``; here they come through a socket, cut as TCP cuts them, from peers
that never stop talking, drip, go silent, or answer out of turn. Waits are short (0.3 s where a
test waits for a deadline on purpose); a test whose server babbles without end asserts that the
client stopped long before its deadline, in bounded memory. The peers (:class:`Hostile`) run a
small script per connection on a thread, on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmail import MailService, Router, Spool
from spoolmail._core.reply import KEPT_TEXT, Reply
from spoolmail._core.routing import Target
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import CHUNK
from spoolmail._transport.replies import MAX_REPLY_LINE, MAX_REPLY_LINES, MAX_REPLY_OCTETS
from spoolmail._transport.smtp import SmtpTimeouts, SmtpTransport
from spoolmail.testing import FakeClock
from tests.smtpservers import SHORT, raw_server

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MESSAGE = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
# Short enough that a client left waiting shows up at once; the SHORT waits otherwise, so that a
# test of a bound can tell "stopped at the bound" from "waited for the deadline".
FAST = attrs.evolve(SHORT, quit=0.2)
DEADLINE = 0.3
# What the client may hold while reading replies: one read of the socket, the longest line, and
# the longest multiline reply (twice, for the text it is decoded into), with room for the
# transcript and Python's own allocations. A client that buffered a flood would hold megabytes.
MEMORY_BOUND = 2 * (CHUNK + MAX_REPLY_LINE + MAX_REPLY_OCTETS) + 512 * 1024
# How much a flooding peer sends at most, so that a client without bounds fails the test
# instead of exhausting the machine.
FLOOD = 16 * 1024 * 1024
POLL = 0.02

GREETING = b"220 hostile.test ESMTP\r\n"
EHLO_PLAIN = b"250-hostile.test\r\n250 8BITMIME\r\n"
EHLO_PIPELINING = b"250-hostile.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n"


def outgoing(recipients: Sequence[str] = ("bob@example.com",)) -> Outgoing:
    return Outgoing(
        id="hostile",
        sender="alice@example.net",
        recipients=recipients,
        size=len(MESSAGE),
        open=lambda: io.BytesIO(MESSAGE),
    )


def waits(**changes: float) -> SmtpTimeouts:
    return attrs.evolve(FAST, **changes)


@pytest.fixture
def log() -> Transcript:
    return Transcript(clock=lambda: datetime(2026, 11, 28, 10, 15, 2, tzinfo=UTC))


# A peer that runs a script.


class Wire:
    """One connection as a script sees it: send bytes, read command lines and DATA."""

    def __init__(self, conn: socket.socket, stopping: threading.Event) -> None:
        self._conn = conn
        self._stopping = stopping
        self._buffer = bytearray()
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self.flooded = 0
        conn.settimeout(POLL)

    def send(self, data: bytes) -> bool:
        """Write ``data``; whether the client was still there to take it."""
        view = memoryview(data)
        while view and not self._stopping.is_set():
            try:
                view = view[self._conn.send(view) :]
            except TimeoutError:
                continue
            except OSError:
                return False
        return not view

    def flood(self, chunk: bytes, *, limit: int = FLOOD) -> None:
        """``chunk`` again and again until the client goes (or ``limit`` octets went)."""
        while self.flooded < limit and self.send(chunk):
            self.flooded += len(chunk)

    def drip(self, data: bytes, *, every: float = 0.01) -> None:
        """``data`` one octet at a time, for as long as the client listens."""
        for octet in data:
            if self._stopping.wait(every) or not self.send(bytes([octet])):
                return

    def _more(self) -> bool:
        while not self._stopping.is_set():
            try:
                data = self._conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return False
            self._buffer += data
            return bool(data)
        return False

    def command(self) -> str | None:
        """The next command line, or ``None`` once the client closed."""
        while (end := self._buffer.find(b"\r\n")) < 0:
            if not self._more():
                return None
        line = bytes(self._buffer[:end]).decode("utf-8", "replace")
        del self._buffer[: end + 2]
        self.commands.append(line)
        return line

    def message(self) -> bytes | None:
        """DATA up to and including the final ``.``, or ``None`` once the client closed."""
        while (end := self._buffer.find(b"\r\n.\r\n")) < 0:
            if not self._more():
                return None
        body = bytes(self._buffer[: end + 5])
        del self._buffer[: end + 5]
        self.messages.append(body)
        return body

    def hold(self) -> None:
        """Say nothing more until the client closes (or the peer stops)."""
        while self._more():
            pass

    def close(self) -> None:
        self._conn.close()


Script = Callable[[Wire], None]


class Hostile:
    """A peer on 127.0.0.1 that runs ``script`` on each connection, each on a thread of its own.
    ``wires`` holds each connection's :class:`Wire` (what the client said on it)."""

    def __init__(self, script: Script, wire: type[Wire] = Wire) -> None:
        self._script = script
        self._wire = wire
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(POLL)
        self.port = int(self._listener.getsockname()[1])
        self.wires: list[Wire] = []
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def target(self) -> Target:
        return Target(HOST, self.port, literal=True)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            wire = self._wire(conn, self._stopping)
            self.wires.append(wire)
            thread = threading.Thread(target=self._serve, args=(conn, wire), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, wire: Wire) -> None:
        # The wire's own socket may be another by the end (a TLS one, in test_hostile_tls.py).
        with conn, contextlib.closing(wire), contextlib.suppress(OSError):
            self._script(wire)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        for thread in list(self._threads):
            thread.join(timeout=5)
            assert not thread.is_alive(), "a hostile peer's thread did not stop"


@contextlib.contextmanager
def hostile(script: Script) -> Iterator[Hostile]:
    peer = Hostile(script)
    try:
        yield peer
    finally:
        peer.stop()


def converse(
    wire: Wire,
    answers: dict[str, bytes],
    *,
    end_of_data: bytes = b"250 2.0.0 queued\r\n",
) -> None:
    """Answer each command by its verb from ``answers`` (``250 ok`` when it has none), take
    DATA after a 354 and answer its end with ``end_of_data``; until the client goes."""
    while (line := wire.command()) is not None:
        verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
        if not wire.send(answers.get(verb, b"250 2.0.0 ok\r\n")):
            return
        if verb == "QUIT":
            return
        taken = verb != "DATA" or not answers.get("DATA", b"").startswith(b"354")
        if not taken and (wire.message() is None or not wire.send(end_of_data)):
            return


def speaking(greeting: bytes = GREETING, **answers: bytes) -> Script:
    """A script: ``greeting``, then :func:`converse` with ``answers`` (EHLO without
    PIPELINING, DATA 354 unless given)."""
    table = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n", **answers}

    def script(wire: Wire) -> None:
        if wire.send(greeting):
            converse(wire, table)

    return script


@attrs.frozen
class Outcome:
    replies: dict[str, Reply]
    elapsed: float
    peak: int


def send(
    target: Target,
    log: Transcript,
    *,
    recipients: Sequence[str] = ("bob@example.com",),
    timeouts: SmtpTimeouts = FAST,
    transport: SmtpTransport | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> Outcome:
    """One delivery, timed and with its peak of traced memory."""
    own = transport is None
    transport = transport or SmtpTransport(
        helo_name="client.test", timeouts=timeouts, tls_context=tls_context
    )
    tracemalloc.start()
    started = time.monotonic()
    try:
        replies = dict(transport.send(target, outgoing(recipients), log))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        if own:
            transport.close()
    return Outcome(replies, elapsed, peak)


def deferred(outcome: Outcome, log: Transcript, *, enhanced: str, reason: str) -> Reply:
    """The one reply every recipient got: temporary, ``enhanced``, its text containing
    ``reason``, and in the transcript as the session's end."""
    [reply] = set(outcome.replies.values())
    assert (reply.code, reply.enhanced, reply.host) == (451, enhanced, HOST), reply
    assert reason in reply.text, reply.text
    assert any(f"session ended: {reply}" in line for line in log.lines), log.text
    return reply


# Replies that never end.


def _greeted_then(flood: bytes, *, ehlo: bool = False) -> Script:
    def script(wire: Wire) -> None:
        if ehlo and (not wire.send(GREETING) or wire.command() is None):
            return
        wire.flood(flood)
        wire.hold()

    return script


@pytest.mark.parametrize(
    ("script", "awaiting", "reason"),
    [
        pytest.param(
            _greeted_then(b"x" * 65536),
            "greeting",
            f"a line longer than {MAX_REPLY_LINE} octets",
            id="greeting-without-line-end",
        ),
        pytest.param(
            _greeted_then(b"220 " + b"x" * 65532),
            "greeting",
            f"a line longer than {MAX_REPLY_LINE} octets",
            id="greeting-line-without-end",
        ),
        pytest.param(
            _greeted_then(b"250-x\r\n" * 4096, ehlo=True),
            "reply to EHLO",
            f"a reply of more than {MAX_REPLY_LINES} lines",
            id="ehlo-multiline-forever",
        ),
        pytest.param(
            _greeted_then(b"250-" + b"K" * 1900 + b"\r\n", ehlo=True),
            "reply to EHLO",
            f"{MAX_REPLY_OCTETS} octets",
            id="ehlo-long-lines-forever",
        ),
        pytest.param(
            _greeted_then(b"\0" * 65536, ehlo=True),
            "reply to EHLO",
            f"a line longer than {MAX_REPLY_LINE} octets",
            id="nul-forever",
        ),
        pytest.param(
            _greeted_then(b"\r\n" * 4096),
            "greeting",
            'garbage ("")',
            id="empty-lines-forever",
        ),
    ],
)
def test_a_reply_that_never_ends_is_cut_off_at_its_bound(
    log: Transcript, script: Script, awaiting: str, reason: str
) -> None:
    with hostile(script) as peer:
        outcome = send(peer.target, log, recipients=["a@x.test", "b@x.test"])
    reply = deferred(outcome, log, enhanced="4.5.0", reason=reason)
    assert reply.text.endswith(f"as the {awaiting}")
    # It stopped reading at the bound, not at the deadline, and held no more than the bound.
    assert outcome.elapsed < SHORT.greeting / 2
    assert outcome.peak < MEMORY_BOUND, outcome.peak
    assert peer.wires[0].flooded < FLOOD


def test_a_reply_dripped_without_end_ends_at_its_deadline(log: Transcript) -> None:
    """RFC 5321 section 4.5.3.2.6: the reply to the final "." within its limit, whole, however
    slowly its octets come; the message then waits for the next attempt."""

    def script(wire: Wire) -> None:
        table = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            wire.send(table.get(line[:4].upper(), b"250 ok\r\n"))
            if line == "DATA":
                wire.message()
                wire.drip(b"250 " + b"o" * 1000)
                return

    with hostile(script) as peer:
        outcome = send(peer.target, log, timeouts=waits(data_end=DEADLINE))
    deferred(
        outcome,
        log,
        enhanced="4.4.2",
        reason=f"sent no reply to the end of data within {DEADLINE:g} s",
    )
    assert outcome.elapsed < 3 * DEADLINE + 0.5


@pytest.mark.parametrize(
    ("silent_at", "timeout", "awaiting"),
    [
        ("EHLO", "ehlo", "reply to EHLO"),
        ("MAIL", "mail", "reply to MAIL"),
        ("RCPT", "rcpt", "reply to RCPT"),
        ("DATA", "data_start", "reply to DATA"),
        (".", "data_end", "reply to the end of data"),
    ],
)
def test_a_server_that_stops_answering_is_deferred_at_that_steps_deadline(
    log: Transcript, silent_at: str, timeout: str, awaiting: str
) -> None:
    def script(wire: Wire) -> None:
        table = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == silent_at:
                wire.hold()
                return
            wire.send(table.get(verb, b"250 ok\r\n"))
            if verb == "DATA" and wire.message() is not None and silent_at == ".":
                wire.hold()
                return

    with hostile(script) as peer:
        outcome = send(peer.target, log, timeouts=waits(**{timeout: DEADLINE}))
    deferred(outcome, log, enhanced="4.4.2", reason=f"sent no {awaiting} within {DEADLINE:g} s")
    assert outcome.elapsed < 3 * DEADLINE + 0.5


# Replies that are not replies.


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        pytest.param(b"25 ok\r\n", 'garbage ("25 ok")', id="two-digits"),
        pytest.param(b"2500 ok\r\n", 'garbage ("2500 ok")', id="four-digits"),
        pytest.param(b"abc\r\n", 'garbage ("abc")', id="letters"),
        pytest.param(b"250ok\r\n", 'garbage ("250ok")', id="no-separator"),
        pytest.param(b" 250 ok\r\n", 'garbage (" 250 ok")', id="leading-space"),
        pytest.param(b"199 ok\r\n", 'garbage ("199 ok")', id="code-below-200"),
        pytest.param(b"600 ok\r\n", 'garbage ("600 ok")', id="code-above-599"),
        pytest.param(
            "\uff12\uff15\uff10 ok\r\n".encode(),
            'garbage ("\uff12\uff15\uff10 ok")',
            id="fullwidth-digits",
        ),
        pytest.param(b"\x00250 ok\r\n", 'garbage ("\\x00250 ok")', id="nul-first"),
        pytest.param(b"250-a\r\n550 b\r\n", "lines with codes 250 and 550", id="code-changes"),
        pytest.param(b"250-a\r\n250-b\r\n251 c\r\n", "lines with codes 250 and 251", id="late"),
        pytest.param(b"354 go ahead\r\n", 'an unexpected 354 ("go ahead")', id="wrong-class"),
        pytest.param(b"250-" + b"y" * 100_000 + b"\r\n", "a line longer than", id="100-kb-line"),
    ],
)
def test_a_reply_to_mail_that_is_no_reply_defers_everyone(
    log: Transcript, reply: bytes, reason: str
) -> None:
    with hostile(speaking(MAIL=reply)) as peer:
        outcome = send(peer.target, log, recipients=["a@x.test", "b@x.test"])
    answer = deferred(outcome, log, enhanced="4.5.0", reason=reason)
    assert answer.text.endswith("as the reply to MAIL")
    assert outcome.elapsed < SHORT.mail / 2
    assert outcome.peak < MEMORY_BOUND
    # What the server sent is in the transcript, made printable.
    received = [line for line in log.lines if " < " in line]
    assert received
    assert not any("\x00" in line for line in log.lines)


@pytest.mark.parametrize(
    ("greeting", "shown"),
    [
        pytest.param(b"220 \x00\x01hostile\x7f\r\n", "\\x00\\x01hostile\\x7f", id="controls"),
        pytest.param(b"220 \xff\xfe\xc0\xaf hi\r\n", "\ufffd\ufffd\ufffd\ufffd hi", id="not-utf8"),
        pytest.param(b"220 \x1b[2J\x1b[31mred\r\n", "\\x1b[2J\\x1b[31mred", id="terminal"),
    ],
)
def test_odd_bytes_in_replies_reach_the_transcript_harmless(
    log: Transcript, greeting: bytes, shown: str
) -> None:
    refusal = b"550 5.1.1 " + greeting[4:]
    with hostile(speaking(greeting, RCPT=refusal)) as peer:
        outcome = send(peer.target, log)
    [reply] = outcome.replies.values()
    # The refusal is the server's own, its text made printable: a DSN and a terminal can show
    # it, and a NUL cannot cut a file or a log line short.
    assert (reply.code, reply.enhanced) == (550, "5.1.1")
    assert reply.text == shown
    assert f"< 220 {shown}" in log.text
    assert all(line.isprintable() for line in log.lines)


def test_a_greeting_that_refuses_is_a_temporary_host_problem(log: Transcript) -> None:
    with hostile(speaking(b"554-no\r\n554 5.7.1 \x00go away\r\n")) as peer:
        outcome = send(peer.target, log)
    reason = "refused the session: 554 no 5.7.1 \\x00go away"
    deferred(outcome, log, enhanced="4.4.1", reason=reason)


# EHLO.


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(b"-1", id="negative"),
        pytest.param(b"1" + b"0" * 30, id="ten-to-the-30"),
        pytest.param(b"99999999999999999999", id="twenty-digits"),
        pytest.param(b"lots", id="text"),
        pytest.param(b"1e9", id="float"),
        pytest.param("\u0661\u0662".encode(), id="arabic-digits"),
        pytest.param(b"", id="empty"),
        pytest.param(b"=", id="equals"),
    ],
)
def test_an_absurd_size_is_no_limit(log: Transcript, size: bytes) -> None:
    ehlo = b"250-hostile.test\r\n250-SIZE " + size + b"\r\n250 8BITMIME\r\n"
    with hostile(speaking(EHLO=ehlo)) as peer:
        outcome = send(peer.target, log)
    assert outcome.replies == {"bob@example.com": Reply(250, "2.0.0", "queued", host=HOST)}
    [mail] = [c for c in peer.wires[0].commands if c.startswith("MAIL")]
    # SIZE was announced (whatever its value), so MAIL declares the message's size.
    assert f"SIZE={len(MESSAGE)}" in mail


def test_a_tiny_size_fails_the_message_without_sending_it(log: Transcript) -> None:
    ehlo = b"250-hostile.test\r\n250 SIZE 1\r\n"
    with hostile(speaking(EHLO=ehlo)) as peer:
        outcome = send(peer.target, log)
    [reply] = outcome.replies.values()
    assert (reply.code, reply.enhanced) == (552, "5.3.4")
    assert not any(c.startswith(("MAIL", "DATA")) for c in peer.wires[0].commands)


def test_thousands_of_ehlo_lines_are_a_reply_that_never_ends(log: Transcript) -> None:
    ehlo = b"250-hostile.test\r\n" + b"".join(b"250-X-KEYWORD-%d\r\n" % n for n in range(5000))
    with hostile(speaking(EHLO=ehlo + b"250 8BITMIME\r\n")) as peer:
        outcome = send(peer.target, log)
    deferred(outcome, log, enhanced="4.5.0", reason=f"more than {MAX_REPLY_LINES} lines")
    assert outcome.peak < MEMORY_BOUND


def test_thousands_of_keywords_within_the_bounds_are_read(log: Transcript) -> None:
    """As many keywords as fit: 30 lines of 2 KB, each holding a few hundred."""
    words = b" ".join(b"K%d" % n for n in range(400))[: MAX_REPLY_LINE - 10].rpartition(b" ")[0]
    lines = b"".join(b"250-" + words + b"\r\n" for _ in range(30))
    ehlo = b"250-hostile.test\r\n" + lines + b"250-PIPELINING\r\n250 SIZE 1000000\r\n"
    assert len(ehlo) < MAX_REPLY_OCTETS
    with hostile(speaking(EHLO=ehlo)) as peer:
        outcome = send(peer.target, log)
    assert outcome.replies == {"bob@example.com": Reply(250, "2.0.0", "queued", host=HOST)}
    [mail] = [c for c in peer.wires[0].commands if c.startswith("MAIL")]
    assert f"SIZE={len(MESSAGE)}" in mail  # the keywords after the thousands were read
    assert outcome.peak < MEMORY_BOUND


# The connection ends where it should not.


@pytest.mark.parametrize(
    ("hang_up", "awaiting"),
    [
        pytest.param("EHLO", "reply to EHLO", id="at-ehlo"),
        pytest.param("MAIL", "reply to MAIL", id="at-mail"),
        pytest.param("DATA", "reply to DATA", id="at-data"),
        pytest.param(".", "reply to the end of data", id="after-the-final-dot"),
    ],
)
def test_a_server_that_hangs_up_defers_everyone(
    log: Transcript, hang_up: str, awaiting: str
) -> None:
    with raw_server(replies={hang_up: None}) as server:
        outcome = send(server.target, log, recipients=["a@x.test", "b@x.test"])
    deferred(
        outcome,
        log,
        enhanced="4.4.2",
        reason=f"closed the connection instead of the {awaiting}",
    )
    assert outcome.elapsed < SHORT.mail / 2


def test_a_server_that_hangs_up_after_a_partial_reply_defers(log: Transcript) -> None:
    def script(wire: Wire) -> None:
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            wire.send(b"354 go ahead\r\n" if line == "DATA" else b"250 ok\r\n")
            if line == "DATA":
                wire.message()
                wire.send(b"250-2.0.0 queued\r\n250-as")
                return

    with hostile(script) as peer:
        outcome = send(peer.target, log)
    deferred(outcome, log, enhanced="4.4.2", reason="closed the connection instead of the reply")


def test_a_kept_connection_lost_after_the_final_dot_is_not_sent_again_at_once(
    log: Transcript,
) -> None:
    """The server took the message and its final "." and closed without a verdict: it may
    have the message, so it is not sent again over a new connection within the same attempt
    (as a kept connection found gone before MAIL's reply is): the message waits, deferred."""
    taken: list[bytes] = []

    def script(wire: Wire) -> None:
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            wire.send({"EHLO": EHLO_PLAIN, "DATA": b"354 go\r\n"}.get(verb, b"250 ok\r\n"))
            if verb == "DATA":
                body = wire.message()
                if body is None:
                    return
                taken.append(body)
                if len(taken) == 2:
                    return  # hang up instead of the verdict on the second message
                wire.send(b"250 2.0.0 queued\r\n")

    with (
        hostile(script) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        first = send(peer.target, log, transport=transport)
        second = send(peer.target, log, transport=transport)
    assert first.replies == {"bob@example.com": Reply(250, "2.0.0", "queued", host=HOST)}
    deferred(
        second,
        log,
        enhanced="4.4.2",
        reason="closed the connection instead of the reply to the end of data",
    )
    assert len(taken) == 2
    assert len(peer.wires) == 1


# Replies out of turn.


def test_junk_after_the_greeting_does_not_answer_the_commands(log: Transcript) -> None:
    """A second reply sent with the greeting (a proxy's banner, a confused server) would be read
    as the reply to EHLO, and every reply after it as the reply to the command before: a
    refusal of one recipient would answer the next."""
    answers = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}

    def script(wire: Wire) -> None:
        wire.send(GREETING + b"220 hostile.test says it again\r\n")
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == "RCPT":
                who = "a" if "<a@" in line else "b"
                wire.send(b"550 5.1.1 no such user a\r\n" if who == "a" else b"250 ok\r\n")
                continue
            wire.send(answers.get(verb, b"250 ok\r\n"))
            if verb == "DATA":
                wire.message()
                wire.send(b"250 2.0.0 queued\r\n")

    with hostile(script) as peer:
        outcome = send(peer.target, log, recipients=["a@x.test", "b@x.test"])
    a, b = outcome.replies["a@x.test"], outcome.replies["b@x.test"]
    # b may be delivered or deferred; never refused with what the server said about a.
    assert not (b.code == 550 and "user a" in b.text), b
    assert b.code != 550, b
    # a was refused (550) or the session deferred; never taken as accepted.
    assert a.code in (550, 451), a


def refusing_a(after_message: Script) -> Script:
    """A server that refuses recipients at a@ and takes the rest; ``after_message`` answers the
    final dot (and may say more than it should)."""

    def script(wire: Wire) -> None:
        answers = {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == "RCPT":
                refused = "<a@" in line
                wire.send(b"550 5.1.1 no such user a\r\n" if refused else b"250 ok\r\n")
                continue
            wire.send(answers.get(verb, b"250 ok\r\n"))
            if verb == "QUIT":
                return
            if verb == "DATA":
                wire.message()
                after_message(wire)

    return script


def test_a_final_dot_answered_twice_does_not_answer_the_next_message(log: Transcript) -> None:
    """The second 250 arrives with the first: on a kept connection it would be read as the
    reply to the next MAIL, and each reply after it as the answer to the command before."""

    def answered(wire: Wire) -> None:
        wire.send(b"250 2.0.0 queued\r\n250 2.0.0 queued again\r\n")

    script = refusing_a(answered)

    with (
        hostile(script) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        first = send(peer.target, log, transport=transport)
        second = send(peer.target, log, recipients=["a@x.test", "b@x.test"], transport=transport)
    assert first.replies == {"bob@example.com": Reply(250, "2.0.0", "queued", host=HOST)}
    a, b = second.replies["a@x.test"], second.replies["b@x.test"]
    assert (a.code, a.enhanced) == (550, "5.1.1")
    # b is delivered (on this connection or a new one), or deferred; never refused for a.
    assert b.code != 550, b


def test_stale_replies_on_a_kept_connection_are_not_read_as_answers(log: Transcript) -> None:
    """A reply that arrives while the connection is idle answers nothing the client asked."""

    def answered(wire: Wire) -> None:
        wire.send(b"250 2.0.0 queued\r\n")
        time.sleep(0.05)  # the client is done with this message by now
        wire.send(b"250 2.0.0 by the way\r\n")

    script = refusing_a(answered)

    with (
        hostile(script) as peer,
        SmtpTransport(helo_name="client.test", timeouts=FAST) as transport,
    ):
        first = send(peer.target, log, transport=transport)
        time.sleep(0.15)
        second = send(peer.target, log, recipients=["a@x.test", "b@x.test"], transport=transport)
    assert first.replies == {"bob@example.com": Reply(250, "2.0.0", "queued", host=HOST)}
    a, b = second.replies["a@x.test"], second.replies["b@x.test"]
    assert (a.code, a.enhanced) == (550, "5.1.1"), a
    assert b == Reply(250, "2.0.0", "queued", host=HOST), b


@pytest.mark.parametrize("ehlo", [EHLO_PLAIN, EHLO_PIPELINING], ids=["lockstep", "pipelined"])
def test_a_verdict_sent_before_the_message_is_not_taken_for_one(
    log: Transcript, ehlo: bytes
) -> None:
    """A 250 that comes with the 354, before the message was sent, would be read as the reply
    to the final ".": the message counted delivered whatever the server made of it (here, a
    refusal)."""

    def script(wire: Wire) -> None:
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == "EHLO":
                wire.send(ehlo)
            elif verb == "DATA":
                wire.send(b"354 go ahead\r\n250 2.0.0 queued before you sent it\r\n")
                if wire.message() is None:
                    return
                wire.send(b"554 5.7.1 rejected after all\r\n")
            else:
                wire.send(b"250 ok\r\n")
                if verb == "QUIT":
                    return

    with hostile(script) as peer:
        outcome = send(peer.target, log)
    [reply] = outcome.replies.values()
    assert reply.code != 250, reply
    deferred(outcome, log, enhanced="4.5.0", reason="queued before you sent it")


# Whatever the reply, at whatever step: an answer for everyone, in bounded time.

STEPS = ["EHLO", "MAIL", "RCPT", "DATA", "."]
replies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda code, sep, text, end: code + sep + text + end,
        st.sampled_from([b"250", b"354", b"421", b"451", b"550", b"220", b"199", b"25", b""]),
        st.sampled_from([b" ", b"-", b""]),
        st.binary(max_size=60),
        st.sampled_from([b"\r\n", b"\n", b"", b"\r\n250 ok\r\n", b"\r\n354 go\r\n"]),
    ),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(step=st.sampled_from(STEPS), reply=replies, pipelining=st.booleans())
def test_any_reply_at_any_step_answers_every_recipient(
    step: str, reply: bytes, pipelining: bool
) -> None:
    log = Transcript(clock=lambda: datetime(2026, 11, 28, tzinfo=UTC))
    ehlo = EHLO_PIPELINING if pipelining else EHLO_PLAIN
    table = {"EHLO": ehlo, "DATA": b"354 go ahead\r\n"}

    def script(wire: Wire) -> None:
        # The server hangs up after the hostile reply: an unfinished one ends at once, not at a
        # deadline (those are tested above).
        wire.send(GREETING)
        while (line := wire.command()) is not None:
            verb = line[:4].upper()
            if verb == step:
                wire.send(reply)
                return
            wire.send(table.get(verb, b"250 ok\r\n"))
            if verb == "DATA" and step == "." and wire.message() is not None:
                wire.send(reply)
                return

    with hostile(script) as peer:
        outcome = send(peer.target, log, recipients=["a@x.test", "b@x.test"])
    assert set(outcome.replies) == {"a@x.test", "b@x.test"}
    for answer in outcome.replies.values():
        assert answer.host == HOST
        if answer.code >= 400:
            # Its reason is in the transcript, even for a server's reply with no text ("400").
            assert f"session ended: {answer}" in log.text or f"< {answer.code}" in log.text
    assert outcome.elapsed < 2
    assert outcome.peak < MEMORY_BOUND


# Through the service: the message stays queued, with the reason in its transcript.


def relaying_to(peer: Hostile, spool: Spool, clock: FakeClock) -> MailService:
    """A service whose smart host is ``peer``."""
    return MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host=f"[{HOST}]:{peer.port}"),
        transport=SmtpTransport(helo_name="mail.example.com", timeouts=FAST),
        clock=clock,
        fqdn="mail.example.com",
    )


def test_a_babbling_smart_host_leaves_the_message_queued_with_the_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    script = _greeted_then(b"250-x\r\n" * 4096, ehlo=True)
    with (
        hostile(script) as peer,
        Spool(str(tmp_path / "MailRoot"), clock=clock) as spool,
    ):
        service = relaying_to(peer, spool, clock)
        try:
            spool.submit(b"From: alice@example.com\r\nTo: bob@remote.test\r\n\r\nhi\r\n")
            started = time.monotonic()
            report = service.run_once()
            elapsed = time.monotonic() - started
        finally:
            service.close()
        [queued] = list(spool.queued())
        text = spool.transcript(queued.id)
    assert report.deferred == ((queued.id, "bob@remote.test"),)
    assert (report.delivered, report.failed, report.errors) == ((), (), ())
    assert f"a reply of more than {MAX_REPLY_LINES} lines" in text
    assert elapsed < 2


def test_a_long_reply_to_many_recipients_is_kept_cut_in_the_envelope(tmp_path: Path) -> None:
    # A 451 of 63 KB at the final dot answers every recipient of the transaction: the envelope
    # held it once a recipient (300 recipients: 19 MB, read again at every retry) and the mail
    # log wrote it once a recipient. Each keeps 2,048 characters; the transcript all of it.
    lines = [f"451-4.3.0 line {n:02d} ".encode() + b"x" * 690 + b"\r\n" for n in range(89)]
    refusal = b"".join(lines) + b"451 4.3.0 the last line\r\n"
    assert len(refusal) < MAX_REPLY_OCTETS

    def script(wire: Wire) -> None:
        if wire.send(GREETING):
            converse(wire, {"EHLO": EHLO_PLAIN, "DATA": b"354 go ahead\r\n"}, end_of_data=refusal)

    clock = FakeClock()
    recipients = [f"user{n}@remote.test" for n in range(300)]
    with hostile(script) as peer, Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        service = relaying_to(peer, spool, clock)
        try:
            queue_id = spool.submit(
                b"From: alice@example.com\r\nSubject: s\r\n\r\nhi\r\n",
                sender="alice@example.com",
                recipients=recipients,
            )
            report = service.run_once()
        finally:
            service.close()
        assert len(report.deferred) == 300
        envelope = spool.fs.getsize(f"Queue/{queue_id}.env")
        [queued] = list(spool.queued())
        transcript = spool.transcript(queue_id)
    assert envelope < 300 * (KEPT_TEXT + 400)
    texts = {r.reply.text for r in queued.envelope.recipients if r.reply is not None}
    [text] = texts
    assert len(text) == KEPT_TEXT + len(" [...]")
    assert text.startswith("line 00 xxx")
    assert text.endswith(" [...]")
    assert "the last line" in transcript  # the whole reply, once a transaction
