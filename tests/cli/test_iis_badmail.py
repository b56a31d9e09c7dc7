"""What an IIS MailRoot brings besides Pickup: BadMail entries with IIS names and reports, and
the note at ``spoolmail run`` about Queue files that lost their envelope in the copy."""

from __future__ import annotations

import codecs
import io
import json
import os
from pathlib import Path

import pytest

from spoolmail import Spool
from spoolmail._cli.main import EX_OK, main

IIS_FILE = "NTFS_6f7f0ab401c8a4b900000001.EML"
QUEUED_BY_IIS = (
    b"From: reports@example.com\r\nTo: bob@example.com\r\nSubject: nightly\r\n\r\nbody\r\n"
)


def run(root: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", str(root), *argv], out=out), out.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "MailRoot"
    (root / "Queue").mkdir(parents=True)
    return root


def test_run_says_so_at_the_start(root: Path) -> None:
    (root / "Queue" / IIS_FILE).write_bytes(QUEUED_BY_IIS)
    status, out = run(root, "run", "--once", "--local-domain", "example.com")
    assert status == EX_OK
    assert f"Queue/{IIS_FILE}: IIS queue file, not delivered until imported\n" in out
    assert os.listdir(root / "Queue") == [IIS_FILE]


# -- BadMail folders copied from IIS ----------------------------------------------------------


def test_iis_badmail_entries_are_listed_not_fatal(root: Path) -> None:
    """IIS names (NTFS_*), a CRLF report, a UTF-16 one, a binary .BDP: listed, never a crash."""
    with Spool(str(root)) as spool:
        store = spool._store
        store.write("BadMail", "NTFS_01.BAD", QUEUED_BY_IIS)
        store.write(
            "BadMail",
            "NTFS_01.BDR",
            b"Unable to deliver this message because the following error was encountered: "
            b'"This message is a delivery status notification that cannot be delivered.".\r\n'
            b"\r\nThe specific error code was 0xC00402C7.\r\n",
        )
        store.write("BadMail", "NTFS_01.BDP", bytes(range(256)))  # IIS's undocumented binary
        store.write(
            "BadMail",
            "NTFS_02.BDR",
            codecs.BOM_UTF16_LE
            + "Error is processing file in pickup directory.\r\n".encode("utf-16-le"),
        )
        store.write("BadMail", "{5E3A-NOT-AN-ID}.BDR", b"x\r\n")
        first, second = spool.badmail()
        assert first.reason == (
            "Unable to deliver this message because the following error was encountered: "
            '"This message is a delivery status notification that cannot be delivered.".'
        )
        assert (first.envelope, first.has_message) == (None, True)
        assert "0xC00402C7" in first.report
        assert second.reason == "Error is processing file in pickup directory."
        assert spool.badmail_message("NTFS_01") == QUEUED_BY_IIS


def test_badmail_list_copes_with_iis_entries(root: Path) -> None:
    badmail = root / "BadMail"
    badmail.mkdir()
    (badmail / "NTFS_01.BAD").write_bytes(QUEUED_BY_IIS)
    (badmail / "NTFS_01.BDR").write_bytes(b"Error is processing file in pickup directory.\r\n")
    (badmail / "NTFS_01.BDP").write_bytes(bytes(range(256)))
    status, out = run(root, "badmail", "list", "--json")
    assert status == EX_OK
    assert json.loads(out) == {
        "id": "NTFS_01",
        "reason": "Error is processing file in pickup directory.",
        "has_message": True,
        "origin": None,
        "sender": None,
        "recipients": [],
    }
    status, out = run(root, "badmail")
    assert (status, out.splitlines()[-1]) == (EX_OK, "-- 1 entry")
    status, out = run(root, "badmail", "show", "NTFS_01")
    assert status == EX_OK
    assert "Envelope:     unknown (no readable .BDP)" in out
