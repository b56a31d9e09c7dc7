"""The socket under one SMTP connection: it connects, and drives a :class:`ClientProtocol`.

:class:`Session` owns one socket to one target and runs the protocol's goals on it: it writes the
bytes the protocol asks it to, reads the server's bytes before each reply's deadline (RFC 5321
§4.5.3.2, the whole reply within its limit), runs the TLS handshake when the protocol says
STARTTLS was granted, and streams the stored message through
:class:`~spoolmail._transport.data.DataEncoder` when DATA was. It reads the stored message (only
through ``Outgoing.open``) and the socket, writes the socket and connection notes into the
transcript; every failure of the connection becomes :class:`SessionError` with a temporary reply.
It makes no decision about what to say next (that is the protocol's) and knows nothing of other
connections (that is the pool's).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import select
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

import attrs

from spoolmail._core.dane import (
    DANE_EE_MATCHED,
    DaneTarget,
    Matched,
    Unmatched,
    match,
    match_trust_anchor,
)
from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.dane import peer_chain
from spoolmail._transport.data import CHUNK, FINAL_DOT, data_blocks, examine, own_data
from spoolmail._transport.policy import tls_name, where
from spoolmail._transport.protocol import (
    ClientProtocol,
    Ended,
    NeedData,
    Send,
    SendMessage,
    StartTls,
    State,
)
from spoolmail._transport.replies import SmtpExtensions, printable
from spoolmail.exceptions import TransportError

__all__ = [
    "HandshakeFailed",
    "LoggedTranscript",
    "Session",
    "SessionError",
    "dialogue_log",
    "unverified_context",
]

# ``spoolmail -v`` shows the SMTP dialogue: every transcript line, at DEBUG, on this logger.
dialogue_log = logging.getLogger("spoolmail.smtp")

# The "(_ssl.c:1006)" OpenSSL's messages end with tells an operator nothing.
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class SessionError(TransportError):
    """The session can go no further; ``reply`` answers every recipient not answered yet."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class HandshakeFailed(SessionError):
    """The TLS handshake failed; the connection is unusable (opportunistic TLS may try again in
    plain text on a new one)."""


@attrs.define
class LoggedTranscript(Transcript):
    """A transcript that also logs each line at DEBUG on ``spoolmail.smtp``, as it is written.

    The lines are the transcript's own, so AUTH is already redacted (the protocol hands in
    ``AUTH PLAIN <redacted>`` and ``<password redacted>``) and no message content is among them.
    Each record carries ``queue_id`` and ``relay`` (the target, as the transcript names it) as
    attributes. Everything is kept in ``inner``, the transcript the delivery handed in.
    """

    inner: Transcript = attrs.field(kw_only=True)
    queue_id: str = attrs.field(kw_only=True)
    relay: str = attrs.field(kw_only=True)

    @classmethod
    def around(cls, inner: Transcript, *, queue_id: str, relay: str) -> LoggedTranscript:
        return cls(inner.clock, inner=inner, queue_id=queue_id, relay=relay)

    def _log(self, mark: str, text: str) -> None:
        dialogue_log.debug(
            "%s: %s %s: %s",
            self.queue_id,
            mark,
            self.relay,
            text,
            extra={"queue_id": self.queue_id, "relay": self.relay},
        )

    def begin(self, title: str) -> None:
        self.inner.begin(title)
        self._log("---", title)

    def sent(self, line: str) -> None:
        self.inner.sent(line)
        self._log(">", line)

    def received(self, line: str) -> None:
        self.inner.received(line)
        self._log("<", line)

    def note(self, text: str) -> None:
        self.inner.note(text)
        self._log("*", text)

    def extend(self, other: Transcript) -> None:
        self.inner.extend(other)

    @property
    def lines(self) -> list[str]:
        return self.inner.lines

    @property
    def text(self) -> str:
        return self.inner.text


