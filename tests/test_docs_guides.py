"""The tutorials' and how-to guides' examples that are not doctests or console sessions.

- every ``toml`` block in docs/tutorials and docs/howto loads through the settings code and
  builds a router, as ``spoolmail --config`` would;
- the C# program of "Replace IIS SMTP" compiles with Mono's ``mcs`` and, run against a service on
  a real MailRoot, puts its message into Drop;
- the pytest files of "Catch every mail in your tests" (blocks whose first line is
  ``# test_*.py``) pass when pytest runs them, with spoolmail's plugin;
- ``mailerd.py`` of "Wrap spoolmail in your own daemon" serves, takes a message over SMTP,
  stops on SIGTERM and prints its counts;
- the Python shown and not run (a Windows service) at least compiles;
- docs/index.md lists every page in exactly one toctree.

Console sessions run in ``tests/test_docs_commands.py`` and ``>>>`` sessions as doctests.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spoolmail import Durability, MailService, Router, Spool
from spoolmail._cli.assemble import router
from spoolmail._cli.settings import load_settings
from tests.peers import require_program

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDES = sorted([*DOCS.glob("tutorials/*.md"), *DOCS.glob("howto/*.md")])


def blocks(page: Path, kind: str) -> list[str]:
    pattern = rf"^```{kind}[ \t]*\n(.*?)^```[ \t]*$"
    return re.findall(pattern, page.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def _id(page: Path) -> str:
    return page.relative_to(DOCS).as_posix()


TOML_PAGES = [page for page in GUIDES if blocks(page, "toml")]


@pytest.mark.parametrize("page", TOML_PAGES, ids=_id)
def test_the_settings_files_load(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOOLMAIL_SMART_HOST_PASSWORD", "from the environment")
    for number, block in enumerate(blocks(page, "toml")):
        path = tmp_path / f"{number}.toml"
        path.write_text(block, encoding="utf-8")
        settings = load_settings(path, {})
        router(settings)  # every domain, host and route in it is one


def test_the_iis_tutorials_settings_are_the_iis_consoles() -> None:
    [block] = blocks(DOCS / "tutorials" / "replace-iis.md", "toml")
    for key in ("fqdn", "local_domains", "smart_host", "max_message_size", "ndr_copy_to"):
        assert re.search(rf"^{key} = ", block, re.MULTILINE), key


def test_the_iis_tutorials_dotnet_program_delivers_through_pickup(tmp_path: Path) -> None:
    mcs = require_program("mcs", package="mono-mcs")
    mono = require_program("mono", package="mono-runtime")
    [source] = blocks(DOCS / "tutorials" / "replace-iis.md", "csharp")
    (tmp_path / "OrderMailer.cs").write_text(source, encoding="utf-8")
    program = tmp_path / "OrderMailer.exe"
    subprocess.run(
        [mcs, "-nowarn:618", "-r:System.dll", f"-out:{program}", str(tmp_path / "OrderMailer.cs")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    root = tmp_path / "MailRoot"
    Spool(str(root)).close()  # spoolmail init
    # Unchanged but for the folder: the path is the program's first argument.
    subprocess.run(
        [mono, str(program), str(root / "Pickup")], check=True, capture_output=True, timeout=60
    )
    with Spool(str(root), durability=Durability.NONE) as spool:
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smart_host="[127.0.0.1]:1"),
            fqdn="mail.example.com",
        )
        try:
            deadline = time.monotonic() + 30
            while not list(spool.drop()) and time.monotonic() < deadline:
                service.run_once()  # waits out the settle time where no lease tells
                time.sleep(0.1)
        finally:
            service.close()
        [dropped] = list(spool.drop())
        assert dropped.sender == "shop@example.com"
        assert dropped.recipients == ("ann@example.com",)
        message = spool.drop_message(dropped.id)
        assert b"Subject: Order 1001 confirmed" in message
        assert b"It leaves the warehouse tomorrow." in message
        [queued] = spool.queued()  # the partner's copy waits for its (down) smart host
        assert [r.address for r in queued.envelope.recipients if r.state.value == "pending"] == [
            "orders@partner.example"
        ]


PYTEST_FILES = [
    (page, block)
    for page in GUIDES
    for block in blocks(page, "python")
    if re.match(r"# test_\w+\.py\n", block)
]


@pytest.mark.parametrize(
    ("page", "block"),
    PYTEST_FILES,
    ids=[f"{_id(page)}:{block.split()[1]}" for page, block in PYTEST_FILES],
)
def test_the_pytest_examples_pass(page: Path, block: str, pytester: pytest.Pytester) -> None:
    name = block.split()[1]
    pytester.makepyfile(**{name.removesuffix(".py"): block})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", name)
    result.assert_outcomes(passed=block.count("\ndef test_"))


def test_the_daemon_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    [program] = [
        block
        for block in blocks(DOCS / "tutorials" / "wrap-in-a-daemon.md", "python")
        if block.startswith("# mailerd.py")
    ]
    (tmp_path / "mailerd.py").write_text(program, encoding="utf-8")
    root = tmp_path / "MailRoot"
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "mailerd.py"), str(root), "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("listening on 127.0.0.1:"), first
        host, port = first.split()[-1].rsplit(":", 1)
        with smtplib.SMTP(host, int(port)) as client:
            client.sendmail("app@example.com", ["ops@example.com"], b"Subject: hi\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 30
        while not list((root / "Drop").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "stopped: 1 queued, 1 delivered" in out
    assert '"Delivered": 1' in out
    assert '"event": "delivered"' in err  # the JSON log lines


def test_the_python_shown_and_not_run_compiles() -> None:
    for page in GUIDES:
        for number, block in enumerate(blocks(page, "python")):
            if ">>> " not in block:
                compile(block, f"{_id(page)}:python block {number + 1}", "exec")


_TOCTREE = re.compile(r"^```\{toctree\}\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def test_every_page_is_in_exactly_one_toctree() -> None:
    listed: list[str] = []
    for tree in _TOCTREE.findall((DOCS / "index.md").read_text(encoding="utf-8")):
        listed += [
            line.strip() for line in tree.splitlines() if line.strip() and not line.startswith(":")
        ]
    pages = sorted(
        page.relative_to(DOCS).with_suffix("").as_posix()
        for page in DOCS.rglob("*.md")
        if not page.relative_to(DOCS).parts[0].startswith("_") and page.name != "index.md"
    )
    assert sorted(listed) == pages
