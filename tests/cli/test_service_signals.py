"""``spoolmail run`` as a service, in a real subprocess: SIGHUP reads the settings again (and
reopens the log file), SIGTERM stops with nothing left claimed.

Nothing sleeps through an interval: each step polls for its effect (a log line, a Drop file)
until a deadline. Remote mail goes to a smart host that refuses (127.0.0.1:1), so nothing leaves
the machine.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import waiting

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX's"),
]

DEADLINE = 20.0


def until(what: str, check: Callable[[], bool]) -> None:
    waiting.until(what, check, deadline=DEADLINE)


def settings(root: Path, *, local: list[str], extra: str = "") -> str:
    domains = ", ".join(f'"{d}"' for d in local)
    return (
        "[spoolmail]\n"
        f'root = "{root}"\n'
        f"local_domains = [{domains}]\n"
        'smart_host = "[127.0.0.1]:1"\n'
        "poll_interval = 0.05\n"
        f"{extra}"
    )


def submit(root: Path, to: str, name: str) -> None:
    temp = root / "Pickup" / f".{name}.tmp"
    temp.write_bytes(f"From: app@localhost\r\nTo: {to}\r\nSubject: {name}\r\n\r\nhi\r\n".encode())
    temp.rename(temp.with_name(f"{name}.eml"))


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, Path]]:
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    config.write_text(settings(root, local=["localhost"]))
    log_file = tmp_path / "spoolmail.log"
    with (tmp_path / "stderr").open("wb") as stderr, subprocess.Popen(
        [sys.executable, "-m", "spoolmail", "--config", str(config), "run",
         "--log-file", str(log_file)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=stderr,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith(b"spoolmail: serving ")
            yield process, root, config, log_file
        finally:
            if process.poll() is None:
                process.kill()


def test_sighup_applies_new_settings_and_keeps_what_needs_a_restart(
    service: tuple[subprocess.Popen[bytes], Path, Path, Path], tmp_path: Path
) -> None:
    process, root, config, log_file = service

    # new.test is not local yet: its mail goes to the smart host, which refuses: deferred.
    submit(root, "a@new.test", "first")
    until("a@new.test deferred", lambda: "to=<a@new.test>" in read(log_file))
    assert "status=deferred" in read(log_file)
    assert not os.listdir(root / "Drop")

    # A wrong file: logged, and the settings in use stay.
    config.write_text(settings(root, local=["localhost"], extra='max_connections = "many"\n'))
    process.send_signal(signal.SIGHUP)
    until("the bad file is refused", lambda: "the settings in use stay" in read(log_file))
    assert "'max_connections' must be an integer" in read(log_file)
    assert process.poll() is None

    # logrotate moves the log away; the good file adds new.test and moves the MailRoot, which
    # needs a restart.
    log_file.rename(tmp_path / "spoolmail.log.1")
    elsewhere = tmp_path / "Elsewhere"
    config.write_text(settings(elsewhere, local=["localhost", "new.test"]))
    process.send_signal(signal.SIGHUP)
    until("the log reopened, the settings in use", lambda: "are in use" in read(log_file))
    log = read(log_file)
    assert re.search(r"SIGHUP: root changed from .*MailRoot.* that needs a restart", log), log
    assert "changed: local_domains\n" in log

    # From the next tick on, new.test is local: its mail lands in Drop.
    submit(root, "b@new.test", "second")
    until("b@new.test in Drop", lambda: len(os.listdir(root / "Drop")) == 1)
    assert not elsewhere.exists()

    process.send_signal(signal.SIGTERM)
    assert process.wait(DEADLINE) == 0
    # Nothing claimed: no Queue/ID.OWNER.env, no owner file; the deferred message waits.
    queue = os.listdir(root / "Queue")
    assert [n for n in queue if n.endswith(".env") and n.count(".") > 1] == []
    assert len([n for n in queue if n.endswith(".env")]) == 1
    assert [n for n in os.listdir(root / "SortTemp") if n.endswith(".owner")] == []
    assert "stopping after this tick" in read(log_file)


def test_sighup_without_a_settings_file_reopens_the_log_and_goes_on(tmp_path: Path) -> None:
    log_file = tmp_path / "spoolmail.log"
    with subprocess.Popen(
        [sys.executable, "-m", "spoolmail", "run", "--log-file", str(log_file),
         "--poll-interval", "0.05"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith(b"spoolmail: serving ")
            log_file.rename(tmp_path / "old.log")
            process.send_signal(signal.SIGHUP)
            until("reopened", lambda: "no settings file to read again" in read(log_file))
            submit(tmp_path / "MailRoot", "you@localhost", "hello")
            until("delivered", lambda: len(os.listdir(tmp_path / "MailRoot" / "Drop")) == 1)
            process.send_signal(signal.SIGINT)
            assert process.wait(DEADLINE) == 0
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("command", ["run", "listen"])
def test_sighup_gives_the_listener_new_domains_for_the_next_session(
    tmp_path: Path, command: str
) -> None:
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    config.write_text(settings(root, local=["localhost"], extra='listen = ["127.0.0.1:0"]\n'))
    log_file = tmp_path / "spoolmail.log"
    with subprocess.Popen(
        [sys.executable, "-m", "spoolmail", "--config", str(config), command,
         "--log-file", str(log_file)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            banner = process.stdout.readline().decode()
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", banner)
            assert found, banner
            port = int(found.group(1))

            def rcpt() -> int:
                with smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE) as client:
                    client.ehlo("client.test")
                    client.mail("a@client.test")
                    return client.rcpt("x@new.test")[0]

            assert rcpt() == 550  # not local, and 127.0.0.1 may not relay
            config.write_text(
                settings(root, local=["localhost", "new.test"], extra='listen = ["127.0.0.1:0"]\n')
            )
            process.send_signal(signal.SIGHUP)
            # Each worker process (run --workers) reloads; any may take the session.
            workers = re.search(r"; (\d+) workers;", banner)
            count = int(workers.group(1)) if workers else 1
            until(
                "reloaded",
                lambda: read(log_file).count("the new settings are in use") == count,
            )
            assert rcpt() == 250
            process.send_signal(signal.SIGTERM)
            assert process.wait(DEADLINE) == 0
        finally:
            if process.poll() is None:
                process.kill()
