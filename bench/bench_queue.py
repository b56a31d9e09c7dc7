"""Benchmark: a Queue of 100,000 deferred messages on OSFS (docs/design.md#crash-safety).

Builds a MailRoot in a temporary directory with N deferred messages (real envelopes, small
``.eml`` files), then measures what the issue names: the start-up scan (a fresh ``Spool`` and
``MailService``, first ``run_once``: recovery and one scan of the whole Queue), ticks with nothing
due (which must cost O(due), not O(queue size)), and the periodic rescan of an unchanged Queue
(one stat per envelope thanks to the signature cache, no reads). It prints the figures and a
table against the targets; it is not a pass/fail test (only a broken run, such as a delivery
where nothing is due, stops it).

    python bench/bench_queue.py [--messages N] [--keep DIR] [--ticks N] [--profile] [--cold]

``--keep DIR`` builds the MailRoot in ``DIR/MailRoot`` and leaves it there; a later run with the
same ``--keep DIR`` and ``--messages`` reuses it instead of building it again. Nothing is sent:
the transport is a ``CapturingTransport`` and the clock a ``FakeClock``. The page cache is warm
(the files were just written, or read by the last run); ``--cold`` evicts the MailRoot's file
pages first. ``--profile`` prints cProfile's top costs of the start-up scan and of one rescan
(the profiler slows them about threefold: read the timings from a run without it).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import spoolmail
from spoolmail import Durability, Envelope, MailService, Recipient, Reply, Router, Share, Spool
from spoolmail._core.envelope import encode_envelope
from spoolmail._core.ids import QueueIds
from spoolmail.testing import CapturingTransport, FakeClock

TICK_TARGET_MS = 5.0
STARTUP_TARGET_S = 20.0
SEED = 3
ROUTER = Router(local_domains=["example.com"], smart_host="smarthost.test:25")
# Deferral replies as real MTAs give them (RFC 5321 section 4.2.3: 4yz is transient).
DEFERRALS = (  # (code, enhanced code, text, answering host)
    (451, "4.7.1", "Greylisted, please try again later", "mx1.{domain}"),
    (421, "4.3.2", "Service not available, closing transmission channel", "mx.{domain}"),
    (452, "4.2.2", "Mailbox full", "mx2.{domain}"),
    (450, "4.2.0", "Mailbox temporarily unavailable", "mx.{domain}"),
)
SUBJECTS = ("Your invoice", "Password reset", "Weekly report", "Order confirmation", "Reminder")
MANIFEST = "bench-queue.json"


# -- building the MailRoot ------------------------------------------------------------------------


def deferred_envelope(
    queue_id: str, arrival: datetime, now: datetime, rng: random.Random
) -> dict[str, Any]:
    """The fields of one message that was tried 1-6 times and waits for its next retry."""
    recipients = []
    last = now - timedelta(seconds=rng.uniform(1, 900))
    for _ in range(rng.randint(1, 3)):
        domain = f"customer{rng.randrange(5000)}.example"
        code, enhanced, text, host = rng.choice(DEFERRALS)
        recipients.append(
            Recipient(
                f"user{rng.randrange(10**6)}@{domain}",
                reply=Reply(code, enhanced, text, host=host.format(domain=domain)),
                updated=last,
            )
        )
    return {
        "id": queue_id,
        "sender": f"noreply{rng.randrange(20)}@example.com",
        "recipients": tuple(recipients),
        "arrival": arrival,
        # Never due during the benchmark: at least 10 minutes ahead, at most 4 hours.
        "next_attempt": now + timedelta(seconds=rng.uniform(600, 4 * 3600)),
        "origin": rng.choice((f"pickup:{queue_id}.eml", "submit", "smtp:192.0.2.10")),
        "attempts": rng.randint(1, 6),
        "first_attempt": arrival,
        "last_attempt": last,
    }


def message_bytes(fields: dict[str, Any], rng: random.Random) -> bytes:
    """A small plain-text message, 0.5-2 KB, as an application would drop it into Pickup."""
    to = ", ".join(r.address for r in fields["recipients"])
    body = "".join(
        f"Line {n} of the message body, with enough words to look like real text.\r\n"
        for n in range(rng.randint(4, 20))
    )
    head = (
        f"Received: from app.example.com by mail.example.com; "
        f"{fields['arrival']:%a, %d %b %Y %H:%M:%S +0000}\r\n"
        f"From: Example Notifications <{fields['sender']}>\r\nTo: {to}\r\n"
        f"Subject: {rng.choice(SUBJECTS)} #{rng.randrange(10**6)}\r\n"
        f"Date: {fields['arrival']:%a, %d %b %Y %H:%M:%S +0000}\r\n"
        f"Message-ID: <{fields['id']}@mail.example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return (head + body).encode()


def build(root: Path, messages: int, now: datetime) -> float:
    """Queue ``messages`` deferred messages through the store's own commit; seconds taken."""
    rng = random.Random(SEED)
    ids = QueueIds(rng=random.Random(SEED + 1))
    started = time.perf_counter()
    with Spool(root, durability=Durability.NONE, clock=FakeClock(now)) as spool:
        for n in range(messages):
            # Arrivals spread over the last 46 hours (IIS gives up at 48), in order.
            arrival = now - timedelta(hours=46) * (1 - n / messages)
            fields = deferred_envelope(ids.new(arrival), arrival, now, rng)
            data = message_bytes(fields, rng)
            envelope = Envelope(size=len(data), **fields)
            spool._store.commit_queued(envelope.id, data, encode_envelope(envelope))
            if n and n % 20000 == 0:
                print(f"  ... {n:,} queued ({time.perf_counter() - started:.1f} s)", flush=True)
    return time.perf_counter() - started


