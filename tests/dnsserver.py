"""A real DNS server for tests: dnsmasq on 127.0.0.1 and a free port, serving ``.test`` names.

:class:`DnsServer` writes a dnsmasq configuration into a temporary directory, starts
``dnsmasq --keep-in-foreground`` listening on 127.0.0.1 only (UDP and TCP, one free port), waits
until it answers (about 0.1 s; it gives up after :data:`START_TIMEOUT` with dnsmasq's log in the
error) and stops it on exit (terminate, wait, kill). ``server.resolver()`` is a
``dns.resolver.Resolver(configure=False)`` aimed at it (``timeout=1``, ``lifetime=2``, no cache):
no test asks any other nameserver. dnsmasq's output goes to files, never a pipe that could fill and
stall it. Without dnsmasq (Debian: ``apt-get install --no-install-recommends dnsmasq-base``; it
lives in ``/usr/sbin``) the tests that need it are skipped, or fail when the environment sets
``SPOOLMAIL_REQUIRE_DNSMASQ=1``, as CI does.

The session fixture ``dns_server`` starts one server with :data:`RECORDS` for the whole run;
register it in ``tests/conftest.py`` with ``pytest_plugins = ["tests.dnsserver"]`` (or
``from tests.dnsserver import dns_server_fixture  # noqa: F401``). It serves:

============================  ==================================================================
name                          records
============================  ==================================================================
``example.test``              MX 10 ``mx1.example.test``, 10 ``mx2.example.test``,
                              20 ``backup.example.test`` (equal and different preferences)
``mx1.example.test``          A 127.0.0.11
``mx2.example.test``          A 127.0.0.12
``backup.example.test``       A 127.0.0.13
``implicit.test``             A 127.0.0.21, no MX (NODATA): the implicit MX
``dual.test``                 AAAA ::1 and A 127.0.0.31 (no MX: implicit MX, dual-stack)
``dualmx.test``               MX 10 ``dual.test``
``nullmx.test``               MX 0 ``.`` (RFC 7505 null MX)
``mixednull.test``            MX 0 ``.`` and 10 ``mx1.example.test`` (misconfigured null MX)
``dangling.test``             MX 10 ``nowhere.dangling.test``, which does not exist
``noaddress.test``            TXT only: exists, no MX, no address
``partial.test``              MX 10 ``mx.broken.test`` (fails), 20 ``backup.example.test``
``halfbroken.test``           MX 10 ``mx.broken.test`` (fails), 20 ``nowhere.halfbroken.test``
                              (does not exist)
``samehost.test``             MX 10 ``mx1.example.test``, 20 ``alias.samehost.test``, whose A is
                              also 127.0.0.11
``many.test``                 MX 1..12 ``m01.many.test`` .. ``m12.many.test``, each with the A
                              records 127.0.1.N, 127.0.2.N and 127.0.3.N (caps on addresses)
``wide.test``                 MX 1..12 ``n01.wide.test`` .. ``n12.wide.test``, none of which
                              exists (cap on exchangers)
any other name under .test    NXDOMAIN (``local=/test/``), e.g. ``nosuch.test``
anything under broken.test    REFUSED at once: dnspython's ``NoNameservers``, as for SERVFAIL
anything under slow.test      no answer (forwarded to a UDP socket nobody reads): a timeout
============================  ==================================================================

How the failing names fail, measured with dnsmasq 2.90: ``server=/broken.test/#`` ("use the
standard servers") with ``no-resolv`` leaves the zone without an upstream, and dnsmasq answers
REFUSED; dnspython treats REFUSED and SERVFAIL alike (``NoNameservers``, no retry). dnsmasq has no
setting that answers SERVFAIL itself, and forwarding to a closed port does not produce one either:
dnsmasq ignores the ICMP error and stays silent, as it does for ``slow.test``, which it forwards to
a bound UDP socket this class holds and never reads, so the client's lifetime runs out.

Every address here is in 127.0.0.0/8 or ::1, and dnsmasq forwards only to 127.0.0.1.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.resolver
import pytest

__all__ = [
    "LOCALHOST",
    "RECORDS",
    "REQUIRE_ENV",
    "DnsServer",
    "closed_port",
    "dns_server_fixture",
    "find_dnsmasq",
    "local_resolver",
]

LOCALHOST = "127.0.0.1"
REQUIRE_ENV = "SPOOLMAIL_REQUIRE_DNSMASQ"
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
_POLL = 0.05
_PORT_ATTEMPTS = 5


def _numbered(domain: str, prefix: str, *, addresses: bool) -> list[str]:
    lines = []
    for n in range(1, 13):
        host = f"{prefix}{n:02d}.{domain}"
        lines.append(f"mx-host={domain},{host},{n}")
        if addresses:
            lines.extend(f"host-record={host},127.0.{block}.{n}" for block in (1, 2, 3))
    return lines


RECORDS: tuple[str, ...] = (
    "mx-host=example.test,mx1.example.test,10",
    "mx-host=example.test,mx2.example.test,10",
    "mx-host=example.test,backup.example.test,20",
    "host-record=mx1.example.test,127.0.0.11",
    "host-record=mx2.example.test,127.0.0.12",
    "host-record=backup.example.test,127.0.0.13",
    "host-record=implicit.test,127.0.0.21",
    "host-record=dual.test,127.0.0.31,::1",
    "mx-host=dualmx.test,dual.test,10",
    "mx-host=nullmx.test,.,0",
    "mx-host=mixednull.test,.,0",
    "mx-host=mixednull.test,mx1.example.test,10",
    "mx-host=dangling.test,nowhere.dangling.test,10",
    'txt-record=noaddress.test,"no mail here"',
    "mx-host=partial.test,mx.broken.test,10",
    "mx-host=partial.test,backup.example.test,20",
    "mx-host=halfbroken.test,mx.broken.test,10",
    "mx-host=halfbroken.test,nowhere.halfbroken.test,20",
    "mx-host=samehost.test,mx1.example.test,10",
    "mx-host=samehost.test,alias.samehost.test,20",
    "host-record=alias.samehost.test,127.0.0.11",
    *_numbered("many.test", "m", addresses=True),
    *_numbered("wide.test", "n", addresses=False),
    # No upstream for broken.test (no-resolv): dnsmasq answers REFUSED.
    "server=/broken.test/#",
)
"""The records the session fixture serves, as dnsmasq configuration lines (see the table above)."""


def find_dnsmasq() -> str:
    """The dnsmasq binary; skips the test without it, or fails when CI requires it."""
    # /usr/sbin is not on an unprivileged user's PATH on Debian.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which("dnsmasq", path=path)
    if found:
        return found
    why = "dnsmasq is not installed (apt-get install --no-install-recommends dnsmasq-base)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{why}, and {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(why)


def local_resolver(
    port: int, *, timeout: float = 1.0, lifetime: float = 2.0
) -> dns.resolver.Resolver:
    """A resolver that asks only 127.0.0.1 on ``port``: no system configuration, no cache."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [LOCALHOST]
    resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = lifetime
    resolver.cache = None
    return resolver


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (UDP or TCP) right now."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOCALHOST, 0))
            port: int = udp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((LOCALHOST, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq serves both on one port)."""
    for _ in range(20):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind((LOCALHOST, 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind((LOCALHOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for UDP and TCP on 127.0.0.1")


class DnsServer:
    """dnsmasq serving ``records`` (dnsmasq lines) on 127.0.0.1; a context manager.

    ``with DnsServer(RECORDS) as server: server.resolver().resolve("example.test", "MX")``.
    ``port`` is where it listens (UDP and TCP), ``blackhole_port`` the silent UDP socket that
    ``slow.test`` is forwarded to (point a resolver at it for a nameserver that never answers),
    ``log`` dnsmasq's log so far (every query it saw: ``log-queries``).
    """

    def __init__(
        self,
        records: Iterable[str] = RECORDS,
        *,
        directory: Path | None = None,
        executable: str | None = None,
    ) -> None:
        self.records = tuple(records)
        self.executable = executable
        self.port = 0
        self._directory = directory
        self._own_directory = False
        self._process: subprocess.Popen[bytes] | None = None
        self._blackhole: socket.socket | None = None

    @property
    def blackhole_port(self) -> int:
        if self._blackhole is None:
            raise RuntimeError("the server is not running")
        port: int = self._blackhole.getsockname()[1]
        return port

    @property
    def log(self) -> str:
        if self._directory is None:
            return ""
        parts = []
        for name in ("dnsmasq.log", "dnsmasq.out"):
            path = self._directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def resolver(self, *, timeout: float = 1.0, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A resolver asking this server only (``configure=False``, no cache)."""
        if self._process is None:
            raise RuntimeError("the server is not running")
        return local_resolver(self.port, timeout=timeout, lifetime=lifetime)

    def start(self) -> None:
        executable = self.executable or find_dnsmasq()
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="spoolmail-dnsmasq-"))
            self._own_directory = True
        self._blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._blackhole.bind((LOCALHOST, 0))
        try:
            for _ in range(_PORT_ATTEMPTS):
                self.port = _free_port()
                if self._launch(executable):
                    return
                # Another process took the port between the check and dnsmasq's bind: again.
        except BaseException:
            self.stop()
            raise
        log = self.log
        self.stop()
        raise RuntimeError(f"dnsmasq found no free port in {_PORT_ATTEMPTS} tries:\n{log}")

    def _launch(self, executable: str) -> bool:
        """Start dnsmasq and wait until it answers; ``False`` when its port was taken."""
        assert self._directory is not None
        config = self._directory / "dnsmasq.conf"
        config.write_text("\n".join(self._config()) + "\n")
        (self._directory / "dnsmasq.log").write_text("")
        with (self._directory / "dnsmasq.out").open("wb") as out:
            self._process = subprocess.Popen(
                [executable, "--keep-in-foreground", f"--conf-file={config}"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        query = dns.message.make_query("ready.test", "A")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                self._process = None
                if "in use" in self.log:
                    return False
                raise RuntimeError(f"dnsmasq exited with status {returncode}:\n{self.log}")
            try:
                dns.query.udp(query, LOCALHOST, port=self.port, timeout=_POLL)
            except (dns.exception.Timeout, OSError):
                pass
            else:
                return True
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"dnsmasq did not answer on {LOCALHOST}:{self.port} within "
                    f"{START_TIMEOUT} s:\n{self.log}"
                )

    def _config(self) -> list[str]:
        assert self._directory is not None
        return [
            f"port={self.port}",
            f"listen-address={LOCALHOST}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "no-negcache",
            "pid-file=",
            # Run as whoever we are: as root dnsmasq would otherwise switch to the 'dnsmasq' user
            # (which may not exist); unprivileged it cannot switch, and naming itself is harmless.
            f"user={pwd.getpwuid(os.geteuid()).pw_name}",
            f"group={grp.getgrgid(os.getegid()).gr_name}",
            f"log-facility={self._directory / 'dnsmasq.log'}",
            "log-queries",
            "local=/test/",
            f"server=/slow.test/{LOCALHOST}#{self.blackhole_port}",
            *self.records,
        ]

    def stop(self) -> None:
        process, self._process = self._process, None
        try:
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT)
        finally:
            if self._blackhole is not None:
                self._blackhole.close()
                self._blackhole = None
            if self._own_directory and self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
                self._own_directory = False

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session", name="dns_server")
def dns_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    """One dnsmasq for the whole session, serving :data:`RECORDS`."""
    with DnsServer(RECORDS, directory=tmp_path_factory.mktemp("dnsmasq")) as server:
        yield server
