"""Issue 13's settings through the command: DKIM keys, MTA-STS, the suppression list, the EHLO
name and its FCrDNS check (``spoolmail check``), ``spoolmail suppress``, ``spoolmail dkim``."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pytest

from spoolmail import Reply, Spool, SuppressionList
from spoolmail._cli import assemble
from spoolmail._cli.main import main
from spoolmail._cli.settings import load_settings
from spoolmail._core.dkim import DkimKey
from spoolmail.exceptions import ConfigurationError
from tests.dnsserver import DnsServer

MESSAGE = b"From: app@example.com\r\nTo: ops@example.com\r\nSubject: signed\r\n\r\nhello\r\n"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    root = tmp_path / "keys"
    root.mkdir()
    assert run("dkim", "keygen", "example.com", "s2026", "--out", str(root))[0] == 0
    return root / "s2026.private"


def settings_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spoolmail.toml"
    path.write_text(f"[spoolmail]\n{body}\n", encoding="utf-8")
    return path


def test_a_dkim_table_signs_what_run_delivers(tmp_path: Path, key_file: Path) -> None:
    config = settings_file(
        tmp_path,
        f'local_domains = ["example.com"]\n[spoolmail.dkim."example.com"]\n'
        f'selector = "s2026"\nkey_file = "{key_file.as_posix()}"',
    )
    root = tmp_path / "MailRoot"
    argv = ["--config", str(config), "--root", str(root)]
    assert run(*argv, "init")[0] == 0
    (root / "Pickup" / "one.eml").write_bytes(MESSAGE)
    assert run(*argv, "run", "--once", "--pickup-settle", "0")[0] == 0
    [dropped] = (root / "Drop").iterdir()
    data = dropped.read_bytes()
    message = data[data.index(b"DKIM-Signature:") :]  # without the x-sender/x-receiver lines
    public = DkimKey.from_pem(key_file.read_bytes()).txt_record()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s2026._domainkey.example.com."
        return public.encode()

    assert dkimpy.verify(message, dnsfunc=dns)
    assert not dkimpy.verify(message.replace(b"hello", b"jello"), dnsfunc=dns)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('selector = "s"', "selector and key_file (strings) are required"),
        ('selector = "s"\nkey_file = "/nonexistent/key"', "key_file '/nonexistent/key'"),
        ('selector = "s"\nkey_file = "KEY"\nalgorithm = "ed25519-sha256"', "holds a rsa-sha256"),
        ('selector = "s"\nkey_file = "KEY"\ncolour = "blue"', "unknown key(s) colour"),
        ('selector = "s"\nkey_file = "KEY"\nheaders = "From"', "a list of header field names"),
    ],
)
def test_a_wrong_dkim_table_names_what_is_wrong(
    tmp_path: Path, key_file: Path, table: str, problem: str
) -> None:
    body = table.replace("KEY", key_file.as_posix())
    config = settings_file(tmp_path, f'[spoolmail.dkim."example.com"]\n{body}')
    with pytest.raises(ConfigurationError) as raised:
        assemble.dkim_policy(load_settings(config, {}))
    assert problem in str(raised.value)
    assert 'dkim."example.com"' in str(raised.value)


def test_not_a_table_of_tables_is_refused(tmp_path: Path) -> None:
    config = settings_file(tmp_path, 'dkim = { "example.com" = "selector" }')
    with pytest.raises(ConfigurationError, match="table of DKIM signers"):
        load_settings(config, {})


def test_mta_sts_suppression_throttle_and_helo_name_reach_the_service(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "mta_sts": False,
            "suppression_days": 0,
            "max_messages_per_minute": 120,
            "helo_name": "mail.example.net",
        },
    )
    with Spool(tmp_path / "MailRoot") as spool:
        service = assemble.service(settings, spool)
        try:
            assert service.helo_name == "mail.example.net"
            assert service.suppression is None
        finally:
            service.close()
    flag = run("--root", str(tmp_path / "R"), "config", "--no-mta-sts", "--suppression-days", "7")
    assert flag[0] == 0
    assert "mta_sts = false" in flag[1]
    assert "suppression_days = 7" in flag[1]
    with pytest.raises(ConfigurationError, match="max_messages_per_minute"):
        load_settings(None, {"max_messages_per_minute": 0})


def test_suppress_list_and_remove(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    with Spool(root) as spool:
        SuppressionList(spool).add(
            "gone@example.net",
            Reply(550, "5.1.1", "no such user", host="192.0.2.9"),
            queue_id="19ac9b2f1c0-00005e1f0c2a9b7d",
        )
    status, out = run("--root", str(root), "suppress", "list")
    assert status == 0
    assert out.startswith("gone@example.net  ")
    assert "5.1.1" in out
    assert out.endswith("-- 1 suppressed\n")
    status, out = run("--root", str(root), "suppress", "list", "--json")
    assert json.loads(out)["address"] == "gone@example.net"
    assert run("--root", str(root), "suppress", "remove", "gone@example.net") == (
        0,
        "gone@example.net: no longer suppressed\n",
    )
    assert run("--root", str(root), "suppress", "remove", "gone@example.net")[0] == 1
    assert run("--root", str(root), "suppress", "remove", "not an address")[0] == 2
    assert run("--root", str(root), "suppress", "list")[1] == "-- 0 suppressed\n"


@pytest.fixture(scope="module")
def fcrdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    records = (
        "host-record=mail.fcrdns.test,192.0.2.25",
        "ptr-record=25.2.0.192.in-addr.arpa,mail.fcrdns.test",
        "host-record=other.fcrdns.test,192.0.2.26",
        "ptr-record=26.2.0.192.in-addr.arpa,vm-26.provider.test",
    )
    with DnsServer(records, directory=tmp_path_factory.mktemp("check")) as server:
        yield server


def test_check_says_whether_the_helo_name_resolves_back(tmp_path: Path, fcrdns: DnsServer) -> None:
    dns = f"127.0.0.1:{fcrdns.port}"
    root = str(tmp_path / "MailRoot")
    status, out = run(
        "--root", root, "check", "--helo-name", "mail.fcrdns.test", "--dns-server", dns
    )
    assert (status, out.splitlines()[0]) == (
        0,
        "mail.fcrdns.test: forward and reverse DNS agree (192.0.2.25 -> mail.fcrdns.test)",
    )
    status, out = run(
        "--root", root, "check", "--helo-name", "other.fcrdns.test", "--dns-server", dns
    )
    assert status == 1
    assert "points back to vm-26.provider.test" in out


def test_dane_is_off_unless_asked(tmp_path: Path) -> None:
    assert load_settings(None, {}).dane is False
    status, out = run("--root", str(tmp_path / "R"), "config", "--dane")
    assert (status, "dane = true" in out) == (0, True)
