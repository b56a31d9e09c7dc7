"""Where a flushed message's CPU goes, stage by stage, measured in the flow (bench/README.md,
"Thirteenth round").

A profiler (cProfile) makes Python code four to six times dearer than it is, and a function
timed alone in a loop runs with warm caches, two to three times cheaper than it runs between
all the others. This measures the stages where they run: the flush of
``flush_in_process.py`` (one ``MailService``, one connection to ``smtp-sink``), with each
stage's function wrapped to add up the thread's CPU time it took (``time.thread_time``), less
the stages called within it. The command's own log handler is on (``spoolmail run`` writes a
line per recipient and one per message finished), unless ``--no-log``.

Each round flushes twice, with the wrappers and without, and prints the process's CPU a
message both ways: the difference is what the wrappers themselves cost (two clock reads and a
call each), spread over the stages they wrap.

    python bench/flush_stages.py                  # 3,000 messages, 3 rounds
    python bench/flush_stages.py --messages 5000 --rounds 5 --no-log

The stages are named by the functions they wrap: a refactoring that renames one stops this
with an ``AttributeError``, which is meant. Needs Postfix's ``smtp-sink``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import io
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from flush_in_process import flush_fresh, sink_and_base

from spoolmail import Limits
from spoolmail._cli.logs import Logs

# (module, owner inside it or "", function, the stage's name), outermost first: a stage's time
# excludes the stages it calls.
STAGES = (
    ("spoolmail._service.attempts", "Attempts", "attempt", "attempt: the rest"),
    ("spoolmail._store.transitions", "Transitions", "claim", "claim (rename)"),
    ("spoolmail._store.transitions", "Transitions", "claimed_envelope", "read the envelope"),
    ("spoolmail._service.attempts", "", "decode_envelope", "decode the envelope"),
    ("spoolmail._service.attempts", "", "flush", "flushed envelope (states.flush)"),
    ("spoolmail._service.delivery", "Deliverer", "attempt", "delivery: routing, slots, policy"),
    ("spoolmail._transport.smtp", "SmtpTransport", "send", "SMTP: pool, session choice"),
    ("spoolmail._transport.session", "Session", "deliver", "SMTP: the session's loop"),
    ("spoolmail._transport.protocol", "ClientProtocol", "next_event", "SMTP: the protocol"),
    ("spoolmail._transport.session", "Session", "_send", "SMTP: send the commands"),
    ("spoolmail._transport.session", "Session", "_receive", "SMTP: wait for and read replies"),
    ("spoolmail._transport.session", "Session", "_send_message", "SMTP: send the message"),
    ("spoolmail._service.attempts", "", "conclude_attempt", "decide the outcome"),
    ("spoolmail._service.attempts", "Attempts", "_commit", "commit: the rest"),
    ("spoolmail._store.transitions", "Transitions", "finish", "finish (deletes)"),
    ("spoolmail._store.spool", "Spool", "_emit_all", "events: the bus"),
    ("spoolmail._store.maillog", "MailLog", "append_all", "events: the mail log line"),
    ("spoolmail._service.observers", "", "log_event", "events: the log records"),
)


class Probes:
    """The wrappers: CPU time per stage (less nested stages), and how often each ran."""

    def __init__(self) -> None:
        self.cpu: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self._local = threading.local()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        local, cpu, calls, clock = self._local, self.cpu, self.calls, time.thread_time

        def probe(*args: Any, **kwargs: Any) -> Any:
            stack = local.__dict__.setdefault("stack", [])
            stack.append(0.0)
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                spent = clock() - started
                inner = stack.pop()
                cpu[label] += spent - inner
                calls[label] += 1
                if stack:
                    stack[-1] += spent

        setattr(owner, name, probe)
        self._undo.append(lambda: setattr(owner, name, original))

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        for module_name, owner_name, name, label in STAGES:
            module = importlib.import_module(module_name)
            self.wrap(getattr(module, owner_name) if owner_name else module, name, label)
        try:
            yield
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()


@contextlib.contextmanager
def command_log(enabled: bool) -> Iterator[None]:
    """The ``spoolmail`` command's own log handler (INFO, to a file as under a service
    manager), as ``spoolmail run`` sets it up."""
    if not enabled:
        yield
        return
    saved = sys.stderr
    with tempfile.TemporaryFile("w+") as file:
        sys.stderr = io.TextIOWrapper(file.buffer, line_buffering=True)  # type: ignore[attr-defined]
        logs = Logs(level=logging.INFO)
        try:
            yield
        finally:
            logs.close()
            sys.stderr.flush()
            sys.stderr = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-log", action="store_true", help="without the command's log")
    parser.add_argument("--tmp", default=None, help="where the MailRoots go (system temp)")
    args = parser.parse_args(argv)
    count, limits = args.messages, Limits(max_connections=1, max_connections_per_host=1)
    per_stage: dict[str, list[float]] = collections.defaultdict(list)
    calls: collections.Counter[str] = collections.Counter()
    plain, probed = [], []
    with sink_and_base("spoolmail-stages-", args.tmp) as (sink, base), command_log(not args.no_log):
        for number in range(1, args.rounds + 1):
            _, cpu, _ = flush_fresh(base, sink.port, count, limits)
            plain.append(cpu / count * 1e6)
            probes = Probes()
            _, cpu, _ = flush_fresh(base, sink.port, count, limits, around=probes.installed())
            probed.append(cpu / count * 1e6)
            for _, _, _, label in STAGES:
                per_stage[label].append(probes.cpu[label] / count * 1e6)
            calls += probes.calls
            print(
                f"round {number}: {plain[-1]:.0f} us of CPU a message, "
                f"{probed[-1]:.0f} with the probes",
                flush=True,
            )
    rounds = args.rounds
    print(f"\n{'stage (its own CPU, not its inner stages)':<44}{'us a message':>22}{'calls':>7}")
    for label, figures in sorted(per_stage.items(), key=lambda item: -sorted(item[1])[rounds // 2]):
        middle, spread = sorted(figures)[rounds // 2], f"({min(figures):.0f}-{max(figures):.0f})"
        print(f"{label:<44}{middle:>10.1f} {spread:<11}{calls[label] / count / rounds:>7.1f}")
    staged = sum(sorted(figures)[rounds // 2] for figures in per_stage.values())
    whole = sorted(probed)[rounds // 2]
    print(f"{'in the stages':<44}{staged:>10.1f}")
    print(f"{'elsewhere (the tick, the threads hand-over)':<44}{whole - staged:>10.1f}")
    print(
        f"the process, a message (medians): {sorted(plain)[rounds // 2]:.0f} us without the "
        f"probes, {whole:.0f} with them"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
