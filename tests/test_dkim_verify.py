"""What spoolmail signs, verified by others: dkimpy, and OpenDKIM's ``opendkim-testmsg``.

dkimpy (with PyNaCl for Ed25519) gets the public key through its ``dnsfunc`` argument: no DNS.
``opendkim-testmsg`` (Debian ``opendkim-tools``) has no such option: it asks the system resolver.
So it runs in a network and mount namespace of its own (``unshare --net --mount``), where
``/etc/resolv.conf`` is bind-mounted to name ``127.0.0.1``, a small dnspython responder on
``127.0.0.1:53`` answers the key's TXT query, and loopback is the only interface: no query can
leave the machine. Where namespaces cannot be made (an unprivileged container), those tests are
skipped, or fail under ``SPOOLMAIL_REQUIRE_PEERS=1`` as a missing program does.

The signing time is the real clock here (verifiers refuse a ``t=`` in the future); the message
given to a verifier is the one the SMTP transport sends: the fields, then the stored bytes through
its ``DataEncoder`` (every line end CRLF, a CRLF at the end), dot-stuffing undone.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolmail._cli.dkim import add_commands, generate_key, keygen
from spoolmail._cli.settings import Settings
from spoolmail._core.dkim import (
    Canonicalization,
    DkimAlgorithm,
    DkimKey,
    DkimPolicy,
    DkimSigner,
)
from spoolmail._core.headers import split_head
from spoolmail._transport.data import DataEncoder
from spoolmail.exceptions import ConfigurationError
from tests.peers import REQUIRE_ENV, require_program

SIMPLE, RELAXED = Canonicalization.SIMPLE, Canonicalization.RELAXED
CANONICALIZATIONS = [(RELAXED, RELAXED), (SIMPLE, SIMPLE), (RELAXED, SIMPLE), (SIMPLE, RELAXED)]
MESSAGE = (
    "From: Jörg Müller <joerg@example.com>\r\n"
    "To: Zoë <zoe@example.net>, bob@example.net\r\n"
    "Subject:  Grüße   aus\tKöln \r\n\t(und  mehr)\r\n"
    "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <1@example.com>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "List-Unsubscribe: <https://example.com/u?id=1>\r\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    "\r\n"
    "Bis später,  \r\n\tJörg\r\n\r\n\r\n"
).encode()


@pytest.fixture(scope="module")
def keys() -> dict[DkimAlgorithm, DkimKey]:
    return {
        DkimAlgorithm.RSA_SHA256: DkimKey(
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ),
        DkimAlgorithm.ED25519_SHA256: DkimKey(ed25519.Ed25519PrivateKey.generate()),
    }


def now() -> datetime:
    return datetime.now(UTC)


def signer(
    key: DkimKey,
    canonicalization: tuple[Canonicalization, Canonicalization] = (RELAXED, RELAXED),
    *,
    domain: str = "example.com",
    selector: str | None = None,
) -> DkimSigner:
    return DkimSigner(
        key,
        domain=domain,
        selector=selector or key.algorithm.key_type,
        header_canonicalization=canonicalization[0],
        body_canonicalization=canonicalization[1],
    )


def dns(*signers: DkimSigner) -> Callable[..., bytes]:
    """dkimpy's ``dnsfunc``: the signers' key records and nothing else."""
    records = {
        f"{s.selector}._domainkey.{s.domain}.".encode(): s.key.txt_record().encode()  # type: ignore[attr-defined]
        for s in signers
    }

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name, b"")

    return lookup


def wire(fields: bytes, stored: bytes) -> bytes:
    """What a receiver gets: the fields, then the stored message as the SMTP transport's
    DataEncoder sends it (CRLF line ends, a final CRLF), dot-stuffing undone."""
    encoder = DataEncoder()
    data = encoder.encode(stored) + encoder.finish()
    assert data.endswith(b"\r\n.\r\n")
    text = (b"\r\n" + data[: -len(b".\r\n")]).replace(b"\r\n..", b"\r\n.")[2:]
    return fields + text


def dkimpy_verdicts(message: bytes, lookup: Callable[..., bytes]) -> list[bool]:
    """dkimpy's result for each DKIM-Signature, top to bottom."""
    checker = dkim.DKIM(message, minkey=1024)
    count = len(re.findall(rb"(?im)^DKIM-Signature:", split_head(message)[0]))
    return [_verify_one(checker, index, lookup) for index in range(count)]


