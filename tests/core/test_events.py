"""The mail log's JSON line of an event: ``encode_event`` writes, byte for byte, what the JSON
encoder writes for the event's values (``json.dumps`` with the mail log's separators), whatever
the values hold; and it reads back equal."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.events import (
    _DECODERS,
    EVENT_TYPES,
    Deferred,
    Deleted,
    Delivered,
    Dropped,
    DsnQueued,
    Failed,
    Flushed,
    Held,
    MailEvent,
    PickedUp,
    Queued,
    Released,
    Removed,
    Requeued,
    ToBadMail,
    decode_event,
    encode_event,
)
from spoolmail._core.reply import Reply
from spoolmail._core.states import State

TIME = datetime(2026, 12, 5, 8, 41, 36, 44388, tzinfo=UTC)


def reference(event: MailEvent) -> str:
    """The line as the JSON encoder writes it from the event's values (the format's definition)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, Reply):
            return value.to_json()
        if isinstance(value, State):
            return value.value
        if isinstance(value, tuple):
            return list(value)
        return value

    data = {"v": 1, "event": event.kind}
    data.update({f.name: plain(getattr(event, f.name)) for f in attrs.fields(type(event))})
    line = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char in "\x85\u2028\u2029":
        line = line.replace(char, f"\\u{ord(char):04x}")
    return line


texts = st.text(max_size=30)
times = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]))
replies = st.builds(
    Reply,
    code=st.integers(200, 599),
    enhanced=st.none() | st.sampled_from(["2.0.0", "4.3.0", "5.1.1"]),
    text=texts,
    host=st.none() | texts,
    cause=st.none() | st.builds(Reply, code=st.integers(400, 599), enhanced=st.none(), text=texts),
)
delays = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))
addresses = st.lists(texts, max_size=3).map(tuple)
common = {"queue_id": texts, "time": times}
events = st.one_of(
    st.builds(PickedUp, **common, file=texts),
    st.builds(
        Queued, **common, origin=texts, sender=texts, recipients=addresses, size=st.integers(0)
    ),
    st.builds(
        Delivered,
        **common,
        recipient=texts,
        reply=replies,
        relay=st.none() | texts,
        delay=delays,
        drop_file=st.none() | texts,
    ),
    st.builds(Deferred, **common, recipient=texts, reply=replies, next_attempt=times),
    st.builds(Failed, **common, recipient=texts, reply=replies, delay=delays),
    st.builds(Dropped, **common, file=texts, recipients=addresses, size=st.integers(0)),
    st.builds(DsnQueued, **common, dsn_id=texts, action=texts, recipients=addresses),
    st.builds(ToBadMail, **common, status=texts, reason=st.text(max_size=1200)),
    st.builds(Removed, **common),
    st.builds(Held, **common),
    st.builds(Released, **common),
    st.builds(Flushed, **common),
    st.builds(Deleted, **common, place=st.sampled_from(State)),
    st.builds(Requeued, **common, new_id=texts, to=st.sampled_from(State), recipients=addresses),
)


@given(events)
def test_the_line_is_what_the_json_encoder_writes(event: MailEvent) -> None:
    line = encode_event(event)
    assert line == reference(event)
    assert len(line.splitlines()) == 1
    assert decode_event(line) == event


def test_every_event_type_is_covered() -> None:
    covered = {
        PickedUp, Queued, Delivered, Deferred, Failed, Dropped, DsnQueued, ToBadMail,
        Removed, Held, Released, Flushed, Deleted, Requeued,
    }  # fmt: skip
    assert covered == set(EVENT_TYPES.values())


def test_every_field_of_every_event_is_decoded_and_checked() -> None:
    """decode_event checks each value against its field's type through one table: a field
    added without its entry would reach readers unchecked."""
    names = {f.name for cls in EVENT_TYPES.values() for f in attrs.fields(cls)}
    assert names == set(_DECODERS)


OTHER_JSON = st.sampled_from([None, 7, -1, 1.5, True, "text", [], ["a", 1], {}, {"code": 250}])


@given(events, st.data())
def test_a_value_of_another_type_is_a_damaged_line_not_an_event(
    event: MailEvent, data: st.DataObject
) -> None:
    """A line edited by hand (a list where text goes, a size that is text): ``ValueError``, or
    an event whose value has its field's type, never a reader's ``TypeError`` later."""
    fields = attrs.fields(type(event))
    name = data.draw(st.sampled_from([f.name for f in fields]))
    line = json.loads(encode_event(event))
    line[name] = data.draw(OTHER_JSON)
    try:
        decoded = decode_event(json.dumps(line))
    except ValueError:
        return
    value, before = getattr(decoded, name), getattr(event, name)
    if name in ("relay", "drop_file"):
        assert value is None or isinstance(value, str)
    elif isinstance(before, tuple):
        assert isinstance(value, tuple)
        assert all(isinstance(v, str) for v in value)
    else:
        assert type(value) is type(before), (name, value)


def test_a_known_line_stays_as_it_was() -> None:
    event = Delivered(
        queue_id="19ac9b2f1c0-00005e1f0c2a9b7d",
        time=TIME,
        recipient="bob@example.net",
        reply=Reply(250, "2.0.0", "queued as X", host="192.0.2.1"),
        relay="mx.example.net[192.0.2.1]:25",
        delay=timedelta(seconds=1.5),
    )
    assert encode_event(event) == (
        '{"v":1,"event":"delivered","queue_id":"19ac9b2f1c0-00005e1f0c2a9b7d",'
        '"time":"2026-12-05T08:41:36.044388+00:00","recipient":"bob@example.net",'
        '"reply":{"code":250,"enhanced":"2.0.0","text":"queued as X","host":"192.0.2.1"},'
        '"relay":"mx.example.net[192.0.2.1]:25","delay":1.5,"drop_file":null}'
    )
