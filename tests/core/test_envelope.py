"""The envelope file format: round trips, and every kind of damage named."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail._core.envelope import (
    Envelope,
    Notify,
    Recipient,
    RecipientState,
    Ret,
    _checked_envelope,
    _indented,
    _plain_envelope,
    decode_envelope,
    encode_envelope,
    replaced,
)
from spoolmail._core.reply import Reply
from spoolmail.exceptions import EnvelopeError

T0 = datetime(2026, 11, 28, 10, 15, 2, 12300, tzinfo=UTC)


def sample() -> Envelope:
    return Envelope(
        id="19ac9b2f1c0-5e1f0c2a9b7d",
        sender="alice@example.net",
        recipients=(
            Recipient("bob@example.com"),
            Recipient(
                "carol@example.org",
                RecipientState.FAILED,
                Reply(550, "5.1.1", "no such user", host="mx.example.org"),
                notified=True,
                updated=T0,
            ),
            Recipient("dan@exämple.org", RecipientState.DELIVERED, Reply(250, "2.0.0", "ok")),
        ),
        arrival=T0,
        next_attempt=T0 + timedelta(minutes=15),
        origin="pickup:Message.txt",
        size=1234,
        attempts=1,
        first_attempt=T0,
        last_attempt=T0,
        dsn_count=1,
    )


def test_round_trip() -> None:
    envelope = sample()
    assert decode_envelope(encode_envelope(envelope)) == envelope


def test_file_is_documented_json() -> None:
    data = json.loads(encode_envelope(sample()))
    assert data["format"] == "spoolmail-envelope"
    assert data["version"] == 1
    assert data["recipients"][1]["reply"] == {
        "code": 550,
        "enhanced": "5.1.1",
        "text": "no such user",
        "host": "mx.example.org",
    }
    assert data["next_attempt"] == "2026-11-28T10:30:02.012300+00:00"


def test_file_is_what_json_writes_with_an_indent_of_one() -> None:
    """The file layout predates the envelope's own writer: json.dumps with indent=1."""
    envelope = attrs.evolve(
        sample(),
        held_time=timedelta(seconds=90.5),
        envid='e\u2028"\\\x00',
        dkim=("DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc",),
    )
    raw = encode_envelope(envelope)
    assert raw == (json.dumps(json.loads(raw), ensure_ascii=False, indent=1) + "\n").encode()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), _JSON, max_size=6))
def test_the_writer_is_json_with_an_indent_of_one(value: dict[str, object]) -> None:
    assert _indented(value) == json.dumps(value, ensure_ascii=False, indent=1)


def test_message_facts_round_trip_and_may_be_absent() -> None:
    noted = attrs.evolve(sample(), hops=3, eight_bit=True)
    assert decode_envelope(encode_envelope(noted)) == noted
    # An envelope written before intake noted them: unknown, not zero.
    older = decode_envelope(mutate(hops=KeyError, eight_bit=KeyError))
    assert (older.hops, older.eight_bit) == (None, None)


@pytest.mark.parametrize("dot_lines", [True, False])
def test_what_intake_knows_of_the_lines_round_trips_and_may_be_absent(dot_lines: bool) -> None:
    noted = attrs.evolve(sample(), dot_lines=dot_lines)
    assert decode_envelope(encode_envelope(noted)) == noted
    # Not known (any writer but intake, or an older file): absent, so such a file is unchanged.
    assert b"dot_lines" not in encode_envelope(sample())
    assert decode_envelope(encode_envelope(sample())).dot_lines is None


def test_the_size_taken_in_round_trips_and_may_be_absent() -> None:
    noted = attrs.evolve(sample(), size=2200, received_size=2048)
    assert decode_envelope(encode_envelope(noted)) == noted
    # Only intake and the listener know it: absent otherwise, so such a file is unchanged.
    assert b"received_size" not in encode_envelope(sample())
    assert decode_envelope(encode_envelope(sample())).received_size is None


def test_null_sender_round_trips() -> None:
    envelope = Envelope(
        id="x", sender="", recipients=(Recipient("a@b.c"),), arrival=T0, next_attempt=T0
    )
    assert decode_envelope(encode_envelope(envelope)).sender == ""


