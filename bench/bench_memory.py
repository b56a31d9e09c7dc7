"""Benchmark: peak memory of the delivering process with 100 messages of 10 MB.

The issue's figure: 100 messages of 10 MB each, delivered to an SMTP sink on 127.0.0.1; the
peak RSS of the delivering process must stay under 100 MB. It is not a pass/fail test: a broken
run (a message deferred, lost or damaged) stops it; a high peak never does.

    python bench/bench_memory.py [--messages 100] [--size 10485760]
        [--durability fsync|none] [--connections N ...] [--start pickup|queue ...]

What it does:

1. writes N Pickup files of ``--size`` octets, streamed to disk block by block (never a whole
   message in memory): .NET-style ``X-Sender`` / ``X-Receiver`` lines, headers, then text lines
   of 20-76 characters, about one in twenty starting with "." and a few a lone "." or "..";
2. starts the sink (aiosmtpd, another process: ``bench_throughput.py --sink``) with a
   ``data_size_limit`` above the message size;
3. runs the service in a fresh child process (so its RSS is its own), with
   ``Limits(max_message_size=...)`` raised above the message size: ``Spool`` on the OS filesystem,
   ``Router(local_domains=["example.com"], smart_host="[127.0.0.1]:PORT")``, ``run_once()``
   until everything is delivered and the Queue is empty. The child prints its RSS after the
   imports (the baseline), the RSS sampled every 5 ms during intake and during delivery, and at
   the end ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the peak, the figure the target is about;
4. checks that every message arrived once and whole (the sink's length and SHA-256 of each body
   against the ones computed while writing the file).

``--start queue`` commits the same messages straight into the Queue instead (through
``MailStore.commit_queued``, streamed, in this process), so the child only delivers: its peak is
the delivery's alone. One run per ``--start`` (default: both) and ``--connections`` value
(default: ``Limits().max_connections``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_throughput import (
    SEED,
    FsyncCounter,
    Sink,
    check_records,
    default_connections,
    header,
    pickup_head,
    run_service,
    text_lines,
    write_pickup_file,
)

from spoolmail import Durability, Envelope, Recipient, Spool
from spoolmail._core.envelope import encode_envelope
from spoolmail._core.pickup import PickupOptions
from spoolmail._service.intake import Intake

TARGET_MB = 100.0  # MiB: ru_maxrss is in KiB on Linux; the figures print MiB = KiB / 1024
MB = 1024 * 1024
BLOCK_LINES = 1000


def big_body(rng: random.Random, pool: list[bytes], octets: int) -> Iterator[bytes]:
    """``octets`` of text lines ending in CRLF, in blocks of about 60 KB."""
    left = octets
    while left > 0:
        block = b"\r\n".join(rng.choices(pool, k=BLOCK_LINES)) + b"\r\n"
        if len(block) >= left:
            # The last lines: cut at a line end, then one last line of the right length.
            cut = block.rfind(b"\r\n", 0, max(0, left - 2))
            block = block[: cut + 2] if cut >= 0 else b""
            block += b"x" * max(0, left - len(block) - 2) + b"\r\n"
        left -= len(block)
        yield block


def write_big_pickup(pickup: Path, messages: int, size: int) -> dict[int, tuple[int, str]]:
    rng = random.Random(SEED)
    pool = text_lines(rng, 2000)
    when = datetime.now(UTC).replace(microsecond=0)
    expected = {}
    for number in range(messages):
        head = pickup_head(number, rng, when)
        expected[number] = write_pickup_file(pickup, head, big_body(rng, pool, size - len(head)))
    return expected


def write_big_queue(root: Path, messages: int, size: int) -> dict[int, tuple[int, str]]:
    """The same messages committed straight into the Queue by the store (streamed, no fsync),
    as if intake had already run: the child then only delivers."""
    rng = random.Random(SEED)
    pool = text_lines(rng, 2000)
    when = datetime.now(UTC).replace(microsecond=0)
    expected = {}
    with Spool(root, durability=Durability.NONE) as spool:
        for number in range(messages):
            lines = pickup_head(number, rng, when).split(b"\r\n")
            sender = lines[0].partition(b":")[2].strip().decode()
            recipient = lines[1].partition(b":")[2].strip().decode()
            head = b"\r\n".join(lines[2:])  # without the X-Sender / X-Receiver lines
            body_octets = size - len(head)
            digest = hashlib.sha256()

            def hashed(blocks: Iterator[bytes], digest: Any = digest) -> Iterator[bytes]:
                for block in blocks:
                    digest.update(block)
                    yield block

            queue_id = spool._store.ids.new(when)
            envelope = Envelope(
                id=queue_id,
                sender=sender,
                recipients=(Recipient(recipient),),
                arrival=when,
                next_attempt=when,
                origin="bench",
                size=size,
            )
            spool._store.commit_queued(
                queue_id,
                itertools.chain([head], hashed(big_body(rng, pool, body_octets))),
                encode_envelope(envelope),
            )
            expected[number] = (body_octets, digest.hexdigest())
    return expected


def intake_breakdown(size: int, tmp: str | None) -> str:
    """Where intake's memory goes for one message of ``size``: tracemalloc around
    ``Intake.process``, which parses the header block and streams the body into the Queue."""
    base = Path(tempfile.mkdtemp(prefix="spoolmail-bench-mem-", dir=tmp))
    try:
        write_big_pickup(base, 1, size)
        name = next(base.iterdir()).name
        root = base / "MailRoot"
        root.mkdir()
        with Spool(str(root), durability=Durability.NONE) as spool:
            (base / name).rename(root / "Pickup" / name)
            claim = spool._store.claim_pickup(name)
            assert claim is not None
            options = PickupOptions(
                fqdn="mail.example.com", default_domain="example.com", max_message_size=2 * size
            )
            intake = Intake(spool._transitions, spool.clock, options)
            tracemalloc.start()
            try:
                envelope = intake.process(claim)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        if envelope is None:
            raise SystemExit("the generated message was rejected")
        return (
            f"  intake of one {size / MB:.1f} MiB file under tracemalloc: peak {peak / MB:.2f} MiB "
            f"({peak / size:.2f}x the file: the header block is parsed, the body streamed)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the child: the delivering process -------------------------------------------------------------


def rss_kb() -> int:
    """The current resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return 0


