"""The ``spoolmail`` command, through ``main(argv)``; the daemon once as a real subprocess."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spoolmail import Spool
from spoolmail._cli import assemble
from spoolmail._cli.main import main
from spoolmail._cli.settings import load_settings
from spoolmail._core.ids import is_queue_id
from spoolmail.exceptions import ConfigurationError


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), out=out)
    return status, out.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "MailRoot"


def test_init_creates_the_mailroot(root: Path) -> None:
    assert run("--root", str(root), "init") == (0, f"MailRoot ready at {root}\n")
    assert sorted(p.name for p in root.iterdir()) == [
        "BadMail",
        "Drop",
        "Pickup",
        "Queue",
        "SortTemp",
    ]


def test_submit_then_run_once_delivers_to_drop(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "note.eml"
    source.write_bytes(b"From: app@example.com\nTo: ignored@example.com\nSubject: s\n\nbody\n")
    status, out = run(
        "--root",
        str(root),
        "submit",
        "--from",
        "App <app@example.com>",
        "--to",
        "ops@example.com",
        str(source),
    )
    assert status == 0
    # It prints the queue id, which names the Pickup file and stays the message's id.
    queue_id = out.removesuffix("\n")
    assert is_queue_id(queue_id)
    name = f"{queue_id}.eml"
    assert os.listdir(root / "Pickup") == [name]
    assert (
        (root / "Pickup" / name)
        .read_bytes()
        .startswith(b"x-sender: <app@example.com>\r\nx-receiver: <ops@example.com>\r\n")
    )
    assert run("--root", str(root), "run", "--once", "--local-domain", "example.com")[0] == 0
    [dropped] = os.listdir(root / "Drop")
    assert dropped == name
    assert (
        (root / "Drop" / dropped)
        .read_bytes()
        .startswith(b"x-sender: app@example.com\r\nx-receiver: ops@example.com\r\n")
    )
    status, out = run("--root", str(root), "drop", "--json")
    assert json.loads(out) == {
        "id": dropped.removesuffix(".eml"),
        "sender": "app@example.com",
        "recipients": ["ops@example.com"],
        "size": (root / "Drop" / dropped).stat().st_size,
    }


def test_submit_refuses_a_message_that_could_only_be_badmail(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.eml"
    source.write_bytes(b"Subject: no addresses\n\nbody\n")
    assert run("--root", str(root), "submit", str(source))[0] == 2
    assert "no sender" in capsys.readouterr().err
    assert os.listdir(root / "Pickup") == []


def limited(tmp_path: Path, root: Path, size: int) -> list[str]:
    """The command line's start for a MailRoot whose settings file sets max_message_size."""
    config = tmp_path / f"limit-{size}.toml"
    config.write_text(f'[spoolmail]\nroot = "{root}"\nmax_message_size = {size}\n')
    return ["--config", str(config)]


