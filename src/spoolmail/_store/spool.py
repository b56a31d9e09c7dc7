"""``Spool``: the MailRoot as applications, tests and operators see it.

Opens (or creates) the five MailRoot folders on any PyFilesystem2 filesystem or FS URL, puts
messages into Pickup atomically (:meth:`Spool.submit`), reads back what is queued, what went to
BadMail and what was delivered to Drop, and carries out an operator's orders (hold, release,
flush, delete, requeue from BadMail) as transitions of the state table, each on a claimed
envelope, telling a running service through a trigger file. Delivering is
:class:`~spoolmail.MailService`'s job. File access goes through :class:`MailStore`.
"""

from __future__ import annotations

import codecs
import email.generator
import email.message
import email.policy
import functools
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import BinaryIO, Literal, Self

import attrs

from spoolmail._core import states
from spoolmail._core.address import AddressRole, parse_mailbox
from spoolmail._core.badmail import requeue_note
from spoolmail._core.dkim import DkimPolicy
from spoolmail._core.envelope import (
    Envelope,
    Recipient,
    RecipientState,
    Ret,
    decode_envelope,
    encode_envelope,
    new_envelope,
    replaced,
)
from spoolmail._core.events import (
    Deleted,
    Flushed,
    Held,
    MailEvent,
    Observer,
    Queued,
    Released,
    Requeued,
)
from spoolmail._core.headers import fields, header_block, split_head
from spoolmail._core.ids import QueueIds, is_made_id, is_queue_id
from spoolmail._core.selection import DomainMatch, Selection, domain_filter, sender_filter
from spoolmail._core.states import Event, State
from spoolmail._store import pyfs
from spoolmail._store.bus import EventBus
from spoolmail._store.clock import system_clock
from spoolmail._store.entropy import PooledRandom
from spoolmail._store.folders import BADMAIL, DROP, PICKUP, QUEUE
from spoolmail._store.store import (
    MAX_ENVELOPE,
    Durability,
    MailStore,
    chunks,
    durability_of,
    message_file,
    read_head,
    report_file,
)
from spoolmail._store.submission import pickup_file
from spoolmail._store.transitions import Change, Transitions
from spoolmail.exceptions import (
    ConfigurationError,
    EnvelopeError,
    MessageError,
    NotFound,
    SpoolmailError,
    StorageError,
)

__all__ = [
    "Admission",
    "BadMailItem",
    "Clock",
    "DropItem",
    "QueuedMessage",
    "Spool",
    "system_clock",
]

Clock = Callable[[], datetime]

log = logging.getLogger("spoolmail")


# The most ids new_id remembers as handed out and unused (sessions that never admit theirs).
_ISSUED_CAP = 4096
# The most of a transcript's end Spool.transcript reads (a CLI's `queue show` prints it).
_MAX_TRANSCRIPT = 4 * 1024 * 1024
# The most of a BadMail report's beginning read (a listing reads every one), and of a reason
# (its first line, one row of a listing): a planted report of gigabytes is not read whole.
_MAX_REPORT = 4 * 1024 * 1024
_MAX_REASON = 1000
# The largest BadMail envelope (.BDP) read: thousands of recipients with their replies take a
# few MiB; a bigger one (planted) is not read into memory, its entry shown without envelope.
_MAX_BADMAIL_ENVELOPE = 16 * 1024 * 1024


class _Issued:
    """The ids a spool's :meth:`Spool.new_id` handed out that no admission has used yet, the
    newest :data:`_ISSUED_CAP` of them; a forked child forgets its parent's (they are not its)."""

    __slots__ = ("__weakref__", "_ids", "_lock")

    def __init__(self) -> None:
        self._ids: dict[str, None] = {}
        self._lock = threading.Lock()
        _every_issued.add(self)

    def add(self, queue_id: str) -> None:
        with self._lock:
            ids = self._ids
            if len(ids) >= _ISSUED_CAP:
                del ids[next(iter(ids))]
            ids[queue_id] = None

    def take(self, queue_id: str) -> bool:
        """Whether ``queue_id`` was handed out and unused; it is used from now on."""
        with self._lock:
            return self._ids.pop(queue_id, False) is None

    def forget(self) -> None:
        self._lock = threading.Lock()  # another thread may have held the old one at the fork
        self._ids = {}


_every_issued: weakref.WeakSet[_Issued] = weakref.WeakSet()


def _forget_issued() -> None:
    for issued in list(_every_issued):
        issued.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_issued)


@attrs.frozen(kw_only=True)
class Admission:
    """One message for :meth:`Spool.admit_group`: the arguments :meth:`Spool.admit` takes."""

    message: bytes | Iterable[bytes]
    sender: str
    recipients: Sequence[str | Recipient]
    origin: str
    envid: str | None = None
    ret: Ret | None = None
    eight_bit: bool | None = None
    queue_id: str | None = None
    # The size the sender's limit was applied to (the SMTP DATA), when the message grew since
    # (a Received field added): Envelope.received_size.
    received_size: int | None = None


@attrs.frozen
class QueuedMessage:
    """A message in the Queue: its envelope, and whether a process is delivering it now."""

    envelope: Envelope
    state: State
    owner: str | None = None

    @property
    def id(self) -> str:
        """The queue id (the envelope's)."""
        return self.envelope.id


@attrs.frozen
class BadMailItem:
    """A BadMail entry: the reason (first line of ``.BDR``), the whole report, the envelope."""

    id: str
    reason: str
    report: str
    envelope: Envelope | None
    has_message: bool

    @property
    def message_path(self) -> str:
        """Where the message is kept in the MailRoot (``BadMail/ID.BAD``)."""
        return "/".join(message_file(State.BADMAIL, self.id))

    @property
    def report_path(self) -> str:
        """Where the report is kept in the MailRoot (``BadMail/ID.BDR``)."""
        return "/".join(report_file(self.id))

    @property
    def rejected_at_pickup(self) -> bool:
        """Whether this is a Pickup file that never became a message (rule 8 of
        ``_core.states``): :meth:`Spool.requeue_badmail` puts it back into Pickup as it is."""
        env = self.envelope
        return env is not None and env.origin.startswith("pickup:") and not env.attempts


@attrs.frozen
class DropItem:
    """A Drop file: the envelope its ``x-sender`` / ``x-receiver`` lines carry."""

    id: str
    name: str
    sender: str
    recipients: tuple[str, ...]
    size: int


