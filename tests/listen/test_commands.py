"""The listener's own command loop, and its MAIL and RCPT paths for a plain ``<local@domain>``,
answer as aiosmtpd's do: the same script of awkward and ordinary commands, sent through each,
gets the same replies (queue ids aside)."""

from __future__ import annotations

import asyncio
import re
import ssl
import types
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, _AuthMechAttr

from spoolmail import Spool
from spoolmail._listen import session as session_module
from spoolmail._listen.session import Hooks, SmtpSession
from spoolmail.testing import FakeClock
from tests.listen.conftest import running
from tests.listen.raw import RawClient

MESSAGE = b"From: a@client.test\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"

# (what is sent, how many final replies it gets)
SCRIPT: list[tuple[bytes, int]] = [
    (b"MAIL FROM:<a@client.test>\r\n", 1),  # before HELO
    (b"RCPT TO:<bob@example.com>\r\n", 1),
    (b"DATA\r\n", 1),
    (b"\r\n", 1),  # empty
    (b" NOOP\r\n", 1),  # an empty command name
    (b"\xff\xfe x\r\n", 1),  # not ASCII
    (b"NOOP " + b"x" * 600 + b"\r\n", 1),  # over 512 octets
    (b"HELO client.test\r\n", 1),
    (b"RCPT TO:<bob@example.com>\r\n", 1),  # before MAIL
    (b"MAIL FROM:<a@client.test>\r\n", 1),
    (b"MAIL FROM:<a@client.test>\r\n", 1),  # nested
    (b"RCPT TO:<bob@example.com> NOTIFY=NEVER\r\n", 1),  # parameters after HELO
    (b"RCPT TO:bob@example.com\r\n", 1),  # no angle brackets
    (b"RCPT TO:<bob@example.com>\r\n", 1),
    (b"RCPT TO:<bob@remote.test>\r\n", 1),  # no relaying
    (b"rcpt to: <carol@example.com>\r\n", 1),
    (b"DATA x\r\n", 1),
    (b"DATA\r\n" + MESSAGE, 2),
    (b"RSET\r\n", 1),
    (b"EHLO client.test\r\n", 1),
    (b"MAIL FROM:<>\r\n", 1),
    (b"RSET\r\n", 1),
    (b"MAIL FROM:<a@client.test> SIZE=100 BODY=8BITMIME\r\n", 1),
    (b"RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE\r\n", 1),
    (b"RCPT TO:<b\xc3\xa9@example.com>\r\n", 1),  # non-ASCII without SMTPUTF8
    (b"RCPT TO:<bob@@example.com>\r\n", 1),
    (b"DATA\r\n" + MESSAGE, 2),
    (b"MAIL FROM:<a@client.test> SIZE=999999999\r\n", 1),
    (b"MAIL FROM:<a@client.test> FOO=BAR\r\n", 1),
    (b"VRFY bob@example.com\r\n", 1),
    (b"NOOP\r\n", 1),
    *[(b"FOO\r\n", 1)] * 4,  # unknown commands (" NOOP" was one), until the session ends
]
# A line over the stream reader's limit (64 KiB), whole in its buffer: dropped, then 500.
LONG: list[tuple[bytes, int]] = [
    (b"HELO client.test\r\n", 1),
    (b"NOOP " + b"x" * 70_000 + b"\r\n", 1),
    (b"NOOP\r\n", 1),
    (b"QUIT\r\n", 1),
]


def transcript(
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
    script: list[tuple[bytes, int]],
    *,
    aiosmtpd: bool,
) -> list[str]:
    if aiosmtpd:
        monkeypatch.setattr(SmtpSession, "_serve_commands", SMTP._handle_client)
        monkeypatch.setattr(SmtpSession, "_plain_path", lambda *_: None)
    replies: list[str] = []
    with running(spool) as listener:
        client = RawClient(listener)
        replies.append(client.greeting)
        for data, count in script:
            client.send(data)
            replies += client.replies(count)
        assert client.closed()
    return [re.sub(r"queued as \S+", "queued as ID", reply) for reply in replies]


@pytest.mark.parametrize("script", [SCRIPT, LONG], ids=["commands", "long-line"])
def test_the_listener_answers_every_command_as_aiosmtpd_does(
    monkeypatch: pytest.MonkeyPatch, script: list[tuple[bytes, int]]
) -> None:
    with Spool("mem://", clock=FakeClock()) as spool:
        ours = transcript(spool, monkeypatch, script, aiosmtpd=False)
    with Spool("mem://", clock=FakeClock()) as spool:
        theirs = transcript(spool, monkeypatch, script, aiosmtpd=True)
    assert ours == theirs
    assert len(ours) == 1 + sum(count for _, count in script)
    if script is SCRIPT:
        assert ours.count("250 2.0.0 Ok: queued as ID") == 2
    else:  # the long line refused as a shorter one is, and the session goes on
        assert ours[2:] == ["500 5.5.2 Command line too long", "250 2.0.0 Ok", "221 2.0.0 Bye"]


def _comparable(value: Any, session: object) -> Any:
    """A session's attribute, comparable with another session's: methods by function and
    owner (this session, or the handler), tables by their items in order, asyncio's objects
    by type."""
    if isinstance(value, types.MethodType):
        owner = "session" if value.__self__ is session else value.__self__
        return ("method", value.__func__, owner)
    if isinstance(value, _AuthMechAttr):
        return ("auth", _comparable(value.method, session), value.is_builtin)
    if isinstance(value, dict):
        return [(key, _comparable(item, session)) for key, item in value.items()]
    if isinstance(value, str | int | float | bool | tuple | type(None) | Hooks | ssl.SSLContext):
        return value
    return type(value)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_session_is_set_up_as_aiosmtpd_sets_it_up(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, tls: bool
) -> None:
    """The listener's sessions skip aiosmtpd's scans of the handler and the session (made once);
    they end up with the same attributes, the same values, as aiosmtpd's constructor gives."""
    loop = asyncio.new_event_loop()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if tls else None
    try:
        with running(spool) as listener:
            hooks = Hooks(listener._config(session_module))
        options: dict[str, Any] = {
            "loop": loop,
            "data_size_limit": 1000,
            "enable_SMTPUTF8": True,
            "decode_data": False,
            "hostname": "mx.example.com",
            "ident": "ESMTP spoolmail",
            "tls_context": context,
            "timeout": 30.0,
            "auth_require_tls": True,
            "auth_exclude_mechanism": () if tls else ("PLAIN", "LOGIN"),
        }
        ours = [SmtpSession(hooks, sessions=set(), **options) for _ in range(2)]
        monkeypatch.setattr(session_module, "_QUICK_OPTIONS", frozenset())
        theirs = SmtpSession(hooks, sessions=set(), **options)
        expected = {key: _comparable(value, theirs) for key, value in vars(theirs).items()}
        assert bool(theirs._auth_methods) is tls  # the comparison covers AUTH's table
        for session in ours:
            assert {key: _comparable(value, session) for key, value in vars(session).items()} == (
                expected
            )
    finally:
        loop.close()
