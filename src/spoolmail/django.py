"""Django's ``EMAIL_BACKEND`` for a MailRoot: ``EMAIL_BACKEND = "spoolmail.django.EmailBackend"``.

Each message Django sends is written into Pickup through :meth:`spoolmail.Spool.submit`, with
the envelope Django's SMTP backend would use (``from_email``; To, Cc and Bcc), and a
:class:`~spoolmail.MailService` (``spoolmail run``) delivers it. The backend only writes
Pickup files: it never runs the service, opens a socket or reads the Queue. It is the one module
of spoolmail that imports Django, so ``import spoolmail`` never needs it. Settings:

- ``SPOOLMAIL_ROOT``: the MailRoot (a folder path or an FS URL such as ``osfs:///srv/mailroot``),
  opened when a connection opens and closed with it; or a :class:`~spoolmail.Spool` object, used
  as it is and never closed (tests: ``spoolmail.testing``'s ``spoolmail_spool``). Required.
- ``SPOOLMAIL_DURABILITY``: ``"fsync"`` (the default) or ``"none"``, for a MailRoot the backend
  opens (a :class:`~spoolmail.Durability` works too).
- ``SPOOLMAIL_MAX_MESSAGE_SIZE``: the service's ``max_message_size`` in bytes, so that a message
  it would refuse raises (``MessageError``, 5.3.4) when Django sends it, instead of going into
  BadMail unseen. Unset (``None``): not checked, as the backend cannot read the service's
  settings.

``get_connection(root=..., durability=..., max_message_size=...)`` overrides them for one
connection.
"""

from __future__ import annotations

import email.message
import email.policy
import os
import threading
from collections.abc import Sequence
from email.utils import getaddresses
from typing import Any

from spoolmail._store.spool import Spool
from spoolmail._store.store import Durability
from spoolmail._store.submission import Pickup
from spoolmail.exceptions import DependencyError, SpoolmailError

try:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.mail.backends.base import BaseEmailBackend
except ModuleNotFoundError as exc:  # pragma: no cover - Django is in the test extra
    if not (exc.name or "").startswith("django"):
        raise
    raise DependencyError("spoolmail.django needs Django: pip install 'spoolmail[django]'") from exc

__all__ = ["EmailBackend"]

Root = Spool | str | os.PathLike[str]

