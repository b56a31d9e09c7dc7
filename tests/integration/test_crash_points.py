"""Crash points: kill ``spoolmail run --once`` at every file-changing system call, restart it.

docs/design.md#crash-safety ("The house") asks for this guard before the store is rebuilt
(docs/design.md, "Crash safety"). For each file-changing call -- ``rename``, ``unlink``,
``fsync``, ``write``, and ``ftruncate`` (a clean run makes none: a recycled temporary file is
truncated only when it was longer than what is written over it, which the store's spares,
taken in order, avoid here; counted so that a run that truncates again is seen) -- and each N
up to the number a clean run makes, a real ``spoolmail run --once`` on a real MailRoot (OSFS,
fsync on) runs under ``strace -f -e
inject=CALL:signal=KILL:when=N``: strace sends SIGKILL on entry to the Nth call, which therefore
never happens. Then ``spoolmail run --once`` runs again without strace until nothing is left,
and the test checks that every message arrived exactly once and whole (the local ones in Drop,
the remote one at an aiosmtpd smart host on 127.0.0.1 in this process; by Message-ID and a hash
of the body), and that Pickup, SortTemp, BadMail and Queue are empty, as a clean run leaves them.

Delivery is at-least-once (docs/design.md#at-least-once): the smart host may see the remote
message twice
only when the kill fell after its ``250`` and before the envelope's commit. The test measures
that window (the message accepted while its ``Queue/ID.eml`` is still there once the process is
dead) and fails on any other duplicate, and on any loss. The windows and duplicates are printed
(``pytest -s``, or ``nox -s crashpoints``).

**What N means.** strace counts "per syscall and per tracee", that is per thread.
``--max-connections 1`` gives one delivery thread, but ``run --once`` still runs Pickup intake on
the main thread and deliveries on that pool thread, so at each N the process dies at whichever
thread reaches its own Nth call first; a delivery call whose index the main thread reaches
earlier is masked. Two scenarios reach both threads' calls:

- ``pickup``: the messages in Pickup; the whole tick (claims, intake commits, delivery, clean-up);
- ``queued``: the same messages already queued, as a kill at the delivery thread's creation
  (``clone3``) leaves them: there the main thread makes at most three calls of a kind before
  delivery starts (the ``tempfile`` probe, its owner record, the sweep of the dead owner's), so
  every kind of delivery call is reached for a later message.

Which thread each kill hit, and what stayed masked, is printed. The counts (:data:`COUNTS`) come
from a clean run of each scenario under ``strace -f``, counting only the spoolmail process's
threads (intake runs with ``--pickup-settle 0`` so that the lease probe does not matter). A
change to the store changes them: ``test_clean_runs_make_the_counted_calls`` then says what to
write into :data:`COUNTS`.

The whole sweep (about 110 kills) runs in CI in about a minute, several points at once.

Known failures would be marked ``xfail(strict=True)`` in :data:`KNOWN`; there are none. (A kill
while a process wrote its first owner record used to leave the record's temporary file for a
lease; the file is now named after its writer's host and pid, so the next sweep knows it is gone.)
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest

from tests.integration.commands import spoolmail_run
from tests.peers import require_program
from tests.smtpservers import SmtpServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="strace and SIGKILL injection: Linux"),
]

CALLS = ("rename", "unlink", "fsync", "write", "ftruncate")
SCENARIOS = ("pickup", "queued")
# File-changing calls the sweep does not inject into: a clean run must make none of them, or the
# sweep would miss the changes they make (glibc could start using renameat2 for rename, say).
UNSWEPT = (
    "renameat",
    "renameat2",
    "unlinkat",
    "rmdir",
    "fdatasync",
    "pwrite64",
    "writev",
    "pwritev",
    "link",
    "linkat",
    "truncate",
)
WORKERS = max(2, min(4, os.cpu_count() or 2))
RUN_TIMEOUT = 60.0
# Restarts after the kill: one should finish everything; a second is allowed for a message whose
# first attempt after recovery is due only at the next tick.
RESTARTS = 3


@attrs.frozen
class Message:
    name: str
    recipient: str
    message_id: str
    body: bytes

    @property
    def local(self) -> bool:
        return self.recipient.endswith("@example.com")

    def pickup_bytes(self) -> bytes:
        return (
            b"x-sender: app@example.com\r\nx-receiver: %s\r\n"
            b"From: app@example.com\r\nTo: %s\r\nMessage-ID: <%s>\r\nSubject: %s\r\n\r\n%s"
            % (
                self.recipient.encode(),
                self.recipient.encode(),
                self.message_id.encode(),
                self.name.encode(),
                self.body,
            )
        )


# Local messages (Drop) around one for the smart host, enough of them that delivery's calls of
# every kind go on past the few the main thread makes before delivery starts.
MESSAGES = (
    Message("m0.eml", "alice@example.com", "cp-0@crash.test", b"first\r\n" * 40),
    Message("m1.eml", "rob@remote.test", "cp-1@crash.test", b"second line\r\n" * 300),
    Message("m2.eml", "carol@example.com", "cp-2@crash.test", b"third.\r\n..dot\r\n" * 20),
    Message("m3.eml", "dave@example.com", "cp-3@crash.test", b"fourth\r\n" * 5000),
)


# -- running spoolmail --------------------------------------------------------------------------


def command(root: Path, port: int) -> list[str]:
    return spoolmail_run(
        root,
        "--smart-host",
        f"[127.0.0.1]:{port}",
        "--max-connections",
        "1",
        "--pickup-settle",
        "0",
        "--once",
    )


ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def strace(strace_path: str, trace: Path, *options: str) -> list[str]:
    return [strace_path, "-f", "-qq", "-o", str(trace), *options]


def settle(sink: SmtpServer) -> None:
    """Wait until every connection of the dead process is closed (no more mail can arrive)."""
    until = time.monotonic() + 10
    while any(p.transport is not None for p in list(sink._protocols)):
        if time.monotonic() > until:
            pytest.fail("the smart host's connections did not close after the kill")
        time.sleep(0.005)


_LINE = re.compile(r"^(\d+)\s+(?:(\w+)\(|<\.\.\. (\w+) resumed>)")


@attrs.frozen
class Trace:
    """One strace ``-f`` log, per thread of the spoolmail process (children left out)."""

    main: int
    threads: tuple[int, ...]
    calls: Mapping[int, tuple[tuple[str, str], ...]]
    """Per thread id: (call, line) in order, entries only."""

    @classmethod
    def read(cls, path: Path) -> Trace:
        calls: dict[int, list[tuple[str, str]]] = {}
        children: set[int] = set()
        main: int | None = None
        for line in path.read_text(errors="replace").splitlines():
            found = _LINE.match(line)
            if found is None:
                continue
            tid, name = int(found.group(1)), found.group(2)
            if main is None:
                main = tid
            if name is None:
                continue  # the end of an unfinished call: counted at its entry
            if name == "execve" and tid != main:
                children.add(tid)
            calls.setdefault(tid, []).append((name, line))
        assert main is not None, f"an empty trace: {path}"
        threads = tuple(tid for tid in calls if tid not in children)
        return cls(main, threads, {tid: tuple(calls[tid]) for tid in threads})

    def role(self, tid: int) -> str:
        return "main" if tid == self.main else "delivery"

    def count(self, call: str) -> dict[str, int]:
        """How many ``call`` each thread made, by role."""
        return {
            self.role(tid): sum(1 for name, _ in self.calls[tid] if name == call)
            for tid in self.threads
        }

    def killed_at(self, call: str, n: int) -> tuple[str, ...]:
        """The threads that were killed at their ``n``-th ``call`` (strace injects at exactly
        the Nth call; no thread of a killed process gets past it)."""
        return tuple(
            self.role(tid)
            for tid in self.threads
            if sum(1 for name, _ in self.calls[tid] if name == call) == n
        )


# -- the MailRoot -------------------------------------------------------------------------------


def folder(root: Path, name: str) -> list[str]:
    return sorted(os.listdir(root / name))


def init_root(root: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "spoolmail", "--root", str(root), "init"],
        check=True,
        capture_output=True,
        env=ENV,
    )
    for message in MESSAGES:
        (root / "Pickup" / message.name).write_bytes(message.pickup_bytes())


@attrs.frozen
class Templates:
    strace: str
    roots: Mapping[str, Path]
    counts: Mapping[str, Mapping[str, Mapping[str, int]]]
    """scenario → call → role → calls a clean run makes."""
    seconds: Mapping[str, float]


def make_queued(strace_path: str, pickup: Path, root: Path, work: Path) -> None:
    """The three messages queued, as a kill at the delivery thread's creation leaves them."""
    shutil.copytree(pickup, root)
    with SmtpServer() as sink:
        done = subprocess.run(
            [
                *strace(
                    strace_path, work / "queued.trace", "-e", "inject=clone3:signal=KILL:when=1"
                ),
                *command(root, sink.port),
            ],
            capture_output=True,
            timeout=RUN_TIMEOUT,
            env=ENV,
            check=False,
        )
        assert not sink.messages
    assert done.returncode in (-9, 137), done.stderr.decode()
    assert folder(root, "Pickup") == []
    queued = folder(root, "Queue")
    assert len([n for n in queued if n.endswith(".eml")]) == len(MESSAGES), queued
    assert len([n for n in queued if n.endswith(".env")]) == len(MESSAGES), queued


