"""Benchmark: throughput from Pickup to an SMTP sink on 127.0.0.1, end to end.

The issue's figure: 2,000 messages of 2 KB, one recipient each, written into ``Pickup/`` and
delivered through a smart host on 127.0.0.1 with connection reuse, at least 400 messages per
second on this 2-core machine with fsync on. The sink is aiosmtpd in a separate process, so the
measured process runs only spoolmail. It is not a pass/fail test: a broken run (a message deferred,
lost or damaged, an error in a report) stops it; slowness never does.

    python bench/bench_throughput.py [--messages 2000] [--size 2048]
        [--durability fsync|none ...] [--connections N ...] [--repeat R] [--profile]

For every combination of ``--durability`` (default: fsync and none) and ``--connections``
(default: 1 and ``Limits().max_connections``), the script:

1. writes N Pickup files the way an application does (a dot-name, then a rename; no fsync), and
   times that separately;
2. opens ``Spool(<temp dir>, durability=...)`` on the OS filesystem and a ``MailService`` with
   ``Router(local_domains=["example.com"], smart_host="[127.0.0.1]:PORT")`` and
   ``Limits(max_connections=N)``, and calls ``run_once()`` until every message has been delivered
   and the Queue is empty (as ``spoolmail run --once`` does; ``run_forever`` does the same in its
   first tick). That is the timed part: intake (Pickup → Queue) and delivery (Queue → sink);
3. asks the sink what it received and checks every message arrived once and whole (the SHA-256
   of each body, computed in the sink, against the one computed while writing the file).

``os.fsync`` is wrapped in this process to count fsyncs (file and directory, intake and
delivery). ``--profile`` runs once more under cProfile, with the first ``--durability`` and the
fewest ``--connections`` (one by default, so every attempt runs in the main thread; with more,
each pool thread is profiled too and the own times mostly show threads waiting for the GIL), and
prints the top costs. Before the runs, the sink's own ceiling is measured: the same kind of
messages sent from memory by ``smtplib`` over one connection. The sink is this file run with
``--sink``; bench_memory.py uses it too.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import platform
import pstats
import random
import re
import resource
import shutil
import smtplib
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import spoolmail
from spoolmail import Durability, Limits, MailService, Router, Spool

TARGET_MSG_S = 400.0
SEED = 7
DEFAULT_DATA_LIMIT = 32 * 1024 * 1024  # aiosmtpd's own default
_BENCH_ID = re.compile(rb"^X-Bench-Id: *([0-9]+)\r?$", re.MULTILINE | re.IGNORECASE)


# -- the sink (runs in its own process: python bench/bench_throughput.py --sink) -----------------


def serve_sink(data_size_limit: int) -> None:
    """An aiosmtpd server on 127.0.0.1 that counts and fingerprints what it receives.

    Prints ``{"port": P}`` once listening; then, for each line on stdin, ``stats`` prints the
    counts so far, and ``quit`` (or end of input) prints the counts with one record per message
    and exits. A record is (X-Bench-Id, octets, body octets, body SHA-256).
    """
    # Here, not at the top: the measured processes must not carry the server's modules.
    import asyncio  # noqa: PLC0415

    from aiosmtpd.smtp import SMTP  # noqa: PLC0415

    class Counting:
        def __init__(self) -> None:
            self.connections = 0
            self.messages = 0
            self.octets = 0
            self.recipients = 0
            self.first: float | None = None
            self.last: float | None = None
            self.records: list[tuple[int | None, int, int, str]] = []

        async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802
            content: bytes = envelope.original_content
            end = content.find(b"\r\n\r\n")
            head = content[: end + 2] if end >= 0 else content
            found = _BENCH_ID.search(head)
            body = memoryview(content)[end + 4 :] if end >= 0 else memoryview(b"")
            self.records.append(
                (
                    int(found.group(1)) if found else None,
                    len(content),
                    len(body),
                    hashlib.sha256(body).hexdigest(),
                )
            )
            self.messages += 1
            self.octets += len(content)
            self.recipients += len(envelope.rcpt_tos)
            self.last = time.time()
            if self.first is None:
                self.first = self.last
            return "250 2.0.0 Ok: counted"

        def stats(self, *, records: bool = False) -> dict[str, Any]:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            out: dict[str, Any] = {
                "connections": self.connections,
                "messages": self.messages,
                "octets": self.octets,
                "recipients": self.recipients,
                "first": self.first,
                "last": self.last,
                "cpu": usage.ru_utime + usage.ru_stime,
                "maxrss_kb": usage.ru_maxrss,
            }
            if records:
                out["records"] = self.records
            return out

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Counting()

        def factory() -> SMTP:
            handler.connections += 1
            # A fixed hostname: the default asks socket.getfqdn() for every connection.
            return SMTP(
                handler,
                hostname="sink.test",
                ident="bench sink",
                data_size_limit=data_size_limit,
                decode_data=False,
            )

        server = await loop.create_server(factory, "127.0.0.1", 0)
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() != "stats":
                break
            print(json.dumps(handler.stats()), flush=True)
        server.close()
        print(json.dumps(handler.stats(records=True)), flush=True)

    asyncio.run(main())


class Sink:
    """The sink process, seen from the benchmark: ``with Sink() as sink: sink.port ...``."""

    def __init__(self, *, data_size_limit: int = DEFAULT_DATA_LIMIT) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--sink", str(data_size_limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port: int = self._answer()["port"]
        self.final: dict[str, Any] | None = None

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the sink process ended (exit code {self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _say(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def stats(self) -> dict[str, Any]:
        self._say("stats")
        return self._answer()

    def close(self) -> dict[str, Any]:
        """Stop the sink; its final counts and records."""
        if self.final is None:
            self._say("quit")
            self.final = self._answer()
            self.process.wait(timeout=30)
        return self.final

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            try:
                self.close()
            except (OSError, ValueError, subprocess.TimeoutExpired, SystemExit):
                # A broken sink must not outlive the benchmark.
                self.process.kill()
                self.process.wait()


def check_records(
    records: list[list[Any]], expected: dict[int, tuple[int, str]]
) -> tuple[int, list[str]]:
    """Compare the sink's records with what was written: (whole messages, problems)."""
    problems: list[str] = []
    seen: dict[int, int] = {}
    whole = 0
    for bench_id, _octets, body_octets, digest in records:
        if bench_id is None or bench_id not in expected:
            problems.append(f"a message without a known X-Bench-Id ({bench_id!r})")
            continue
        seen[bench_id] = seen.get(bench_id, 0) + 1
        if seen[bench_id] > 1:
            problems.append(f"message {bench_id} arrived {seen[bench_id]} times")
        want_octets, want_digest = expected[bench_id]
        if (body_octets, digest) == (want_octets, want_digest):
            whole += 1
        else:
            problems.append(
                f"message {bench_id}: body of {body_octets} octets, expected {want_octets}"
                + ("" if body_octets != want_octets else " (same length, different bytes)")
            )
    missing = sorted(set(expected) - set(seen))
    if missing:
        problems.append(f"{len(missing)} messages never arrived, e.g. {missing[:5]}")
    return whole, problems


