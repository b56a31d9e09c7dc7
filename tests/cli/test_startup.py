"""What the ``spoolmail`` command imports: only the modules of the command given (issue 12).

Each command's parser is made when argparse meets its name (``main._COMMANDS``), so that
``queue flush --quiet`` starts in a fraction of the time the whole tree took and ``run`` does
not load the listener or sendmail. These tests run the command in a fresh interpreter and look
at ``sys.modules``; the help texts must not change for it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import spoolmail
from spoolmail._cli import entry, settings
from spoolmail._cli import main as cli
from spoolmail._cli.examples import commands
from spoolmail._cli.main import EX_OK, main
from spoolmail._service import service
from spoolmail._store import orders

HEAVY = {
    "aiosmtpd",
    "asyncio",
    "dns",
    "importlib.metadata",
    "pkg_resources",
    "spoolmail._cli.sendmail",
    "spoolmail._listen.listener",
}


def loaded_by(*argv: str) -> set[str]:
    """The modules imported by ``spoolmail ARGV`` in a fresh interpreter (it must succeed)."""
    code = (
        "import sys; from spoolmail._cli.main import main; status = main(sys.argv[1:]); "
        "print(' '.join(sorted(sys.modules)), file=sys.stderr); sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(done.stderr.split()[-1000:]) if done.stderr else set()


def test_help_imports_no_command() -> None:
    loaded = loaded_by("--help")
    assert not {name for name in loaded if name.startswith("spoolmail._cli.")} - {
        "spoolmail._cli.examples",
        "spoolmail._cli.flags",
        "spoolmail._cli.logs",
        "spoolmail._cli.main",
        "spoolmail._cli.quick",
        "spoolmail._cli.settings",
        "spoolmail._cli.status",
    }
    assert not (HEAVY | {"fs", "spoolmail._store.spool"}) & loaded


def test_quiet_flush_imports_neither_the_spool_nor_the_service(tmp_path: Path) -> None:
    # No MailRoot there yet: the whole command, which writes the order through the store.
    loaded = loaded_by("--root", str(tmp_path / "MailRoot"), "queue", "flush", "--quiet")
    assert "spoolmail._store.store" in loaded
    assert not (HEAVY | {"spoolmail._store.spool", "spoolmail._service.service"}) & loaded


@pytest.mark.parametrize(
    "argv",
    [
        ["--root", "{root}", "queue", "flush", "--quiet"],
        ["queue", "flush", "-q", "--root={root}"],
        ["queue", "flush", "--quiet"],  # the default root, MailRoot in the current folder
    ],
)
def test_quiet_flush_of_a_mailroot_is_posted_without_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """As ``postqueue -f``: the order alone, with none of the settings, argparse's tree, attrs
    or PyFilesystem2 imported (about 0.1 s of a flush's start)."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "MailRoot"
    assert main(["--root", str(root), "init"], out=io.StringIO()) == EX_OK
    loaded = loaded_by(*(word.format(root=root) for word in argv))
    assert not {"attrs", "fs", "spoolmail._cli.settings", "spoolmail._store.store"} & loaded
    assert [p.suffix for p in (root / "SortTemp").iterdir()] == [".trigger"]


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "queue", "flush", "--quiet"],
        ["queue", "flush", "--quiet", "--domain", "example.com"],
        ["queue", "flush", "--quiet", "--root", "{root}", "--root", "{root}"],
        ["--root", "osfs://{root}", "queue", "flush", "--quiet"],
    ],
)
def test_any_other_quiet_flush_is_the_whole_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "MailRoot"
    assert main(["--root", str(root), "init"], out=io.StringIO()) == EX_OK
    loaded = loaded_by(*(word.format(root=root) for word in argv))
    assert "spoolmail._cli.settings" in loaded
    assert [p.suffix for p in (root / "SortTemp").iterdir()] == [".trigger"]


