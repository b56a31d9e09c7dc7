"""``spoolmail config`` checks the DKIM signers as ``run`` builds them (``assemble.check_dkim``).

A key file that is missing, holds no private key, or holds another algorithm's key is what
``run`` would refuse at start: ``config`` says it and exits 2. A key file this user may not read
is no error (``run`` reads the keys as root, before it drops privileges): it is said as not
checked. The last test runs the installed ``spoolmail`` script as another user (setpriv), as CI
runs as root.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spoolmail._cli.dkim import keygen
from spoolmail._cli.main import EX_OK, EX_USAGE, main

SCRIPT = Path(sys.executable).parent / "spoolmail"
ROOT_ONLY = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (as CI runs)"
)
STRANGER = 2_000_301  # an id no account has: setpriv takes numbers


def settings(path: Path, key_file: Path, *, algorithm: str | None = None) -> Path:
    extra = f'algorithm = "{algorithm}"\n' if algorithm else ""
    path.write_text(
        f'[spoolmail.dkim."example.com"]\nselector = "s1"\nkey_file = "{key_file}"\n{extra}'
    )
    return path


def config(path: Path) -> int:
    return main(["--config", str(path), "config"], out=io.StringIO())


def test_a_good_key_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = keygen("example.com", "s1", algorithm="ed25519", out_dir=tmp_path / "keys")
    assert config(settings(tmp_path / "s.toml", key)) == EX_OK
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("content", "algorithm", "fragment"),
    [
        (None, None, "No such file or directory"),
        (b"not a key\n", None, "key_file"),
        (b"", None, "key_file"),
        ("ed25519", "rsa-sha256", "holds a ed25519-sha256 key, not rsa-sha256"),
    ],
    ids=["missing", "garbage", "empty", "another-algorithm"],
)
def test_a_key_run_would_refuse_is_said_and_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | str | None,
    algorithm: str | None,
    fragment: str,
) -> None:
    key = tmp_path / "s1.private"
    if content == "ed25519":
        key, _ = keygen("example.com", "s1", algorithm="ed25519", out_dir=tmp_path / "keys")
    elif isinstance(content, bytes):
        key.write_bytes(content)
    assert config(settings(tmp_path / "s.toml", key, algorithm=algorithm)) == EX_USAGE
    err = capsys.readouterr().err
    assert 'dkim."example.com"' in err
    assert fragment in err


@ROOT_ONLY
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_a_key_this_user_may_not_read_is_said_and_is_no_error(shared_root: Path) -> None:
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install spoolmail (pip install -e .) to make it")
    key, _ = keygen("example.com", "s1", algorithm="ed25519", out_dir=shared_root / "keys")
    # The folder may be entered, the key (0600, root's) not read.
    (shared_root / "keys").chmod(0o755)
    path = settings(shared_root / "s.toml", key)
    path.chmod(0o644)
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={STRANGER}",
            f"--regid={STRANGER}",
            "--clear-groups",
            str(SCRIPT),
            "--config",
            str(path),
            "config",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert done.returncode == EX_OK, done.stderr
    assert "key_file" in done.stderr
    assert "not read (no permission here); run reads it before it drops root" in done.stderr
    # As root, the same file is read and checked.
    assert config(path) == EX_OK
