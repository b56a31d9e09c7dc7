"""``MailService``: runs the state machine over the spool, the router and the transport.

One :meth:`MailService.run_once` takes every file in Pickup into the Queue (or BadMail), then
attempts every queued message that is due, and returns a :class:`Report` of what moved where.
Each step is one transition of ``_core.states`` performed as one commit of ``_store.store``;
what a step means is decided by pure core functions (``parse_pickup``, ``conclude_attempt``,
``render_dsn``, ``render_drop_head``). Nothing a single message does can stop the loop: an
unexpected error is logged, counted in the report, and the message waits or goes to BadMail with
the reason. The clock is injected, so a test moves time through a whole retry schedule at once.
"""

from __future__ import annotations

import logging
import platform
import threading
import traceback
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from itertools import chain

import attrs

from spoolmail._core.address import parse_domain
from spoolmail._core.drop import render_drop_head
from spoolmail._core.dsn import DsnAction, render_dsn
from spoolmail._core.envelope import (
    Envelope,
    Recipient,
    RecipientState,
    decode_envelope,
    encode_envelope,
)
from spoolmail._core.headers import count_received
from spoolmail._core.pickup import PickupAccepted, PickupOptions, parse_pickup
from spoolmail._core.reply import Reply
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Route, RouteKind, Router
from spoolmail._core.states import (
    AttemptOutcome,
    DsnKind,
    DsnOrder,
    Event,
    State,
    conclude_attempt,
    transition,
)
from spoolmail._core.transcript import Transcript, render_transcript, transcript_history
from spoolmail._service.schedule import Schedule
from spoolmail._store.spool import Spool
from spoolmail._store.store import (
    BADMAIL,
    DROP,
    QUEUE,
    SORTTEMP,
    MailStore,
    PickupClaim,
    chunks,
    read_head,
)
from spoolmail._transport.base import Outgoing, Transport
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.exceptions import ConfigurationError, EnvelopeError, MessageError, SpoolmailError

__all__ = ["Limits", "MailService", "Report"]

log = logging.getLogger("spoolmail")

# A message whose handling failed unexpectedly waits this long before the next try, so a bug
# that trips on one message cannot turn the loop into a busy loop.
_ERROR_BACKOFF = timedelta(minutes=5)
_HEAD_LIMIT = 1024 * 1024


@attrs.frozen
class Limits:
    """Message limits, with the values an IIS SMTP virtual server was installed with."""

    max_message_size: int = 2 * 1024 * 1024
    """IIS "Limit message size": 2,048 KB (metabase MaxMessageSize 2097152)."""
    max_hop_count: int = 15
    """IIS "Maximum hop count": more ``Received:`` fields than this is a routing loop (5.4.6)."""
    max_dsn_original: int = 256 * 1024
    """A DSN attaches the whole original up to this size, only its headers above it."""