def test_a_quiet_flush_that_cannot_be_posted_is_the_whole_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (a full disk, say) is done again by the whole command, which writes
    the same order through the store, or explains why it cannot."""
    root = tmp_path / "MailRoot"
    assert main(["--root", str(root), "init"], out=io.StringIO()) == EX_OK

    def failing(sort_temp: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(orders, "post_flush_order", failing)
    assert main(["--root", str(root), "queue", "flush", "--quiet"]) == EX_OK
    (order,) = (root / "SortTemp").iterdir()
    assert json.loads(order.read_text()) == {"flush": {"sender": None, "domain": None}}


def test_run_imports_neither_the_listener_nor_sendmail(tmp_path: Path) -> None:
    root = str(tmp_path / "MailRoot")
    loaded = loaded_by("--root", root, "run", "--once", "--smart-host", "[127.0.0.1]:1")
    assert "spoolmail._service.service" in loaded
    unwanted = {
        "aiosmtpd",
        "dns",  # dnspython at the first lookup (a smart host given as [address] needs none)
        "importlib.metadata",
        "pkg_resources",
        "spoolmail._cli.operations",
        "spoolmail._cli.sendmail",
        "spoolmail._listen.listener",
    }
    assert not unwanted & loaded


@pytest.mark.parametrize("path", [path for path, _ in commands(cli._parser()) if path])
def test_a_command_made_when_given_is_the_command_of_the_whole_tree(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main`` makes only the parser of the command given: its help is the same as in the
    whole tree (the reference page is made from that)."""
    words = path.split()
    whole = dict(commands(cli._parser()))[path]
    if words[0] == "sendmail":  # no --help of its own: every argument is sendmail's
        return
    out = io.StringIO()
    assert main([*words, "--help"], out=out) == EX_OK
    assert out.getvalue() == whole.format_help()


def test_top_help_lists_every_command_as_the_whole_tree() -> None:
    out = io.StringIO()
    assert main(["--help"], out=out) == EX_OK
    assert out.getvalue() == cli._parser().format_help()


def test_version() -> None:
    out = io.StringIO()
    assert main(["--version"], out=out) == EX_OK
    assert out.getvalue() == f"spoolmail {spoolmail.__version__}\n"


def test_the_free_space_default_is_the_service_s() -> None:
    """settings keeps its own copy, so that reading the settings does not import the service."""
    assert settings.MIN_FREE_SPACE == service.MIN_FREE_SPACE


def test_sendmail_keeps_the_service_s_limits_without_importing_it() -> None:
    """spoolmail-sendmail runs once a message: it does not import the service for them."""
    from spoolmail._cli import sendmail  # noqa: PLC0415
    from spoolmail._service import intake  # noqa: PLC0415

    assert sendmail.MAX_HEAD == intake.MAX_HEAD
    assert sendmail.machine_name() == service.machine_name()


def test_sendmail_imports_neither_the_service_nor_the_spool(tmp_path: Path) -> None:
    # PHP's mail() and cron start it once a message: nor the store, the state table,
    # PyFilesystem2 or the email package (a third of its start-up; bench/README.md).
    root = tmp_path / "MailRoot"
    assert main(["--root", str(root), "init"], out=io.StringIO()) == EX_OK
    code = (
        "import sys; from spoolmail._cli.sendmail import run; "
        "status = run(['-i', 'ops@example.com'], root=sys.argv[1], stdin=sys.stdin.buffer); "
        "print(' '.join(sorted(sys.modules)), file=sys.stderr); sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        input=b"Subject: hi\n\nhello\n",
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stderr.decode().split())
    unwanted = HEAVY - {"spoolmail._cli.sendmail"}
    assert not (unwanted | {"spoolmail._service.service", "spoolmail._store.spool"}) & loaded
    not_needed = {"email", "fs", "spoolmail._core.states", "spoolmail._store.store"}
    assert not not_needed & loaded
    assert len(list((root / "Pickup").iterdir())) == 1


def test_quiet_flush_through_the_entry_points_imports_only_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m spoolmail`` and the ``spoolmail`` script (``_cli.entry``) write the order
    before anything of the command line is imported, typing and json included: 33 -> 17 ms
    with ``-m`` (Debian's Python 3.11), where an interpreter that does nothing takes 9."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "MailRoot"
    assert main(["--root", str(root), "init"], out=io.StringIO()) == EX_OK
    argv = ["spoolmail", "--root", str(root), "queue", "flush", "--quiet"]
    code = (
        "import runpy, sys\n"
        "before = set(sys.modules)\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module('spoolmail', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "print(status, ' '.join(sorted(set(sys.modules) - before)))\n"
    )
    # Isolated (-I): without the test guard's sitecustomize, which imports typing itself (the
    # command touches no network).
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    status, *loaded = done.stdout.split()
    assert status == "0"
    assert set(loaded) <= {
        "spoolmail",
        "spoolmail.__main__",
        "spoolmail._cli",
        "spoolmail._cli.entry",
        "spoolmail._cli.quick",
        "spoolmail._core",
        "spoolmail._core.base32",
        "spoolmail._store",
        "spoolmail._store.orders",
        "__future__",
    }, loaded
    assert [p.suffix for p in (root / "SortTemp").iterdir()] == [".trigger"]
    [order] = (root / "SortTemp").iterdir()
    assert json.loads(order.read_bytes()) == {"flush": {"sender": None, "domain": None}}
    assert orders.flush_order() == orders.FLUSH_ALL
    assert entry.main.__module__ == "spoolmail._cli.entry"
    scripts = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'spoolmail = "spoolmail._cli.entry:main"' in scripts
