"""The whole path against a real MTA's test server: Postfix's ``smtp-sink`` as the smart host.

``smtp-sink`` (Debian's ``postfix``) takes mail and throws it away, or, with ``-d``, dumps each
transaction to a file of its own. It is the real server whose EHLO reply ends with an empty
``250 `` line, which once made every delivery to it an internal error. Several messages go through
a :class:`~spoolmail.MailService` with the smart host ``[127.0.0.1]:PORT``: all of them are
delivered, and the sink's dump files hold each one. Then the sink refuses the end of DATA
(``-f .``): the transport answers each message with that refusal and starts the transaction after
a failed one with RSET. Real files (OSFS), real sockets, and a real process on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spoolmail import MailService, Router, Spool
from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.smtp import SmtpTimeouts, SmtpTransport
from spoolmail.testing import FakeClock
from tests.peers import require_program

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
START_TIMEOUT = 5.0
DUMP_TIMEOUT = 5.0
SHORT = SmtpTimeouts(connect=5, greeting=5, ehlo=5, mail=5, rcpt=5, data_start=5, data_end=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def smtp_sink(*options: str, dump: Path | None = None) -> Iterator[int]:
    """``smtp-sink`` on 127.0.0.1 and a free port, until the block ends; yields the port.

    As root it must drop privileges (``-u``, smtp-sink(1)); ``dump`` must then be a directory
    the user it becomes can write to (:func:`dump_directory`).
    """
    program = require_program("smtp-sink", package="postfix")
    command = [program, *options]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]
    if dump is not None:
        command += ["-d", f"{dump}/message."]
    port = free_port()
    # -4: the IPv4 loopback only; the backlog is the last argument.
    process = subprocess.Popen(
        [*command, "-4", f"{HOST}:{port}", "16"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_listening(process, port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _wait_until_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"smtp-sink exited with {process.returncode}: {error.strip()}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"smtp-sink did not listen on {HOST}:{port} within {START_TIMEOUT:g} s")


def dumped(directory: Path, count: int) -> list[bytes]:
    """The sink's dump files, once there are ``count`` of them, each complete."""
    deadline = time.monotonic() + DUMP_TIMEOUT
    while True:
        files = sorted(directory.glob("message.*"))
        contents = [path.read_bytes() for path in files]
        # smtp-sink(1): a dump ends with an empty line after the message.
        if len(files) >= count and all(c.endswith(b"\n\n") for c in contents):
            return contents
        if time.monotonic() > deadline:
            raise AssertionError(f"smtp-sink dumped {len(files)} of {count} messages")
        time.sleep(0.05)


@pytest.fixture
def dump_directory() -> Iterator[Path]:
    """A directory smtp-sink can dump into after it dropped to ``nobody``: pytest's own temporary
    directories are private to this user, so this one is in the system's, open to all."""
    directory = Path(tempfile.mkdtemp(prefix="spoolmail-smtp-sink-"))
    directory.chmod(0o777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Iterator[Spool]:
    with Spool(str(tmp_path / "MailRoot"), clock=clock) as spool:
        yield spool


def test_messages_are_delivered_through_smtp_sink(
    spool: Spool, clock: FakeClock, dump_directory: Path
) -> None:
    subjects = [f"report {n}" for n in range(5)]
    with smtp_sink(dump=dump_directory) as port:
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smart_host=f"[{HOST}]:{port}"),
            transport=SmtpTransport(helo_name="mail.example.com", timeouts=SHORT),
            clock=clock,
            fqdn="mail.example.com",
        )
        try:
            for n, subject in enumerate(subjects):
                spool.submit(
                    f"From: alice@example.com\r\nTo: bob{n}@remote.test, carol@remote.test\r\n"
                    f"Subject: {subject}\r\n\r\nline one\r\n.a line with a dot\r\n".encode()
                )
            spool.submit(b"From: alice@example.com\r\nTo: dave@remote.test\r\n\r\ncaf\xc3\xa9\r\n")
            report = service.run_once()
        finally:
            service.close()
        dumps = dumped(dump_directory, 6)

    assert len(report.picked_up) == 6
    assert len(report.delivered) == 11  # every recipient, none deferred, none failed
    assert report.deferred == ()
    assert report.failed == ()
    assert sorted(report.finished) == sorted(report.picked_up)
    assert list(spool.queued()) == []
    assert list(spool.badmail()) == []
    # The sink got each message once, with its envelope.
    assert len(dumps) == 6
    for n, subject in enumerate(subjects):
        [dump] = [d for d in dumps if f"Subject: {subject}\n".encode() in d]
        assert b"X-Mail-Args: <alice@example.com>" in dump
        assert f"X-Rcpt-Args: <bob{n}@remote.test>".encode() in dump
        assert b"X-Rcpt-Args: <carol@remote.test>" in dump
        # The sink removes one leading dot (RFC 5321 section 4.5.2): this one went stuffed.
        assert dump.endswith(b"\nline one\n.a line with a dot\n\n")
    [eight_bit] = [d for d in dumps if b"caf\xc3\xa9" in d]
    assert b"BODY=8BITMIME" in eight_bit


def test_a_refused_end_of_data_is_followed_by_rset_at_smtp_sink() -> None:
    transcript = Transcript(clock=lambda: datetime(2026, 11, 28, tzinfo=UTC))
    data = b"From: alice@example.com\r\nTo: bob@remote.test\r\n\r\nhi\r\n"
    message = Outgoing(
        id="sink",
        sender="alice@example.com",
        recipients=("bob@remote.test",),
        size=len(data),
        open=lambda: io.BytesIO(data),
    )
    # -f .: the sink answers every final "." with its hard error.
    with (
        smtp_sink("-f", ".") as port,
        SmtpTransport(helo_name="mail.example.com", timeouts=SHORT) as transport,
    ):
        target = Target(HOST, port, literal=True)
        first = transport.send(target, message, transcript)
        second = transport.send(target, message, transcript)
    refused = Reply(500, "5.3.0", "Error: command failed", host=HOST)
    assert first == second == {"bob@remote.test": refused}
    sent = [line.split("> ", 1)[1] for line in transcript.lines if "> " in line]
    assert sent.count("RSET") == 1
    assert sent.index("RSET") > sent.index("DATA")
    assert sent.count("EHLO mail.example.com") == 1  # one connection, reused
