"""The SMTP client's conversation as a state machine: reply bytes in, command bytes out.

:class:`ClientProtocol` is one connection's side of RFC 5321 with no I/O of its own, in the
manner of h11. A driver starts a goal (:meth:`~ClientProtocol.open`: greeting, EHLO or HELO,
STARTTLS (RFC 3207), AUTH PLAIN or LOGIN (RFC 4954); :meth:`~ClientProtocol.deliver`: MAIL,
RCPT and DATA, pipelined when offered (RFC 2920), in transactions of at most ``max_recipients``;
:meth:`~ClientProtocol.probe`: RSET; :meth:`~ClientProtocol.quit`), then asks
:meth:`~ClientProtocol.next_event` what to do (:class:`Send` these bytes, :class:`NeedData`
before a deadline, :class:`StartTls`, :class:`SendMessage`) until it says :class:`Done` or
:class:`Ended`, handing back what the server sent with :meth:`~ClientProtocol.receive_data`.
Every command moves the connection through :data:`TRANSITIONS`, the one table of what may be
said in which :class:`State`; a step the table lacks raises
:class:`~spoolmail.exceptions.InvalidTransition` naming both and changes nothing. It reads the
server's replies and the envelope's values, writes commands and replies (never message content,
never a password) into the :class:`~spoolmail._core.transcript.Transcript` of the goal and a
:class:`~spoolmail._core.reply.Reply` per recipient into the goal's answers, and never touches a
socket, TLS, a clock or the stored message (the driver streams DATA and runs the handshake).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Generator, Iterable, Mapping, Sequence

import attrs

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target, TlsPolicy
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import Content
from spoolmail._transport.policy import (
    UNSENDABLE,
    auth_refused,
    in_the_clear,
    mail_parameters,
    needs_smtputf8,
    pipeline_groups,
    refusal,
    tls_name,
    too_many,
    where,
)
from spoolmail._transport.replies import (
    BadReply,
    ReplyReader,
    ServerReply,
    SmtpExtensions,
    printable,
)
from spoolmail._transport.timeouts import SmtpTimeouts
from spoolmail.exceptions import InvalidTransition

__all__ = [
    "MAX_RECIPIENTS",
    "TRANSITIONS",
    "ClientProtocol",
    "Done",
    "Ended",
    "Event",
    "NeedData",
    "Send",
    "SendMessage",
    "StartTls",
    "State",
    "Step",
]

# IIS's "Limit number of recipients per message" default, and RFC 5321 §4.5.3.1.8's minimum that
# every server must accept in one transaction.
MAX_RECIPIENTS = 100


class State(enum.Enum):
    """Where one connection's conversation stands: mostly, which reply it waits for."""

    GREETING = "greeting"  # connected; the server speaks first (RFC 5321 §3.1)
    HELLO = "hello"  # EHLO or HELO sent
    STARTTLS = "starttls"  # STARTTLS sent
    HANDSHAKE = "handshake"  # 220 to STARTTLS: the driver runs the TLS handshake
    AUTH = "auth"  # an AUTH line sent
    READY = "ready"  # the session is open and no transaction is in progress
    ENVELOPE = "envelope"  # MAIL sent (and RCPTs, DATA); replies outstanding
    MESSAGE = "message"  # 354 to DATA: the driver streams the message
    END_OF_DATA = "end of data"  # the final "." sent
    RSET = "rset"  # RSET sent
    QUIT = "quit"  # QUIT sent
    CLOSED = "closed"  # nothing more may be said on this connection

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every command).
    __hash__ = object.__hash__


class Step(enum.Enum):
    """What moves a conversation on: a command sent, or a reply that opens the next phase."""

    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    TLS_GRANTED = "220 to STARTTLS"
    AUTH = "AUTH"
    OPENED = "session open"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    GO_AHEAD = "354 to DATA"
    ABANDONED = "transaction abandoned"
    MESSAGE_SENT = "message and final dot sent"
    LONE_DOT = "lone dot sent"
    VERDICT = "reply to the final dot"
    RSET = "RSET"
    RESET = "2xx to RSET"
    QUIT = "QUIT"

    __hash__ = object.__hash__