def clean_run(strace_path: str, template: Path, work: Path) -> tuple[Trace, float]:
    """A clean run of a copy of ``template`` under strace, checked; its trace and duration."""
    root = work / "root"
    shutil.copytree(template, root)
    calls = ",".join((*CALLS, *UNSWEPT, "execve"))
    with SmtpServer() as sink:
        started = time.monotonic()
        done = subprocess.run(
            [
                *strace(strace_path, work / "trace", "-e", f"trace={calls}"),
                *command(root, sink.port),
            ],
            capture_output=True,
            timeout=RUN_TIMEOUT,
            env=ENV,
            check=False,
        )
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr.decode()
        settle(sink)
        check_outcome(root, sink, allowed_duplicates=0)
    trace = Trace.read(work / "trace")
    made = {call: trace.count(call) for call in UNSWEPT}
    assert not any(any(c.values()) for c in made.values()), (
        f"a clean run makes file-changing calls the sweep does not inject into: {made}"
    )
    return trace, seconds


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    strace_path = require_program("strace", package="strace")
    work = tmp_path_factory.mktemp("crashpoints")
    roots = {"pickup": work / "pickup", "queued": work / "queued"}
    init_root(roots["pickup"])
    make_queued(strace_path, roots["pickup"], roots["queued"], work)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    seconds: dict[str, float] = {}
    for scenario, root in roots.items():
        (work / f"clean-{scenario}").mkdir()
        trace, seconds[scenario] = clean_run(strace_path, root, work / f"clean-{scenario}")
        counts[scenario] = {call: trace.count(call) for call in CALLS}
    print(f"\ncrash points: clean runs make {counts}, in {seconds}")  # noqa: T201 (the figures)
    return Templates(strace_path, roots, counts, seconds)


