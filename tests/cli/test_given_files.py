"""Files an operator names (DKIM keys, the password file, TLS certificates and CA file) that are
a FIFO, a device or far too big: one clear ConfigurationError, at once, never a hang.

Each was opened and read as a plain file: a FIFO hung the start (or, for the CA file, a SIGHUP's
reading in the middle of the service) until something wrote to it; ``/dev/zero`` was read until
memory ran out. Real files in a temp dir; a call that could hang runs in a daemon thread with a
deadline, so a regression fails instead of blocking the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spoolmail import Listener, PasswordFile, Router, Spool
from spoolmail._cli import assemble
from spoolmail._cli.settings import load_settings
from spoolmail._store.given import read_given
from spoolmail.exceptions import ConfigurationError
from tests.cli.test_delivery_policy_settings import settings_file
from tests.tlscerts import make_certificates

LISTENING: dict[str, Any] = {
    "addresses": ["127.0.0.1:0"],
    "router": Router(local_domains=["example.com"]),
}


def refused_at_once(call: Callable[[], object]) -> str:
    """The ConfigurationError's text ``call`` raises within 5 s (fails if it hangs or passes)."""
    raised: list[BaseException] = []

    def work() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            raised.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "it waited on the file"
    assert raised, "it was taken"
    assert isinstance(raised[0], ConfigurationError), raised[0]
    return str(raised[0])


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "named-pipe"
    os.mkfifo(path)
    return path


def test_read_given_says_what_is_there_instead(tmp_path: Path, fifo: Path) -> None:
    assert "it is a FIFO (named pipe)" in refused_at_once(
        lambda: read_given(fifo, what="key_file", most=10)
    )
    assert "it is a character device" in refused_at_once(
        lambda: read_given("/dev/zero", what="key_file", most=10)
    )
    assert "it is a folder" in refused_at_once(
        lambda: read_given(tmp_path, what="key_file", most=10)
    )
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    assert refused_at_once(lambda: read_given(big, what="key_file", most=10)) == (
        f"key_file {big} is over 10 bytes"
    )
    big.write_bytes(b"x" * 10)
    assert read_given(big, what="key_file", most=10) == b"x" * 10
    link = tmp_path / "link"
    link.symlink_to(big)  # an operator's own links are followed
    assert read_given(link, what="key_file", most=10) == b"x" * 10
    with pytest.raises(FileNotFoundError):
        read_given(tmp_path / "missing", what="key_file", most=10)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_dkim_key_file_that_is_a_fifo_or_a_device_is_one_clear_error(
    tmp_path: Path, fifo: Path, kind: str
) -> None:
    path = fifo if kind == "fifo" else Path("/dev/zero")
    config = settings_file(
        tmp_path, f'[spoolmail.dkim."example.com"]\nselector = "s"\nkey_file = "{path}"'
    )
    said = refused_at_once(lambda: assemble.dkim_policy(load_settings(config, {})))
    assert said.startswith('dkim."example.com": cannot read key_file ')
    assert ("FIFO" if kind == "fifo" else "character device") in said


def test_spoolmail_run_with_a_fifo_as_the_dkim_key_stops_at_once_with_one_line(
    tmp_path: Path, fifo: Path
) -> None:
    config = settings_file(
        tmp_path, f'[spoolmail.dkim."example.com"]\nselector = "s"\nkey_file = "{fifo}"'
    )
    command = ["--config", str(config), "--root", str(tmp_path / "r"), "run", "--once"]
    done = subprocess.run(
        [sys.executable, "-m", "spoolmail", *command],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    [line] = done.stderr.decode().splitlines()
    assert "key_file" in line
    assert "it is a FIFO (named pipe)" in line


def test_a_password_file_that_is_a_fifo_or_a_device_is_one_clear_error(fifo: Path) -> None:
    assert "cannot read password file" in refused_at_once(lambda: PasswordFile(fifo))
    assert "it is a character device" in refused_at_once(lambda: PasswordFile("/dev/zero"))


def test_tls_files_that_are_fifos_are_refused_before_ssl_opens_them(
    tmp_path: Path, fifo: Path
) -> None:
    (tmp_path / "tls").mkdir()
    certificates = make_certificates(tmp_path / "tls")
    with Spool("mem://") as spool:
        for certificate, key, named in (
            (fifo, certificates.server_key, "tls_certificate"),
            (certificates.server_certificate, fifo, "tls_key"),
        ):
            said = refused_at_once(
                lambda c=certificate, k=key: Listener(  # type: ignore[misc]
                    spool, tls_certificate=c, tls_key=k, **LISTENING
                ).start()
            )
            assert said == f"cannot read {named} {fifo}: it is a FIFO (named pipe)"
    settings = load_settings(None, {"tls_ca_file": str(fifo)})
    assert "cannot read tls_ca_file" in refused_at_once(lambda: assemble.check(settings))


def test_a_key_file_that_holds_no_private_key_is_named_with_its_table(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN NOTHING-----\nxx\n-----END NOTHING-----\n")
    config = settings_file(
        tmp_path, f'[spoolmail.dkim."example.com"]\nselector = "s"\nkey_file = "{garbage}"'
    )
    with pytest.raises(ConfigurationError) as raised:
        assemble.dkim_policy(load_settings(config, {}))
    assert str(raised.value).startswith(f"dkim.\"example.com\": key_file '{garbage}': ")
