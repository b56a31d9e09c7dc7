"""The sans-IO SMTP client protocol, on bytes alone: its state table, its purity, and whatever a
server may reply.

No socket, thread or clock: each test drives a
:class:`~spoolmail._transport.protocol.ClientProtocol` against the scripted :class:`Peer` of
``tests/transport/wire.py`` (a raw server's or aiosmtpd's answers, byte for byte). The command
and reply sequencing of sessions and transactions is in ``test_transactions.py`` on the same
footing; real servers are left for what needs a socket (``test_smtp.py``, ``test_smtp_tls.py``).
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spoolmail
from spoolmail._core.reply import Reply
from spoolmail._core.transcript import Transcript
from spoolmail._transport import protocol as protocol_module
from spoolmail._transport.data import Content
from spoolmail._transport.protocol import (
    TRANSITIONS,
    Done,
    NeedData,
    Send,
    State,
    Step,
)
from spoolmail.exceptions import InvalidTransition
from tests.transport.test_replies import line_ends, reply_lines
from tests.transport.wire import (
    HOST,
    Peer,
    client,
    converse,
    deliver,
    open_session,
    outgoing,
    transcript,
)

ASCII_MESSAGE = b"From: alice@example.net\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
FORBIDDEN = {"socket", "ssl", "time", "select", "selectors", "asyncio", "threading"}


# Purity.


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_protocol_imports_no_socket_tls_or_clock() -> None:
    """protocol.py and every spoolmail module it reaches import none of socket, ssl, time,
    select (nor the thread and event-loop modules)."""
    source = Path(spoolmail.__file__).parent
    seen: set[str] = set()
    todo = [protocol_module.__name__]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        relative = Path(*name.split(".")[1:])
        path = source / relative.with_suffix(".py")
        if not path.exists():
            path = source / relative / "__init__.py"
        imported = _imports(path)
        assert not {n.split(".")[0] for n in imported} & FORBIDDEN, (name, imported)
        todo.extend(n for n in imported if n.startswith("spoolmail.") and n != "spoolmail")
    assert "spoolmail._transport.replies" in seen
    assert "spoolmail._transport.session" not in seen


# The state table.


def test_every_state_is_in_the_table_and_reachable() -> None:
    assert set(TRANSITIONS) == set(State)
    reachable = {State.GREETING}
    frontier = [State.GREETING]
    while frontier:
        for new in TRANSITIONS[frontier.pop()].values():
            if new not in reachable:
                reachable.add(new)
                frontier.append(new)
    # CLOSED is reached by close() from anywhere, and by the end of QUIT.
    assert reachable | {State.CLOSED} == set(State)


def test_a_step_the_table_lacks_names_both_and_changes_nothing() -> None:
    protocol = client()
    with pytest.raises(InvalidTransition, match=r"no step MAIL \(MAIL\) in state GREETING"):
        protocol._fire(Step.MAIL)
    assert protocol.state is State.GREETING
    # A group is all or nothing: EHLO would be fine, MAIL after it is not.
    with pytest.raises(InvalidTransition, match=r"no step MAIL .* in state HELLO"):
        protocol._fire(Step.EHLO, Step.MAIL)
    assert protocol.state is State.GREETING


def test_a_goal_in_the_wrong_state_is_refused() -> None:
    protocol = client()
    with pytest.raises(InvalidTransition, match="cannot start deliver in state GREETING"):
        protocol.deliver(
            outgoing(ASCII_MESSAGE),
            ["bob@example.com"],
            content=Content(eight_bit=False, utf8_headers=False),
            answers={},
            transcript=None,
        )
    protocol.open(None)
    with pytest.raises(InvalidTransition, match="cannot start probe with a goal in progress"):
        protocol.probe(None)
    with pytest.raises(InvalidTransition, match="TLS started in state GREETING"):
        protocol.tls_started("TLS started")


def test_the_session_opens_on_bytes_alone() -> None:
    protocol = client()
    protocol.open(None)
    assert protocol.next_event() == NeedData(5.0, "greeting", 0)
    protocol.receive_data(b"220 mx.test ESMTP\r\n")
    assert protocol.next_event() == Send(b"EHLO client.test\r\n", 5.0, "EHLO")
    assert protocol.state is State.HELLO
    # A reply in pieces is waited for as one: the same reply number, so the same deadline.
    protocol.receive_data(b"250-mx.test\r\n250-PIPE")
    assert protocol.next_event() == NeedData(5.0, "reply to EHLO", 1)
    protocol.receive_data(b"LINING\r\n250 8BITMIME\r\n")
    assert protocol.next_event() == Done()
    assert protocol.state is State.READY
    assert protocol.extensions.pipelining
    assert protocol.extensions.eight_bit_mime


def test_quit_closes_whatever_the_reply() -> None:
    protocol = client()
    peer = Peer(replies={"QUIT": b"500 what?\r\n"})
    assert open_session(protocol, peer, transcript()) is None
    protocol.quit(None)
    assert converse(protocol, peer) == Done()
    assert protocol.state is State.CLOSED
    assert not protocol.usable


# Whatever the server replies, at any step: a reply for every recipient, never an exception.

STEPS = ["greeting", "EHLO", "MAIL", "RCPT", "DATA", ".", "RSET", "QUIT"]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    step=st.sampled_from(STEPS),
    lines=st.lists(st.tuples(reply_lines, line_ends), min_size=1, max_size=6),
    pipelining=st.booleans(),
    recipients=st.integers(min_value=1, max_value=3),
)
def test_random_replies_never_raise(
    step: str, lines: list[tuple[bytes, bytes]], pipelining: bool, recipients: int
) -> None:
    reply = b"".join(line + end for line, end in lines)
    log = Transcript(clock=lambda: datetime(2026, 11, 28, tzinfo=UTC))
    last = b"250 PIPELINING\r\n" if pipelining else b"250 \r\n"
    ehlo = b"250-raw.test\r\n250-8BITMIME\r\n" + last
    addresses = [f"r{n}@x.test" for n in range(recipients)]
    if step == "greeting":
        peer = Peer(greeting=reply, replies={"EHLO": ehlo})
    else:
        peer = Peer(replies={"EHLO": ehlo, step: reply})
    protocol = client(max_recipients=2)
    ended = open_session(protocol, peer, log)
    if ended is not None:
        # A refused session: 4xx, or a 5xx to HELO after a 5xx to EHLO.
        assert 400 <= ended.code <= 599
        return
    for _ in range(2):  # the second time on the same connection, if it is still fit for one
        answers = deliver(protocol, peer, outgoing(ASCII_MESSAGE, recipients=addresses), log)
        assert set(answers) == set(addresses)
        for answer in answers.values():
            assert isinstance(answer, Reply)
            assert 200 <= answer.code <= 599
        if protocol.state is not State.READY:
            break
    if protocol.usable:
        protocol.quit(log)
        converse(protocol, peer)
        assert not protocol.usable


def test_a_deliver_after_a_kept_connection_needs_no_greeting() -> None:
    peer = Peer()
    protocol = client()
    log = transcript()
    assert open_session(protocol, peer, log) is None
    first = deliver(protocol, peer, outgoing(ASCII_MESSAGE), log)
    second = deliver(protocol, peer, outgoing(ASCII_MESSAGE), log)
    assert first == second == {"bob@example.com": Reply(250, "2.0.0", "Ok: queued", host=HOST)}
    assert peer.commands.count("EHLO client.test") == 1
