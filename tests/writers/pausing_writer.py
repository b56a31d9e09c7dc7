"""Writes COUNT messages straight into a Pickup folder, each pausing PAUSE seconds mid-body.

As .NET's SmtpClient and a shell's ``>`` do, every file is created in Pickup and written in
place; the pause is the slow writer (a big attachment, a busy machine) that a poll must not cut
short. All COUNT files are open at once (one thread each). Usage:
``python pausing_writer.py PICKUP_DIR COUNT PAUSE``; prints each file's name when it is closed.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path


def body(number: int) -> bytes:
    """The body of message ``number``: what the test expects in Drop, byte for byte."""
    return b"".join(b"line %d of message %d\r\n" % (k, number) for k in range(2000))


def head(number: int) -> bytes:
    return (
        b"From: alice@example.com\r\nTo: bob@example.com\r\n"
        b"Subject: pausing %d\r\nMessage-ID: <pausing-%d@example.com>\r\n\r\n" % (number, number)
    )


def write(folder: Path, number: int, pause: float) -> None:
    data = head(number) + body(number)
    half = len(data) // 2
    with (folder / f"pausing-{number}.eml").open("wb") as handle:
        handle.write(data[:half])
        handle.flush()
        time.sleep(pause)
        handle.write(data[half:])
    print(f"pausing-{number}.eml", flush=True)  # noqa: T201 (the writer reports what it wrote)


def main() -> None:
    folder, count, pause = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    threads = [threading.Thread(target=write, args=(folder, n, pause)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
