"""MTA-STS against hostile and broken policy hosts and records (RFC 8461).

The fetcher talks to :class:`RawHttps`, a TLS server on 127.0.0.1 whose every byte a test
scripts (dripped headers, endless ``100 Continue``, endless chunked trailers, a body cut short),
with a certificate of the test CA (``tests/tlscerts.py``). ``mta-sts.<domain>`` is always
127.0.0.1 (a resolver that looks nothing up). The policy text itself is checked with
``parse_policy`` and ``parse_record``. Every outcome must be bounded and explained: a policy,
or ``None`` with the reason in the transcript.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest

from spoolmail._core.mtasts import StsInvalid, StsMode, StsPolicy, parse_policy, parse_record
from spoolmail._core.reply import Reply
from spoolmail._core.transcript import Transcript
from spoolmail._transport.dns import DnsResolver, Lookup
from spoolmail._transport.mtasts import HttpsPolicyFetcher, MtaSts
from spoolmail.testing import FakeClock
from tests.policyserver import HttpsCertificates, make_https_certificates

pytestmark = pytest.mark.integration

TIMEOUT = 0.5
SLACK = 1.5
HOST = "mta-sts.hostile.test"
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmax_age: 86400\r\n"

Script = Callable[[ssl.SSLSocket], None]


class Loopback(DnsResolver):
    """Every ``mta-sts.`` host is 127.0.0.1; ``records`` are the TXT answers. Asks nothing."""

    def __init__(self, records: tuple[str, ...] = ("v=STSv1; id=1",)) -> None:
        super().__init__()
        self.records = records

    def addresses(self, host: str, transcript: Transcript) -> tuple[str, ...] | Reply:
        return ("127.0.0.1",)

    def lookup(
        self, name: str, rdtype: str, transcript: Transcript, *, deadline: float | None = None
    ) -> Lookup:
        return Lookup(self.records)


class RawHttps:
    """TLS on 127.0.0.1: each connection's request is read, then ``script`` writes anything."""

    def __init__(self, certificates: HttpsCertificates, script: Script) -> None:
        self.script = script
        self.connections = 0
        self._context = certificates.server_context()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            with self._context.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = tls.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                self.script(tls)
        except (OSError, ssl.SSLError):
            pass

    def __enter__(self) -> RawHttps:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()


def drip(tls: ssl.SSLSocket, data: bytes, pause: float = 0.05) -> None:
    """``data`` a byte at a time, for at most 5 s (or until the client hangs up)."""
    deadline = time.monotonic() + 5
    for byte in data:
        if time.monotonic() > deadline:
            return
        tls.sendall(bytes([byte]))
        time.sleep(pause)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> HttpsCertificates:
    return make_https_certificates(tmp_path_factory.mktemp("hostilests"), names=(HOST,))


def fetch(
    certificates: HttpsCertificates, script: Script, transcript: Transcript, domain: str = ""
) -> tuple[str | None, float]:
    """One fetch of ``hostile.test``'s policy from a server running ``script``: the text, and
    the seconds it took."""
    with RawHttps(certificates, script) as server:
        fetcher = HttpsPolicyFetcher(
            Loopback(),
            tls_context=certificates.client_context(),
            port=server.port,
            timeout=TIMEOUT,
        )
        started = time.monotonic()
        text = fetcher.fetch(domain or "hostile.test", transcript)
        return text, time.monotonic() - started


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- slow and endless servers ------------------------------------------------------------------