# FS URLs whose filesystem lives only as long as the object that opened it: a backend that
# opened one per connection would write every message into a spool that vanishes at close().
_EPHEMERAL = ("mem://", "temp://")


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # Django ships no type information
    """Writes Django's email messages into a MailRoot's Pickup folder.

    ``send_messages`` returns how many messages were written; a message without recipients is
    skipped, as Django's SMTP backend skips it. Each written message gets the queue id it will
    have in the Queue, in Drop and in ``spoolmail queue`` as ``message.spoolmail_queue_id``.

    A message spoolmail cannot take (an address that is not one: ``MessageError``) or a MailRoot
    that cannot be written (``StorageError``) raises a
    :class:`~spoolmail.exceptions.SpoolmailError`, unless the backend was made with
    ``fail_silently=True``; then that message is not counted and the others are still written.
    Django's own checks (a newline in a header: ``BadHeaderError``) raise either way, as with
    Django's SMTP backend.

    Connections behave like Django's SMTP backend's: ``send_messages`` opens the spool and
    closes it again unless it was already open, so ``with get_connection() as connection:``
    opens it once for many messages. One backend may be shared between threads.
    """

    def __init__(
        self,
        fail_silently: bool = False,
        *,
        root: Root | None = None,
        durability: Durability | str | None = None,
        max_message_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.root: Root = _root(getattr(settings, "SPOOLMAIL_ROOT", None) if root is None else root)
        self.durability = _durability(
            getattr(settings, "SPOOLMAIL_DURABILITY", Durability.FSYNC)
            if durability is None
            else durability
        )
        self.max_message_size = _max_message_size(
            getattr(settings, "SPOOLMAIL_MAX_MESSAGE_SIZE", None)
            if max_message_size is None
            else max_message_size
        )
        self._spool: Spool | Pickup | None = None
        self._lock = threading.RLock()

    def open(self) -> bool | None:
        """Open the spool. ``True`` when this call opened it, ``False`` when it was open already,
        ``None`` when opening failed and the backend fails silently (Django's convention)."""
        with self._lock:
            if self._spool is not None:
                return False
            if isinstance(self.root, Spool):
                self._spool = self.root
                return True
            try:
                self._spool = _open(self.root, self.durability)
            except SpoolmailError:
                if self.fail_silently:
                    return None
                raise
            return True

    def close(self) -> None:
        """Close the spool if this backend opened it (a Spool given as the root stays open)."""
        with self._lock:
            spool, self._spool = self._spool, None
            if not isinstance(spool, Spool) or spool is self.root:
                return  # nothing opened, a Pickup folder (nothing to close), or the caller's
            try:
                spool.close()
            except SpoolmailError:
                if not self.fail_silently:
                    raise

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Write each message into Pickup; return how many were written."""
        if not email_messages:
            return 0
        with self._lock:
            opened = self.open()
            spool = self._spool
            if spool is None:  # opening failed silently
                return 0
            sent = 0
            try:
                for mail in email_messages:
                    try:
                        written = self._submit(spool, mail)
                    except SpoolmailError as exc:
                        if sent:
                            exc.add_note(f"{sent} message(s) before this one were written")
                        raise
                    sent += written
            finally:
                if opened:
                    self.close()
        return sent

    def _submit(self, spool: Spool | Pickup, mail: Any) -> bool:
        recipients = [str(address) for address in mail.recipients()]
        if not recipients:
            return False
        message = mail.message()
        _write_international_addresses(mail, message)
        try:
            # The envelope Django's SMTP backend uses: Bcc is in it, and never in the headers
            # (message() does not write a Bcc field).
            queue_id = spool.submit(
                message,
                sender=str(mail.from_email),
                recipients=recipients,
                max_size=self.max_message_size,
            )
        except SpoolmailError:
            if self.fail_silently:
                return False
            raise
        mail.spoolmail_queue_id = queue_id
        return True


def _open(root: str | os.PathLike[str], durability: Durability) -> Spool | Pickup:
    """A folder: its Pickup, written with nothing but the right to create files there (the
    locked-down layout of docs/running-as-a-service.md). An FS URL: the whole Spool."""
    if "://" in os.fspath(root):
        return Spool(root, durability=durability)
    return Pickup(root, fsync=durability is Durability.FSYNC)


def _root(value: object) -> Root:
    if value is None:
        raise ImproperlyConfigured(
            "spoolmail.django.EmailBackend needs SPOOLMAIL_ROOT: the MailRoot's folder (an "
            "absolute path, or an FS URL), or a spoolmail.Spool object"
        )
    if isinstance(value, Spool):
        return value
    if not isinstance(value, str | os.PathLike):
        raise ImproperlyConfigured(
            f"SPOOLMAIL_ROOT must be a folder, an FS URL or a spoolmail.Spool, not {value!r}"
        )
    text = os.fspath(value)
    if text.lower().startswith(_EPHEMERAL):
        raise ImproperlyConfigured(
            f"SPOOLMAIL_ROOT {text!r} would be a new, empty spool for every connection, gone "
            "when it closes: give a Spool object instead (SPOOLMAIL_ROOT = Spool('mem://'), or "
            "the spoolmail_spool fixture in tests)"
        )
    return value


def _max_message_size(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(
            "SPOOLMAIL_MAX_MESSAGE_SIZE must be the service's max_message_size in bytes (1 or "
            f"more), or None, not {value!r}"
        )
    return value


def _durability(value: object) -> Durability:
    if isinstance(value, Durability):
        return value
    try:
        return Durability(str(value).lower())
    except ValueError:
        choices = ", ".join(repr(d.value) for d in Durability)
        raise ImproperlyConfigured(
            f"SPOOLMAIL_DURABILITY must be one of {choices}, not {value!r}"
        ) from None


def _given_address_fields(mail: Any) -> dict[str, str]:
    """From, To, Cc and Reply-To as the application gave them, chosen as Django's ``message()``
    chooses them (an extra header of that exact name wins)."""
    extra = mail.extra_headers
    given = {"From": str(extra.get("From", mail.from_email))}
    for name, values in (("To", mail.to), ("Cc", mail.cc), ("Reply-To", mail.reply_to)):
        if values:
            given[name] = str(extra[name]) if name in extra else ", ".join(map(str, values))
    return given


def _write_international_addresses(mail: Any, message: email.message.Message) -> None:
    """Put non-ASCII addresses back into the header fields as the application wrote them.

    Django before 6.0 builds ``compat32`` messages and writes a non-ASCII local part as an RFC
    2047 encoded word (``=?utf-8?q?j=C3=BCrgen?=@xn--mller-kva.test``), which RFC 2047 section 5
    forbids in an address: readers show it as it is, and replies go nowhere. Such a message is
    sent with SMTPUTF8 anyway (its envelope is non-ASCII), so the field can hold the address
    itself, as UTF-8 (RFC 6532), which is how ``Spool.submit`` writes a field that holds a
    non-ASCII address. Fields with ASCII addresses keep Django's encoding of their names.
    """
    if not isinstance(message.policy, email.policy.Compat32):
        return  # Django 6's EmailMessage keeps the addresses as given
    for name, value in _given_address_fields(mail).items():
        if name in message and not all(addr.isascii() for _, addr in getaddresses([value])):
            message.replace_header(name, value)
