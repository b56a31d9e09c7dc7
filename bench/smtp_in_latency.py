"""SMTP in seen from one client: how long each reply takes while the listener is under load
(issue 12; bench/README.md, "Twentieth round").

``bench_postfix.py``'s SMTP in path counts messages at the sink: a rate, not where a message's
time goes. This runs ``spoolmail run --listen`` as that path does (relaying to ``smtp-sink``),
loads it with ``smtp-source -s N`` (default 4), and runs one more client of its own beside them
that waits for each reply, as ``smtp-source`` does, and times each wait: MAIL, RCPT, DATA (to
its 354) and the end of data (the "." to its ``250``, which the listener sends only once the
message is durable: the group commit). With ``--sources 0`` the client is alone.

It prints the median, 90th percentile and mean of each wait and of the whole transaction, and
``smtp-source``'s time and rate. Every message must reach the sink once (its counter) and the
MailRoot must be empty afterwards, else the run is broken.

    python bench/smtp_in_latency.py                       # 4 smtp-source sessions + this one
    python bench/smtp_in_latency.py --sources 0           # this client alone
    python bench/smtp_in_latency.py --python current      # the interpreter running this script

Needs Postfix's ``smtp-sink`` and ``smtp-source`` (installed as ``bench_postfix.py`` does) and
spoolmail's ``server`` extra. Nothing here is used by the package.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_postfix as bp
import postfix_instance as pf

STEPS = ("MAIL", "RCPT", "DATA", "end of data", "transaction")
RECIPIENT = bp.RELAYED


class Client:
    """One SMTP client that waits for every reply and times it, until told to stop."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.waits: dict[str, list[float]] = {step: [] for step in STEPS}
        self.sent = 0
        self.stop = threading.Event()
        self.error: str | None = None
        line = b"x" * 76 + b"\r\n"
        head = (
            b"From: probe@client.test\r\nTo: " + RECIPIENT.encode() + b"\r\nSubject: probe\r\n\r\n"
        )
        self.message = head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"

    def run(self) -> None:
        try:
            self._run()
        except (OSError, ValueError) as exc:
            self.error = f"the timing client failed: {exc}"

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            replies = sock.makefile("rb")

            def expect(code: bytes) -> None:
                while (line := replies.readline()) and line[3:4] == b"-":
                    pass
                if not line.startswith(code):
                    raise ValueError(f"expected {code.decode()}, got {line!r}")

            expect(b"220")
            sock.sendall(b"EHLO probe.client.test\r\n")
            expect(b"250")
            commands = (
                (b"MAIL FROM:<probe@client.test>\r\n", b"250"),
                (b"RCPT TO:<" + RECIPIENT.encode() + b">\r\n", b"250"),
                (b"DATA\r\n", b"354"),
                (self.message, b"250"),
            )
            while not self.stop.is_set():
                began = before = time.perf_counter()
                for step, (command, code) in zip(STEPS, commands, strict=False):
                    sock.sendall(command)
                    expect(code)
                    after = time.perf_counter()
                    self.waits[step].append(after - before)
                    before = after
                self.waits["transaction"].append(before - began)
                self.sent += 1
            sock.sendall(b"QUIT\r\n")
            expect(b"221")


def line(step: str, waits: list[float]) -> str:
    ordered = sorted(waits)
    ninetieth = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"  {step:<12} median {1000 * statistics.median(ordered):6.3f} ms   "
        f"90% {1000 * ninetieth:6.3f} ms   mean {1000 * statistics.fmean(ordered):6.3f} ms"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=4, help="smtp-source sessions (4)")
    parser.add_argument("--messages", type=int, default=4000, help="smtp-source's (4,000)")
    parser.add_argument("--size", type=int, default=2048, help="octets a message (2,048)")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="how long the client runs alone (3 s)"
    )
    parser.add_argument(
        "--python", default="system", help="as bench_postfix.py's: system, current or a path"
    )
    args = parser.parse_args(argv)
    if args.sources < 0 or args.messages < 1 or args.size < 100 or args.seconds <= 0:
        parser.error("--sources >= 0, --messages >= 1, --size >= 100, --seconds > 0")
    return args


def measure(args: argparse.Namespace, port: int) -> tuple[Client, float, bool]:
    """The timing client beside ``smtp-source`` (or alone for ``--seconds``) against the
    listener on ``port``: the client, how long the load ran, and whether smtp-source ran."""
    client = Client(port, args.size)
    thread = threading.Thread(target=client.run, daemon=True)
    started = time.monotonic()
    source = None
    if args.sources:
        source = bp.smtp_source(port, sessions=args.sources, count=args.messages, size=args.size)
    thread.start()
    if source is not None:
        source.wait()
        if source.returncode:
            err = source.stderr.read().decode(errors="replace") if source.stderr else ""
            raise SystemExit(f"smtp-source failed ({source.returncode}): {err.strip()}")
    else:
        time.sleep(args.seconds)
    took = time.monotonic() - started
    client.stop.set()
    thread.join(60)
    if client.error or thread.is_alive():
        raise SystemExit(client.error or "the timing client did not end")
    return client, took, source is not None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    pf.ensure_postfix(install=True)
    bp.compile_bytecode()
    base = Path(tempfile.mkdtemp(prefix="spoolmail-smtp-latency-"))
    sink = pf.SmtpSink(pf.free_port())
    cpu = pf.CpuGroup(f"spoolmail-smtp-latency-{id(base)}")
    spoolmail = bp.SpoolmailSide(base / "spoolmail", sink, cpu, [])
    try:
        python = bp.choose_python(args.python, base, install=True)
        print(f"spoolmail on Python {python['version']} ({python['how']})")
        (base / "spoolmail").mkdir()
        sink.start()
        port = pf.free_port()
        listen = bp.listen_arguments(port, [])
        if listen is None:
            raise SystemExit("this spoolmail has no --listen")
        spoolmail.fresh()
        spoolmail.start(*listen, wait_ready=True)
        pf.wait_for_port(port, what="spoolmail's listener")
        client, took, loaded = measure(args, port)
        if not client.sent:
            raise SystemExit("the timing client sent nothing")
        expected = client.sent + (args.messages if loaded else 0)
        sink.wait_for(expected, stall=30, timeout=600, alive=spoolmail.alive)
        time.sleep(0.3)  # a message counted twice shows once the last one arrived
        spoolmail.stop()
        broken = spoolmail.leftovers()
        if sink.count != expected:
            broken = f"the sink counted {sink.count - expected:+d} messages more than were sent"
        if broken:
            raise SystemExit(f"broken run: {broken}" + spoolmail.log_tail())
        who = f"{args.sources} smtp-source sessions and this client" if loaded else "this client"
        print(f"{who}, {args.size:,} B a message: this client sent {client.sent:,}")
        if loaded:
            print(
                f"  smtp-source: {args.messages:,} messages in {took:.2f} s "
                f"({args.messages / took:,.0f} msg/s)"
            )
        for step in STEPS:
            print(line(step, client.waits[step]))
        return 0
    finally:
        for step in (spoolmail.stop, sink.stop, cpu.remove):
            with contextlib.suppress(Exception, SystemExit):
                step()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
