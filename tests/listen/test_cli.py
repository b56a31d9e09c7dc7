"""The listener in the ``spoolmail`` command: through ``main(argv)`` and as a subprocess."""

from __future__ import annotations

import io
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spoolmail import PasswordFile, Spool
from spoolmail._cli.main import main
from spoolmail._cli.settings import load_settings
from tests.integration.commands import spoolmail_run

MESSAGE = b"From: a@client.test\r\nSubject: cli\r\n\r\nhello\r\n"


def test_listen_passwd_prints_a_line_the_password_file_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\n"))
    out = io.StringIO()
    assert main(["listen-passwd", "app"], out=out) == 0
    line = out.getvalue().strip()
    assert line.startswith("app:scrypt$")
    assert "s3cret" not in line
    (tmp_path / "passwd").write_text(line + "\n")
    users = PasswordFile(tmp_path / "passwd")
    assert users("app", "s3cret pass")
    assert not users("app", "s3cret")


@pytest.mark.parametrize("user", ["a:b", " "])
def test_listen_passwd_refuses_a_name_with_a_colon(
    user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["listen-passwd", user], out=io.StringIO()) == 2


def test_listen_without_an_address_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["--root", str(tmp_path / "MailRoot"), "listen"], out=io.StringIO()) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "localhost:25"], "not ADDRESS:PORT"),
        (["--listen", "127.0.0.1"], "not ADDRESS:PORT"),
        (["--listen", "127.0.0.1:2525", "--relay-network", "everyone"], "relay_networks"),
        (["--listen", "127.0.0.1:0", "--auth-file", "/nonexistent"], "password file"),
        (["--listen", "127.0.0.1:0", "--tls-key", "k.pem"], "go together"),
    ],
)
def test_bad_listen_settings_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status = main(["--root", str(tmp_path / "MailRoot"), "listen", *argv], out=io.StringIO())
    assert status == 2
    assert message in capsys.readouterr().err


def test_the_settings_file_holds_the_listener(tmp_path: Path) -> None:
    path = tmp_path / "spoolmail.toml"
    path.write_text(
        "[spoolmail]\n"
        'listen = ["127.0.0.1:2525", "[::1]:2525"]\n'
        'relay_networks = ["192.0.2.0/24"]\n'
        'listen_deny = ["203.0.113.0/24"]\n'
        "max_sessions = 20\n"
        "listen_timeout = 60\n"
        "listen_reuse_port = true\n"
    )
    settings = load_settings(path, {})
    assert settings.listen == ("127.0.0.1:2525", "[::1]:2525")
    assert settings.relay_networks == ("192.0.2.0/24",)
    assert (settings.max_sessions, settings.listen_timeout, settings.listen_reuse_port) == (
        20,
        60,
        True,
    )
    assert load_settings(None, {}).listen == ()  # by default nothing listens


def _start(command: list[str]) -> tuple[subprocess.Popen[str], str, int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "listening on 127.0.0.1:" in line, line + (
        process.stderr.read() if process.stderr else ""
    )
    found = re.search(r"listening on (\S+?):(\d+)\b", line)
    assert found is not None, line
    host, port = found.groups()
    return process, host, int(port)


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.communicate()


def test_run_listens_and_delivers_into_drop(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    process, host, port = _start(spoolmail_run(root, "--listen", "127.0.0.1:0"))
    try:
        with smtplib.SMTP(host, port, local_hostname="client.test", timeout=10) as client:
            assert client.sendmail("a@client.test", ["bob@example.com"], MESSAGE) == {}
        deadline = time.monotonic() + 30
        while not list((root / "Drop").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.05)
        (dropped,) = (root / "Drop").glob("*.eml")
        content = dropped.read_bytes()
        assert b"Received: from client.test ([127.0.0.1])" in content
        assert b"by mail.example.com (spoolmail) with ESMTP id" in content
    finally:
        _stop(process)


def test_listen_alone_queues_for_a_run_elsewhere(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    command = [
        sys.executable,
        "-m",
        "spoolmail",
        "--root",
        str(root),
        "listen",
        "--listen",
        "127.0.0.1:0",
        "--local-domain",
        "example.com",
        "--fqdn",
        "mx.example.com",
    ]
    process, host, port = _start(command)
    try:
        with smtplib.SMTP(host, port, local_hostname="client.test", timeout=10) as client:
            client.ehlo()
            assert client.mail("a@client.test")[0] == 250
            assert client.rcpt("x@remote.test")[0] == 550  # nobody relays
            assert client.rcpt("bob@example.com")[0] == 250
            code, text = client.data(MESSAGE)
            assert code == 250
    finally:
        _stop(process)
    queue_id = text.decode().rsplit(" ", 1)[1]
    with Spool(root) as spool:
        assert spool.queued_message(queue_id).envelope.origin == "smtp:127.0.0.1"


def test_run_without_listen_opens_no_port(tmp_path: Path) -> None:
    process = subprocess.Popen(
        spoolmail_run(tmp_path / "MailRoot"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("spoolmail: serving ")
    assert "listening" not in line
    _stop(process)


def test_the_settings_shown_in_the_docs_load(tmp_path: Path) -> None:
    page = (Path(__file__).parents[2] / "docs" / "listener.md").read_text()
    (block,) = re.findall(r"^```toml\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
    path = tmp_path / "spoolmail.toml"
    path.write_text(block)
    settings = load_settings(path, {})
    assert settings.listen == ("0.0.0.0:25", "[::]:25")
    assert settings.auth_file == "/etc/spoolmail/passwd"