# -- the outcome --------------------------------------------------------------------------------


def split(data: bytes) -> tuple[bytes, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no header/body separator in {data[:200]!r}"
    return head, body


def message_id(head: bytes) -> str:
    found = re.search(rb"^Message-ID: <([^>]+)>\r?$", head, re.MULTILINE | re.IGNORECASE)
    assert found is not None, f"no Message-ID in {head!r}"
    return found.group(1).decode()


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_outcome(root: Path, sink: SmtpServer, *, allowed_duplicates: int) -> int:
    """Every message once and whole (duplicates at the smart host up to the window); the
    spool's working folders empty. Returns the duplicates seen."""
    arrived: Counter[str] = Counter()
    for name in folder(root, "Drop"):
        head, body = split((root / "Drop" / name).read_bytes())
        mid = message_id(head)
        arrived[mid] += 1
        expected = next(m for m in MESSAGES if m.message_id == mid)
        assert expected.local, f"{mid} is remote but was dropped"
        assert f"x-receiver: {expected.recipient}".encode() in head, head
        assert digest(body) == digest(expected.body), f"{mid}: the body in Drop is not whole"
    remote: Counter[str] = Counter()
    for received in list(sink.messages):
        head, body = split(received.data)
        mid = message_id(head)
        remote[mid] += 1
        expected = next(m for m in MESSAGES if m.message_id == mid)
        assert not expected.local, f"{mid} is local but was relayed"
        assert digest(body) == digest(expected.body), f"{mid}: the body relayed is not whole"
    for message in MESSAGES:
        seen = (arrived if message.local else remote)[message.message_id]
        assert seen >= 1, f"{message.message_id} ({message.recipient}) never arrived"
    assert all(n == 1 for n in arrived.values()), f"duplicates in Drop: {arrived}"
    duplicates = sum(n - 1 for n in remote.values())
    assert duplicates <= allowed_duplicates, (
        f"{duplicates} duplicates at the smart host, but only {allowed_duplicates} in the window"
    )
    leftover = {name: folder(root, name) for name in ("Pickup", "SortTemp", "BadMail", "Queue")}
    assert not any(leftover.values()), f"left behind: {leftover}"
    return duplicates


@attrs.frozen
class Point:
    scenario: str
    call: str
    n: int
    killed: tuple[str, ...]
    """The threads killed at their Nth call: ``('main',)`` or ``('delivery',)``."""
    window: int
    duplicates: int
    seconds: float


def still_queued(root: Path) -> set[str]:
    found = set()
    for path in (root / "Queue").glob("*.eml"):
        found.add(message_id(split(path.read_bytes())[0]))
    return found


def kill_at(templates: Templates, scenario: str, call: str, n: int, work: Path) -> Point:
    """One crash point: a fresh copy of the scenario's MailRoot, killed at the Nth ``call``,
    restarted until done, checked."""
    started = time.monotonic()
    root = work / "root"
    shutil.copytree(templates.roots[scenario], root)
    with SmtpServer() as sink:
        killed = subprocess.run(
            [
                *strace(
                    templates.strace,
                    work / "trace",
                    "-e",
                    f"trace={call},execve",
                    "-e",
                    f"inject={call}:signal=KILL:when={n}",
                ),
                *command(root, sink.port),
            ],
            capture_output=True,
            timeout=RUN_TIMEOUT,
            env=ENV,
            check=False,
        )
        point = Trace.read(work / "trace").killed_at(call, n)
        assert killed.returncode in (-9, 137), (
            f"{scenario}: no kill at {call} #{n} (exit {killed.returncode}); "
            f"has a clean run's count changed? {killed.stderr.decode()[-2000:]}"
        )
        settle(sink)
        accepted = {message_id(split(m.data)[0]) for m in list(sink.messages)}
        window = len(accepted & still_queued(root))
        for _ in range(RESTARTS):
            done = subprocess.run(
                command(root, sink.port),
                capture_output=True,
                timeout=RUN_TIMEOUT,
                env=ENV,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            if not folder(root, "Pickup") and not folder(root, "Queue"):
                break
        settle(sink)
        try:
            duplicates = check_outcome(root, sink, allowed_duplicates=window)
        except AssertionError as exc:
            raise AssertionError(
                f"{scenario}, kill at {call} #{n} (thread {point}): {exc}"
            ) from None
    return Point(scenario, call, n, point, window, duplicates, time.monotonic() - started)


# -- the sweep ----------------------------------------------------------------------------------

# The calls a clean run makes, per thread (``test_clean_runs_make_the_counted_calls`` measures
# them): N runs from 1 to the larger of the two.
COUNTS: Mapping[str, Mapping[str, Mapping[str, int]]] = {
    "pickup": {
        "rename": {"main": 13, "delivery": 15},
        # Delivery: a message finished untried has no transcript to delete (states.untried).
        "unlink": {"main": 13, "delivery": 0},
        # Main: Pickup and SortTemp for the claims, one syncfs (not counted: not swept; a kill
        # there is one at the rename after it) for the batch's files, then the Queue.
        "fsync": {"main": 3, "delivery": 6},
        # With the mail log: one write for an intake batch's lines (picked up, queued) in the
        # loop; the delivery thread writes an attempt's lines (delivered, removed) at once.
        # A file the store writes from chunks under 64 KiB in all is one write (a buffered
        # file wrote a chunk larger than its 8 KiB buffer apart): 29/8 before.
        "write": {"main": 27, "delivery": 7},
        # A spare is truncated only when longer than what goes into it (2 before, each spare
        # truncated to its new length): none is, here.
        "ftruncate": {"main": 0, "delivery": 0},
    },
    "queued": {
        "rename": {"main": 1, "delivery": 15},
        "unlink": {"main": 10, "delivery": 0},
        "fsync": {"main": 0, "delivery": 6},
        "write": {"main": 10, "delivery": 7},  # 8 before: one write a file, as above
        "ftruncate": {"main": 0, "delivery": 0},  # 2 before, as above
    },
}

KNOWN: Mapping[tuple[str, str, int], str] = {}


def all_points() -> list[tuple[str, str, int]]:
    return [
        (scenario, call, n)
        for scenario in SCENARIOS
        for call in CALLS
        for n in range(1, max(COUNTS[scenario][call].values(), default=0) + 1)
    ]


def point_param(point: tuple[str, str, int]) -> object:
    scenario, call, n = point
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN[point])] if point in KNOWN else []
    return pytest.param(scenario, call, n, id=f"{scenario}-{call}-{n}", marks=marks)