def child(argv: list[str]) -> None:
    root, port, messages, durability, connections, max_size = argv
    # spoolmail and everything the service uses is imported by now (bench_throughput).
    baseline = {"rss_kb": rss_kb(), "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    fsyncs = FsyncCounter()
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            phase = fsyncs.phase
            peaks[phase] = max(peaks.get(phase, 0), rss_kb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    figures = run_service(
        Path(root),
        int(port),
        int(messages),
        durability=durability,
        connections=int(connections),
        limits={"max_message_size": int(max_size)},
        counter=fsyncs,
        timeout=3600.0,
    )
    done.set()
    sampler.join()
    figures.update(
        baseline=baseline,
        sampled_peaks=peaks,
        end_rss_kb=rss_kb(),
        maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    )
    print(json.dumps(figures), flush=True)


def measure(args: argparse.Namespace, start: str, connections: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="spoolmail-bench-mem-", dir=args.tmp))
    try:
        root = base / "MailRoot"
        pickup = root / "Pickup"
        pickup.mkdir(parents=True)
        print(
            f"  writing {args.messages} messages of {args.size / MB:.1f} MiB into "
            f"{'Pickup' if start == 'pickup' else 'the Queue'} ...",
            end="",
            flush=True,
        )
        started = time.perf_counter()
        if start == "pickup":
            expected = write_big_pickup(pickup, args.messages, args.size)
        else:
            expected = write_big_queue(root, args.messages, args.size)
        written = time.perf_counter() - started
        print(f" {written:.1f} s", flush=True)
        max_size = max(2 * MB, args.size + args.size // 10 + 64 * 1024)
        with Sink(data_size_limit=2 * max_size) as sink:
            run = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    str(root),
                    str(sink.port),
                    str(args.messages),
                    args.durability,
                    str(connections),
                    str(max_size),
                ],
                stdout=subprocess.PIPE,
                text=True,
                check=False,
            )
            final = sink.close()
        if run.returncode != 0:
            raise SystemExit(f"the delivering process failed (exit code {run.returncode})")
        figures: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        whole, problems = check_records(final["records"], expected)
        if problems:
            raise SystemExit("messages lost or damaged:\n  " + "\n  ".join(problems[:20]))
        figures.update(
            start=start,
            written=written,
            whole=whole,
            max_size=max_size,
            octets=final["octets"],
            sink_connections=final["connections"],
            sink_maxrss_kb=final["maxrss_kb"],
        )
        return figures
    finally:
        shutil.rmtree(base, ignore_errors=True)


