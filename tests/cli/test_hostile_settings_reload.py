"""The operator's settings file and signals as hostile input: a settings path that is a FIFO or
a device, waits and worker counts the system cannot take, a SIGHUP while ``spoolmail run`` is
starting, SIGHUPs in a burst with a SIGTERM among them, numeric ids for ``user``.

Real subprocesses with deadlines (a hang fails the test instead of blocking it), real signals,
real MailRoots in temporary folders; ``load_settings`` where only the reading is at stake.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spoolmail._cli import privileges
from spoolmail._cli.settings import keys, load_settings
from spoolmail._cli.status import EX_USAGE
from spoolmail.exceptions import ConfigurationError
from tests import waiting

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals and FIFOs")

DEADLINE = 20.0


def until(what: str, check: Callable[[], bool]) -> None:
    waiting.until(what, check, deadline=DEADLINE)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def settings(root: Path, extra: str = "") -> str:
    return (
        f'[spoolmail]\nroot = "{root}"\nsmart_host = "[127.0.0.1]:1"\npoll_interval = 0.05\n{extra}'
    )


def submit(root: Path, name: str) -> None:
    temp = root / "Pickup" / f".{name}.tmp"
    temp.write_bytes(
        f"From: app@localhost\r\nTo: you@localhost\r\nSubject: {name}\r\n\r\nhi\r\n".encode()
    )
    temp.rename(temp.with_name(f"{name}.eml"))


def spoolmail(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spoolmail", *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, Path]]:
    """``spoolmail run`` (one process) with a settings file and a log file."""
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    config.write_text(settings(root, "workers = 1\n"))
    log_file = tmp_path / "spoolmail.log"
    argv = ["-m", "spoolmail", "--config", str(config), "run", "--log-file", str(log_file)]
    with serving(argv, tmp_path, b"spoolmail: serving ") as process:
        yield process, root, config, log_file


@contextlib.contextmanager
def serving(argv: list[str], cwd: Path, says: bytes) -> Iterator[subprocess.Popen[bytes]]:
    """``python ARGV`` once its first line starts with ``says``; killed at the end if it still
    runs."""
    with subprocess.Popen(
        [sys.executable, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith(says)
            yield process
        finally:
            if process.poll() is None:
                process.kill()


# -- a settings path that is no regular file -------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "says"),
    [
        pytest.param(os.mkfifo, "it is a FIFO (named pipe)", id="fifo"),
        pytest.param(lambda path: path.symlink_to("/dev/zero"), "a character device", id="zero"),
        pytest.param(
            lambda path: path.write_text("#" * (2 * 1024 * 1024)), "is over", id="huge-file"
        ),
        pytest.param(lambda path: path.symlink_to(path), "Too many levels", id="link-loop"),
    ],
)
@pytest.mark.parametrize("command", [["config"], ["run", "--once"]])
def test_a_settings_file_that_would_hang_or_never_end_is_one_usage_line(
    tmp_path: Path, make: Callable[[Path], object], says: str, command: list[str]
) -> None:
    # A FIFO hung the start until something wrote to it; /dev/zero was read until memory ran out.
    path = tmp_path / "spoolmail.toml"
    make(path)
    done = spoolmail("--config", str(path), *command, cwd=tmp_path)
    assert done.returncode == EX_USAGE
    [line] = done.stderr.splitlines()
    assert line.startswith("spoolmail: "), line
    assert str(path) in line, line
    assert says in line, line
    assert not (tmp_path / "MailRoot").exists()


def test_a_settings_file_behind_a_link_is_still_read(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("[spoolmail]\nmax_connections = 7\n")
    link = tmp_path / "spoolmail.toml"
    link.symlink_to(real)  # /etc/spoolmail/spoolmail.toml from a configuration manager
    assert load_settings(link, {}).max_connections == 7


def test_sighup_with_the_settings_file_now_a_fifo_keeps_delivering(
    service: tuple[subprocess.Popen[bytes], Path, Path, Path],
) -> None:
    process, root, config, log_file = service
    good = config.read_text()
    config.unlink()
    os.mkfifo(config)
    process.send_signal(signal.SIGHUP)
    # Reading the FIFO hung the service loop: nothing was delivered any more.
    until("the FIFO refused", lambda: "the settings in use stay" in read(log_file))
    assert "it is a FIFO (named pipe)" in read(log_file)
    submit(root, "first")
    until("delivered", lambda: len(os.listdir(root / "Drop")) == 1)

    config.unlink()
    config.write_text(good.replace("poll_interval = 0.05", "poll_interval = 0.06"))
    process.send_signal(signal.SIGHUP)
    until("the good file taken", lambda: "changed: poll_interval" in read(log_file))
    until("in use", lambda: "the new settings are in use" in read(log_file))
    submit(root, "second")
    until("delivered", lambda: len(os.listdir(root / "Drop")) == 2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(DEADLINE) == 0
    assert "Traceback" not in read(log_file)


def test_a_reload_that_cannot_be_built_logs_no_change(
    service: tuple[subprocess.Popen[bytes], Path, Path, Path], tmp_path: Path
) -> None:
    # The file reads well but its CA file does not load: "settings read again; changed:
    # poll_interval, tls_ca_file" was logged before the error that kept the old settings.
    process, root, config, log_file = service
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    good = config.read_text()
    config.write_text(
        good.replace("poll_interval = 0.05", f'poll_interval = 0.07\ntls_ca_file = "{garbage}"')
    )
    process.send_signal(signal.SIGHUP)
    until("the CA file refused", lambda: "the settings in use stay" in read(log_file))
    assert "ca.pem" in read(log_file)
    assert "changed:" not in read(log_file)
    assert "are in use" not in read(log_file)
    config.write_text(good.replace("poll_interval = 0.05", "poll_interval = 0.06"))
    process.send_signal(signal.SIGHUP)
    until("in use", lambda: "the new settings are in use" in read(log_file))
    assert "changed: poll_interval\n" in read(log_file)
    submit(root, "after")
    until("delivered", lambda: len(os.listdir(root / "Drop")) == 1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(DEADLINE) == 0


# -- numbers the system cannot take ---------------------------------------------------------------

SECONDS = [field.name for field, key in keys() if key.kind.name == "number"]


def test_every_number_setting_is_seconds() -> None:
    # The cap below is for waits: a number key that is not one needs its own bound.
    assert SECONDS
    assert all(name.endswith(("_timeout", "_interval", "_settle", "_warning")) for name in SECONDS)


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("value", ["1e300", "604801"])
def test_a_wait_longer_than_a_week_is_refused_naming_the_key(
    tmp_path: Path, name: str, value: str
) -> None:
    # 1e300 seconds overflowed timedelta (pickup_settle: a traceback at start) or the socket's
    # timeout (smtp_connect_timeout: every delivery failed with a traceback); poll(2) takes
    # at most 24.8 days in milliseconds.
    path = tmp_path / "spoolmail.toml"
    path.write_text(f"[spoolmail]\n{name} = {value}\n")
    with pytest.raises(ConfigurationError, match=f"{name} must be 604800 seconds"):
        load_settings(path, {})
    path.write_text(f"[spoolmail]\n{name} = 604800\n")
    assert getattr(load_settings(path, {}), name) == 604800


@pytest.mark.parametrize("name", ["smtp_connect_timeout", "pickup_settle"])
def test_a_huge_wait_is_a_usage_line_not_a_traceback(tmp_path: Path, name: str) -> None:
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    config.write_text(settings(root, f"{name} = 1e300\n"))
    assert spoolmail("--root", str(root), "init", cwd=tmp_path).returncode == 0
    (root / "Pickup" / "a.eml").write_bytes(b"To: b@remote.example\r\n\r\nhi\r\n")
    done = spoolmail("--config", str(config), "run", "--once", cwd=tmp_path)
    assert done.returncode == EX_USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{name} must be 604800 seconds (7 days) or fewer" in done.stderr


@pytest.mark.parametrize("name", ["workers", "listening_workers"])
def test_a_worker_count_that_would_fork_without_end_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "spoolmail.toml"
    path.write_text(f"[spoolmail]\n{name} = 1000000\n")
    with pytest.raises(ConfigurationError, match=f"{name} must be 1024 or fewer, not 1000000"):
        load_settings(path, {})
    path.write_text(f"[spoolmail]\n{name} = 1024\n")
    assert getattr(load_settings(path, {}), name) == 1024


# -- signals at awkward times ---------------------------------------------------------------------

# spoolmail, with a SIGHUP sent to itself in the middle of its start-up: while the settings are
# read (after the imports, before the command's own start), or where the drop of root is (before
# the MailRoot is opened and the handlers are set).
HANGUP_WHILE_STARTING = textwrap.dedent(
    """
    import os, signal, sys
    from spoolmail._cli import privileges, settings
    from spoolmail._cli.main import main

    where = sys.argv.pop(1)
    module = privileges if where == "lose_root" else settings
    original = getattr(module, where)

    sent = []

    def hangup_then(*args, **kwargs):
        if not sent:  # once: a reload reads the settings again, through the same function
            sent.append(os.kill(os.getpid(), signal.SIGHUP))
        return original(*args, **kwargs)

    setattr(module, where, hangup_then)
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("where", "command"),
    [
        ("lose_root", ["run", "--workers", "1"]),
        ("lose_root", ["run", "--workers", "2"]),
        ("load_settings", ["run", "--workers", "1"]),
        ("load_settings", ["run", "--workers", "2"]),
        ("load_settings", ["listen", "--listen", "127.0.0.1:0"]),
    ],
)
def test_a_sighup_while_starting_is_taken_once_serving(
    tmp_path: Path, where: str, command: list[str]
) -> None:
    # SIGHUP's default action ended the process (status -1) when it came before the handler;
    # while the settings were read, it still did.
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    config.write_text(settings(root))
    log_file = tmp_path / "spoolmail.log"
    argv = ["-c", HANGUP_WHILE_STARTING, where, "--config", str(config), *command,
            "--log-file", str(log_file)]  # fmt: skip
    says = b"spoolmail: serving " if command[0] == "run" else b"spoolmail: listening on "
    with serving(argv, tmp_path, says) as process:
        readers = int(command[2]) if command[0] == "run" else 1
        until(
            "the held SIGHUP read",
            lambda: read(log_file).count("SIGHUP: the new settings are in use") == readers,
        )
        if command[0] == "run":
            submit(root, "after")
            until("delivered", lambda: len(os.listdir(root / "Drop")) == 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE) == 0