def test_a_well_behaved_server_gives_its_policy(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(response(POLICY, "Content-Type: text/plain", f"Content-Length: {len(POLICY)}"))

    text, _ = fetch(certificates, script, transcript)
    assert text == POLICY.decode()


def test_dripped_headers_are_bounded_by_the_timeout(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"HTTP/1.1 200 OK\r\n")
        drip(tls, b"X-Slow: " + b"a" * 1000 + b"\r\n")

    text, elapsed = fetch(certificates, script, transcript)
    assert text is None
    assert elapsed < TIMEOUT + SLACK
    assert f"no whole policy within {TIMEOUT:g} s" in transcript.text


def test_endless_interim_responses_are_bounded_by_the_timeout(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    def script(tls: ssl.SSLSocket) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(0.01)

    text, elapsed = fetch(certificates, script, transcript)
    assert text is None
    assert elapsed < TIMEOUT + SLACK
    assert "no whole policy within" in transcript.text


def test_endless_chunked_trailers_are_bounded_by_the_timeout(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(
            response(
                b"5\r\nhello\r\n0\r\n", "Content-Type: text/plain", "Transfer-Encoding: chunked"
            )
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            tls.sendall(b"X-Trailer: more\r\n")
            time.sleep(0.01)

    text, elapsed = fetch(certificates, script, transcript)
    assert text is None
    assert elapsed < TIMEOUT + SLACK


def test_a_dripped_body_is_bounded_by_the_timeout(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(response(b"", "Content-Type: text/plain", f"Content-Length: {len(POLICY)}"))
        for byte in POLICY:
            tls.sendall(bytes([byte]))
            time.sleep(0.1)

    text, elapsed = fetch(certificates, script, transcript)
    assert text is None
    assert elapsed < TIMEOUT + SLACK
    assert "no whole policy within" in transcript.text


def test_a_silent_server_is_bounded_by_the_timeout(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    text, elapsed = fetch(certificates, lambda tls: time.sleep(3), transcript)
    assert text is None
    assert elapsed < TIMEOUT + SLACK


# --- big, short and odd bodies -----------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_megabytes_of_policy_are_cut_at_64_kib(
    certificates: HttpsCertificates, transcript: Transcript, framing: str
) -> None:
    big = POLICY + b"x-pad: " + b"a" * (4 * 1024 * 1024) + b"\r\n"

    def script(tls: ssl.SSLSocket) -> None:
        if framing == "length":
            tls.sendall(response(big, "Content-Type: text/plain", f"Content-Length: {len(big)}"))
        elif framing == "chunked":
            chunked = b"".join(
                b"%x\r\n%s\r\n" % (len(big[i : i + 8192]), big[i : i + 8192])
                for i in range(0, len(big), 8192)
            )
            tls.sendall(
                response(
                    chunked + b"0\r\n\r\n", "Content-Type: text/plain", "Transfer-Encoding: chunked"
                )
            )
        else:
            tls.sendall(response(big, "Content-Type: text/plain", "Connection: close"))

    text, elapsed = fetch(certificates, script, transcript)
    assert text is None
    assert elapsed < TIMEOUT + SLACK
    assert "is over 65536 bytes" in transcript.text


def test_a_body_shorter_than_its_content_length_is_not_a_policy(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    """A cut connection must not leave a policy without its later mx lines in the cache."""
    whole = POLICY + b"mx: mx2.example.test\r\n"

    def script(tls: ssl.SSLSocket) -> None:
        cut = len(POLICY)
        tls.sendall(
            response(whole[:cut], "Content-Type: text/plain", f"Content-Length: {len(whole)}")
        )
        tls.unwrap()

    text, _ = fetch(certificates, script, transcript)
    assert text is None
    assert f"ended early (22 of {len(whole)} bytes missing)" in transcript.text


def test_a_redirect_is_not_followed(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(
            response(
                b"", "Location: https://127.0.0.1:1/x", "Content-Length: 0", status="302 Found"
            )
        )

    with RawHttps(certificates, script) as server:
        fetcher = HttpsPolicyFetcher(
            Loopback(), tls_context=certificates.client_context(), port=server.port, timeout=TIMEOUT
        )
        assert fetcher.fetch("hostile.test", transcript) is None
        assert server.connections == 1
    assert "answered HTTP 302 (redirects are not followed)" in transcript.text


def test_a_certificate_for_another_name_is_refused(
    certificates: HttpsCertificates, transcript: Transcript
) -> None:
    served: list[str] = []
    text, _ = fetch(certificates, lambda tls: served.append("served"), transcript, "other.test")
    assert text is None
    assert served == []
    assert "CERTIFICATE_VERIFY_FAILED" in transcript.text
    assert "mta-sts.other.test" in transcript.text


def test_invalid_utf_8_makes_no_policy(
    certificates: HttpsCertificates, transcript: Transcript, clock: FakeClock
) -> None:
    body = POLICY.replace(b"mx1.example.test", b"mx1.\xff\xfe.test")

    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(response(body, "Content-Type: text/plain", f"Content-Length: {len(body)}"))

    with RawHttps(certificates, script) as server:
        resolver = Loopback()
        fetcher = HttpsPolicyFetcher(
            resolver, tls_context=certificates.client_context(), port=server.port, timeout=TIMEOUT
        )
        sts = MtaSts(resolver, fetcher=fetcher, clock=clock)
        assert sts.policy("hostile.test", transcript) is None
    assert "the policy is not valid: policy line 3" in transcript.text
    assert "no policy to apply; delivering as usual" in transcript.text


# --- the policy text ---------------------------------------------------------------------------

BASE = "version: STSv1\nmode: enforce\nmx: mx1.example.test\nmax_age: 86400\n"


@pytest.mark.parametrize(
    "text",
    [
        BASE,
        BASE.replace("\n", "\r\n"),
        BASE.replace("\n", "\r\n", 2),  # CRLF and LF mixed
        BASE.rstrip("\n"),  # no final line end
        BASE + "mode: testing\nmax_age: 1\n",  # repeated keys: the first counts
        BASE + "x-extension: anything at all\n",
        BASE + "\n",  # blank lines, which the grammar has no room for, are read past:
        BASE + "\r\n \t\r\n",  # refusing the policy for them would deliver without TLS
        BASE.replace("mode: enforce\n", "\nmode: enforce\n\n"),
    ],
)
def test_policies_that_parse(text: str) -> None:
    assert parse_policy(text) == StsPolicy(StsMode.ENFORCE, ("mx1.example.test",), 86400)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BASE.replace("86400", "-1"), "max_age '-1'"),
        (BASE.replace("86400", "1" + "0" * 30), "is not 0-31557600 seconds"),
        (BASE.replace("86400", "31557601"), "is not 0-31557600 seconds"),
        (BASE.replace("86400", "1e3"), "max_age '1e3'"),
        (BASE.replace("enforce", "enforcing"), "policy mode is 'enforcing'"),
        (BASE.replace("enforce", "ENFORCE"), "policy mode is 'ENFORCE'"),
        (BASE.replace("mx1.example.test", "*.*.example"), "is not an MX pattern"),
        (BASE.replace("mx1.example.test", "*"), "is not an MX pattern"),
        (BASE.replace("mx1.example.test", ""), "is not an MX pattern"),
        (BASE.replace("mx1.example.test", "*.test"), "is not an MX pattern"),
        (BASE.replace("mx1.example.test", "a" * 64 + ".test"), "is not an MX pattern"),
        (BASE.replace("mx1.example.test", "mx1.\ufffd.test"), "policy line 3"),
        (BASE.replace("\n", "\r"), "policy line 1"),  # CR alone is no line end
        ("\ufeff" + BASE, "policy line 1"),  # a byte order mark
        (BASE.replace("STSv1", "STSv2"), "version is 'STSv2'"),
        ("mx: " + "a.test\nmx: " * 20_000, "policy is over 65536 bytes"),
    ],
)
def test_policies_that_do_not_parse(text: str, reason: str) -> None:
    parsed = parse_policy(text)
    assert isinstance(parsed, StsInvalid)
    assert reason in parsed.reason
    assert len(parsed.reason) < 300  # quoted, never the whole text


def test_max_age_zero_applies_once_and_is_fetched_again(transcript: Transcript) -> None:
    clock = FakeClock()
    fetched: list[str] = []

    class Fetcher:
        def fetch(self, domain: str, transcript: Transcript) -> str | None:
            fetched.append(domain)
            return BASE.replace("86400", "0")

    sts = MtaSts(Loopback(), fetcher=Fetcher(), clock=clock)
    first = sts.policy("zero.test", transcript)
    assert first is not None
    assert first.max_age == 0
    assert sts.policy("zero.test", transcript) == first
    assert fetched == ["zero.test", "zero.test"]


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (("v=STSv1; id=",), "is not name=value"),
        (("v=STSv1; id=abc!def",), "is not 1-32 letters and digits"),
        (("v=STSv1; id=" + "a" * 33,), "is not 1-32 letters and digits"),
        (("v=STSv1; id=é",), "is not name=value"),
        (("v=STSv1; id=\ufffd",), "is not name=value"),
        (("v=STSv1;",), "TXT record has no id field"),
        (("v=STSv1; junk",), "is not name=value"),
        (("v=STSv1; id=1; " + "x=y; " * 5000,), None),
        (("v=STSv1; id=1", "v=STSv1; id=2"), "2 v=STSv1 TXT records"),
        (("v=STSv1 id=1",), "none"),
        (("V=STSv1; id=1",), "none"),
        ((), "none"),
    ],
)
def test_txt_records(texts: tuple[str, ...], expected: str | None) -> None:
    parsed = parse_record(texts)
    if expected is None:
        assert parsed is not None
        assert not isinstance(parsed, StsInvalid)
        assert parsed.id == "1"
    elif expected == "none":
        assert parsed is None
    else:
        assert isinstance(parsed, StsInvalid)
        assert expected in parsed.reason
