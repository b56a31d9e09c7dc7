"""``spoolmail run --workers N`` in a real subprocess: N workers divide the mail, each message lands
once; the parent passes signals on, starts a killed worker again, gives up with the status of a
worker that could not start, serves the sum of their metrics; ``mem://`` runs one process.

Nothing sleeps through an interval: each step polls for its effect until a deadline. Mail is
local (Drop) or goes to a listener on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail import Share, Stats
from spoolmail._cli import workers
from spoolmail._cli.status import EX_USAGE
from spoolmail._core.shares import part
from tests import waiting
from tests.integration.commands import spoolmail_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="workers are forked"),
]

DEADLINE = 30.0


def until(what: str, check: Callable[[], bool]) -> None:
    waiting.until(what, check, deadline=DEADLINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill_pickup(root: Path, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        temp = root / "Pickup" / f".{number}.tmp"
        temp.write_bytes(
            f"From: app@example.com\r\nTo: u{number}@example.com\r\nX-Seq: {number}\r\n\r\n"
            "hi\r\n".encode()
        )
        temp.rename(root / "Pickup" / f"m{number}.eml")


def drop_sequence(root: Path) -> list[int]:
    return sorted(
        int(line.split(b": ")[1])
        for path in (root / "Drop").iterdir()
        for line in path.read_bytes().split(b"\r\n")
        if line.startswith(b"X-Seq: ")
    )


def send_numbered(port: int, numbers: range, domain: str = "example.com") -> None:
    """One SMTP session a message, each with its number in ``X-Seq`` (``drop_sequence``)."""
    for number in numbers:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail(
                "app@example.com",
                [f"u{number}@{domain}"],
                f"From: app@example.com\r\nX-Seq: {number}\r\n\r\nhi\r\n",
            )


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sorted(int(p) for p in found)


class Daemon:
    def __init__(self, process: subprocess.Popen[bytes], root: Path, stderr: Path) -> None:
        self.process, self.root, self.stderr = process, root, stderr

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[subprocess.Popen[bytes]] = []

    def run(*extra: str, root: str | None = None, cpus: set[int] | None = None) -> Daemon:
        """``cpus``: the CPUs the daemon may run on (as ``taskset`` would leave it)."""
        where = tmp_path / "MailRoot" if root is None else root  # a URL stays a string
        stderr = tmp_path / f"stderr{len(started)}"
        with stderr.open("wb") as errors:
            # taskset (util-linux): the CPUs set before the interpreter starts, as an operator's.
            pinned = [] if cpus is None else ["taskset", "-c", ",".join(map(str, sorted(cpus)))]
            process = subprocess.Popen(
                [*pinned, *spoolmail_run(where, *extra)],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
        started.append(process)
        return Daemon(process, Path(where), stderr)

    yield run
    for process in started:
        if process.poll() is None:
            for pid in children(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def banner(daemon: Daemon) -> str:
    assert daemon.process.stdout is not None
    return daemon.process.stdout.readline().decode()


def test_two_workers_divide_the_mail_and_stop_together(start: Callable[..., Daemon]) -> None:
    daemon = start("--workers", "2")
    assert "; 2 workers; Ctrl-C stops" in banner(daemon)
    workers = children(daemon.process.pid)
    assert len(workers) == 2
    fill_pickup(daemon.root, 120)
    until("120 messages in Drop", lambda: len(drop_sequence(daemon.root)) == 120)
    assert drop_sequence(daemon.root) == list(range(120))  # each once
    log = daemon.log()
    assert "[worker 0] " in log
    assert "[worker 1] " in log
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()
    assert "worker 0 (pid" in daemon.log()
    assert [n for n in os.listdir(daemon.root / "SortTemp") if n.endswith(".owner")] == []


def test_a_killed_worker_is_started_again_and_mail_goes_on(start: Callable[..., Daemon]) -> None:
    daemon = start("--workers", "2")
    banner(daemon)
    first, second = children(daemon.process.pid)
    os.kill(first, signal.SIGKILL)
    until("a new worker", lambda: first not in children(daemon.process.pid) and
          len(children(daemon.process.pid)) == 2)  # fmt: skip
    assert second in children(daemon.process.pid)
    until("the parent said so", lambda: "ended (signal 9); starting it again" in daemon.log())
    fill_pickup(daemon.root, 40)
    until("40 messages in Drop", lambda: len(drop_sequence(daemon.root)) == 40)
    assert drop_sequence(daemon.root) == list(range(40))
    daemon.process.send_signal(signal.SIGINT)
    assert daemon.process.wait(DEADLINE) == 0


def allowed_cpus(pid: int) -> set[int]:
    """The CPUs process ``pid`` may run on, from /proc (``Cpus_allowed_list``: ``0-2,5``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.MULTILINE)
    assert found, status
    cpus: set[int] = set()
    for part_ in found.group(1).split(","):
        first, _, last = part_.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def two_cpus() -> set[int]:
    """Two CPUs this test may give a daemon: the machines spoolmail is tested on have two."""
    usable = workers.usable_cpus()
    assert len(usable) >= 2, f"pinning needs two CPUs to divide; this machine lets us use {usable}"
    return set(usable[:2])


