"""Instructions a message, counted: the in-process flush or drain under callgrind (bench/README.md,
"Fourteenth round").

Time on a shared machine moves by 5 to 15% between two runs of the same code, more than most
changes are worth. The instructions a process executes do not: valgrind's callgrind counts
them (``Ir``, user space only), and two runs of the same code agree within 0.3%. So this
measures a change by its instructions, before the timed pairs that say what they buy.

The flush is ``flush_in_process.py``'s: a MailRoot whose Queue holds ``--messages`` deferred
2 KB messages, then one ``MailService`` with one connection relays them to ``smtp-sink``.
The drain: as many Pickup files, taken in and relayed by one ``MailService``. Only that part
is counted (``callgrind_control -i on`` and ``off`` around it, from inside); the MailRoot is
made before. ``--log`` puts the command's own log handler on, as ``spoolmail run`` has it
(stderr, here a file): its mail lines are part of what a message costs there. The run is
about fifty times slower than without valgrind.

    python bench/instructions.py                        # flush, 300 messages, the log on
    python bench/instructions.py --path drain --no-log
    PYTHONPATH=/other/tree/src python bench/instructions.py     # another tree, to compare

Needs valgrind (``apt-get install valgrind``) and Postfix's ``smtp-sink``. Prints the
instructions a message of every thread of the process, and its CPU a message (slowed by
valgrind: for nothing but a sanity check).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import postfix_instance as pf
from flush_in_process import BODY, deferred_root

from spoolmail import Limits, MailService, Router, Spool

CHILD = "SPOOLMAIL_INSTRUCTIONS_CONTROL"  # set in the child: callgrind_control's path


def _count(on: bool) -> None:
    """Counting on or off in this process (it runs under callgrind)."""
    subprocess.run(
        [os.environ[CHILD], "-i", "on" if on else "off", str(os.getpid())],
        check=True,
        capture_output=True,
    )


def _drain_root(base: Path, count: int) -> Path:
    root = Path(tempfile.mkdtemp(dir=base))
    with Spool(str(root)):
        pass  # the folders
    head = b"x-sender: a@example.org\r\nx-receiver: b@example.net\r\n"
    for number in range(count):
        (root / "Pickup" / f"m{number}.eml").write_bytes(head + BODY)
    return root


def child(path: str, count: int, log: bool) -> None:
    """The measured part, under callgrind: the MailRoot made, then counted while relayed."""
    sink = pf.SmtpSink(pf.free_port())
    sink.start()
    base = Path(tempfile.mkdtemp(prefix="spoolmail-instructions-"))
    try:
        root = deferred_root(base, count) if path == "flush" else _drain_root(base, count)
        if log:
            from spoolmail._cli.logs import Logs  # noqa: PLC0415 (the command's handler)

            sys.stderr = (base / "log").open("a")
            Logs(level=logging.INFO)
        with Spool(str(root)) as spool:
            if path == "flush":
                spool.flush_queue()
            service = MailService(
                spool,
                router=Router(smart_host=f"[127.0.0.1]:{sink.port}"),
                fqdn="bench.test",
                limits=Limits(max_connections=1, max_connections_per_host=1),
            )
            _count(on=True)
            started = time.process_time()
            finished = 0
            while finished < count:
                report = service.run_once()
                if report.deferred or report.errors or report.badmail:
                    raise SystemExit(f"not everything was delivered: {report}")
                finished += len(report.finished)
            cpu = time.process_time() - started
            _count(on=False)
            service.close()
        print(f"cpu {cpu / count * 1000:.3f}", flush=True)
    finally:
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=["flush", "drain"], default="flush")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--no-log", dest="log", action="store_false")
    args = parser.parse_args(argv)
    if os.environ.get(CHILD):
        child(args.path, args.messages, args.log)
        return 0
    tools = {tool: pf.which(tool) for tool in ("valgrind", "callgrind_control", "smtp-sink")}
    for tool, found in tools.items():
        if not found:
            raise SystemExit(f"needs {tool} (apt-get install valgrind postfix)")
    out = Path(tempfile.mkdtemp(prefix="spoolmail-callgrind-"))
    try:
        done = subprocess.run(
            [
                str(tools["valgrind"]),
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}/callgrind.%p",
                sys.executable,
                __file__,
                *(argv if argv is not None else sys.argv[1:]),
            ],
            env={**os.environ, CHILD: str(tools["callgrind_control"])},
            capture_output=True,
            text=True,
            check=False,
        )
        cpu = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("cpu ")]
        if done.returncode or not cpu:
            raise SystemExit(f"the run under callgrind failed:\n{done.stdout}{done.stderr[-3000:]}")
        total = 0
        for name in glob.glob(f"{out}/callgrind.*"):
            # "totals:" ends the file; its "summary:" at the top counts nothing when counting
            # started off (--instr-atstart=no).
            counts = {
                key: int(value)
                for key, _, value in (
                    line.partition(": ")
                    for line in Path(name).read_text(errors="replace").splitlines()
                    if line.startswith(("summary: ", "totals: "))
                )
            }
            total += counts.get("totals", counts.get("summary", 0))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"{args.path}, {args.messages} messages, log {'on' if args.log else 'off'}: "
        f"{total / args.messages:,.0f} instructions a message "
        f"({cpu[0]} ms of CPU a message under valgrind)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