def prepare(args: argparse.Namespace) -> tuple[Path, datetime, str]:
    """The MailRoot to measure, the benchmark's "now", and what setting it up took."""
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="spoolmail-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    root, manifest = base / "MailRoot", base / MANIFEST
    if manifest.exists():  # ours: reuse it if complete and the same size, else build it again
        kept = json.loads(manifest.read_text())
        if kept.get("messages") == args.messages:
            return root, datetime.fromisoformat(kept["now"]), f"reused {root}"
        shutil.rmtree(root, ignore_errors=True)
    elif root.exists():
        raise SystemExit(f"{root} exists and was not built by this benchmark: not touching it")
    now = datetime.now(UTC).replace(microsecond=0)
    manifest.write_text(json.dumps({"building": True}))  # marks the MailRoot as ours
    print(f"building {args.messages:,} deferred messages in {root} ...", flush=True)
    seconds = build(root, args.messages, now)
    manifest.write_text(json.dumps({"messages": args.messages, "now": now.isoformat()}))
    return root, now, f"{seconds:.1f} s ({args.messages / seconds:,.0f} messages/s)"


# -- measuring ------------------------------------------------------------------------------------


def timed(action: Callable[[], object], profile: cProfile.Profile | None = None) -> float:
    """Seconds one call of ``action`` took (under ``profile`` when given)."""
    started = time.perf_counter()
    if profile is None:
        action()
    else:
        profile.runcall(action)
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def print_profile(title: str, profile: cProfile.Profile, limit: int = 18) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(limit)
    print(f"\n-- profile: {title} (by own time) --")
    print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))


def evict(root: Path) -> float:
    """Drop the MailRoot's file pages from the page cache (``--cold``); seconds taken.

    ``posix_fadvise(DONTNEED)`` on our own files only: the inode and directory caches stay warm
    (clearing those takes ``drop_caches``, which needs root and empties the whole machine's).
    """
    started = time.perf_counter()
    os.sync()  # dirty pages cannot be dropped
    for folder in root.iterdir():
        for entry in os.scandir(folder):
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return time.perf_counter() - started


def measure(root: Path, now: datetime, args: argparse.Namespace) -> dict[str, float]:
    if args.cold:
        print(f"evicting the MailRoot from the page cache: {evict(root):.1f} s", flush=True)
    clock = FakeClock(now)
    transport = CapturingTransport()
    profiles = {"start-up": cProfile.Profile(), "rescan": cProfile.Profile()}
    figures: dict[str, float] = {}
    opened = time.perf_counter()
    spool = Spool(root, clock=clock)  # default durability (fsync), as in production
    service = MailService(
        spool,
        router=ROUTER,
        transport=transport,
        clock=clock,
        fqdn="mail.example.com",
        share=args.share,
    )
    figures["open"] = time.perf_counter() - opened
    try:
        reports = []
        cpu = time.process_time()
        figures["scan"] = timed(
            lambda: reports.append(service.run_once()),
            profiles["start-up"] if args.profile else None,
        )
        figures["scan_cpu"] = time.process_time() - cpu
        figures["scheduled"] = len(service._schedule)
        figures["ticks"] = args.ticks
        ticks = []
        # As run_forever's 1 s poll, but all ticks within 290 s: the periodic rescan (every
        # 300 s) is measured on its own below, and the first message is due after 600 s.
        step = min(1.0, 290 / args.ticks)
        for _ in range(args.ticks):
            clock.advance(seconds=step)
            ticks.append(timed(lambda: reports.append(service.run_once())))
        figures.update(
            tick_median=statistics.median(ticks) * 1000,
            tick_p95=percentile(ticks, 0.95) * 1000,
            tick_max=max(ticks) * 1000,
            tick_slowest=ticks.index(max(ticks)) + 1,
            ticks_over=sum(tick * 1000 >= TICK_TARGET_MS for tick in ticks),
        )
        rescans = [
            timed(
                lambda: reports.append(service.rescan()),
                profiles["rescan"] if args.profile and n == 0 else None,
            )
            for n in range(args.rescans)
        ]
        figures["rescan"] = statistics.median(rescans)
        figures["rescan_max"] = max(rescans)
        # Nothing was due, so nothing may have moved; a broken run is not a figure.
        assert not transport.attempts, f"{len(transport.attempts)} deliveries attempted"
        assert not any(reports), [r for r in reports if r][:3]
        assert len(service._schedule) == figures["scheduled"], "the rescan changed the schedule"
    finally:
        service.close()
        spool.close()
    if args.profile:
        for title, profile in profiles.items():
            print_profile(title, profile)
    return figures