def test_each_worker_keeps_to_one_cpu_in_turn_and_a_new_one_to_its_own(
    start: Callable[..., Daemon],
) -> None:
    """Four workers on two CPUs: two keep to each, in turn (``cpu_for``), said once in the log;
    the parent keeps to none; a worker started again keeps to the CPU its index had."""
    cpus = two_cpus()
    daemon = start("--workers", "4", cpus=cpus)
    banner(daemon)
    pids = children(daemon.process.pid)
    assert len(pids) == 4
    # Each keeps to its CPU first thing after the fork: the banner may come before.
    until("each worker on one CPU", lambda: all(len(allowed_cpus(pid)) == 1 for pid in pids))
    kept = {pid: allowed_cpus(pid) for pid in pids}
    # Forked in index order: 0, 1, 0, 1 of the two CPUs.
    low, high = sorted(cpus)
    assert [next(iter(kept[pid])) for pid in pids] == [low, high, low, high]
    assert allowed_cpus(daemon.process.pid) == cpus
    said = f"each keeps to one CPU, CPUs {workers._cpu_list([low, high])} in turn (pin_workers)"
    until("the log says so", lambda: said in daemon.log())
    os.kill(pids[1], signal.SIGKILL)
    until("a new worker", lambda: len(set(children(daemon.process.pid)) - set(pids)) == 1)
    (new,) = set(children(daemon.process.pid)) - set(pids)
    until("its CPU set", lambda: allowed_cpus(new) == {high})
    fill_pickup(daemon.root, 20)
    until("20 messages in Drop", lambda: len(drop_sequence(daemon.root)) == 20)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


@pytest.mark.parametrize(
    "extra",
    [("--workers", "4", "--no-pin-workers"), ("--workers", "3", "--listen", "127.0.0.1:0")],
    ids=["not pinned", "listening"],
)
def test_workers_are_left_to_the_system_when_told_so_or_when_they_listen(
    start: Callable[..., Daemon], extra: tuple[str, ...]
) -> None:
    """``--no-pin-workers``, and a daemon that listens (its workers wait on their clients
    more than they compute): every worker may run on every CPU the daemon may."""
    cpus = two_cpus()
    daemon = start(*extra, cpus=cpus)
    banner(daemon)
    pids = children(daemon.process.pid)
    assert len(pids) == int(extra[1])
    assert [allowed_cpus(pid) for pid in pids] == [cpus] * len(pids)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0
    assert "keeps to one CPU" not in daemon.log()


def test_the_default_workers_are_two_per_cpu_the_daemon_may_use(
    start: Callable[..., Daemon],
) -> None:
    """A daemon let run on one CPU (a container's cpuset, ``taskset``) starts two workers, not
    two per CPU of the machine; with one CPU there is nothing to divide, so none is pinned."""
    cpu = min(workers.usable_cpus())
    daemon = start(cpus={cpu})
    assert "; 2 workers; Ctrl-C stops" in banner(daemon)
    assert [allowed_cpus(pid) for pid in children(daemon.process.pid)] == [{cpu}, {cpu}]
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0
    assert "keeps to one CPU" not in daemon.log()


