"""What happened to a message, as values: the events a :class:`~spoolmail.Spool` announces.

Subscribe with ``MailService(spool, observers=[callback])`` or ``spool.subscribe(callback)``
(which returns the function that unsubscribes). Every event has ``queue_id`` and ``time``;
match on the type::

    def observe(event: MailEvent) -> None:
        match event:
            case Delivered(recipient=rcpt, relay=relay, reply=reply):
                ...
            case Failed() | ToBadMail():
                ...

An event is fired after the commit it reports, on the thread that made that commit; an exception
in an observer is logged and never stops delivery. ``describe(event)`` is the line the log shows,
``encode_event`` / ``decode_event`` the mail log's JSON line. See docs/events.md.
"""

from spoolmail._core.events import (
    EVENT_TYPES,
    MAX_TEXT,
    Deferred,
    Deleted,
    Delivered,
    Dropped,
    DsnQueued,
    Failed,
    Flushed,
    Held,
    MailEvent,
    Observer,
    PickedUp,
    Queued,
    Released,
    Removed,
    Requeued,
    Source,
    ToBadMail,
    decode_event,
    describe,
    encode_event,
    log_fields,
)

__all__ = [
    "EVENT_TYPES",
    "MAX_TEXT",
    "Deferred",
    "Deleted",
    "Delivered",
    "Dropped",
    "DsnQueued",
    "Failed",
    "Flushed",
    "Held",
    "MailEvent",
    "Observer",
    "PickedUp",
    "Queued",
    "Released",
    "Removed",
    "Requeued",
    "Source",
    "ToBadMail",
    "decode_event",
    "describe",
    "encode_event",
    "log_fields",
]
