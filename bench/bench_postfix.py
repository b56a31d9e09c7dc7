"""Benchmark: spoolmail against Postfix, side by side, into the same smtp-sink (issue 12).

Each path runs through a private Postfix and through spoolmail in turn, in pairs (Postfix, then
spoolmail, then Postfix again ...), both relaying to one Postfix ``smtp-sink -c`` on 127.0.0.1
whose ``mesg=`` counter is the finish line. Durability is each one's default: Postfix fsyncs each
queue file, spoolmail runs with fsync. It is not a pass/fail test: a broken run (a message missing
at the sink or arriving twice, a message left in a queue, Postfix failing to start) stops it, with
the Postfix instance stopped and removed; slowness never does.

    python bench/bench_postfix.py [--paths drain,flush,big,smtp] [--pairs 3] [--messages 2000]
        [--flush-messages 5000] [--big-messages 200] [--big-size 1048576] [--json FILE]
        [--python system|current|PATH]

Both sides are Debian's: Postfix from its package, and spoolmail on Debian's ``/usr/bin/python3``
in a venv made for the run with the checkout installed into it, as the README's quick start has
it on Debian (``--python``: see :func:`choose_python`; the report names the interpreter).

The paths (issue 12's table):

- ``drain``: N x 2 KB already waiting. spoolmail: Pickup files written (a dot-name, then a
  rename), then ``spoolmail run`` (the daemon, in a subprocess) is started. Postfix: the same
  messages put into its maildrop with ``sendmail`` while it is stopped, then ``postfix start``.
  Both sides' waiting mail is on disk (``os.sync()``) before the clock starts: postdrop fsyncs
  each maildrop file as it writes it, and Pickup files left to the page cache would be written
  back inside spoolmail's run. Timed from the start command to the moment the sink counts the
  last message.
- ``flush``: N deferred messages flushed to a sink that came back. With the sink stopped, the
  messages are taken in and deferred (Postfix: ``sendmail`` with the master running; spoolmail:
  Pickup files and ``spoolmail run --once`` until each was tried once); the daemon runs, the sink
  comes back on its port, and the flush is timed from the command (``postqueue -f``;
  ``spoolmail queue flush --quiet``, which a running service reads at its next tick; without
  ``--quiet`` where the CLI lacks it) to the last message at the sink.
- ``big``: as ``drain`` with 200 x 1 MiB.
- ``smtp``: ``smtp-source -s 5 -d`` (5 concurrent clients, each reusing its connection) sends
  N x 2 KB to the running server (Postfix's smtpd; ``spoolmail run --listen``), which relays
  them to the sink; timed from smtp-source's start to the last message at the sink. Only where
  ``spoolmail run --help`` shows ``--listen``; otherwise the path prints "not available yet".

For each run: the rate (messages / wall time), the CPU seconds used meanwhile by every process of
that side (a cgroup per side when one can be made: Postfix's master and all its daemons,
including those that exited; spoolmail's process and its ``queue flush`` command; else ``/proc``
accounting of the process tree), per message; and the machine's steal meanwhile (the share of
its CPU time that the hypervisor gave to other guests, ``/proc/stat``). The clients (sendmail
before the timing, smtp-source during it) and the sink are counted on neither side. For each
pair: the ratio spoolmail / Postfix of the rates; per path, the medians. Then the two
ceilings: the sink fed directly by ``smtp-source`` (5 sessions with connection reuse), and
fsync'd file creates per second on the disk of the temp dir (one writer, and four), both with
2 KB messages and files and, for the big path, again with its own size; and, per path and side,
how close the median rate comes to its CPU ceiling (the usable cores divided by that side's CPU
per message), to the fsync'd-create rate and to the sink's own rate, each for messages of that
path's size (DESIGN section 10).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import postfix_instance as pf

PATHS = ("drain", "flush", "big", "smtp")
SEED = 12
SENDER = "orders@example.com"
RELAYED = "user@customer.example.net"  # the SMTP in path's recipient: relayed to the sink
LOCAL_DOMAIN = "example.com"
# The command that runs spoolmail, and the interpreter it (and the floor) runs on: main() sets
# both from --python before anything runs.
SPOOLMAIL = [sys.executable, "-m", "spoolmail"]
PYTHON = [sys.executable]
FLOOR = Path(__file__).with_name("floor_flush.py")
CHECKOUT = Path(__file__).resolve().parent.parent
# Debian's interpreter: the one the README's quick start makes its venv with on Debian.
SYSTEM_PYTHON = Path("/usr/bin/python3")


def machine_times() -> list[int] | None:
    """The machine's CPU time so far, by kind (``/proc/stat``'s first line, in ticks), or None
    where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def machine_shares(before: list[int] | None, after: list[int] | None) -> dict[str, float]:
    """Of the machine's CPU time between two ``machine_times``: the share stolen by the
    hypervisor for other guests (``steal``, the eighth field), and the share idle or waiting
    for the disk. Empty when either is unknown or no tick passed."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return {}
    spent = [now - then for then, now in zip(before[:8], after[:8], strict=True)]
    total = sum(spent)
    if total <= 0:
        return {}
    return {"steal_share": spent[7] / total, "idle_share": (spent[3] + spent[4]) / total}


# -- messages --------------------------------------------------------------------------------------


def message_bytes(number: int, size: int, pool: list[bytes], when: datetime) -> bytes:
    """A Pickup file of about ``size`` octets: X-Sender / X-Receiver, headers, text lines.

    The same bytes go to Postfix's sendmail (the two envelope lines taken off).
    """
    from bench_throughput import pickup_head, small_body  # noqa: PLC0415

    rng = random.Random(SEED * 1_000_003 + number)
    head = pickup_head(number, rng, when)
    return head + b"".join(small_body(rng, pool, max(2, size - len(head))))


def messages(count: int, size: int) -> Iterator[bytes]:
    from bench_throughput import text_lines  # noqa: PLC0415

    pool = text_lines(random.Random(SEED), 500)
    when = datetime.now(UTC).replace(microsecond=0)
    for number in range(count):
        yield message_bytes(number, size, pool, when)


def write_pickup(pickup: Path, count: int, size: int) -> None:
    """Pickup files the way an application writes them: ``.name.tmp``, then a rename."""
    pickup.mkdir(parents=True, exist_ok=True)
    for data in messages(count, size):
        name = f"{uuid.uuid4()}.eml"
        temp = pickup / f".{name}.tmp"
        temp.write_bytes(data)
        os.replace(temp, pickup / name)


# -- the interpreter -------------------------------------------------------------------------------


def choose_python(choice: str, base: Path, *, install: bool) -> dict[str, str]:
    """The interpreter that runs spoolmail and the floor, set in :data:`SPOOLMAIL` and
    :data:`PYTHON`; what the report says of it.

    ``system`` (the default): Debian's ``/usr/bin/python3``, as Postfix is Debian's and as the
    README's quick start uses it on Debian: a venv made with it under ``base``, the checkout
    installed into it (``pip install .[server]``). The interpreter matters: on this machine the
    image's own Python (built by pyenv, without ``--enable-optimizations`` or ``--with-lto``, its
    library shared) took 20-26% more CPU a message relaying than Debian's for the same code
    (bench/README, "Seventeenth round"). ``current``: the interpreter running this script, with
    the checkout as installed for it (``nox -s bench_postfix`` installs it editable). Else the
    path of an interpreter, used as ``system`` is. ``system`` where there is no
    ``/usr/bin/python3`` of at least 3.11 is ``current``, and the report says so.
    """
    note = ""
    if choice == "system":
        if _version_ok(SYSTEM_PYTHON):
            choice = str(SYSTEM_PYTHON)
        else:
            choice, note = "current", f" ({SYSTEM_PYTHON} missing or older than 3.11)"
    if choice == "current":
        python = sys.executable
        how = f"this script's interpreter{note}, the checkout as installed for it"
    else:
        if not _version_ok(Path(choice)):
            raise SystemExit(f"--python {choice}: not a Python 3.11 or later")
        python = _venv_with(Path(choice), base / "venv", install=install)
        how = f"a venv of {choice} made for this run, the checkout installed into it"
    version = subprocess.run(
        [python, "-c", "import sys; print(' '.join(sys.version.split()))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    SPOOLMAIL[:] = [python, "-m", "spoolmail"]
    PYTHON[:] = [python]
    return {"python": python, "version": version.split(" ", 1)[0], "build": version, "how": how}


def _version_ok(python: Path) -> bool:
    try:
        done = subprocess.run(
            [str(python), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _venv_with(python: Path, venv: Path, *, install: bool) -> str:
    """``venv`` made with ``python``, the checkout installed into it; its interpreter. Debian's
    python3 has no venv module until ``python3-venv`` is installed: installed here when allowed."""
    made = subprocess.run(
        [str(python), "-m", "venv", str(venv)], capture_output=True, text=True, check=False
    )
    if made.returncode != 0 and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("  installing Debian's python3-venv ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        apt_get = shutil.which("apt-get") or "apt-get"
        subprocess.run([apt_get, "update", "-qq"], check=True, env=env)
        subprocess.run(
            [apt_get, "install", "-y", "-qq", "--no-install-recommends", "python3-venv"],
            check=True,
            env=env,
        )
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run(
            [str(python), "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
    if made.returncode != 0:
        last = (made.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"cannot make a venv with {python}: {last} (or use --python current)")
    print(f"  installing spoolmail into a venv of {python} ...", flush=True)
    own = str(venv / "bin" / "python")
    pip = [own, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    installed = subprocess.run([*pip, f"{CHECKOUT}[server]"], check=False)
    if installed.returncode != 0:
        raise SystemExit(
            f"cannot install the checkout into a venv of {python} (pip exit "
            f"{installed.returncode}, above); or use --python current"
        )
    return own


# -- spoolmail, through its command ----------------------------------------------------------------


def spoolmail_help() -> str:
    """``spoolmail run --help``; a command that cannot even print its help stops the bench."""
    done = subprocess.run(
        [*SPOOLMAIL, "run", "--help"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"`spoolmail run --help` failed (exit {done.returncode}): {last}")
    return done.stdout


def flush_command(root: Path) -> list[str]:
    """``spoolmail queue flush``, with ``--quiet`` where the CLI has it: like ``postqueue -f``,
    the order is given and nothing is listed (the listing reads every envelope while the
    workers flush, and its CPU counts on spoolmail's side)."""
    done = subprocess.run(
        [*SPOOLMAIL, "queue", "flush", "--help"], capture_output=True, text=True, check=False
    )
    quiet = ["--quiet"] if "--quiet" in done.stdout else []
    return [*SPOOLMAIL, "--root", str(root), "queue", "flush", *quiet]


def listen_arguments(port: int, extra: list[str]) -> list[str] | None:
    """``--listen 127.0.0.1:PORT`` and a relay permission for 127.0.0.1, if the CLI has them."""
    text = spoolmail_help()
    if "--listen" not in text:
        return None
    out = ["--listen", f"127.0.0.1:{port}"]
    if extra:
        return out + extra
    # Nobody relays by default: let 127.0.0.1 relay (--relay-network, or a flag like it).
    if "--relay-network" in text:
        return [*out, "--relay-network", "127.0.0.1/32"]
    for flag in re.findall(r"(--relay[-\w]*)", text):
        if "smart" not in flag and "user" not in flag:
            return [*out, flag, "127.0.0.1/32"]
    return out


def smtp_source_command(
    port: int, *, sessions: int, count: int, size: int, relayed: bool = True
) -> list[str]:
    """Postfix's ``smtp-source``: ``count`` messages of ``size`` octets over ``sessions``
    sessions kept open (``-d``), each waiting for every reply; with ``relayed``, from
    :data:`SENDER` to :data:`RELAYED` (else smtp-source's own envelope)."""
    envelope = ["-f", SENDER, "-t", RELAYED] if relayed else []
    return [
        pf.which("smtp-source") or "smtp-source",
        "-4",
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(count),
        "-l",
        str(size),
        "-M",
        "client.test",
        *envelope,
        f"127.0.0.1:{port}",
    ]


def smtp_source(port: int, *, sessions: int, count: int, size: int) -> subprocess.Popen[bytes]:
    """:func:`smtp_source_command` started, relaying, its output kept for errors only."""
    return subprocess.Popen(
        smtp_source_command(port, sessions=sessions, count=count, size=size),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class SpoolmailSide:
    """``spoolmail run`` over a fresh MailRoot per run, in its own CPU group."""

    name = "spoolmail"

    def __init__(self, base: Path, sink: pf.SmtpSink, cpu: pf.CpuGroup, extra: list[str]) -> None:
        self.base = base
        self.sink = sink
        self.cpu = cpu
        self.extra = extra
        self.root = base / "MailRoot"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = base / "spoolmail.log"
        self.runs = 0

    def fresh(self) -> Path:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        self.runs += 1
        (self.root / "Pickup").mkdir(parents=True)
        return self.root

    def command(self, *more: str) -> list[str]:
        return [
            *SPOOLMAIL,
            "--root",
            str(self.root),
            "run",
            "--fqdn",
            "spoolmail-bench.test",
            "--local-domain",
            LOCAL_DOMAIN,
            "--smart-host",
            f"[127.0.0.1]:{self.sink.port}",
            *self.extra,
            *more,
        ]

    def start(self, *more: str, wait_ready: bool = False) -> None:
        """The daemon, started; with ``wait_ready``: returns once it says it is serving."""
        log = self.log.open("ab")
        ready = threading.Event()
        self.process = subprocess.Popen(
            self.cpu.wrap(self.command(*more)), stdout=subprocess.PIPE, stderr=log
        )
        log.close()
        if self.cpu.kind == "proc":
            self.cpu.root_pid = self.process.pid
        threading.Thread(target=self._drain_stdout, args=(self.process, ready), daemon=True).start()
        if wait_ready:
            deadline = time.monotonic() + 60
            while not ready.is_set():
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("spoolmail run did not start" + self.log_tail())
                ready.wait(0.05)

    @staticmethod
    def _drain_stdout(process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if b"serving" in line:
                ready.set()

    def alive(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            return f"spoolmail run ended (exit {self.process.returncode})" + self.log_tail()
        return None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.cpu.kill()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n  spoolmail log (last lines):\n    " + "\n    ".join(text) if text else ""

    def leftovers(self) -> str | None:
        """What is still in Pickup, the Queue or BadMail (the service stopped), or None."""
        from spoolmail import Spool  # noqa: PLC0415

        with Spool(str(self.root)) as spool:
            pickup = len(spool.pickup())
            queued = sum(1 for _ in spool.queued())
            badmail = sum(1 for _ in spool.badmail())
        if pickup or queued or badmail:
            return f"spoolmail left {pickup} in Pickup, {queued} in the Queue, {badmail} in BadMail"
        return None

    def deferred(self) -> tuple[int, int]:
        """(messages in the Queue, of which deferred: not due now; those not tried because their
        host just failed count too, as Postfix's "delivery temporarily suspended")."""
        from spoolmail import Spool  # noqa: PLC0415

        now = datetime.now(UTC)
        with Spool(str(self.root)) as spool:
            items = [item.envelope for item in spool.queued()]
        return len(items), sum(1 for e in items if e.next_attempt > now)

    def run_command(self, command: list[str], *, what: str) -> None:
        done = subprocess.run(self.cpu.wrap(command), capture_output=True, check=False)
        if done.returncode != 0:
            raise SystemExit(
                f"{what} failed (exit {done.returncode}): {done.stderr.decode(errors='replace')}"
            )


# -- one measured run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.sink = pf.SmtpSink(pf.free_port())
        self.postfix_cpu = pf.CpuGroup(f"spoolmail-bench-postfix-{os.getpid()}")
        self.spoolmail_cpu = pf.CpuGroup(f"spoolmail-bench-spoolmail-{os.getpid()}")
        self.postfix = pf.PostfixInstance(
            base / "postfix",
            sink_port=self.sink.port,
            smtpd_port=pf.free_port(),
            cpu=self.postfix_cpu,
        )
        self.spoolmail = SpoolmailSide(
            base / "spoolmail", self.sink, self.spoolmail_cpu, args.spoolmail_arg
        )
        self.spoolmail_port = pf.free_port()
        self.machine_at_start: list[int] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def setup(self) -> None:
        (self.base / "spoolmail").mkdir(parents=True)
        self.postfix.setup()
        self.sink.start()

    def close(self) -> None:
        for step in (self.spoolmail.stop, self.postfix.destroy, self.sink.stop):
            with contextlib.suppress(Exception, SystemExit):
                step()
        for group in (self.postfix_cpu, self.spoolmail_cpu):
            with contextlib.suppress(Exception):
                group.remove()

    # -- helpers -----------------------------------------------------------------------------------

    def start_clock(self) -> float:
        """A run's clock starts: the machine's CPU times noted with it (for :meth:`finish`)."""
        self.machine_at_start = machine_times()
        return time.monotonic()

    def finish(  # noqa: PLR0917
        self,
        side: str,
        count: int,
        target: int,
        started: float,
        cpu: pf.CpuGroup,
        cpu_before: float,
        alive: Callable[[], str | None],
    ) -> dict[str, Any]:
        """Wait for the sink to count ``target``; the run's figures."""
        ended = self.sink.wait_for(
            target, stall=self.args.stall, timeout=self.args.timeout, alive=alive
        )
        cpu_used = cpu.cpu() - cpu_before
        machine = machine_shares(self.machine_at_start, machine_times())
        seconds = ended - started
        first = self.sink.reached(target - count + 1) or ended
        return {
            "side": side,
            "messages": count,
            "seconds": seconds,
            "first_seconds": first - started,
            "rate": count / seconds,
            "cpu": cpu_used,
            "cpu_ms_per_message": 1000 * cpu_used / count,
            "cpu_share": cpu_used / seconds,
            **machine,
        }

    def settle_sink(self, target: int) -> None:
        """A message counted twice shows once the last one arrived: look again shortly after."""
        time.sleep(0.3)
        if self.sink.count != target:
            raise SystemExit(
                f"broken run: the sink counted {self.sink.count - target:+d} messages more "
                "than were sent (a message delivered twice)"
            )

    def postfix_empty(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            counts = self.postfix.queue_counts()
            if not any(counts.values()):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"broken run: Postfix's queue is not empty: {counts}")
            time.sleep(0.05)

    # -- paths -------------------------------------------------------------------------------------

    def postfix_waiting(self, count: int, size: int) -> dict[str, Any]:
        """drain / big: into maildrop while stopped, then ``postfix start``."""
        self.postfix.stop()
        self.postfix.sendmail(messages(count, size))
        os.sync()  # as spoolmail's side (below): both sides' waiting mail on disk before the clock
        target = self.sink.count + count
        before = self.postfix_cpu.cpu() if self.postfix_cpu.path else 0.0
        started = self.start_clock()
        self.postfix.start()
        run = self.finish(
            "postfix", count, target, started, self.postfix_cpu, before, self.postfix.alive
        )
        self.postfix_empty()
        self.settle_sink(target)
        self.postfix.stop()
        return run

    def spoolmail_waiting(self, count: int, size: int) -> dict[str, Any]:
        """drain / big: Pickup files written, then ``spoolmail run``."""
        root = self.spoolmail.fresh()
        write_pickup(root / "Pickup", count, size)
        # Postfix's postdrop fsyncs each maildrop file as it writes it (mail_stream_finish_file),
        # before Postfix's clock starts. Pickup files written and not synced would be written
        # back inside spoolmail's run instead, by its first group commit's syncfs, which waits
        # for every dirty file on the filesystem (the 1 MiB path's 200 MiB: 0.1 s). So the
        # waiting mail is on disk on both sides before the clock starts.
        os.sync()
        target = self.sink.count + count
        before = self.spoolmail_cpu.cpu() if self.spoolmail_cpu.path else 0.0
        started = self.start_clock()
        self.spoolmail.start()
        run = self.finish(
            "spoolmail", count, target, started, self.spoolmail_cpu, before, self.spoolmail.alive
        )
        self.settle_sink(target)
        self.spoolmail.stop()
        self._check_spoolmail()
        return run

    def _check_spoolmail(self) -> None:
        left = self.spoolmail.leftovers()
        if left:
            raise SystemExit(f"broken run: {left}" + self.spoolmail.log_tail())

    def postfix_flush(self, count: int, size: int) -> dict[str, Any]:
        self.sink.stop()
        if not self.postfix.running():
            self.postfix.start()
        self.postfix.sendmail(messages(count, size))
        deadline = time.monotonic() + self.args.timeout
        while True:
            counts = self.postfix.queue_counts()
            waiting = counts["maildrop"] + counts["incoming"] + counts["active"]
            if counts["deferred"] == count and waiting == 0:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"Postfix did not defer the messages: {counts}")
            time.sleep(0.1)
        self.sink.start()
        target = self.sink.count + count
        before = self.postfix_cpu.cpu()
        started = self.start_clock()
        self.postfix.flush()
        command = time.monotonic() - started
        run = self.finish(
            "postfix", count, target, started, self.postfix_cpu, before, self.postfix.alive
        )
        run["command_seconds"] = command
        self.postfix_empty()
        self.settle_sink(target)
        self.postfix.stop()
        return run

    def spoolmail_flush(self, count: int, size: int) -> dict[str, Any]:
        self.sink.stop()
        root = self.spoolmail.fresh()
        write_pickup(root / "Pickup", count, size)
        for _ in range(20):
            self.spoolmail.run_command(
                self.spoolmail.command("--once"), what="spoolmail run --once (sink down)"
            )
            queued, deferred = self.spoolmail.deferred()
            if queued == deferred == count:
                break
        else:
            raise SystemExit(f"spoolmail did not defer the messages: {deferred} of {count}")
        floor_root = self.base / "floor"
        if self.args.floor:
            shutil.rmtree(floor_root, ignore_errors=True)
            shutil.copytree(root, floor_root)
            # On disk as spoolmail's files are: a file never written back has no blocks yet
            # (ext4's delayed allocation), and deleting it costs far less.
            os.sync()
        self.spoolmail.start(wait_ready=True)
        self.sink.start()
        flush = flush_command(root)  # its --help is asked before the clock starts
        target = self.sink.count + count
        before = self.spoolmail_cpu.cpu()
        started = self.start_clock()
        self.spoolmail.run_command(flush, what="spoolmail queue flush")
        command = time.monotonic() - started
        run = self.finish(
            "spoolmail", count, target, started, self.spoolmail_cpu, before, self.spoolmail.alive
        )
        run["command_seconds"] = command
        self.settle_sink(target)
        self.spoolmail.stop()
        self._check_spoolmail()
        if self.args.floor:
            run["floor"] = self.floor_flush(floor_root, count)
        return run

    def floor_flush(self, root: Path, count: int) -> dict[str, Any]:
        """``bench/floor_flush.py`` on ``root`` (a copy of the Queue spoolmail just flushed),
        into the same sink: its rate, and its CPU, that of the processes reaped meanwhile (the
        floor and its workers), so that it is counted with or without cgroups."""
        target = self.sink.count + count
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        done = subprocess.run(
            [*PYTHON, str(FLOOR), str(root), f"127.0.0.1:{self.sink.port}"],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"floor_flush.py failed: {done.stderr.decode(errors='replace')}")
        ended = self.sink.wait_for(
            target, stall=self.args.stall, timeout=self.args.timeout, alive=lambda: None
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        self.settle_sink(target)
        shutil.rmtree(root, ignore_errors=True)
        return {
            "side": "floor",
            "messages": count,
            "seconds": ended - started,
            "rate": count / (ended - started),
            "cpu": cpu,
            "cpu_ms_per_message": 1000 * cpu / count,
        }

    def smtp_source(self, port: int, count: int) -> subprocess.Popen[bytes]:
        return smtp_source(port, sessions=self.args.smtp_clients, count=count, size=self.args.size)

    def _source_done(self, source: subprocess.Popen[bytes]) -> Callable[[], str | None]:
        def check() -> str | None:
            code = source.poll()
            if code not in (None, 0):
                err = source.stderr.read().decode(errors="replace") if source.stderr else ""
                return f"smtp-source failed (exit {code}): {err.strip()}"
            return None

        return check

    def postfix_smtp(self, count: int, _size: int) -> dict[str, Any]:
        if not self.postfix.running():
            self.postfix.start()
        pf.wait_for_port(self.postfix.smtpd_port, what="Postfix smtpd")
        target = self.sink.count + count
        before = self.postfix_cpu.cpu()
        started = self.start_clock()
        source = self.smtp_source(self.postfix.smtpd_port, count)
        source_ok = self._source_done(source)

        def alive() -> str | None:
            return source_ok() or self.postfix.alive()

        try:
            run = self.finish("postfix", count, target, started, self.postfix_cpu, before, alive)
        finally:
            source.wait()
        self.postfix_empty()
        self.settle_sink(target)
        self.postfix.stop()
        return run

    def spoolmail_smtp(self, count: int, _size: int) -> dict[str, Any]:
        listen = listen_arguments(self.spoolmail_port, self.args.listen_arg)
        assert listen is not None
        self.spoolmail.fresh()
        self.spoolmail.start(*listen, wait_ready=True)
        pf.wait_for_port(self.spoolmail_port, what="spoolmail's listener")
        target = self.sink.count + count
        before = self.spoolmail_cpu.cpu()
        started = self.start_clock()
        source = self.smtp_source(self.spoolmail_port, count)
        source_ok = self._source_done(source)

        def alive() -> str | None:
            return source_ok() or self.spoolmail.alive()

        try:
            run = self.finish(
                "spoolmail", count, target, started, self.spoolmail_cpu, before, alive
            )
        finally:
            source.wait()
        self.settle_sink(target)
        self.spoolmail.stop()
        self._check_spoolmail()
        return run


# -- ceilings --------------------------------------------------------------------------------------


def sink_ceiling(sink: pf.SmtpSink, count: int, size: int, sessions: int) -> float:
    """msg/s of ``smtp-source`` (``sessions`` with connection reuse) straight into the sink."""
    target = sink.count + count
    started = time.monotonic()
    done = subprocess.run(
        smtp_source_command(sink.port, sessions=sessions, count=count, size=size, relayed=False),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"smtp-source failed: {done.stderr.decode(errors='replace')}")
    ended = sink.wait_for(target, stall=30, timeout=300)
    return count / (ended - started)


def fsync_creates(directory: Path, writers: int, seconds: float, size: int = 2048) -> float:
    """Files created, written (``size`` octets), fsync'd and closed per second, all writers."""
    payload = os.urandom(size)
    stop = time.monotonic() + seconds
    counts = [0] * writers

    def write(index: int) -> None:
        folder = directory / f"w{index}"
        folder.mkdir()
        n = 0
        while time.monotonic() < stop:
            fd = os.open(folder / f"{n}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            n += 1
        counts[index] = n

    started = time.monotonic()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


# -- reporting -------------------------------------------------------------------------------------


def header_lines(where: Path, cpu_kind: str, python: dict[str, str]) -> list[str]:
    from bench_queue import cpus, filesystem_type  # noqa: PLC0415

    import spoolmail  # noqa: PLC0415

    version = subprocess.run(
        [pf.which("postconf") or "postconf", "-dh", "mail_version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = os.getloadavg()
    return [
        f"spoolmail {spoolmail.__version__} against Postfix {version}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"  {platform.machine()}, CPUs: {cpus()}, load average {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f} before measuring",
        f"  spoolmail on Python {python['build']}",
        f"    {python['python']}: {python['how']}",
        f"  MailRoot and Postfix queue in {where}: {filesystem_type(where)}; CPU accounting: "
        f"{cpu_kind}",
    ]


def describe(path: str, args: argparse.Namespace) -> str:
    return {
        "drain": f"{args.messages:,} x {args.size:,} B waiting (Pickup / maildrop), drained",
        "flush": f"{args.flush_messages:,} x {args.size:,} B deferred, flushed",
        "big": f"{args.big_messages:,} x {args.big_size:,} B waiting, drained",
        "smtp": f"{args.smtp_messages:,} x {args.size:,} B over SMTP from "
        f"{args.smtp_clients} clients, relayed",
    }[path]


def pair_line(
    path: str, label: str, postfix: dict[str, Any], spool: dict[str, Any], ratio: float
) -> str:
    return (
        f"{path:<6}{label:>7}{postfix['rate']:>9,.0f}{spool['rate']:>9,.0f}{ratio:>7.2f}"
        f"{postfix['cpu_ms_per_message']:>9.2f}{spool['cpu_ms_per_message']:>9.2f}"
        f"{postfix['cpu_share']:>9.0%}{spool['cpu_share']:>9.0%}"
        f"{postfix['first_seconds']:>9.2f}{spool['first_seconds']:>9.2f}"
        f"{_share(postfix.get('steal_share')):>9}{_share(spool.get('steal_share')):>9}"
    )


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


TABLE_HEAD = (
    f"{'':<13}{'msg/s':>18}{'ratio':>7}{'CPU ms/msg':>18}{'CPU use':>18}{'1st msg, s':>18}"
    f"{'steal':>18}\n"
    f"{'path':<6}{'pair':>7}{'Postfix':>9}{'spoolm.':>9}{'s/P':>7}"
    + f"{'Postfix':>9}{'spoolm.':>9}"
    * 4
)


def summary(path: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    keys = ("rate", "seconds", "cpu_ms_per_message", "cpu_share", "first_seconds")

    def medians(side: int) -> dict[str, float]:
        out = {key: statistics.median(pair[side][key] for pair in pairs) for key in keys}
        for key in ("command_seconds", "steal_share", "idle_share"):
            if all(key in pair[side] for pair in pairs):
                out[key] = statistics.median(pair[side][key] for pair in pairs)
        return out

    total = {
        "ratio": statistics.median(s["rate"] / p["rate"] for p, s in pairs),
        "postfix": medians(0),
        "spoolmail": medians(1),
    }
    floors = [s["floor"] for _, s in pairs if "floor" in s]
    if floors:
        total["floor"] = {
            key: statistics.median(f[key] for f in floors) for key in ("rate", "cpu_ms_per_message")
        }
        total["floor"]["spoolmail_ratio"] = statistics.median(
            s["rate"] / s["floor"]["rate"] for _, s in pairs if "floor" in s
        )
    return total


def floor_line(label: str, spool: dict[str, Any], floor: dict[str, Any], ratio: float) -> str:
    return (
        f"{'':<6}{label:>7}  the floor (bench/floor_flush.py): {floor['rate']:,.0f} msg/s, "
        f"{floor['cpu_ms_per_message']:.2f} ms of CPU a message; spoolmail / floor {ratio:.2f} "
        f"(rate), {spool['cpu_ms_per_message'] / floor['cpu_ms_per_message']:.2f} (CPU)"
    )


def ceiling_lines(
    paths: dict[str, Any], cores: int, disk: dict[str, float], sink: dict[str, float]
) -> Iterator[str]:
    """How close each path runs to its ceilings (DESIGN section 10): the CPU ceiling is the
    rate at which ``cores`` busy cores would go at that side's CPU per message; the disk's is
    the fsync'd-create rate (four writers) of files of that path's size (``disk``), the sink's
    ``smtp-source`` straight into it with messages of that size (``sink``)."""
    yield (
        f"\nhow close to the ceilings (medians): CPU ceiling = {cores} cores / CPU per "
        "message; disk: fsync'd creates of the path's size, four writers; sink: smtp-source "
        "straight into it"
    )
    yield (
        f"{'path':<6}{'side':>11}{'msg/s':>9}{'CPU ceiling':>13}{'of it':>7}{'of disk':>9}"
        f"{'of sink':>9}"
    )
    for path, figures in paths.items():
        if "median" not in figures:
            continue
        for side in ("postfix", "spoolmail"):
            median = figures["median"][side]
            ceiling = cores * 1000 / median["cpu_ms_per_message"]
            median["cpu_ceiling_msg_s"] = ceiling
            rate = median["rate"]
            yield (
                f"{path:<6}{side:>11}{rate:>9,.0f}{ceiling:>13,.0f}"
                f"{rate / ceiling:>7.0%}{rate / disk[path]:>9.0%}{rate / sink[path]:>9.0%}"
            )


def report_ceilings(
    bench: Bench, base: Path, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    """Measure and print the ceilings, and each path's distance to them (into ``results``)."""
    direct = sink_ceiling(bench.sink, 20000, args.size, args.smtp_clients)
    creates: dict[int, list[float]] = {1: [], 4: []}
    for turn in range(2):  # interleaved: one, four, one, four
        for writers, rates in creates.items():
            where = base / "fsync" / f"{writers}-{turn}"
            where.mkdir(parents=True)
            rates.append(fsync_creates(where, writers, 2.0))
            shutil.rmtree(where, ignore_errors=True)
    results["ceilings"] = {
        "sink_direct_msg_s": direct,
        "fsync_creates_1_writer": creates[1],
        "fsync_creates_4_writers": creates[4],
    }
    print(
        f"\nceilings: smtp-source -s {args.smtp_clients} -d straight into smtp-sink: "
        f"{direct:,.0f} msg/s\n"
        f"  fsync'd 2 KB file creates on the temp dir's disk (2 s each, twice): "
        f"{' and '.join(f'{n:,.0f}' for n in creates[1])}/s with one writer, "
        f"{' and '.join(f'{n:,.0f}' for n in creates[4])}/s with four"
    )
    disk = dict.fromkeys(args.paths, statistics.median(creates[4]))
    sink = dict.fromkeys(args.paths, direct)
    if "big" in args.paths:
        # The big path's own: messages and files of its size, not 2 KB ones.
        sink["big"] = sink_ceiling(
            bench.sink, 2 * args.big_messages, args.big_size, args.smtp_clients
        )
        where = base / "fsync" / "big"
        where.mkdir(parents=True)
        # Half a second: at some 700 a second, a few hundred MiB written and removed.
        disk["big"] = fsync_creates(where, 4, 0.5, size=args.big_size)
        shutil.rmtree(where, ignore_errors=True)
        results["ceilings"]["big_sink_direct_msg_s"] = sink["big"]
        results["ceilings"]["big_fsync_creates_4_writers"] = disk["big"]
        print(
            f"  big ({args.big_size:,} B): smtp-source straight into smtp-sink "
            f"{sink['big']:,.0f} msg/s; fsync'd creates, four writers, "
            f"{disk['big']:,.0f}/s"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    for line in ceiling_lines(results["paths"], cores, disk, sink):
        print(line)


# -- main ------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)} (all)"
    )
    parser.add_argument("--pairs", type=int, default=3, help="Postfix/spoolmail pairs a path (3)")
    parser.add_argument("--messages", type=int, default=2000, help="drain: messages (2,000)")
    parser.add_argument("--flush-messages", type=int, default=5000, help="flush (5,000)")
    parser.add_argument("--big-messages", type=int, default=200, help="big (200)")
    parser.add_argument("--big-size", type=int, default=1024 * 1024, help="big: octets (1 MiB)")
    parser.add_argument("--smtp-messages", type=int, help="smtp (same as --messages)")
    parser.add_argument("--smtp-clients", type=int, default=5, help="smtp: sessions (5)")
    parser.add_argument("--size", type=int, default=2048, help="small message octets (2,048)")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--tmp", default=None, help="where the MailRoot and queue go (temp)")
    parser.add_argument("--no-ceilings", action="store_true", help="skip the two ceilings")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install")
    parser.add_argument(
        "--python",
        default="system",
        metavar="WHICH",
        help="what runs spoolmail and the floor: `system` (Debian's /usr/bin/python3, in a venv "
        "made for the run: the default), `current` (this interpreter), or an interpreter's path",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="flush: also relay a copy of the same deferred Queue with bench/floor_flush.py "
        "(the least a plain-Python relay does a message)",
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=60,
        help="a run is broken after this long without a message at the sink (60 s)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="per run (1,800 s)")
    parser.add_argument(
        "--spoolmail-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for every `spoolmail run` (repeat)",
    )
    parser.add_argument(
        "--listen-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="smtp: arguments after --listen instead of the guessed relay permission (repeat)",
    )
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    if args.smtp_messages is None:
        args.smtp_messages = args.messages
    if min(args.pairs, args.messages, args.flush_messages, args.big_messages) < 1:
        parser.error("--pairs and the message counts must be positive")
    if args.size < 600:
        parser.error("--size must be at least 600")
    return args


def compile_bytecode() -> None:
    """Compile spoolmail's modules before any clock runs, as an installed package has them.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this machine's shells), a checkout's changed
    modules were otherwise compiled again at every start: 20-40 ms of each run's start-up.
    """
    import compileall  # noqa: PLC0415

    import spoolmail  # noqa: PLC0415

    compileall.compile_dir(str(Path(spoolmail.__file__).parent), quiet=1)


def measure(
    path: str, runner: tuple[Any, Any, int, int], count_of_pairs: int
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], dict[str, Any], str]:
    """``count_of_pairs`` Postfix / spoolmail pairs of one path, each printed as it ends; the
    pairs, their summary and the median's line."""
    postfix_run, spoolmail_run, count, size = runner
    pairs = []
    for number in range(1, count_of_pairs + 1):
        postfix = postfix_run(count, size)
        spool = spoolmail_run(count, size)
        pairs.append((postfix, spool))
        ratio = spool["rate"] / postfix["rate"]
        print(pair_line(path, str(number), postfix, spool, ratio), flush=True)
        if "floor" in spool:
            floor = spool["floor"]
            print(floor_line(str(number), spool, floor, spool["rate"] / floor["rate"]))
    total = summary(path, pairs)
    # The median ratio is that of the pairs, not the ratio of the median rates.
    median_line = pair_line(path, "median", total["postfix"], total["spoolmail"], total["ratio"])
    print(median_line, flush=True)
    if "floor" in total:
        floor = total["floor"]
        print(floor_line("median", total["spoolmail"], floor, floor["spoolmail_ratio"]))
    if "command_seconds" in total["postfix"]:
        took = (total[side]["command_seconds"] for side in ("postfix", "spoolmail"))
        print(
            "{:<13}the flush command itself took {:.2f} s (postqueue -f) and {:.2f} s "
            "(spoolmail queue flush), medians".format("", *took),
            flush=True,
        )
    return pairs, total, median_line


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    pf.ensure_postfix(install=not args.no_install)
    compile_bytecode()
    base = Path(tempfile.mkdtemp(prefix="spoolmail-bench-postfix-", dir=args.tmp))
    base.chmod(0o755)  # Postfix's daemons (user postfix) reach their queue through it
    bench = Bench(args, base)
    results: dict[str, Any] = {"paths": {}, "ceilings": {}}
    try:
        results["python"] = choose_python(args.python, base, install=not args.no_install)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.setup()
        for line in header_lines(base, bench.postfix_cpu.kind, results["python"]):
            print(line)
        print(
            f"  the sink: smtp-sink -c on 127.0.0.1:{bench.sink.port}; Postfix smtpd on "
            f"127.0.0.1:{bench.postfix.smtpd_port}\n",
            flush=True,
        )
        runners: dict[str, tuple[Any, Any, int, int]] = {
            "drain": (bench.postfix_waiting, bench.spoolmail_waiting, args.messages, args.size),
            "flush": (bench.postfix_flush, bench.spoolmail_flush, args.flush_messages, args.size),
            "big": (
                bench.postfix_waiting,
                bench.spoolmail_waiting,
                args.big_messages,
                args.big_size,
            ),
            "smtp": (bench.postfix_smtp, bench.spoolmail_smtp, args.smtp_messages, args.size),
        }
        print(TABLE_HEAD, flush=True)
        lines: list[str] = []
        for path in args.paths:
            if path == "smtp" and listen_arguments(0, []) is None:
                line = f"{'smtp':<6}  not available yet: `spoolmail run` has no --listen"
                print(line, flush=True)
                lines.append(line)
                results["paths"]["smtp"] = {"available": False}
                continue
            pairs, total, median_line = measure(path, runners[path], args.pairs)
            lines.append(median_line)
            results["paths"][path] = {
                "what": describe(path, args),
                "pairs": [{"postfix": p, "spoolmail": s} for p, s in pairs],
                "median": total,
            }
        print(
            "\n  rate: messages / wall time from the start (or flush, or first SMTP connection) "
            "to the last message at the sink\n"
            "  ratio: spoolmail / Postfix, pair by pair (median: of the pairs' ratios)\n"
            "  CPU ms/msg: all of that side's processes; CPU use: their CPU time / wall time "
            "(200% = both cores)\n"
            "  1st msg: from the start to the first message at the sink (start-up, intake)\n"
            "  steal: of the machine's CPU time during the run, the share its hypervisor gave to "
            "other guests (/proc/stat):\n"
            "    a run with more of it was slowed by the machine, whichever side it measured"
        )
        for path in args.paths:
            print(f"  {path}: {describe(path, args)}")
        if not args.no_ceilings:
            report_ceilings(bench, base, args, results)
        results["load_after"] = os.getloadavg()
    finally:
        bench.close()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"  raw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
