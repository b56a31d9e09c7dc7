"""``spoolmail log ID``: what happened to a message, from the mail log, through ``main(argv)``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from spoolmail._cli.main import main
from spoolmail.events import decode_event

MESSAGE = b"From: app@example.com\r\nTo: ops@example.com\r\nSubject: s\r\n\r\nbody\r\n"


def run(root: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", str(root), *argv], out=out), out.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "MailRoot"


@pytest.fixture
def finished(root: Path, tmp_path: Path) -> str:
    """A message delivered into Drop by ``run --once``: it has left the Queue."""
    source = tmp_path / "note.eml"
    source.write_bytes(MESSAGE)
    status, out = run(
        root, "submit", "--from", "app@example.com", "--to", "ops@example.com", str(source)
    )
    assert status == 0
    queue_id = out.strip()
    assert run(root, "run", "--once", "--local-domain", "example.com")[0] == 0
    assert run(root, "queue", "show", queue_id)[0] == 1  # no longer queued
    return queue_id


def test_log_tells_the_story_of_a_finished_message(root: Path, finished: str) -> None:
    status, out = run(root, "log", finished)
    assert status == 0
    lines = out.splitlines()
    assert [line.split(" ", 2)[1] for line in lines] == [f"{finished}:"] * 5
    stamp, _, text = lines[0].partition(" ")
    assert stamp.endswith("+00:00")
    assert text == f"{finished}: picked up file={finished}.eml"
    assert lines[1].endswith(
        f"from=<app@example.com>, size={_size(root, finished)}, nrcpt=1, "
        f"origin=pickup:{finished}.eml (queue active)"
    )
    assert f"dropped file=Drop/{finished}.eml" in lines[2]
    assert "to=<ops@example.com>, relay=local, delay=" in lines[3]
    assert lines[3].endswith(f"status=sent (250 2.0.0 delivered to Drop/{finished}.eml)")
    assert lines[4].endswith(f"{finished}: removed")


def _size(root: Path, queue_id: str) -> int:
    status, out = run(root, "log", queue_id, "--json")
    assert status == 0
    return int(json.loads(out.splitlines()[1])["size"])


def test_log_json_prints_the_stored_lines(root: Path, finished: str) -> None:
    status, out = run(root, "log", "--json", finished)
    assert status == 0
    stored = [
        line
        for path in sorted((root / "Log").iterdir())
        for line in path.read_text().splitlines()
        if json.loads(line)["queue_id"] == finished
    ]
    assert out.splitlines() == stored
    kinds = [decode_event(line).kind for line in stored]
    assert kinds == ["picked-up", "queued", "dropped", "delivered", "removed"]


@pytest.mark.parametrize(
    "hostile", ["../../etc/passwd", "a/b", "", "x" * 129, "id\x1b[2J", "..", "*"]
)
def test_a_bad_id_is_a_usage_error_and_touches_nothing(
    root: Path, hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(root, "log", hostile)
    assert (status, out) == (2, "")
    err = capsys.readouterr().err
    assert "is not a queue id" in err
    assert "\x1b" not in err  # shown escaped
    assert not root.exists()  # checked before the MailRoot is even opened


def test_an_id_the_log_does_not_know_is_exit_1(
    root: Path, finished: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(root, "log", "19ac9b2f1c0-00005e1f0c2a9b7d")
    assert (status, out) == (1, "")
    assert "the mail log in Log/ has nothing about 19ac9b2f1c0-00005e1f0c2a9b7d" in (
        capsys.readouterr().err
    )


def test_a_prefix_of_an_id_finds_nothing(root: Path, finished: str) -> None:
    assert run(root, "log", finished[:11])[0] == 1


def test_an_operators_order_is_in_the_mail_log_too(root: Path, tmp_path: Path) -> None:
    """`spoolmail queue hold` runs without a service: its order is logged all the same."""
    source = tmp_path / "note.eml"
    source.write_bytes(MESSAGE.replace(b"ops@example.com", b"ops@elsewhere.example"))
    queue_id = run(root, "submit", str(source))[1].strip()
    # A closed DNS port defers the remote recipient: the message stays queued.
    assert run(root, "run", "--once", "--dns-server", "127.0.0.1:9")[0] == 0
    assert run(root, "queue", "hold", queue_id)[0] == 0
    status, out = run(root, "log", queue_id)
    assert status == 0
    assert out.splitlines()[-1].endswith(f"{queue_id}: placed on hold by an operator")


def test_log_days_0_keeps_no_mail_log(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "note.eml"
    source.write_bytes(MESSAGE)
    assert run(root, "submit", str(source))[0] == 0
    assert run(root, "run", "--once", "--local-domain", "example.com", "--log-days", "0")[0] == 0
    assert len(list((root / "Drop").iterdir())) == 1
    assert not (root / "Log").exists()
