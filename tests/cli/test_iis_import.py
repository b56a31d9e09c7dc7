"""``spoolmail queue import-iis`` and the notes that point to it, through ``main(argv)``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from spoolmail._cli.main import EX_FAILED, EX_OK, EX_USAGE, main

IIS_FILE = "NTFS_6f7f0ab401c8a4b900000001.EML"
OTHER = "NTFS_6f7f0ab401c8a4b900000002.EML"
MESSAGE = (
    b"From: reports@example.com\r\nTo: bob@example.com\r\nCc: dan@remote.test\r\n"
    b"Subject: nightly\r\n\r\n.hidden dot\r\n"
)


def run(root: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", str(root), *argv], out=out), out.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A MailRoot copied from IIS: two Queue files whose envelopes stayed behind."""
    root = tmp_path / "MailRoot"
    (root / "Queue").mkdir(parents=True)
    (root / "Queue" / IIS_FILE).write_bytes(MESSAGE)
    (root / "Queue" / OTHER).write_bytes(b"Subject: no sender, no recipient\r\n\r\nx\r\n")
    return root


def test_queue_list_points_them_out(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(root, "queue") == (
        EX_OK,
        "The Queue is empty.\n"
        "-- and 2 IIS queue files without envelope, not delivered until imported with "
        f"'spoolmail queue import-iis': {IIS_FILE}, {OTHER}\n",
    )
    assert run(root, "queue", "list", "--json") == (EX_OK, "")  # stdout stays JSON lines
    assert "2 IIS queue files without envelope" in capsys.readouterr().err


def test_import_iis(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(root, "queue", "import-iis", "--dry-run")
    assert status == EX_USAGE  # the file without sender or recipient
    assert f"Queue/{IIS_FILE}: would go to Pickup/{IIS_FILE}, from reports@example.com to " in out
    assert os.listdir(root / "Pickup") == []

    status, out = run(root, "queue", "import-iis")
    assert status == EX_USAGE
    lines = out.splitlines()
    assert lines[0].startswith("Note: the envelope IIS kept in an NTFS stream is lost")
    assert "a blind copy that only the envelope named is not sent" in lines[0]
    assert lines[1:] == [
        f"Queue/{IIS_FILE}: to Pickup/{IIS_FILE}, from reports@example.com to "
        "bob@example.com, dan@remote.test"
    ]
    assert f"Queue/{OTHER}: no sender" in capsys.readouterr().err
    assert os.listdir(root / "Queue") == [OTHER]  # left for the operator to fix
    assert os.listdir(root / "Pickup") == [IIS_FILE]

    status, out = run(root, "queue", "import-iis", "NTFS_00.EML")
    assert status == EX_FAILED
    assert "no IIS queue file Queue/NTFS_00.EML" in capsys.readouterr().err


def test_import_iis_keeps_leading_dots_for_a_stuffing_service(root: Path, tmp_path: Path) -> None:
    """The settings file serves both commands: the import stuffs what the service un-stuffs."""
    config = tmp_path / "spoolmail.toml"
    config.write_text(
        f'[spoolmail]\nroot = "{root.as_posix()}"\nlocal_domains = ["example.com"]\n'
        'smart_host = "[127.0.0.1]:1"\npickup_dot_stuffed = true\n',
        encoding="utf-8",
    )
    (root / "Queue" / OTHER).unlink()
    assert main(["--config", str(config), "queue", "import-iis"], out=io.StringIO()) == EX_OK
    assert main(["--config", str(config), "run", "--once"], out=io.StringIO()) == EX_OK
    [dropped] = os.listdir(root / "Drop")
    assert (root / "Drop" / dropped).read_bytes().endswith(b"\r\n\r\n.hidden dot\r\n")
