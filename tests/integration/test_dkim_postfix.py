"""A signed message relayed by a real Postfix still verifies (issue 13).

spoolmail signs at the Queue's door and delivers to a private Postfix
(``bench/postfix_instance.py``, used as it is: its own config, queue and data directories under a
temp dir, listening on 127.0.0.1 only, no DNS), which relays to an aiosmtpd server on 127.0.0.1.
What that server receives, with Postfix's ``Received:`` field on top, is verified by dkimpy for
RSA and Ed25519. Postfix's daemons run as the ``postfix`` user, so this needs root and Debian's
``postfix``; it takes a few seconds (Postfix's start, its queue manager's pick-up), hence
``slow``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from spoolmail import (
    DkimAlgorithm,
    DkimKey,
    DkimPolicy,
    DkimSigner,
    MailService,
    Router,
    SmtpTransport,
    Spool,
)
from tests.peers import require_program
from tests.smtpservers import SHORT, SmtpServer, smtp_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

dkim = pytest.importorskip("dkim")
pytest.importorskip("nacl")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "postfix_instance.py"
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: Relayed\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"Through Postfix and out again.\r\n"
    b"..A line Postfix must dot-stuff and unstuff\r\n"
)


def _postfix_instance() -> ModuleType:
    spec = importlib.util.spec_from_file_location("postfix_instance", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("postfix_instance", module)
    spec.loader.exec_module(module)
    return module


def _key(algorithm: DkimAlgorithm) -> DkimKey:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: PLC0415

    if algorithm is DkimAlgorithm.ED25519_SHA256:
        return DkimKey(ed25519.Ed25519PrivateKey.generate())
    return DkimKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
def sink() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def postfix(sink: SmtpServer) -> Iterator[int]:
    """A private Postfix relaying everything to ``sink``; its smtpd's port."""
    require_program("postfix", package="postfix")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix needs root (its daemons run as the postfix user)")
    pf = _postfix_instance()
    base = Path(tempfile.mkdtemp(prefix="spoolmail-dkim-postfix-"))
    base.chmod(0o755)  # Postfix's daemons (user postfix) reach their queue through it
    cpu = pf.CpuGroup(f"spoolmail-dkim-postfix-{uuid.uuid4().hex[:8]}")
    port = pf.free_port()
    instance = pf.PostfixInstance(base / "postfix", sink_port=sink.port, smtpd_port=port, cpu=cpu)
    try:
        instance.setup()
        instance.start()
        pf.wait_for_port(port, what="Postfix smtpd")
        yield port
    finally:
        instance.stop()
        cpu.remove()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("algorithm", list(DkimAlgorithm), ids=lambda a: a.key_type)
def test_a_signed_message_verifies_after_relaying_through_postfix(
    algorithm: DkimAlgorithm, postfix: int, sink: SmtpServer, tmp_path: Path
) -> None:
    key = _key(algorithm)
    policy = DkimPolicy([DkimSigner(key, domain="example.com", selector="relay")])
    with Spool(tmp_path / "MailRoot", dkim=policy) as spool:
        service = MailService(
            spool,
            router=Router(smart_host=f"[127.0.0.1]:{postfix}"),
            transport=SmtpTransport(helo_name="mail.example.com", timeouts=SHORT),
            fqdn="mail.example.com",
        )
        try:
            queue_id = spool.submit(MESSAGE)
            report = service.run_once()
        finally:
            service.close()
        assert report.delivered == ((queue_id, "bob@remote.test"),), report
    deadline = time.monotonic() + 30
    while not sink.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    [received] = sink.messages
    assert received.data.startswith(b"Received: from ")  # Postfix's own, above our signature
    assert b"\r\nDKIM-Signature: v=1; a=" + algorithm.value.encode() in received.data
    assert b"\r\n..A line Postfix" in received.data

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"relay._domainkey.example.com."
        return key.txt_record().encode()

    assert dkim.verify(received.data, dnsfunc=lookup)
    assert not dkim.verify(received.data.replace(b"out again", b"out, again"), dnsfunc=lookup)
