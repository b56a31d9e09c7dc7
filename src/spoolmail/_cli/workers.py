"""``spoolmail run --workers N``: N worker processes on one MailRoot, and their supervisor.

One Python process keeps at most one core busy (the GIL), and less while its threads wait on
a sync or a socket: two workers per CPU by default, so that one waiting leaves its CPU to
another. Claims are renames, so several processes on one MailRoot already deliver each message
once; a :class:`~spoolmail.Share` each (``_core.shares``) lets them divide the work instead of
racing for it. The parent does what needs root or must happen once (the listener's sockets
bound, the settings and DKIM keys read, privileges dropped, the MailRoot opened and checked),
then forks the workers. Each opens its own Spool (its own owner and claims), builds its service
for its share and serves: Pickup, the Queue, and, one worker per CPU (the first ones), SMTP on
the sockets it inherited. The limits set for the whole service (connections, messages a
minute) are divided among the workers. Where none listens, each worker keeps to one CPU
(:func:`cpu_for`): a worker's threads hand its GIL to one another on that CPU instead of across
CPUs.

The parent only supervises. It passes SIGTERM, SIGINT and SIGHUP on to the workers; it starts a
worker again when one dies (at once if it had served a minute, else after a pause that doubles
up to a minute); and it stops the others and exits with the status of a worker that exited
with an error before it ever served (a setting that only a worker's service finds wrong fails
the same way in every worker; the daemon builds the rest before it forks; a worker killed by a
signal is started again).
With ``--metrics`` it serves the sum of the workers' :meth:`~spoolmail.MailService.stats`,
asked of each over a socket pair. Signal handlers only set flags; everything is done in the
loop, woken through ``signal.set_wakeup_fd``.

POSIX only (``fork``). Elsewhere, for ``--once``, and on a MailRoot other processes cannot see
(``mem://``: a MemoryFS lives in one process, DESIGN section 10), one process serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from types import FrameType
from typing import Any

import attrs

from spoolmail._core.shares import Share
from spoolmail._service.observers import Stats
from spoolmail._store.spool import Spool

__all__ = [
    "Supervisor",
    "combine_stats",
    "cpu_for",
    "listening",
    "requested",
    "stats_responder",
    "usable_cpus",
    "worker_count",
]

log = logging.getLogger("spoolmail")

# A worker that served this long before it died is started again at once.
_HEALTHY = 60.0
_MAX_PAUSE = 60.0
_READY = b"R"
_STATS_TIMEOUT = 5.0  # seconds a worker has to answer a scrape's question
_PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere the
    worker outlives a parent killed with SIGKILL (it still delivers each message once)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - every Linux libc has prctl
        log.warning("workers: cannot ask to be stopped with the parent")


def requested(setting: int, *, listen: int | None = None) -> int:
    """The workers the ``workers`` setting asks for: itself, or for 0 two per CPU, and where
    workers listen (``listen``: the ``listening_workers`` setting; ``None`` where nothing
    listens) the listening ones and one per CPU besides.

    A worker's threads share one GIL and often all wait at once (intake's sync, the replies of
    its SMTP servers): with one worker per CPU the two cores were busy 130% of 200% while
    draining Pickup, with two per CPU 150%, and 1.2-1.3 times as many messages left a second
    (bench/README.md, "Sixth round"). The workers that deliver what the listening ones hand
    them take no Pickup intake of their own to overlap, and their delivery threads overlap
    their waits already: on two CPUs, SMTP in relayed 1.04 times as many messages a second
    with one listening worker and two delivering as with three delivering, for 8% less CPU a
    message (bench/README.md, "Eighteenth round")."""
    if setting:
        return setting
    cpus = len(usable_cpus())
    if listen is None:
        return 2 * cpus
    return cpus + (listen or listening(2 * cpus))


def listening(count: int, wanted: int = 0) -> int:
    """How many of ``count`` workers take SMTP sessions (the first ones): ``wanted`` (the
    ``listening_workers`` setting), or with 0 one per two CPUs; at least one, at most ``count``.

    The listener's group commit makes one sync for the messages its sessions finish together;
    spread over more processes, each sync carries fewer. On two CPUs, five lock-step clients
    sending 2 KB messages went 1.2 times as fast with one listening worker of four as with two
    (a fifth less CPU a message), 20 clients 1.1 times, 64 KiB messages 1.07 times; messages of
    256 KiB and 1 MiB went 11-14% slower, one process's GIL being their limit then
    (bench/README.md, "Tenth round")."""
    if wanted:
        return max(1, min(count, wanted))
    return max(1, min(count, len(usable_cpus()) // 2))


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order: its affinity (what a container's cpuset or
    ``taskset`` leaves it), not every CPU of the machine, which ``os.cpu_count`` counts. Where
    the system cannot say (no ``sched_getaffinity``), every CPU it counts."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        with contextlib.suppress(OSError):
            cpus = sorted(getaffinity(0))
            if cpus:
                return cpus
    return list(range(os.cpu_count() or 1))


def cpu_for(index: int, count: int, cpus: list[int]) -> int | None:
    """The one CPU worker ``index`` of ``count`` keeps to, or ``None`` to let the system place it.

    Each CPU gets its turn (workers 0-3 on CPUs 0 and 1: 0, 1, 0, 1), and only where there
    are at least as many workers as CPUs: a worker alone on its CPU while others idled would
    lose the system's freedom to run its threads' work (a sync, a send) on them. A worker's
    threads share one GIL, which lets one run Python at a time; on one CPU the thread that
    lets go of it for a system call mostly takes it back itself, where across CPUs the
    thread woken on the other CPU takes it and the first waits: flushing 5,000 queued
    messages to a sink, the workers made half as many futex calls and no migrations, used
    8% less CPU a message and went 1.12 times as fast; draining Pickup 1.09 times. Where
    the work waits more than it computes the system's placement is better: 1 MiB messages
    went 0.94 times as fast, and SMTP in 0.77 times, so listening workers keep to none
    (``bench/README.md``, "Twenty-ninth round")."""
    if len(cpus) < 2 or count < len(cpus):
        return None
    return cpus[index % len(cpus)]


def _cpu_list(cpus: list[int]) -> str:
    """``0-3,8`` for CPUs 0, 1, 2, 3 and 8, as Linux writes a CPU list (``taskset -c``): one
    line however many CPUs a machine has."""
    runs: list[list[int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def _keep_to(cpu: int, index: int) -> None:
    """In a worker: run on ``cpu`` only (Linux's ``sched_setaffinity``); a system that refuses
    (the CPU taken offline meanwhile) leaves it where the system places it, said in the log."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.warning("worker %d: cannot keep to CPU %d (%s); the system places it", index, cpu, exc)


def worker_count(count: int, spool: Spool) -> int:
    """How many workers to run: ``count`` (:func:`requested`), or one where the MailRoot cannot
    be shared between processes or there is no ``fork``, said once in the log."""
    if count == 1:
        return 1
    if not hasattr(os, "fork"):
        log.info("workers: this system has no fork; one process serves")
        return 1
    backend = spool._store.backend
    if not backend.multi_process:
        log.info(
            "workers: the MailRoot is on %s, which other processes cannot share; one process "
            "serves, not %d",
            backend,
            count,
        )
        return 1
    return count


# -- stats across processes --------------------------------------------------------------------


def _encode(tag: int, stats: Stats) -> bytes:
    data = attrs.asdict(stats)
    data["started"] = stats.started.isoformat()
    data["connections"] = dict(stats.connections)
    return json.dumps({"tag": tag, "stats": data}).encode() + b"\n"


def _decode(data: dict[str, Any]) -> Stats:
    fields = dict(data)
    fields["started"] = datetime.fromisoformat(fields["started"])
    return Stats(**fields)


def combine_stats(parts: Iterable[Stats]) -> Stats:
    """The workers' stats as one service's: counters, connections and DNS answers kept (each
    worker has its own cache) summed; the Queue and Pickup gauges (every worker lists the whole
    MailRoot) from the first; the earliest start."""
    parts = list(parts)
    if not parts:
        raise ValueError("no stats to combine")
    first = parts[0]
    counters = (
        "picked_up",
        "queued",
        "delivered",
        "deferred",
        "failed",
        "dsns",
        "badmail",
        "removed",
        "dead_hosts",
        "failed_lookups",
        "connections_opened",
        "connections_reused",
        "dns_cache_hits",
        "dns_cache_misses",
        "dns_cache_entries",
    )
    summed: dict[str, Any] = {name: sum(getattr(p, name) for p in parts) for name in counters}
    connections: dict[str, int] = {}
    for part in parts:
        for host, count in part.connections.items():
            connections[host] = connections.get(host, 0) + count
    return attrs.evolve(
        first, started=min(p.started for p in parts), connections=connections, **summed
    )


def stats_responder(sock: socket.socket, stats: Callable[[bool], Stats]) -> threading.Thread:
    """In a worker: answer each question the parent sends on ``sock`` (a line with a number,
    then ``1`` for the gauges too or ``0`` for the counters alone) with one line of stats
    carrying that number. ``stats(gauges)`` is ``MailService.stats``."""

    def answer() -> None:
        with sock, sock.makefile("rb") as questions:
            for question in questions:
                number, _, flag = question.partition(b" ")
                try:
                    tag = int(number)
                except ValueError:
                    continue
                try:
                    sock.sendall(_encode(tag, stats(flag.strip() != b"0")))
                except OSError:
                    return
                except Exception:  # the parent must hear something, or it waits out its timeout
                    log.exception("workers: stats for the parent failed")
                    sock.sendall(json.dumps({"tag": tag}).encode() + b"\n")

    thread = threading.Thread(target=answer, name="spoolmail-stats", daemon=True)
    thread.start()
    return thread


# -- the supervisor ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Worker:
    share: Share
    pid: int = 0
    ready: socket.socket | None = None  # the parent's end: one byte when the worker serves
    stats: socket.socket | None = None  # the parent's end: the stats question and answer
    stats_lock: threading.Lock = attrs.Factory(threading.Lock)
    asked: int = 0  # the last question's number: an answer to an older one is stale
    answers: bytes = b""  # what was read of the answers and not used yet
    started: float = 0.0
    served: bool = False
    failures: int = 0
    due: float = 0.0  # when to start it again (monotonic), once it has ended

    def close(self) -> None:
        for sock in (self.ready, self.stats):
            if sock is not None:
                sock.close()
        self.ready = self.stats = None


# What a worker runs: its share, a callable to call once its signal handlers are set and it
# serves, and its end of the stats pair.
WorkerMain = Callable[[Share, Callable[[], None], socket.socket], int]


class Supervisor:
    """Forks ``count`` workers running ``work`` and looks after them until stopped."""

    def __init__(
        self,
        count: int,
        work: WorkerMain,
        *,
        on_hangup: Callable[[], None] = lambda: None,
        pin: bool = False,
    ) -> None:
        self.workers = [_Worker(share) for share in Share(0, count).all()]
        # ``pin``: each worker keeps to one CPU (cpu_for), a worker started again to the same.
        # The CPUs are the parent's, read once: it keeps to none itself.
        cpus = usable_cpus() if pin and hasattr(os, "sched_setaffinity") else []
        self.cpus: list[int | None] = [cpu_for(index, count, cpus) for index in range(count)]
        self._work = work
        self._on_hangup = on_hangup
        self._stopping = False
        self._hangup = False
        self._status = 0
        self._told_stop: set[int] = set()
        # The loop's own, made by run(): a supervisor that only sums stats holds no descriptor.
        self._selector: selectors.BaseSelector
        self._wake_read: socket.socket
        self._wake_write: socket.socket

    # -- signals: flags only -------------------------------------------------------------------

    def _stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping the workers after their ticks", signum)
        self._stopping = True

    def _hangup_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._hangup = True

    def _child_signal(self, _signum: int, _frame: FrameType | None) -> None:
        pass  # the wakeup fd has the byte: the loop reaps

    def _install(self) -> dict[signal.Signals, Any]:
        old: dict[signal.Signals, Any] = {}
        wanted = {
            signal.SIGTERM: self._stop_signal,
            signal.SIGINT: self._stop_signal,
            signal.SIGHUP: self._hangup_signal,
            signal.SIGCHLD: self._child_signal,
        }
        for signum, handler in wanted.items():
            old[signum] = signal.signal(signum, handler)
        signal.set_wakeup_fd(self._wake_write.fileno(), warn_on_full_buffer=False)
        return old

    # -- workers ---------------------------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        ready_parent, ready_child = socket.socketpair()
        stats_parent, stats_child = socket.socketpair()
        parent = os.getpid()
        # A stop that comes while the child still has the parent's handlers would be lost:
        # blocked across the fork, it waits for whichever handler is there after.
        signal.pthread_sigmask(signal.SIG_BLOCK, _PASSED_ON)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
            raise
        if pid == 0:  # the worker
            status = 70  # EX_SOFTWARE, if work() itself escapes
            try:
                self._become_worker(parent)
                cpu = self.cpus[worker.share.index]
                if cpu is not None:
                    _keep_to(cpu, worker.share.index)
                ready_parent.close()
                stats_parent.close()

                def serving() -> None:
                    # The worker's own handlers are in place: what came meanwhile, now.
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
                    with contextlib.suppress(OSError):
                        ready_child.sendall(_READY)
                        ready_child.close()

                status = self._work(worker.share, serving, stats_child)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", worker.share.index)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    logging.shutdown()
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _PASSED_ON)
        ready_child.close()
        stats_child.close()
        worker.pid, worker.ready, worker.stats = pid, ready_parent, stats_parent
        worker.started, worker.served = time.monotonic(), False
        self._selector.register(ready_parent, selectors.EVENT_READ, worker)
        log.info("worker %d of %d started (pid %d)", worker.share.index, len(self.workers), pid)

    def _become_worker(self, parent: int) -> None:
        """In the child, first: the parent's signal handling off, its other workers' ends shut,
        and a stop asked for if the parent dies (a SIGKILL of the parent leaves no orphans).
        SIGTERM, SIGINT and SIGHUP stay blocked until the worker's own handlers are set and it
        says it serves: one sent meanwhile is held, not lost or fatal."""
        signal.set_wakeup_fd(-1)
        for signum in (*_PASSED_ON, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        _stop_with_parent()
        if os.getppid() != parent:  # it died before the request was made
            os.kill(os.getpid(), signal.SIGTERM)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()
        for other in self.workers:
            other.close()

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signum)

    def _ended(self, worker: _Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        described = f"exit status {code}" if code >= 0 else f"signal {-code}"
        pid, worker.pid = worker.pid, 0
        if worker.ready is not None and not worker.served:
            with contextlib.suppress(OSError):  # it may have served, and died before we read
                worker.served = worker.ready.recv(1, socket.MSG_DONTWAIT) == _READY
        if worker.ready is not None:
            self._selector.unregister(worker.ready)
        worker.close()
        if self._stopping:
            log.info("worker %d (pid %d) stopped (%s)", worker.share.index, pid, described)
            return
        if not worker.served and code > 0:
            log.error(
                "worker %d (pid %d) ended before it served (%s): stopping the others",
                worker.share.index,
                pid,
                described,
            )
            self._status = code
            self._stopping = True
            return
        lived = time.monotonic() - worker.started
        worker.failures = 0 if lived >= _HEALTHY else worker.failures + 1
        pause = 0.0 if not worker.failures else min(_MAX_PAUSE, 2.0 ** (worker.failures - 1))
        worker.due = time.monotonic() + pause
        log.warning(
            "worker %d (pid %d) ended (%s); starting it again%s",
            worker.share.index,
            pid,
            described,
            f" in {pause:g} s" if pause else "",
        )

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self.workers:
                if worker.pid == pid:
                    self._ended(worker, status)
                    break

    def _read_ready(self, worker: _Worker) -> None:
        ready = worker.ready
        if ready is None:
            return
        with contextlib.suppress(OSError):  # it died: _ended decides
            worker.served = ready.recv(1) == _READY
        self._selector.unregister(ready)
        ready.close()
        worker.ready = None

    # -- stats -----------------------------------------------------------------------------------

    def stats(self) -> Stats:
        """The sum of the serving workers' stats (``--metrics``); each asked with a 5 s limit.

        The gauges (a listing of the MailRoot's Queue and Pickup, the same for every worker)
        are asked of one worker, the next if it does not answer; the others send their
        counters alone, so a scrape costs one listing whatever the number of workers.
        Right after the start, it waits up to 5 s for a worker to serve. A worker being started
        again is left out: its counters begin again at 0, as a restarted process's do.
        """
        deadline = time.monotonic() + 5
        while not any(worker.served for worker in self.workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        measured: Stats | None = None
        counted: list[Stats] = []
        for worker in list(self.workers):
            if worker.stats is None or not worker.served:
                continue
            with worker.stats_lock:
                try:
                    answer = self._ask(worker, gauges=measured is None)
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    log.warning("workers: no stats from worker %d: %s", worker.share.index, exc)
                    continue
            if measured is None:
                measured = answer
            else:
                counted.append(answer)
        if measured is None:
            raise RuntimeError("no worker is serving yet")
        return combine_stats([measured, *counted])

    @staticmethod
    def _ask(worker: _Worker, *, gauges: bool) -> Stats:
        """One worker's stats within 5 s. Questions are numbered: an answer that came too late
        for an earlier scrape is skipped, so one slow answer never puts the stream out of step."""
        sock = worker.stats
        if sock is None:
            raise OSError("the worker is gone")
        worker.asked += 1
        deadline = time.monotonic() + _STATS_TIMEOUT
        sock.settimeout(_STATS_TIMEOUT)
        sock.sendall(b"%d %d\n" % (worker.asked, gauges))
        while True:
            while b"\n" in worker.answers:
                line, _, worker.answers = worker.answers.partition(b"\n")
                answer = json.loads(line)
                if answer.get("tag") == worker.asked:
                    return _decode(answer["stats"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer within {_STATS_TIMEOUT:g} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("the worker closed its end")
            worker.answers += chunk

    # -- the loop --------------------------------------------------------------------------------

    def _stop_workers(self) -> bool:
        """Ask each running worker once to stop; whether any is still running."""
        running = False
        for worker in self.workers:
            if worker.pid and worker.pid not in self._told_stop:
                self._told_stop.add(worker.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
            running |= bool(worker.pid)
        return running

    def _restart_due(self) -> float:
        """Start the ended workers whose pause is over; seconds until the next one's is."""
        if self._stopping:
            return 1.0
        now = time.monotonic()
        for worker in self.workers:
            if not worker.pid and worker.due <= now:
                try:
                    self._start(worker)
                except OSError as exc:  # fork: no memory, too many processes
                    worker.due = now + 5
                    log.error(  # noqa: TRY400 (the system's reason is the whole story)
                        "worker %d: cannot start it: %s; again in 5 s", worker.share.index, exc
                    )
        waiting = [worker.due - now for worker in self.workers if not worker.pid]
        return max(0.0, min([1.0, *waiting]))

    def _wait(self, timeout: float) -> None:
        """Until a signal (the wakeup fd: a child ended, a stop), a worker's ready byte, or
        ``timeout``."""
        for key, _events in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while self._wake_read.recv(4096):
                        pass
            else:
                self._read_ready(key.data)

    def run(self, *, on_started: Callable[[], None] = lambda: None) -> int:
        """Start the workers and supervise them until a stop signal and their exits; returns 0,
        or the exit status of a worker that ended before it served."""
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        for end in (self._wake_read, self._wake_write):
            end.setblocking(False)
        old = self._install()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        kept = [cpu for cpu in self.cpus if cpu is not None]
        if kept:
            log.info(
                "workers: each keeps to one CPU, CPUs %s in turn (pin_workers)",
                _cpu_list(sorted(set(kept))),
            )
        try:
            self._restart_due()  # every worker is due at once
            try:
                on_started()
            except BaseException:
                # The parent's own part failed (the metrics endpoint could not listen): the
                # workers are stopped and waited for before the error is told, not left to
                # end after the parent.
                self._stopping = True
                while self._stop_workers():
                    self._wait(1.0)
                    self._reap()
                raise
            while True:
                self._reap()
                if self._stopping and not self._stop_workers():
                    return self._status
                if self._hangup and not self._stopping:
                    self._hangup = False
                    log.info("SIGHUP: passed on to the workers")
                    self._on_hangup()
                    self._signal_all(signal.SIGHUP)
                self._wait(self._restart_due())
        finally:
            signal.set_wakeup_fd(-1)
            for signum, handler in old.items():
                signal.signal(signum, handler)
            for worker in self.workers:
                worker.close()
            self._selector.close()
            self._wake_read.close()
            self._wake_write.close()
