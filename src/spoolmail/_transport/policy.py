"""What the SMTP client decides from values alone: refusals, MAIL parameters, pipelining groups,
what a RCPT or AUTH refusal means, and how a peer is named.

Pure functions of a server's announced :class:`~spoolmail._transport.replies.SmtpExtensions`,
the envelope's values and the replies it got (RFC 1870 SIZE, RFC 6531 SMTPUTF8, RFC 6152
8BITMIME, RFC 2920 pipelining windows, RFC 5321 §4.5.3.1.10 recipient limits, RFC 4954 AUTH,
RFC 3463 status codes). The protocol asks them; they read nothing but their arguments, write
nothing, and never touch a socket, a clock, the transcript or the stored message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from spoolmail._core.reply import Reply
from spoolmail._core.routing import Target
from spoolmail._transport.base import Outgoing
from spoolmail._transport.data import Content
from spoolmail._transport.replies import SmtpExtensions

__all__ = [
    "PIPELINE_WINDOW",
    "UNSENDABLE",
    "auth_refused",
    "in_the_clear",
    "mail_parameters",
    "needs_smtputf8",
    "pipeline_groups",
    "refusal",
    "tls_name",
    "too_many",
    "where",
]

# Control characters can never be part of a path (RFC 5321 §4.1.2: qtextSMTP and quoted-pairSMTP
# are printable), and CR or LF in one would smuggle a command into the session.
UNSENDABLE = re.compile(r"[\x00-\x1f\x7f]")
# RFC 2920 §3.1: a client whose writes block "MUST ... make sure that each group of commands fits
# entirely within the [TCP] window", "usually, but not always, 4K octets", or client and server
# can each block writing to the other. Longer transactions go in several groups, each one's
# replies read before the next is written.
PIPELINE_WINDOW = 4096


def where(target: Target) -> str:
    """``name[address]:port``, or ``address:port``: how messages name the peer."""
    if target.name and target.name != target.host:
        return f"{target.name}[{target.host}]:{target.port}"
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"


def tls_name(target: Target) -> str:
    """The name the certificate must carry: the host name the target was found under, as
    Postfix's "verify" level matches the MX or smart host name (``smtp_tls_verify_cert_match =
    hostname``), or the address itself for a literal."""
    if target.literal or not target.name:
        return target.host
    return target.name


def needs_smtputf8(sender: str, recipients: Iterable[str]) -> bool:
    return not sender.isascii() or not all(r.isascii() for r in recipients)


def refusal(
    extensions: SmtpExtensions,
    message: Outgoing,
    recipients: Sequence[str],
    host: str,
    *,
    utf8_headers: bool,
) -> Reply | None:
    """A permanent reply for every recipient when this server cannot take the message at all."""
    if extensions.size and message.size > extensions.size:
        # RFC 1870 §4: a message over the announced limit fails for good (552); say so without
        # sending it.
        return Reply(
            552,
            "5.3.4",
            f"message of {message.size} octets exceeds the {extensions.size}-octet limit "
            f"{host} announces (SIZE)",
            host=host,
        )
    if needs_smtputf8(message.sender, recipients) and not extensions.smtputf8:
        # RFC 6531: a server without SMTPUTF8 must not be sent a non-ASCII address; the headers
        # most likely carry it too, so no part of the message may go. X.6.7 is the status RFC
        # 6531 gives "non-ASCII addresses not permitted".
        return Reply(
            553,
            "5.6.7",
            f"{host} does not offer SMTPUTF8, which the non-ASCII addresses need",
            host=host,
        )
    if utf8_headers and not extensions.smtputf8:
        # RFC 6531 §3.4: a message with UTF-8 header fields (RFC 6532) needs SMTPUTF8, and a
        # server without it has no way to take them; 8BITMIME covers only the body (RFC 6152).
        # Postfix gives the same X.6.7 for it.
        return Reply(
            554,
            "5.6.7",
            f"{host} does not offer SMTPUTF8, which the message's UTF-8 header fields need",
            host=host,
        )
    if UNSENDABLE.search(message.sender):
        # RFC 3463 X.1.7: bad sender's mailbox address syntax.
        return Reply(553, "5.1.7", f"sender address {message.sender!r} cannot be sent", host=host)
    return None


def mail_parameters(
    extensions: SmtpExtensions, message: Outgoing, *, content: Content, utf8: bool
) -> str:
    parameters = []
    if extensions.size is not None:
        # RFC 1870 §5: the size counts CRLFs but not stuffing dots or the final ".": exactly the
        # stored size.
        parameters.append(f"SIZE={message.size}")
    if extensions.eight_bit_mime and content.eight_bit:
        parameters.append("BODY=8BITMIME")  # RFC 6152 §3
    if utf8:
        parameters.append("SMTPUTF8")  # RFC 6531
    return "".join(f" {p}" for p in parameters)


def too_many(reply: Reply) -> bool:
    """Whether a RCPT reply says the transaction has no room for more recipients.

    RFC 5321 §4.5.3.1.10: a server out of room answers 452 (RFC 3463 X.5.3, "too many
    recipients"); servers following RFC 821 said 552, which clients "SHOULD treat ... as a
    temporary, rather than permanent, failure". Such a recipient is not refused: it goes in the
    next transaction.
    """
    if reply.code not in (452, 552):
        return False
    if reply.enhanced is not None:
        return reply.enhanced[1:] == ".5.3"
    return reply.code == 452 or "too many recipients" in reply.text.lower()


def pipeline_groups(commands: Sequence[str], *, utf8: bool) -> Iterator[tuple[int, list[str]]]:
    """``commands`` cut into groups of at most :data:`PIPELINE_WINDOW` octets (one command at
    least), each with the index of its first command."""
    group: list[str] = []
    start = size = 0
    for index, command in enumerate(commands):
        length = len(command.encode("utf-8" if utf8 else "ascii")) + 2
        if group and size + length > PIPELINE_WINDOW:
            yield start, group
            group, start, size = [], index, 0
        group.append(command)
        size += length
    if group:
        yield start, group


def in_the_clear(target: Target) -> Reply:
    """Why credentials are not sent on a connection without TLS."""
    # PLAIN and LOGIN send the password itself (RFC 4616 §6): never without TLS.
    # RFC 3463 X.7.10 "encryption needed" (registered by RFC 5248): a privacy layer must come
    # first.
    assert target.credentials is not None  # noqa: S101 (only called with credentials)
    return Reply(
        451,
        "4.7.10",
        f"will not authenticate to {where(target)} as {target.credentials.username} in the "
        "clear: the connection has no TLS",
        host=target.host,
    )


def auth_refused(reply: Reply, *, mechanism: str, username: str, where: str) -> Reply:
    """What a refused AUTH means for the recipients: try later, keeping the server's detail.

    A wrong or expired password is the operator's to fix, not the recipients' fault, and it
    refuses every message at once: bouncing them all would turn one configuration slip into mass
    non-delivery. So, like Postfix (``smtp_sasl_auth_soft_bounce = yes``, its default), a 535
    (RFC 4954 §6, 5.7.8 "authentication credentials invalid") defers as 4.7.8, and any other
    refusal as 4.7.x; the queue's expiry still ends it with a DSN, and the transcript says why.
    """
    subject, _, detail = (reply.enhanced or "").partition(".")[2].partition(".")
    if subject == "7" and detail:
        enhanced = f"4.7.{detail}"
    else:
        enhanced = "4.7.8" if reply.code == 535 else "4.7.0"
    return Reply(
        451, enhanced, f"{where} refused AUTH {mechanism} as {username}: {reply}", host=reply.host
    )
