"""Prometheus metrics: the collector reads ``MailService.stats()``; the endpoint serves it on
127.0.0.1; ``spoolmail run --metrics`` serves it beside the daemon."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import prometheus_client
import pytest

from spoolmail import MailService, Router, Spool, Stats, metrics
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


def test_stats_without_gauges_lists_nothing_and_keeps_the_counters() -> None:
    clock = FakeClock()
    with Spool("mem://", clock=clock) as spool:
        service = MailService(spool, router=Router(local_domains=["example.com"]), clock=clock)
        spool.submit(MESSAGE)
        service.run_once()
        spool.submit(MESSAGE)  # waiting in Pickup
        whole, counted = service.stats(), service.stats(gauges=False)
        service.close()
    assert (whole.pickup, counted.pickup) == (1, 0)
    assert (counted.delivered, counted.removed) == (whole.delivered, whole.removed) == (1, 1)
    assert counted.started == whole.started


def test_the_endpoint_serves_and_stops() -> None:
    with Spool("mem://") as spool:
        service = MailService(spool)
        stop = serve_metrics(lambda: service, "127.0.0.1:0")
        try:
            port = stop.port  # type: ignore[attr-defined]
            page = scrape(port)
            assert "spoolmail_dead_hosts 0.0" in page
            assert "spoolmail_failed_lookups 0.0" in page
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


# -- what the endpoint and the collector bound ------------------------------------------------


class SlowSource:
    """A stats source that counts its calls and takes ``seconds`` of the fake clock each."""

    def __init__(self, clock: list[float], seconds: float = 0.0, wait: float = 0.0) -> None:
        self.clock, self.seconds, self.wait = clock, seconds, wait
        self.calls = 0

    def stats(self) -> Stats:
        self.calls += 1
        time.sleep(self.wait)  # real time: scrapes that come meanwhile must wait, not collect
        self.clock[0] += self.seconds
        return Stats(started=datetime(2026, 12, 5, tzinfo=UTC), delivered=self.calls)


def test_concurrent_scrapes_share_one_collection() -> None:
    now = [0.0]
    source = SlowSource(now, wait=0.3)
    collector = MetricsCollector(lambda: source, clock=lambda: now[0])
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: collector.stats().delivered, range(10)))
    assert source.calls == 1
    assert answers == [1] * 10


def test_figures_serve_for_min_interval_or_five_times_what_they_took() -> None:
    now = [0.0]
    source = SlowSource(now)
    collector = MetricsCollector(lambda: source, min_interval=1.0, clock=lambda: now[0])
    assert collector.stats().delivered == 1
    now[0] = 0.99
    assert collector.stats().delivered == 1  # within a second: the same figures
    now[0] = 1.0
    assert collector.stats().delivered == 2
    source.seconds = 3.0  # a big Queue: this collection takes 3 s (from 1.0 to 4.0)
    now[0] = 2.5
    assert collector.stats().delivered == 3
    now[0] = 5.5 + 14.9  # ended at 5.5, so fresh until 5.5 + 15
    assert collector.stats().delivered == 3
    now[0] = 5.5 + 15.0
    assert collector.stats().delivered == 4
    assert MetricsCollector(lambda: source, min_interval=0).stats().delivered == 5


def _threads() -> int:
    return threading.active_count()


def test_silent_clients_hold_no_more_than_max_connections_threads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each connection had a thread until the client went away: 300 silent clients, 300 threads.
    monkeypatch.setattr(metrics, "CONNECTION_TIMEOUT", 3.0)
    limit = metrics.MAX_CONNECTIONS
    with Spool("mem://") as spool:
        service = MailService(spool)
        stop = serve_metrics(lambda: service, "127.0.0.1:0")
        port = stop.port  # type: ignore[attr-defined]
        before = _threads()
        silent: list[tuple[socket.socket, float]] = []
        try:
            for count in range(1, limit + 1):  # each served, on a thread of its own
                silent.append((socket.create_connection(("127.0.0.1", port), 10), time.monotonic()))
                deadline = time.monotonic() + 5
                while _threads() < before + count:
                    assert time.monotonic() < deadline, "not accepted"
                    time.sleep(0.01)
            for _ in range(30):  # past the limit: closed at once, unanswered, no thread
                with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                    assert extra.recv(1) == b""
                assert _threads() == before + limit
            # The silent ones are dropped after the timeout, and the endpoint serves again.
            for client, connected in silent:
                client.settimeout(10)
                assert client.recv(1) == b""
                assert 2.5 < time.monotonic() - connected < 8
            assert "spoolmail_dead_hosts 0.0" in scrape(port)
        finally:
            for client, _ in silent:
                client.close()
            stop()
            service.close()
    assert "Traceback" not in capsys.readouterr().err


def test_a_client_that_drips_or_sends_junk_gets_no_traceback_and_the_endpoint_serves_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(metrics, "CONNECTION_TIMEOUT", 0.5)
    with Spool("mem://") as spool:
        service = MailService(spool)
        stop = serve_metrics(lambda: service, "127.0.0.1:0")
        port = stop.port  # type: ignore[attr-defined]
        try:
            for junk in (
                b"GET /metrics HTTP/1.1\r\nHost: x",
                b"\x16\x03\x01\x02\x00",
                b"A" * 70_000,
            ):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                    with contextlib.suppress(OSError):
                        client.sendall(junk)
                    with contextlib.suppress(OSError):
                        while client.recv(65536):
                            pass
            assert "spoolmail_dead_hosts 0.0" in scrape(port)
        finally:
            stop()
            service.close()
    assert "Traceback" not in capsys.readouterr().err


def test_clients_that_drip_a_byte_at_a_time_are_dropped_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A byte every half second is never silent for CONNECTION_TIMEOUT: eight such clients held
    # every slot for as long as they liked, and no scraper got in.
    monkeypatch.setattr(metrics, "CONNECTION_TIMEOUT", 5.0)
    monkeypatch.setattr(metrics, "CONNECTION_DEADLINE", 2.0)
    with Spool("mem://") as spool:
        service = MailService(spool)
        stop = serve_metrics(lambda: service, "127.0.0.1:0")
        port = stop.port  # type: ignore[attr-defined]
        drippers, connected = [], []
        for _ in range(metrics.MAX_CONNECTIONS):  # some wait for a SYN resent (backlog of 5)
            drippers.append(socket.create_connection(("127.0.0.1", port), 10))
            connected.append(time.monotonic())
        try:
            request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"a" * 100
            ended: dict[int, float] = {}
            for byte in request:
                for number, client in enumerate(drippers):
                    if number not in ended:
                        try:
                            client.sendall(bytes([byte]))
                        except OSError:
                            ended[number] = time.monotonic() - connected[number]
                time.sleep(0.25)
                for number, client in enumerate(drippers):
                    client.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        if number not in ended and client.recv(1) == b"":
                            ended[number] = time.monotonic() - connected[number]
                if len(ended) == len(drippers):
                    break
            assert sorted(ended) == list(range(len(drippers)))
            assert all(1.5 < when < 6 for when in ended.values()), ended
            assert "spoolmail_dead_hosts 0.0" in scrape(port)  # a slot for the scraper again
        finally:
            for client in drippers:
                client.close()
            stop()
            service.close()
    assert "Traceback" not in capsys.readouterr().err
