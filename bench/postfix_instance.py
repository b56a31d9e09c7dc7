"""What bench_postfix.py needs besides spoolmail: a private Postfix, smtp-sink, CPU accounting.

- :func:`ensure_postfix` installs Debian's postfix if ``smtp-sink`` or ``postfix`` is missing
  (debconf "No configuration": binaries only, no system instance), as ``.ci/run`` does.
- :class:`PostfixInstance` is a Postfix of its own under a temp dir: its own ``config_directory``,
  ``queue_directory`` and ``data_directory``, listening on 127.0.0.1 only, no DNS, no local
  delivery, every message relayed to ``[127.0.0.1]:SINK``. Its fsync behaviour is Postfix's
  default (cleanup fsyncs each queue file before it answers). It never touches /etc/postfix or
  /var/spool/postfix.
- :class:`SmtpSink` is Postfix's ``smtp-sink -c`` on 127.0.0.1; its running ``mesg=`` counter is
  the finish line, read from its stdout as it changes.
- :class:`CpuGroup` accounts the CPU of a process tree, exited children included: a cgroup
  (v2, or v1 ``cpuacct``) when this process may create one, else ``/proc`` (a process's own
  times plus the times of the children it reaped, over the live tree).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

SBIN = ("/usr/sbin", "/usr/lib/postfix/sbin", "/sbin")


def which(program: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    return shutil.which(program, path=path)


def ensure_postfix(*, install: bool = True) -> None:
    """Install Debian's postfix (binaries only) when ``postfix`` or ``smtp-sink`` is missing."""
    missing = [
        p for p in ("postfix", "postconf", "sendmail", "smtp-sink", "smtp-source") if not which(p)
    ]
    if not missing:
        return
    if not install:
        raise SystemExit(f"Postfix is missing ({', '.join(missing)}); install the postfix package")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(
            f"Postfix is missing ({', '.join(missing)}) and cannot be installed here "
            "(needs root and apt-get): install Debian's postfix package"
        )
    print("  installing Debian's postfix (debconf: No configuration) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt_get = shutil.which("apt-get") or "apt-get"
    subprocess.run(
        [shutil.which("debconf-set-selections") or "/usr/bin/debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
        env=env,
    )
    subprocess.run([apt_get, "update", "-qq"], check=True, env=env)
    subprocess.run(
        [apt_get, "install", "-y", "-qq", "--no-install-recommends", "postfix"],
        check=True,
        env=env,
    )
    still = [p for p in missing if not which(p)]
    if still:
        raise SystemExit(f"postfix installed, but still missing: {', '.join(still)}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0, *, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the {what} does not listen on 127.0.0.1:{port}") from None
            time.sleep(0.02)


# -- CPU accounting --------------------------------------------------------------------------------


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, reaped children's CPU seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17.
    return (
        int(fields[1]),
        (int(fields[11]) + int(fields[12])) / _TICK,
        (int(fields[13]) + int(fields[14])) / _TICK,
    )


def tree_cpu(root_pid: int) -> float:
    """CPU seconds of a live process tree: each process's own time plus what it reaped."""
    stats: dict[int, tuple[int, float, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _own, _reaped) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total = 0.0
    todo = [root_pid] if root_pid in stats else []
    while todo:
        pid = todo.pop()
        _ppid, own, reaped = stats[pid]
        total += own + reaped
        todo.extend(children.get(pid, ()))
    return total


class CpuGroup:
    """CPU seconds used by every process put into this group (cgroup), exited ones included.

    ``kind`` is "cgroup v2", "cgroup v1" or "proc" (no cgroup could be made: the caller then
    follows a process tree with :func:`tree_cpu`, set ``root_pid``). Start a process through
    :meth:`wrap` to put it and its descendants in the group.
    """

    V2_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
    V1_MOUNT = "/sys/fs/cgroup/cpuacct"

    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        self.kind = "proc"
        self.root_pid: int | None = None
        self._v1 = False
        for mount in self.V2_MOUNTS:
            base = Path(mount)
            v2 = (base / "cgroup.procs").exists() and (base / "cgroup.max.depth").exists()
            if v2 and self._make(base / name):
                self.kind = "cgroup v2"
                return
        base = Path(self.V1_MOUNT)
        if (base / "cpuacct.usage").exists() and self._make(base / name):
            self.kind = "cgroup v1"
            self._v1 = True

    def _make(self, path: Path) -> bool:
        try:
            path.mkdir(exist_ok=True)
            self._read(path)
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
            return False
        self.path = path
        return True

    def _read(self, path: Path) -> float:
        if (path / "cpuacct.usage").exists():
            return int((path / "cpuacct.usage").read_text()) / 1e9
        for line in (path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"no usage_usec in {path / 'cpu.stat'}")

    def wrap(self, command: Sequence[str]) -> list[str]:
        """``command`` run so that it joins the group before it starts (a shell that writes its
        own pid into the group, then execs it): its descendants are in the group too."""
        if self.path is None:
            return list(command)
        procs = str(self.path / "cgroup.procs")
        script = 'echo $$ > "$0" && exec "$@"'
        return ["/bin/sh", "-c", script, procs, *command]

    def cpu(self) -> float:
        """CPU seconds so far (for "proc": of the live tree under ``root_pid``)."""
        if self.path is not None:
            return self._read(self.path)
        return tree_cpu(self.root_pid) if self.root_pid is not None else float("nan")

    def pids(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL whatever is left in the group."""
        if self.path is None:
            return
        if (self.path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.path / "cgroup.kill").write_text("1\n")
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        if self.path is None:
            return
        self.kill()
        deadline = time.monotonic() + 5
        while self.path.exists():
            try:
                self.path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)


# -- smtp-sink -------------------------------------------------------------------------------------

_MESG = re.compile(rb"mesg=(\d+)")
# The sink writes its counters once a message. Read at each write, they cost this process about
# 12 us of CPU a message (10,500 msg/s from smtp-source: 13% of a core), taken from the machine
# the measured side runs on, and a larger share of the faster side's CPU. Read at most every
# 5 ms (a 64 KiB pipe holds about 2,800 updates), they cost a fixed few hundred wake-ups a second
# whichever side runs, and a finish line is late by 5 ms at most.
_READ_PAUSE = 0.005


class SmtpSink:
    """``smtp-sink -c`` on 127.0.0.1:``port``: the counter of messages it took, and when.

    The counter is cumulative over the sink's life; a run reads :attr:`count` before it starts
    and waits for that plus N. :meth:`stop` and :meth:`start` again on the same port ("the sink
    went away and came back"); the count carries on across restarts.
    """

    def __init__(self, port: int, *, user: str = "nobody", backlog: int = 256) -> None:
        self.port = port
        self.user = user
        self.backlog = backlog
        self.process: subprocess.Popen[bytes] | None = None
        self._base = 0  # messages counted by earlier sink processes
        self._seen = 0  # this process's mesg=
        self.changed = time.monotonic()  # when the count last went up
        self.history: list[tuple[float, int]] = []  # (when, count) at each rise
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def count(self) -> int:
        with self._cond:
            return self._base + self._seen

    def start(self) -> None:
        command = [which("smtp-sink") or "smtp-sink", "-c", "-4", "-h", "sink.test"]
        if os.geteuid() == 0:
            command += ["-u", self.user]
        command += [f"127.0.0.1:{self.port}", str(self.backlog)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        wait_for_port(self.port, what="smtp-sink")

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        pending = b""
        while True:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                return
            now = time.monotonic()
            pending = (pending + chunk)[-256:]
            found = _MESG.findall(pending)
            if found:
                value = int(found[-1])
                with self._cond:
                    if value > self._seen:
                        self._seen = value
                        self.changed = now
                        self.history.append((now, self._base + value))
                        self._cond.notify_all()
            time.sleep(_READ_PAUSE)

    def reached(self, count: int) -> float | None:
        """When the count first reached ``count`` (monotonic), if it did."""
        with self._cond:
            for when, value in self.history:
                if value >= count:
                    return when
        return None

    def wait_for(
        self,
        target: int,
        *,
        stall: float,
        timeout: float,
        alive: Callable[[], str | None] | None = None,
    ) -> float:
        """Block until the count reaches ``target``; returns the monotonic time it got there.

        Gives up (SystemExit) when nothing arrived for ``stall`` seconds or ``timeout`` passed,
        or when ``alive()`` says what died.
        """
        started = time.monotonic()
        with self._cond:
            while self._base + self._seen < target:
                self._cond.wait(0.2)
                now = time.monotonic()
                problem = alive() if alive is not None else None
                if self.process is None or self.process.poll() is not None:
                    problem = "smtp-sink ended"
                if problem is None and now - max(self.changed, started) > stall:
                    problem = f"nothing arrived at the sink for {stall:g} s"
                if problem is None and now - started > timeout:
                    problem = f"timeout after {timeout:g} s"
                if problem is not None and self._base + self._seen < target:
                    raise SystemExit(
                        f"broken run: {target - self._base - self._seen} message(s) missing "
                        f"at the sink ({problem})"
                    )
            return self.changed

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(5)
        with self._cond:
            self._base += self._seen
            self._seen = 0


# -- the private Postfix ---------------------------------------------------------------------------

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{smtpd_line}
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A private Postfix under ``base``: ``base/etc`` (main.cf, master.cf), ``base/queue``,
    ``base/data``, ``base/maillog``; smtpd on 127.0.0.1:``smtpd_port``; relayhost the sink.

    Daemons run unchrooted (no copies of /etc files in the queue dir). ``start`` uses Postfix's
    ``quick-start`` file so the timed start is ``postfix start`` without its integrity checks
    (``check`` runs them once, at setup). The master and every daemon run in ``cpu`` (a
    :class:`CpuGroup`).
    """

    def __init__(self, base: Path, *, sink_port: int, smtpd_port: int, cpu: CpuGroup) -> None:
        self.base = base
        self.config = base / "etc"
        self.queue = base / "queue"
        self.data = base / "data"
        self.maillog = base / "maillog"
        self.sink_port = sink_port
        self.smtpd_port = smtpd_port
        self.cpu = cpu
        self.postfix = which("postfix") or "/usr/sbin/postfix"
        self.postconf = which("postconf") or "/usr/sbin/postconf"
        self.postqueue = which("postqueue") or "/usr/sbin/postqueue"
        self.sendmail_path = which("sendmail") or "/usr/sbin/sendmail"
        self.master_pid: int | None = None

    # -- setup ---------------------------------------------------------------------------------

    def main_cf(self) -> str:
        defaults = self._defaults(
            "daemon_directory", "command_directory", "meta_directory", "shlib_directory"
        )
        lines = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            **defaults,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-bench.test",
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtputf8_enable": "no",
            "syslog_name": "postfix-bench",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.base}",
            "smtpd_banner": "$myhostname ESMTP",
            # Retry deferred mail only when flushed (the flush path decides when it is due).
            "minimal_backoff_time": "3600s",
            "maximal_backoff_time": "7200s",
            "queue_run_delay": "3600s",
        }
        return "".join(f"{key} = {value}\n" for key, value in lines.items())

    def _defaults(self, *names: str) -> dict[str, str]:
        out = subprocess.run(
            [self.postconf, "-d", *names], capture_output=True, text=True, check=True
        ).stdout
        pairs = (line.partition(" = ") for line in out.splitlines())
        return {key: value for key, _, value in pairs}

    def setup(self) -> None:
        for path in (self.config, self.queue):
            path.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the daemons run as postfix and must reach their dirs
        (self.config / "main.cf").write_text(self.main_cf())
        smtpd = f"127.0.0.1:{self.smtpd_port} inet n - n - - smtpd"
        (self.config / "master.cf").write_text(MASTER_CF.format(smtpd_line=smtpd))
        # Creates the queue's subdirectories with Postfix's owners and modes.
        self._run([self.postfix, "-c", str(self.config), "check"], what="postfix check")
        self.maillog.touch()
        shutil.chown(self.maillog, "postfix")

    def _run(
        self, command: Sequence[str], *, what: str, data: bytes | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(command, check=False, capture_output=True, input=data, **kw)
        if done.returncode != 0:
            raise SystemExit(
                f"{what} failed (exit {done.returncode}):\n"
                + (done.stderr or b"").decode(errors="replace").strip()
                + self.log_tail()
            )
        return done

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.maillog.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n  Postfix log (last lines):\n    " + "\n    ".join(text) if text else ""

    # -- running -------------------------------------------------------------------------------

    def running(self) -> bool:
        pid_file = self.queue / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return False
        self.master_pid = pid
        return True

    def start(self) -> None:
        """``postfix start`` (its checks skipped through quick-start); returns once the master
        and its listeners are up."""
        (self.queue / "quick-start").touch()
        self._run(
            self.cpu.wrap([self.postfix, "-c", str(self.config), "start"]), what="postfix start"
        )
        if not self.running():
            raise SystemExit("postfix start returned, but no master runs" + self.log_tail())
        if self.cpu.kind == "proc":
            self.cpu.root_pid = self.master_pid

    def stop(self) -> None:
        if not self.running():
            return
        pid = self.master_pid
        subprocess.run(
            [self.postfix, "-c", str(self.config), "stop"], capture_output=True, check=False
        )
        deadline = time.monotonic() + 15
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
        else:
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self.cpu.kill()  # daemons that outlived their master
        self.master_pid = None

    def alive(self) -> str | None:
        """None while the master runs; else what happened (for SmtpSink.wait_for)."""
        return None if self.running() else "the Postfix master is gone" + self.log_tail()

    def sendmail(self, messages: Iterable[bytes], *, workers: int = 4) -> None:
        """Inject each message through Postfix's sendmail (postdrop into maildrop); the envelope
        comes from its X-Sender / X-Receiver lines, which are removed."""
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        def one(data: bytes) -> None:
            head, _, rest = data.partition(b"\r\nX-Receiver: ")
            sender = head.split(b": ", 1)[1].decode()
            rcpt, _, message = rest.partition(b"\r\n")
            self._run(
                [
                    self.sendmail_path,
                    "-C",
                    str(self.config),
                    "-i",
                    "-f",
                    sender,
                    "--",
                    rcpt.decode(),
                ],
                what="sendmail",
                data=message,
            )

        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, messages):
                pass

    def queue_counts(self) -> dict[str, int]:
        """Messages per queue (maildrop, incoming, active, deferred, hold) from the files."""
        counts = {}
        for name in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt", "bounce"):
            total = 0
            for _dir, _subdirs, files in os.walk(self.queue / name):
                total += len(files)
            counts[name] = total
        return counts

    def flush(self) -> None:
        """``postqueue -f``, counted in the instance's CPU group."""
        self._run(
            self.cpu.wrap([self.postqueue, "-c", str(self.config), "-f"]), what="postqueue -f"
        )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
