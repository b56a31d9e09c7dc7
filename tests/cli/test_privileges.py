"""Least privilege: ``spoolmail run`` as root warns, or becomes ``--user`` before the MailRoot.

Through ``main(argv)`` where nothing changes the test process for good (the drop itself is
replaced by a recorder there); the real drop in subprocesses, as ``nobody``, when the tests run
as root (as CI does): a process cannot come back from it.
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import importlib.util
import io
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolmail._cli import privileges
from spoolmail._cli.main import main
from spoolmail._cli.privileges import Identity
from spoolmail._cli.settings import load_settings
from spoolmail.exceptions import ConfigurationError, SpoolmailError

ROOT_ONLY = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="dropping root needs root"
)
WARNING = "running as root; give the service its own user"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), out=out)
    return status, out.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "MailRoot"


@pytest.fixture
def drops(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[tuple[str, str | None, bool]]:
    """Replace the drop with a recorder: (user, group, whether the MailRoot existed yet)."""
    calls: list[tuple[str, str | None, bool]] = []

    def drop(user: str, group: str | None = None) -> Identity:
        calls.append((user, group, root.exists()))
        return Identity(user=user, uid=65534, gid=65534, groups=frozenset({65534}))

    monkeypatch.setattr(privileges, "drop_privileges", drop)
    return calls


def as_root(monkeypatch: pytest.MonkeyPatch, *, root: bool) -> None:
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0 if root else 1000)


# -- through main(argv) ---------------------------------------------------------------------------


def test_run_as_root_without_a_user_warns_once(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    as_root(monkeypatch, root=True)
    assert run("-v", "--root", str(root), "run", "--once")[0] == 0
    assert capsys.readouterr().err.count(WARNING) == 1


def test_run_not_as_root_does_not_warn(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    as_root(monkeypatch, root=False)
    assert run("-v", "--root", str(root), "run", "--once")[0] == 0
    assert WARNING not in capsys.readouterr().err


def test_the_modules_imported_later_are_imported_before_the_drop(root: Path) -> None:
    """The service's user may be unable to read the Python installation (a pyenv under /root):
    what the service imports at first use (dnspython, fcntl) is imported while still root.
    In a fresh interpreter, where nothing imported them before."""
    script = textwrap.dedent(
        f"""
        import sys
        from spoolmail._cli import privileges
        from spoolmail._cli.main import main

        def drop(user, group=None):
            missing = set(privileges.IMPORTED_BEFORE_DROP) - set(sys.modules)
            print("missing at the drop:", sorted(missing))
            return privileges.Identity(user, 65534, 65534, frozenset({{65534}}))

        privileges.drop_privileges = drop
        sys.exit(main(["--root", {str(root)!r}, "run", "--once", "--user", "mailer"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "missing at the drop: []" in done.stdout


SRC = Path(__file__).resolve().parents[2] / "src" / "spoolmail"


def _module_of(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_at_first_use() -> dict[str, str]:
    """Every module spoolmail imports inside a function, and every codec it names by text
    (``.encode("punycode")`` imports ``encodings.punycode`` at that call): name -> where."""
    found: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        if _module_of(path) in privileges.NOT_IN_A_SERVICE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                where = (
                    f"{path.relative_to(SRC.parent)}:{node.lineno}"
                    if hasattr(node, "lineno")
                    else ""
                )
                if isinstance(node, ast.Import):
                    found.update((alias.name, where) for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found[node.module] = where
                    for alias in node.names:  # from package import module
                        name = f"{node.module}.{alias.name}"
                        with contextlib.suppress(ImportError, ValueError):
                            if importlib.util.find_spec(name) is not None:
                                found[name] = where
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("encode", "decode")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    with contextlib.suppress(LookupError):
                        module = codecs.lookup(node.args[0].value).encode.__module__
                        if module.startswith("encodings."):
                            found[module] = where
    return found


def test_whatever_a_service_imports_at_first_use_is_imported_before_the_drop() -> None:
    """Read from the sources, so that a new import inside a function (or a codec named by
    text) cannot slip past: in a fresh interpreter, after ``import_before_drop``, each of them
    is already imported (or built into the interpreter), as is every spoolmail module."""
    wanted = _imported_at_first_use()
    assert "dns.resolver" in wanted  # the reading finds imports in functions ...
    assert "encodings.punycode" in wanted  # ... and codecs named by text
    script = textwrap.dedent(
        """
        import json, sys
        from spoolmail._cli import privileges

        privileges.import_before_drop()
        print(json.dumps(sorted(sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    imported = set(json.loads(done.stdout))
    missing = {
        name: where
        for name, where in wanted.items()
        if name not in imported and name not in sys.builtin_module_names
    }
    assert not missing, f"imported after a drop of privileges would fail: {missing}"
    assert "dns.rdtypes.ANY.MX" in imported
    assert "spoolmail._service.service" in imported


def test_run_with_user_drops_before_the_mailroot_is_opened(
    root: Path,
    drops: list[tuple[str, str | None, bool]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_root(monkeypatch, root=True)
    assert run("-v", "--root", str(root), "run", "--once", "--user", "mailer:mailgrp")[0] == 0
    # Before: the folders the service makes must be the service user's, not root's.
    assert drops == [("mailer", "mailgrp", False)]
    assert root.is_dir()
    err = capsys.readouterr().err
    assert WARNING not in err
    assert "running as mailer (uid 65534, gid 65534)" in err


def test_the_user_setting_comes_from_the_settings_file(
    root: Path, tmp_path: Path, drops: list[tuple[str, str | None, bool]]
) -> None:
    config = tmp_path / "spoolmail.toml"
    config.write_text(f'[spoolmail]\nroot = "{root}"\nuser = "mailer"\n')
    assert run("--config", str(config), "run", "--once")[0] == 0
    assert drops == [("mailer", None, False)]


@pytest.mark.parametrize(
    ("user", "complaint"),
    [
        ("no-such-user-here", "no such user 'no-such-user-here'"),
        ("nobody:no-such-group-here", "no such group 'no-such-group-here'"),
        ("root", "'root' would keep root"),
        ("nobody:", "user must be NAME or NAME:GROUP"),
    ],
)
def test_a_wrong_user_is_a_usage_error_and_changes_nothing(
    root: Path, user: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (os.getresuid(), os.getresgid(), os.getgroups())
    assert run("--root", str(root), "run", "--once", "--user", user)[0] == 2
    assert complaint in capsys.readouterr().err
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == before
    assert not root.exists()


def test_not_root_and_another_user_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges.os, "getresuid", lambda: (1000, 1000, 1000))
    monkeypatch.setattr(privileges.os, "getresgid", lambda: (1000, 1000, 1000))
    as_root(monkeypatch, root=False)
    with pytest.raises(ConfigurationError, match=r"cannot become 'nobody'.*not root"):
        privileges.drop_privileges("nobody")


def test_groups_first_then_group_then_user_and_a_drop_that_did_not_happen_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The calls change nothing here, so the process is still root afterwards: the check after
    # them must notice, whatever the calls answered.
    calls: list[str] = []
    monkeypatch.setattr(privileges.os, "setgroups", lambda groups: calls.append("setgroups"))
    monkeypatch.setattr(privileges.os, "setresgid", lambda *ids: calls.append("setresgid"))
    monkeypatch.setattr(privileges.os, "setresuid", lambda *ids: calls.append("setresuid"))
    monkeypatch.setattr(privileges.os, "setuid", lambda uid: calls.append(f"setuid({uid})"))
    monkeypatch.setattr(privileges.os, "getresuid", lambda: (0, 0, 0))
    monkeypatch.setattr(privileges.os, "getresgid", lambda: (0, 0, 0))
    monkeypatch.setattr(privileges.os, "getgroups", lambda: [0])
    as_root(monkeypatch, root=True)
    with pytest.raises(SpoolmailError, match="dropping root to 'nobody' failed") as failed:
        privileges.drop_privileges("nobody")
    assert calls == ["setgroups", "setresgid", "setresuid", "setuid(0)"]
    assert "setuid(0) succeeded" in str(failed.value)
    assert "user ids are (0, 0, 0)" in str(failed.value)


# -- the real drop, in subprocesses ---------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder ``nobody`` can reach: pytest's own temporary folders are private to root."""
    with tempfile.TemporaryDirectory(prefix="spoolmail-privileges-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


@ROOT_ONLY
def test_the_daemon_started_as_root_says_so_once_on_stderr(shared_dir: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "spoolmail", "--root", str(shared_dir / "MailRoot"), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=shared_dir,
    ) as process:
        assert process.stdout is not None
        banner = process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    assert banner.startswith(b"spoolmail: serving")
    assert err.decode().count(WARNING) == 1
    assert "WARNING" in err.decode()


@ROOT_ONLY
def test_drop_privileges_becomes_nobody_for_good() -> None:
    script = textwrap.dedent(
        """
        import os
        from spoolmail._cli.privileges import drop_privileges
        os.setgroups([0, 4, 27])   # root's extra groups must not survive the drop
        identity = drop_privileges("nobody")
        print(os.getresuid(), os.getresgid(), sorted(os.getgroups()))
        for regain in (lambda: os.setuid(0), lambda: os.seteuid(0), lambda: os.setgroups([0])):
            try:
                regain()
            except PermissionError:
                continue
            raise SystemExit("root came back")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    nobody = pwd.getpwnam("nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    groups = sorted(set(os.getgrouplist("nobody", gid)))
    assert done.stdout == f"{(uid, uid, uid)} {(gid, gid, gid)} {groups}\n"


@ROOT_ONLY
def test_spoolmail_run_as_root_with_user_delivers_as_that_user(shared_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    root = shared_dir / "MailRoot"
    command = [sys.executable, "-m", "spoolmail", "--root", str(root)]
    subprocess.run([*command, "init"], check=True, capture_output=True)
    # The MailRoot belongs to the service's user (docs/running-as-a-service.md).
    for path in [root, *root.iterdir()]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    note = root / "Pickup" / "note.eml"
    note.write_bytes(b"From: app@example.com\r\nTo: ops@example.com\r\nSubject: s\r\n\r\nbody\r\n")
    # Its own file, so a lease tells the service the writer is done: no settle time to wait out.
    os.chown(note, nobody.pw_uid, nobody.pw_gid)
    done = subprocess.run(
        [*command, "-v", "run", "--once", "--local-domain", "example.com", "--user", "nobody"],
        capture_output=True,
        text=True,
        check=False,
        cwd=shared_dir,
    )
    assert done.returncode == 0, done.stderr
    assert "running as nobody" in done.stderr
    assert WARNING not in done.stderr
    [drop] = (root / "Drop").iterdir()
    # Written by the process after the drop: the file is nobody's, not root's.
    assert (drop.stat().st_uid, drop.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)


@ROOT_ONLY
def test_spoolmail_run_as_user_cannot_use_a_mailroot_only_root_may_write(
    shared_dir: Path,
) -> None:
    root = shared_dir / "MailRoot"
    command = [sys.executable, "-m", "spoolmail", "--root", str(root)]
    subprocess.run([*command, "init"], check=True, capture_output=True)
    (root / "Pickup" / "note.eml").write_bytes(b"To: ops@localhost\r\n\r\nbody\r\n")
    done = subprocess.run(
        [*command, "run", "--once", "--user", "nobody"],
        capture_output=True,
        text=True,
        check=False,
        cwd=shared_dir,
    )
    # Not silently as root: the service user is refused, and says so.
    assert done.returncode != 0
    assert "Permission denied" in done.stderr
    assert list((root / "Drop").iterdir()) == []


# -- docs/running-as-a-service.md ------------------------------------------------------------------

PAGE = Path(__file__).parents[2] / "docs" / "running-as-a-service.md"
# Ids no account has here: setpriv takes numbers, so the test needs no users of its own.
SERVICE, SENDER, SENDERS_GROUP = 2_000_101, 2_000_102, 2_000_103


def page_blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```$", PAGE.read_text(), re.MULTILINE | re.DOTALL)


def test_the_pages_settings_load(tmp_path: Path) -> None:
    [toml] = page_blocks("toml")
    config = tmp_path / "spoolmail.toml"
    config.write_text(toml)
    settings = load_settings(config, {})
    assert settings.user == "spoolmail"
    assert settings.root == "/var/spool/spoolmail"


@ROOT_ONLY
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_the_pages_folders_let_a_sender_and_the_service_work_as_two_other_users(
    shared_dir: Path,
) -> None:
    root = shared_dir / "spool"
    lines = [
        line
        for block in page_blocks("sh")
        for line in block.splitlines()
        if line.startswith("install -d") and "/var/spool/spoolmail" in line
    ]
    assert len(lines) == 6
    script = "\n".join(lines)
    for name, number in (("spoolmail", SERVICE), ("mailsend", SENDERS_GROUP)):
        script = script.replace(f"-o {name} ", f"-o {number} ").replace(
            f"-g {name} ", f"-g {number} "
        )
    subprocess.run(["sh", "-ec", script.replace("/var/spool/spoolmail", str(root))], check=True)

    def as_user(uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={SENDERS_GROUP}", *argv],
            capture_output=True,
            text=True,
            check=False,
            cwd=shared_dir,
        )

    pickup = root / "Pickup"
    written = as_user(
        SENDER,
        "sh",
        "-ec",
        f"umask 027; printf 'From: app@example.com\\r\\nTo: ops@example.com\\r\\n"
        f"Subject: s\\r\\n\\r\\nbody\\r\\n' > {pickup}/m.tmp; mv {pickup}/m.tmp {pickup}/m.eml",
    )
    assert written.returncode == 0, written.stderr
    # The senders may not list Pickup, nor reach the service's own folders.
    assert as_user(SENDER, "ls", str(pickup)).returncode != 0
    assert as_user(SENDER, "ls", str(root / "Queue")).returncode != 0
    service = [sys.executable, "-m", "spoolmail", "--root", str(root), "run", "--once"]
    for _ in range(4):  # the settle time (2 s): the service does not own the sender's file
        ran = as_user(SERVICE, *service, "--local-domain", "example.com")
        assert ran.returncode == 0, ran.stderr
        if any((root / "Drop").iterdir()):
            break
        time.sleep(1)
    [drop] = (root / "Drop").iterdir()
    assert drop.stat().st_uid == SERVICE
    assert list(pickup.iterdir()) == []
    assert list((root / "BadMail").iterdir()) == []


def _free_privileged_port() -> int:
    """A port below 1024 that nothing on 127.0.0.1 listens on: only root may bind it."""
    for port in range(700, 1000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


@ROOT_ONLY
def test_the_listener_binds_a_privileged_port_then_serves_as_the_user(shared_dir: Path) -> None:
    """Issue 15: port 25 needs root, the service must not keep it. The listening socket is
    bound first, then the process becomes --user, and mail is taken and delivered as that user."""
    nobody = pwd.getpwnam("nobody")
    root = shared_dir / "MailRoot"
    command = [sys.executable, "-m", "spoolmail", "--root", str(root)]
    subprocess.run([*command, "init"], check=True, capture_output=True)
    for path in [root, *root.iterdir()]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    port = _free_privileged_port()
    argv = [*command, "run", "--local-domain", "example.com", "--user", "nobody"]
    with subprocess.Popen(
        [*argv, "--listen", f"127.0.0.1:{port}", "--poll-interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=shared_dir,
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline().decode()
            assert banner.startswith("spoolmail: serving"), banner
            status = Path(f"/proc/{process.pid}/status").read_text()
            uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uids.split()[1:] == [str(nobody.pw_uid)] * 4  # real, effective, saved, fs
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail(
                    "app@example.com",
                    ["ops@example.com"],
                    b"From: app@example.com\r\nTo: ops@example.com\r\nSubject: s\r\n\r\nbody\r\n",
                )
            deadline = time.monotonic() + 30
            while not list((root / "Drop").iterdir()):
                assert time.monotonic() < deadline, "the message never reached Drop"
                time.sleep(0.02)
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    [drop] = (root / "Drop").iterdir()
    assert drop.stat().st_uid == nobody.pw_uid
