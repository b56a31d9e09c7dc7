"""The SMTP client: hands one queued message to one host and keeps the connection for the next.

:class:`SmtpTransport` implements the :class:`~spoolmail._transport.base.Transport` seam with its
own client rather than :mod:`smtplib` (whose unbounded reads and exception-shaped outcomes do not
suit a queue that must never hang). It is the facade over four parts: the sans-IO conversation
(:mod:`~spoolmail._transport.protocol`: greeting, EHLO or HELO, STARTTLS, AUTH, pipelined
transactions, what every reply means), the socket session that drives it
(:mod:`~spoolmail._transport.session`: deadlines, TLS, streamed DATA), the pool of kept
connections (:mod:`~spoolmail._transport.pool`) and reply reading
(:mod:`~spoolmail._transport.replies`). Here live the decisions across connections: reuse a kept
one (probed with RSET unless it succeeded moments ago), connect again once when a reused one was
gone, fall back to plain text when opportunistic TLS fails, and answer every recipient not yet
answered when a session ends. It reads the message only through ``Outgoing.open``, writes the
dialogue (never message content, never a password) into the
:class:`~spoolmail._core.transcript.Transcript` it is handed, and answers every recipient with a
:class:`~spoolmail._core.reply.Reply`: a refused, stalled, dropped, babbling or unverifiable
server is a temporary reply, not an exception. It never touches the spool, does no DNS of its
own (a host name goes to the system resolver inside :func:`socket.create_connection`, whose wait
no timeout here bounds; MX lookups and literal addresses are the router's and the resolver's
job) and keeps no state beyond the connections it holds open for reuse.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import DataEncoder
from spoolmail._transport.policy import in_the_clear, where
from spoolmail._transport.pool import ConnectionPool
from spoolmail._transport.protocol import MAX_RECIPIENTS, ClientProtocol
from spoolmail._transport.replies import SmtpExtensions
from spoolmail._transport.session import (
    HandshakeFailed,
    LoggedTranscript,
    Session,
    SessionError,
    dialogue_log,
    unverified_context,
)
from spoolmail._transport.timeouts import RFC_TIMEOUTS, SmtpTimeouts
from spoolmail.exceptions import ConfigurationError

__all__ = ["DataEncoder", "SmtpExtensions", "SmtpTimeouts", "SmtpTransport"]

# A kept connection used this recently is reused without an RSET probe first (seconds).
_FRESH = 2.0
# The most a kept connection let go (too old, one too many, or at close) waits for QUIT's 221
# (seconds): it is closed in a thread delivering other mail, or one after another as the service
# stops, and an idle server gone silent held on for the whole quit timeout (5 s) each time.
_IDLE_QUIT = 1.0
_HELO_NAME = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


def _again(session: Session, reply: Reply, *, probed: bool, progress: bool) -> str | None:
    """Why the rest of a delivery goes over a new connection after ``session`` failed with
    ``reply``; ``None`` when it does not (the reply stands for every recipient not answered).

    ``progress`` says whether this connection answered any of the delivery's recipients (an
    earlier transaction of it, more recipients than one transaction takes): then only a 421
    before the next transaction's message went is a reason, and each new connection must
    answer some more, so the delivery ends. Otherwise the connection must be a kept one that
    failed before any recipient had an answer."""
    if session.protocol.data_ended:
        # The message and its final "." went: the server may have it, and a copy sent at once
        # would be a second one (RFC 1047). The next attempt, if any, decides.
        return None
    if reply.code == 421 and (progress or session.messages):
        # RFC 5321 section 3.8: the server closes the channel. Servers that cap the messages
        # of one connection say so at the next MAIL, of a later delivery on a kept connection
        # or of this one's next transaction; IIS opened a new connection then.
        if progress:
            return f"the connection was closed before the next transaction ({reply})"
        return f"the reused connection was closed ({reply})"
    if progress or not session.messages:
        return None  # a new connection's failure is the server's answer now
    if reply.status == "4.4.2" and not probed:
        # Gone before MAIL got an answer: nothing was sent (RFC 5321 section 4.1.4 lets MAIL
        # follow a finished transaction; the RSET probe is what this saved).
        return "the reused connection was gone"
    return None


class SmtpTransport:
    """Sends messages over SMTP, keeping one connection per target for reuse.

    ``SmtpTransport(helo_name="mail.example.com")``; ``timeouts`` bounds every wait
    (:class:`SmtpTimeouts`); ``monotonic`` (seconds, :func:`time.monotonic` by default) ages kept
    connections, so a test can expire them without waiting. ``tls_context`` verifies certificates
    for :attr:`TlsPolicy.REQUIRED <spoolmail._core.routing.TlsPolicy.REQUIRED>` targets (default
    :func:`ssl.create_default_context`: the system's trust store; it must check host names);
    opportunistic and ``ENCRYPT`` connections use an internal context that checks nothing
    (TLS 1.2 at least). ``max_recipients`` caps the RCPTs of one transaction (100, IIS's default
    and RFC 5321 §4.5.3.1.8's minimum); more recipients go in further transactions on the same
    connection, each sending the message again. ``max_messages_per_connection`` closes a kept
    connection once it has carried that many messages (0, the default: no limit, as Postfix's
    ``smtp_connection_reuse_count_limit`` and IIS 6's installed metabase). ``max_idle`` (10)
    bounds the idle connections kept to one target; 0 keeps none. A kept connection the
    server closes with 421 before taking the message (a server's own cap on messages per
    connection) is replaced once, at once; so is one closed with 421 before a later
    transaction of the same delivery (more recipients than one transaction takes), for as long
    as each new connection takes some of them. With the ``spoolmail.smtp`` logger at DEBUG every
    transcript line is logged as it is written (``spoolmail -v``). Safe to share between
    threads: each :meth:`send` uses its own connection. Call :meth:`close` (or use it as a
    context manager) to QUIT the connections it keeps. Kept connections are reused only for an
    equal :class:`Target`: same address, name, TLS policy and credentials.

    The session, as ``target.tls`` asks (RFC 3207):

    - ``NEVER``: no STARTTLS. ``OPPORTUNISTIC``: STARTTLS when offered, certificate unchecked;
      plain text when it is not offered or is refused; when the handshake fails, one new
      connection in plain text (never with credentials). ``ENCRYPT``: STARTTLS or nothing,
      certificate unchecked. ``REQUIRED``: STARTTLS or nothing, and the certificate must verify
      against ``tls_context`` and match the target's name (or its address, for a literal).
      After STARTTLS, EHLO again (RFC 3207 §4.2).
    - With ``target.credentials``: AUTH PLAIN (or LOGIN when PLAIN is not offered) after TLS,
      never in the clear (RFC 4954); the transcript shows ``AUTH PLAIN <redacted>``.
    - With PIPELINING (RFC 2920): MAIL, the RCPTs and DATA are written together (in groups of
      at most 4 KB, §3.1) and the replies read after, in order; without it, one at a time.
    - A kept connection the server closed, or spoke on unasked, while idle is replaced without
      a word. One is reused without RSET only when its last transaction succeeded moments
      ago; after a failed one (a refused MAIL, DATA or final ".") the next transaction starts
      with RSET (RFC 5321 §4.1.1.5).
    - A RCPT answered "too many recipients" (452, RFC 5321 §4.5.3.1.10) goes in the next
      transaction on the same connection, which holds no more than the server had room for; a
      transaction in which the server takes no recipient at all ends the delivery with that 452.

    What each outcome becomes, for every recipient not answered yet (RFC 3463 codes):

    - the server's own reply: 4xx/5xx to MAIL (everyone), to RCPT (that recipient), to DATA or
      the final "." (every recipient accepted in that transaction); 421 at any point, after
      which the connection closes;
    - ``451 4.4.1``: no connection (refused, unreachable, connect timeout) or a non-2xx greeting;
    - ``451 4.4.3``: the host name does not resolve;
    - ``451 4.4.2``: the connection broke or timed out after it was established;
    - ``451 4.5.0``: the server sent garbage, a reply of the wrong class or one no command asked
      for (RFC 5321 §4.2: one reply per command), or refused RSET;
    - ``451 4.7.4``: TLS is required (``ENCRYPT``, ``REQUIRED``) but STARTTLS is not offered or
      is refused; or credentials are set and the server offers neither PLAIN nor LOGIN;
    - ``451 4.7.5``: the TLS handshake failed, or the certificate did not verify;
    - ``451 4.7.10``: credentials are set but the connection has no TLS;
    - ``451 4.7.8`` (or ``4.7.x`` after the server's ``5.7.x``): the server refused AUTH;
    - ``552 5.3.4``: the message exceeds the server's SIZE (no MAIL is sent);
    - ``553 5.6.7``: non-ASCII addresses and no SMTPUTF8 (no MAIL is sent);
    - ``554 5.6.7``: UTF-8 in the message's header fields (RFC 6532) and no SMTPUTF8;
    - ``553 5.1.7`` / ``553 5.1.3``: a sender / recipient address with control characters.
    """

    def __init__(
        self,
        *,
        helo_name: str,
        timeouts: SmtpTimeouts = RFC_TIMEOUTS,
        monotonic: Callable[[], float] = time.monotonic,
        tls_context: ssl.SSLContext | None = None,
        max_recipients: int = MAX_RECIPIENTS,
        max_idle: int = 10,
        max_messages_per_connection: int = 0,
    ) -> None:
        # RFC 5321 §4.1.1.1: EHLO names this host by its FQDN or an address literal.
        if not _HELO_NAME.fullmatch(helo_name):
            raise ConfigurationError(
                f"helo_name must be this host's FQDN or an address literal, not {helo_name!r}"
            )
        if (
            isinstance(max_recipients, bool)
            or not isinstance(max_recipients, int)
            or max_recipients < 1
        ):
            raise ConfigurationError(
                f"max_recipients must be a whole number above 0, not {max_recipients!r}"
            )
        if isinstance(max_idle, bool) or not isinstance(max_idle, int) or max_idle < 0:
            raise ConfigurationError(
                f"max_idle must be a whole number, 0 to keep no connection, not {max_idle!r}"
            )
        if (
            isinstance(max_messages_per_connection, bool)
            or not isinstance(max_messages_per_connection, int)
            or max_messages_per_connection < 0
        ):
            raise ConfigurationError(
                "max_messages_per_connection must be a whole number, 0 for no limit, not "
                f"{max_messages_per_connection!r}"
            )
        if tls_context is not None and (
            tls_context.verify_mode != ssl.CERT_REQUIRED or not tls_context.check_hostname
        ):
            raise ConfigurationError(
                "tls_context is what TlsPolicy.REQUIRED verifies certificates with: it needs "
                "verify_mode CERT_REQUIRED and check_hostname True"
            )
        self._helo_name = helo_name
        self._timeouts = timeouts
        self._monotonic = monotonic
        # The contexts are made at the first STARTTLS that needs each (see _verifying_context).
        self._verifying = tls_context
        self._unverified: ssl.SSLContext | None = None
        self._contexts_lock = threading.Lock()
        self._max_recipients = max_recipients
        self._max_messages = max_messages_per_connection
        self._pool: ConnectionPool[Session] = ConnectionPool(
            idle=timeouts.idle, max_idle=max_idle, monotonic=monotonic
        )
        self._counts_lock = threading.Lock()
        self._opened = 0
        self._reused = 0

    def _verifying_context(self) -> ssl.SSLContext:
        """The context verified STARTTLS uses: the one given, else the system's default, made
        once when first needed (loading the CA certificates costs tens of milliseconds)."""
        with self._contexts_lock:
            if self._verifying is None:
                self._verifying = ssl.create_default_context()
            return self._verifying

    def _unverified_context(self) -> ssl.SSLContext:
        """The context opportunistic and ``ENCRYPT`` STARTTLS use, made once when first needed
        (about 10 ms, in each worker at its start: most relays to a smart host never use it)."""
        with self._contexts_lock:
            if self._unverified is None:
                self._unverified = unverified_context()
            return self._unverified

    def connection_counts(self) -> tuple[int, int]:
        """Connections opened, and transactions sent over a kept connection, so far: how much
        connection reuse saves (``MailService.stats``, the metrics)."""
        with self._counts_lock:
            return self._opened, self._reused

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def send(
        self, target: Target, message: Outgoing, transcript: Transcript
    ) -> Mapping[str, Reply]:
        """Deliver ``message`` to ``target``; return a reply for each of its recipients."""
        recipients = tuple(dict.fromkeys(message.recipients))
        if not recipients:
            return {}
        if dialogue_log.isEnabledFor(logging.DEBUG):
            transcript = LoggedTranscript.around(
                transcript, queue_id=message.id, relay=where(target)
            )
        answers: dict[str, Reply] = {}
        session: Session | None = None
        try:
            session, probed = self._session(target, transcript)
            while True:
                answered = len(answers)
                left = [r for r in recipients if r not in answers]
                try:
                    session.deliver(message, left, answers, transcript)
                    break
                except SessionError as ended:
                    progress = len(answers) > answered
                    again = _again(session, ended.reply, probed=probed, progress=progress)
                    if again is None:
                        raise
                    transcript.note(f"{again}; connecting again")
                    self._discard(session, transcript)
                    session = None
                    session = self._open(target, transcript)
                    probed = True
        except SessionError as ended:
            transcript.note(f"session ended: {ended.reply}")
            for recipient in recipients:
                answers.setdefault(recipient, ended.reply)
        except BaseException:
            # The spool failed to read the message, or a bug: not the peer's doing, so it
            # propagates. The connection may be mid-command or mid-DATA; it is dropped without
            # QUIT, and a server that saw no final "." discards the partial message.
            if session is not None:
                session.abandon()
            raise
        finally:
            if session is not None:
                self._release(session, transcript)
        return {recipient: answers[recipient] for recipient in recipients}

    def close(self) -> None:
        """QUIT and close every kept connection. Safe to call at any time, more than once."""
        for session in self._pool.drain():
            self._discard(session, None, quit_wait=_IDLE_QUIT)

    # Connections.

    def _session(self, target: Target, transcript: Transcript) -> tuple[Session, bool]:
        """A connection to ``target``, and whether it is known to work (new, or probed)."""
        kept = self._take_kept(target)
        if kept is not None and not kept.quiet():
            # Whatever it said while idle, a 421 or junk, would be read as the reply to the next
            # command; a connection the server closed is read as empty. Either way, a new one.
            transcript.note(
                f"the kept connection to {where(target)} was closed, or spoke unasked, while "
                "idle; connecting again"
            )
            kept.abandon()
            self._discard(kept, transcript)
            kept = None
        if kept is not None:
            transcript.note(f"reusing the connection to {where(target)}")
            if kept.clean and self._monotonic() - kept.last_used < _FRESH:
                # Its last transaction succeeded moments ago: MAIL may follow at once (RFC 5321
                # section 4.1.4). A round trip saved per message; send() reconnects if it was
                # gone after all.
                self._count(reused=True)
                return kept, False
            if not kept.clean:
                # A failed transaction (a 5xx to the final ".", DATA ended with no recipient)
                # may have left the server mid-transaction: "503 nested MAIL command".
                transcript.note("the last transaction on it failed: RSET first")
            # RFC 5321 §4.1.1.5: RSET starts clean and, here, proves the connection still works.
            # A connection that fails it is replaced once, transparently.
            try:
                if kept.probe(transcript):
                    self._count(reused=True)
                    return kept, True
                transcript.note("the kept connection refused RSET; connecting again")
            except SessionError as ended:
                transcript.note(
                    f"the kept connection is gone ({ended.reply.text}); connecting again"
                )
            self._discard(kept, transcript)
        return self._open(target, transcript), True

    def _open(self, target: Target, transcript: Transcript) -> Session:
        if target.credentials is not None and target.tls is TlsPolicy.NEVER:
            # Known before connecting: nothing would be sent but a refusal to authenticate.
            raise SessionError(in_the_clear(target))
        try:
            return self._establish(target, transcript, tls=target.tls)
        except HandshakeFailed as failed:
            # Opportunistic TLS must be no worse than plain text (RFC 7435 §1.3): a server
            # whose TLS is broken still gets its mail, over a new connection, as Postfix does
            # at security level "may" (PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE; Postfix
            # first lets the message wait out one retry, which needs its age, and a transport
            # does not know it). Not with credentials: AUTH never goes in the clear, and the
            # handshake's failure is the better explanation of the delay.
            if target.tls is not TlsPolicy.OPPORTUNISTIC or target.credentials is not None:
                raise
            transcript.note(f"{failed.reply.text}; connecting again in plain text (opportunistic)")
            return self._establish(target, transcript, tls=TlsPolicy.NEVER)

    def _establish(self, target: Target, transcript: Transcript, *, tls: TlsPolicy) -> Session:
        protocol = ClientProtocol(
            target=target,
            helo_name=self._helo_name,
            timeouts=self._timeouts,
            tls=tls,
            max_recipients=self._max_recipients,
        )
        session = Session.connect(
            protocol,
            timeout=self._timeouts.connect,
            transcript=transcript,
            verifying=self._verifying_context,
            unverified=self._unverified_context,
        )
        try:
            session.open(transcript)
        except SessionError:
            self._discard(session, transcript)
            raise
        except BaseException:
            # A bug, or an interrupt, mid-goal (in the handshake, say): nothing more is said on
            # the connection, not even QUIT, which the protocol would refuse with a goal in
            # progress (InvalidTransition) and so hide what went wrong.
            session.abandon()
            self._discard(session, transcript)
            raise
        self._count(reused=False)
        return session

    def _count(self, *, reused: bool) -> None:
        with self._counts_lock:
            if reused:
                self._reused += 1
            else:
                self._opened += 1

    def _take_kept(self, target: Target) -> Session | None:
        """The most recently used idle connection to ``target``; idle ones too old are closed."""
        session, expired = self._pool.take(target)
        for old in expired:
            self._discard(old, None, quit_wait=_IDLE_QUIT)
        return session

    def _release(self, session: Session, transcript: Transcript) -> None:
        session.messages += 1
        if self._max_messages and session.messages >= self._max_messages:
            transcript.note(
                f"{session.messages} messages on this connection, as many as one may carry "
                "(max_messages_per_connection): closing it"
            )
            self._discard(session, transcript)
            return
        if not session.usable or not self._pool.keeps:
            self._discard(session, transcript)
            return
        for extra in self._pool.keep(session):
            self._discard(extra, None, quit_wait=_IDLE_QUIT)

    def _discard(
        self, session: Session, transcript: Transcript | None, *, quit_wait: float | None = None
    ) -> None:
        # RFC 5321 §4.1.1.10: say QUIT before closing, when the session is in a state to hear it.
        if session.usable:
            with contextlib.suppress(SessionError):
                session.quit(transcript, timeout=quit_wait)
        session.close()