@attrs.frozen
class Report:
    """What one ``run_once`` did. Recipients are listed as (queue id, address) pairs."""

    picked_up: tuple[str, ...] = ()
    badmail: tuple[str, ...] = ()
    delivered: tuple[tuple[str, str], ...] = ()
    deferred: tuple[tuple[str, str], ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    dsns: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any(attrs.astuple(self, recurse=False))


@attrs.define
class _Tally:
    picked_up: list[str] = attrs.Factory(list)
    badmail: list[str] = attrs.Factory(list)
    delivered: list[tuple[str, str]] = attrs.Factory(list)
    deferred: list[tuple[str, str]] = attrs.Factory(list)
    failed: list[tuple[str, str]] = attrs.Factory(list)
    dsns: list[str] = attrs.Factory(list)
    finished: list[str] = attrs.Factory(list)
    errors: list[str] = attrs.Factory(list)

    def freeze(self) -> Report:
        return Report(**{k: tuple(v) for k, v in attrs.asdict(self, recurse=False).items()})


def _checked_fqdn(fqdn: str) -> str:
    try:
        return parse_domain(fqdn)
    except MessageError as exc:
        raise ConfigurationError(f"fqdn: {exc}") from None


def _machine_name() -> str:
    """This machine's name if it is a valid host name, else ``localhost`` (never a DNS lookup)."""
    try:
        return parse_domain(platform.node())
    except MessageError:
        return "localhost"


class MailService:
    """Processes a spool: Pickup → Queue → Drop / SMTP / DSN / BadMail.

    ``MailService(spool, router=Router(...), retry=RetryPolicy.iis(), clock=clock)``. The clock
    defaults to the spool's; ``fqdn`` (used in ``Received:``, Message-IDs and DSNs) to this
    machine's name. ``pickup_dot_stuffed=True`` un-stuffs leading dots in Pickup files as IIS 5+
    did (``DisablePickupDotStuff=0``); by default files are taken as written (.NET Core 3+).
    """

    def __init__(
        self,
        spool: Spool,
        *,
        router: Router | None = None,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        clock: Callable[[], datetime] | None = None,
        fqdn: str | None = None,
        limits: Limits | None = None,
        pickup_dot_stuffed: bool = False,
        rescan_interval: timedelta = timedelta(minutes=5),
    ) -> None:
        if spool.service is not None:
            raise ConfigurationError(
                "this Spool already has a MailService; close it first, or open a second Spool "
                "on the same MailRoot for a second service (each has its own claims)"
            )
        self.spool = spool
        self.store: MailStore = spool.store
        self.router = router or Router()
        self.retry = retry or RetryPolicy.iis()
        self.clock = clock or spool.clock
        self.fqdn = _checked_fqdn(fqdn) if fqdn else _machine_name()
        self.limits = limits or Limits()
        if self.limits.max_message_size < 1 or self.limits.max_hop_count < 1:
            raise ConfigurationError(f"limits must be positive: {self.limits!r}")
        self.transport = transport or SmtpTransport(helo_name=self.fqdn)
        self.pickup_options = PickupOptions(
            fqdn=self.fqdn,
            default_domain=self.router.default_domain,
            max_message_size=self.limits.max_message_size,
            dot_stuffed=pickup_dot_stuffed,
        )
        self.rescan_interval = rescan_interval
        self.schedule = Schedule()
        self._next_rescan: datetime | None = None
        self._stop = threading.Event()
        spool.service = self

    # -- the loop -------------------------------------------------------------------------------

    def run_once(self) -> Report:
        """Process Pickup and every due queued message once; report what moved where."""
        tally = _Tally()
        now = self.clock()
        if self._next_rescan is None or now >= self._next_rescan:
            self._guard(tally, "recovering the spool", lambda: self._rescan(tally))
            self._next_rescan = now + self.rescan_interval
        self._guard(tally, "renewing this process's lease", self.store.announce)
        names: list[str] = []
        self._guard(tally, "listing Pickup", lambda: names.extend(self.store.pickup_names()))
        for name in names:
            self._guard(tally, f"picking up {name!r}", partial(self._pickup, name, tally))
        # DSNs queued by this tick are due at once, so loop until nothing new is due; a message
        # is attempted at most once a tick, whatever its retry policy says.
        attempted: set[str] = set()
        again: list[str] = []
        while due := self.schedule.pop_due(self.clock()):
            for queue_id in due:
                if queue_id in attempted:
                    again.append(queue_id)
                    continue
                attempted.add(queue_id)
                self._guard(
                    tally, f"delivering {queue_id}", partial(self._attempt, queue_id, tally)
                )
        for queue_id in again:
            self.schedule.set(queue_id, self.clock())
        return tally.freeze()

    def run_forever(
        self,
        *,
        poll_interval: float = 1.0,
        on_report: Callable[[Report], object] | None = None,
    ) -> None:
        """Run until :meth:`stop`: a tick, then wait for the next due message or the poll interval.

        ``on_report`` sees every tick's report (the command line logs them).
        """
        self._stop.clear()
        while not self._stop.is_set():
            report = self.run_once()
            if on_report is not None:
                on_report(report)
            wait = poll_interval
            next_due = self.schedule.next_due()
            if next_due is not None:
                wait = max(0.0, min(wait, (next_due - self.clock()).total_seconds()))
            self._stop.wait(wait)

    def rescan(self) -> Report:
        """Recover and rescan the Queue now, as every tick does each ``rescan_interval``.

        For changes made behind the service's back (files moved by hand, another process).
        """
        tally = _Tally()
        self._guard(tally, "recovering the spool", lambda: self._rescan(tally))
        self._next_rescan = self.clock() + self.rescan_interval
        return tally.freeze()

    def stop(self) -> None:
        """Make :meth:`run_forever` return after the current tick."""
        self._stop.set()

    def close(self) -> None:
        """Close kept-open connections and let the spool serve another service."""
        self.transport.close()
        if self.spool.service is self:
            self.spool.service = None

    def _guard(self, tally: _Tally, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            if isinstance(exc, SpoolmailError):
                log.error("error while %s: %s", what, exc)  # noqa: TRY400 (expected, no traceback)
            else:
                log.exception("error while %s", what)
            tally.errors.append(f"{what}: {exc}")

    # -- recovery and the schedule ------------------------------------------------------------

    def _rescan(self, tally: _Tally) -> None:
        """Finish what dead processes left half done, then rebuild the schedule from the Queue.

        DESIGN.md section 3: a Pickup claim is re-run (queued once: the id is kept), a delivery
        claim goes back to the Queue, a finish is completed, a half-written file is deleted.
        """
        store = self.store
        store.announce()

        def abandoned(owner: str) -> bool:
            # This service's own claims count too: none is in progress between ticks, and a
            # Spool serves one MailService at a time (see __init__).
            return owner == store.owner or not store.owner_alive(owner)

        for claim in store.pickup_claims():
            if abandoned(claim.owner):
                mine = claim if claim.owner == store.owner else store.take_over(claim)
                if mine is not None and self._queued_already(mine.id):
                    store.finish_claim(mine)  # committed before a crash cut the claim's removal
                elif mine is not None:
                    self._process_claim(mine, tally)
        for queue_id, entry in store.queue_files().items():
            for owner in entry.claims:
                if abandoned(owner):
                    self._recover_claim(
                        queue_id, owner, has_envelope=entry.envelope, has_message=entry.message
                    )
        store.sweep_temp()
        self._sweep_orphans(tally)
        self._rebuild_schedule()

    def _recover_claim(
        self, queue_id: str, owner: str, *, has_envelope: bool, has_message: bool
    ) -> None:
        store = self.store
        if has_envelope:
            log.warning("%s: removing a stale claim of dead owner %s", queue_id, owner)
            store.remove(QUEUE, MailStore.claimed_name(queue_id, owner))
        elif not has_message:
            log.info("%s: completing a finish that owner %s began", queue_id, owner)
            store.finish(queue_id, owner)
        elif owner == store.owner or store.take_over_queued(queue_id, owner):
            transition(State.DELIVERING, Event.ABANDONED)
            log.info("%s: returned to the Queue from dead owner %s", queue_id, owner)
            store.rename(
                (QUEUE, MailStore.claimed_name(queue_id, store.owner)), (QUEUE, f"{queue_id}.env")
            )

    def _sweep_orphans(self, tally: _Tally) -> None:
        """Move a message left without envelope to BadMail; drop reports of undone BadMail moves.

        Another process may be between two steps of a commit right now, so only files older
        than a lease count as left behind: a commit takes milliseconds, not minutes.
        """
        store = self.store
        claimed_ids = {c.id for c in store.pickup_claims()}
        files = store.queue_files()
        for queue_id, entry in files.items():
            if entry.envelope or entry.claims or queue_id in claimed_ids:
                continue
            if entry.message and not store.stale(QUEUE, f"{queue_id}.eml"):
                continue
            if entry.message:
                report = (
                    b"4.3.0 found in the Queue without an envelope (a commit was interrupted); "
                    b"the envelope is unknown, so the message is kept here for an operator\n"
                )
                store.commit_badmail(
                    queue_id, message=(QUEUE, f"{queue_id}.eml"), report=report, envelope=None
                )
                tally.badmail.append(queue_id)
            for kind in entry.transcripts:
                store.remove(QUEUE, f"{queue_id}.{kind}")
        for name in store.listdir(BADMAIL):
            queue_id, _, kind = name.partition(".")
            if kind == "BDR" and queue_id in files and not store.exists(BADMAIL, f"{queue_id}.BAD"):
                entry = files[queue_id]
                if (entry.envelope or entry.claims) and store.stale(BADMAIL, name):
                    store.remove(BADMAIL, f"{queue_id}.BDR")
                    store.remove(BADMAIL, f"{queue_id}.BDP")

    def _rebuild_schedule(self) -> None:
        self.schedule.clear()
        now = self.clock()
        for queue_id, entry in self.store.queue_files().items():
            if not entry.envelope:
                continue
            try:
                envelope = decode_envelope(self.store.read(QUEUE, f"{queue_id}.env"))
            except FileNotFoundError:
                continue  # claimed or finished meanwhile
            except EnvelopeError:
                self.schedule.set(queue_id, now)  # the attempt moves it aside with the reason
                continue
            if not envelope.held:
                self.schedule.set(queue_id, envelope.next_attempt)

    # -- Pickup ----------------------------------------------------------------------------------

    def _pickup(self, name: str, tally: _Tally) -> None:
        claim = self.store.claim_pickup(name)
        if claim is not None:
            self._process_claim(claim, tally)

    def _process_claim(self, claim: PickupClaim, tally: _Tally) -> None:
        """PICKUP → QUEUED or BADMAIL, for a file this process has claimed."""
        store = self.store
        now = self.clock()
        size = store.size(SORTTEMP, claim.file)
        if size > self.limits.max_message_size:
            # Do not read what is too big: IIS did not pick such files up either (KB Q201314).
            self._reject(
                claim,
                status="5.3.4",
                reason=f"message size {size} bytes exceeds the limit of "
                f"{self.limits.max_message_size} bytes",
                sender=None,
                recipients=(),
                tally=tally,
            )
            return
        raw = store.read(SORTTEMP, claim.file)
        try:
            result = parse_pickup(raw, options=self.pickup_options, queue_id=claim.id, now=now)
        except Exception as exc:
            log.exception("pickup parser failed on %s", claim.name)
            self._reject(
                claim,
                status="4.3.0",
                reason=f"internal error while reading the file: {exc!r}\n{traceback.format_exc()}",
                sender=None,
                recipients=(),
                tally=tally,
            )
            return
        if not isinstance(result, PickupAccepted):
            self._reject(
                claim,
                status=result.status,
                reason=result.reason,
                sender=result.sender,
                recipients=result.recipients,
                tally=tally,
            )
            return
        transition(State.PICKUP, Event.ACCEPTED)
        envelope = Envelope(
            id=claim.id,
            sender=result.sender,
            recipients=tuple(Recipient(address) for address in result.recipients),
            arrival=now,
            next_attempt=now,
            origin=f"pickup:{claim.name}",
            size=len(result.message),
        )
        store.commit_queued(claim.id, result.message, encode_envelope(envelope))
        store.finish_claim(claim)
        self.schedule.set(claim.id, now)
        tally.picked_up.append(claim.id)

    def _reject(
        self,
        claim: PickupClaim,
        *,
        status: str,
        reason: str,
        sender: str | None,
        recipients: Sequence[str],
        tally: _Tally,
    ) -> None:
        transition(State.PICKUP, Event.REJECTED)
        now = self.clock()
        reply = Reply(554 if status.startswith("5") else 451, status, reason.split("\n", 1)[0])
        envelope = Envelope(
            id=claim.id,
            sender=sender or "",
            recipients=tuple(
                Recipient(a, RecipientState.FAILED, reply, updated=now) for a in recipients
            ),
            arrival=now,
            next_attempt=now,
            origin=f"pickup:{claim.name}",
            size=self.store.size(SORTTEMP, claim.file),
        )
        report = (
            f"{status} {reason}\n\n"
            f"The file {claim.name!r} in Pickup could not be queued; it is kept as {claim.id}.BAD "
            f"exactly as it was written. Fix it and move it back into Pickup to send it.\n"
        )
        self.store.commit_badmail(
            claim.id,
            message=(SORTTEMP, claim.file),
            report=report.encode("utf-8"),
            envelope=encode_envelope(envelope),
        )
        log.warning("Pickup file %r went to BadMail as %s: %s", claim.name, claim.id, reason)
        tally.badmail.append(claim.id)

    # -- delivery ----------------------------------------------------------------------------------

    def _attempt(self, queue_id: str, tally: _Tally) -> None:
        """QUEUED → DELIVERING → (QUEUED | DONE | BADMAIL) for one due message."""
        store = self.store
        if not store.claim_queued(queue_id):
            return  # another process has it, or it is gone
        transition(State.QUEUED, Event.CLAIMED)
        try:
            raw = store.read_claimed(queue_id)
            envelope = decode_envelope(raw)
        except EnvelopeError as exc:
            self._damaged(queue_id, f"the envelope file cannot be read: {exc}", raw, tally)
            return
        if not store.exists(QUEUE, f"{queue_id}.eml"):
            self._damaged(queue_id, "the message file Queue/{id}.eml is missing", raw, tally)
            return
        if envelope.held:
            store.release(queue_id, raw)
            return
        try:
            outcome, transcripts = self._deliver(envelope, tally)
            self._commit(outcome, transcripts, tally)
        except Exception:
            self._give_back(envelope)
            raise

    def _give_back(self, envelope: Envelope) -> None:
        """After an unexpected error: return the claim unchanged, due after a pause.

        The attempt's deliveries may be repeated (at-least-once); nothing is lost. If the error
        struck in the middle of a finish, the finish is completed instead.
        """
        store = self.store
        if not store.exists(QUEUE, f"{envelope.id}.eml"):
            store.finish(envelope.id)
            return
        later = attrs.evolve(envelope, next_attempt=self.clock() + _ERROR_BACKOFF)
        store.release(envelope.id, encode_envelope(later))
        self.schedule.set(envelope.id, later.next_attempt)

    def _damaged(self, queue_id: str, reason: str, raw: bytes, tally: _Tally) -> None:
        transition(State.DELIVERING, Event.DAMAGED)
        reason = reason.format(id=queue_id)
        report = (
            f"4.3.0 {reason}\n\nThe envelope file as found:\n{raw.decode('utf-8', 'replace')}\n"
        ).encode()
        store = self.store
        if store.exists(QUEUE, f"{queue_id}.eml"):
            store.commit_badmail(
                queue_id, message=(QUEUE, f"{queue_id}.eml"), report=report, envelope=None
            )
        else:
            store.write(BADMAIL, f"{queue_id}.BDR", report)
        store.finish(queue_id)
        log.error("%s moved to BadMail: %s", queue_id, reason)
        tally.badmail.append(queue_id)

    def _deliver(
        self, envelope: Envelope, tally: _Tally
    ) -> tuple[AttemptOutcome, dict[str, Transcript]]:
        now = self.clock()
        replies: dict[str, Reply] = {}
        transcripts: dict[str, Transcript] = {}
        pending = envelope.pending
        block = self._precheck(envelope)
        if block is not None:
            replies = {r.address: block for r in pending}
        else:
            groups: dict[Route, list[str]] = defaultdict(list)
            for recipient in pending:
                groups[self.router.route(recipient.address)].append(recipient.address)
            for route, addresses in groups.items():
                kind = "LTR" if route.kind is RouteKind.LOCAL else "RTR"
                transcript = transcripts.setdefault(kind, Transcript(self.clock))
                transcript.begin(f"attempt {envelope.attempts + 1}: {route.description}")
                replies.update(self._deliver_route(envelope, route, addresses, transcript))
        outcome = conclude_attempt(envelope, replies, retry=self.retry, now=now)
        self._tally_replies(envelope.id, replies, outcome, tally)
        return outcome, transcripts

    def _precheck(self, envelope: Envelope) -> Reply | None:
        """Limits that fail the whole message before any delivery (IIS: hop count, size)."""
        if envelope.size > self.limits.max_message_size:
            return Reply(
                552,
                "5.3.4",
                f"message size {envelope.size} exceeds the limit of "
                f"{self.limits.max_message_size} bytes",
            )
        with self.store.open(QUEUE, f"{envelope.id}.eml") as handle:
            head, _ = read_head(handle, limit=_HEAD_LIMIT)
        hops = count_received(head)
        if hops > self.limits.max_hop_count:
            return Reply(
                554,
                "5.4.6",
                f"routing loop detected: {hops} Received: header fields, the limit is "
                f"{self.limits.max_hop_count}",
            )
        return None

    def _deliver_route(
        self, envelope: Envelope, route: Route, addresses: Sequence[str], transcript: Transcript
    ) -> Mapping[str, Reply]:
        if route.kind is RouteKind.LOCAL:
            return self._deliver_local(envelope, addresses, transcript)
        if route.kind is RouteKind.NONE:
            assert route.reply is not None  # noqa: S101 (a NONE route always says why)
            transcript.note(str(route.reply))
            return dict.fromkeys(addresses, route.reply)
        replies: dict[str, Reply] = {}
        remaining = list(addresses)
        for target in route.targets:
            outgoing = Outgoing(
                id=envelope.id,
                sender=envelope.sender,
                recipients=remaining,
                size=envelope.size,
                open=lambda: self.store.open(QUEUE, f"{envelope.id}.eml"),
            )
            replies.update(self.transport.send(target, outgoing, transcript))
            # The next host gets only what this one deferred (RFC 5321 section 5.1).
            remaining = [a for a in remaining if replies[a].code >= 400 and replies[a].code < 500]
            if not remaining:
                break
        return replies

    def _deliver_local(
        self, envelope: Envelope, addresses: Sequence[str], transcript: Transcript
    ) -> Mapping[str, Reply]:
        """Write ``Drop/ID.eml`` for every local recipient at once, in IIS's Drop format.

        The name is the queue id, so repeating this after a crash replaces the file instead of
        writing a second copy: a message is in Drop once.
        """
        name = f"{envelope.id}.eml"
        try:
            with self.store.open(QUEUE, name) as handle:
                head, body = read_head(handle, limit=_HEAD_LIMIT)
                drop_head = render_drop_head(
                    head, sender=envelope.sender, recipients=addresses, arrival=envelope.arrival
                )
                size = self.store.write(DROP, name, chain([drop_head, body], chunks(handle)))
        except SpoolmailError as exc:
            reply = Reply(451, "4.3.0", f"cannot write the Drop file: {exc}")
            transcript.note(str(reply))
            return dict.fromkeys(addresses, reply)
        transcript.note(f"wrote Drop/{name} ({size} bytes) for {len(addresses)} recipient(s)")
        return dict.fromkeys(addresses, Reply(250, "2.0.0", f"delivered to Drop/{name}"))

    def _tally_replies(
        self, queue_id: str, replies: Mapping[str, Reply], outcome: AttemptOutcome, tally: _Tally
    ) -> None:
        states = {r.address: r.state for r in outcome.envelope.recipients}
        for address in replies:
            state = states.get(address)
            if state is RecipientState.DELIVERED:
                tally.delivered.append((queue_id, address))
            elif state is RecipientState.PENDING:
                tally.deferred.append((queue_id, address))
            else:
                tally.failed.append((queue_id, address))

    def _write_transcripts(self, envelope: Envelope, transcripts: Mapping[str, Transcript]) -> None:
        """Keep the transcript of a message that stays queued (IIS's .RTR / .LTR)."""
        for kind, transcript in transcripts.items():
            local = kind == "LTR"
            recipients = [
                r
                for r in envelope.recipients
                if (self.router.route(r.address).kind is RouteKind.LOCAL) == local
            ]
            self.store.write(
                QUEUE,
                f"{envelope.id}.{kind}",
                render_transcript(
                    recipients, self._history(envelope.id, kind) + transcript.text
                ).encode(),
            )

    def _history(self, queue_id: str, kind: str) -> str:
        try:
            return transcript_history(self.store.read(QUEUE, f"{queue_id}.{kind}").decode())
        except FileNotFoundError:
            return ""

    # -- committing an attempt's outcome ----------------------------------------------------------

    def _commit(
        self, outcome: AttemptOutcome, transcripts: Mapping[str, Transcript], tally: _Tally
    ) -> None:
        envelope = outcome.envelope
        for order in outcome.dsns:
            self._queue_dsn(envelope, order, tally)
        state = outcome.state
        if state is State.QUEUED:
            self._write_transcripts(envelope, transcripts)
            self.store.release(envelope.id, encode_envelope(envelope))
            self.schedule.set(envelope.id, envelope.next_attempt)
        elif state is State.DONE:
            self.store.finish(envelope.id)
            tally.finished.append(envelope.id)
        else:
            self._undeliverable(envelope, transcripts, tally)

    def _queued_already(self, queue_id: str) -> bool:
        """Whether ``queue_id`` has a committed envelope, claimed or not."""
        if self.store.exists(QUEUE, f"{queue_id}.env"):
            return True
        if not self.store.exists(QUEUE, f"{queue_id}.eml"):
            return False
        # Rare (being delivered, or a commit cut short): only now list the Queue.
        files = self.store.queue_files().get(queue_id)
        return files is not None and bool(files.claims)

    def _queue_dsn(self, envelope: Envelope, order: DsnOrder, tally: _Tally) -> None:
        """Queue a DSN about ``envelope``; its id is derived, so a repeat after a crash is no-op."""
        if self._queued_already(order.id):
            return
        now = self.clock()
        original = self._original_for_dsn(envelope)
        action = DsnAction.FAILED if order.kind is DsnKind.FAILURE else DsnAction.DELAYED
        message = render_dsn(
            envelope=envelope,
            recipients=order.recipients,
            action=action,
            original=original,
            reporting_mta=self.fqdn,
            dsn_id=order.id,
            now=now,
            will_retry_until=(
                self.retry.expires_at(arrival=envelope.arrival)
                if action is DsnAction.DELAYED
                else None
            ),
            max_original_size=self.limits.max_dsn_original,
        )
        dsn = Envelope(
            id=order.id,
            sender="",
            recipients=(Recipient(envelope.sender),),
            arrival=now,
            next_attempt=now,
            origin=f"dsn:{envelope.id}",
            size=len(message),
        )
        self.store.commit_queued(order.id, message, encode_envelope(dsn))
        self.schedule.set(order.id, now)
        tally.dsns.append(order.id)

    def _original_for_dsn(self, envelope: Envelope) -> bytes:
        with self.store.open(QUEUE, f"{envelope.id}.eml") as handle:
            if envelope.size <= self.limits.max_dsn_original:
                return handle.read()
            head, _ = read_head(handle, limit=_HEAD_LIMIT)
            return head

    def _undeliverable(
        self, envelope: Envelope, transcripts: Mapping[str, Transcript], tally: _Tally
    ) -> None:
        """A null-sender message (a DSN) that cannot be delivered goes to BadMail, never back."""
        failures = [r for r in envelope.recipients if r.state is RecipientState.FAILED]
        first = failures[0].reply if failures and failures[0].reply else None
        status = first.status if first else "5.0.0"
        lines = [
            f"{status} This message has a null sender (it is a delivery status notification) "
            "and cannot be delivered, so it cannot be returned to anybody.",
            "",
            *(_failure_line(r) for r in failures),
            "",
            "Transcript:",
        ]
        history = "".join(self._history(envelope.id, kind) for kind in ("RTR", "LTR"))
        current = "".join(t.text for t in transcripts.values())
        report = ("\n".join(lines) + "\n" + history + current).encode("utf-8")
        self.store.commit_badmail(
            envelope.id,
            message=(QUEUE, f"{envelope.id}.eml"),
            report=report,
            envelope=encode_envelope(envelope),
        )
        self.store.finish(envelope.id)
        log.warning("%s went to BadMail: %s", envelope.id, lines[0])
        tally.badmail.append(envelope.id)


def _failure_line(recipient: Recipient) -> str:
    reply = recipient.reply
    where = f" (from {reply.host})" if reply is not None and reply.host else ""
    return f"<{recipient.address}>: {reply}{where}"
