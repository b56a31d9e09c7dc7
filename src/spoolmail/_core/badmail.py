"""The BadMail report (``BadMail/ID.BDR``): one text for every way into BadMail.

A message lands in BadMail when it can be neither delivered nor returned
(docs/design.md#state-machine): a Pickup file that is no message, a Pickup entry refused unread, a
null-sender message (a DSN) that failed, a message whose queue files cannot be read, a message
found without its envelope. Each says why in the same layout, so an operator (``spoolmail badmail
show``) and a script reading the first line see one format:

    <status> <reason, one line>
    <blank line>
    <what happened and what to do: one paragraph>
    <blank line>
    <address>: <reply> (from <host>)   (one line per failed recipient)
    <blank line>
    It was the <what a DSN reported>   (when it was a DSN)
    <blank line>
    <title>:                      (the transcript, the envelope file as found, ...)
    <text>

The first line is what ``BadMailItem.reason`` shows: an RFC 3463 enhanced status code and a
human-readable sentence. Pure: builds text from values, reads and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from spoolmail._core.envelope import Recipient, RecipientState

__all__ = [
    "BadMailReport",
    "damaged_report",
    "failure_line",
    "orphan_report",
    "refused_report",
    "rejected_report",
    "render_badmail_report",
    "requeue_note",
    "undeliverable_report",
]


@attrs.frozen(kw_only=True)
class BadMailReport:
    """Why a message is in BadMail; :func:`render_badmail_report` writes it as ``.BDR``."""

    status: str
    """The RFC 3463 enhanced status code (``5.3.4``, ``4.3.0``)."""
    reason: str
    """What went wrong. Its first line is the report's first line; further lines are details."""
    explanation: str = ""
    """What happened to the message and what an operator can do."""
    failures: tuple[str, ...] = ()
    """One line per failed recipient: address, reply, answering host."""
    about: str = ""
    """What the message reported, when it was a DSN (both failures are kept)."""
    attachment: tuple[str, str] | None = None
    """A titled text below the reason: the transcript, the envelope file as found."""


def render_badmail_report(report: BadMailReport) -> bytes:
    """The ``.BDR`` file: UTF-8 with LF line ends (see the module docstring for the layout)."""
    first, _, details = report.reason.partition("\n")
    sections = [f"{report.status} {first}"]
    if details.strip():
        sections.append(details.strip("\n"))
    if report.explanation:
        sections.append(report.explanation)
    if report.failures:
        sections.append("\n".join(report.failures))
    if report.about:
        sections.append(f"It was the {report.about}")
    text = "\n\n".join(sections) + "\n"
    if report.attachment is not None:
        title, body = report.attachment
        text += f"\n{title}:\n{body}"
        if body and not body.endswith("\n"):
            text += "\n"
    return text.encode("utf-8", "replace")


def failure_line(recipient: Recipient) -> str:
    """``<address>: <reply> (from <host>)``, as a DSN's human-readable part says it."""
    reply = recipient.reply
    where = f" (from {reply.host})" if reply is not None and reply.host else ""
    return f"<{recipient.address}>: {reply}{where}"


def rejected_report(*, name: str, kept_as: str, status: str, reason: str) -> BadMailReport:
    """A Pickup file that cannot be a message (no sender, no recipient, bad headers, too big);
    ``kept_as`` is the name of its ``.BAD`` copy."""
    return BadMailReport(
        status=status,
        reason=reason,
        explanation=(
            f"The file {name!r} in Pickup could not be queued; it is kept as {kept_as} "
            "exactly as it was written. Fix it and move it back into Pickup to send it."
        ),
    )


def refused_report(*, name: str, what: str) -> BadMailReport:
    """A Pickup entry that is not a regular file with one link, refused without being read
    (docs/design.md#pickup-intake: a link could make the service read files outside the
    MailRoot, a FIFO or device could hang it)."""
    return BadMailReport(
        status="5.7.0",
        reason=f"Pickup entry {name!r} refused: it is {what}",
        explanation=(
            "Only regular files with a single link are read from Pickup (a link could make the "
            "service read files outside the MailRoot, a FIFO or device could hang it). The entry "
            "was removed from Pickup without being opened; whatever it pointed to is untouched. "
            "Write the message itself into Pickup to send it."
        ),
    )


def undeliverable_report(
    *, recipients: Iterable[Recipient], about: str, transcript: str
) -> BadMailReport:
    """A null-sender message (a DSN) that failed: it cannot be returned to anybody (RFC 3464
    section 1, RFC 5321 section 6.1: no bounce loops)."""
    failures = [r for r in recipients if r.state is RecipientState.FAILED]
    first = failures[0].reply if failures and failures[0].reply else None
    return BadMailReport(
        status=first.status if first else "5.0.0",
        reason=(
            "This message has a null sender (it is a delivery status notification) "
            "and cannot be delivered, so it cannot be returned to anybody."
        ),
        failures=tuple(failure_line(r) for r in failures),
        about=about,
        attachment=("Transcript", transcript),
    )


def damaged_report(*, reason: str, envelope: bytes) -> BadMailReport:
    """A queued message whose files cannot be read (envelope unreadable, message missing)."""
    return BadMailReport(
        status="4.3.0",
        reason=reason,
        explanation=(
            "The message was moved aside so that the Queue can go on; an operator can read "
            "what is left of it here and requeue it with its sender and recipients."
        ),
        attachment=("The envelope file as found", envelope.decode("utf-8", "replace")),
    )


def orphan_report() -> BadMailReport:
    """A message found in the Queue without an envelope (a commit a crash cut short)."""
    return BadMailReport(
        status="4.3.0",
        reason=(
            "found in the Queue without an envelope (a commit was interrupted); the envelope "
            "is unknown, so the message is kept here for an operator"
        ),
        explanation="Requeue it with its sender and recipients to send it.",
    )


def requeue_note(new_id: str, addresses: Iterable[str]) -> bytes:
    """What a partly requeued entry's report gains: where the chosen recipients went."""
    return f"\nRequeued as {new_id} for: {', '.join(sorted(addresses))}\n".encode()
