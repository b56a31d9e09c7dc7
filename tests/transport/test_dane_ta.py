"""DANE-TA(2) in the session (RFC 7672 section 3.1.2): aiosmtpd on 127.0.0.1 showing a leaf and
its intermediate (tests/tlscerts.py ``make_chain``), a TLSA record naming the intermediate, and
the chain read from ``ssl`` and checked after the handshake; and without ``cryptography``, TA
records unusable as before (TLS without authentication)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import pytest

from spoolmail._core import dane
from spoolmail._core.dane import DaneTarget, TlsaRecord, subject_public_key_info
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing, Resolution
from spoolmail._transport.dane import Dane, chain_problem
from spoolmail._transport.dns import Lookup
from spoolmail._transport.smtp import SmtpTransport
from tests.smtpservers import SmtpServer
from tests.tlscerts import Chain, make_chain

pytestmark = pytest.mark.skipif(
    chain_problem() is not None, reason=f"DANE-TA cannot be checked here: {chain_problem()}"
)

MX_HOST = "mx1.example.test"  # the first of the leaf's names (tests/tlscerts.py)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return make_chain()


def now_transcript() -> Transcript:
    # The chain's dates are checked at the transcript's clock, and make_chain dates from now.
    return Transcript(clock=lambda: datetime.now(UTC))


def ta_record(chain: Chain) -> TlsaRecord:
    spki = subject_public_key_info(chain.intermediate.der)
    return TlsaRecord(2, 1, 1, hashlib.sha256(spki).digest())


def message() -> Outgoing:
    data = b"Subject: DANE-TA\r\n\r\nHello.\r\n"

    @contextlib.contextmanager
    def opened() -> Iterator[BinaryIO]:
        yield io.BytesIO(data)

    return Outgoing("q1", "alice@example.com", ("bob@example.test",), len(data), opened)


def dane_target(server: SmtpServer, record: TlsaRecord, *, name: str, next_hop: str) -> Target:
    return DaneTarget(
        server.host,
        server.port,
        name=name,
        tls=TlsPolicy.ENCRYPT,
        tlsa=(record,),
        tlsa_name=f"_{server.port}._tcp.{name}",
        next_hop=next_hop,
    )


def test_a_chain_to_the_named_intermediate_is_authenticated(
    transport: SmtpTransport, chain: Chain, tmp_path: Path
) -> None:
    transcript = now_transcript()
    with SmtpServer(tls_context=chain.server_context(tmp_path)) as server:
        target = dane_target(server, ta_record(chain), name=MX_HOST, next_hop="example.test")
        [reply] = transport.send(target, message(), transcript).values()
    assert reply.code == 250
    assert [m.tls for m in server.messages] == [True]
    assert "certificate matched TLSA 2 1 1" in transcript.text
    assert "DANE-TA: trust anchor CN=spoolmail test intermediate" in transcript.text
    assert "(certificate 2 of 2), chain verified for mx1.example.test" in transcript.text


def test_a_chain_for_other_names_is_refused(
    transport: SmtpTransport, chain: Chain, tmp_path: Path
) -> None:
    transcript = now_transcript()
    with SmtpServer(tls_context=chain.server_context(tmp_path)) as server:
        target = dane_target(server, ta_record(chain), name="mx9.example.org", next_hop="org.test")
        [reply] = transport.send(target, message(), transcript).values()
    assert (reply.code, reply.status) == (451, "4.7.5")
    assert "none matched the certificate" in reply.text
    assert "no matching subjectAltName for mx9.example.org" in reply.text
    assert "no matching subjectAltName for org.test" in reply.text
    assert server.messages == []


class Answers:
    def __init__(self, table: Mapping[tuple[str, str], Lookup]) -> None:
        self.table = table

    def lookup(
        self, name: str, rdtype: str, transcript: Transcript, *, deadline: float | None = None
    ) -> Lookup:
        return self.table.get((name, rdtype), Lookup(missing=True))


@pytest.mark.parametrize("installed", [True, False], ids=["cryptography", "no-cryptography"])
def test_without_cryptography_ta_records_mean_tls_without_authentication(
    transport: SmtpTransport,
    chain: Chain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    installed: bool,
) -> None:
    if not installed:

        def missing() -> None:
            raise ImportError("No module named 'cryptography'")

        monkeypatch.setattr(dane, "_import_verification", missing)
    record = ta_record(chain)
    transcript = now_transcript()
    with SmtpServer(tls_context=chain.server_context(tmp_path)) as server:
        table = {
            ("example.test", "MX"): Lookup((f"10 {MX_HOST}.",), authenticated=True),
            (f"_{server.port}._tcp.{MX_HOST}", "TLSA"): Lookup(
                (f"2 1 1 {record.data.hex()}",), authenticated=True
            ),
        }
        mx = Target(server.host, server.port, name=MX_HOST)
        resolution = Dane(Answers(table)).apply("example.test", Resolution((mx,)), transcript)
        [target] = resolution.targets
        [reply] = transport.send(target, message(), transcript).values()
    assert reply.code == 250
    assert [m.tls for m in server.messages] == [True]
    if installed:
        assert isinstance(target, DaneTarget)
        assert target.reference_names == (MX_HOST, "example.test")
        assert "DANE-TA: trust anchor" in transcript.text
    else:
        assert not isinstance(target, DaneTarget)
        assert target.tls is TlsPolicy.ENCRYPT
        assert "needs cryptography 45 or later" in transcript.text
        assert "treated as unusable" in transcript.text
        assert "certificate not verified" in transcript.text