TEST_NAME = "test_kill_at_a_call_then_restart_delivers_each_message_once"


@pytest.fixture(scope="module")
def swept(
    request: pytest.FixtureRequest,
    templates: Templates,
    tmp_path_factory: pytest.TempPathFactory,
) -> Mapping[tuple[str, str, int], Point | BaseException]:
    """Every selected crash point, run several at a time (each is a few subprocesses)."""
    selected = [
        (item.callspec.params["scenario"], item.callspec.params["call"], item.callspec.params["n"])
        for item in request.session.items
        if getattr(item, "originalname", None) == TEST_NAME and hasattr(item, "callspec")
    ]
    work = tmp_path_factory.mktemp("points")

    def one(point: tuple[str, str, int]) -> Point | BaseException:
        scenario, call, n = point
        here = work / f"{scenario}-{call}-{n}"
        here.mkdir()
        try:
            result = kill_at(templates, scenario, call, n, here)
        except BaseException as exc:  # noqa: BLE001 (each point's test raises its own)
            return exc
        shutil.rmtree(here, ignore_errors=True)
        return result

    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = dict(zip(selected, pool.map(one, selected), strict=True))
    report(results, time.monotonic() - started)
    return results


def report(results: Mapping[tuple[str, str, int], Point | BaseException], seconds: float) -> None:
    """Print which thread each kill hit, what stayed masked, and the duplicates."""
    lines = [f"\ncrash points: {len(results)} kills in {seconds:.0f} s, {WORKERS} at a time"]
    for scenario in SCENARIOS:
        for call in CALLS:
            mine = {n: r for (s, c, n), r in results.items() if (s, c) == (scenario, call)}
            if not mine:
                continue
            hit = {(role, n) for n, r in mine.items() if isinstance(r, Point) for role in r.killed}
            masked = [
                (role, k)
                for role, count in COUNTS[scenario][call].items()
                for k in range(1, count + 1)
                if k in mine and (role, k) not in hit and not isinstance(mine[k], BaseException)
            ]
            failed = sorted(n for n, r in mine.items() if isinstance(r, BaseException))
            windows = [
                f"#{n}: window {r.window}, duplicates {r.duplicates}"
                for n, r in sorted(mine.items())
                if isinstance(r, Point) and (r.window or r.duplicates)
            ]
            lines.append(
                f"  {scenario} {call}: {dict(COUNTS[scenario][call])}; failed {failed}; "
                f"masked {masked}; {'; '.join(windows) or 'no duplicates'}"
            )
    print("\n".join(lines))  # noqa: T201 (the figures the issue asks for)


def test_clean_runs_make_the_counted_calls(templates: Templates) -> None:
    """:data:`COUNTS` is what a clean run makes: no point unswept, none beyond the run."""
    assert templates.counts == COUNTS, (
        f"a clean run now makes {templates.counts}; put that into COUNTS (and check KNOWN)"
    )


@pytest.mark.parametrize(("scenario", "call", "n"), [point_param(p) for p in all_points()])
def test_kill_at_a_call_then_restart_delivers_each_message_once(
    swept: Mapping[tuple[str, str, int], Point | BaseException], scenario: str, call: str, n: int
) -> None:
    result = swept[(scenario, call, n)]
    if isinstance(result, BaseException):
        raise result
    assert result.killed, f"{scenario}: the kill at {call} #{n} hit no thread of spoolmail"
