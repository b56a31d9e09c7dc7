"""Prometheus metrics for a running :class:`~spoolmail.MailService` (extra ``metrics``).

``serve_metrics(lambda: service, "127.0.0.1:9101")`` serves ``/metrics`` on its own thread;
``MetricsCollector(lambda: service)`` is the collector alone, for a program that already has a
``prometheus_client`` registry. Both ask for the service through a callable, so a daemon that
replaces its service (``spoolmail run`` on SIGHUP) keeps one endpoint. Each scrape calls
:meth:`MailService.stats`: one listing of the Queue and of Pickup, so scrape every 15 s or
more, not every 100 ms. The counters restart with the service, as Prometheus expects of a
process's counters.

Metrics (names as ``prometheus_client`` writes them):

- ``spoolmail_picked_up_total``, ``spoolmail_queued_total`` (messages),
  ``spoolmail_delivered_total``, ``spoolmail_deferred_total``, ``spoolmail_failed_total``
  (recipient outcomes), ``spoolmail_dsns_total``, ``spoolmail_badmail_total``,
  ``spoolmail_removed_total``, ``spoolmail_connections_opened_total``,
  ``spoolmail_connections_reused_total``;
- ``spoolmail_messages{state="queued"|"held"|"delivering"|"pickup"}``, what waits now;
- ``spoolmail_connections{host="name[address]:port"}``, SMTP connections open by host;
- ``spoolmail_dead_hosts``, hosts left alone for not answering;
- ``spoolmail_started_seconds``, when the service (its counters) started, as a Unix time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from spoolmail.exceptions import ConfigurationError, DependencyError

if TYPE_CHECKING:
    from spoolmail._service.observers import Stats

__all__ = ["COUNTERS", "MetricsCollector", "StatsSource", "check_metrics", "serve_metrics"]

#: The counters of :class:`spoolmail.Stats`, each a ``spoolmail_<name>_total`` metric.
COUNTERS = {
    "picked_up": "Pickup files taken in",
    "queued": "messages that entered the Queue (DSNs and admitted ones too)",
    "delivered": "recipients delivered",
    "deferred": "recipient outcomes deferred",
    "failed": "recipients failed",
    "dsns": "delivery status notifications queued",
    "badmail": "messages or files moved to BadMail",
    "removed": "messages finished",
    "connections_opened": "SMTP connections opened",
    "connections_reused": "transactions sent over a connection kept from an earlier one",
}


class StatsSource(Protocol):
    """What the metrics read: a :class:`~spoolmail.MailService`, or anything with its
    ``stats()`` (``spoolmail run --workers`` sums its workers')."""

    def stats(self) -> Stats:
        """What happened and what waits now."""
        ...


def _prometheus() -> Any:
    try:
        import prometheus_client  # noqa: PLC0415 (an optional extra)
        import prometheus_client.core  # noqa: PLC0415
    except ModuleNotFoundError as exc:  # pragma: no cover - the test extra has it
        raise DependencyError(
            "metrics need prometheus-client: pip install 'spoolmail[metrics]'"
        ) from exc
    return prometheus_client


class MetricsCollector:
    """A ``prometheus_client`` collector of the service ``current()`` returns."""

    def __init__(self, current: Callable[[], StatsSource]) -> None:
        self._current = current
        self._core = _prometheus().core

    def collect(self) -> Iterator[Any]:
        """The metrics, from one :meth:`MailService.stats` call."""
        core = self._core
        stats = self._current().stats()
        for name, text in COUNTERS.items():
            counter = core.CounterMetricFamily(f"spoolmail_{name}", text)
            counter.add_metric([], getattr(stats, name))
            yield counter
        waiting = core.GaugeMetricFamily(
            "spoolmail_messages", "messages waiting now, by state", labels=["state"]
        )
        for state in ("queue", "held", "delivering", "pickup"):
            waiting.add_metric(["queued" if state == "queue" else state], getattr(stats, state))
        yield waiting
        connections = core.GaugeMetricFamily(
            "spoolmail_connections", "SMTP connections open, by host", labels=["host"]
        )
        for host, count in sorted(stats.connections.items()):
            connections.add_metric([host], count)
        yield connections
        yield core.GaugeMetricFamily(
            "spoolmail_dead_hosts", "hosts left alone for not answering", value=stats.dead_hosts
        )
        yield core.GaugeMetricFamily(
            "spoolmail_started_seconds",
            "when the service's counters started (Unix time)",
            value=stats.started.timestamp(),
        )


def check_metrics(address: str) -> None:
    """What :func:`serve_metrics` would refuse before it listens: a missing
    ``prometheus-client`` (:class:`~spoolmail.exceptions.DependencyError`) or an ``address``
    that is not ``host:port`` (:class:`~spoolmail.exceptions.ConfigurationError`). The command
    asks before it starts its workers."""
    _prometheus()
    _address(address)


def _address(address: str) -> tuple[str, int]:
    host, colon, port_text = address.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigurationError(f"metrics: {address!r} is not ADDRESS:PORT")
    return host.strip("[]") or "127.0.0.1", int(port_text)


def serve_metrics(current: Callable[[], StatsSource], address: str) -> Callable[[], None]:
    """Serve ``/metrics`` on ``address`` (``host:port``, ``[v6]:port``) on a thread of its own;
    returns a function that stops it. Its own registry: nothing of the process's default one."""
    prometheus = _prometheus()
    host, port = _address(address)
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(current))
    try:
        server, thread = prometheus.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(f"metrics: cannot listen on {address}: {exc}") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    stop.port = server.server_port  # type: ignore[attr-defined]  # for a port 0 given
    return stop