def test_a_sighup_to_a_one_shot_command_while_it_starts_still_ends_it(tmp_path: Path) -> None:
    # Only run and listen read a SIGHUP; any other command ends, as SIGHUP's default says (a
    # terminal that hangs up), once its command line is read, not after its work.
    with subprocess.Popen(
        [sys.executable, "-c", HANGUP_WHILE_STARTING, "load_settings", "--root",
         str(tmp_path / "MailRoot"), "init"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        assert process.wait(DEADLINE) == -signal.SIGHUP
    assert not (tmp_path / "MailRoot").exists()


def test_sighups_in_a_burst_and_a_sigterm_among_them_lose_nothing(
    service: tuple[subprocess.Popen[bytes], Path, Path, Path],
) -> None:
    process, root, config, log_file = service
    for number in range(20):
        submit(root, f"m{number}")
    config.write_text(settings(root, "workers = 1\nmax_connections = 3\n"))
    for _ in range(5):
        process.send_signal(signal.SIGHUP)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGHUP)
    assert process.wait(DEADLINE) == 0
    assert "Traceback" not in read(log_file)
    # Every message is in Drop, or still in Pickup or the Queue, and none is claimed.
    queued = [n for n in os.listdir(root / "Queue") if n.endswith(".env")]
    assert [n for n in queued if n.count(".") > 1] == []
    pickup = [n for n in os.listdir(root / "Pickup") if n.endswith(".eml")]
    assert len(os.listdir(root / "Drop")) + len(queued) + len(pickup) == 20
    assert [n for n in os.listdir(root / "SortTemp") if n.endswith(".owner")] == []


# -- user as numbers ------------------------------------------------------------------------------


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:  # pragma: no cover (every Linux and BSD has one)
        pytest.skip("no user nobody here")


def test_user_and_group_as_numbers_as_chown_takes_them() -> None:
    nobody = _nobody()
    by_name = privileges.resolve("nobody")
    by_number = privileges.resolve(str(nobody.pw_uid), str(nobody.pw_gid))
    assert (by_number.uid, by_number.gid, by_number.groups) == (
        by_name.uid,
        by_name.gid,
        by_name.groups,
    )
    group = grp.getgrgid(nobody.pw_gid).gr_name
    assert (
        privileges.resolve("nobody", str(nobody.pw_gid)).gid
        == privileges.resolve("nobody", group).gid
    )


@pytest.mark.parametrize(
    ("user", "says"),
    [
        ("4000000000", "no such user '4000000000'"),
        ("99999999999999999999999", "no such user '99999999999999999999999'"),
        ("0", "would keep root"),
        ("nobody:0", "would keep root"),
        ("nobody:99999999999999999999999", "no such group '99999999999999999999999'"),
        ("\uff11", "no such user"),  # a digit, but not an ASCII one: a name
    ],
)
def test_a_number_no_entry_has_or_root_s_is_refused(user: str, says: str) -> None:
    _nobody()
    with pytest.raises(ConfigurationError, match=says):
        privileges.resolve(*privileges.parse_user(user))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_run_as_root_with_a_numeric_user_delivers_as_that_user() -> None:
    nobody = _nobody()
    # pytest's own temporary folders are private to root.
    with tempfile.TemporaryDirectory(prefix="spoolmail-numeric-user-") as name:
        shared = Path(name)
        shared.chmod(0o755)
        _deliver_as(nobody, shared)


def _deliver_as(nobody: pwd.struct_passwd, shared: Path) -> None:
    root = shared / "MailRoot"
    assert spoolmail("--root", str(root), "init", cwd=shared).returncode == 0
    for path in [root, *root.iterdir()]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    submit(root, "note")
    os.chown(root / "Pickup" / "note.eml", nobody.pw_uid, nobody.pw_gid)
    done = spoolmail(
        "--root", str(root), "-v", "run", "--once", "--user", f"{nobody.pw_uid}:{nobody.pw_gid}",
        cwd=shared,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [drop] = (root / "Drop").iterdir()
    assert (drop.stat().st_uid, drop.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
