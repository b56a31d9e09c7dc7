"""MTA-STS lookups (RFC 8461): the ``_mta-sts`` TXT record, the HTTPS policy fetch, the cache.

:class:`HttpsPolicyFetcher` implements the :class:`PolicyFetcher` seam: it finds
``mta-sts.<domain>`` through the delivery's own :class:`~spoolmail._transport.dns.DnsResolver`
(never the system's), connects to that address with the real name as SNI and for the
certificate check (section 3.3: a certificate valid for the policy host, from a trusted CA),
asks ``GET /.well-known/mta-sts.txt`` and takes only a ``200`` of type ``text/plain``: no
redirect is followed, no HTTP cache is used, the body is cut at 64 KiB and the whole fetch at
``timeout`` seconds. :class:`MtaSts` holds the policies by domain in memory (not in the
MailRoot: a restart fetches them again, at one HTTPS request per domain), and follows the pure
control flow of ``spoolmail._core.mtasts`` with the clock it is given. Every step is noted in the
transcript. It reads DNS and HTTPS, writes nothing but the transcript, and never decides what
a policy does to a delivery (``_core.mtasts.apply_policy`` does).
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from spoolmail._core.mtasts import (
    MAX_POLICY_SIZE,
    CachedPolicy,
    Step,
    StsInvalid,
    StsPolicy,
    StsRecord,
    after_fetch,
    next_step,
    parse_policy,
    parse_record,
)
from spoolmail._core.reply import Reply
from spoolmail._core.transcript import Transcript
from spoolmail._transport.dns import DnsResolver

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["FETCH_TIMEOUT", "HttpsPolicyFetcher", "MtaSts", "PolicyFetcher"]

FETCH_TIMEOUT = 10.0
"""Seconds a whole policy fetch may take (connect, TLS, request, body); RFC 8461 section 3.3
leaves it to the sender; Postfix's resolver and Exim use about 10."""
_PATH = "/.well-known/mta-sts.txt"
_CACHE_LIMIT = 10_000
_ADDRESSES_TRIED = 2


class PolicyFetcher(Protocol):
    """Fetches a domain's policy file: its text, or ``None`` (the reason in the transcript)."""

    def fetch(self, domain: str, transcript: Transcript) -> str | None:
        """The policy file of ``domain`` (RFC 8461 section 3.3), or ``None`` when it cannot
        be had (the reason noted in ``transcript``)."""
        ...


