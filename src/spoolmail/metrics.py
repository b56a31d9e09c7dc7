"""Prometheus metrics for a running :class:`~spoolmail.MailService` (extra ``metrics``).

``serve_metrics(lambda: service, "127.0.0.1:9101")`` serves ``/metrics`` on its own thread;
``MetricsCollector(lambda: service)`` is the collector alone, for a program that already has a
``prometheus_client`` registry. Both ask for the service through a callable, so a daemon that
replaces its service (``spoolmail run`` on SIGHUP) keeps one endpoint. A scrape calls
:meth:`MailService.stats` (one listing of the Queue and of Pickup); scrapes that come while one
runs, or within :data:`MIN_INTERVAL` (or five times as long as the last one took) of it, get
its figures, so no scraper can spend more than about a sixth of a core on them. The counters
restart with the service, as Prometheus expects of a process's counters.

The endpoint serves at most :data:`MAX_CONNECTIONS` connections at once (one more is closed
unanswered), drops one that is silent for :data:`CONNECTION_TIMEOUT` seconds and one that lasts
:data:`CONNECTION_DEADLINE` seconds however it drips: clients that connect and say nothing, or a
byte now and then, cannot pile up a thread each nor keep the scraper out.

Metrics (names as ``prometheus_client`` writes them):

- ``spoolmail_picked_up_total``, ``spoolmail_queued_total`` (messages),
  ``spoolmail_delivered_total``, ``spoolmail_deferred_total``, ``spoolmail_failed_total``
  (recipient outcomes), ``spoolmail_dsns_total``, ``spoolmail_badmail_total``,
  ``spoolmail_removed_total``, ``spoolmail_connections_opened_total``,
  ``spoolmail_connections_reused_total``, ``spoolmail_dns_cache_hits_total``,
  ``spoolmail_dns_cache_misses_total`` (DNS lookups answered from the cache, or asked);
- ``spoolmail_messages{state="queued"|"held"|"delivering"|"pickup"}``, what waits now;
- ``spoolmail_connections{host="name[address]:port"}``, SMTP connections open by host;
- ``spoolmail_dead_hosts``, hosts left alone for not answering;
- ``spoolmail_failed_lookups``, destinations left alone for a lookup that got no answer;
- ``spoolmail_dns_cache_entries``, DNS answers kept now;
- ``spoolmail_started_seconds``, when the service (its counters) started, as a Unix time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from spoolmail.exceptions import ConfigurationError, DependencyError

if TYPE_CHECKING:
    from spoolmail._service.observers import Stats

__all__ = [
    "CONNECTION_DEADLINE",
    "CONNECTION_TIMEOUT",
    "COUNTERS",
    "MAX_CONNECTIONS",
    "MIN_INTERVAL",
    "MetricsCollector",
    "StatsSource",
    "check_metrics",
    "serve_metrics",
]

log = logging.getLogger("spoolmail.metrics")

#: Seconds a collection's figures serve the scrapes after it (at least; five times as long
#: as the collection took when that is longer).
MIN_INTERVAL = 1.0
#: Connections the endpoint serves at once; one more is closed unanswered.
MAX_CONNECTIONS = 8
#: Seconds a connection may be silent while its request is read or its answer sent.
CONNECTION_TIMEOUT = 10.0
#: Seconds a connection may last in all, its request read and its answer sent: a client that
#: sends a byte every few seconds is never silent for CONNECTION_TIMEOUT.
CONNECTION_DEADLINE = 30.0

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
    "dns_cache_hits": "DNS lookups answered from the cache",
    "dns_cache_misses": "DNS lookups the cache had no answer for (asked of the server)",
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
    """A ``prometheus_client`` collector of the service ``current()`` returns.

    One :meth:`MailService.stats` call at a time: a scrape that comes while one runs waits
    for it and gets its figures, as does one within ``min_interval`` seconds of its end (or
    five times as long as it took, when that is longer). ``clock`` is ``time.monotonic``.
    """

    def __init__(
        self,
        current: Callable[[], StatsSource],
        *,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._current = current
        self._core = _prometheus().core
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, Stats] | None = None  # when the figures stop serving; them

    def stats(self) -> Stats:
        """The figures a scrape gets now (see the class)."""
        with self._lock:
            if self._last is not None and self._clock() < self._last[0]:
                return self._last[1]
            began = self._clock()
            stats = self._current().stats()
            ended = self._clock()
            self._last = (ended + max(self._min_interval, 5 * (ended - began)), stats)
            return stats

    def collect(self) -> Iterator[Any]:
        """The metrics, from :meth:`stats`."""
        core = self._core
        stats = self.stats()
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
            "spoolmail_failed_lookups",
            "destinations left alone for a lookup that got no answer",
            value=stats.failed_lookups,
        )
        yield core.GaugeMetricFamily(
            "spoolmail_dns_cache_entries", "DNS answers kept now", value=stats.dns_cache_entries
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


@functools.cache
def _server_class(family: socket.AddressFamily) -> type[Any]:
    """The endpoint's HTTP server: a thread a connection, at most :data:`MAX_CONNECTIONS` of
    them, each silent no longer than :data:`CONNECTION_TIMEOUT` and open no longer than
    :data:`CONNECTION_DEADLINE`. Made at the first use: its
    modules (``wsgiref``, ``http.server``) are no cost of a daemon without metrics."""
    import socketserver  # noqa: PLC0415
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer  # noqa: PLC0415

    class Handler(WSGIRequestHandler):
        def setup(self) -> None:
            super().setup()
            self.connection.settimeout(CONNECTION_TIMEOUT)  # read now: a test may change it

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
            pass

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True
        block_on_close = False
        handler = Handler

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
            self._open: dict[socket.socket, float] = {}  # each connection's deadline
            self._open_lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self._slots.acquire(blocking=False):
                log.debug("metrics: %s turned away: %d open", client_address, MAX_CONNECTIONS)
                self.shutdown_request(request)
                return
            with self._open_lock:
                self._open[request] = time.monotonic() + CONNECTION_DEADLINE
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._forget(request)
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._forget(request)

        def _forget(self, request: socket.socket) -> None:
            with self._open_lock:
                del self._open[request]
            self._slots.release()

        def service_actions(self) -> None:
            # serve_forever calls this between its polls (every half second): a connection past
            # its deadline is shut down, which ends its thread's read or write at once.
            now = time.monotonic()
            with self._open_lock:
                overdue = [request for request, deadline in self._open.items() if deadline < now]
            for request in overdue:
                log.debug("metrics: a connection past %g s shut down", CONNECTION_DEADLINE)
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client gone silent or away: no traceback on stderr, which socketserver prints.
            log.debug("metrics: %s: connection ended", client_address, exc_info=True)

    return Server


def serve_metrics(current: Callable[[], StatsSource], address: str) -> Callable[[], None]:
    """Serve ``/metrics`` on ``address`` (``host:port``, ``[v6]:port``) on a thread of its own;
    returns a function that stops it. Its own registry: nothing of the process's default one.
    At most :data:`MAX_CONNECTIONS` connections at once, each silent no longer than
    :data:`CONNECTION_TIMEOUT` seconds and open no longer than :data:`CONNECTION_DEADLINE`."""
    from wsgiref.simple_server import make_server  # noqa: PLC0415 (see _server_class)

    prometheus = _prometheus()
    host, port = _address(address)
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(current))
    server_class = _server_class(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        server = make_server(
            host, port, prometheus.make_wsgi_app(registry), server_class, server_class.handler
        )
    except OSError as exc:
        raise ConfigurationError(f"metrics: cannot listen on {address}: {exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="spoolmail-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    stop.port = server.server_port  # type: ignore[attr-defined]  # for a port 0 given
    return stop
