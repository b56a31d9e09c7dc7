"""DKIM signing at the Queue's one door (issue 13): signed once, as stored, sent with the signature.

Every way in (Pickup intake, ``Spool.admit`` as the listener uses it, a DSN) signs the message as
it is written into ``Queue/ID.eml``; the fields go into the envelope, and are put in front of the
stored bytes on the wire and in the Drop file. A BadMail requeue keeps the fields it had. What
arrives at a real aiosmtpd server on 127.0.0.1 is verified by dkimpy, given the public key instead
of a DNS lookup, for RSA and Ed25519; ``SIZE=`` counts the fields. A message without ``From:`` is
queued unsigned; a stored message changed after signing fails verification; a 20 MB message is
signed and sent in flat memory.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import pytest

from spoolmail import (
    DkimAlgorithm,
    DkimKey,
    DkimPolicy,
    DkimSigner,
    Limits,
    MailService,
    Outgoing,
    Reply,
    Router,
    SmtpTransport,
    Spool,
    Target,
    Transcript,
)
from spoolmail._core.envelope import decode_envelope, encode_envelope, new_envelope
from spoolmail._core.headers import fields
from spoolmail.exceptions import EnvelopeError
from spoolmail.testing import FakeClock, StaticResolver
from tests.smtpservers import SHORT, SmtpServer, smtp_server

dkim = pytest.importorskip("dkim")
pytest.importorskip("nacl")  # dkimpy verifies Ed25519 with PyNaCl

FQDN = "mail.example.com"
MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch@example.com>\r\n"
    b"\r\n"
    b"Noon at the usual place?\r\n"
    b".A line that starts with a dot\r\n"
)


def _key(algorithm: DkimAlgorithm) -> DkimKey:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: PLC0415

    if algorithm is DkimAlgorithm.ED25519_SHA256:
        return DkimKey(ed25519.Ed25519PrivateKey.generate())
    return DkimKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))


_KEYS = {algorithm: _key(algorithm) for algorithm in DkimAlgorithm}


@attrs.frozen
class Keys:
    """The signing policy of a test and the DNS records a verifier looks up."""

    policy: DkimPolicy
    records: Mapping[str, bytes]

    def lookup(self, name: bytes, timeout: int = 5) -> bytes:
        return self.records.get(name.decode(), b"")

    def verify(self, data: bytes) -> bool:
        return bool(dkim.verify(data, dnsfunc=self.lookup))


@pytest.fixture(params=list(DkimAlgorithm), ids=lambda a: a.key_type)
def keys(request: pytest.FixtureRequest) -> Keys:
    key = _KEYS[request.param]
    signers = [
        DkimSigner(key, domain="example.com", selector="s2026"),
        DkimSigner(key, domain=FQDN, selector="dsn"),  # DSNs come from postmaster@FQDN
    ]
    records = {f"{s.selector}._domainkey.{s.domain}.": key.txt_record().encode() for s in signers}
    return Keys(DkimPolicy(signers), records)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock, keys: Keys) -> Iterator[Spool]:
    with Spool(tmp_path / "MailRoot", clock=clock, dkim=keys.policy) as spool:
        yield spool


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def _service(spool: Spool, server: SmtpServer, clock: FakeClock) -> MailService:
    return MailService(
        spool,
        router=Router(local_domains=["example.com"], smart_host=str(server.target)),
        transport=SmtpTransport(helo_name=FQDN, timeouts=SHORT),
        clock=clock,
        fqdn=FQDN,
    )


def _run(spool: Spool, server: SmtpServer, clock: FakeClock) -> None:
    service = _service(spool, server, clock)
    try:
        report = service.run_once()
    finally:
        service.close()
    assert not report.errors, report.errors


def _announced_size(options: tuple[str, ...]) -> int:
    [size] = [int(o.partition("=")[2]) for o in options if o.upper().startswith("SIZE=")]
    return size


def _signed_by(data: bytes) -> list[str]:
    """The ``d=`` of every DKIM-Signature field of ``data``, in order."""
    head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    return [
        re.findall(r"(?:^|[;\s])d=([^;\s]+)", field.value)[0]
        for field in fields(head)
        if field.key == "dkim-signature"
    ]


# -- the ways in -------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_pickup_message_is_signed_once_as_stored_and_verifies_where_it_arrives(
    spool: Spool, server: SmtpServer, clock: FakeClock, keys: Keys
) -> None:
    # Intake changes the message before it is stored (Bcc removed, Received and Message-ID
    # added): the signature covers what is stored. The first attempt is deferred, the second
    # sends the same fields (no re-signing), and SIZE= counts them both times.
    queue_id = spool.submit(MESSAGE.replace(b"Subject:", b"Bcc: carol@remote.test\r\nSubject:"))
    server.handler.rcpt_answers = {"bob": "451 4.3.0 try later"}
    _run(spool, server, clock)
    envelope = spool.queued_message(queue_id).envelope
    stored = spool.message(queue_id)
    assert b"DKIM-Signature" not in stored  # the .eml is the message as stored, unchanged
    assert b"Bcc:" not in stored
    [field] = envelope.dkim
    assert field.startswith("DKIM-Signature: v=1; a=" + keys.policy.signers[0].key.algorithm.value)
    assert envelope.prepend == field.encode() + b"\r\n"
    assert keys.verify(envelope.prepend + stored)
    [to_carol] = server.messages  # the Bcc recipient was taken at once
    assert to_carol.rcpt_tos == ("carol@remote.test",)
    assert to_carol.data == envelope.prepend + stored
    assert _announced_size(to_carol.mail_options) == len(to_carol.data)

    server.handler.rcpt_answers = {}
    clock.advance(hours=2)
    _run(spool, server, clock)
    received = server.messages[1]
    assert received.rcpt_tos == ("bob@remote.test",)
    assert received.data == to_carol.data
    assert keys.verify(received.data)
    assert _signed_by(received.data) == ["example.com"]
    assert _announced_size(received.mail_options) == len(received.data)


@pytest.mark.integration
def test_a_message_admitted_like_the_listener_s_is_signed_with_its_received_field(
    spool: Spool, server: SmtpServer, clock: FakeClock, keys: Keys
) -> None:
    message = b"Received: from client.test ([127.0.0.1]) by mail.example.com\r\n" + MESSAGE
    queue_id = spool.admit(
        message, sender="alice@example.com", recipients=["bob@remote.test"], origin="smtp:127.0.0.1"
    )
    envelope = spool.queued_message(queue_id).envelope
    assert len(envelope.dkim) == 1
    assert spool.message(queue_id) == message
    _run(spool, server, clock)
    [received] = server.messages
    assert received.data == envelope.prepend + message
    assert keys.verify(received.data)
    assert _announced_size(received.mail_options) == len(received.data)


@pytest.mark.integration
def test_chunks_are_signed_as_they_stream_whatever_their_cuts(
    spool: Spool, server: SmtpServer, clock: FakeClock, keys: Keys
) -> None:
    # The header block's end split across chunks, a lone CR at a chunk's end.
    cut = MESSAGE.index(b"\r\n\r\n") + 1
    chunks = [MESSAGE[:5], MESSAGE[5:cut], MESSAGE[cut : cut + 2], MESSAGE[cut + 2 :]]
    queue_id = spool.admit(iter(chunks), sender="", recipients=["bob@remote.test"], origin="x")
    assert len(spool.queued_message(queue_id).envelope.dkim) == 1
    _run(spool, server, clock)
    [received] = server.messages
    assert keys.verify(received.data)


@pytest.mark.integration
def test_a_dsn_is_signed_for_the_postmaster_s_domain(
    spool: Spool, server: SmtpServer, clock: FakeClock, keys: Keys
) -> None:
    # No key for sender.test: the message goes unsigned; its failure notice comes from
    # postmaster@mail.example.com, which has a key, and returns the message as it was sent.
    message = MESSAGE.replace(b"alice@example.com", b"alice@sender.test").replace(
        b"bob@remote.test", b"reject@remote.test"
    )
    queue_id = spool.admit(
        message,
        sender="alice@sender.test",
        recipients=["reject@remote.test"],
        origin="smtp:127.0.0.1",
    )
    assert spool.queued_message(queue_id).envelope.dkim == ()
    _run(spool, server, clock)
    [dsn] = server.messages
    assert dsn.mail_from in {"<>", ""}
    assert dsn.rcpt_tos == ("alice@sender.test",)
    assert b"From: postmaster@mail.example.com" in dsn.data
    assert _signed_by(dsn.data) == [FQDN]
    assert keys.verify(dsn.data)
    assert _announced_size(dsn.mail_options) == len(dsn.data)


@pytest.mark.integration
def test_a_badmail_requeue_sends_the_fields_made_when_it_first_entered(
    spool: Spool, server: SmtpServer, clock: FakeClock, keys: Keys
) -> None:
    # A null-sender message refused for good goes to BadMail (nobody to return it to).
    server.handler.rcpt_answers = {"bob": "550 5.7.1 not from you"}
    queue_id = spool.admit(MESSAGE, sender="", recipients=["bob@remote.test"], origin="x")
    fields = spool.queued_message(queue_id).envelope.dkim
    assert len(fields) == 1
    _run(spool, server, clock)
    [item] = spool.badmail()
    assert item.envelope is not None
    assert item.envelope.dkim == fields
    clock.advance(hours=5)  # a new signature would have another t=
    server.handler.rcpt_answers = {}
    new_id = spool.requeue_badmail(item.id)
    assert spool.queued_message(new_id).envelope.dkim == fields
    _run(spool, server, clock)
    [received] = server.messages
    assert received.data.startswith(fields[0].encode() + b"\r\n")
    assert _signed_by(received.data) == ["example.com"]
    assert keys.verify(received.data)


def test_the_drop_file_carries_the_signature(spool: Spool, clock: FakeClock, keys: Keys) -> None:
    message = MESSAGE.replace(b"bob@remote.test", b"bob@example.com")
    queue_id = spool.submit(message)
    service = MailService(
        spool, router=Router(local_domains=["example.com"]), clock=clock, fqdn=FQDN
    )
    try:
        service.run_once()
    finally:
        service.close()
    drop = spool.drop_message(queue_id)
    lines = drop.split(b"\r\n")
    assert lines[0].startswith(b"x-sender: ")
    assert lines[1] == b"x-receiver: bob@example.com"
    assert lines[2].startswith(b"DKIM-Signature: ")
    without_envelope = b"\r\n".join(lines[2:])
    assert keys.verify(without_envelope)
    assert spool.drop_item(queue_id).recipients == ("bob@example.com",)


# -- what is not signed, and what breaks a signature ---------------------------------------------


@pytest.mark.integration
def test_a_message_without_from_is_queued_and_sent_unsigned(
    spool: Spool, server: SmtpServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    message = MESSAGE.split(b"\r\n", 1)[1]  # the From: line removed
    with caplog.at_level(logging.DEBUG, logger="spoolmail"):
        queue_id = spool.admit(
            message, sender="alice@example.com", recipients=["bob@remote.test"], origin="x"
        )
    assert spool.queued_message(queue_id).envelope.dkim == ()
    assert f"{queue_id} queued unsigned: the message has no From field" in caplog.messages
    raw = spool.fs.readbytes(f"Queue/{queue_id}.env")
    assert b'"dkim"' not in raw  # an unsigned envelope is what it always was
    _run(spool, server, clock)
    [received] = server.messages
    assert received.data == message
    assert _announced_size(received.mail_options) == len(message)


def test_no_policy_signs_nothing(tmp_path: Path, clock: FakeClock) -> None:
    with Spool(tmp_path / "MailRoot", clock=clock) as spool:
        assert spool.dkim is None
        queue_id = spool.admit(MESSAGE, sender="", recipients=["bob@remote.test"], origin="x")
        assert spool.queued_message(queue_id).envelope.dkim == ()
    with pytest.raises(TypeError, match="DkimPolicy"):
        Spool("mem://", dkim=[])  # type: ignore[arg-type]


@pytest.mark.integration
def test_a_stored_message_changed_after_signing_fails_verification(
    spool: Spool, server: SmtpServer, clock: FakeClock, keys: Keys
) -> None:
    queue_id = spool.admit(MESSAGE, sender="", recipients=["bob@remote.test"], origin="x")
    path = f"Queue/{queue_id}.eml"
    spool.fs.writebytes(path, spool.fs.readbytes(path).replace(b"Noon", b"Two!"))
    _run(spool, server, clock)
    [received] = server.messages
    assert b"Two!" in received.data
    assert not keys.verify(received.data)


# -- a large message: signed and sent in flat memory -------------------------------------------


class StreamingSink:
    """A transport that reads the message as the SMTP transport does, a block at a time, and
    writes it to a file: what was sent, without holding it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sizes: list[tuple[int, int]] = []  # (announced, read)

    def send(self, target: Target, message: Outgoing, transcript: Transcript) -> dict[str, Reply]:
        read = 0
        with message.open() as source, self.path.open("wb") as out:
            while block := source.read(64 * 1024):
                out.write(block)
                read += len(block)
        self.sizes.append((message.size, read))
        return dict.fromkeys(message.recipients, Reply(250, "2.0.0", "ok"))

    def close(self) -> None:
        return None