def _verify_one(checker: dkim.DKIM, index: int, lookup: Callable[..., bytes]) -> bool:
    try:
        return bool(checker.verify(idx=index, dnsfunc=lookup))
    except dkim.DKIMException:  # a body hash mismatch is raised, a bad b= returned
        return False


# -- dkimpy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS, ids=lambda c: f"{c[0].value}")
@pytest.mark.parametrize("algorithm", list(DkimAlgorithm), ids=lambda a: a.value)
def test_dkimpy_verifies_and_catches_tampering(
    keys: dict[DkimAlgorithm, DkimKey],
    algorithm: DkimAlgorithm,
    canonicalization: tuple[Canonicalization, Canonicalization],
) -> None:
    made = signer(keys[algorithm], canonicalization)
    fields = made.sign(MESSAGE, now=now())
    lookup = dns(made)
    assert dkimpy_verdicts(wire(fields, MESSAGE), lookup) == [True]
    for tampered in (
        MESSAGE.replace("später".encode(), b"spaeter"),  # the body
        MESSAGE.replace(b"Message-ID: <1@", b"Message-ID: <2@"),  # a signed field
        MESSAGE.replace(b"\r\n\r\n", b"\r\nSubject: added\r\n\r\n", 1),  # an oversigned one
        b"From: mallory@example.org\r\n" + MESSAGE,  # a second From
        MESSAGE.replace(b"Date: ", b"List-Unsubscribe: <https://evil.example>\r\nDate: "),
    ):
        assert dkimpy_verdicts(wire(fields, tampered), lookup) == [False]


def test_dkimpy_verifies_an_rsa_and_an_ed25519_signature_side_by_side(
    keys: dict[DkimAlgorithm, DkimKey],
) -> None:
    signers = [signer(key) for key in keys.values()]
    fields = DkimPolicy(signers).sign(MESSAGE, now=now())
    assert fields.count(b"DKIM-Signature:") == 2
    assert dkimpy_verdicts(wire(fields, MESSAGE), dns(*signers)) == [True, True]


def test_changes_a_relaxed_verifier_forgives(keys: dict[DkimAlgorithm, DkimKey]) -> None:
    """relaxed/relaxed survives refolding and white space changes; simple/simple does not."""
    relaxed = signer(keys[DkimAlgorithm.ED25519_SHA256])
    simple = signer(keys[DkimAlgorithm.RSA_SHA256], (SIMPLE, SIMPLE))
    fields = relaxed.sign(MESSAGE, now=now()) + simple.sign(MESSAGE, now=now())
    refolded = MESSAGE.replace("Grüße   aus".encode(), "Grüße\r\n aus".encode()).replace(
        "Bis später,  ".encode(), "Bis  später,".encode()
    )
    assert refolded != MESSAGE
    assert dkimpy_verdicts(wire(fields, refolded), dns(relaxed, simple)) == [True, False]


def test_bare_line_ends_are_signed_as_the_transport_sends_them(
    keys: dict[DkimAlgorithm, DkimKey],
) -> None:
    stored = MESSAGE.replace(b"Bis", b"one\nbare LF\rand CR\r\nBis")
    for canonicalization in CANONICALIZATIONS:
        made = signer(keys[DkimAlgorithm.ED25519_SHA256], canonicalization)
        fields = made.sign(stored, now=now())
        assert dkimpy_verdicts(wire(fields, stored), dns(made)) == [True]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(DkimAlgorithm), ids=lambda a: a.value)