def test_submit_refuses_a_message_over_the_size_limit_at_the_limits_edge(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service takes no Pickup file over max_message_size: submit says so at once (5.3.4,
    status 2) instead of writing one for BadMail; one whose file is exactly at it goes."""
    source = tmp_path / "note.eml"
    source.write_bytes(b"From: app@example.com\r\nTo: ops@example.com\r\n\r\n" + b"x" * 500)
    assert run("--root", str(root), "submit", str(source))[0] == 0
    [written] = list((root / "Pickup").iterdir())
    size = written.stat().st_size  # the Pickup file the service would measure
    written.unlink()
    assert run(*limited(tmp_path, root, size - 1), "submit", str(source))[0] == 2
    assert f"over the limit of {size - 1} bytes" in capsys.readouterr().err
    assert list((root / "Pickup").iterdir()) == []
    assert run(*limited(tmp_path, root, size), "submit", str(source))[0] == 0
    assert len(list((root / "Pickup").iterdir())) == 1


def test_submit_reads_no_more_of_an_endless_stdin_than_the_limit(
    root: Path, tmp_path: Path
) -> None:
    """``spoolmail submit < /dev/zero`` ends at once with the reason, its memory bounded by
    the size limit, not by the input."""
    command = [sys.executable, "-m", "spoolmail", *limited(tmp_path, root, 100_000), "submit"]
    with open("/dev/zero", "rb") as zeros:
        done = subprocess.run(
            command, stdin=zeros, capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode == 2, done.stderr
    assert "over the limit of 100000 bytes" in done.stderr


def test_submit_missing_file(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--root", str(root), "submit", str(root / "nope.eml"))[0] == 1
    assert "cannot read" in capsys.readouterr().err


def test_queue_and_badmail_listings(root: Path) -> None:
    run("--root", str(root), "init")
    (root / "Pickup" / "remote.eml").write_bytes(
        b"From: a@example.com\r\nTo: x@remote.test\r\n\r\nhi\r\n"
    )
    (root / "Pickup" / "broken.eml").write_bytes(b"no headers here\r\n")
    down = "[127.0.0.1]:1"  # a smart host that is down: nothing listens there
    assert (
        run(
            "--root",
            str(root),
            "run",
            "--once",
            "--local-domain",
            "example.com",
            "--smart-host",
            down,
        )[0]
        == 0
    )
    status, out = run("--root", str(root), "queue", "--json")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["state"] == "queued"
    assert row["recipients"][0]["address"] == "x@remote.test"
    assert row["recipients"][0]["reply"].startswith("451 4.4.1 connection to 127.0.0.1:1 failed")
    status, out = run("--root", str(root), "badmail")
    assert status == 0
    assert "5.6.0 line 1 is not a header field" in out


def test_settings_file_and_its_errors(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "spoolmail.toml"
    config.write_text(
        f'[spoolmail]\nroot = "{root}"\nlocal_domains = ["corp.test"]\nretry = "postfix"\n'
    )
    (root / "Pickup").mkdir(parents=True)
    (root / "Pickup" / "m.eml").write_bytes(b"From: a@corp.test\r\nTo: b@corp.test\r\n\r\nhi\r\n")
    assert run("--config", str(config), "run", "--once")[0] == 0
    assert len(os.listdir(root / "Drop")) == 1

    config.write_text('[spoolmail]\nsmarthost = "x"\n')
    assert run("--config", str(config), "init")[0] == 2
    assert "unknown setting 'smarthost'" in capsys.readouterr().err
    config.write_text('[spoolmail]\nmax_hop_count = "15"\n')
    assert run("--config", str(config), "init")[0] == 2
    assert "'max_hop_count' must be an integer" in capsys.readouterr().err
    config.write_text('[spoolmail]\nretry = "sometimes"\n')
    assert run("--config", str(config), "init")[0] == 2
    assert "retry must be one of" in capsys.readouterr().err
    assert run("--config", str(tmp_path / "missing.toml"), "init")[0] == 2
    assert "cannot read settings file" in capsys.readouterr().err


def test_bad_smart_host_flag_is_a_usage_error(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--root", str(root), "run", "--once", "--smart-host", "[nope]")[0] == 2
    assert "brackets hold an IP address" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_quick_start_serves_until_ctrl_c(tmp_path: Path) -> None:
    """The README's first command (``.venv/bin/spoolmail run``, here through ``-m``) in a folder
    with no settings, and its Pickup example: a finished file renamed in."""
    with subprocess.Popen(
        [sys.executable, "-m", "spoolmail", "run"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert banner.startswith(b"spoolmail: serving MailRoot (local domains: localhost")
            temp = tmp_path / "MailRoot" / "Pickup" / ".hello.tmp"
            temp.write_bytes(
                b"x-sender: me@localhost\r\nx-receiver: you@localhost\r\nSubject: hi\r\n\r\n"
                b"hello\r\n"
            )
            temp.rename(temp.with_name("hello.eml"))
            for _ in range(500):
                if os.listdir(tmp_path / "MailRoot" / "Drop"):
                    break
                time.sleep(0.01)
            assert len(os.listdir(tmp_path / "MailRoot" / "Drop")) == 1
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(10) == 0


def test_pickup_settle_from_flag_and_settings_file(tmp_path: Path) -> None:
    """``--pickup-settle`` and the ``pickup_settle`` / ``pickup_open_warning`` settings reach the
    service that judges whether a Pickup file's writer is done."""
    config = tmp_path / "spoolmail.toml"
    config.write_text("[spoolmail]\npickup_settle = 0.5\npickup_open_warning = 60\n")
    from_file = load_settings(config, {})
    from_flag = load_settings(config, {"pickup_settle": 7.0})
    with Spool("mem://") as first, Spool("mem://") as second:
        service = assemble.service(from_file, first)
        assert service._store.readiness.settle == 0.5
        assert service._store.readiness.open_warning == 60
        service.close()
        service = assemble.service(from_flag, second)
        assert service._store.readiness.settle == 7.0
        service.close()
    with pytest.raises(ConfigurationError, match="pickup_settle must be 0 or more"):
        load_settings(None, {"pickup_settle": -1.0})
    config.write_text('[spoolmail]\npickup_settle = "soon"\n')
    with pytest.raises(ConfigurationError, match="'pickup_settle' must be a number"):
        load_settings(config, {})