def test_a_worker_that_cannot_start_stops_the_group_with_its_status(tmp_path: Path) -> None:
    """A setting that only a worker's service looks at (the DNS servers, settings file only)
    fails in the workers; the parent stops the group with their status."""
    config = tmp_path / "spoolmail.toml"
    root = tmp_path / "MailRoot"
    config.write_text(f'[spoolmail]\nroot = "{root}"\nworkers = 2\ndns_servers = ["bogus"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "spoolmail", "--config", str(config), "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == EX_USAGE  # the status one process gives (bad setting)
    assert "dns_servers: 'bogus' is not an IP address" in result.stderr
    assert "ended before it served (exit status 2): stopping the others" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "told"),
    [
        ("--fqdn", "bad..name", "fqdn:"),
        ("--ndr-copy-to", "not an address", "ndr_copy_to:"),
        ("--masquerade-domain", "bad..name", "masquerade_domain:"),
        ("--smart-host", "[127.0.0.1]:0", "smart host"),
    ],
)
def test_a_wrong_name_is_told_once_before_any_worker_starts(
    start: Callable[..., Daemon], flag: str, value: str, told: str
) -> None:
    daemon = start("--workers", "2", flag, value)
    assert daemon.process.wait(DEADLINE) == EX_USAGE
    log = daemon.log()
    assert log.count(told) == 1, log
    assert "started" not in log


