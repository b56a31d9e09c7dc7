"""Benchmark: rendering one failure DSN for many recipients (``render_dsn``, docs/retries.md).

A message whose relay refuses it at DATA fails every recipient with the same reply, and one DSN
reports them all: its human part and its delivery-status part each quote every recipient's reply
(up to 2,048 characters of it). The service renders it in its loop, so its time is time nothing
else is delivered. Prints the median wall time of ``--repeat`` renderings for each size; not a
pass/fail test.

    python bench/bench_dsn.py [--recipients 100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from spoolmail import Recipient, Reply
from spoolmail._core.dsn import DsnAction, render_dsn
from spoolmail._core.envelope import RecipientState, new_envelope

NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
ORIGINAL = b"From: a@example.com\r\nSubject: report\r\n\r\nbody\r\n"
REPLIES = {
    # What a relay says at DATA, as Postfix words it.
    "short": "Message rejected: recipient address rejected: user unknown in virtual mailbox table",
    # The most of a reply a DSN quotes: a long multi-line policy text.
    "2 KiB": ("Your message was rejected by policy; see https://remote.example/policy " * 40)[
        : 2048 - len("550 5.7.1 ")
    ],
}


def render(count: int, text: str) -> float:
    reply = Reply(550, "5.7.1", text, host="mx.remote.example")
    recipients = [
        Recipient(f"user{n}@remote.example", RecipientState.FAILED, reply) for n in range(count)
    ]
    envelope = new_envelope(
        "bench", sender="a@example.com", recipients=["x@remote.example"], now=NOW, origin="bench"
    )
    started = time.perf_counter()
    render_dsn(
        envelope=envelope,
        recipients=recipients,
        action=DsnAction.FAILED,
        original=ORIGINAL,
        reporting_mta="mail.example.com",
        dsn_id="bench-d1",
        now=NOW,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    args, _ = parser.parse_known_args()  # nox -s bench passes every script the same arguments
    print(f"{'recipients':>10}  {'reply':>6}  {'seconds':>8}  {'µs a recipient':>14}")
    for count in (int(n) for n in args.recipients.split(",")):
        for name, text in REPLIES.items():
            seconds = statistics.median(render(count, text) for _ in range(args.repeat))
            print(f"{count:>10}  {name:>6}  {seconds:>8.3f}  {seconds / count * 1e6:>14.1f}")


if __name__ == "__main__":
    main()
