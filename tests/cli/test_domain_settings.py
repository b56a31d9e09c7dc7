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
