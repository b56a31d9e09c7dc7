"""Putting a message into Pickup: the file a writer hands over, checked before it is written.

``pickup_file`` turns bytes or an ``email.message.Message`` and an optional envelope into the
bytes of a Pickup file (``x-sender`` / ``x-receiver`` lines, as IIS pickup files have, then the
message with CRLF line ends) and checks it as intake will, so that a message the service could
only put into BadMail is refused now, with the reason. :meth:`Spool.submit` writes it through
the store; :class:`Pickup` writes it with nothing but the right to create files in Pickup
(``PickupWriter``), as applications on a shared server are set up (Django's backend, scripts).
"""

from __future__ import annotations

import email.generator
import email.message
import email.policy
import io
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from spoolmail._core.address import AddressRole, parse_address_list, parse_mailbox
from spoolmail._core.pickup import PickupOptions, PickupRejected, parse_pickup, render_pickup
from spoolmail._store.pickup_writer import PickupWriter
from spoolmail.exceptions import ConfigurationError, MessageError

__all__ = ["Pickup", "pickup_file"]

Message = bytes | bytearray | memoryview | email.message.Message


def pickup_file(
    message: Message,
    *,
    sender: str | None,
    recipients: Sequence[str] | None,
    now: datetime,
    max_size: int | None = None,
) -> bytes:
    """The Pickup file for ``message`` (see :meth:`Spool.submit` for the rules), checked as
    intake will check it: :class:`~spoolmail.exceptions.MessageError` with the reason if the
    service could only put it into BadMail. ``max_size``: the service's ``max_message_size``,
    which intake applies to the whole file (``None``: not known here, not checked)."""
    if not isinstance(message, email.message.Message | bytes | bytearray | memoryview):
        raise TypeError(f"submit takes bytes or an email.message.Message, not {type(message)!r}")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
    ):
        raise ConfigurationError(f"max_size must be a number of bytes, 1 or more, not {max_size!r}")
    if isinstance(recipients, str):
        raise TypeError("recipients is a sequence of addresses, not one string")
    if recipients is not None and not recipients:
        # An app's list that came out empty would otherwise send to the To:/Cc:/Bcc: fields.
        raise MessageError(
            "recipients is empty: no one to send to (None takes them from the headers)",
            status="5.5.1",
        )
    # Writers' forms ("Name" <a@b>, <a@b>, <> for the null sender) become plain paths.
    if sender is not None:
        sender = parse_mailbox(sender, default_domain=None, role=AddressRole.SENDER)
    if recipients is not None:
        recipients = [
            parse_mailbox(r, default_domain=None, role=AddressRole.RECIPIENT) for r in recipients
        ]
    if isinstance(message, email.message.Message):
        envelope = [*([] if sender is None else [sender]), *(recipients or ())]
        raw = _message_bytes(message, utf8=_international(message, envelope))
    else:
        raw = bytes(message)
    data = render_pickup(raw, sender=sender, recipients=recipients)
    if max_size is not None and len(data) > max_size:
        # Intake would not even read it (KB Q201314): BadMail, and nobody told.
        raise MessageError(
            f"the message is {len(data)} bytes as a Pickup file, over the limit of {max_size} "
            "bytes (the service's max_message_size)",
            status="5.3.4",
        )
    check = parse_pickup(
        data,
        options=PickupOptions(
            fqdn="localhost", default_domain="localhost", max_message_size=len(data) + 1
        ),
        queue_id="submit",
        now=now,
    )
    if isinstance(check, PickupRejected):
        raise MessageError(check.reason, status=check.status)
    return data


class Pickup:
    """A MailRoot's Pickup folder, for a program that may only create files there.

    ``Pickup("MailRoot").submit(message, sender=..., recipients=...)`` does what
    :meth:`Spool.submit` does (same checks, same file, returns the queue id the message will
    have), but needs neither the right to list the MailRoot nor SortTemp: the file is written
    under a hidden name in Pickup and renamed (docs/running-as-a-service.md, "Permissions").
    A ``spoolmail run`` on the MailRoot delivers it. Folders only (OS paths).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "MailRoot",
        *,
        fsync: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._writer = PickupWriter(root, fsync=fsync, clock=clock)
        self._clock = clock

    @property
    def folder(self) -> str:
        """The Pickup folder's path."""
        return str(self._writer.folder)

    def submit(
        self,
        message: Message,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        max_size: int | None = None,
    ) -> str:
        """Write ``message`` into Pickup atomically; the queue id it will have (``max_size``:
        as :meth:`Spool.submit`'s)."""
        data = pickup_file(
            message, sender=sender, recipients=recipients, now=self._clock(), max_size=max_size
        )
        return self._writer.write([data])


# RFC 5322 sections 3.6.2, 3.6.3 and 3.6.6: the fields that hold addresses.
_ADDRESS_HEADERS = frozenset(
    {"from", "sender", "reply-to", "to", "cc", "bcc"}
    | {"resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc"}
)


class _Compat32UTF8(email.policy.Compat32):
    """``compat32``, except that a header with non-ASCII text is written as UTF-8 (RFC 6532), as
    ``EmailPolicy(utf8=True)`` writes it, instead of as an RFC 2047 encoded-word: an encoded-word
    is not allowed in an address (RFC 2047 section 5), so a non-ASCII address would be lost.
    """

    def fold_binary(self, name: str, value: str) -> bytes:
        if isinstance(value, str) and not value.isascii():
            # surrogateescape gives back the bytes of a message parsed with 8-bit headers.
            return f"{name}: {value}{self.linesep}".encode("utf-8", "surrogateescape")
        return super().fold_binary(name, value)


def _international(message: email.message.Message, envelope: Iterable[str]) -> bool:
    """Whether an address of the message or its envelope is non-ASCII, so that it needs SMTPUTF8
    (RFC 6531) and its headers are written as UTF-8, as ``smtplib``'s ``send_message`` decides.
    A non-ASCII display name alone is not: it can be, and is, RFC 2047-encoded.
    """
    addresses = list(envelope)
    for name, value in message.items():
        text = str(value)
        if name.lower() not in _ADDRESS_HEADERS or text.isascii():
            continue
        try:
            addresses += parse_address_list(text, default_domain=None)
        except MessageError:
            continue  # the Pickup check below names the header
    return not all(address.isascii() for address in addresses)


def _message_bytes(message: email.message.Message, *, utf8: bool) -> bytes:
    """The message with CRLF line ends, written under its own policy, whichever that is.

    Not ``message.as_bytes(policy=...)``: subclasses override ``as_bytes`` without a ``policy``
    argument (Django's ``SafeMIMEText``), and a ``compat32`` message is best written by
    ``compat32``. Headers are UTF-8 (RFC 6532) exactly when ``utf8`` says the message needs
    SMTPUTF8, so ``zoë@partner.test`` stays an address instead of becoming
    ``=?utf-8?q?zo=C3=AB?=@...``, and mail sent without SMTPUTF8 has no raw UTF-8 in its headers.
    """
    policy: email.policy.Policy = message.policy
    if isinstance(policy, email.policy.EmailPolicy):
        policy = policy.clone(utf8=utf8)
    elif utf8 and isinstance(policy, email.policy.Compat32):
        policy = _Compat32UTF8()
    buffer = io.BytesIO()
    generator = email.generator.BytesGenerator(
        buffer, mangle_from_=False, policy=policy.clone(linesep="\r\n")
    )
    generator.flatten(message)
    return buffer.getvalue()