# The rules, in one place. The server speaks first; EHLO (HELO to an old server, RFC 5321 §3.2)
# comes before anything else, and again after TLS starts (RFC 3207 §4.2); AUTH only after that
# (RFC 4954 §4). A transaction is MAIL, then RCPT and DATA (§3.3), pipelined or not (RFC 2920);
# only a 354 lets the message go, and only the reply to the final "." or a 2xx to RSET ends it.
# QUIT may end any session that is not in the middle of a transaction. CLOSED is not in the
# table: any state may close (a broken connection, a bug), and nothing follows it.
TRANSITIONS: Mapping[State, Mapping[Step, State]] = {
    State.GREETING: {Step.EHLO: State.HELLO, Step.QUIT: State.QUIT},
    State.HELLO: {
        Step.HELO: State.HELLO,
        Step.STARTTLS: State.STARTTLS,
        Step.AUTH: State.AUTH,
        Step.OPENED: State.READY,
        Step.QUIT: State.QUIT,
    },
    State.STARTTLS: {
        Step.TLS_GRANTED: State.HANDSHAKE,
        # Refused, opportunistic TLS goes on in the clear on the same connection (RFC 3207 §4).
        Step.AUTH: State.AUTH,
        Step.OPENED: State.READY,
        Step.QUIT: State.QUIT,
    },
    State.HANDSHAKE: {Step.EHLO: State.HELLO},
    State.AUTH: {Step.AUTH: State.AUTH, Step.OPENED: State.READY, Step.QUIT: State.QUIT},
    State.READY: {Step.MAIL: State.ENVELOPE, Step.RSET: State.RSET, Step.QUIT: State.QUIT},
    State.ENVELOPE: {
        Step.RCPT: State.ENVELOPE,
        Step.DATA: State.ENVELOPE,
        Step.GO_AHEAD: State.MESSAGE,
        # 354 with no recipient accepted: a lone "." ends DATA (RFC 2920 §3.1).
        Step.LONE_DOT: State.END_OF_DATA,
        Step.RSET: State.RSET,
        # MAIL refused: nothing to end; the next transaction starts with RSET.
        Step.ABANDONED: State.READY,
    },
    State.MESSAGE: {Step.MESSAGE_SENT: State.END_OF_DATA},
    State.END_OF_DATA: {Step.VERDICT: State.READY},
    # A kept connection that refuses its RSET probe is still polite enough for QUIT.
    State.RSET: {Step.RESET: State.READY, Step.QUIT: State.QUIT},
    State.QUIT: {},
    State.CLOSED: {},
}


# What the driver is asked to do.


@attrs.frozen
class Send:
    """Write ``data``; a write that takes longer than ``timeout`` seconds breaks the session.
    ``sending`` names it for messages ("MAIL", "the end of data")."""

    data: bytes
    timeout: float
    sending: str


@attrs.frozen
class NeedData:
    """Read more from the server and hand it to :meth:`ClientProtocol.receive_data`. The whole
    reply numbered ``reply`` must be in within ``timeout`` seconds of the first ask for it (RFC
    5321 §4.5.3.2), so a server trickling one byte at a time cannot stretch the limit."""

    timeout: float
    awaiting: str
    reply: int


@attrs.frozen
class StartTls:
    """Run the TLS handshake (each wait within ``timeout``), checking the certificate against
    ``server_hostname`` when ``verify``; then :meth:`ClientProtocol.tls_started`."""

    server_hostname: str
    verify: bool
    timeout: float


@attrs.frozen
class SendMessage:
    """Stream the stored message as DATA (:class:`~spoolmail._transport.data.DataEncoder`,
    each write within ``timeout``), then :meth:`ClientProtocol.message_sent`."""

    timeout: float


@attrs.frozen
class Done:
    """The goal is reached; its results are on the protocol (answers, extensions, state)."""


@attrs.frozen
class Ended:
    """The session can go no further; ``reply`` answers every recipient not answered yet.
    ``usable``: the connection may still say QUIT."""

    reply: Reply
    usable: bool


Event = Send | NeedData | StartTls | SendMessage | Done | Ended
_DONE = Done()


class _Stop(Exception):
    """Raised inside a goal: the session ends with ``reply``."""

    def __init__(self, reply: Reply, *, usable: bool = True) -> None:
        super().__init__(reply.text)
        self.reply = reply
        self.usable = usable


# What the replies to a pipelined group answer: MAIL, a RCPT, DATA.
_GROUP_REPLIES = ("reply to MAIL", "reply to RCPT", "reply to DATA")


