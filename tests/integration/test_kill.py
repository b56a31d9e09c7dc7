"""Crash safety: SIGKILL the service at random moments while 200 messages flow Pickup → Drop.

A real ``spoolmail run`` subprocess on a real MailRoot (OSFS, fsync on) is killed with SIGKILL
again and again, at random points, and restarted each time; then one last run finishes the work.
Afterwards every message is in Drop exactly once, and Pickup, Queue, BadMail and SortTemp are
empty (docs/design.md#crash-safety). The seed is printed so a failure can be replayed with
``SPOOLMAIL_KILL_SEED``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.commands import spoolmail_run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX"),
]

MESSAGES = 200
KILLS = 20


def start(root: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The service in a process group of its own: the parent and its workers (``--workers``,
    two per CPU by default) are killed together, at whatever point each of them is."""
    return subprocess.Popen(
        spoolmail_run(root, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def drop_markers(root: Path) -> list[int]:
    markers = []
    for path in (root / "Drop").iterdir():
        for line in path.read_bytes().split(b"\r\n"):
            if line.startswith(b"X-Test-Seq: "):
                markers.append(int(line.split(b": ")[1]))
                break
        else:
            pytest.fail(f"{path.name} has no X-Test-Seq header")
    return markers


def test_sigkill_at_random_points_loses_and_doubles_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("SPOOLMAIL_KILL_SEED", random.randrange(1 << 30)))
    print(f"kill test seed: {seed}")  # noqa: T201 (replay with SPOOLMAIL_KILL_SEED)
    rng = random.Random(seed)
    root = tmp_path / "MailRoot"
    subprocess.run(
        [sys.executable, "-m", "spoolmail", "--root", str(root), "init"],
        check=True,
        capture_output=True,
    )

    written = 0
    kills = 0
    deadline = time.monotonic() + 120
    while (written < MESSAGES or kills < KILLS) and time.monotonic() < deadline:
        # More mail arrives while the service runs and dies: writers rename into Pickup.
        for _ in range(rng.randint(5, 25)):
            if written == MESSAGES:
                break
            temp = root / "Pickup" / f"{written}.tmp"
            temp.write_bytes(
                b"x-sender: app@example.com\r\nx-receiver: user%d@example.com\r\n"
                b"From: app@example.com\r\nTo: user%d@example.com\r\nX-Test-Seq: %d\r\n"
                b"Subject: message %d\r\n\r\n%s\r\n"
                % (written, written, written, written, b"x" * rng.randint(10, 50_000))
            )
            temp.rename(root / "Pickup" / f"{written}.eml")
            written += 1
        process = start(root)
        # Kill while it works: wait until it has claimed something (start-up imports take
        # about 0.3 s), then a random moment more.
        waiting = sorted(os.listdir(root / "Pickup"))
        until = time.monotonic() + 3
        while (
            waiting and sorted(os.listdir(root / "Pickup")) == waiting and time.monotonic() < until
        ):
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.08))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        kills += 1
    assert written == MESSAGES, f"only {written} messages written before the deadline"

    # One last, undisturbed run finishes whatever the crashes left.
    for _ in range(5):
        finish = subprocess.run(
            spoolmail_run(root, "--once"),
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert finish.returncode == 0, finish.stderr.decode()
        if not any((root / "Pickup").iterdir()) and not any((root / "Queue").iterdir()):
            break

    markers = drop_markers(root)
    assert sorted(markers) == list(range(MESSAGES)), f"seed {seed}: duplicates or losses"
    for folder in ("Pickup", "Queue", "BadMail", "SortTemp"):
        assert sorted(os.listdir(root / folder)) == [], f"seed {seed}: {folder} is not empty"
