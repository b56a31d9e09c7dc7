"""The floor of the flush: what a relay written in plain Python, with none of spoolmail's layers,
costs a message on this machine (issue 12; bench/README.md, "Twelfth round").

It relays the deferred messages of a MailRoot's Queue (``ID.eml``, ``ID.env``, ``ID.RTR``, as
``spoolmail run`` leaves them when the smart host is down) to an SMTP server that offers
PIPELINING (``smtp-sink``), doing per message only what the flush must do on disk and on the
wire, durability rules as spoolmail's:

- claim the envelope with a rename, read it, ``json.loads`` it (sender, pending recipients);
- read the message, dot-stuff it, send MAIL, RCPT and DATA in one write, read the three
  replies, send the data and the final dot in one write, read the verdict;
- delete the message, the transcript and the claimed envelope; append one JSON line to a log.

No transcript, no events, no retry decisions, no threads: ``--workers`` processes (default 4,
as ``spoolmail run`` on two CPUs), each with one connection and its own part of the ids (CRC-32,
as spoolmail's shares). It prints the rate and the CPU a message of the whole group (the
children's ``getrusage``). It changes the MailRoot: run it on a copy. A measuring tool, not
part of spoolmail; nothing here is used by the package.

    python bench/floor_flush.py COPY_OF_MAILROOT 127.0.0.1:PORT [--workers 4]
    python bench/floor_flush.py NEW_ROOT 127.0.0.1:PORT --prepare 5000   # make it, then relay

``bench_postfix.py --floor`` runs it beside each flush pair, on a copy of the same Queue.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path


def replies(sock: socket.socket, count: int, pending: bytearray) -> list[bytes]:
    """``count`` whole replies (their last lines), reading as needed."""
    found: list[bytes] = []
    while len(found) < count:
        end = pending.find(b"\r\n")
        if end < 0:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("the server closed the connection")
            pending += data
            continue
        line = bytes(pending[:end])
        del pending[: end + 2]
        if line[3:4] != b"-":
            found.append(line)
    return found


def relay(root: Path, server: tuple[str, int], ids: list[str]) -> None:
    queue = root / "Queue"
    log = os.open(root / "floor.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sock = socket.create_connection(server)
    pending = bytearray()
    replies(sock, 1, pending)
    sock.sendall(b"EHLO floor.test\r\n")
    replies(sock, 1, pending)
    for queue_id in ids:
        envelope = queue / f"{queue_id}.env"
        claimed = queue / f"{queue_id}.env.floor"
        os.rename(envelope, claimed)
        with open(claimed, "rb") as file:
            data = json.loads(file.read())
        rcpts = [r["address"] for r in data["recipients"] if r["state"] == "pending"]
        with open(queue / f"{queue_id}.eml", "rb") as file:
            body = file.read()
        body = b"\r\n..".join(body.split(b"\r\n."))
        if body.startswith(b"."):
            body = b"." + body
        head = f"MAIL FROM:<{data['sender']}>\r\n"
        head += "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n"
        sock.sendall(head.encode())
        got = replies(sock, 2 + len(rcpts), pending)
        if not got[-1].startswith(b"354"):
            raise SystemExit(f"{queue_id}: {got!r}")
        sock.sendall(body + b".\r\n")
        verdict = replies(sock, 1, pending)[0]
        if not verdict.startswith(b"250"):
            raise SystemExit(f"{queue_id}: {verdict!r}")
        os.unlink(queue / f"{queue_id}.eml")
        os.unlink(queue / f"{queue_id}.RTR")
        os.unlink(claimed)
        line = {"id": queue_id, "reply": verdict.decode(), "time": time.time()}
        os.write(log, json.dumps(line).encode() + b"\n")
    sock.sendall(b"QUIT\r\n")
    sock.close()
    os.close(log)


def prepare(root: Path, count: int) -> None:
    """``root`` made with ``count`` deferred 2 KB messages, as the Postfix comparison's flush
    has them: written into Pickup, then one ``spoolmail run --once`` against a port where
    nothing listens, with retries a day apart."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_postfix  # noqa: PLC0415 (the comparison's messages, only when asked)
    import postfix_instance  # noqa: PLC0415

    (root / "Pickup").mkdir(parents=True)
    bench_postfix.write_pickup(root / "Pickup", count, 2048)
    nobody = postfix_instance.free_port()
    command = [*bench_postfix.SPOOLMAIL, "--root", str(root), "run", "--once"]
    command += ["--fqdn", "floor.test", "--smart-host", f"[127.0.0.1]:{nobody}"]
    retries = ["--retry-intervals", "1440,1440,1440"]
    subprocess.run([*command, *retries], check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a copy of a MailRoot with deferred messages")
    parser.add_argument("server", help="HOST:PORT of an SMTP server with PIPELINING")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--prepare", type=int, metavar="COUNT", help="make ROOT first, with COUNT deferred messages"
    )
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.root, args.prepare)
    host, _, port = args.server.rpartition(":")
    ids = sorted(name[:-4] for name in os.listdir(args.root / "Queue") if name.endswith(".env"))
    parts: list[list[str]] = [[] for _ in range(args.workers)]
    for queue_id in ids:
        parts[zlib.crc32(queue_id.encode()) % args.workers].append(queue_id)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    children = []
    for part in parts:
        pid = os.fork()
        if pid == 0:
            status = 1  # whatever stops the relay (a refused message, a lost connection) fails it
            try:
                relay(args.root, (host, int(port)), part)
                status = 0
            except BaseException as exc:  # noqa: BLE001 (said here; the parent counts the failure)
                print(f"floor_flush.py: {exc}", file=sys.stderr)
            finally:
                os._exit(status)
        children.append(pid)
    failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in children)
    if failed:
        print(f"{failed} of {len(children)} relays failed (above): no figures", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = (
        (after - earlier) / len(ids) * 1000
        for after, earlier in ((usage.ru_utime, before.ru_utime), (usage.ru_stime, before.ru_stime))
    )
    print(
        f"{len(ids)} messages in {took:.2f} s: {len(ids) / took:.0f} msg/s, "
        f"{user + system:.3f} ms of CPU a message (user {user:.3f}, system {system:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