def unverified_context() -> ssl.SSLContext:
    """Encryption without authentication (RFC 7435 §1.3: opportunistic security protects
    against passive eavesdropping, and a certificate check would turn most MX hosts' self-signed
    or mismatched certificates back into plain text). TLS 1.0 and 1.1 are refused (RFC 8996)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _handshake_problem(error: BaseException, timeout: float) -> str:
    if isinstance(error, ssl.SSLError):
        return _SSL_SOURCE.sub("", str(error)) or type(error).__name__
    if isinstance(error, TimeoutError):
        return f"no progress within {timeout:g} s"
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    return str(error) or type(error).__name__


_NAME_FIELDS = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


def _distinguished_name(name: object) -> str:
    """``CN=mx.example.net, O=Example`` from :meth:`ssl.SSLSocket.getpeercert`'s nested tuples.

    The values are the peer's words, however a CA signed them: a line break or a terminal
    escape in one would write lines of its own into the transcript, so they are made printable
    and bounded as a reply's text is."""
    parts = []
    if isinstance(name, tuple):
        for rdn in name:
            for key, value in rdn:
                parts.append(f"{_NAME_FIELDS.get(key, key)}={printable(str(value))}")
    return ", ".join(parts) or "(empty)"


class Session:
    """One open connection to one target, driving its :class:`ClientProtocol`.

    Every socket operation has a deadline. Any failure raises :class:`SessionError` with the
    temporary reply that describes it and closes the protocol, so the connection is neither
    reused nor sent a QUIT. ``verifying`` gives the TLS context for verified (``REQUIRED``)
    STARTTLS, when one is first needed (loading the system's CA certificates costs tens of
    milliseconds, at every start); ``unverified`` the context for unverified STARTTLS, also
    when first needed (making one costs about 10 ms, in every worker).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        protocol: ClientProtocol,
        verifying: Callable[[], ssl.SSLContext],
        unverified: Callable[[], ssl.SSLContext],
    ) -> None:
        self._sock = sock
        self.protocol = protocol
        self._verifying = verifying
        self._unverified = unverified
        # In plain text, where poll(2) exists, the socket is non-blocking and each wait is one
        # poll bounded by what is left of its deadline: a send is then one system call and a
        # read two. A socket timeout instead costs an ioctl at every settimeout and a poll
        # before every send and read, each letting go of the GIL the delivery threads share
        # (six calls a message more). TLS keeps the socket timeout (see _start_tls).
        self._poller: select.poll | None = None
        self._polling = 0
        if hasattr(select, "poll"):
            sock.setblocking(False)
            self._poller = select.poll()
        self.last_used = 0.0
        # Messages this connection carried, for SmtpTransport's max_messages_per_connection.
        self.messages = 0
        # The reply being waited for, and the monotonic time by which all of it must be in.
        self._waiting: tuple[int, float] = (-1, 0.0)
        # The time a DANE-TA chain's dates are checked at: the clock of the transcript that
        # opened the session (the service's), the system's until one did.
        self._clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    def connect(
        cls,
        protocol: ClientProtocol,
        *,
        timeout: float,
        transcript: Transcript,
        verifying: Callable[[], ssl.SSLContext],
        unverified: Callable[[], ssl.SSLContext],
    ) -> Session:
        target = protocol.target
        place = where(target)
        transcript.note(f"connecting to {place}")
        try:
            sock = socket.create_connection((target.host, target.port), timeout=timeout)
        except socket.gaierror as error:
            # RFC 3463 X.4.3: the directory (name) service could not be used.
            raise SessionError(
                Reply(
                    451,
                    "4.4.3",
                    f"cannot resolve {target.host}: {error.strerror}",
                    host=target.host,
                )
            ) from error
        except TimeoutError as error:
            # RFC 3463 X.4.1: the connection attempt was not answered.
            raise SessionError(
                Reply(
                    451,
                    "4.4.1",
                    f"connection to {place} timed out after {timeout:g} s",
                    host=target.host,
                )
            ) from error
        except OSError as error:
            raise SessionError(
                Reply(
                    451,
                    "4.4.1",
                    f"connection to {place} failed: {error.strerror or error}",
                    host=target.host,
                )
            ) from error
        transcript.note(f"connected to {place}")
        return cls(sock, protocol=protocol, verifying=verifying, unverified=unverified)

    @property
    def target(self) -> Target:
        return self.protocol.target

    @property
    def extensions(self) -> SmtpExtensions:
        return self.protocol.extensions

    @property
    def usable(self) -> bool:
        return self.protocol.usable

    @property
    def clean(self) -> bool:
        return self.protocol.clean

    # Goals, each run to its end.

    def open(self, transcript: Transcript) -> None:
        """Greeting, EHLO, STARTTLS and AUTH as the protocol's policy says."""
        self._clock = transcript.clock
        self.protocol.open(transcript)
        self._run(None)

    def deliver(
        self,
        message: Outgoing,
        recipients: Sequence[str],
        answers: dict[str, Reply],
        transcript: Transcript,
    ) -> None:
        """Transactions on this connection until every recipient has an answer in ``answers``."""
        content = examine(message, eight_bit_matters=self.protocol.extensions.eight_bit_mime)
        self.protocol.deliver(
            message, recipients, content=content, answers=answers, transcript=transcript
        )
        self._run(message)

    def probe(self, transcript: Transcript) -> bool:
        """RSET on a kept connection: whether the server agreed."""
        self.protocol.probe(transcript)
        self._run(None)
        return self.protocol.state is State.READY

    def quit(self, transcript: Transcript | None, *, timeout: float | None = None) -> None:
        self.protocol.quit(transcript, timeout=timeout)
        self._run(None)

    def quiet(self) -> bool:
        """Whether the server said nothing since its last reply, and did not close: a kept
        connection it spoke on unasked is out of step (RFC 5321 §4.2, one reply per command)
        and one it closed is gone, so neither is worth a command. One poll(2) that does not
        wait."""
        if self.protocol.unread:
            return False
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        if self._poller is not None:
            return not self._wait(select.POLLIN, 0)
        with contextlib.suppress(OSError, ValueError):  # closed, or beyond select's FD_SETSIZE
            if hasattr(select, "poll"):
                # TLS gave up the session's poller (see _start_tls); a look takes its own.
                poller = select.poll()
                poller.register(sock, select.POLLIN)
                return not poller.poll(0)
            readable, _, _ = select.select([sock], [], [], 0)
            return not readable
        return False

    def abandon(self) -> None:
        """Whatever was under way, nothing more is said on this connection (not even QUIT)."""
        self.protocol.close()

    def close(self) -> None:
        self.protocol.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _run(self, message: Outgoing | None) -> None:
        protocol = self.protocol
        while True:
            event = protocol.next_event()
            if isinstance(event, NeedData):
                self._receive(event)
            elif isinstance(event, Send):
                self._send(event.data, timeout=event.timeout, sending=event.sending)
            elif isinstance(event, SendMessage):
                assert message is not None  # noqa: S101 (only a delivery gets this far)
                with message.open() as source:
                    sent = self._send_message(message, source, timeout=event.timeout)
                protocol.message_sent(sent)
            elif isinstance(event, StartTls):
                protocol.tls_started(self._start_tls(event))
            elif isinstance(event, Ended):
                raise SessionError(event.reply)
            else:
                return

    # The socket.

    def _over(self, enhanced: str, text: str) -> SessionError:
        self.protocol.close()
        return SessionError(Reply(451, enhanced, text, host=self.target.host))

    def _lost(self, doing: str, error: OSError) -> SessionError:
        # RFC 3463 X.4.2 "bad connection": established, but the transaction could not complete.
        reason = error.strerror or str(error) or type(error).__name__
        return self._over("4.4.2", f"connection to {where(self.target)} lost {doing}: {reason}")

    def _wait(self, events: int, seconds: float) -> bool:
        """Whether the socket became ready for ``events`` within ``seconds`` (poll(2); an
        error or a hang-up counts as ready: the send or read that follows reports it)."""
        poller = self._poller
        assert poller is not None  # noqa: S101 (only called on the polled path)
        if self._polling != events:
            if self._polling:
                poller.modify(self._sock, events)
            else:
                poller.register(self._sock, events)
            self._polling = events
        return bool(poller.poll(math.ceil(seconds * 1000)))

    def _send(self, data: bytes, *, timeout: float, sending: str) -> None:
        if self._poller is not None:
            self._send_polled(data, timeout=timeout, sending=sending)
            return
        try:
            # Since Python 3.5 the timeout bounds the whole sendall, which is RFC 5321 §4.5.3.2.5's
            # "each TCP SEND call" for a data block.
            self._sock.settimeout(timeout)
            self._sock.sendall(data)
        except TimeoutError as error:
            raise self._over(
                "4.4.2", f"{where(self.target)} took more than {timeout:g} s to take {sending}"
            ) from error
        except OSError as error:
            raise self._lost(f"while sending {sending}", error) from error

    def _send_polled(self, data: bytes, *, timeout: float, sending: str) -> None:
        """:meth:`_send` on the non-blocking socket: the whole of ``data`` within ``timeout``,
        waiting (poll) only while the socket buffer is full."""
        sock = self._sock
        try:
            # The usual case: the socket buffer takes it all at once.
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            raise self._lost(f"while sending {sending}", error) from error
        if sent == len(data):
            return
        deadline = time.monotonic() + timeout
        view = memoryview(data)[sent:]
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._wait(select.POLLOUT, remaining):
                    break
                with contextlib.suppress(BlockingIOError):
                    view = view[sock.send(view) :]
                if not view:
                    return
        except OSError as error:
            raise self._lost(f"while sending {sending}", error) from error
        raise self._over(
            "4.4.2", f"{where(self.target)} took more than {timeout:g} s to take {sending}"
        )

    def _receive(self, need: NeedData) -> None:
        # The deadline covers the whole reply, so a server trickling one byte at a time cannot
        # stretch RFC 5321 §4.5.3.2's per-command limits.
        reply, deadline = self._waiting
        if reply != need.reply:
            deadline = time.monotonic() + need.timeout
            self._waiting = (need.reply, deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._over("4.4.2", self._late(need))
        try:
            data = self._recv(remaining)
        except TimeoutError as error:
            raise self._over("4.4.2", self._late(need)) from error
        except OSError as error:
            raise self._lost(f"while waiting for the {need.awaiting}", error) from error
        if data is None:
            return  # woken for nothing: the protocol asks again, with the same deadline
        if not data:
            raise self._over(
                "4.4.2",
                f"{where(self.target)} closed the connection instead of the {need.awaiting}",
            )
        self.protocol.receive_data(data)

    def _recv(self, seconds: float) -> bytes | None:
        """What the server sent within ``seconds`` (``TimeoutError`` if nothing came), or
        ``None`` when poll said it was readable and there was nothing after all."""
        if self._poller is None:
            self._sock.settimeout(seconds)
            return self._sock.recv(CHUNK)
        if not self._wait(select.POLLIN, seconds):
            raise TimeoutError
        try:
            return self._sock.recv(CHUNK)
        except BlockingIOError:
            return None

    def _late(self, need: NeedData) -> str:
        return f"{where(self.target)} sent no {need.awaiting} within {need.timeout:g} s"

    def _send_message(self, message: Outgoing, source: BinaryIO, *, timeout: float) -> int:
        """The message's DATA and the final ``.``; the octets sent."""
        if message.dot_lines is False and self._poller is not None:
            own = own_data(source)
            if own is not None:
                fd, size, whole = own
                if whole is not None:
                    # Small: the file and the final "." in one write (one segment).
                    if len(whole) < size:
                        raise self._cut(len(whole), size)
                    self._send_polled(whole + FINAL_DOT, timeout=timeout, sending="the message")
                    return size + len(FINAL_DOT)
                return self._send_file(fd, size, timeout=timeout)
        return self._send_data(source, timeout=timeout, crlf=message.dot_lines is not None)

    def _send_file(self, fd: int, size: int, *, timeout: float) -> int:
        """A stored file that is its own DATA by sendfile(2), from the page cache without a
        copy into Python, then the final ``.``. The socket is corked (TCP_CORK) meanwhile, so
        the "." leaves with the file's last segment instead of waiting for its ACK (Nagle,
        RFC 896). Each wait for the socket is bounded by ``timeout`` (RFC 5321 §4.5.3.2.5:
        per TCP SEND of a data block)."""
        sock = self._sock
        cork = getattr(socket, "TCP_CORK", None)
        offset = 0
        try:
            if cork is not None:
                sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
            while offset < size:
                try:
                    sent = os.sendfile(sock.fileno(), fd, offset, size - offset)
                except BlockingIOError:
                    if not self._wait(select.POLLOUT, timeout):
                        break
                    continue
                if not sent:  # the file is shorter than it was: nothing sensible can follow
                    raise self._cut(offset, size)
                offset += sent
        except SessionError:
            raise
        except OSError as error:
            raise self._lost("while sending the message", error) from error
        if offset < size:
            raise self._over(
                "4.4.2", f"{where(self.target)} took more than {timeout:g} s to take the message"
            )
        self._send_polled(FINAL_DOT, timeout=timeout, sending="the message")
        if cork is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)
        return size + len(FINAL_DOT)

    def _cut(self, octets: int, size: int) -> SessionError:
        """A stored message shorter than it was when opened: no "." may end what went."""
        return self._over("4.3.0", f"the stored message ended after {octets} of {size} octets")

    def _send_data(self, source: BinaryIO, *, timeout: float, crlf: bool = False) -> int:
        """Stream ``source`` dot-stuffed, then the final ``.``; return the octets sent."""
        sent = 0
        for block in data_blocks(source, crlf=crlf):
            self._send(block, timeout=timeout, sending="the message")
            sent += len(block)
        return sent

    def _start_tls(self, start: StartTls) -> str:
        """Run the TLS handshake on the connection; return how it went, for the transcript."""
        context = self._verifying() if start.verify else self._unverified()
        timeout = start.timeout
        if self._poller is not None:
            # The ssl module's reads and writes wait on the socket's own timeout.
            self._poller = None
            self._sock.settimeout(timeout)
        server_hostname = start.server_hostname
        if isinstance(self.target, DaneTarget) and self.target.base_domain:
            # RFC 7672 section 8.1: the SNI names the TLSA base domain, so the server sends the
            # chain its records describe; after a DNSSEC-validated CNAME chain that is the
            # expanded name, not the MX host's (RFC 7671 section 7).
            server_hostname = self.target.base_domain
        try:
            tls = context.wrap_socket(
                self._sock, server_hostname=server_hostname, do_handshake_on_connect=False
            )
        except (ValueError, OSError) as error:
            # ValueError: a name OpenSSL will not take (empty, or not IDNA-encodable).
            raise self._handshake_failed(_handshake_problem(error, timeout)) from error
        self._sock = tls
        try:
            # Each wait within the handshake is bounded; a peer cannot stall one forever.
            tls.settimeout(timeout)
            tls.do_handshake()
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise self._handshake_failed(_handshake_problem(error, timeout)) from error
        if isinstance(self.target, DaneTarget):
            return self._dane_checked(tls, self.target)
        return self._tls_description(tls, verified=start.verify)

    def _dane_checked(self, sock: ssl.SSLSocket, target: DaneTarget) -> str:
        """RFC 7672 section 3: the server's certificate must match one of the target's usable
        TLSA records; DANE-EE(3) checks no name and no date (section 3.1.1), DANE-TA(2) the
        chain the server sent, its dates at the service's clock and its names (section 3.1.2)."""
        chain = peer_chain(sock)
        found = match(target.tlsa, chain)  # DANE-EE(3): the leaf alone
        if found is not None:
            verdict: Matched | Unmatched = Matched(found, DANE_EE_MATCHED)
        else:
            verdict = match_trust_anchor(
                target.tlsa, chain, names=target.reference_names, now=self._clock()
            )
        if isinstance(verdict, Unmatched):
            self.protocol.close()
            why = f": {verdict}" if verdict.reasons else ""
            # RFC 3463 X.7.5 "cryptographic failure", as for a certificate that does not verify.
            raise SessionError(
                Reply(
                    451,
                    "4.7.5",
                    f"TLSA records for {target.tlsa_name}: none matched the certificate of "
                    f"{where(target)} (DANE, RFC 7672 section 3){why}",
                    host=target.host,
                )
            )
        text = self._tls_description(sock, verified=False).removesuffix(
            "; certificate not verified"
        )
        return (
            f"{text}; certificate matched TLSA {verdict.record} at {target.tlsa_name} "
            f"({verdict.how})"
        )

    def _handshake_failed(self, problem: str) -> HandshakeFailed:
        # Whatever state OpenSSL left the connection in, nothing more can be said on it.
        self.protocol.close()
        # RFC 3463 X.7.5 "cryptographic failure"; Postfix uses the same for a failed handshake
        # and for an unverified certificate.
        return HandshakeFailed(
            Reply(
                451,
                "4.7.5",
                f"TLS handshake with {where(self.target)} failed: {problem}",
                host=self.target.host,
            )
        )

    def _tls_description(self, sock: ssl.SSLSocket, *, verified: bool) -> str:
        """The protocol, cipher and certificate of the TLS session, for the transcript."""
        cipher = sock.cipher()
        suite = f"{cipher[0]} ({cipher[2]} bits)" if cipher else "unknown cipher"
        text = f"TLS started: {sock.version()}, {suite}"
        if not verified:
            return f"{text}; certificate not verified"
        certificate = sock.getpeercert() or {}
        return (
            f"{text}; certificate verified for {tls_name(self.target)}: subject "
            f"{_distinguished_name(certificate.get('subject'))}, issuer "
            f"{_distinguished_name(certificate.get('issuer'))}"
        )
