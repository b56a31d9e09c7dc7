"""The service's own observers of the spool's events: the log records, and the counters behind
:meth:`~spoolmail.MailService.stats`.

:func:`log_event` writes one record a event to the ``spoolmail.mail`` logger (a child of
``spoolmail``, so handlers on either see it): the text is ``_core.events.describe``'s
Postfix-like line, and the values ride along as record attributes (``_core.events.log_fields``:
``queue_id``, ``recipient``, ``relay``, ``reply``, ``status``, ``dsn``, ``delay`` ...), so that a
JSON formatter or a filter needs no parsing. Failures and BadMail are warnings, everything else
is information. :class:`Counters` counts events since the service started, thread-safely; the
gauges of :class:`Stats` are measured when asked. Both are built on the same events, so the log,
the mail log, the counters and an embedder's observer cannot disagree. Touches no file.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType

import attrs

from spoolmail._core.events import (
    Deferred,
    Delivered,
    DsnQueued,
    Failed,
    MailEvent,
    PickedUp,
    Queued,
    Removed,
    ToBadMail,
    describe,
    log_fields,
)

__all__ = [
    "Counters",
    "LineWriter",
    "LogObserver",
    "Stats",
    "log_event",
    "log_events",
    "log_line",
    "mail_log",
    "write_lines_with",
]

mail_log = logging.getLogger("spoolmail.mail")

_WARNINGS = (Failed, ToBadMail)
_HERE = __file__


# Writes lines where the ``spoolmail`` logger's handlers would, when they are the command's own
# and nothing else hears the records (``_cli.logs``); ``None``: records only. It returns whether
# it wrote the lines (all of them or none); when it did not, the records are made as always.
LineWriter = Callable[[logging.Logger, Sequence[tuple[int, str]]], bool]
_line_writer: LineWriter | None = None


def write_lines_with(writer: LineWriter | None) -> None:
    """Have ``writer(logger, lines)`` offered the lines of :func:`log_line` and
    :func:`log_event` (each a level and a text) before records are made for them (the
    command's log, ``_cli.logs``), or no longer (``None``)."""
    global _line_writer  # noqa: PLW0603 (one writer for the process, as logging's handlers are)
    _line_writer = writer


def log_line(logger: logging.Logger, level: int, text: str) -> None:
    """``logger.log(level, "%s", text)`` for a line written once a message (a listener's
    "queued"), or the line alone where the command's handlers are all that would hear the
    record (see :func:`log_event`)."""
    if logger.isEnabledFor(level):
        writer = _line_writer
        if writer is not None and writer(logger, ((level, text),)):
            return
        logger.log(level, "%s", text, stacklevel=2)  # the record names the caller, as before


def log_event(event: MailEvent) -> None:
    """One log record for ``event`` (see the module docstring), or its line alone: where the
    command's own handlers are all that would hear the record, the line goes straight to them
    (a record, with its fields, its handlers' walk and their formatter, cost four times the
    line: a tenth of a delivered message's CPU for its two)."""
    level = logging.WARNING if isinstance(event, _WARNINGS) else logging.INFO
    if mail_log.isEnabledFor(level):
        text = describe(event)
        writer = _line_writer
        if writer is None or not writer(mail_log, ((level, text),)):
            _record(event, level, text)


def log_events(events: Sequence[MailEvent]) -> None:
    """:func:`log_event` for events fired together (a commit's, an intake batch's): where their
    lines go straight to the command's handlers, they go in one write."""
    writer = _line_writer
    if writer is None:
        for event in events:
            log_event(event)
        return
    said: list[MailEvent] = []
    lines: list[tuple[int, str]] = []
    for event in events:
        level = logging.WARNING if isinstance(event, _WARNINGS) else logging.INFO
        if mail_log.isEnabledFor(level):
            said.append(event)
            lines.append((level, describe(event)))
    if lines and not writer(mail_log, lines):
        for event, (level, text) in zip(said, lines, strict=True):
            _record(event, level, text)


class LogObserver:
    """The service's observer of its events: :func:`log_event` one at a time,
    :func:`log_events` for events fired together (``EventBus.emit_all``)."""

    __slots__ = ()

    def __call__(self, event: MailEvent) -> None:
        log_event(event)

    def observe_all(self, events: Sequence[MailEvent]) -> None:
        log_events(events)


def _record(event: MailEvent, level: int, text: str) -> None:
    """The record of ``event`` (``describe``'s ``text``, its fields as attributes)."""
    # What ``mail_log.log(level, "%s", text, extra=fields)`` does, less findCaller's walk up
    # the stack for what is known here: the record names log_event (as records always have: a
    # filter or a format may use it) and this line. Several records a message: the walk was a
    # fifth of the cost of each. The frame is not kept in a local: a frame that refers to
    # itself is a reference cycle, and each record left one (frame, record and all) for the
    # cyclic collector, which then ran three times as often and collected the older
    # generations too: 9% of a drain's CPU.
    record = mail_log.makeRecord(
        mail_log.name,
        level,
        _HERE,
        sys._getframe().f_lineno,
        "%s",
        (text,),
        None,
        "log_event",
        log_fields(event),
    )
    mail_log.handle(record)


def _frozen_mapping(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class Stats:
    """What a :class:`~spoolmail.MailService` did since ``started`` and what it holds now.

    Counters (since the service was made, by this process): ``picked_up`` Pickup files taken,
    ``queued`` messages that entered the Queue (DSNs and admitted ones too), ``delivered``,
    ``deferred`` and ``failed`` recipient outcomes, ``dsns`` DSNs queued, ``badmail`` messages
    or files moved to BadMail, ``removed`` messages finished.

    Gauges (when :meth:`~spoolmail.MailService.stats` was called, whoever changed the spool):
    ``queue`` messages waiting in the Queue, ``held`` of those on hold (not counted in
    ``queue``), ``delivering`` messages being delivered (by any process), ``pickup`` entries
    waiting in Pickup; ``connections`` the connections this service has open now by host
    (``name[address]:port``, only hosts in use), ``dead_hosts`` how many hosts are left alone for
    not answering, ``failed_lookups`` how many destinations for a lookup that got no answer.
    ``connections_opened`` and ``connections_reused`` (counters, when the transport
    keeps count: :class:`~spoolmail.SmtpTransport` does): SMTP connections opened, and
    transactions sent over a connection kept from an earlier one. ``dns_cache_hits`` and
    ``dns_cache_misses`` (counters) and ``dns_cache_entries`` (a gauge), of the answer cache of
    the service's own DNS resolver: lookups answered from it, lookups it had no answer for
    (asked of the DNS server), answers it keeps now; all 0 with the cache off
    (``dns_cache_size=0``) or a ``host_resolver`` that keeps none.
    """

    started: datetime
    picked_up: int = 0
    queued: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    dsns: int = 0
    badmail: int = 0
    removed: int = 0
    queue: int = 0
    held: int = 0
    delivering: int = 0
    pickup: int = 0
    connections: Mapping[str, int] = attrs.field(
        factory=dict, converter=_frozen_mapping, hash=False
    )
    dead_hosts: int = 0
    failed_lookups: int = 0
    connections_opened: int = 0
    connections_reused: int = 0
    dns_cache_hits: int = 0
    dns_cache_misses: int = 0
    dns_cache_entries: int = 0


# Which counter each event adds one to.
_COUNTED: Mapping[type[MailEvent], str] = {
    PickedUp: "picked_up",
    Queued: "queued",
    Delivered: "delivered",
    Deferred: "deferred",
    Failed: "failed",
    DsnQueued: "dsns",
    ToBadMail: "badmail",
    Removed: "removed",
}


class Counters:
    """Counts the events it observes (``Stats``' counters); safe to call from any thread."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(_COUNTED.values(), 0)
        self._lock = threading.Lock()

    def __call__(self, event: MailEvent) -> None:
        name = _COUNTED.get(type(event))
        if name is not None:
            with self._lock:
                self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
