"""``spoolmail queue shape`` (qshape): the pure count, its table and JSON, and the command."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spoolmail._cli import shape
from spoolmail._cli.main import EX_OK, EX_USAGE, main
from spoolmail._core.envelope import Envelope, Recipient, RecipientState

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def envelope(
    age: timedelta,
    *recipients: str | Recipient,
    sender: str = "alice@example.com",
    held: bool = False,
) -> Envelope:
    arrival = NOW - age
    return Envelope(
        id="m",
        sender=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
        arrival=arrival,
        next_attempt=NOW,
        held_since=NOW if held else None,
    )


def minutes(value: float) -> timedelta:
    return timedelta(minutes=value)


# -- the count: pure ------------------------------------------------------------------------------


def test_buckets_double_from_five_minutes_as_qshape() -> None:
    assert shape.bucket_limits() == (5, 10, 20, 40, 80, 160, 320, 640, 1280)
    assert shape.bucket_limits(first=10, buckets=4) == (10, 20, 40)
    for first, buckets in ((0, 10), (5, 1)):
        with pytest.raises(ValueError, match="at least 2"):
            shape.bucket_limits(first=first, buckets=buckets)


def test_each_age_falls_in_the_bucket_whose_bound_it_is_under() -> None:
    ages = [0, 4.99, 5, 9.99, 10, 639, 640, 1279.9, 1280, 5000]
    result = shape.measure([envelope(minutes(a), "x@a.test") for a in ages], now=NOW)
    assert result.columns == ["5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]
    assert result.total.buckets == (2, 2, 1, 0, 0, 0, 0, 1, 2, 2)
    assert result.total.count == 10
    # A message from the future (the clock went back) is new.
    assert shape.measure([envelope(-minutes(3), "x@a.test")], now=NOW).total.buckets[0] == 1


def test_rows_count_pending_recipients_busiest_first() -> None:
    result = shape.measure(
        [
            envelope(minutes(1), "x@b.test", "y@B.test", "z@a.test"),
            envelope(minutes(30), "w@c.test", Recipient("d@a.test", state=RecipientState.FAILED)),
            envelope(
                minutes(50), "v@a.test", Recipient("u@d.test", state=RecipientState.DELIVERED)
            ),
        ],
        now=NOW,
    )
    assert [(row.name, row.count) for row in result.rows] == [
        ("a.test", 2),
        ("b.test", 2),
        ("c.test", 1),
    ]
    assert result.total.count == 5
    assert result.messages == 3
    assert result.rows[0].buckets[:5] == (1, 0, 0, 0, 1)


def test_by_sender_counts_messages_and_the_null_sender() -> None:
    result = shape.measure(
        [
            envelope(minutes(1), "x@a.test", "y@a.test", sender="App@Example.COM"),
            envelope(minutes(1), "x@a.test", sender=""),
            envelope(minutes(1), "x@a.test", sender="b@example.com"),
        ],
        now=NOW,
        by="sender",
    )
    assert [(row.name, row.count) for row in result.rows] == [("example.com", 2), ("<>", 1)]
    assert result.total.count == 3


def test_held_messages_are_their_own_shape() -> None:
    envelopes = [
        envelope(minutes(1), "x@a.test"),
        envelope(minutes(1), "x@b.test", held=True),
        envelope(minutes(1), "y@b.test", held=True),
    ]
    waiting = shape.measure(envelopes, now=NOW)
    assert [row.name for row in waiting.rows] == ["a.test"]
    assert (waiting.messages, waiting.left_out) == (1, 2)
    held = shape.measure(envelopes, now=NOW, held=True)
    assert [(row.name, row.count) for row in held.rows] == [("b.test", 2)]
    assert (held.messages, held.left_out) == (2, 1)


def test_top_sums_the_other_domains() -> None:
    envelopes = [envelope(minutes(n), *(f"u{i}@d{n}.test" for i in range(n))) for n in (1, 2, 3)]
    result = shape.measure(envelopes, now=NOW, top=1)
    assert [row.name for row in result.rows] == ["d3.test"]
    assert result.other is not None
    assert (result.other.name, result.other.count, result.other_domains) == (
        "(2 other domains)",
        3,
        2,
    )
    assert result.other.buckets[0] == 3
    assert shape.measure(envelopes, now=NOW, top=0).other is None


def test_table_and_json() -> None:
    envelopes = [
        envelope(minutes(1), "x@remote.test", "y@remote.test"),
        envelope(minutes(700), "z@other.test"),
        envelope(minutes(1), "w@held.test", held=True),
    ]
    result = shape.measure(envelopes, now=NOW, limits=shape.bucket_limits(buckets=4))
    assert shape.render(result) == [
        "            T 5 10 20 20+",
        "      TOTAL 3 2  0  0   1",
        "remote.test 2 2  0  0   0",
        " other.test 1 0  0  0   1",
        "-- 3 recipients still to be delivered, in 2 messages, by age in minutes since arrival; "
        "1 message on hold not counted (--held)",
    ]
    assert shape.as_json(result) == {
        "by": "recipient",
        "held": False,
        "time": "2026-11-28T10:00:00+00:00",
        "columns": ["5", "10", "20", "20+"],
        "bucket_minutes": [5, 10, 20],
        "total": {"count": 3, "buckets": [2, 0, 0, 1]},
        "domains": [
            {"domain": "remote.test", "count": 2, "buckets": [2, 0, 0, 0]},
            {"domain": "other.test", "count": 1, "buckets": [0, 0, 0, 1]},
        ],
        "other": None,
        "messages": 2,
        "left_out": 1,
    }
    held = shape.measure(envelopes, now=NOW, held=True, by="sender", top=0)
    assert shape.render(held)[-1] == (
        "-- 1 message, by age in minutes since arrival; messages on hold only"
    )


# -- the command ----------------------------------------------------------------------------------


def run(root: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--root", str(root), *argv], out=out), out.getvalue()


def test_the_command_on_a_mailroot(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    (root / "Pickup").mkdir(parents=True)
    mail = "From: a@example.com\r\nTo: {}\r\nSubject: s\r\n\r\nbody\r\n"
    (root / "Pickup" / "1.eml").write_text(mail.format("x@remote.test, y@remote.test"))
    (root / "Pickup" / "2.eml").write_text(mail.format("z@other.test"))
    assert (
        run(
            root, "run", "--once", "--local-domain", "example.com", "--smart-host", "[127.0.0.1]:1"
        )[0]
        == EX_OK
    )
    status, out = run(root, "queue", "shape")
    assert status == EX_OK
    assert out.splitlines() == [
        "            T 5 10 20 40 80 160 320 640 1280 1280+",
        "      TOTAL 3 3  0  0  0  0   0   0   0    0     0",
        "remote.test 2 2  0  0  0  0   0   0   0    0     0",
        " other.test 1 1  0  0  0  0   0   0   0    0     0",
        "-- 3 recipients still to be delivered, in 2 messages, by age in minutes since arrival",
    ]
    status, out = run(root, "queue", "--json", "shape", "--sender", "--top", "5")
    assert status == EX_OK
    data = json.loads(out)
    assert (data["by"], data["total"]["count"], data["domains"][0]["domain"]) == (
        "sender",
        2,
        "example.com",
    )
    after, before = (
        {**json.loads(run(root, *argv)[1]), "time": None}
        for argv in (["queue", "shape", "--json"], ["queue", "--json", "shape"])
    )
    assert after == before
    status, out = run(root, "queue", "shape", "--held")
    assert out.splitlines()[1].split() == ["TOTAL", "0", *["0"] * 10]
    assert out.splitlines()[-1].endswith("; messages on hold only")


def test_an_empty_queue_has_a_total_of_nothing(tmp_path: Path) -> None:
    status, out = run(tmp_path / "MailRoot", "queue", "shape", "--buckets", "3")
    assert status == EX_OK
    assert out.splitlines() == [
        "      T 5 10 10+",
        "TOTAL 0 0  0   0",
        "-- 0 recipients still to be delivered, in 0 messages, by age in minutes since arrival",
    ]
    assert run(tmp_path / "MailRoot", "queue", "shape", "--bucket-minutes", "0")[0] == EX_USAGE
