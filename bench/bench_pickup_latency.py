"""Benchmark: how soon a message renamed into Pickup is taken, with the service idle.

Issue 11's figure: a new file in Pickup is taken within 100 ms of being complete (median and
p99, from the rename to its Drop file), where the platform can tell (inotify); elsewhere Pickup
is polled every ``poll_interval`` (1 s). A ``MailService`` runs ``run_forever`` on a real
MailRoot (OSFS, fsync on) in a thread of this process, with the default poll interval; the
writer writes each message the way an application should (a dot-name, then a rename), at a
random moment, and watches ``Drop/`` (a 1 ms poll) for its file.

    python bench/bench_pickup_latency.py [--messages 50] [--poll-interval 1.0]

Not a test: it prints the figures; a message that never arrives stops it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from spoolmail import MailService, Router, Spool

MESSAGE = (
    b"x-sender: app@example.com\r\nx-receiver: bob@example.com\r\n"
    b"From: app@example.com\r\nTo: bob@example.com\r\nSubject: latency %d\r\n\r\nhello\r\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50, help="messages, one at a time (50)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds (1.0)")
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "MailRoot"
        with Spool(root) as spool:
            service = MailService(spool, router=Router(local_domains=["example.com"]))
            loop = threading.Thread(
                target=service.run_forever, kwargs={"poll_interval": args.poll_interval}
            )
            loop.start()
            latencies = []
            try:
                time.sleep(0.5)  # the first tick (recovery, the watcher) is not measured
                drop = root / "Drop"
                for number in range(args.messages):
                    time.sleep(rng.uniform(0.05, 0.4))  # a moment the service did not expect
                    before = len(os.listdir(drop))
                    temp = root / "Pickup" / f".m{number}.tmp"
                    temp.write_bytes(MESSAGE % number)
                    started = time.perf_counter()
                    os.rename(temp, root / "Pickup" / f"m{number}.eml")
                    deadline = started + 30
                    while len(os.listdir(drop)) == before:
                        if time.perf_counter() > deadline:
                            print(f"message {number} never reached Drop", file=sys.stderr)
                            return 1
                        time.sleep(0.001)
                    latencies.append(time.perf_counter() - started)
            finally:
                service.stop()
                loop.join()
                service.close()
    ms = sorted(1000 * t for t in latencies)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(
        f"rename to Drop, {len(ms)} messages, poll_interval {args.poll_interval} s: "
        f"median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms, "
        f"min {ms[0]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
