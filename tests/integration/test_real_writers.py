"""Real programs writing straight into a live Pickup: not one message may be delivered cut short.

Every real writer creates its file in Pickup and writes it in place (.NET's ``SmtpClient`` with
``SpecifiedPickupDirectory``, Mono, nodemailer's pickup transport, a shell's ``>``). Each test
runs a service on an OSFS MailRoot while a writer program fills Pickup, then compares every
message in Drop byte for byte with what the writer meant to write. Three ways to know a writer is
done are exercised: the read lease (the service is root, as CI is), inotify (the service and the
writer as two other users, so no lease can be had), and the settle time (files already open when
the service starts).
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from spoolmail import Durability, Limits, MailService, Router, Spool
from tests.integration.commands import spoolmail_run
from tests.peers import require_node_module, require_program
from tests.writers.pausing_writer import body as pausing_body

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="leases and inotify: Linux"),
]

WRITERS = Path(__file__).parent.parent / "writers"
COUNT = int(os.environ.get("SPOOLMAIL_WRITER_MESSAGES", "50"))
ATTACHMENT = 1024 * 1024
SERVICE_UID, WRITER_UID, SHARED_GID = 64001, 64002, 64000


def attachment(number: int) -> bytes:
    """What nodemailer_pickup.js attaches to message ``number``."""
    return bytes((number * 31 + k * 7) % 256 for k in range(ATTACHMENT))


@pytest.fixture
def root() -> Iterator[Path]:
    """A MailRoot outside pytest's private temp folder, so that other users can reach it."""
    base = Path(tempfile.mkdtemp(prefix="spoolmail-writers-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base / "MailRoot"
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Running:
    """A MailService delivering local mail to Drop, in a thread, until stopped."""

    def __init__(self, root: Path, **settings: object) -> None:
        self.spool = Spool(str(root), durability=Durability.NONE)
        self.service = MailService(
            self.spool,
            router=Router(local_domains=["example.com"]),
            fqdn="mail.example.com",
            limits=Limits(max_message_size=4 * 1024 * 1024),
            **settings,  # type: ignore[arg-type]
        )
        self.thread = threading.Thread(
            target=self.service.run_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(30)
        self.service.close()
        self.spool.close()


def wait_for_drop(root: Path, count: int, *, timeout: float = 180) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted((root / "Drop").glob("*.eml"))
        if len(found) >= count and not any((root / "Pickup").iterdir()):
            return found
        time.sleep(0.1)
    pytest.fail(f"{len(list((root / 'Drop').iterdir()))} of {count} messages in Drop in time")


def write_while_serving(root: Path, argv: list[str], *, count: int) -> list[Path]:
    """Run the writer ``argv`` while a service serves ``root``; Drop's files once all arrived."""
    running = Running(root)
    try:
        writer = subprocess.run(argv, capture_output=True, timeout=300, check=False)
        assert writer.returncode == 0, writer.stderr.decode()
        return wait_for_drop(root, count)
    finally:
        running.stop()


def assert_nothing_else(root: Path) -> None:
    assert sorted(os.listdir(root / "BadMail")) == []
    assert sorted(os.listdir(root / "Queue")) == []
    assert sorted(os.listdir(root / "Pickup")) == []


def test_nodemailer_pickup_transport_with_1_mib_attachments(root: Path) -> None:
    require_node_module("nodemailer")
    require_node_module("nodemailer-pickup-transport")
    node = require_program("node", package="nodejs")
    drops = write_while_serving(
        root,
        [
            node,
            str(WRITERS / "nodemailer_pickup.js"),
            str(root / "Pickup"),
            str(COUNT),
            str(ATTACHMENT),
        ],
        count=COUNT,
    )
    truncated = []
    for path in drops:
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        number = int(str(parsed["Subject"]).split()[-1])
        parts = [p for p in parsed.iter_attachments() if p.get_filename() == f"data{number}.bin"]
        if len(parts) != 1 or parts[0].get_content() != attachment(number):
            truncated.append(number)
    assert len(drops) == COUNT
    assert truncated == []
    assert_nothing_else(root)


def pausing_drops(root: Path) -> dict[int, bytes]:
    """Drop's messages from pausing_writer.py: number → body."""
    bodies = {}
    for path in sorted((root / "Drop").glob("*.eml")):
        data = path.read_bytes()
        subject = next(line for line in data.split(b"\r\n") if line.startswith(b"Subject: "))
        bodies[int(subject.split()[-1])] = data.split(b"\r\n\r\n", 1)[1]
    return bodies


def test_a_writer_that_pauses_mid_file_is_never_cut_short(root: Path) -> None:
    """50 files open at once, each paused 1.5 s halfway: the lease keeps every one whole."""
    write_while_serving(
        root,
        [
            sys.executable,
            str(WRITERS / "pausing_writer.py"),
            str(root / "Pickup"),
            str(COUNT),
            "1.5",
        ],
        count=COUNT,
    )
    bodies = pausing_drops(root)
    assert sorted(bodies) == list(range(COUNT))
    assert [n for n, data in bodies.items() if data != pausing_body(n)] == []
    assert_nothing_else(root)


def test_files_already_open_at_start_wait_for_the_settle_time(root: Path) -> None:
    """Open before the service starts, unseen by inotify, no lease (not the owner, no root)."""
    require_program("setpriv", package="util-linux")
    prepare_shared_root(root)
    writer = as_user(
        WRITER_UID,
        [sys.executable, str(WRITERS / "pausing_writer.py"), str(root / "Pickup"), "10", "1.0"],
    )
    time.sleep(0.3)  # the files exist, half written
    service = start_service_as(SERVICE_UID, root)
    try:
        outcome = finish(writer, 60)
        assert outcome.startswith("exit status 0"), outcome
        wait_for_drop(root, 10, timeout=60)
    finally:
        print(stop(service))  # noqa: T201 (the service's log, shown when the test fails)
    bodies = pausing_drops(root)
    assert [n for n, data in bodies.items() if data != pausing_body(n)] == []
    assert sorted(bodies) == list(range(10))


def test_service_and_writer_as_other_users_rely_on_inotify(root: Path) -> None:
    """No lease without ownership or CAP_LEASE: inotify's close event must keep files whole,
    even through a pause longer than the settle time."""
    require_program("setpriv", package="util-linux")
    prepare_shared_root(root)
    service = start_service_as(SERVICE_UID, root)
    try:
        wait_until_watching(root)
        writer = as_user(
            WRITER_UID,
            [
                sys.executable,
                str(WRITERS / "pausing_writer.py"),
                str(root / "Pickup"),
                str(COUNT),
                "3.0",
            ],
        )
        outcome = finish(writer, 120)
        assert outcome.startswith("exit status 0"), outcome
        wait_for_drop(root, COUNT)
    finally:
        print(stop(service))  # noqa: T201 (the service's log, shown when the test fails)
    bodies = pausing_drops(root)
    assert [n for n, data in bodies.items() if data != pausing_body(n)] == []
    assert sorted(bodies) == list(range(COUNT))
    assert_nothing_else(root)


# -- two users ----------------------------------------------------------------------------------


def prepare_shared_root(root: Path) -> None:
    """The layout docs/security.md recommends: the MailRoot the service user's, Pickup writable
    by the senders' group (setgid, so files keep the group)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the service and the writer as two other users")
    subprocess.run(
        [sys.executable, "-m", "spoolmail", "--root", str(root), "init"],
        check=True,
        capture_output=True,
    )
    for path in [root, *root.iterdir()]:
        os.chown(path, SERVICE_UID, SHARED_GID)
        path.chmod(0o700)
    root.chmod(0o755)
    (root / "Pickup").chmod(0o2770)


def as_user(uid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """Run ``argv`` as ``uid`` (no capabilities, no supplementary groups); its stderr goes to a
    file that :func:`finish` prints on failure."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish)
    process = subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={SHARED_GID}", "--clear-groups", *argv],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    LOGS[process.pid] = log
    return process


LOGS: dict[int, object] = {}


def finish(process: subprocess.Popen[bytes], timeout: float) -> str:
    """Wait for ``process``; its exit status and what it wrote on stderr."""
    try:
        status = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        status = process.wait(10)
    log = LOGS.pop(process.pid)
    log.seek(0)  # type: ignore[attr-defined]
    text = log.read().decode(errors="replace")  # type: ignore[attr-defined]
    log.close()  # type: ignore[attr-defined]
    return f"exit status {status}\n{text}"


def start_service_as(uid: int, root: Path) -> subprocess.Popen[bytes]:
    return as_user(uid, spoolmail_run(root, poll_interval=0.05))


def wait_until_watching(root: Path) -> None:
    """The service announces itself in SortTemp once it runs (and its watch is in place)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if list((root / "SortTemp").glob("*.owner")):
            return
        time.sleep(0.05)
    pytest.fail("the service did not start")


def stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    return finish(process, 20)


def test_mono_smtpclient_specified_pickup_directory(root: Path, tmp_path: Path) -> None:
    """Mono's SmtpClient (for .NET's): written in place, with a 1,500-octet unfolded To: line."""
    mcs = require_program("mcs", package="mono-mcs")
    mono = require_program("mono", package="mono-runtime")
    program = tmp_path / "MonoPickup.exe"
    subprocess.run(
        [mcs, "-nowarn:618", "-r:System.dll", f"-out:{program}", str(WRITERS / "MonoPickup.cs")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    drops = write_while_serving(
        root, [mono, str(program), str(root / "Pickup"), str(COUNT), "5000"], count=COUNT
    )
    assert len(drops) == COUNT
    for path in drops:
        data = path.read_bytes()
        head, _ = data.split(b"\r\n\r\n", 1)
        assert head.count(b"x-receiver: ") == 61
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        number = int(
            next(ln for ln in head.split(b"\r\n") if ln.startswith(b"Subject: ")).split()[-1]
        )
        expected = "".join(f"line {k} of message {number}\n" for k in range(5000))
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        assert parsed.get_content().replace("\r\n", "\n") == expected, path.name
        assert len(str(parsed["To"]).split(",")) == 61
    assert_nothing_else(root)