class ClientProtocol:
    """One connection's SMTP client conversation, without I/O (see the module docstring).

    ``tls`` is the STARTTLS policy for this connection (the target's, or ``NEVER`` for the plain
    text retry of opportunistic TLS). ``extensions`` is what the last EHLO announced;
    ``encrypted`` whether TLS started; ``clean`` whether no transaction is open or left over
    (the last one ended with a 2xx to the final "." or to RSET, or none began: a connection that
    is not clean starts its next transaction with RSET, RFC 5321 §4.1.1.5); ``data_ended``
    whether the message and its final "." went in the delivery's latest transaction (the server
    may have it even without a reply: RFC 1047).
    """

    def __init__(
        self,
        *,
        target: Target,
        helo_name: str,
        timeouts: SmtpTimeouts,
        tls: TlsPolicy = TlsPolicy.NEVER,
        max_recipients: int = MAX_RECIPIENTS,
    ) -> None:
        self.target = target
        self.state = State.GREETING
        self.extensions = SmtpExtensions()
        self.encrypted = False
        self.clean = True
        self.data_ended = False
        self.answers: dict[str, Reply] = {}
        self._helo_name = helo_name
        self._timeouts = timeouts
        self._tls = tls
        self._max_recipients = max_recipients
        self._reader = ReplyReader()
        self._transcript: Transcript | None = None
        self._goal: Generator[Event, None, None] | None = None
        self._replies = 0
        self._tls_description: str | None = None
        self._octets_sent: int | None = None

    @property
    def usable(self) -> bool:
        return self.state is not State.CLOSED

    @property
    def unread(self) -> bool:
        """Whether the server sent more than the replies read so far."""
        return bool(self._reader.unread)

    # Goals: each starts a conversation step that next_event() then runs.

    def open(self, transcript: Transcript | None) -> None:
        """From the greeting to a session ready for MAIL."""
        self._begin("open", self._open(), transcript, needs=State.GREETING)

    def deliver(
        self,
        message: Outgoing,
        recipients: Sequence[str],
        *,
        content: Content,
        answers: dict[str, Reply],
        transcript: Transcript | None,
    ) -> None:
        """Transactions until every recipient in ``recipients`` has an answer in ``answers``
        (those not answered when the session ends are the driver's to answer). ``content`` is
        what the stored message needs MAIL to declare; ``message`` gives the sender and size
        (its ``open`` is the driver's)."""
        self.answers = answers
        self.data_ended = False
        self._begin(
            "deliver", self._deliver(message, recipients, content), transcript, needs=State.READY
        )

    def probe(self, transcript: Transcript | None) -> None:
        """RSET on a kept connection; :attr:`state` is ``READY`` after it if the server agreed."""
        self._begin("probe", self._probe(), transcript, needs=State.READY)

    def quit(self, transcript: Transcript | None, *, timeout: float | None = None) -> None:
        """QUIT (RFC 5321 §4.1.1.10), then the connection is closed; its reply is waited for
        ``timeout`` seconds at most when given, else the ``quit`` timeout."""
        self._begin("quit", self._quit(timeout), transcript, needs=None)

    def _begin(
        self,
        name: str,
        goal: Generator[Event, None, None],
        transcript: Transcript | None,
        *,
        needs: State | None,
    ) -> None:
        if self._goal is not None or (needs is not None and self.state is not needs):
            goal.close()
            doing = "with a goal in progress, in" if self._goal is not None else "in"
            raise InvalidTransition(
                f"SMTP client cannot start {name} {doing} state {self.state.name}"
            )
        self._goal = goal
        self._transcript = transcript

    # The driver's side.

    def next_event(self) -> Event:
        """What the driver does next for the current goal."""
        if self._goal is None:
            return _DONE
        try:
            return next(self._goal)
        except StopIteration:
            self._goal = None
            return _DONE
        except _Stop as stop:
            self._goal = None
            if not stop.usable:
                self.state = State.CLOSED
            return Ended(stop.reply, usable=stop.usable)

    def receive_data(self, data: bytes) -> None:
        """Bytes the server sent."""
        self._reader.feed(data)

    def tls_started(self, description: str) -> None:
        """The handshake :class:`StartTls` asked for succeeded; ``description`` (protocol, cipher,
        certificate) goes to the transcript."""
        if self.state is not State.HANDSHAKE:
            raise InvalidTransition(f"SMTP client: TLS started in state {self.state.name}")
        self._tls_description = description

    def message_sent(self, octets: int) -> None:
        """The message and its final "." went, ``octets`` in all, as :class:`SendMessage` asked."""
        self._fire(Step.MESSAGE_SENT)
        self._octets_sent = octets
        self.data_ended = True

    def close(self) -> None:
        """Nothing more will be said on this connection (it broke, or the driver closed it)."""
        if self._goal is not None:
            self._goal.close()
            self._goal = None
        self.state = State.CLOSED

    # The table.

    def _fire(self, *steps: Step) -> None:
        """Move through ``steps`` (a pipelined group fires several), all or none."""
        state = self.state
        for step in steps:
            new = TRANSITIONS[state].get(step)
            if new is None:
                raise InvalidTransition(
                    f"SMTP client: no step {step.name} ({step.value}) in state {state.name}"
                )
            state = new
        self.state = state

    # The transcript.

    def _note(self, text: str) -> None:
        if self._transcript is not None:
            self._transcript.note(text)

    # Commands and replies.

    def _send(
        self,
        lines: Sequence[str],
        steps: Sequence[Step],
        *,
        timeout: float,
        utf8: bool = False,
        shown: str | None = None,
    ) -> Send:
        """Command lines in one write: one line, or a pipelined group (RFC 2920). ``shown``
        replaces a line that carries a secret (AUTH) in the transcript and in any error text."""
        sending = shown if shown is not None else lines[0].split(" ", 1)[0]
        self._check_in_step(sending)
        # Without SMTPUTF8 a command is ASCII (RFC 5321 §2.4); callers check before getting here.
        encoding = "utf-8" if utf8 else "ascii"
        raw = "\r\n".join(lines).encode(encoding) + b"\r\n"
        self._fire(*steps)
        if self._transcript is not None:
            for line in lines:
                self._transcript.sent(printable(shown if shown is not None else line, limit=1000))
        return Send(raw, timeout, sending)

    def _check_in_step(self, sending: str) -> None:
        """End the session if the server said more than the replies asked for so far.

        RFC 5321 §4.2: every command gets exactly one reply, in order. A reply that came unasked
        (a second greeting, two replies to the final ".", a 250 sent with the 354) would be read
        as the reply to the next command, and each reply after it as the one to the command
        before: a recipient refused with another's refusal, a message counted delivered on a 250
        sent before the server had it. A 421 is let through: it ends the session as the next
        reply, and says why (§3.8)."""
        unasked = self._reader.unread
        if unasked and not unasked.startswith(b"421"):
            first = unasked.split(b"\n", 1)[0].removesuffix(b"\r")
            shown = printable(first.decode("utf-8", "replace"), limit=80)
            raise self._protocol_error(f'one reply too many ("{shown}")', f"reply before {sending}")

    def _read(self, *, timeout: float, awaiting: str) -> Generator[Event, None, ServerReply]:
        """One complete (possibly multiline) reply, ``awaiting`` naming it for messages
        ("greeting", "reply to MAIL"). A 421 ends the session (RFC 5321 §3.8)."""
        while (reply := self._take_reply(awaiting)) is None:
            yield NeedData(timeout, awaiting, self._replies)
        return reply

    def _take_reply(self, awaiting: str) -> ServerReply | None:
        """The reply awaited, if what has arrived completes it; ``None`` until then."""
        reader = self._reader
        try:
            while (raw := reader.next_line()) is not None:
                if self._transcript is not None:
                    self._transcript.received(printable(raw.decode("utf-8", "replace"), limit=1000))
                reply = reader.take(raw)
                if reply is not None:
                    break
            else:
                return None
        except BadReply as bad:
            # Refused as a reply: the host is tried again later (RFC 3463 X.5.0).
            raise self._protocol_error(str(bad), awaiting) from None
        self._replies += 1
        if reply.code == 421:
            raise _Stop(reply.to_reply(self.target.host), usable=False)
        return reply

    def _command(
        self,
        line: str,
        step: Step,
        *,
        timeout: float,
        utf8: bool = False,
        shown: str | None = None,
    ) -> Generator[Event, None, ServerReply]:
        """Send one command line and read its reply (``shown``: see :meth:`_send`)."""
        yield self._send([line], [step], timeout=timeout, utf8=utf8, shown=shown)
        awaiting = f"reply to {(shown if shown is not None else line).split(' ', 1)[0]}"
        # As _read, without a generator of its own: this runs for every command.
        while (reply := self._take_reply(awaiting)) is None:
            yield NeedData(timeout, awaiting, self._replies)
        return reply

    def _protocol_error(self, problem: str, awaiting: str) -> _Stop:
        # RFC 3463 X.5.0: a protocol error of no more specific kind.
        return _Stop(
            Reply(
                451,
                "4.5.0",
                f"{self.target.host} sent {problem} as the {awaiting}",
                host=self.target.host,
            ),
            usable=False,
        )

    def _positive(self, reply: ServerReply, *, expected: int, awaiting: str) -> bool:
        """True for the expected reply class (2 or 3), False for 4xx or 5xx; any other class is a
        protocol error that ends the session."""
        if reply.code // 100 == expected:
            return True
        if reply.code >= 400:
            return False
        shown = printable(" ".join(reply.lines), limit=80)
        raise self._protocol_error(f'an unexpected {reply.code} ("{shown}")', awaiting)

    # Opening a session.

    def _open(self) -> Generator[Event, None, None]:
        host = self.target.host
        greeting = yield from self._read(timeout=self._timeouts.greeting, awaiting="greeting")
        if greeting.code // 100 != 2:
            # RFC 5321 §3.1: a 554 greeting refuses this session, not these recipients; like
            # Postfix (smtp_skip_5xx_greeting) treat it as a host problem: X.4.1, try later.
            raise _Stop(
                Reply(
                    451,
                    "4.4.1",
                    f"{host} refused the session: {greeting.to_reply(host)}",
                    host=host,
                )
            )
        yield from self._hello()
        if self._tls is not TlsPolicy.NEVER:
            yield from self._start_tls(self._tls)
        if self.target.credentials is not None:
            yield from self._authenticate()
        self._fire(Step.OPENED)

    def _hello(self) -> Generator[Event, None, None]:
        """EHLO, or HELO to an old server; records what the server offers."""
        host = self.target.host
        ehlo = yield from self._command(
            f"EHLO {self._helo_name}", Step.EHLO, timeout=self._timeouts.ehlo
        )
        if self._positive(ehlo, expected=2, awaiting="reply to EHLO"):
            self.extensions = SmtpExtensions.from_ehlo(ehlo.lines)
            return
        if ehlo.code < 500:
            raise _Stop(ehlo.to_reply(host))
        # RFC 5321 §3.2: a server that does not know EHLO answers 5xx; fall back to HELO.
        helo = yield from self._command(
            f"HELO {self._helo_name}", Step.HELO, timeout=self._timeouts.ehlo
        )
        if not self._positive(helo, expected=2, awaiting="reply to HELO"):
            raise _Stop(helo.to_reply(host))
        self.extensions = SmtpExtensions()

    def _start_tls(self, policy: TlsPolicy) -> Generator[Event, None, None]:
        """STARTTLS as ``policy`` asks (RFC 3207), then EHLO again over TLS."""
        target = self.target
        if not self.extensions.starttls:
            if policy is TlsPolicy.OPPORTUNISTIC:
                self._note("STARTTLS not offered; continuing in plain text (opportunistic)")
                return
            # RFC 3463 X.7.4 "security features not supported"; Postfix says 4.7.4 "TLS is
            # required, but was not offered by host" and defers, as here.
            raise _Stop(
                Reply(
                    451,
                    "4.7.4",
                    f"TLS is required ({policy.value}), but {where(target)} does not offer "
                    "STARTTLS",
                    host=target.host,
                )
            )
        reply = yield from self._command("STARTTLS", Step.STARTTLS, timeout=self._timeouts.starttls)
        if not self._positive(reply, expected=2, awaiting="reply to STARTTLS"):
            # RFC 3207 §4: after a refusal (454) the client decides whether to go on in the
            # clear; the same connection is fine for that, nothing has changed on it.
            if policy is TlsPolicy.OPPORTUNISTIC:
                self._note("STARTTLS refused; continuing in plain text (opportunistic)")
                return
            raise _Stop(
                Reply(
                    451,
                    "4.7.4",
                    f"TLS is required ({policy.value}), but {where(target)} refused STARTTLS: "
                    f"{reply.to_reply(target.host)}",
                    host=target.host,
                )
            )
        self._fire(Step.TLS_GRANTED)
        # RFC 3207 §4.2: nothing learnt before TLS may be trusted after it. Bytes that arrived
        # in plain text after the 220 are either a broken server or an attacker injecting
        # replies the client would otherwise read as if they had come through TLS.
        stale = self._reader.discard()
        verify = policy is TlsPolicy.REQUIRED
        yield StartTls(tls_name(target), verify, self._timeouts.starttls)
        description, self._tls_description = self._tls_description, None
        if description is None:
            raise InvalidTransition("SMTP client: the driver went on without the TLS handshake")
        self.encrypted = True
        if stale:
            self._note(
                f"discarded {stale} octets sent in plain text after the 220 to STARTTLS "
                "(RFC 3207 section 4.2)"
            )
        self._note(description if verify else f"{description} ({policy.value} policy)")
        # RFC 3207 §4.2: forget what the server said in plain text and ask again.
        self.extensions = SmtpExtensions()
        yield from self._hello()

    def _authenticate(self) -> Generator[Event, None, None]:
        """AUTH PLAIN, or LOGIN when PLAIN is not offered (RFC 4954), over TLS only.

        Neither mechanism negotiates a security layer, so no EHLO follows (RFC 4954 §4).
        """
        target = self.target
        credentials = target.credentials
        assert credentials is not None  # noqa: S101 (called only with credentials)
        if not self.encrypted:
            raise _Stop(in_the_clear(target))
        offered = self.extensions.auth
        # PLAIN first: one round trip instead of three, and the same secret either way.
        if "PLAIN" in offered:
            mechanism = "PLAIN"
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd, as the initial response (RFC 4954 §4).
            token = _base64("\0".join(("", credentials.username, credentials.password)))
            reply = yield from self._command(
                f"AUTH PLAIN {token}",
                Step.AUTH,
                timeout=self._timeouts.auth,
                shown="AUTH PLAIN <redacted>",
            )
        elif "LOGIN" in offered:
            mechanism = "LOGIN"
            reply = yield from self._auth_login()
        else:
            shown = " ".join(sorted(offered)) or "none"
            raise _Stop(
                Reply(
                    451,
                    "4.7.4",
                    f"{where(target)} offers no AUTH mechanism spoolmail speaks (PLAIN, LOGIN); "
                    f"it offers: {shown}",
                    host=target.host,
                )
            )
        if self._positive(reply, expected=2, awaiting=f"reply to AUTH {mechanism}"):
            self._note(f"authenticated as {credentials.username} ({mechanism})")
            return
        raise _Stop(
            auth_refused(
                reply.to_reply(target.host),
                mechanism=mechanism,
                username=credentials.username,
                where=where(target),
            )
        )

    def _auth_login(self) -> Generator[Event, None, ServerReply]:
        """AUTH LOGIN: the user name and the password, each after a 334 challenge."""
        credentials = self.target.credentials
        assert credentials is not None  # noqa: S101 (called only with credentials)
        reply = yield from self._command("AUTH LOGIN", Step.AUTH, timeout=self._timeouts.auth)
        username = _base64(credentials.username)
        for secret, shown in ((username, username), (_base64(credentials.password), None)):
            if not self._positive(reply, expected=3, awaiting="reply to AUTH LOGIN"):
                return reply
            reply = yield from self._command(
                secret,
                Step.AUTH,
                timeout=self._timeouts.auth,
                shown=shown or "<password redacted>",
            )
        return reply

    # Kept connections.

    def _probe(self) -> Generator[Event, None, None]:
        # RFC 5321 §4.1.1.5: RSET starts clean and, here, proves the connection still works.
        reply = yield from self._command("RSET", Step.RSET, timeout=self._timeouts.rset)
        if reply.code // 100 == 2:
            self._fire(Step.RESET)
            self.clean = True

    def _quit(self, timeout: float | None) -> Generator[Event, None, None]:
        # RFC 5321 §4.1.1.10: say QUIT before closing; the 221 decides nothing, and nor does
        # whatever the server said before it.
        self._reader.discard()
        wait = self._timeouts.quit if timeout is None else min(timeout, self._timeouts.quit)
        yield from self._command("QUIT", Step.QUIT, timeout=wait)
        self.state = State.CLOSED

    # Transactions.

    def _deliver(
        self, message: Outgoing, recipients: Sequence[str], content: Content
    ) -> Generator[Event, None, None]:
        """One or more transactions until every recipient has an answer."""
        answers = self.answers
        host = self.target.host
        refused = refusal(
            self.extensions, message, recipients, host, utf8_headers=content.utf8_headers
        )
        if refused is not None:
            self._note(f"not sent: {refused}")
            _answer_all(answers, recipients, refused)
            return
        pending = []
        for recipient in recipients:
            if not recipient or UNSENDABLE.search(recipient):
                # RFC 3463 X.1.3: bad destination mailbox address syntax.
                answers[recipient] = Reply(
                    553, "5.1.3", f"recipient address {recipient!r} cannot be sent", host=host
                )
            else:
                pending.append(recipient)
        if not pending:
            return
        # RFC 6531 §3.4: SMTPUTF8 when the envelope or the message needs it, UTF-8 header fields
        # (RFC 6532) included.
        utf8 = content.utf8_headers or needs_smtputf8(message.sender, pending)
        parameters = mail_parameters(self.extensions, message, content=content, utf8=utf8)
        mail = f"MAIL FROM:<{message.sender}>{parameters}"
        limit = self._max_recipients
        while True:
            if not self.clean:
                # The transaction before failed at its end: start this one clean (RFC 5321
                # §4.1.1.5).
                yield from self._reset()
            batch, pending = pending[:limit], pending[limit:]
            transaction = self._pipelined if self.extensions.pipelining else self._lockstep
            outcome = yield from transaction(mail=mail, batch=batch, utf8=utf8)
            if outcome.refused is not None:
                # The server refused the sender; it would refuse the next transaction alike.
                _answer_all(answers, pending, outcome.refused)
                return
            if outcome.over_limit:
                if outcome.room == 0:
                    # It took no recipient at all: another transaction now would get nowhere.
                    # The recipients wait for the next attempt, even after an RFC 821 "552 too
                    # many recipients", which RFC 5321 §4.5.3.1.10 says clients SHOULD treat
                    # as temporary: as it stands, it would fail them for good.
                    over = {rcpt: _for_now(reply) for rcpt, reply in outcome.over_limit.items()}
                    answers.update(over)
                    _answer_all(answers, pending, next(iter(over.values())))
                    return
                # RFC 5321 §4.5.3.1.10: the rest go in the next transaction, no larger than the
                # room the server had in this one.
                limit = min(limit, outcome.room)
                pending = [*outcome.over_limit, *pending]
                self._note(
                    f"{host} took {outcome.room} recipients in this transaction; "
                    f"{len(outcome.over_limit)} more go in the next (RFC 5321 section 4.5.3.1.10)"
                )
            if not pending:
                return
            self._note(f"next transaction on this connection: {len(pending)} recipients left")

    def _lockstep(
        self, *, mail: str, batch: Sequence[str], utf8: bool
    ) -> Generator[Event, None, _Outcome]:
        """One transaction, each command waiting for the reply to the one before."""
        host = self.target.host
        self.clean = False
        self.data_ended = False
        reply = yield from self._command(mail, Step.MAIL, timeout=self._timeouts.mail, utf8=utf8)
        if not self._positive(reply, expected=2, awaiting="reply to MAIL"):
            refused = reply.to_reply(host)
            _answer_all(self.answers, batch, refused)
            self._fire(Step.ABANDONED)
            return _Outcome(refused=refused)
        rcpts = _RcptReplies(self)
        for recipient in batch:
            reply = yield from self._command(
                f"RCPT TO:<{recipient}>", Step.RCPT, timeout=self._timeouts.rcpt, utf8=utf8
            )
            rcpts.take(recipient, reply)
        if not rcpts.accepted:
            # RFC 5321 §3.3: no recipient accepted, nothing to send; end the transaction.
            yield from self._reset()
            return rcpts.outcome()
        data = yield from self._command("DATA", Step.DATA, timeout=self._timeouts.data_start)
        yield from self._send_message(accepted=rcpts.accepted, data=data)
        return rcpts.outcome()

    def _pipelined(
        self, *, mail: str, batch: Sequence[str], utf8: bool
    ) -> Generator[Event, None, _Outcome]:
        """One transaction with PIPELINING (RFC 2920 §3.1): MAIL, every RCPT and DATA, which
        may end a group, are sent before their replies are read, in order."""
        timeouts = self._timeouts
        commands = [mail, *(f"RCPT TO:<{recipient}>" for recipient in batch), "DATA"]
        steps = [Step.MAIL, *(Step.RCPT for _ in batch), Step.DATA]
        self._note(f"pipelining MAIL, {len(batch)} RCPT and DATA (RFC 2920)")
        rcpts = _RcptReplies(self)
        mail_reply: ServerReply | None = None
        data: ServerReply | None = None
        self.clean = False
        self.data_ended = False
        for start, group in pipeline_groups(commands, utf8=utf8):
            yield self._send(
                group, steps[start : start + len(group)], timeout=timeouts.mail, utf8=utf8
            )
            for index in range(start, start + len(group)):
                kind = 0 if index == 0 else 1 if index <= len(batch) else 2
                awaiting = _GROUP_REPLIES[kind]
                timeout = (timeouts.mail, timeouts.rcpt, timeouts.data_start)[kind]
                # As _read, without a generator of its own: three or more replies a message,
                # and every event passed up through each generator in the chain.
                while (reply := self._take_reply(awaiting)) is None:
                    yield NeedData(timeout, awaiting, self._replies)
                if kind == 0:
                    mail_reply = reply
                    self._positive(mail_reply, expected=2, awaiting=awaiting)
                elif kind == 1:
                    if mail_reply is not None and mail_reply.code // 100 == 2:
                        rcpts.take(batch[index - 1], reply)
                else:
                    data = reply
            assert mail_reply is not None  # noqa: S101 (the first group starts with MAIL)
            if mail_reply.code // 100 != 2:
                break
        assert mail_reply is not None  # noqa: S101 (the first group starts with MAIL)
        if mail_reply.code // 100 != 2:
            return (yield from self._mail_refused(mail_reply, data, batch))
        assert data is not None  # noqa: S101 (MAIL was accepted, so every group went)
        if not rcpts.accepted:
            # RFC 2920 §3.1: with every RCPT refused, the reply to DATA must still be checked;
            # refused, RSET ends the transaction, accepted, a lone "." does.
            if self._positive(data, expected=3, awaiting="reply to DATA"):
                yield from self._abandon_data()
            else:
                yield from self._reset()
            return rcpts.outcome()
        yield from self._send_message(accepted=rcpts.accepted, data=data)
        return rcpts.outcome()

    def _mail_refused(
        self, mail_reply: ServerReply, data: ServerReply | None, batch: Sequence[str]
    ) -> Generator[Event, None, _Outcome]:
        """A pipelined transaction whose MAIL was refused: the RCPTs and DATA after it were
        refused too ("503 need MAIL"), unless a server said 354 to DATA all the same."""
        if data is not None and data.code == 354:
            yield from self._abandon_data()
        else:
            self._fire(Step.ABANDONED)
        refused = mail_reply.to_reply(self.target.host)
        _answer_all(self.answers, batch, refused)
        return _Outcome(refused=refused)

    def _send_message(
        self, *, accepted: Sequence[str], data: ServerReply
    ) -> Generator[Event, None, None]:
        """After the reply to DATA: have the message streamed, and answer the accepted
        recipients."""
        host = self.target.host
        if not self._positive(data, expected=3, awaiting="reply to DATA"):
            _answer_all(self.answers, accepted, data.to_reply(host))
            # MAIL and the RCPTs still stand; end the transaction before any next one.
            yield from self._reset()
            return
        self._check_in_step("the message")
        self._fire(Step.GO_AHEAD)
        yield SendMessage(self._timeouts.data_block)
        sent, self._octets_sent = self._octets_sent, None
        if sent is None:
            raise InvalidTransition("SMTP client: the driver went on without sending the message")
        self._note(f"message data sent: {sent} octets (content not recorded)")
        awaiting = "reply to the end of data"
        while (end := self._take_reply(awaiting)) is None:
            yield NeedData(self._timeouts.data_end, awaiting, self._replies)
        # RFC 5321 §4.1.1.4: the reply to the final "." is the verdict for every accepted
        # recipient, whether 2xx, 4xx or 5xx; only a 3xx here is a protocol error. After a 2xx
        # the next MAIL may follow at once; after a refusal, RSET first, since not every server
        # forgets a failed transaction.
        self.clean = self._positive(end, expected=2, awaiting="reply to the end of data")
        self._fire(Step.VERDICT)
        _answer_all(self.answers, accepted, end.to_reply(host))

    def _abandon_data(self) -> Generator[Event, None, None]:
        """End a DATA the server accepted although no recipient was: a lone "." (RFC 2920 §3.1);
        its reply concerns no recipient."""
        self._note("DATA accepted with no recipient accepted: ending it at once")
        self._fire(Step.LONE_DOT)
        if self._transcript is not None:
            self._transcript.sent(".")
        yield Send(b".\r\n", self._timeouts.data_block, "the end of data")
        yield from self._read(timeout=self._timeouts.data_end, awaiting="reply to the end of data")
        self._fire(Step.VERDICT)

    def _reset(self) -> Generator[Event, None, None]:
        """RSET: end an open transaction (RFC 5321 §4.1.1.5)."""
        host = self.target.host
        reply = yield from self._command("RSET", Step.RSET, timeout=self._timeouts.rset)
        if reply.code // 100 != 2:
            # The server is in a state nothing more can be done in (RFC 3463 X.5.0).
            raise _Stop(
                Reply(451, "4.5.0", f"{host} refused RSET: {reply.to_reply(host)}", host=host),
                usable=False,
            )
        self._fire(Step.RESET)
        self.clean = True


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# The recipients' answers within one goal.


