"""The event bus: events fired together (``EventBus.emit_all``) reach every observer, in order,
observer by observer; an observer with ``observe_all`` hears them in one call; one that fails
stops nobody. No file, no clock."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from spoolmail._store.bus import EventBus
from spoolmail.events import MailEvent, PickedUp, Removed

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
BATCH: list[MailEvent] = [
    PickedUp(queue_id="a", time=NOW, file="a.eml"),
    PickedUp(queue_id="b", time=NOW, file="b.eml"),
    Removed(queue_id="a", time=NOW),
]


class Batched:
    def __init__(self) -> None:
        self.calls: list[list[MailEvent]] = []

    def __call__(self, event: MailEvent) -> None:
        self.calls.append([event])

    def observe_all(self, events: Sequence[MailEvent]) -> None:
        self.calls.append(list(events))


def test_each_observer_hears_all_in_order_one_observer_after_the_other() -> None:
    bus = EventBus()
    heard: list[tuple[str, str]] = []
    bus.subscribe(lambda event: heard.append(("first", event.queue_id)))
    bus.subscribe(lambda event: heard.append(("second", event.queue_id)))
    bus.emit_all(BATCH)
    first = [("first", "a"), ("first", "b"), ("first", "a")]
    assert heard == [*first, ("second", "a"), ("second", "b"), ("second", "a")]


def test_an_observer_with_observe_all_hears_them_in_one_call() -> None:
    bus = EventBus()
    batched = Batched()
    bus.subscribe(batched)
    bus.emit_all(BATCH)
    bus.emit_all(BATCH[:1])  # one event: as emit
    bus.emit_all([])
    bus.emit(BATCH[2])
    assert batched.calls == [BATCH, BATCH[:1], BATCH[2:]]


def test_a_failing_observer_stops_nobody(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()

    class Broken(Batched):
        def observe_all(self, events: Sequence[MailEvent]) -> None:
            raise RuntimeError("disk on fire")

    def broken(event: MailEvent) -> None:
        raise RuntimeError("no")

    after = Batched()
    bus.subscribe(Broken())
    bus.subscribe(broken)
    bus.subscribe(after)
    with caplog.at_level(logging.ERROR, logger="spoolmail"):
        bus.emit_all(BATCH)
    assert after.calls == [BATCH]
    failures = [r.getMessage() for r in caplog.records if "event observer" in r.getMessage()]
    assert len(failures) == 4  # the batch once, the plain one for each event
    assert "failed on 3 events (picked-up for a first)" in failures[0]