def lines(run: dict[str, Any], args: argparse.Namespace) -> Iterator[str]:
    peak = run["maxrss_kb"] / 1024
    n = args.messages
    start = "from Pickup" if run["start"] == "pickup" else "from the Queue (no intake)"
    yield (
        f"  {start}, max_connections={run['connections']}: peak RSS {peak:.1f} MiB "
        f"= {run['maxrss_kb'] * 1024 / 1e6:.1f} MB (target < {TARGET_MB:.0f} MiB: "
        f"{'OK' if peak < TARGET_MB else 'SLOW'})"
    )
    yield (
        f"    baseline after imports: {run['baseline']['rss_kb'] / 1024:.1f} MiB RSS "
        f"(ru_maxrss {run['baseline']['maxrss_kb'] / 1024:.1f} MiB); at the end "
        f"{run['end_rss_kb'] / 1024:.1f} MiB"
    )
    names = {"intake": "intake" if run["start"] == "pickup" else "start-up scan"}
    sampled = ", ".join(
        f"{names.get(k, k)} {v / 1024:.1f} MiB" for k, v in run["sampled_peaks"].items()
    )
    yield f"    sampled RSS peaks (every 5 ms): {sampled}"
    yield (
        f"    Limits(max_message_size={run['max_size']:,}); {run['total']:.1f} s in all: "
        f"{names['intake']} {run['intake']:.1f} s, delivery {run['delivery']:.1f} s "
        f"({run['octets'] / MB / max(run['delivery'], 1e-9):.0f} MiB/s to the sink)"
    )
    parts = ", ".join(f"{k} {v / n:.2f}" for k, v in run["fsyncs"].items())
    yield f"    fsyncs per message: {run['fsync_total'] / n:.2f} ({parts or 'none'})"
    yield (
        f"    sink: {run['whole']} of {n} messages whole ({run['octets'] / n / MB:.2f} MiB each "
        f"as received) over {run['sink_connections']} connection(s); sink peak RSS "
        f"{run['sink_maxrss_kb'] / 1024:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 8 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100, help="messages (100)")
    parser.add_argument(
        "--size", type=int, default=10 * MB, help="Pickup file size, octets (10 MiB = 10,485,760)"
    )
    parser.add_argument("--durability", choices=("fsync", "none"), default="fsync")
    parser.add_argument(
        "--connections", nargs="+", type=int, help="Limits.max_connections (the default)"
    )
    parser.add_argument(
        "--start",
        nargs="+",
        choices=("pickup", "queue"),
        default=["pickup", "queue"],
        help="where the messages start: Pickup (intake + delivery), or already queued (both)",
    )
    parser.add_argument("--tmp", default=None, help="where the temp MailRoot goes (system temp)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.size < 4096:
        parser.error("--messages must be positive and --size at least 4096")
    for line in header("memory benchmark", Path(args.tmp or tempfile.gettempdir())):
        print(line)
    print(
        f"  {args.messages} messages of {args.size:,} octets, one recipient each, "
        f"durability {args.durability}, to an aiosmtpd sink in another process\n",
        flush=True,
    )
    runs = [
        measure(args, start, conns)
        for start in args.start
        for conns in args.connections or [default_connections()]
    ]
    print()
    for run in runs:
        for line in lines(run, args):
            print(line)
    if "pickup" in args.start:
        print()
        print(intake_breakdown(args.size, args.tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