def _match(envelope: Envelope, wanted: Sequence[str], queue_id: str) -> set[str]:
    """The envelope's addresses that ``wanted`` names, in any case and any writer's form
    (``"Name" <a@b>``); an address the envelope does not hold is an error, not a silent skip.
    """
    held = {r.address.casefold(): r.address for r in envelope.recipients}
    parsed = [a.casefold() for a in wanted]
    unknown = [a for a, key in zip(wanted, parsed, strict=True) if key not in held]
    if unknown:
        raise MessageError(
            f"BadMail entry {queue_id!r} has no recipient {', '.join(map(repr, unknown))} "
            f"(it has: {', '.join(sorted(held.values()))})"
        )
    return {held[key] for key in parsed}


def _open_filesystem(location: pyfs.FS | str | os.PathLike[str]) -> tuple[pyfs.FS, bool]:
    if isinstance(location, pyfs.FS):
        return location, False
    return pyfs.open_root(os.fspath(location)), True


# What a BadMail message whose report is missing shows as its report (and reason).
_MISSING_REPORT = b"(no report: its .BDR file is missing)\n"


def _decoded(raw: bytes, queue_id: str | None = None) -> Envelope:
    """An envelope file of the MailRoot as :func:`decode_envelope` reads it; for ``queue_id``,
    one naming another message is an ``EnvelopeError`` too: an order by sender or domain would
    otherwise carry out on that other message (the file's name is the id, not its content)."""
    envelope = decode_envelope(raw)
    if queue_id is not None and envelope.id != queue_id:
        named = envelope.id[:60]
        raise EnvelopeError(f"the envelope of {queue_id} names another message, {named!a}")
    return envelope


def _report_text(report: bytes) -> str:
    """A ``.BDR`` as text: ours is UTF-8 with LF; one from IIS may have CRLF and a UTF-16 or
    UTF-8 byte order mark. Undecodable bytes become U+FFFD rather than an error."""
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if report.startswith(bom):
            text = report[len(bom) :].decode(codec, "replace")
            break
    else:
        text = report.removeprefix(codecs.BOM_UTF8).decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


@functools.lru_cache(maxsize=1024)
def _mailbox(address: str, role: AddressRole) -> str:
    """``parse_mailbox`` of an admitted message's address, remembered: a listener's clients
    send the same few, and it has checked them already."""
    return parse_mailbox(address, default_domain=None, role=role)


def _envelope_lines(head: bytes) -> tuple[str, tuple[str, ...]]:
    sender, recipients = "", []
    for field in fields(head):
        if field.key == "x-sender":
            sender = field.value.strip("<>")
        elif field.key == "x-receiver":
            recipients.append(field.value.strip("<>"))
    return sender, tuple(recipients)


def _pending(envelope: Envelope) -> Sequence[Recipient]:
    return envelope.pending


def _undelivered(envelope: Envelope) -> Sequence[Recipient]:
    return [r for r in envelope.recipients if r.state is not RecipientState.DELIVERED]


def flush_chooser(sender: str | None, domain: str | None) -> Callable[[Envelope], bool]:
    """Which waiting messages a flush by ``sender`` and ``domain`` takes (:meth:`Spool.select`'s
    choice, with ``domain_match="any"``): for a service applying ``Spool.flush_queue``. A
    ``ConfigurationError`` for a filter that is no address or domain (a trigger not written by
    :meth:`Spool.flush_queue`, which checks them)."""
    wanted = Selection.of(sender, domain)
    return lambda envelope: wanted.matches(envelope, _pending)


def _many(values: Iterable[str], what: str) -> Iterable[str]:
    """``values`` as given, unless it is one string: iterated, its characters would be taken
    for ids or addresses one by one (``spool.delete("19ac...")`` tried ``"1"``, ``"9"``...)."""
    if isinstance(values, str | bytes):
        shown = values if len(values) <= 40 else f"{values[:40]}..."
        raise TypeError(f"{what} is an iterable of strings, not one string: [{shown!r}]?")
    return values


Order = Literal["hold", "release", "flush", "delete"]

# What each order does to a claimed envelope (``None``: delete it); see Spool.carry_out.
_ORDERS: dict[str, tuple[Event, Callable[[Envelope, datetime], Envelope | None]]] = {
    "hold": (Event.HELD, lambda e, now: states.hold(e, now=now)),
    "release": (Event.RELEASED, lambda e, now: states.release(e, now=now)),
    "flush": (Event.FLUSHED, lambda e, now: states.flush(e, now=now)),
    "delete": (Event.DELETED, lambda e, now: None),
}
# Changes a bulk order makes before it tells running services in one trigger file.
_TRIGGER_BATCH = 1000


# The event an operator's order on a queued message fires once it is committed.
_OPERATOR_EVENTS: dict[Event, type[Held | Released | Flushed]] = {
    Event.HELD: Held,
    Event.RELEASED: Released,
    Event.FLUSHED: Flushed,
}


def _read_chunks(handle: BinaryIO, where: str) -> Iterator[bytes]:
    """An open file's bytes in chunks, closed at the end; an I/O error part-way through (a
    failing disk) is a :class:`StorageError` naming ``where``, as any storage error."""
    with handle:
        try:
            yield from chunks(handle)
        except OSError as exc:
            raise StorageError(f"cannot read {where}: {exc}") from exc


def _warn_passed_over(name: str, why: str) -> None:
    """What a listing does with a name it passes over when its caller does not ask."""
    log.warning("%s is not listed: %s", name, why)