# -- counting fsyncs ------------------------------------------------------------------------------


class FsyncCounter:
    """Wraps ``os.fsync`` in this process: counts file and directory fsyncs per phase."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.phase = "setup"
        self._lock = threading.Lock()
        self._real = os.fsync

    def __enter__(self) -> FsyncCounter:
        real = self._real

        def fsync(fd: Any) -> None:
            number = fd if isinstance(fd, int) else fd.fileno()
            kind = "dir" if stat.S_ISDIR(os.fstat(number).st_mode) else "file"
            with self._lock:
                key = (self.phase, kind)
                self.counts[key] = self.counts.get(key, 0) + 1
            real(fd)

        os.fsync = fsync
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.fsync = self._real

    def count(self, phase: str | None = None, kind: str | None = None) -> int:
        return sum(
            n
            for (p, k), n in self.counts.items()
            if (phase is None or p == phase) and (kind is None or k == kind)
        )


# -- Pickup files ---------------------------------------------------------------------------------

WORDS = [
    "order",
    "invoice",
    "account",
    "payment",
    "shipped",
    "delivery",
    "customer",
    "reference",
    "total",
    "amount",
    "due",
    "please",
    "thank",
    "you",
    "for",
    "your",
    "the",
    "and",
    "of",
    "to",
    "in",
    "we",
    "have",
    "received",
    "will",
    "be",
    "sent",
    "within",
    "business",
    "days",
    "questions",
    "contact",
    "support",
    "team",
    "regards",
    "details",
    "below",
    "item",
    "quantity",
    "price",
    "subtotal",
    "tax",
    "address",
    "street",
    "city",
    "postal",
    "code",
    "country",
    "tracking",
    "number",
    "carrier",
]


def text_lines(rng: random.Random, count: int) -> list[bytes]:
    """Plain text lines of 20-76 characters; about one in twenty starts with '.', a few are
    a lone '.' or '..' (the lines SMTP dot-stuffing exists for)."""
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.01:
            out.append(rng.choice((b".", b"..", b". ")))
            continue
        words: list[str] = []
        width = rng.randint(20, 76)
        while sum(map(len, words)) + len(words) < width:
            words.append(rng.choice(WORDS))
        line = " ".join(words)[:width]
        if roll < 0.05:
            line = "." + line[1:]
        elif roll < 0.07:
            line = ""
        out.append(line.encode())
    return out


def pickup_head(number: int, rng: random.Random, when: datetime) -> bytes:
    """The top of a Pickup file as .NET's SmtpClient writes one: X-Sender / X-Receiver lines,
    then the headers; one recipient at a remote domain."""
    rcpt = f"user{number}@customer{rng.randrange(200)}.example.net"
    return (
        "X-Sender: orders@example.com\r\n"
        f"X-Receiver: {rcpt}\r\n"
        "MIME-Version: 1.0\r\n"
        'From: "Example Orders" <orders@example.com>\r\n'
        f"To: {rcpt}\r\n"
        f"Date: {format_datetime(when)}\r\n"
        f"Subject: Order confirmation #{100000 + number}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        f"X-Bench-Id: {number}\r\n"
        "\r\n"
    ).encode()


def write_pickup_file(pickup: Path, head: bytes, body: Iterator[bytes]) -> tuple[int, str]:
    """Write one Pickup file as an application should: a dot-name first, then a rename.

    ``body`` is streamed (blocks of CRLF-ended lines). Returns (body octets, body SHA-256).
    """
    name = f"{uuid.uuid4()}.eml"
    temp = pickup / f".{name}"
    digest = hashlib.sha256()
    octets = 0
    with open(temp, "wb") as handle:
        handle.write(head)
        for block in body:
            handle.write(block)
            digest.update(block)
            octets += len(block)
    os.replace(temp, pickup / name)
    return octets, digest.hexdigest()


def small_body(rng: random.Random, pool: list[bytes], octets: int) -> Iterator[bytes]:
    """About ``octets`` of text, whole lines ending in CRLF, as one block."""
    lines: list[bytes] = []
    total = 0
    while total < octets - 2:
        line = rng.choice(pool)[: max(0, octets - total - 2)]
        lines.append(line + b"\r\n")
        total += len(line) + 2
    yield b"".join(lines)


def write_pickup(pickup: Path, messages: int, size: int) -> dict[int, tuple[int, str]]:
    """N Pickup files of ``size`` octets each; (body octets, body SHA-256) per X-Bench-Id."""
    rng = random.Random(SEED)
    pool = text_lines(rng, 500)
    when = datetime.now(UTC).replace(microsecond=0)
    expected = {}
    for number in range(messages):
        head = pickup_head(number, rng, when)
        body = small_body(rng, pool, max(2, size - len(head)))
        expected[number] = write_pickup_file(pickup, head, body)
    return expected


# -- one measured run -----------------------------------------------------------------------------


def default_connections() -> int:
    return Limits().max_connections


def run_service(
    root: Path,
    port: int,
    messages: int,
    *,
    durability: str,
    connections: int,
    limits: dict[str, int] | None = None,
    profile: bool = False,
    timeout: float = 600.0,
    counter: FsyncCounter | None = None,
) -> dict[str, Any]:
    """Run a MailService over ``root`` until N messages are delivered and the Queue is empty.

    ``counter.phase`` is "intake" from the first ``run_once`` and "delivery" from the first
    delivery attempt (every Pickup file of a tick is queued before the tick's first attempt).
    """
    figures: dict[str, Any] = {"durability": durability, "connections": connections}
    with counter or FsyncCounter() as fsyncs:
        spool = Spool(root, durability=Durability(durability))
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"], smart_host=f"[127.0.0.1]:{port}"),
            fqdn="mail.example.com",
            limits=Limits(max_connections=connections, **(limits or {})),
        )
        stamps: dict[str, float] = {}
        attempt = service._attempt_alone

        def first_attempt(queue_id: str) -> Any:
            if "delivery" not in stamps:
                stamps["delivery"] = time.perf_counter()
                fsyncs.phase = "delivery"
            return attempt(queue_id)

        service._attempt_alone = first_attempt  # type: ignore[method-assign]
        pickup = service._pickup

        def picked_up(names: Any, tally: Any) -> None:
            pickup(names, tally)
            stamps["queued"] = time.perf_counter()  # the last Pickup batch is in the Queue

        service._pickup = picked_up  # type: ignore[method-assign]
        profiles = _profile_threads(service) if profile else []
        main_profile = cProfile.Profile() if profile else None
        delivered = ticks = 0
        queue = root / "Queue"
        try:
            fsyncs.phase = "intake"
            cpu = time.process_time()
            started = time.perf_counter()
            while True:
                ticks += 1
                if main_profile is not None:
                    report = main_profile.runcall(service.run_once)
                else:
                    report = service.run_once()
                delivered += len(report.delivered)
                broken = report.errors or report.deferred or report.failed or report.badmail
                if broken:
                    raise SystemExit(f"broken run: {report}")
                if delivered >= messages and not os.listdir(queue):
                    break
                if time.perf_counter() - started > timeout:
                    raise SystemExit(f"only {delivered} of {messages} delivered in {timeout:g} s")
            ended = time.perf_counter()
            figures["cpu"] = time.process_time() - cpu
        finally:
            service.close()
            spool.close()
        figures.update(
            total=ended - started,
            intake=stamps.get("delivery", ended) - started,
            delivery=ended - stamps.get("delivery", ended),
            queued=stamps.get("queued", ended) - started,
            delivered=delivered,
            ticks=ticks,
            fsyncs={f"{p}/{k}": n for (p, k), n in sorted(fsyncs.counts.items())},
            fsync_total=fsyncs.count(),
            fsync_intake=fsyncs.count("intake"),
            fsync_delivery=fsyncs.count("delivery"),
        )
    if main_profile is not None:
        figures["profile"] = _merged(main_profile, profiles)
    return figures


def _profile_threads(service: Any) -> list[cProfile.Profile]:
    """Profile each delivery thread of the pool too (cProfile sees only its own thread)."""
    profiles: list[cProfile.Profile] = []
    local = threading.local()
    alone = service._attempt_alone

    def profiled(queue_id: str) -> Any:
        if threading.current_thread() is threading.main_thread():
            return alone(queue_id)  # max_connections 1: the main thread's profile sees it
        profile = getattr(local, "profile", None)
        if profile is None:
            profile = local.profile = cProfile.Profile()
            profiles.append(profile)
        return profile.runcall(alone, queue_id)

    service._attempt_alone = profiled
    return profiles


def _merged(main: cProfile.Profile, others: list[cProfile.Profile]) -> pstats.Stats:
    stats = pstats.Stats(main)
    for profile in others:
        stats.add(profile)
    return stats


def print_profile(stats: pstats.Stats, title: str, limit: int = 25) -> None:
    for key, what in (("tottime", "own time"), ("cumulative", "cumulative time")):
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.strip_dirs().sort_stats(key).print_stats(limit)
        print(f"\n-- profile: {title}, by {what} (all threads added up) --")
        print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))


def measure_once(args: argparse.Namespace, durability: str, connections: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="spoolmail-bench-tp-", dir=args.tmp))
    try:
        root = base / "MailRoot"
        pickup = root / "Pickup"
        pickup.mkdir(parents=True)
        started = time.perf_counter()
        expected = write_pickup(pickup, args.messages, args.size)
        written = time.perf_counter() - started
        with Sink() as sink:
            before = sink.stats()
            figures = run_service(
                root, sink.port, args.messages, durability=durability, connections=connections
            )
            final = sink.close()
        whole, problems = check_records(final["records"], expected)
        if problems:
            raise SystemExit("messages lost or damaged:\n  " + "\n  ".join(problems[:20]))
        figures.update(
            written=written,
            whole=whole,
            sink_connections=final["connections"],
            sink_cpu=final["cpu"] - before["cpu"],
            sink_window=(final["last"] or 0) - (final["first"] or 0),
            octets=final["octets"],
        )
        return figures
    finally:
        shutil.rmtree(base, ignore_errors=True)


def profile_run(args: argparse.Namespace, durability: str, connections: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="spoolmail-bench-tp-", dir=args.tmp))
    try:
        root = base / "MailRoot"
        (root / "Pickup").mkdir(parents=True)
        write_pickup(root / "Pickup", args.messages, args.size)
        with Sink() as sink:
            figures = run_service(
                root,
                sink.port,
                args.messages,
                durability=durability,
                connections=connections,
                profile=True,
            )
        print(
            f"\nprofiled run (durability {durability}, connections {connections}): "
            f"{args.messages / figures['total']:,.0f} msg/s under cProfile "
            "(cProfile itself slows it down)"
        )
        print_profile(figures["profile"], f"fsync={durability}, connections={connections}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sink_ceiling(messages: int, size: int) -> float:
    """Messages per second the sink takes from smtplib over one connection (context only).

    The same kind of messages, sent from memory by ``smtplib.SMTP.sendmail`` (MAIL, RCPT, DATA
    in lockstep, no RSET between messages): what the sink and the loopback allow a client that
    does nothing else.
    """
    rng = random.Random(SEED)
    pool = text_lines(rng, 500)
    when = datetime.now(UTC).replace(microsecond=0)
    data = []
    for number in range(messages):
        head = pickup_head(number, rng, when)
        body = b"".join(small_body(rng, pool, max(2, size - len(head))))
        data.append(head.split(b"\r\n", 2)[2] + body)  # without X-Sender / X-Receiver
    with Sink() as sink:
        client = smtplib.SMTP("127.0.0.1", sink.port, local_hostname="bench.example.com")
        try:
            started = time.perf_counter()
            for number, message in enumerate(data):
                client.sendmail("orders@example.com", [f"user{number}@example.net"], message)
            seconds = time.perf_counter() - started
        finally:
            client.quit()
        if sink.close()["messages"] != messages:
            raise SystemExit("the sink did not count every message smtplib sent")
    return messages / seconds


# -- reporting ------------------------------------------------------------------------------------


def header(title: str, where: Path) -> list[str]:
    # Only the reporting process imports bench_queue (and spoolmail.testing with it).
    from bench_queue import cpus, filesystem_type  # noqa: PLC0415

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return [
        f"spoolmail {spoolmail.__version__} {title}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"  Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}, CPUs: {cpus()}, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} before measuring",
        f"  MailRoots in {where}: {filesystem_type(where)}",
    ]


def summary_lines(runs: list[dict[str, Any]], messages: int) -> Iterator[str]:
    yield (
        f"{'durability':<11}{'conns':>6}{'msg/s':>8}{'total s':>9}{'intake s':>10}"
        f"{'deliv. s':>10}{'fsync/msg':>11}{'sink conns':>11}  verdict"
    )
    for run in runs:
        rate = messages / run["total"]
        verdict = (
            ("OK" if rate >= TARGET_MSG_S else "SLOW")
            if run["durability"] == "fsync"
            else "(no target)"
        )
        yield (
            f"{run['durability']:<11}{run['connections']:>6}{rate:>8,.0f}{run['total']:>9.2f}"
            f"{run['intake']:>10.2f}{run['delivery']:>10.2f}"
            f"{run['fsync_total'] / messages:>11.1f}{run['sink_connections']:>11}  {verdict}"
        )


def detail_lines(run: dict[str, Any], messages: int) -> Iterator[str]:
    n = messages
    yield f"  fsync={run['durability']}, max_connections={run['connections']}:"
    yield (
        f"    Pickup written (not timed): {run['written']:.2f} s "
        f"({n / run['written']:,.0f} files/s)"
    )
    yield (
        f"    intake {run['intake']:.2f} s ({n / run['intake']:,.0f} msg/s), delivery "
        f"{run['delivery']:.2f} s ({n / max(run['delivery'], 1e-9):,.0f} msg/s), "
        f"{run['ticks']} run_once call(s)"
    )
    yield (
        f"    every Pickup file queued after {run['queued']:.2f} s of {run['total']:.2f} s "
        "(intake runs beside delivery: when this is near the end, intake set the pace)"
    )
    yield (
        f"    spoolmail CPU {run['cpu']:.2f} s ({run['cpu'] / run['total']:.0%} of the wall "
        f"time, of 200% for 2 cores); sink CPU {run['sink_cpu']:.2f} s "
        f"({run['sink_cpu'] / run['total']:.0%})"
    )
    parts = ", ".join(f"{k} {v / n:.2f}" for k, v in run["fsyncs"].items())
    yield f"    fsyncs per message: {run['fsync_total'] / n:.2f} ({parts or 'none'})"
    yield (
        f"    sink: {run['whole']:,} of {n:,} messages whole, {run['octets'] / n:,.0f} octets "
        f"each, over {run['sink_connections']} connection(s); first to last "
        f"{run['sink_window']:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--sink":
        serve_sink(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages (2,000)")
    parser.add_argument("--size", type=int, default=2048, help="Pickup file size, octets (2,048)")
    parser.add_argument(
        "--durability",
        nargs="+",
        choices=("fsync", "none"),
        default=["fsync", "none"],
        help="spool durability to measure (both)",
    )
    parser.add_argument(
        "--connections",
        nargs="+",
        type=int,
        help="Limits.max_connections to measure (1 and the default)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per combination (1)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more run")
    parser.add_argument("--tmp", default=None, help="where the temp MailRoots go (system temp)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.size < 600 or args.repeat < 1:
        parser.error("--messages and --repeat must be positive, --size at least 600")
    connections = args.connections or [1, default_connections()]
    for line in header("throughput benchmark", Path(args.tmp or tempfile.gettempdir())):
        print(line)
    print(
        f"  {args.messages:,} Pickup files of {args.size:,} octets, one recipient each, to an "
        "aiosmtpd sink in another process\n",
        flush=True,
    )
    ceiling = sink_ceiling(args.messages, args.size)
    print(
        f"  context: the sink alone takes {ceiling:,.0f} msg/s from smtplib over one connection",
        flush=True,
    )
    best: list[dict[str, Any]] = []
    for durability in args.durability:
        for conns in connections:
            runs = [measure_once(args, durability, conns) for _ in range(args.repeat)]
            rates = sorted(args.messages / r["total"] for r in runs)
            run = min(runs, key=lambda r: r["total"])
            run["rates"] = rates
            best.append(run)
            spread = (
                f" (median {statistics.median(rates):,.0f}, range {rates[0]:,.0f}-{rates[-1]:,.0f})"
                if len(rates) > 1
                else ""
            )
            print(
                f"  measured fsync={durability} connections={conns}: "
                f"{args.messages / run['total']:,.0f} msg/s{spread}",
                flush=True,
            )
    print(f"\nbest of {args.repeat} run(s) per row; target: {TARGET_MSG_S:.0f} msg/s with fsync on")
    for line in summary_lines(best, args.messages):
        print(line)
    print()
    for run in best:
        for line in detail_lines(run, args.messages):
            print(line)
    if args.profile:
        # One connection: every attempt runs in the main thread, so own times are CPU and I/O,
        # not threads waiting for the GIL (which is what a profile of the pool mostly shows).
        profile_run(args, args.durability[0], min(connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
