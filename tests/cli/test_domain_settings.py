"""Domains in the command's settings (flags and TOML) go through the Router's checks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from spoolmail._cli.main import EX_USAGE, main


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--local-domain", "*"], "local_domains: '*' is not a domain (wildcards"),
        (["--alias-domain", "*.example.com"], "alias_domains: '*.example.com' is not a domain"),
        (["--route", "*=[127.0.0.1]:1"], "routes: '*' is not a domain"),
        (["--smart-host", "*"], "'*' is not a host name"),
    ],
)
def test_wildcard_flags_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], fragment: str
) -> None:
    status, out = run("--root", str(tmp_path / "MailRoot"), "run", "--once", *flags)
    assert (status, out) == (EX_USAGE, "")
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('local_domains = ["*"]', "local_domains: '*' is not a domain"),
        ('alias_domains = ["example.org", "*"]', "alias_domains: '*' is not a domain"),
        ('routes = { "*" = "relay.test" }', "routes: '*' is not a domain"),
        ('tls_domains = { "*" = "required" }', "tls_domains: '*' is not a domain"),
    ],
)
def test_wildcards_in_the_settings_file_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, fragment: str
) -> None:
    config = tmp_path / "spoolmail.toml"
    root = (tmp_path / "MailRoot").as_posix()
    config.write_text(f'[spoolmail]\nroot = "{root}"\n{toml}\n', encoding="utf-8")
    assert run("--config", str(config), "run", "--once") == (EX_USAGE, "")
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("how", ["flag", "toml"])
def test_catch_all_sends_every_domain_to_drop(tmp_path: Path, how: str) -> None:
    """Capture mode: mail for a domain that is not local lands in Drop, not at its MX hosts."""
    root = tmp_path / "MailRoot"
    argv = ["--root", str(root)]
    if how == "toml":
        config = tmp_path / "spoolmail.toml"
        config.write_text("[spoolmail]\ncatch_all = true\n", encoding="utf-8")
        argv = ["--config", str(config), *argv]
    assert run(*argv, "init")[0] == 0
    message = b"From: app@example.com\r\nTo: someone@elsewhere.example\r\n\r\nhi\r\n"
    (root / "Pickup" / "one.eml").write_bytes(message)
    status, out = run(
        *argv, "run", "--once", "--pickup-settle", "0", *(["--catch-all"] if how == "flag" else [])
    )
    assert status == 0, out
    dropped = list((root / "Drop").iterdir())
    assert len(dropped) == 1
    assert b"x-receiver: someone@elsewhere.example" in dropped[0].read_bytes()


def test_without_catch_all_a_remote_domain_is_not_dropped(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    assert run("--root", str(root), "init")[0] == 0
    message = b"From: app@example.com\r\nTo: someone@elsewhere.example\r\n\r\nhi\r\n"
    (root / "Pickup" / "one.eml").write_bytes(message)
    # No DNS here: a remote domain's MX lookup against a closed local port defers the message.
    status, _ = run(
        "--root", str(root), "run", "--once", "--pickup-settle", "0", "--dns-server", "127.0.0.1:9"
    )
    assert status == 0
    assert list((root / "Drop").iterdir()) == []
    assert [p.suffix for p in (root / "Queue").iterdir() if p.suffix == ".env"] == [".env"]