def test_a_ca_file_that_cannot_be_read_is_told_before_any_worker_starts(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start("--workers", "2", "--tls-ca-file", str(tmp_path / "missing.pem"))
    assert daemon.process.wait(DEADLINE) == EX_USAGE
    log = daemon.log()
    assert log.count("tls_ca_file") == 1, log
    assert "started" not in log
    assert "Traceback" not in log


def test_a_memory_mailroot_runs_one_process_and_says_so(start: Callable[..., Daemon]) -> None:
    daemon = start("--workers", "3", root="mem://")
    assert "workers" not in banner(daemon)
    assert children(daemon.process.pid) == []
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0
    log = daemon.log()
    assert log.count("one process serves, not 3") == 1


def test_sighup_reaches_every_worker(start: Callable[..., Daemon]) -> None:
    daemon = start("--workers", "2")
    banner(daemon)
    daemon.process.send_signal(signal.SIGHUP)
    until("both reloaded", lambda: daemon.log().count("no settings file to read again") == 2)
    assert "SIGHUP: passed on to the workers" in daemon.log()
    assert len(children(daemon.process.pid)) == 2
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


def test_metrics_are_the_sum_of_the_workers(start: Callable[..., Daemon]) -> None:
    port = free_port()
    daemon = start("--workers", "2", "--metrics", f"127.0.0.1:{port}")
    banner(daemon)
    fill_pickup(daemon.root, 30)
    until("30 messages in Drop", lambda: len(drop_sequence(daemon.root)) == 30)

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            lines = answer.read().decode().splitlines()
        return {
            name: float(value)
            for name, _, value in (line.rpartition(" ") for line in lines)
            if name and not name.startswith("#")
        }

    # Each scrape asks both workers (5 s each at most); on a loaded machine one may miss a
    # scrape, and its counters are left out of that sum, so poll for the total.
    until("the sum counts all 30", lambda: scrape()["spoolmail_picked_up_total"] == 30)
    metrics = scrape()
    assert metrics["spoolmail_picked_up_total"] == 30
    assert metrics["spoolmail_delivered_total"] == 30
    assert metrics['spoolmail_messages{state="queued"}'] == 0
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


def two_listening(
    start: Callable[..., Daemon], *extra: str, address: str = "127.0.0.1:0"
) -> tuple[Daemon, int]:
    """Two workers that both listen on ``address`` (the default is one per two CPUs), and the
    port the banner names."""
    daemon = start("--workers", "2", "--listening-workers", "2", "--listen", address, *extra)
    found = re.search(r"listening on 127\.0\.0\.1:(\d+); 2 workers", banner(daemon))
    assert found
    return daemon, int(found.group(1))


@pytest.mark.parametrize("port", ["free", "0"])
def test_workers_share_the_listeners_port(start: Callable[..., Daemon], port: str) -> None:
    # Port 0: the first worker's socket gets a port from the kernel, the other's binds to it.
    wanted = str(free_port()) if port == "free" else port
    daemon, bound = two_listening(start, address=f"127.0.0.1:{wanted}")
    assert port == "0" or str(bound) == wanted
    send_numbered(bound, range(30))
    until("30 messages in Drop", lambda: len(drop_sequence(daemon.root)) == 30)
    assert drop_sequence(daemon.root) == list(range(30))
    # The workers share the socket and each takes its part of the 30 connections, not all
    # to the first loop that wakes.
    log = daemon.log()
    for index in range(2):  # both listen
        assert re.search(rf"\[worker {index}\] \S+: queued from 127\.0\.0\.1", log), index
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


def test_max_sessions_holds_for_the_listening_workers_together(
    start: Callable[..., Daemon],
) -> None:
    """Two sessions in all: each listening worker takes its part, and the third client is
    told to come back (421), whichever worker it reaches."""
    daemon, port = two_listening(start, "--max-sessions", "2")
    with (
        smtplib.SMTP("127.0.0.1", port, timeout=10) as first,
        smtplib.SMTP("127.0.0.1", port, timeout=10) as second,
    ):
        assert first.noop()[0] == 250
        assert second.noop()[0] == 250
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", port, timeout=10)
        assert refused.value.smtp_code == 421
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


def test_a_listening_daemon_starts_one_delivering_worker_per_cpu_besides_the_listening(
    start: Callable[..., Daemon],
) -> None:
    """No --workers: where it listens, the daemon starts the listening workers and one per CPU
    to deliver what they hand off (bench/README.md, "Eighteenth round"); where it does not,
    two per CPU."""
    cpus = len(workers.usable_cpus())
    daemon = start("--listen", "127.0.0.1:0")
    expected = cpus + workers.listening(2 * cpus)
    assert re.search(rf"listening on 127\.0\.0\.1:\d+; {expected} workers", banner(daemon))
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


def test_a_listener_without_aiosmtpd_stops_before_any_worker_starts(tmp_path: Path) -> None:
    """The ``server`` extra missing: one sentence naming it, before the banner and the fork
    (each worker used to start, the banner said "listening on", and then each failed)."""
    result = _blocked("aiosmtpd", tmp_path / "MailRoot", "run", "--listen", "127.0.0.1:0")
    assert result.returncode == 1
    assert "the SMTP listener needs aiosmtpd" in result.stderr
    assert "pip install 'spoolmail[server]'" in result.stderr
    assert "started" not in result.stderr
    assert "listening on" not in result.stdout + result.stderr


def _blocked(module: str, root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``spoolmail --root ROOT ARGV`` in a fresh interpreter where ``module`` cannot be
    imported (an extra not installed)."""
    code = (
        f"import runpy, sys; sys.modules[{module!r}] = None; "
        "sys.argv = ['spoolmail', '--root', *sys.argv[1:]]; "
        "runpy.run_module('spoolmail', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(root), *argv],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_metrics_without_prometheus_client_stop_before_any_worker_starts(tmp_path: Path) -> None:
    result = _blocked("prometheus_client", tmp_path / "MailRoot", "run", "--metrics", "127.0.0.1:0")
    assert result.returncode == 1
    assert "metrics need prometheus-client: pip install 'spoolmail[metrics]'" in result.stderr
    assert "started" not in result.stderr


def test_a_metrics_address_without_a_port_stops_before_any_worker_starts(
    start: Callable[..., Daemon],
) -> None:
    daemon = start("--workers", "2", "--metrics", "127.0.0.1")
    assert daemon.process.wait(DEADLINE) == EX_USAGE  # the setting is wrong
    errors = daemon.stderr.read_text()
    assert "metrics: '127.0.0.1' is not ADDRESS:PORT" in errors
    assert "started" not in errors


def test_a_metrics_port_taken_stops_the_workers_and_waits_for_them(
    start: Callable[..., Daemon],
) -> None:
    """The endpoint listens only once the workers run (a thread before the fork would be
    copied into them half-held): when it cannot, the parent stops them and reaps each before
    it exits with the reason."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start("--workers", "2", "--metrics", f"127.0.0.1:{port}")
        assert daemon.process.wait(DEADLINE) == EX_USAGE
    errors = daemon.stderr.read_text()
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in errors
    pids = [int(pid) for pid in re.findall(r"worker \d of 2 started \(pid (\d+)\)", errors)]
    assert len(pids) == 2
    for index, pid in enumerate(pids):
        assert f"worker {index} (pid {pid}) stopped" in errors, errors
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped by the parent before it exited, not left running


def test_a_setting_that_cannot_be_built_is_told_once_before_any_worker_starts(
    start: Callable[..., Daemon],
) -> None:
    """The router (and the rest built from the settings alone) is built in the parent first:
    one sentence, not one from each worker after the fork."""
    daemon = start("--workers", "3", "--smart-host", "[127.0.0.1]:99999")
    assert daemon.process.wait(DEADLINE) == EX_USAGE
    errors = daemon.stderr.read_text()
    assert errors.count("port must be 1-65535, not '99999'") == 1, errors
    assert "started" not in errors


def test_sessions_open_at_once_are_shared_out_evenly(start: Callable[..., Daemon]) -> None:
    """Six clients that stay connected (as smtp-source's, or a busy application's pool):
    three sessions in each worker, whichever loop wakes first, so that both deliver. A
    message's id is in the share of the worker that took it (docs: several processes)."""
    daemon, port = two_listening(
        start, "--relay-network", "127.0.0.1/32", "--smart-host", "[127.0.0.1]:9"
    )
    clients = []
    try:
        # One by one: each connected (its greeting read) before the next.
        clients.extend(smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in "123456")
        ids = []
        for number, client in enumerate(clients):
            client.ehlo("client.test")
            client.mail("app@example.com")
            client.rcpt(f"u{number}@example.net")
            code, reply = client.data(b"Subject: hi\r\n\r\nhi\r\n")
            assert code == 250, reply
            ids.append(reply.decode().rsplit(" ", 1)[-1])
    finally:
        for client in clients:
            client.close()
    assert sorted(Share(0, 2).owns_id(queue_id) for queue_id in ids) == [False] * 3 + [True] * 3
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


def test_workers_past_the_listening_ones_take_pickup_but_no_sessions(
    start: Callable[..., Daemon],
) -> None:
    """The listening workers take the sessions (by default one per two CPUs: their group
    commits carry more messages a sync); the others take their share of Pickup and the Queue."""
    listening = workers.listening(2 * len(workers.usable_cpus()))
    count = listening + 1
    daemon = start("--workers", str(count), "--listen", "127.0.0.1:0")
    found = re.search(rf"listening on 127\.0\.0\.1:(\d+); {count} workers", banner(daemon))
    assert found
    clients = []
    try:
        # Held open together, so that the balance hands them to every listening worker.
        clients.extend(
            smtplib.SMTP("127.0.0.1", int(found.group(1)), timeout=10) for _ in range(2 * count)
        )
        for number, client in enumerate(clients):
            client.sendmail(
                "app@example.com",
                [f"u{number}@example.com"],
                f"From: app@example.com\r\nX-Seq: {number}\r\n\r\nhi\r\n",
            )
    finally:
        for client in clients:
            client.close()
    fill_pickup(daemon.root, 40, start=100)
    until("every message in Drop", lambda: len(drop_sequence(daemon.root)) == 2 * count + 40)
    assert drop_sequence(daemon.root) == [*range(2 * count), *range(100, 140)]
    log = daemon.log()
    took = set(map(int, re.findall(r"\[worker (\d+)\] \S+: queued from 127\.0\.0\.1", log)))
    assert took == set(range(listening))
    # The last worker listens to nobody, yet takes its share of Pickup.
    assert re.search(rf"\[worker {count - 1}\] \S+: picked up file=m1\d\d\.eml", log)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


def test_the_listening_workers_hand_what_they_accept_to_the_others(
    start: Callable[..., Daemon],
) -> None:
    """The workers that listen name their sessions' messages in the shares of those that do
    not, which deliver them (docs: several processes); Pickup stays with each share's owner."""
    count = len(workers.usable_cpus()) + 2
    listening = workers.listening(count)
    assert listening < count
    daemon = start("--workers", str(count), "--listen", "127.0.0.1:0")
    found = re.search(rf"listening on 127\.0\.0\.1:(\d+); {count} workers", banner(daemon))
    assert found
    send_numbered(int(found.group(1)), range(20))
    fill_pickup(daemon.root, 20, start=100)
    until("every message in Drop", lambda: len(drop_sequence(daemon.root)) == 40)
    assert drop_sequence(daemon.root) == [*range(20), *range(100, 120)]  # each once
    until("every drop logged", lambda: daemon.log().count(DROPPED) == 40)
    assert handed_off(daemon.log(), listening, count) == 20
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(DEADLINE) == 0


DROPPED = ": dropped file="


def handed_off(log: str, listening: int, count: int) -> int:
    """How many SMTP messages the log shows accepted by a listening worker and delivered by
    one that does not listen, in whose share the id is; fails on any other."""
    accepted = {
        queue_id: int(index)
        for index, queue_id in re.findall(r"\[worker (\d+)\] (\S+): queued from 127\.0\.0\.1", log)
    }
    by = {
        queue_id: int(index)
        for index, queue_id in re.findall(rf"\[worker (\d+)\] (\S+){DROPPED}", log)
    }
    for queue_id, index in accepted.items():
        assert index < listening
        assert by[queue_id] >= listening  # delivered by a worker that does not listen
        assert Share(by[queue_id], count).owns_id(queue_id)
    return len(accepted)


def test_the_hand_off_goes_on_after_a_reload(tmp_path: Path) -> None:
    """SIGHUP builds every worker's service again: the new ones hand off and take as before,
    with the new settings (a new local domain)."""
    count = len(workers.usable_cpus()) + 2
    listening = workers.listening(count)
    root = tmp_path / "MailRoot"
    config = tmp_path / "spoolmail.toml"
    common = f'root = "{root}"\nlisten = ["127.0.0.1:0"]\nworkers = {count}\npoll_interval = 0.05\n'
    config.write_text(f'[spoolmail]\n{common}local_domains = ["example.com"]\n')
    log_file = tmp_path / "spoolmail.log"
    with subprocess.Popen(
        [sys.executable, "-m", "spoolmail", "--config", str(config), "run",
         "--log-file", str(log_file)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            found = re.search(
                r"listening on 127\.0\.0\.1:(\d+)", process.stdout.readline().decode()
            )
            assert found
            port = int(found.group(1))

            send_numbered(port, range(10))
            until("10 in Drop", lambda: len(drop_sequence(root)) == 10)
            config.write_text(f'[spoolmail]\n{common}local_domains = ["example.com", "new.test"]\n')
            process.send_signal(signal.SIGHUP)
            until(
                "every worker reloaded",
                lambda: log_file.read_text().count("the new settings are in use") == count,
            )
            send_numbered(port, range(10, 20), "new.test")
            until("20 in Drop", lambda: len(drop_sequence(root)) == 20)
            assert drop_sequence(root) == list(range(20))
            # the file is in Drop a moment before its worker writes the log line
            until("every drop logged", lambda: log_file.read_text().count(DROPPED) == 20)
            assert handed_off(log_file.read_text(), listening, count) == 20
            process.send_signal(signal.SIGTERM)
            assert process.wait(DEADLINE) == 0
        finally:
            if process.poll() is None:
                for pid in children(process.pid):
                    os.kill(pid, signal.SIGKILL)
                process.kill()


def test_a_late_stats_answer_never_puts_the_parent_out_of_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In process: the parent's end of one worker's pair, and the worker's responder thread.
    monkeypatch.setattr(workers, "_STATS_TIMEOUT", 0.3)
    parent, child = socket.socketpair()
    worker = workers._Worker(Share(0, 2), stats=parent, served=True)
    release = threading.Event()
    calls = iter(range(1, 100))

    def stats(_gauges: bool) -> Stats:
        count = next(calls)
        if count == 1:
            release.wait(10)  # the first answer comes after the parent gave up on it
        return Stats(started=datetime(2026, 12, 5, tzinfo=UTC), picked_up=count)

    workers.stats_responder(child, stats)
    supervisor = workers.Supervisor(2, lambda *_: 0)
    supervisor.workers = [worker]
    try:
        with pytest.raises(RuntimeError, match="no worker"):
            supervisor.stats()  # the only worker did not answer in time: left out
        release.set()
        assert supervisor.stats().picked_up == 2  # the stale answer (1) is skipped
        assert supervisor.stats().picked_up == 3
    finally:
        parent.close()


def test_a_scrape_asks_one_worker_for_the_gauges_the_next_if_it_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every worker lists the same Queue and Pickup: asking each for them multiplied a scrape's
    # cost by the number of workers. Worker 0 is silent at first, so worker 1 measures.
    monkeypatch.setattr(workers, "_STATS_TIMEOUT", 0.3)
    asked: list[tuple[int, bool]] = []
    silent = threading.Event()
    pairs = []
    supervisor = workers.Supervisor(3, lambda *_: 0)
    supervisor.workers = []
    for index in range(3):
        parent, child = socket.socketpair()
        pairs.append(parent)
        supervisor.workers.append(workers._Worker(Share(index, 3), stats=parent, served=True))

        def stats(gauges: bool, index: int = index) -> Stats:
            asked.append((index, gauges))
            if index == 0 and not silent.is_set():
                silent.wait(10)
            return Stats(
                started=datetime(2026, 12, 5, tzinfo=UTC),
                delivered=10**index,
                queue=7 if gauges else 0,
                pickup=5 if gauges else 0,
            )

        workers.stats_responder(child, stats)
    try:
        first = supervisor.stats()
        assert (first.delivered, first.queue, first.pickup) == (110, 7, 5)  # 0 left out
        assert asked == [(0, True), (1, True), (2, False)]
        silent.set()
        asked.clear()
        second = supervisor.stats()
        assert (second.delivered, second.queue, second.pickup) == (111, 7, 5)
        assert asked == [(0, True), (1, False), (2, False)]
    finally:
        for parent in pairs:
            parent.close()


@pytest.mark.parametrize("cpus", [1, 2, 3, 8])
def test_two_workers_per_cpu_by_default_and_with_a_listener_one_per_cpu_besides_it(
    monkeypatch: pytest.MonkeyPatch, cpus: int
) -> None:
    monkeypatch.setattr(workers, "usable_cpus", lambda: list(range(cpus)))
    assert workers.requested(0) == 2 * cpus
    assert workers.requested(3) == 3
    # With a listener: the listening workers plus one that delivers per CPU.
    assert workers.requested(0, listen=0) == cpus + max(1, cpus // 2)
    assert workers.requested(0, listen=2) == cpus + 2
    # As many listening as asked for, however many CPUs, and the CPUs' delivering besides.
    assert workers.listening(workers.requested(0, listen=9), 9) == 9
    assert workers.requested(3, listen=0) == 3
    assert workers.listening(2 * cpus) == max(1, cpus // 2)
    assert workers.listening(1) == 1


@given(
    cpus=st.lists(st.integers(0, 255), min_size=1, max_size=16, unique=True).map(sorted),
    count=st.integers(1, 64),
)
def test_each_cpu_gets_its_turn_and_none_is_pinned_with_too_few_workers(
    cpus: list[int], count: int
) -> None:
    kept = [workers.cpu_for(index, count, cpus) for index in range(count)]
    if len(cpus) < 2 or count < len(cpus):
        assert kept == [None] * count  # nothing to divide, or a CPU left without a worker
        return
    assert kept == [cpus[index % len(cpus)] for index in range(count)]
    each = [kept.count(cpu) for cpu in cpus]
    assert max(each) - min(each) <= 1
    assert min(each) >= 1


def test_a_cpu_the_system_refuses_leaves_the_worker_where_it_is_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A CPU taken offline between the parent's look and the worker's start: the worker goes
    on where the system places it, and the log says why."""

    def refuse(_pid: int, _cpus: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse, raising=False)
    with caplog.at_level("WARNING", logger="spoolmail"):
        workers._keep_to(3, 1)
    assert "worker 1: cannot keep to CPU 3 ([Errno 22] Invalid argument)" in caplog.text


def test_the_log_names_the_cpus_as_linux_lists_them() -> None:
    assert workers._cpu_list([0, 1]) == "0-1"
    assert workers._cpu_list([0, 1, 2, 3, 8, 10, 11]) == "0-3,8,10-11"
    assert workers._cpu_list([5]) == "5"


def test_the_usable_cpus_are_the_affinity_where_there_is_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {5, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert workers.usable_cpus() == [3, 5]
    assert workers.requested(0) == 4
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    assert workers.usable_cpus() == list(range(64))
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert workers.usable_cpus() == [0]


def test_the_listening_workers_asked_for_within_the_group() -> None:
    assert workers.listening(4, 2) == 2
    assert workers.listening(4, 9) == 4  # all of them: none left to hand to
    assert workers.listening(1, 3) == 1


@given(limit=st.integers(1, 2_000), count=st.integers(1, 64))
def test_a_limit_is_divided_among_the_workers(limit: int, count: int) -> None:
    parts = [part(limit, Share(index, count)) for index in range(count)]
    assert sum(parts) == max(limit, count)  # the whole, unless each needs its one
    assert max(parts) - min(parts) <= 1
    assert parts == sorted(parts, reverse=True)  # the first ones get what does not divide


@given(limit=st.integers(1, 2_000), count=st.integers(2, 64), data=st.data())
def test_with_a_hand_off_the_delivering_workers_get_twice_a_listening_ones_part(
    limit: int, count: int, data: st.DataObject
) -> None:
    listening = data.draw(st.integers(1, count - 1))
    parts = [part(limit, Share(index, count), handing_off=listening) for index in range(count)]
    if limit >= 2 * count:  # each part is its weight's, not the one every worker keeps
        assert sum(parts) == limit
        assert max(parts[:listening]) <= min(parts[listening:])
        # Twice, as near as whole numbers go.
        assert all(abs(2 * parts[0] - taker) <= 3 for taker in parts[listening:])
    assert min(parts) >= 1


def test_ten_connections_with_a_hand_off() -> None:
    """The documented example (docs: several processes)."""
    assert [part(10, Share(index, 4), handing_off=2) for index in range(4)] == [2, 2, 3, 3]
    assert [part(10, Share(index, 4)) for index in range(4)] == [3, 3, 2, 2]


def test_combined_stats_add_counters_and_keep_one_set_of_gauges() -> None:
    started = datetime(2026, 12, 5, tzinfo=UTC)
    first = Stats(started=started, delivered=3, queue=7, connections={"a": 1})
    second = Stats(
        started=started - timedelta(seconds=5), delivered=4, queue=7, connections={"a": 2, "b": 1}
    )
    both = workers.combine_stats([first, second])
    assert both.delivered == 7
    assert both.queue == 7  # every worker lists the whole Queue
    assert dict(both.connections) == {"a": 3, "b": 1}
    assert both.started == second.started