def test_a_20_mb_body_streamed_in_64_kib_chunks(
    keys: dict[DkimAlgorithm, DkimKey], algorithm: DkimAlgorithm
) -> None:
    line = b"0123456789 abcdefghij  KLMNOPQRST \t.,;:-_!? " * 2 + b"\r\n"
    chunk = line * (64 * 1024 // len(line))
    count = 20 * 1024 * 1024 // len(chunk) + 1
    head, _ = split_head(MESSAGE)
    signers = [
        signer(keys[algorithm], (RELAXED, RELAXED), selector="r"),
        signer(keys[algorithm], (SIMPLE, SIMPLE), selector="s"),
    ]
    session = DkimPolicy(signers).start(head)
    for _ in range(count):
        session.feed(chunk)
    fields = session.finish(now())
    message = fields + head + b"\r\n" + chunk * count
    assert len(message) > 20 * 1024 * 1024
    assert dkimpy_verdicts(message, dns(*signers)) == [True, True]


# -- random messages: dkimpy verifies what we sign -----------------------------------------------

_TEXT = st.lists(
    st.sampled_from(
        ["a", "Z", "0", " ", "  ", "\t", "é", "€", "日本", ":", ";", "=", "<>", "@", "."]
    ),
    max_size=12,
).map("".join)
_NAMES = st.sampled_from(
    ["To", "to", "Cc", "Subject", "SUBJECT", "Date", "Reply-To", "X-Other", "List-Id", "Received"]
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    lines = [("From", draw(_TEXT) + " <a@example.com>" + draw(_TEXT))]
    lines += draw(st.lists(st.tuples(_NAMES, _TEXT), max_size=8))
    order = draw(st.permutations(range(len(lines))))
    head = b""
    for index in order:
        name, value = lines[index]
        if draw(st.booleans()) and " " in value:  # fold at a space
            value = value.replace(" ", "\r\n ", 1)
        head += f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{value}\r\n".encode()
    body = draw(
        st.lists(
            st.sampled_from(
                [b" ", b"\t", b"\r\n", b"\n", b"\r", b"text", b"\xc3\xa9", b". ", b"\r\n\r\n"]
            ),
            max_size=30,
        )
    )
    return head + b"\r\n" + b"".join(body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=messages(),
    canonicalization=st.sampled_from(CANONICALIZATIONS),
    algorithm=st.sampled_from(list(DkimAlgorithm)),
    chunk=st.sampled_from([1, 3, 64 * 1024]),
)
def test_dkimpy_verifies_random_messages(
    keys: dict[DkimAlgorithm, DkimKey],
    message: bytes,
    canonicalization: tuple[Canonicalization, Canonicalization],
    algorithm: DkimAlgorithm,
    chunk: int,
) -> None:
    made = signer(keys[algorithm], canonicalization)
    head, body = split_head(message)
    session = made.start(head)
    for start in range(0, len(body), chunk):
        session.feed(body[start : start + chunk])
    fields = session.finish(now())
    assert dkimpy_verdicts(wire(fields, message), dns(made)) == [True]


# -- OpenDKIM ------------------------------------------------------------------------------------

# Runs as root of a new network and mount namespace; argv: opendkim-testmsg, records (JSON
# {name: TXT value}), the message file. Prints READY once the namespace is set up, then the
# verifier's status and stderr as JSON.
_IN_NAMESPACE = r"""
import fcntl, json, socket, struct, subprocess, sys, tempfile, threading
import dns.message, dns.rrset

program, records, message = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # ip link set lo up
    IFF_UP, IFF_LOOPBACK, IFF_RUNNING, SIOCSIFFLAGS = 0x1, 0x8, 0x40, 0x8914
    flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags, bytes(14)))
folder = tempfile.mkdtemp()
with open(folder + "/resolv.conf", "w") as file:
    file.write("nameserver 127.0.0.1\noptions edns0\n")
subprocess.run(["mount", "--bind", folder + "/resolv.conf", "/etc/resolv.conf"], check=True)

def answer(wire):
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    name = query.question[0].name
    value = records.get(name.to_text().lower())
    if value is None:
        response.set_rcode(3)
    else:
        strings = " ".join('"%s"' % value[i : i + 255] for i in range(0, len(value), 255))
        response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", strings))
    return response.to_wire()

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("127.0.0.1", 53))
tcp.listen()

def serve_udp():
    while True:
        data, peer = udp.recvfrom(65535)
        udp.sendto(answer(data), peer)

def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        with conn:
            size = struct.unpack("!H", conn.recv(2))[0]
            data = b""
            while len(data) < size:
                data += conn.recv(size - len(data))
            reply = answer(data)
            conn.sendall(struct.pack("!H", len(reply)) + reply)

threading.Thread(target=serve_udp, daemon=True).start()
threading.Thread(target=serve_tcp, daemon=True).start()
print("READY", flush=True)
with open(message, "rb") as stdin:
    result = subprocess.run([program], stdin=stdin, capture_output=True, timeout=60)
print(json.dumps({"status": result.returncode, "stderr": result.stderr.decode(errors="replace")}))
"""


def opendkim(message: bytes, signers: list[DkimSigner], tmp_path: Path) -> tuple[int, str]:
    """``opendkim-testmsg``'s exit status and complaint for ``message``; 0 means verified."""
    program = require_program("opendkim-testmsg", package="opendkim-tools")
    unshare = require_program("unshare", package="util-linux")
    records = {
        f"{s.selector}._domainkey.{s.domain}.": s.key.txt_record()  # type: ignore[attr-defined]
        for s in signers
    }
    path = tmp_path / "message.eml"
    path.write_bytes(message)
    namespace = [unshare, "--net", "--mount"]
    if os.geteuid() != 0:
        namespace.append("--map-root-user")
    result = subprocess.run(
        [*namespace, sys.executable, "-c", _IN_NAMESPACE, program, json.dumps(records), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if not result.stdout.startswith("READY"):
        why = f"no network namespace for opendkim-testmsg: {result.stderr.strip()[-300:]}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{why}, and {REQUIRE_ENV}=1 requires it", pytrace=False)
        pytest.skip(why)
    verdict = json.loads(result.stdout.splitlines()[-1])
    return verdict["status"], verdict["stderr"]


@pytest.mark.integration
@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS, ids=lambda c: f"{c[0].value}")
@pytest.mark.parametrize("algorithm", list(DkimAlgorithm), ids=lambda a: a.value)
def test_opendkim_verifies_and_catches_tampering(
    keys: dict[DkimAlgorithm, DkimKey],
    algorithm: DkimAlgorithm,
    canonicalization: tuple[Canonicalization, Canonicalization],
    tmp_path: Path,
) -> None:
    made = signer(keys[algorithm], canonicalization)
    fields = made.sign(MESSAGE, now=now())
    assert opendkim(wire(fields, MESSAGE), [made], tmp_path) == (0, "")
    status, complaint = opendkim(
        wire(fields, MESSAGE.replace(b"Subject:", b"Subject: Re:")), [made], tmp_path
    )
    assert status != 0
    assert "Bad signature" in complaint


@pytest.mark.integration
def test_opendkim_refuses_an_unsigned_message(tmp_path: Path) -> None:
    """So a 0 above means a signature was checked, not that nothing was."""
    status, complaint = opendkim(MESSAGE, [], tmp_path)
    assert status != 0
    assert "No signature" in complaint or "signature" in complaint.lower()


# -- keygen ------------------------------------------------------------------------------------


def record_of(zone_line: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', zone_line))


@pytest.mark.parametrize(("algorithm", "k"), [("rsa", "rsa"), ("ed25519", "ed25519")])
def test_keygen_writes_a_private_key_whose_record_verifies(
    tmp_path: Path, algorithm: str, k: str
) -> None:
    path, line = keygen("Example.COM", "s2026", algorithm=algorithm, out_dir=tmp_path / "keys")
    assert path == tmp_path / "keys" / "s2026.private"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert line.startswith('s2026._domainkey.example.com. IN TXT "v=DKIM1; k=' + k + "; p=")
    key = DkimKey.from_pem(path.read_bytes())
    made = DkimSigner(key, domain="example.com", selector="s2026")
    fields = made.sign(MESSAGE, now=now())

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s2026._domainkey.example.com."
        return record_of(line).encode()

    assert dkimpy_verdicts(wire(fields, MESSAGE), lookup) == [True]


def test_keygen_rsa_2048_record_is_split_in_255_octet_strings(tmp_path: Path) -> None:
    _, line = keygen("example.com", "big", out_dir=tmp_path)
    strings = re.findall(r'"([^"]*)"', line)
    assert [len(s) <= 255 for s in strings] == [True, True]
    p = record_of(line).partition("p=")[2]
    assert len(base64.b64decode(p)) == 294  # the DER SubjectPublicKeyInfo of a 2048-bit key


def test_keygen_never_replaces_a_key(tmp_path: Path) -> None:
    path, _ = keygen("example.com", "s1", algorithm="ed25519", out_dir=tmp_path)
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="exists"):
        keygen("example.com", "s1", algorithm="ed25519", out_dir=tmp_path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bits": 512}, "1024 to 4096"),
        ({"bits": 8192}, "1024 to 4096"),
        ({"algorithm": "dsa"}, "rsa or ed25519"),
        ({"selector": "no good"}, "not a DKIM selector"),
        ({"domain": "bad domain"}, "DKIM domain"),
    ],
)
def test_keygen_refuses_before_writing(
    tmp_path: Path, arguments: dict[str, object], message: str
) -> None:
    call: dict[str, object] = {"domain": "example.com", "selector": "s1", **arguments}
    domain, selector = call.pop("domain"), call.pop("selector")
    with pytest.raises(ConfigurationError, match=message):
        keygen(domain, selector, out_dir=tmp_path, **call)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_generated_keys_have_the_size_asked_for() -> None:
    assert generate_key(DkimAlgorithm.RSA_SHA256, bits=3072).bits == 3072
    assert generate_key(DkimAlgorithm.ED25519_SHA256).algorithm is DkimAlgorithm.ED25519_SHA256


def run_command(*argv: str) -> tuple[int, str]:
    """``spoolmail dkim ...`` on a command tree holding only ``dkim`` (as main registers it)."""
    parser = argparse.ArgumentParser(prog="spoolmail")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out = io.StringIO()
    status = args.handler(Settings(), args, out)
    return status, out.getvalue()


def test_the_keygen_command(tmp_path: Path) -> None:
    status, out = run_command(
        "dkim", "keygen", "example.com", "mail2026", "--algorithm", "ed25519", "--out",
        str(tmp_path),
    )  # fmt: skip
    assert status == 0
    comment, line = out.splitlines()
    assert (
        comment == f"; {tmp_path / 'mail2026.private'}: ed25519-sha256; publish this record in DNS:"
    )
    assert line.startswith('mail2026._domainkey.example.com. IN TXT "v=DKIM1; k=ed25519; p=')
    status, out = run_command("dkim", "keygen", "example.com", "r", "--out", str(tmp_path))
    assert out.splitlines()[0].endswith(": rsa-sha256, 2048 bits; publish this record in DNS:")


def test_spoolmail_imports_without_cryptography() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import spoolmail, spoolmail._core.dkim, spoolmail._cli.dkim\n"
        "from spoolmail._core.dkim import DkimKey\n"
        "try:\n"
        "    DkimKey.from_pem(b'')\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("DependencyError DKIM signing needs cryptography")
    assert "pip install 'spoolmail[dkim]'" in result.stdout
