"""Listeners for the tests: on 127.0.0.1 and a free port, over a MemoryFS spool by default."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from spoolmail import Listener, ListenerLimits, Router, Spool
from spoolmail.testing import FakeClock

LOCAL = ["example.com"]
ALIAS = ["example.org"]


def host_port(listener: Listener, index: int = 0) -> tuple[str, int]:
    host, _, port = listener.addresses[index].rpartition(":")
    return host.strip("[]"), int(port)


@contextmanager
def running(spool: Spool, **options: Any) -> Iterator[Listener]:
    """A started Listener on ``spool``; ``limits`` may be a dict of ListenerLimits fields."""
    limits = options.pop("limits", {})
    options.setdefault("addresses", ["127.0.0.1:0"])
    options.setdefault("router", Router(local_domains=LOCAL, alias_domains=ALIAS))
    options.setdefault("fqdn", "mx.example.com")
    with Listener(
        spool, limits=ListenerLimits(**{"auth_failure_delay": 0, **limits}), **options
    ) as listener:
        yield listener


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    from tests.listen import raw  # noqa: PLC0415 (raw imports this module)

    yield
    while raw.OPEN:
        raw.OPEN.pop().close()


@pytest.fixture
def spool() -> Iterator[Spool]:
    with Spool("mem://", clock=FakeClock()) as spool:
        yield spool


Connect = Callable[..., smtplib.SMTP]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``connect(listener)``: an smtplib client that said EHLO; closed after the test."""
    clients: list[smtplib.SMTP] = []

    def make(listener: Listener, *, index: int = 0, source: str | None = None) -> smtplib.SMTP:
        host, port = host_port(listener, index)
        client = smtplib.SMTP(
            host,
            port,
            local_hostname="client.test",
            timeout=10,
            source_address=(source, 0) if source else None,
        )
        clients.append(client)
        client.ehlo()
        return client

    yield make
    for client in clients:
        with suppress(OSError):
            client.close()