class _Deadline(io.RawIOBase):
    """A response's reads from ``raw`` (its socket's file), each allowed only the time left
    before ``deadline`` (``time.monotonic``).

    http.client reads the status line, the headers and chunk sizes a line at a time, and skips
    any number of ``100 Continue`` responses and chunked trailers; with a plain socket timeout
    each byte that arrives starts the timeout again, so a server dripping bytes held a fetch
    for as long as it liked.
    """

    def __init__(
        self, raw: io.RawIOBase, sock: socket.socket, deadline: float, timeout: float
    ) -> None:
        super().__init__()
        self._raw = raw
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._late()
        self._sock.settimeout(remaining)
        try:
            return self._raw.readinto(buffer)
        except TimeoutError as error:
            raise self._late() from error

    def _late(self) -> TimeoutError:
        return TimeoutError(f"timed out: no whole policy within {self._timeout:g} s")

    def close(self) -> None:
        self._raw.close()
        super().close()


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS to one address already looked up, with the host name for SNI and verification,
    all of it (connection, TLS handshake, request, response) within ``deadline``."""

    def __init__(
        self,
        host: str,
        address: str,
        port: int,
        *,
        context: ssl.SSLContext,
        timeout: float,
        deadline: float,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context
        self._deadline = deadline

        class Response(http.client.HTTPResponse):
            def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
                super().__init__(sock, *args, **kwargs)
                raw = self.fp.detach()  # the socket's file: it keeps the socket open
                assert isinstance(raw, io.RawIOBase)  # noqa: S101 (socket.makefile's)
                self.fp = io.BufferedReader(_Deadline(raw, sock, deadline, timeout))

        self.response_class = Response

    def connect(self) -> None:
        remaining = max(self._deadline - time.monotonic(), 0.001)
        sock = socket.create_connection((self._address, self.port), remaining)
        try:
            # Since Python 3.5 the socket timeout bounds the whole handshake, and sendall.
            sock.settimeout(max(self._deadline - time.monotonic(), 0.001))
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class HttpsPolicyFetcher:
    """The policy over HTTPS (see the module docstring).

    ``resolver`` finds ``mta-sts.<domain>``; ``tls_context`` verifies its certificate (default:
    the system's trust store, loaded at the first fetch: loading it costs some 25 ms of CPU,
    which every worker paid at start whether a policy was ever fetched or not; it must check
    host names); ``port`` is 443 but in tests; ``timeout`` bounds the whole fetch.
    """

    def __init__(
        self,
        resolver: DnsResolver,
        *,
        tls_context: ssl.SSLContext | None = None,
        port: int = 443,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self._resolver = resolver
        self._context = tls_context
        self._context_lock = threading.Lock()
        self._port = port
        self._timeout = timeout

    def fetch(self, domain: str, transcript: Transcript) -> str | None:
        """GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt``: the text, or ``None``."""
        host = f"mta-sts.{domain}"
        addresses = self._resolver.addresses(host, transcript)
        if isinstance(addresses, Reply):
            transcript.note(f"MTA-STS {domain}: cannot fetch the policy: {addresses.text}")
            return None
        for address in addresses[:_ADDRESSES_TRIED]:
            try:
                return self._get(host, address, domain, transcript)
            except (OSError, http.client.HTTPException, ValueError, TimeoutError) as error:
                problem = str(error) or type(error).__name__
                transcript.note(f"MTA-STS {domain}: https://{host}{_PATH} at {address}: {problem}")
        return None

    def _tls_context(self) -> ssl.SSLContext:
        with self._context_lock:  # fetches run on the delivery threads
            if self._context is None:
                self._context = ssl.create_default_context()
            return self._context

    def _get(self, host: str, address: str, domain: str, transcript: Transcript) -> str | None:
        connection = _PinnedConnection(
            host,
            address,
            self._port,
            context=self._tls_context(),
            timeout=self._timeout,
            deadline=time.monotonic() + self._timeout,
        )
        try:
            # RFC 8461 section 3.3: no HTTP caching; no redirect is followed (http.client
            # follows none by itself).
            connection.request(
                "GET",
                _PATH,
                headers={"User-Agent": "spoolmail", "Accept": "text/plain", "Connection": "close"},
            )
            response = connection.getresponse()
            where = f"https://{host}{_PATH}"
            if response.status != 200:
                extra = " (redirects are not followed)" if 300 <= response.status < 400 else ""
                transcript.note(f"MTA-STS {domain}: {where} answered HTTP {response.status}{extra}")
                return None
            kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if kind != "text/plain":
                transcript.note(f"MTA-STS {domain}: {where} is {kind or 'untyped'}, not text/plain")
                return None
            body = bytearray()
            while len(body) <= MAX_POLICY_SIZE:
                chunk = response.read1(MAX_POLICY_SIZE + 1 - len(body))  # within the deadline
                if not chunk:
                    break
                body += chunk
            if len(body) > MAX_POLICY_SIZE:
                transcript.note(f"MTA-STS {domain}: {where} is over {MAX_POLICY_SIZE} bytes")
                return None
            if response.length:
                # The connection closed before Content-Length bytes came: a policy cut short
                # may lack mx lines, and would be cached as though it were whole.
                missing = f"{response.length} of {len(body) + response.length} bytes missing"
                transcript.note(f"MTA-STS {domain}: {where} ended early ({missing})")
                return None
            transcript.note(f"MTA-STS {domain}: fetched {where} ({len(body)} bytes)")
            return body.decode("utf-8", "replace")
        finally:
            connection.close()


class MtaSts:
    """Policies by domain, looked up and cached as RFC 8461 section 5.1 says. Thread-safe.

    ``MtaSts(resolver, fetcher=HttpsPolicyFetcher(resolver), clock=clock)``. :meth:`policy`
    answers for one delivery; the cache holds each policy until its ``max_age`` runs out or the
    TXT record's id changes.
    """

    def __init__(
        self,
        resolver: DnsResolver,
        *,
        fetcher: PolicyFetcher | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self._resolver = resolver
        self._fetcher = fetcher if fetcher is not None else HttpsPolicyFetcher(resolver)
        self._clock = clock
        self._cache: dict[str, CachedPolicy] = {}
        self._failed: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._domain_locks: dict[str, threading.Lock] = {}

    def cached(self, domain: str) -> CachedPolicy | None:
        with self._lock:
            return self._cache.get(domain)

    def policy(self, domain: str, transcript: Transcript) -> StsPolicy | None:
        """The policy that applies to mail for ``domain`` now, or ``None`` when none does."""
        domain = domain.lower().rstrip(".")
        with self._lock:
            lock = self._domain_locks.setdefault(domain, threading.Lock())
        with lock:  # one lookup and fetch per domain at a time; the others wait and use it
            return self._policy(domain, transcript)

    def _policy(self, domain: str, transcript: Transcript) -> StsPolicy | None:
        record = self._record(domain, transcript)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(domain)
            failed = self._failed.get(domain)
        step = next_step(cached, record, now, failed=failed)
        entry = cached if step is Step.USE_CACHED else None
        if step is Step.FETCH:
            assert record is not None  # noqa: S101 (next_step fetches only with a record)
            entry = self._fetch(domain, record, cached, now, transcript)
        if entry is None:
            if record is not None:
                transcript.note(f"MTA-STS {domain}: no policy to apply; delivering as usual")
            return None
        policy = entry.policy
        transcript.note(
            f"MTA-STS {domain}: mode {policy.mode.value}, mx {', '.join(policy.mx) or '-'} "
            f"(id {entry.id}, valid until {entry.expires.isoformat(timespec='seconds')})"
        )
        return policy

    def _record(self, domain: str, transcript: Transcript) -> StsRecord | None:
        """The domain's ``_mta-sts`` TXT record, or ``None`` (none, not valid, lookup failed)."""
        found = self._resolver.lookup(f"_mta-sts.{domain}", "TXT", transcript)
        if found.failure is not None:
            transcript.note(f"MTA-STS {domain}: TXT lookup failed; using the cache, if any")
            return None
        parsed = parse_record(found.records)
        if isinstance(parsed, StsInvalid):
            transcript.note(f"MTA-STS {domain}: {parsed}; taken as no record")
            return None
        return parsed

    def _fetch(
        self,
        domain: str,
        record: StsRecord,
        cached: CachedPolicy | None,
        now: datetime,
        transcript: Transcript,
    ) -> CachedPolicy | None:
        text = self._fetcher.fetch(domain, transcript)
        fetched = None if text is None else parse_policy(text)
        if isinstance(fetched, StsInvalid):
            transcript.note(f"MTA-STS {domain}: the policy is not valid: {fetched}")
        entry = after_fetch(cached, record, fetched, now)
        with self._lock:
            if isinstance(fetched, StsPolicy):
                self._failed.pop(domain, None)
            else:
                self._failed[domain] = now
            if entry is None:
                self._cache.pop(domain, None)
            else:
                if len(self._cache) >= _CACHE_LIMIT:
                    self._prune(now)
                self._cache[domain] = entry
        if entry is not None and entry is cached:
            transcript.note(f"MTA-STS {domain}: fetch failed; the cached policy still holds")
        return entry

    def _prune(self, now: datetime) -> None:
        for domain in [d for d, e in self._cache.items() if not e.valid(now)]:
            del self._cache[domain]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._failed.clear()
        self._domain_locks = {}
