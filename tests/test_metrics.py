"""Prometheus metrics: the collector reads ``MailService.stats()``; the endpoint serves it on
127.0.0.1; ``spoolmail run --metrics`` serves it beside the daemon."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import prometheus_client
import pytest

from spoolmail import MailService, Router, Spool
from spoolmail.exceptions import ConfigurationError
from spoolmail.metrics import COUNTERS, MetricsCollector, serve_metrics
from spoolmail.testing import FakeClock

MESSAGE = b"From: app@example.com\r\nTo: ops@example.com\r\nSubject: s\r\n\r\nbody\r\n"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        return answer.read().decode()


def test_the_collector_tells_what_the_service_did() -> None:
    clock = FakeClock()
    with Spool("mem://", clock=clock) as spool:
        service = MailService(spool, router=Router(local_domains=["example.com"]), clock=clock)
        spool.submit(MESSAGE)
        spool.submit(MESSAGE.replace(b"ops@", b"dev@"))
        service.run_once()
        spool.submit(MESSAGE)  # waiting in Pickup
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(MetricsCollector(lambda: service))
        text = prometheus_client.generate_latest(registry).decode()
        service.close()
    lines = set(text.splitlines())
    assert "spoolmail_delivered_total 2.0" in lines
    assert "spoolmail_removed_total 2.0" in lines
    assert 'spoolmail_messages{state="pickup"} 1.0' in lines
    assert 'spoolmail_messages{state="queued"} 0.0' in lines
    for name in COUNTERS:
        assert (
            f"# TYPE spoolmail_{name}_total counter" in lines
            or f"# TYPE spoolmail_{name} counter" in lines
        )


def test_the_endpoint_serves_and_stops() -> None:
    with Spool("mem://") as spool:
        service = MailService(spool)
        stop = serve_metrics(lambda: service, "127.0.0.1:0")
        try:
            port = stop.port  # type: ignore[attr-defined]
            assert "spoolmail_dead_hosts 0.0" in scrape(port)
        finally:
            stop()
            service.close()
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", port), timeout=2),
        ):
            pass


@pytest.mark.parametrize("address", ["9101", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_bad_address_is_a_clear_error(address: str) -> None:
    with Spool("mem://") as spool:
        service = MailService(spool)
        with pytest.raises(ConfigurationError, match="ADDRESS:PORT"):
            serve_metrics(lambda: service, address)
        service.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_spoolmail_run_serves_metrics(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    port = _free_port()
    command = [sys.executable, "-m", "spoolmail", "--root", str(root), "run"]
    with subprocess.Popen(
        [*command, "--local-domain", "example.com", "--metrics", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith(b"spoolmail: serving")
            (root / "Pickup" / ".m.tmp").write_bytes(MESSAGE)
            (root / "Pickup" / ".m.tmp").rename(root / "Pickup" / "m.eml")
            deadline = time.monotonic() + 30
            while "spoolmail_delivered_total 1.0" not in scrape(port):
                assert time.monotonic() < deadline, "never delivered"
                time.sleep(0.05)
        finally:
            process.terminate()
            process.communicate(timeout=30)
    assert process.returncode == 0
