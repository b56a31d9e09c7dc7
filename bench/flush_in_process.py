"""One process flushing deferred mail to ``smtp-sink`` on 127.0.0.1, for several connection
limits: the rate and the CPU a message of each (docs/delivery.md's table; bench/README.md,
"Twelfth round").

For every round and every setting: a fresh MailRoot gets ``--messages`` 2 KB messages through
``Spool.submit``, one ``MailService`` defers them all against a port where nothing listens, and
a second one, with that setting's ``Limits``, flushes them (``Spool.flush_queue``) to the sink
with ``run_once`` until all are gone. Only the flush is timed: wall time and this process's CPU
(``getrusage``), with its context switches. The settings take turns within each round, so a
slow minute of a shared machine falls on all of them; the table gives each setting's range.

    python bench/flush_in_process.py                      # 3,000 messages, 3 rounds
    python bench/flush_in_process.py --limits 1/1 2/2 20/10 --rounds 5

A setting is ``MAX_CONNECTIONS/PER_HOST``. Needs Postfix's ``smtp-sink`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import postfix_instance as pf

from spoolmail import Limits, MailService, Router, Spool

BODY = (
    b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\n" + (b"x" * 60 + b"\r\n") * 30
)


def deferred_root(base: Path, count: int) -> Path:
    """A MailRoot whose Queue holds ``count`` messages deferred once (the host did not answer)."""
    root = Path(tempfile.mkdtemp(dir=base))
    with Spool(str(root)) as spool:
        for _ in range(count):
            spool.submit(BODY, sender="a@example.org", recipients=["b@example.net"])
        nobody = MailService(
            spool, router=Router(smart_host=f"[127.0.0.1]:{pf.free_port()}"), fqdn="bench.test"
        )
        deferred = 0
        while deferred < count:
            deferred += len(nobody.run_once().deferred)
        nobody.close()
    return root


def flush(root: Path, sink: int, count: int, limits: Limits) -> tuple[float, float, float]:
    """(seconds, CPU seconds, voluntary context switches) of flushing ``root`` to the sink."""
    with Spool(str(root)) as spool:
        spool.flush_queue()
        service = MailService(
            spool, router=Router(smart_host=f"[127.0.0.1]:{sink}"), fqdn="bench.test", limits=limits
        )
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        finished = 0
        while finished < count:
            report = service.run_once()
            if report.deferred or report.errors or report.badmail:
                raise SystemExit(f"the flush did not deliver everything: {report}")
            finished += len(report.finished)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        service.close()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return seconds, cpu, after.ru_nvcsw - before.ru_nvcsw


def flush_fresh(
    base: Path,
    sink: int,
    count: int,
    limits: Limits,
    *,
    around: contextlib.AbstractContextManager[object] | None = None,
) -> tuple[float, float, float]:
    """:func:`flush` of a fresh :func:`deferred_root` under ``base``, removed after; the flush
    alone (not the deferring) runs within ``around``."""
    root = deferred_root(base, count)
    try:
        with around or contextlib.nullcontext():
            return flush(root, sink, count, limits)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def sink_and_base(prefix: str, tmp: str | None) -> Iterator[tuple[pf.SmtpSink, Path]]:
    """Postfix's ``smtp-sink`` started on a free port of 127.0.0.1, and a folder for the
    MailRoots; both gone after."""
    if not pf.which("smtp-sink"):
        raise SystemExit("needs Postfix's smtp-sink (apt-get install postfix)")
    sink = pf.SmtpSink(pf.free_port())
    sink.start()
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    try:
        yield sink, base
    finally:
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def setting(text: str) -> Limits:
    connections, _, per_host = text.partition("/")
    return Limits(max_connections=int(connections), max_connections_per_host=int(per_host))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--limits", nargs="+", default=["1/1", "2/2", "4/4", "20/2", "20/10"], metavar="N/H"
    )
    parser.add_argument("--tmp", default=None, help="where the MailRoots go (system temp)")
    args = parser.parse_args(argv)
    figures: dict[str, list[tuple[float, float, float]]] = {text: [] for text in args.limits}
    with sink_and_base("spoolmail-flush-", args.tmp) as (sink, base):
        for number in range(1, args.rounds + 1):
            for text in args.limits:
                seconds, cpu, switches = flush_fresh(base, sink.port, args.messages, setting(text))
                figures[text].append((seconds, cpu, switches))
                print(
                    f"round {number} {text:>6}: {args.messages / seconds:7,.0f} msg/s, "
                    f"{cpu / args.messages * 1000:.3f} ms of CPU, "
                    f"{switches / args.messages:.1f} context switches a message",
                    flush=True,
                )
    print(f"\n{'limits N/H':>10}{'msg/s':>16}{'CPU ms a message':>20}")
    for text, runs in figures.items():
        rates = [args.messages / seconds for seconds, _, _ in runs]
        cpus = [cpu / args.messages * 1000 for _, cpu, _ in runs]
        print(
            f"{text:>10}{min(rates):>8,.0f}-{max(rates):<7,.0f}{min(cpus):>12.2f}-{max(cpus):<7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
