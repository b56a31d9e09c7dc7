"""What ``spoolmail-sendmail`` imports: PHP's ``mail()`` and cron start it once a message.

Modules that only some sends need are imported when those need them: ``ctypes`` for syncfs
(a write-only Pickup), pathlib (and the urllib.parse and ipaddress it brings) for a settings
file named or looked for, tomllib for one read, ipaddress for an address literal, getpass for
a send without ``-f``, argparse for the ``spoolmail sendmail`` subcommand. Each was a
millisecond or more of the command's start-up (bench/README.md has the figures). These tests run
it in a fresh interpreter and look at ``sys.modules``; tests/cli/test_sendmail.py checks that
the sends behave the same.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from spoolmail._cli.main import EX_OK, main
from spoolmail._store.syncing import sync_file_system, syncfs

# Imported at first use, not with the module.
LAZY = (
    "argparse",
    "ctypes",
    "getpass",
    "ipaddress",
    "pathlib",
    "termios",
    "tomllib",
    "urllib.parse",
)


def loaded(code: str, *, stdin: bytes = b"", env: dict[str, str] | None = None) -> list[str]:
    """Which of :data:`LAZY` running ``code`` imported, in a fresh interpreter (those already
    there at its start, such as the test guard's ipaddress, not counted)."""
    script = (
        f"import sys\nbefore = set(sys.modules)\n{code}\n"
        f"print(' '.join(m for m in {LAZY!r} if m in set(sys.modules) - before))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=stdin,
        capture_output=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().split()


def test_importing_sendmail_imports_none_of_them() -> None:
    assert loaded("import spoolmail._cli.sendmail") == []


def test_a_send_with_a_sender_and_the_mailroot_in_the_environment_imports_none(
    tmp_path: Path,
) -> None:
    # As cron and git send-email run it: -f given, the MailRoot in $SPOOLMAIL_ROOT.
    root = tmp_path / "MailRoot"
    assert main(["--root", str(root), "init"], out=io.StringIO()) == EX_OK
    code = (
        "from spoolmail._cli.sendmail import main\n"
        "assert main(['-i', '-f', 'cron@example.com', 'ops@example.com']) == 0"
    )
    env = {"SPOOLMAIL_ROOT": str(root), "SPOOLMAIL_CONFIG": ""}
    assert loaded(code, stdin=b"Subject: hi\n\nhello\n", env=env) == []
    assert len(list((root / "Pickup").glob("*.eml"))) == 1


def test_a_send_naming_a_settings_file_imports_pathlib(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    assert main(["--root", str(root), "init"], out=io.StringIO()) == EX_OK
    config = tmp_path / "spoolmail.toml"
    config.write_text(f"[spoolmail]\nroot = {str(root)!r}\n")
    code = (
        "from spoolmail._cli.sendmail import main\n"
        "assert main(['-i', '-f', 'cron@example.com', 'ops@example.com']) == 0"
    )
    env = {"SPOOLMAIL_CONFIG": str(config)}
    assert {"pathlib", "tomllib"} <= set(loaded(code, stdin=b"Subject: hi\n\nhello\n", env=env))
    assert len(list((root / "Pickup").glob("*.eml"))) == 1


@pytest.mark.skipif(syncfs() is None, reason="no syncfs here (Linux 5.8 and later)")
def test_a_file_system_is_synced_with_ctypes_imported_at_the_call() -> None:
    with tempfile.TemporaryFile() as file:
        sync_file_system(file.fileno())  # no OSError: libc's syncfs was found and succeeded