def test_a_20_mb_message_is_signed_and_sent_in_flat_memory(
    spool: Spool, clock: FakeClock, keys: Keys, tmp_path: Path
) -> None:
    size = 20 * 1024 * 1024
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ  \t trailing   \r\n"
    head = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    pickup = spool.fs.getsyspath("Pickup")
    with open(os.path.join(pickup, ".big.tmp"), "wb") as out:
        out.write(head)
        for _ in range(size // len(line)):
            out.write(line)
    os.rename(os.path.join(pickup, ".big.tmp"), os.path.join(pickup, "big.eml"))
    sink = StreamingSink(tmp_path / "sent.eml")
    service = MailService(
        spool,
        router=Router(smart_host="relay.test"),
        transport=sink,
        clock=clock,
        fqdn=FQDN,
        host_resolver=StaticResolver(fallback="127.0.0.1"),
        limits=Limits(max_message_size=32 * 1024 * 1024),
    )
    tracemalloc.start()
    try:
        report = service.run_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        service.close()
    assert len(report.delivered) == 1, report
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte message"
    [(announced, read)] = sink.sizes
    data = sink.path.read_bytes()
    assert announced == read == len(data) > size
    assert keys.verify(data)


# -- the parts: the envelope field and the outgoing reader --------------------------------------


def test_the_envelope_keeps_the_fields_and_older_files_read_without_them(clock: FakeClock) -> None:
    field = "DKIM-Signature: v=1; a=ed25519-sha256; d=example.com;\r\n s=s1; b=abc"
    envelope = new_envelope(
        "x", sender="", recipients=["b@x.test"], now=clock(), origin="t", dkim=[field]
    )
    raw = encode_envelope(envelope)
    assert decode_envelope(raw).dkim == (field,)
    assert decode_envelope(raw).prepend == field.encode() + b"\r\n"
    unsigned = encode_envelope(attrs.evolve(envelope, dkim=()))
    assert b"dkim" not in unsigned
    assert decode_envelope(unsigned).dkim == ()
    data = json.loads(raw)
    for bad in ("x", ["DKIM-Signature: a\r\n\r\nFrom: b"], ["no colon"], ["café: x"], [1]):
        data["dkim"] = bad
        with pytest.raises(EnvelopeError, match="dkim"):
            decode_envelope(json.dumps(data).encode())
    with pytest.raises(ValueError, match="header field"):
        attrs.evolve(envelope, dkim=["DKIM-Signature: x\r\n"])


@pytest.mark.parametrize("block", [1, 7, 100, 64 * 1024, -1])
def test_outgoing_reads_the_prepended_fields_then_the_stored_bytes(block: int) -> None:
    prepend, stored = b"DKIM-Signature: v=1; b=abc\r\n", b"From: a@b\r\n\r\nbody\r\n" * 50
    opened: list[io.BytesIO] = []

    def open_stored() -> io.BytesIO:
        opened.append(io.BytesIO(stored))
        return opened[-1]

    outgoing = Outgoing.stored(
        id="x",
        sender="",
        recipients=["b@x.test"],
        size=len(stored),
        open=open_stored,
        prepend=prepend,
    )
    assert outgoing.size == len(prepend) + len(stored)
    for _ in range(2):  # every attempt opens it afresh
        parts = []
        with outgoing.open() as source:
            while part := source.read(block):
                parts.append(part)
                if block < 0:
                    break
        assert b"".join(parts) == prepend + stored
        assert opened[-1].closed
    plain = Outgoing.stored(id="x", sender="", recipients=["b@x.test"], size=3, open=open_stored)
    assert plain.size == 3
    with plain.open() as source:
        assert source.read() == stored
