"""The event bus of one :class:`~spoolmail.Spool`: who hears about what the spool commits.

Observers are callables of one :class:`~spoolmail._core.events.MailEvent`. :meth:`EventBus.emit`
calls each of them in the order they subscribed, on the thread that made the commit (a delivery
thread, the service's loop, an operator's call), and returns once all have returned: nothing is
queued, so nothing is lost when the process stops, and a slow observer slows that thread. An
observer that raises is logged with its traceback and the others still hear the event: an
observer can never stop a delivery. Events fired together (a batch of Pickup files queued, an
attempt's outcomes) may go through :meth:`EventBus.emit_all`: each observer hears all of them, in
order, before the next observer does, and one that has an ``observe_all`` method (the mail log,
which writes their lines at once) hears them in one call. Touches no file; it lives with the
store because the Spool, whose operators' orders fire events too, owns it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from spoolmail._core.events import MailEvent, Observer

__all__ = ["EventBus"]

log = logging.getLogger("spoolmail")


class EventBus:
    """Observers, and the one way to tell them of an event (see the module docstring)."""

    def __init__(self) -> None:
        # Replaced whole on every change, never changed in place: emit reads it without a lock.
        self._observers: tuple[_Subscription, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Add ``observer``; returns the function that removes it again (safe to call twice)."""
        if not callable(observer):
            raise TypeError(f"an observer is a callable of one event, not {observer!r}")
        token = _Subscription(observer)
        with self._lock:
            self._observers = (*self._observers, token)

        def unsubscribe() -> None:
            with self._lock:
                self._observers = tuple(o for o in self._observers if o is not token)

        return unsubscribe

    def __bool__(self) -> bool:
        return bool(self._observers)

    def emit(self, event: MailEvent) -> None:
        for observer in self._observers:
            observer(event)

    def emit_all(self, events: Sequence[MailEvent]) -> None:
        """Tell of ``events``, fired together: observer by observer, each hearing all of them
        in order (in one call where it has ``observe_all``)."""
        if len(events) <= 1:
            for event in events:
                self.emit(event)
            return
        for observer in self._observers:
            observer.tell_all(events)


class _Subscription:
    """One subscription: the same callable subscribed twice is heard twice and removed once."""

    __slots__ = ("observe_all", "observer")

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.observe_all: Callable[[Sequence[MailEvent]], object] | None = getattr(
            observer, "observe_all", None
        )

    def __call__(self, event: MailEvent) -> None:
        try:
            self.observer(event)
        except Exception:
            log.exception(
                "an event observer (%r) failed on %s for %s; delivery goes on",
                self.observer,
                event.kind,
                event.queue_id,
            )

    def tell_all(self, events: Sequence[MailEvent]) -> None:
        if self.observe_all is None:
            for event in events:
                self(event)
            return
        try:
            self.observe_all(events)
        except Exception:
            log.exception(
                "an event observer (%r) failed on %d events (%s for %s first); delivery goes on",
                self.observer,
                len(events),
                events[0].kind,
                events[0].queue_id,
            )
