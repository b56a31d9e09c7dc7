"""The command's delivery settings against real parts: a dnsmasq, aiosmtpd MX hosts, routes."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolmail._cli.main import EX_OK, EX_USAGE, main
from tests.dnsserver import DnsServer
from tests.smtpservers import SmtpServer, smtp_server

pytestmark = pytest.mark.integration


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    # implicit.test has no MX: its own address, 127.0.0.21, is where its mail goes.
    with DnsServer(records=("host-record=implicit.test,127.0.0.21",)) as server:
        yield server


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def run(root: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", str(root), *argv], out=out), out.getvalue()


def submit(root: Path, to: str) -> None:
    (root / "Pickup").mkdir(parents=True, exist_ok=True)
    (root / "Pickup" / f"{to}.eml").write_bytes(
        f"From: app@example.com\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n".encode()
    )


def test_dns_server_flag_sends_mail_to_the_mx(tmp_path: Path, dns: DnsServer) -> None:
    root = tmp_path / "MailRoot"
    with smtp_server(host="127.0.0.21") as mx:
        submit(root, "ops@implicit.test")
        status, out = run(
            root,
            "run",
            "--once",
            "--local-domain",
            "example.com",
            "--dns-server",
            f"127.0.0.1:{dns.port}",
            "--smtp-port",
            str(mx.port),
        )
    assert status == EX_OK
    assert "delivered to ops@implicit.test" in out
    assert [m.rcpt_tos for m in mx.messages] == [("ops@implicit.test",)]


def test_a_route_flag_overrides_dns(tmp_path: Path, server: SmtpServer) -> None:
    root = tmp_path / "MailRoot"
    submit(root, "ops@partner.test")
    status, out = run(
        root,
        "run",
        "--once",
        "--local-domain",
        "example.com",
        "--route",
        f"partner.test=[127.0.0.1]:{server.port}",
        "--masquerade-domain",
        "mail.example.com",
    )
    assert status == EX_OK, out
    [received] = server.messages
    assert received.mail_from == "app@mail.example.com"


def test_smart_host_user_needs_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPOOLMAIL_SMART_HOST_PASSWORD", raising=False)
    status, _ = run(
        tmp_path, "run", "--once", "--smart-host", "[127.0.0.1]:1", "--smart-host-user", "u"
    )
    assert status == EX_USAGE
    assert "SPOOLMAIL_SMART_HOST_PASSWORD" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--route", "nodomain"], "--route takes DOMAIN=VALUE"),
        (["--tls-domain", "bank.test=sometimes"], "tls_domains"),
        (["--dns-server", "ns.example.test"], "is not an IP address"),
        (["--tls-ca-file", "/nonexistent/ca.pem"], "tls_ca_file"),
        (["--max-connections", "0"], "max_connections must be positive"),
    ],
)
def test_bad_delivery_flags_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    status, _ = run(tmp_path, "run", "--once", *argv)
    assert status == EX_USAGE
    assert fragment in capsys.readouterr().err


def test_settings_file_tables(tmp_path: Path, server: SmtpServer) -> None:
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    config.write_text(
        f'[spoolmail]\nroot = "{root}"\nlocal_domains = ["example.com"]\n'
        f'routes = {{ "partner.test" = "[127.0.0.1]:{server.port}" }}\n'
        'tls_domains = { "partner.test" = "never" }\n'
    )
    submit(root, "ops@partner.test")
    assert main(["--config", str(config), "run", "--once"], out=io.StringIO()) == EX_OK
    assert len(server.messages) == 1
    assert os.listdir(root / "Queue") == []
