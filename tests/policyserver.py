"""An HTTPS server on 127.0.0.1 that serves MTA-STS policy files, for tests (RFC 8461 section 3.3).

:class:`PolicyServer` is the standard library's ``ThreadingHTTPServer`` wrapped in TLS with a
certificate of its own test CA (:func:`make_https_certificates`: one server certificate for every
``mta-sts.<domain>`` name in :data:`POLICY_HOSTS`, and a rogue one for the same names from a CA
nothing trusts). It answers ``GET /.well-known/mta-sts.txt`` by the ``Host`` header from
``server.answers``: a :class:`Answer` (status, content type, body, extra headers, a delay before
answering); a host without one gets 404. ``server.requests`` lists the hosts asked, in order, and
``server.sni`` the names clients sent in the TLS handshake. Listens on 127.0.0.1 only and a free
port; the fetcher under test reaches it through dnsmasq, which maps each ``mta-sts.<domain>`` to
127.0.0.1, with ``HttpsPolicyFetcher(port=server.port)``.
"""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs

from tests.tlscerts import TestCertificates, make_certificates

__all__ = ["POLICY_HOSTS", "Answer", "HttpsCertificates", "PolicyServer", "make_https_certificates"]

POLICY_HOSTS = tuple(
    f"mta-sts.{domain}"
    for domain in (
        "sts.test",
        "stsbad.test",
        "ststesting.test",
        "stsnone.test",
        "stsredirect.test",
        "ststype.test",
        "stsbig.test",
        "stsslow.test",
        "stsrogue.test",
        "stsinvalid.test",
        "stscert.test",
    )
)


@attrs.frozen
class Answer:
    body: bytes | str = b""
    status: int = 200
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


def policy(mode: str = "enforce", *mx: str, max_age: int = 86400) -> Answer:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return Answer("\r\n".join(lines) + "\r\n")


# The policy hosts' certificates: the test CA of tests/tlscerts.py, made for these names.
HttpsCertificates = TestCertificates


def make_https_certificates(
    directory: Path, names: tuple[str, ...] = POLICY_HOSTS
) -> HttpsCertificates:
    """A CA, a certificate for ``names`` it signs and a rogue one, as PEM files in
    ``directory`` (``client_context()`` trusts that CA alone)."""
    return make_certificates(directory, names=names, addresses=())


class PolicyServer:
    """HTTPS on 127.0.0.1 serving ``answers`` by host (see the module docstring)."""

    def __init__(
        self, certificates: HttpsCertificates, *, rogue_hosts: tuple[str, ...] = ()
    ) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.sni: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                owner.requests.append(host)
                answer = (
                    owner.answers.get(host) if self.path == "/.well-known/mta-sts.txt" else None
                )
                if answer is None:
                    answer = Answer(b"not here", status=404)
                if answer.delay:
                    time.sleep(answer.delay)
                body = answer.body.encode() if isinstance(answer.body, str) else answer.body
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        good = certificates.server_context()
        rogue = certificates.server_context(rogue=True)

        def choose(sock: ssl.SSLObject, name: str, context: ssl.SSLContext) -> None:
            owner.sni.append(name)
            if name in rogue_hosts:
                sock.context = rogue

        good.sni_callback = choose
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = good.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> PolicyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