def mutate(**changes: object) -> bytes:
    data = json.loads(encode_envelope(sample()))
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not a JSON envelope"),
        (encode_envelope(sample())[:40], "truncated"),
        (b"\xff\xfe", "not a JSON envelope"),
        (b"[]", "not a spoolmail envelope"),
        (mutate(format="other"), "not a spoolmail envelope"),
        (mutate(version=2), "version 2 is not one this release reads"),
        (mutate(version=KeyError), "version None"),
        (mutate(recipients="bob"), "list of recipients"),
        (mutate(sender=None), "'sender' must be str"),
        (mutate(attempts=True), "'attempts' must be int"),
        (mutate(arrival="yesterday"), "not an ISO 8601 time"),
        (mutate(arrival="2026-11-28T10:00:00"), "no time zone"),
        (mutate(next_attempt=KeyError), "'next_attempt' must be an ISO 8601 time"),
        (mutate(recipients=[{"address": "a@b", "state": "lost"}]), "unknown state 'lost'"),
        (
            mutate(recipients=[{"address": "a@b", "state": "pending", "reply": {"code": 99}}]),
            "unreadable reply",
        ),
        (mutate(recipients=["a@b"]), "must be an object"),
        (mutate(hops=-1), "'hops' must be a count or null"),
        (mutate(size=-1), "'size' must be a count"),
        (mutate(attempts=-3), "'attempts' must be a count"),
        (mutate(dsn_count=-1), "'dsn_count' must be a count"),
        (mutate(local_faults=-1), "'local_faults' must be a count"),
        (mutate(hops=True), "'hops' must be a count or null"),
        (mutate(hops="3"), "'hops' must be a count or null"),
        (mutate(eight_bit=0), "'eight_bit' must be bool or null"),
    ],
)
def test_damage_is_named(raw: bytes, fragment: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_envelope(raw)
    assert fragment in str(info.value)


@given(st.binary(max_size=300))
def test_decode_never_fails_otherwise(raw: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        decode_envelope(raw)


# The last byte is the closing newline; anything shorter has lost part of the object.
@given(st.integers(min_value=1, max_value=len(encode_envelope(sample())) - 2))
def test_every_truncation_is_an_envelope_error(cut: int) -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope(encode_envelope(sample())[:cut])


def _reference(envelope: Envelope) -> bytes:
    """The file as json.dumps(indent=1) writes the envelope's data: the format's definition."""

    def time(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    data: dict[str, object] = {
        "format": "spoolmail-envelope",
        "version": 1,
        "id": envelope.id,
        "sender": envelope.sender,
        "recipients": [
            {
                "address": r.address,
                "state": r.state.value,
                "reply": None if r.reply is None else r.reply.to_json(),
                "notified": r.notified,
                "updated": time(r.updated),
                "notify": None
                if r.notify is None
                else [f.name for f in Notify if f and f in r.notify and f.name] or ["NEVER"],
                "orcpt": r.orcpt,
            }
            for r in envelope.recipients
        ],
        "arrival": time(envelope.arrival),
        "next_attempt": time(envelope.next_attempt),
        "origin": envelope.origin,
        "size": envelope.size,
        "attempts": envelope.attempts,
        "first_attempt": time(envelope.first_attempt),
        "last_attempt": time(envelope.last_attempt),
        "delay_notified": envelope.delay_notified,
        "dsn_count": envelope.dsn_count,
        "held_since": time(envelope.held_since),
        "held_seconds": envelope.held_time.total_seconds(),
        "envid": envelope.envid,
        "ret": None if envelope.ret is None else envelope.ret.value,
        "about": envelope.about,
        "notice_at": time(envelope.notice_at),
        "hops": envelope.hops,
        "eight_bit": envelope.eight_bit,
        "local_faults": envelope.local_faults,
    }
    if envelope.dot_lines is not None:
        data["dot_lines"] = envelope.dot_lines
    if envelope.received_size is not None:
        data["received_size"] = envelope.received_size
    if envelope.dkim:
        data["dkim"] = list(envelope.dkim)
    return (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode()


_TIMES = st.none() | st.datetimes(timezones=st.just(UTC))
_TEXT = st.text(max_size=12)
_REPLIES = st.none() | st.builds(
    Reply,
    code=st.integers(200, 599),
    enhanced=st.none() | st.just("5.1.1"),
    text=_TEXT,
    host=st.none() | _TEXT,
    cause=st.none() | st.builds(Reply, code=st.integers(400, 599), enhanced=st.none(), text=_TEXT),
)
_RECIPIENTS = st.builds(
    Recipient,
    address=_TEXT,
    state=st.sampled_from(RecipientState),
    reply=_REPLIES,
    notified=st.booleans(),
    updated=_TIMES,
    notify=st.none() | st.sampled_from([Notify.NEVER, *Notify, Notify.FAILURE | Notify.DELAY]),
    orcpt=st.none() | _TEXT,
)
_COUNTS = st.integers(0, 10**6)


_ENVELOPES = st.builds(
    Envelope,
    id=_TEXT,
    sender=_TEXT,
    recipients=st.lists(_RECIPIENTS, max_size=3),
    arrival=st.datetimes(timezones=st.just(UTC)),
    next_attempt=st.datetimes(timezones=st.just(UTC)),
    origin=_TEXT,
    size=_COUNTS,
    attempts=_COUNTS,
    first_attempt=_TIMES,
    last_attempt=_TIMES,
    delay_notified=st.booleans(),
    dsn_count=_COUNTS,
    held_since=_TIMES,
    held_time=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=9)),
    envid=st.none() | _TEXT,
    ret=st.none() | st.sampled_from(Ret),
    about=_TEXT,
    notice_at=_TIMES,
    hops=st.none() | _COUNTS,
    eight_bit=st.none() | st.booleans(),
    local_faults=_COUNTS,
    dkim=st.just(()) | st.just(("DKIM-Signature: v=1;\r\n\tb=abc", "X-A: b")),
    dot_lines=st.none() | st.booleans(),
    received_size=st.none() | st.integers(0, 2**40),
)
# Values for a change, good and bad: naive times and header fields that are none fail checks.
_CHANGES = {
    "recipients": st.lists(_RECIPIENTS, max_size=2),
    "next_attempt": st.datetimes() | st.datetimes(timezones=st.just(UTC)),
    "last_attempt": _TIMES | st.datetimes(),
    "notice_at": _TIMES,
    "attempts": _COUNTS,
    "delay_notified": st.booleans(),
    "dkim": st.just(()) | st.just(("X-A: b",)) | st.just(("not a field",)),
    "updated": _TIMES | st.datetimes(),
    "state": st.sampled_from(RecipientState),
    "reply": _REPLIES,
    "notified": st.booleans(),
}


def _outcome(make: Callable[[], object]) -> object:
    try:
        return make()
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


@given(st.one_of(_ENVELOPES, _RECIPIENTS), st.data())
def test_replaced_is_evolve_for_every_change_good_or_bad(
    instance: Envelope | Recipient, data: st.DataObject
) -> None:
    names = [f.name for f in attrs.fields(type(instance)) if f.name in _CHANGES]
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
    changes = {name: data.draw(_CHANGES[name]) for name in chosen}
    evolved = _outcome(lambda: attrs.evolve(instance, **changes))
    assert _outcome(lambda: replaced(instance, **changes)) == evolved
    if not isinstance(evolved, tuple):
        copy = replaced(instance, **changes)
        assert type(copy) is type(instance)
    assert replaced(instance) == instance


def test_replaced_names_the_first_bad_field_in_the_class_s_order_as_evolve() -> None:
    naive = datetime(2000, 1, 1)  # noqa: DTZ001 (a bad value on purpose)
    with pytest.raises(ValueError, match=r"^next_attempt must be an aware"):
        replaced(sample(), last_attempt=naive, next_attempt=naive)


def test_replaced_refuses_a_field_the_class_does_not_have() -> None:
    with pytest.raises(TypeError, match="no field 'colour'"):
        replaced(sample(), colour="red")


@given(_ENVELOPES)
def test_the_file_is_what_json_writes_for_any_envelope(envelope: Envelope) -> None:
    assert encode_envelope(envelope) == _reference(envelope)


@given(_ENVELOPES)
def test_a_decoded_envelope_is_whole_and_passes_the_class_s_own_checks(envelope: Envelope) -> None:
    """decode_envelope checks each value as it reads it and then does not build the envelope
    through ``__init__``: what it makes has every field, and ``__init__``'s checks pass."""
    decoded = decode_envelope(encode_envelope(envelope))
    assert decoded == envelope
    assert vars(decoded).keys() == {field.name for field in attrs.fields(Envelope)}
    for recipient in decoded.recipients:
        assert vars(recipient).keys() == {field.name for field in attrs.fields(Recipient)}
        attrs.validate(recipient)
    attrs.validate(decoded)
    assert attrs.evolve(decoded) == decoded  # __init__ with every value: nothing it refuses


# -- the common envelope's one-pass decoding, held to the general path ---------------------------

_ODD = _JSON | st.sampled_from(
    ["pending", "2026-11-28T10:15:02+00:00", "2026-11-28T10:15:02", True, 1, 0.0, -1, 1e10]
)


def _general(data: object) -> object:
    try:
        return _checked_envelope(data)
    except EnvelopeError as exc:
        return EnvelopeError, str(exc)


def test_the_envelope_spoolmail_writes_takes_the_one_pass() -> None:
    data = json.loads(encode_envelope(sample()))
    assert _plain_envelope(data) == sample()
    data["recipients"][0]["notify"] = ["FAILURE"]
    assert _plain_envelope(data) is None  # NOTIFY, RET, DKIM: the general path
    assert decode_envelope(json.dumps(data).encode()).recipients[0].notify is Notify.FAILURE


@given(_ENVELOPES)
def test_the_one_pass_decodes_what_the_general_path_does(envelope: Envelope) -> None:
    data = json.loads(encode_envelope(envelope))
    plain = _plain_envelope(data)
    assert plain is None or plain == _general(data) == envelope
    if (
        envelope.ret is None
        and not envelope.dkim
        and all(r.notify is None for r in envelope.recipients)
    ):
        assert plain is not None


@given(_ENVELOPES, st.data())
def test_the_one_pass_takes_nothing_the_general_path_refuses(
    envelope: Envelope, data: st.DataObject
) -> None:
    """Any field of the file, or of a recipient in it, damaged, absent or of another type:
    the one pass either leaves it to the general path or makes the same envelope."""
    raw = json.loads(encode_envelope(replaced(envelope, ret=None, dkim=())))
    for recipient in raw["recipients"]:
        recipient["notify"] = None
    where = data.draw(st.sampled_from([raw, *raw["recipients"]]))
    key = data.draw(st.sampled_from(sorted(where)) | st.text(max_size=3))
    if data.draw(st.booleans()):
        where.pop(key, None)
    else:
        where[key] = data.draw(_ODD)
    plain = _plain_envelope(raw)
    if plain is not None:
        assert plain == _general(raw)
        assert vars(plain).keys() == {field.name for field in attrs.fields(Envelope)}
        attrs.validate(plain)


_ABSENT = object()
_ODD_VALUES = [
    *(None, True, False, 0, 1, -1, 0.0, 1.5, 1e10, float("nan"), "", "x", [], {}, _ABSENT),
    *("pending", "FULL", "2026-11-28T10:15:02", "2026-11-28T10:15:02+00:00", "2026-13-01"),
    *(["FAILURE"], ["X-A: b"], {"code": 250}, {"code": "x"}, {"code": 451, "cause": 1}),
]


def test_the_one_pass_takes_nothing_the_general_path_refuses_field_by_field() -> None:
    base = json.loads(encode_envelope(sample()))
    places = [
        (None, key)
        for key in [*base, "held_seconds", "hops", "eight_bit", "dot_lines", "received_size"]
    ]
    places += [(index, key) for index, item in enumerate(base["recipients"]) for key in item]
    for index, key in places:
        for value in _ODD_VALUES:
            raw = copy.deepcopy(base)
            where = raw if index is None else raw["recipients"][index]
            if value is _ABSENT:
                where.pop(key, None)
            else:
                where[key] = value
            plain = _plain_envelope(raw)
            assert plain is None or plain == _general(raw), (index, key, value)