def _answer_all(answers: dict[str, Reply], recipients: Iterable[str], reply: Reply) -> None:
    for recipient in recipients:
        answers.setdefault(recipient, reply)


def _for_now(reply: Reply) -> Reply:
    """A "too many recipients" reply (:func:`~spoolmail._transport.policy.too_many`) as the
    temporary one RFC 5321 §4.5.3.1.10 says it is: a 552 becomes 452 4.5.3, the server's
    words kept."""
    if reply.code < 500:
        return reply
    return Reply(452, "4.5.3", f"{reply} (RFC 821's code for too many recipients)", host=reply.host)


@attrs.frozen
class _Outcome:
    """How one transaction ended, for the loop that decides on the next one.

    ``refused``: the server refused MAIL, so it would refuse the next transaction too.
    ``over_limit``: recipients the server had no room for ("too many"), with its replies, in
    order. ``room``: how many RCPTs it answered before the first of those.
    """

    refused: Reply | None = None
    over_limit: Mapping[str, Reply] = attrs.field(factory=dict)
    room: int = 0


class _RcptReplies:
    """The RCPT replies of one transaction, sorted as they arrive: accepted, answered (refused
    for good or for now) and over the server's limit."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self._protocol = protocol
        self.accepted: list[str] = []
        self.over_limit: dict[str, Reply] = {}
        self.room = 0

    def take(self, recipient: str, reply: ServerReply) -> None:
        if self._protocol._positive(reply, expected=2, awaiting="reply to RCPT"):
            self.accepted.append(recipient)
        else:
            answer = reply.to_reply(self._protocol.target.host)
            if too_many(answer):
                self.over_limit[recipient] = answer
                return
            self._protocol.answers[recipient] = answer
        if not self.over_limit:
            self.room += 1

    def outcome(self) -> _Outcome:
        return _Outcome(over_limit=self.over_limit, room=self.room)