class Spool:
    """The MailRoot (Pickup, Queue, BadMail, Drop, SortTemp) on a filesystem.

    ``Spool("MailRoot")`` opens or creates ``./MailRoot``; ``Spool("mem://")`` keeps everything in
    memory; any ``fs.base.FS`` object works too. ``clock`` stamps queue ids and claims
    (``MailService`` uses the same clock by default). Use it as a context manager, or ``close()``.

    ``dkim`` (a :class:`~spoolmail.DkimPolicy`) signs every message as it enters the Queue,
    whichever way it comes (Pickup intake, :meth:`admit`, DSNs), once: the signature is kept in
    the envelope and put in front of the stored message whenever it leaves (docs/dkim.md).
    The spool owns it because :meth:`admit` is a way in with no service behind it.
    """

    def __init__(
        self,
        location: pyfs.FS | str | os.PathLike[str] = "MailRoot",
        *,
        durability: Durability = Durability.FSYNC,
        clock: Clock = system_clock,
        ids: QueueIds | None = None,
        lease: timedelta = timedelta(minutes=10),
        dkim: DkimPolicy | None = None,
    ) -> None:
        if dkim is not None and not isinstance(dkim, DkimPolicy):
            raise TypeError(f"dkim is a DkimPolicy, not {type(dkim).__name__}")
        durability = durability_of(durability)  # before anything is opened
        filesystem, self._owns_fs = _open_filesystem(location)
        self.clock = clock
        #: The MailService working on this spool, if any (one at a time: they share claims).
        self.service: object | None = None
        # That service's ear for messages admitted in this process (its schedule learns of them
        # at once); without one, admissions leave a trigger for a service in another process.
        self._on_admit: Callable[[str], object] | None = None
        # Where new_id's ids fall when not in this process's share (a listening worker's, for
        # the workers it hands its sessions' mail to: _service.handoff).
        self._new_ids_in: Callable[[str], bool] | None = None
        self._store = MailStore(
            filesystem,
            durability=durability,
            clock=clock,
            ids=ids or QueueIds(PooledRandom()),
            lease=lease,
        )
        # What new_id handed out and admit has not yet used (see _admission).
        self._issued = _Issued()
        #: The state machine's commits on this MailRoot (what the service and operators use).
        self._transitions = Transitions(self._store, dkim=dkim)
        # Who hears of what is committed here: the service's observers and the embedder's.
        self._bus = EventBus()

    @property
    def dkim(self) -> DkimPolicy | None:
        """The DKIM policy that signs what enters the Queue (``None``: nothing is signed)."""
        return self._transitions.dkim

    @property
    def fs(self) -> pyfs.FS:
        """The PyFilesystem2 filesystem the MailRoot lives on."""
        return self._store.fs

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` with every event this spool commits; returns the unsubscribe.

        ``observer`` is any callable of one :class:`~spoolmail.events.MailEvent`: what a
        :class:`~spoolmail.MailService` on this spool does (picked up, queued, delivered,
        deferred, failed, DSNs, BadMail), what :meth:`admit` queues and what operators order
        (hold, release, flush, delete, requeue). It is called after the commit the event
        reports, on the thread that made it (a delivery thread, the service's loop, the
        caller's), so it must be thread-safe, and a slow one slows that thread. An exception
        in it is logged with its traceback and never stops delivery. docs/events.md.
        """
        return self._bus.subscribe(observer)

    def _emit(self, event: MailEvent) -> None:
        self._bus.emit(event)

    def _emit_all(self, events: Sequence[MailEvent]) -> None:
        """Tell of events fired together (an attempt's outcomes and the message's end)."""
        self._bus.emit_all(events)

    def close(self) -> None:
        """Let go of the MailRoot: this process's spare files and owner record go, and a
        filesystem the Spool opened itself is closed (not one it was given)."""
        self._store.close()
        if self._owns_fs:
            self._store.fs.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing into Pickup -------------------------------------------------------------------

    def submit(
        self,
        message: bytes | email.message.Message,
        *,
        sender: str | None = None,
        recipients: Sequence[str] | None = None,
        max_size: int | None = None,
    ) -> str:
        """Put a message into Pickup atomically; returns its queue id.

        The Pickup file is ``<queue id>.eml``, and a Pickup file named by a fresh queue id keeps
        that id in the Queue, so the id returned is the one ``queued_message``, ``message``,
        ``drop_item`` and the ``spoolmail queue`` listing will show.

        ``message`` is bytes or any ``email.message.Message`` (``EmailMessage``, ``email.mime``
        classes with ``compat32``, Django's ``message()``), written under its own policy. When an
        address is non-ASCII (``zoë@partner.test``), the headers are written as UTF-8 (RFC 6532)
        and the message is sent with SMTPUTF8; otherwise non-ASCII header text is RFC
        2047-encoded, whatever the policy's ``utf8``.

        With ``sender`` / ``recipients`` the file carries ``x-sender`` / ``x-receiver`` lines, as
        IIS pickup files do; without them (``None``) the envelope comes from the headers. An empty
        ``recipients`` is refused (``MessageError``, 5.5.1), not read as the headers: a list
        that came out empty must not send to the ``To:`` field. A message that the service
        could only put into BadMail raises :class:`~spoolmail.exceptions.MessageError` now.
        So does one over ``max_size`` bytes as a Pickup file (5.3.4), given the service's
        ``max_message_size``: the service takes no file over it (IIS did not either), and only
        the sender's code can say so to whoever sent it. ``None``: not checked here.
        """
        data = pickup_file(
            message, sender=sender, recipients=recipients, now=self.clock(), max_size=max_size
        )
        queue_id = self._store.new_id()
        self._store.write(PICKUP, f"{queue_id}.eml", data)
        return queue_id

    # -- committing straight into the Queue ------------------------------------------------------

    def admit(
        self,
        message: bytes | Iterable[bytes],
        *,
        sender: str,
        recipients: Sequence[str | Recipient],
        origin: str,
        envid: str | None = None,
        ret: Ret | None = None,
        eight_bit: bool | None = None,
        queue_id: str | None = None,
    ) -> str:
        """Commit a message straight into the Queue; its queue id. Durable once this returns.

        The door for whoever already holds a message and its envelope, as an SMTP listener does
        when DATA ends: the message file, then the envelope (the commit), both fsync'd with the
        Queue folder, through the same admission as Pickup intake. A crash before this returns
        leaves nothing queued, so a listener answers ``250`` only after it; an error (a full
        disk) raises :class:`~spoolmail.exceptions.StorageError`, for a ``4xx``.

        ``message`` is stored as given (bytes, or chunks streamed through): the caller has added
        its ``Received:`` field. ``sender`` is the reverse-path (``""`` for ``<>``),
        ``recipients`` addresses or :class:`~spoolmail.Recipient` values carrying RFC 3461
        NOTIFY and ORCPT; ``envid`` and ``ret`` are MAIL FROM's ENVID and RET; ``origin`` says
        where it came from (``smtp:192.0.2.7``); ``eight_bit`` records BODY=8BITMIME when known.
        ``queue_id`` is one :meth:`new_id` gave (a listener names it in its ``Received:`` field
        and its ``250`` reply), default a new one. A running service in this process schedules
        the message at once, one in another process at its next tick.
        """
        admission = Admission(
            message=message,
            sender=sender,
            recipients=recipients,
            origin=origin,
            envid=envid,
            ret=ret,
            eight_bit=eight_bit,
            queue_id=queue_id,
        )
        change, stored = self._admission(admission, durable=True)
        self._transitions.apply(State.NEW, Event.ACCEPTED, change)
        self._admitted(stored)
        return change.id

    def admit_group(self, admissions: Sequence[Admission]) -> list[str | Exception]:
        """:meth:`admit` of several messages at once, made durable together; for each, its
        queue id or the exception :meth:`admit` would have raised for it.

        A group commit (a listener's concurrent sessions): every message's files are written
        first, then one sync makes them all durable (one ``syncfs`` and one fsync of the Queue
        where Linux has syncfs, else each file's fsync and one of the Queue), so none is queued
        before its bytes are on disk and all are durable when this returns. A message refused
        on its own (a bad address, a full disk while writing it) leaves the others; when the
        sync fails, every message of the group has that error (some may be queued after all:
        a client that tries again may deliver twice, never lose one).
        """
        results: list[str | Exception] = []
        stored: list[Envelope] = []
        for admission in admissions:
            try:
                change, made = self._admission(admission, durable=False)
                self._transitions.apply(State.NEW, Event.ACCEPTED, change)
            except (SpoolmailError, ValueError, TypeError) as exc:
                results.append(exc)
                continue
            results.append(change.id)
            stored += made
        if not stored:
            return results
        try:
            self._transitions.sync_admitted(())
        except SpoolmailError as exc:
            self._withdraw([envelope.id for envelope in stored])
            return [exc if isinstance(result, str) else result for result in results]
        self._admitted(stored)
        return results

    def _withdraw(self, queue_ids: Iterable[str]) -> None:
        """Take back what a failed group sync may have left in the Queue (the envelope, the
        commit, first), so that its senders, told to try again, do not deliver it twice."""
        for queue_id in queue_ids:
            try:
                self._store.remove(QUEUE, f"{queue_id}.env")
                self._store.remove(QUEUE, f"{queue_id}.eml")
            except StorageError:
                log.warning("%s: could not take back an admission whose sync failed", queue_id)

    def _admission(self, admission: Admission, *, durable: bool) -> tuple[Change, list[Envelope]]:
        """The commit that queues ``admission``, and the list that holds its envelope once
        written (the size and DKIM fields are known only then)."""
        recipients, sender = admission.recipients, admission.sender
        if isinstance(recipients, str):
            raise TypeError("recipients is a sequence of addresses, not one string")
        if sender:
            sender = _mailbox(sender, AddressRole.SENDER)
        checked = [
            r if isinstance(r, Recipient) else _mailbox(r, AddressRole.RECIPIENT)
            for r in recipients
        ]
        if not checked:
            raise MessageError("a message needs at least one recipient", status="5.5.1")
        message, queue_id = admission.message, admission.queue_id
        head = header_block(message) if isinstance(message, bytes) else None
        if queue_id is None:
            queue_id = self._store.new_id()
        elif not self._issued.take(queue_id) and (
            not is_made_id(queue_id) or self._transitions.has_message(queue_id)
        ):
            # An id this process's new_id made and nothing has used needs no look: its factory
            # never makes one twice, and another's makes it only if 48 random bits and the
            # millisecond agree, as for the ids admit makes itself (queue_id None).
            raise ValueError(f"{queue_id!r} is not a fresh id from Spool.new_id()")
        fresh = new_envelope(
            queue_id,
            sender=sender,
            recipients=checked,
            now=self.clock(),
            origin=admission.origin,
            head=head,
            eight_bit=admission.eight_bit,
            received_size=admission.received_size,
        )
        envelope = (
            fresh
            if admission.envid is None and admission.ret is None
            else replaced(fresh, envid=admission.envid, ret=admission.ret)
        )
        stored: list[Envelope] = []

        def sized(size: int, dkim: tuple[str, ...]) -> Envelope:
            stored.append(replaced(envelope, size=size, dkim=dkim))
            return stored[-1]

        change = Change(id=queue_id, message=message, envelope=sized, durable=durable)
        return change, stored

    def _admitted(self, stored: Sequence[Envelope]) -> None:
        """Tell of messages just made durable: the observers, and a service (this process's
        at once; one elsewhere through a trigger, one for all of them)."""
        if self._bus:
            # A group's in one call: one mail-log write for all of them (emit_all).
            self._emit_all([Queued.of(envelope) for envelope in stored])
        told = self._on_admit
        if told is not None:
            for envelope in stored:
                told(envelope.id)
        elif stored:
            self._store.write_trigger([envelope.id for envelope in stored])

    def new_id(self) -> str:
        """A fresh queue id, for :meth:`admit` (unique in this MailRoot, sorting by time)."""
        queue_id = self._store.new_id(self._new_ids_in)
        self._issued.add(queue_id)
        return queue_id

    def free_space(self) -> int | None:
        """Bytes free for new mail on the MailRoot's filesystem (``statvfs``'s ``f_bavail``), or
        ``None`` where there is no such figure (MemoryFS, other backends)."""
        return self._store.free_space()

    # -- operating on the Queue and BadMail (Postfix's postqueue / postsuper) --------------------

    def hold(self, queue_ids: Iterable[str]) -> list[str]:
        """Put messages on hold: never attempted, no expiry while held. Returns those changed."""
        return self._operate(queue_ids, Event.HELD, lambda e, now: states.hold(e, now=now))

    def release(self, queue_ids: Iterable[str]) -> list[str]:
        """Release holds: due at once, expiry pushed back by the time held."""
        return self._operate(queue_ids, Event.RELEASED, lambda e, now: states.release(e, now=now))

    def flush(
        self, queue_ids: Iterable[str] | None = None, *, domain: str | None = None
    ) -> list[str]:
        """Make messages due now: the given ids, or every one with a pending recipient at
        ``domain``, or (neither given) the whole Queue. Held messages stay held. A ``domain``
        that is no domain is a ``ConfigurationError`` (as :meth:`select`)."""
        if queue_ids is None:
            wanted = Selection.of(None, domain)
            queue_ids = [
                item.id for item in self.queued() if wanted.matches(item.envelope, _pending)
            ]
        return self._operate(queue_ids, Event.FLUSHED, lambda e, now: states.flush(e, now=now))

    def flush_queue(self, *, sender: str | None = None, domain: str | None = None) -> None:
        """Ask a service to attempt now every waiting message (from ``sender``, with a pending
        recipient at ``domain``, as :meth:`select` chooses them), as ``postqueue -f`` / ``-s``.

        Unlike :meth:`flush`, no envelope is rewritten: one trigger file is written, and the
        service that takes it (at once where inotify tells, a running one in this process
        woken) makes those messages due in its schedule, forgets the dead-host and failed-lookup
        notes of their destinations, and writes each one's new retry time when its attempt
        commits, as every attempt does. With no service running the trigger waits: the next one
        to start rescans the Queue, then flushes. Held messages stay held, a message being attempted
        right now is not attempted again; a service stopped before attempting every
        flushed message asks the next one to flush the rest; a killed one does not (the
        messages keep their retry times: flush again). No :class:`~spoolmail.events.Flushed`
        events: the service logs the flush and how many messages it made due. The filters are
        read and checked as :meth:`select` does, before the trigger is written.
        """
        self._store.write_flush_trigger(
            sender=None if sender is None else sender_filter(sender),
            domain=None if domain is None else domain_filter(domain),
        )
        service = self.service
        if service is not None:
            wake = getattr(service, "wake", None)
            if callable(wake):
                wake()

    def delete(self, queue_ids: Iterable[str]) -> list[str]:
        """Delete queued messages without a DSN (as ``postsuper -d``). Returns those deleted."""
        return self._operate(queue_ids, Event.DELETED, lambda e, now: None)

    def _operate(
        self,
        queue_ids: Iterable[str],
        event: Event,
        change: Callable[[Envelope, datetime], Envelope | None],
    ) -> list[str]:
        """Claim each message, change its envelope (``None``: delete it), hand it back.

        Every id is tried; a running service is told what changed through one trigger file.
        Then the first failure, if any, is raised with the others as notes: ``NotFound``, a
        temporary SpoolmailError for a message being delivered right now, or EnvelopeError.
        """
        store = self._store
        done: list[str] = []
        failures: list[SpoolmailError] = []
        for queue_id in dict.fromkeys(_many(queue_ids, "queue_ids")):
            try:
                self._operate_one(queue_id, event, change)
            except SpoolmailError as exc:
                failures.append(exc)
            else:
                done.append(queue_id)
        if done:
            store.write_trigger(done)
        if failures:
            first = failures[0]
            for other in failures[1:]:
                first.add_note(f"also: {other}")
            raise first
        return done

    def _operate_one(
        self,
        queue_id: str,
        event: Event,
        change: Callable[[Envelope, datetime], Envelope | None],
    ) -> None:
        transitions = self._transitions
        self._checked(queue_id)
        states.step(State.QUEUED, event)  # a bug is found before the message is claimed
        if transitions.apply(State.QUEUED, Event.CLAIMED, Change(id=queue_id)) is None:
            self._explain_unclaimable(queue_id)
        if event is Event.DELETED:
            transitions.apply(State.QUEUED, event, Change(id=queue_id))
            self._emit(Deleted(queue_id=queue_id, time=self.clock(), place=State.QUEUED))
            return
        try:
            raw = transitions.claimed_envelope(queue_id)
        except StorageError:
            # Not read (a link or a FIFO in its place, a failing disk): the claim goes back as
            # it is, or the message would look "being delivered" until the claim's lease ends.
            self._store.rename(
                (QUEUE, MailStore.claimed_name(queue_id, self._store.owner)),
                (QUEUE, f"{queue_id}.env"),
            )
            raise
        try:
            envelope = _decoded(raw, queue_id)
        except EnvelopeError:
            transitions.apply(State.QUEUED, event, Change(id=queue_id, envelope=raw))
            raise
        changed = change(envelope, self.clock())
        transitions.apply(
            State.QUEUED, event, Change(id=queue_id, envelope=raw if changed is None else changed)
        )
        self._emit(_OPERATOR_EVENTS[event](queue_id=queue_id, time=self.clock()))

    def _explain_unclaimable(self, queue_id: str) -> None:
        files = self._store.queue_files().get(queue_id)
        if files is None or not (files.envelope or files.claims):
            raise NotFound(f"no queued message {queue_id!r}")
        raise SpoolmailError(
            f"{queue_id} is being delivered right now; try again in a moment", temporary=True
        )

    def requeue_badmail(
        self,
        queue_id: str,
        *,
        recipients: Sequence[str] | None = None,
        sender: str | None = None,
    ) -> str:
        """Send a BadMail entry again; returns its new queue id, or its Pickup file name.

        A file rejected at Pickup goes back into Pickup as it is (fix it first; ``recipients``
        and ``sender`` do not apply). A message that failed in the Queue is queued again for
        ``recipients`` (default: every one not delivered; a domain matches in any case), from
        ``sender`` if given; an entry whose envelope is lost needs both. When only some of its
        recipients are sent again, the entry stays in BadMail for the others.
        """
        # Writers' forms ("Name" <a@b>) become plain addresses; a bad one fails before any move.
        if recipients is not None:
            recipients = [
                parse_mailbox(a, default_domain=None) for a in _many(recipients, "recipients")
            ]
        if sender is not None:
            sender = parse_mailbox(sender, default_domain=None, role=AddressRole.SENDER)
        if not self.badmail_item(queue_id).has_message:
            raise NotFound(f"BadMail entry {queue_id!r} has no message (.BAD) to send")
        # Held for this process while it is read and queued: two requeues of one entry (two
        # operators, two scripts) queued it twice, and a partial one's rewrite lost the other's.
        try:
            with self._store.held(BADMAIL, f"{queue_id}.BAD"):
                return self._requeue_held(self.badmail_item(queue_id), recipients, sender)
        except FileNotFoundError:
            raise NotFound(f"BadMail entry {queue_id!r} was taken meanwhile") from None

    def _requeue_held(
        self, item: BadMailItem, recipients: list[str] | None, sender: str | None
    ) -> str:
        """:meth:`requeue_badmail` of an entry this process holds (read again once held)."""
        queue_id = item.id
        envelope = item.envelope
        store, transitions = self._store, self._transitions
        if envelope is not None and envelope.origin.startswith("pickup:") and not envelope.attempts:
            # Rule 8 of _core.states: a file that never became a message goes back to Pickup.
            if recipients is not None or sender is not None:
                raise MessageError(
                    f"BadMail entry {queue_id!r} is a file rejected at Pickup: it goes back to "
                    "Pickup as it is, so fix its envelope lines or headers instead"
                )
            if transitions.apply(State.BADMAIL, Event.RESUBMITTED, Change(id=queue_id)) is None:
                raise NotFound(f"BadMail entry {queue_id!r} was taken meanwhile")
            name = transitions.pickup_name(queue_id)
            self._emit(Requeued(queue_id=queue_id, time=self.clock(), new_id=name, to=State.PICKUP))
            return name
        now = self.clock()
        if envelope is None:
            if not recipients or sender is None:
                raise MessageError(
                    f"BadMail entry {queue_id!r} has no readable envelope: give the recipients "
                    "and the sender to send it again"
                )
            envelope = new_envelope(queue_id, sender="", recipients=recipients, now=now, origin="")
        chosen = None if recipients is None else _match(envelope, recipients, queue_id)
        new_id = store.new_id()
        fresh = states.requeue(envelope, queue_id=new_id, now=now, addresses=chosen)
        if sender is not None:
            fresh = replaced(fresh, sender=sender)
        if not fresh.recipients:
            raise MessageError(
                f"BadMail entry {queue_id!r} has no undelivered recipient to send to"
            )
        with transitions.open_badmail_message(queue_id) as message:
            transitions.apply(
                State.BADMAIL,
                Event.REQUEUED,
                # Never signed again: the envelope keeps the fields made when it first entered.
                Change(id=new_id, message=message, envelope=fresh, sign=False),
            )
        sent = tuple(r.address for r in fresh.recipients)
        self._emit(
            Requeued(queue_id=queue_id, time=now, new_id=new_id, to=State.QUEUED, recipients=sent)
        )
        self._emit(Queued.of(fresh))
        left = [
            r
            for r in envelope.recipients
            if r.address not in sent and r.state is not RecipientState.DELIVERED
        ]
        if left and item.envelope is not None:
            # The others stay in BadMail: the entry now lists only them.
            store.write(BADMAIL, f"{queue_id}.BDP", encode_envelope(envelope.with_recipients(left)))
            store.write(
                BADMAIL, f"{queue_id}.BDR", self._report_and(item, requeue_note(new_id, sent))
            )
        else:
            self._delete_badmail_files(queue_id)
        store.write_trigger([new_id])
        return new_id

    def _report_and(self, item: BadMailItem, note: bytes) -> bytes | Iterator[bytes]:
        """A BadMail entry's report with ``note`` after it: the report as read, or, for one over
        the :data:`_MAX_REPORT` a read keeps (``item.report`` is cut there), the whole file
        copied in chunks, so the rewrite loses none of it."""
        name = f"{item.id}.BDR"
        try:
            whole = self._store.size(BADMAIL, name) > _MAX_REPORT
            # One link only: a big file linked in from elsewhere is not copied into BadMail.
            handle = self._store.open(BADMAIL, name, single_link=True) if whole else None
        except (FileNotFoundError, StorageError):
            handle = None  # none, or none to read: the report as the item holds it
        if handle is None:
            return item.report.encode("utf-8") + note
        return itertools.chain(_read_chunks(handle, f"{BADMAIL}/{name}"), (note,))

    def delete_badmail(self, queue_ids: Iterable[str]) -> list[str]:
        """Delete BadMail entries (message and reports). Returns those that existed."""
        done = []
        for queue_id in dict.fromkeys(_many(queue_ids, "queue_ids")):
            if self._delete_badmail_files(queue_id):
                done.append(queue_id)
                self._emit(Deleted(queue_id=queue_id, time=self.clock(), place=State.BADMAIL))
        return done

    def _delete_badmail_files(self, queue_id: str) -> bool:
        self._checked(queue_id)
        return bool(self._transitions.apply(State.BADMAIL, Event.DELETED, Change(id=queue_id)))

    # -- bulk orders and selections (postsuper -d -, delete by sender or domain) ----------------

    def carry_out(
        self, order: Order, queue_ids: Iterable[str]
    ) -> Generator[tuple[str, SpoolmailError | None], None, None]:
        """Carry out an operator's ``order`` on each id as it comes: the streaming form of
        :meth:`hold`, :meth:`release`, :meth:`flush` and :meth:`delete` for bulk orders.

        Yields ``(id, None)`` once an id is done and ``(id, error)`` when it cannot be
        (:class:`~spoolmail.exceptions.NotFound`, a temporary error for a message being
        delivered right now, ``EnvelopeError``), so one failure neither stops nor hides the
        others. Ids are taken from ``queue_ids`` one at a time, after the previous outcome was
        yielded: a generator reading a million ids from a pipe is never held in memory. An id
        given twice is tried twice. A running service is told in one trigger file per
        1,000 changes, not one per id, and of the rest when the iteration ends or the generator
        is closed. An unknown ``order``, or one string for ``queue_ids``, is an error at the
        call, before any id is taken.
        """
        if order not in _ORDERS:
            known = ", ".join(repr(name) for name in _ORDERS)
            raise ConfigurationError(f"the order is one of {known}, not {order!r}")
        event, change = _ORDERS[order]
        return self._carrying_out(event, change, _many(queue_ids, "queue_ids"))

    def _carrying_out(
        self,
        event: Event,
        change: Callable[[Envelope, datetime], Envelope | None],
        queue_ids: Iterable[str],
    ) -> Generator[tuple[str, SpoolmailError | None], None, None]:
        told: list[str] = []
        try:
            for queue_id in queue_ids:
                try:
                    self._operate_one(queue_id, event, change)
                except SpoolmailError as exc:
                    yield queue_id, exc
                    continue
                told.append(queue_id)
                if len(told) >= _TRIGGER_BATCH:
                    self._store.write_trigger(told)
                    told = []
                yield queue_id, None
        finally:
            if told:
                self._store.write_trigger(told)

    def select(
        self,
        *,
        sender: str | None = None,
        domain: str | None = None,
        domain_match: DomainMatch = "any",
        unreadable: Callable[[str, str], None] | None = None,
    ) -> Iterator[QueuedMessage]:
        """The queued messages from ``sender`` with pending recipients at ``domain``, oldest
        first (each envelope read once, as :meth:`queued` does, which tells ``unreadable`` of
        each it cannot read); no filter: every one.

        ``sender`` is an address in any case, read as the intake reads a sender (``"Bob
        <bob@example.com>"`` is ``bob@example.com``; ``""`` or ``"<>"``: the null sender of
        DSNs), or ``"@example.com"`` for every sender at that domain. ``domain`` is a recipient
        domain in any case: ``domain_match="any"`` takes a message with at least one pending
        recipient there (what :meth:`flush` does), ``"all"`` only one whose pending recipients
        are all there, so that holding or deleting it delays or loses no mail for another domain.
        Recipients delivered or failed are not looked at; a message being delivered is included
        (an order on it raises a temporary error until the attempt ends). A filter that is no
        address or domain (``"exa mple"``) is a ``ConfigurationError`` naming what is wrong, at
        the call: it could match nothing, and a typo must not look like an empty Queue.
        """
        wanted = Selection.of(sender, domain, domain_match)
        return (
            item
            for item in self.queued(unreadable=unreadable)
            if wanted.matches(item.envelope, _pending)
        )

    def select_badmail(
        self,
        *,
        sender: str | None = None,
        domain: str | None = None,
        domain_match: DomainMatch = "any",
    ) -> Iterator[BadMailItem]:
        """The BadMail entries :meth:`select` would choose, oldest first, looking at the
        recipients not delivered (failed or never tried) instead of the pending ones. An entry
        whose envelope is unknown matches no filter, nor does a file rejected at Pickup (its
        envelope was never read: its sender ``""`` is no null sender); without filters, every
        entry is given. Filters are read and checked as :meth:`select` reads them."""
        return self._selected_badmail(Selection.of(sender, domain, domain_match))

    def _selected_badmail(self, wanted: Selection) -> Iterator[BadMailItem]:
        for item in self.badmail():
            if item.envelope is None or item.rejected_at_pickup:
                if wanted.everything:
                    yield item
            elif wanted.matches(item.envelope, _undelivered):
                yield item

    # -- reading back ----------------------------------------------------------------------------

    def pickup(self) -> list[str]:
        """Names of the files waiting in Pickup."""
        return self._store.pickup_names()

    def queued(
        self, *, unreadable: Callable[[str, str], None] | None = None
    ) -> Iterator[QueuedMessage]:
        """Every queued message, oldest first.

        A message whose envelope cannot be read (damaged, truncated, or no regular file) is
        left out: a service moves it to BadMail with the reason when it comes to it.
        ``unreadable``, when given, is told of each one left out: its queue id and why. One
        such entry does not end the listing of the others.
        """
        for queue_id, files in sorted(self._store.queue_files().items()):
            if not (files.envelope or files.claims):
                continue
            try:
                yield self._queued(queue_id, files.claims)
            except (EnvelopeError, StorageError) as exc:
                if unreadable is not None:
                    unreadable(queue_id, str(exc))
            except FileNotFoundError:
                continue  # delivered, or claimed, since the listing

    def queued_message(self, queue_id: str) -> QueuedMessage:
        """One queued message's envelope and state (``NotFound`` if it is not queued)."""
        self._checked(queue_id)
        try:
            # The common case without listing the Queue: a flush of 5,000 ids listed 5,000
            # times was quadratic (bench/README.md, the Postfix comparison).
            return self._queued(queue_id, ())
        except FileNotFoundError:
            pass  # claimed (being delivered), or gone: the listing tells which
        files = self._store.queue_files().get(queue_id)
        if files is None or not (files.envelope or files.claims):
            raise NotFound(f"no queued message {queue_id!r}")
        try:
            return self._queued(queue_id, files.claims)
        except FileNotFoundError:
            raise NotFound(f"queued message {queue_id!r} left the Queue") from None

    def _queued(self, queue_id: str, claims: Sequence[str]) -> QueuedMessage:
        store = self._store
        if claims:
            name = MailStore.claimed_name(queue_id, claims[0])
            raw = store.read(QUEUE, name, limit=MAX_ENVELOPE)
            return QueuedMessage(_decoded(raw, queue_id), State.DELIVERING, claims[0])
        raw = store.read(QUEUE, f"{queue_id}.env", limit=MAX_ENVELOPE)
        return QueuedMessage(_decoded(raw, queue_id), State.QUEUED)

    def message(self, queue_id: str) -> bytes:
        """The stored bytes of a queued message."""
        return self._read(QUEUE, f"{self._checked(queue_id)}.eml", "queued message")

    def message_chunks(self, queue_id: str) -> Iterator[bytes]:
        """:meth:`message` in chunks, in bounded memory whatever its size (a CLI's ``queue
        show --message``); ``NotFound`` or ``StorageError`` at the call."""
        return self._chunks(QUEUE, f"{self._checked(queue_id)}.eml", "queued message")

    def transcript(self, queue_id: str) -> str:
        """The transcripts (remote, then local) of a queued message; ``""`` if none yet. Of a
        transcript over 4 MiB (years of retries, or a planted file), only its end."""
        parts = []
        for kind in ("RTR", "LTR"):
            try:
                data, cut = self._store.read_tail(
                    QUEUE, f"{self._checked(queue_id)}.{kind}", _MAX_TRANSCRIPT
                )
            except FileNotFoundError:
                continue
            # Replies are a remote server's bytes: undecodable ones become U+FFFD, not an error.
            text = data.decode("utf-8", "replace")
            if cut:
                whole_lines = text.partition("\n")[2]
                left_out = f"the transcript is over {_MAX_TRANSCRIPT} bytes"
                text = f"(the beginning left out: {left_out})\n{whole_lines}"
            parts.append(text)
        return "\n".join(parts)

    def badmail(
        self, *, passed_over: Callable[[str, str], None] | None = None
    ) -> Iterator[BadMailItem]:
        """Every BadMail entry, oldest first: each report (``.BDR``), and each message (``.BAD``)
        whose report is missing (deleted by hand, or copied over without it).

        A name that is no queue id (IIS's ``{GUID}.BAD``, a copy made by hand) is not listed:
        ``passed_over``, when given, is told of each (its name in BadMail, as ``ascii()``
        shows it, and why); otherwise it is logged as a warning."""
        told = passed_over or _warn_passed_over
        ids = sorted({n[:-4] for n in self._store.listdir(BADMAIL) if n.endswith((".BDR", ".BAD"))})
        for queue_id in ids:
            if not is_queue_id(queue_id):
                # Not spoolmail's: no id to show it by, or to ask ``badmail show`` for.
                told(f"BadMail/{queue_id!a}", "not named by a queue id")
                continue
            try:
                yield self.badmail_item(queue_id)
            except NotFound:
                continue  # deleted meanwhile

    def badmail_item(self, queue_id: str) -> BadMailItem:
        """One BadMail entry: its reason, report and envelope (``NotFound`` if there is none).

        A message (``.BAD``) without its report is an entry too, its reason saying so: it can
        be read, sent again (with its recipients and sender, if its envelope is lost too) or
        deleted like any other.
        """
        name = f"{self._checked(queue_id)}.BDR"
        try:
            report, cut = self._store.read_start(BADMAIL, name, _MAX_REPORT)
            if cut:
                report += f"\n(the rest left out: over {_MAX_REPORT} bytes)\n".encode()
        except FileNotFoundError:
            if not self._store.exists(BADMAIL, f"{queue_id}.BAD"):
                raise NotFound(f"no BadMail entry {queue_id!r} (BadMail/{name})") from None
            report = _MISSING_REPORT
        except StorageError as exc:
            # No regular file (a link, a FIFO) or unreadable: the entry is still listed, shown
            # and deletable, its reason saying why its report is not shown.
            report = f"(no report: {exc})\n".encode()
        text = _report_text(report)
        try:
            raw, cut = self._store.read_start(BADMAIL, f"{queue_id}.BDP", _MAX_BADMAIL_ENVELOPE)
            envelope: Envelope | None = None if cut else _decoded(raw)
        except (FileNotFoundError, EnvelopeError, StorageError):
            envelope = None
        reason = text.split("\n", 1)[0]
        return BadMailItem(
            id=queue_id,
            reason=reason if len(reason) <= _MAX_REASON else f"{reason[:_MAX_REASON]}...",
            report=text,
            envelope=envelope,
            has_message=self._store.exists(BADMAIL, f"{queue_id}.BAD"),
        )

    def badmail_message(self, queue_id: str) -> bytes:
        """The message of a BadMail entry, as it was received (``.BAD``)."""
        return self._read(BADMAIL, f"{self._checked(queue_id)}.BAD", "BadMail message")

    def badmail_message_chunks(self, queue_id: str) -> Iterator[bytes]:
        """:meth:`badmail_message` in chunks, in bounded memory whatever its size (a CLI's
        ``badmail show --message``); ``NotFound`` or ``StorageError`` at the call."""
        return self._chunks(BADMAIL, f"{self._checked(queue_id)}.BAD", "BadMail message")

    def drop(self, *, passed_over: Callable[[str, str], None] | None = None) -> Iterator[DropItem]:
        """Every Drop file, oldest first (by name: spoolmail names them by queue id).

        Only ``ID.eml`` files, whose id :meth:`drop_item` and :meth:`drop_message` take: any
        other name (not spoolmail's; one not even UTF-8, which a listing could not print), and
        a file that cannot be read, is passed over: ``passed_over``, when given, is told of each
        (its name in Drop, as ``ascii()`` shows it, and why); otherwise it is logged as a
        warning."""
        told = passed_over or _warn_passed_over
        for name in sorted(self._store.listdir(DROP)):
            if name.startswith(".") or not self._store.isfile(DROP, name):
                continue
            if not (name.endswith(".eml") and is_queue_id(name[:-4])):
                told(f"Drop/{name!a}", "not named ID.eml")
                continue
            try:
                item = self._drop_item(name)
            except FileNotFoundError:
                continue  # a consumer took it meanwhile
            except StorageError as exc:
                # Unreadable (its mode, or a link or FIFO put in its place since the look
                # above): one entry, which must not end the listing of the others.
                told(f"Drop/{name!a}", str(exc))
                continue
            yield item

    def drop_item(self, queue_id: str) -> DropItem:
        """One Drop file and its envelope lines (``NotFound`` if there is none)."""
        try:
            return self._drop_item(f"{self._checked(queue_id)}.eml")
        except FileNotFoundError:
            raise NotFound(f"no Drop file {queue_id}.eml") from None

    def _drop_item(self, name: str) -> DropItem:
        with self._store.open(DROP, name) as handle:
            head, _ = read_head(handle, limit=1024 * 1024)
        sender, recipients = _envelope_lines(split_head(head)[0] + b"\r\n")
        return DropItem(
            id=name.rsplit(".", 1)[0],
            name=name,
            sender=sender,
            recipients=recipients,
            size=self._store.size(DROP, name),
        )

    def drop_message(self, queue_id: str) -> bytes:
        """A Drop file's bytes, ``x-sender`` / ``x-receiver`` lines included, as IIS wrote them."""
        return self._read(DROP, f"{self._checked(queue_id)}.eml", "Drop file")

    def drop_message_chunks(self, queue_id: str) -> Iterator[bytes]:
        """:meth:`drop_message` in chunks, in bounded memory whatever its size (a CLI's
        ``drop show``); ``NotFound`` or ``StorageError`` at the call."""
        return self._chunks(DROP, f"{self._checked(queue_id)}.eml", "Drop file")

    def _chunks(self, folder: str, name: str, what: str) -> Iterator[bytes]:
        # Opened now, not at the first chunk: what is wrong with the file is said at the call.
        try:
            handle = self._store.open(folder, name)
        except FileNotFoundError:
            raise NotFound(f"no {what} {name.rsplit('.', 1)[0]!r} ({folder}/{name})") from None

        return _read_chunks(handle, f"{folder}/{name}")

    def _read(self, folder: str, name: str, what: str) -> bytes:
        try:
            return self._store.read(folder, name)
        except FileNotFoundError:
            raise NotFound(f"no {what} {name.rsplit('.', 1)[0]!r} ({folder}/{name})") from None

    @staticmethod
    def _checked(queue_id: str) -> str:
        if not is_queue_id(queue_id):
            raise NotFound(f"{queue_id!r} is not a queue id")
        return queue_id