# -- reporting ------------------------------------------------------------------------------------


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on, from the longest matching /proc/mounts entry."""
    path = path.resolve()
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) > len(best):
            best, kind = point, f"{parts[2]} ({parts[0]} on {point})"
    return kind


def cpus() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{usable} usable of {os.cpu_count()}"


def lines(figures: dict[str, float], messages: int) -> Iterator[str]:
    startup = figures["open"] + figures["scan"]
    rows = [
        (
            "start-up scan (open + first run_once)",
            f"{startup:.2f} s",
            f"< {STARTUP_TARGET_S:.0f} s",
            startup < STARTUP_TARGET_S,
        ),
        (
            "tick, nothing due (p95)",
            f"{figures['tick_p95']:.3f} ms",
            f"< {TICK_TARGET_MS:.0f} ms",
            figures["tick_p95"] < TICK_TARGET_MS,
        ),
    ]
    yield f"{'figure':<40}{'measured':>14}{'target':>10}  verdict"
    for name, value, target, ok in rows:
        yield f"{name:<40}{value:>14}{target:>10}  {'OK' if ok else 'SLOW'}"
    yield ""
    yield f"  scheduled after start-up:    {figures['scheduled']:,.0f} of {messages:,} envelopes"
    yield (
        f"  start-up: open {figures['open'] * 1000:.1f} ms + first run_once {figures['scan']:.2f} s"
        f" ({figures['scan_cpu']:.2f} s of it on the CPU)"
    )
    yield f"            = {startup / messages * 1e6:.0f} us per envelope"
    yield (
        f"  tick, nothing due:           median {figures['tick_median']:.3f} ms, "
        f"p95 {figures['tick_p95']:.3f} ms, max {figures['tick_max']:.3f} ms"
    )
    yield (
        f"                               slowest: tick {figures['tick_slowest']:.0f}; "
        f"{figures['ticks_over']:.0f} of {figures['ticks']:.0f} at {TICK_TARGET_MS:.0f} ms or more"
    )
    yield (
        f"  rescan, unchanged Queue:     median {figures['rescan']:.3f} s, max "
        f"{figures['rescan_max']:.3f} s ({figures['rescan'] / figures['scan']:.0%} of start-up)"
    )


def _share(text: str) -> Share:
    index, _, count = text.partition("/")
    try:
        return Share(int(index), int(count))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: I/N, 0 <= I < N ({exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="deferred messages (100,000)")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR/MailRoot, keep it, reuse it")
    parser.add_argument("--ticks", type=int, default=200, help="ticks to time (200)")
    parser.add_argument("--rescans", type=int, default=3, help="rescans to time (3)")
    parser.add_argument("--profile", action="store_true", help="cProfile start-up and rescan")
    parser.add_argument(
        "--cold", action="store_true", help="evict the MailRoot's file pages before start-up"
    )
    parser.add_argument(
        "--share",
        type=_share,
        default=Share(0, 1),
        metavar="I/N",
        help="measure worker I of N (run --workers N): it schedules its share only (0/1)",
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.ticks < 1 or args.rescans < 1:
        parser.error("--messages, --ticks and --rescans must be positive")
    root, now, setup = prepare(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        figures = measure(root, now, args)
    finally:
        if not args.keep:
            shutil.rmtree(root.parent, ignore_errors=True)
    print(
        f"\nspoolmail {spoolmail.__version__} queue benchmark, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"  Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}, CPUs: {cpus()}, load average {load:.2f} before measuring"
    )
    print(f"  MailRoot {root}: {filesystem_type(root.parent)}")
    print(f"  setup: {args.messages:,} deferred messages, {setup}\n")
    for line in lines(figures, args.messages):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
