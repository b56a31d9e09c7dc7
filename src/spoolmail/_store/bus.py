"""The event bus of one :class:`~spoolmail.Spool`: who hears about what the spool commits.

Observers are callables of one :class:`~spoolmail._core.events.MailEvent`. :meth:`EventBus.emit`
calls each of them in the order they subscribed, on the thread that made the commit (a delivery
thread, the service's loop, an operator's call), and returns once all have returned: nothing is
queued, so nothing is lost when the process stops, and a slow observer slows that thread. An
observer that raises is logged with its traceback and the others still hear the event: an
observer can never stop a delivery. Touches no file; it lives with the store because the Spool,
whose operators' orders fire events too, owns it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from spoolmail._core.events import MailEvent, Observer

__all__ = ["EventBus"]

log = logging.getLogger("spoolmail")


class EventBus:
    """Observers, and the one way to tell them of an event (see the module docstring)."""

    def __init__(self) -> None:
        # Replaced whole on every change, never changed in place: emit reads it without a lock.
        self._observers: tuple[Observer, ...] = ()
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


class _Subscription:
    """One subscription: the same callable subscribed twice is heard twice and removed once."""

    __slots__ = ("observer",)

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

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
