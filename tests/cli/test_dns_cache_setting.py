"""The ``dns_cache_size`` setting: from the file or ``--dns-cache-size`` to the resolver the
service builds, refused below 0, taken again at SIGHUP; and the workers' DNS cache figures
summed as one service's.

``spoolmail run --once`` delivers two messages to one domain, looking its MX up in a real DNS
server on 127.0.0.1 (:class:`~tests.transport.test_hostile_dns.ScriptedDns`, which counts the
questions) and sending to aiosmtpd on 127.0.0.1: with the cache, the MX is asked once; with
``dns_cache_size = 0``, once per message.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spoolmail import Stats
from spoolmail._cli import reloading, settings, workers
from spoolmail._cli.main import EX_OK, EX_USAGE, main
from spoolmail._cli.settings import Settings, load_settings
from spoolmail._transport import dns as dns_transport
from spoolmail.exceptions import ConfigurationError
from tests.service.test_dns_cache_stats import script  # its DNS: ok.test's MX, 127.0.0.1
from tests.smtpservers import SmtpServer, smtp_server
from tests.transport.test_hostile_dns import ScriptedDns


@pytest.fixture
def dns_server() -> Iterator[ScriptedDns]:
    with ScriptedDns(script) as server:
        yield server


@pytest.fixture
def mx() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def submit(root: Path, *recipients: str) -> None:
    (root / "Pickup").mkdir(parents=True, exist_ok=True)
    for to in recipients:
        (root / "Pickup" / f"{to}.eml").write_bytes(
            f"From: app@example.com\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n".encode()
        )


def run(root: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", str(root), *argv], out=out), out.getvalue()


def mx_questions(server: ScriptedDns) -> int:
    return sum(name == "ok.test." and rdtype == "MX" for _, name, rdtype in server.queries)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("file", "flags", "asked"),
    [
        ("", [], 1),
        ("dns_cache_size = 0\n", [], 2),
        ("", ["--dns-cache-size", "0"], 2),
        ("dns_cache_size = 0\n", ["--dns-cache-size", "5"], 1),  # the flag wins
    ],
)
def test_the_setting_reaches_the_resolver(
    tmp_path: Path,
    dns_server: ScriptedDns,
    mx: SmtpServer,
    file: str,
    flags: list[str],
    asked: int,
) -> None:
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    config.write_text(f"[spoolmail]\n{file}")
    submit(root, "x@ok.test", "y@ok.test")
    status, out = run(
        root,
        "--config",
        str(config),
        "run",
        "--once",
        "--local-domain",
        "example.com",
        "--dns-server",
        f"127.0.0.1:{dns_server.port}",
        "--smtp-port",
        str(mx.port),
        "--no-mta-sts",
        *flags,
    )
    assert status == EX_OK, out
    assert len(mx.messages) == 2
    assert mx_questions(dns_server) == asked


def test_the_default_is_the_resolvers() -> None:
    # settings.py keeps its own copy, so as not to import the service for it.
    assert settings.DNS_CACHE_SIZE == dns_transport.CACHE_SIZE
    assert Settings().dns_cache_size == dns_transport.CACHE_SIZE


def test_a_negative_size_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "spoolmail.toml"
    config.write_text("[spoolmail]\ndns_cache_size = -1\n")
    with pytest.raises(ConfigurationError, match="dns_cache_size must be 0 or more, not -1"):
        load_settings(config, {})
    config.write_text('[spoolmail]\ndns_cache_size = "10"\n')
    with pytest.raises(ConfigurationError, match="dns_cache_size"):
        load_settings(config, {})
    status, _ = run(tmp_path / "MailRoot", "config", "--dns-cache-size", "-1")
    assert status == EX_USAGE


def test_a_sighup_takes_a_new_size(tmp_path: Path) -> None:
    config = tmp_path / "spoolmail.toml"
    config.write_text("[spoolmail]\ndns_cache_size = 100\n")
    args = argparse.Namespace(config=config)
    current = load_settings(config, {})
    config.write_text("[spoolmail]\ndns_cache_size = 0\n")
    assert reloading.reread(current, args).dns_cache_size == 0
    assert "dns_cache_size" not in reloading.RESTART_KEYS


def test_the_workers_cache_figures_are_summed() -> None:
    """Each worker has a cache of its own: its hits, misses and answers kept add up."""
    started = datetime(2026, 12, 5, tzinfo=UTC)
    first = Stats(started=started, dns_cache_hits=5, dns_cache_misses=2, dns_cache_entries=2)
    second = Stats(started=started, dns_cache_hits=1, dns_cache_misses=3, dns_cache_entries=3)
    both = workers.combine_stats([first, second])
    assert (both.dns_cache_hits, both.dns_cache_misses, both.dns_cache_entries) == (6, 5, 5)
