"""Delivery: one attempt at a queued message's pending recipients, turned into replies.

The :class:`Deliverer` checks the limits that fail a whole message (size, hop count), groups
the pending recipients by route, and delivers each group: local recipients into one
``Drop/ID.eml`` in IIS's format, remote ones over the transport to each target in turn (the
next host gets only what the last one deferred, RFC 5321 section 5.1), and recipients without a
route get the router's reason. Every outcome is a :class:`~spoolmail._core.reply.Reply`; what the
replies mean is decided by ``conclude_attempt``, not here.

What the deliveries learn of each destination (hosts that did not answer, hops whose lookup
failed, connections, throttles) is kept in ``_service.destinations``; a message passed over
for it was not attempted, and its attempt is not counted (:func:`passed_over`). Reads the
Queue's message files, writes Drop files; never touches envelopes.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import chain

import attrs

from spoolmail._core.drop import render_drop_head, unwritable
from spoolmail._core.envelope import Envelope, RecipientState, replaced
from spoolmail._core.headers import count_received
from spoolmail._core.mtasts import apply_policy
from spoolmail._core.reply import KEPT_TEXT, Reply, kept
from spoolmail._core.retry import short_retrying
from spoolmail._core.routing import Hop, HopKind, Route, RouteKind, Router, Target
from spoolmail._core.suppression import suppressed_reply
from spoolmail._core.throttle import asks_to_slow_down
from spoolmail._core.transcript import Transcript
from spoolmail._service.destinations import Concurrency, DeadDestinations, Throttles, destination
from spoolmail._store.clock import system_clock
from spoolmail._store.store import chunks, read_head
from spoolmail._store.suppression import SuppressionList
from spoolmail._store.transitions import Transitions
from spoolmail._transport.base import HostResolver, Outgoing, Resolution, Transport
from spoolmail._transport.dane import Dane
from spoolmail._transport.mtasts import MtaSts
from spoolmail.exceptions import SpoolmailError

__all__ = [
    "Attempt",
    "Deliverer",
    "TranscriptKind",
    "passed_over",
]

log = logging.getLogger("spoolmail")

HEAD_LIMIT = 1024 * 1024
_ALONE = contextlib.nullcontext()  # a hop that needs no lookup shares none
NULL_MX = "5.1.10"  # RFC 7505 section 4.1: the domain does not accept mail


class TranscriptKind(enum.StrEnum):
    """IIS's transcript files: ``Queue/ID.RTR`` (remote) and ``Queue/ID.LTR`` (local)."""

    REMOTE = "RTR"
    LOCAL = "LTR"


def _unreachable(replies: Sequence[Reply]) -> Reply | None:
    """The reply that shows a host did not answer at all, if every reply says so.

    An RFC 3463 X.4.x status (network and routing) for every recipient means the host, not
    the recipients, is the problem. A 421 that asks this sender to slow down (``_core.throttle``:
    every 421 but a 4.4.x one) is the throttle's to handle instead: the host answered.
    """
    if replies and all(
        r.status.startswith("4.4.") or (r.code == 421 and not asks_to_slow_down(r)) for r in replies
    ):
        return replies[0]
    return None


class _TryNextHost(Exception):
    """This host deferred some recipients: the next host gets them."""


@attrs.define
class Attempt:
    """One attempt's results: replies by address, transcripts by kind, hosts that did not answer.

    ``waiting`` holds the addresses that were only passed over for a dead host, a failed lookup
    or a throttle (no connection, no lookup: nothing was tried for them), with when they may be
    tried again; ``unresolved`` the hops whose lookup failed for want of an answer, with why.
    ``local_faults`` holds the addresses whose local delivery failed on this side (the Drop file
    could not be written): not a delivery attempt either (``_core.states`` rule 9).
    ``relays`` names, by address, the host whose answer is in ``replies`` (``name[address]:port``,
    never the credentials), when a server was reached; ``drops`` the Drop files written, each
    (``Drop/ID.eml``, its size, the recipients in it): what the events report.
    """

    replies: dict[str, Reply] = attrs.Factory(dict)
    transcripts: dict[str, Transcript] = attrs.Factory(dict)
    unreachable: dict[Target, Reply] = attrs.Factory(dict)
    unresolved: dict[Hop, Reply] = attrs.Factory(dict)
    waiting: dict[str, datetime] = attrs.Factory(dict)
    local_faults: set[str] = attrs.Factory(set)
    relays: dict[str, str] = attrs.Factory(dict)
    drops: list[tuple[str, int, tuple[str, ...]]] = attrs.Factory(list)

    @property
    def made(self) -> bool:
        """Whether anything was tried: false when every reply is a pass-over for a dead host."""
        return not self.waiting or not set(self.replies) <= set(self.waiting)

    def pass_over(
        self, addresses: Sequence[str], reply: Reply, until: datetime, transcript: Transcript
    ) -> dict[str, Reply]:
        """Answer ``addresses`` with a pass-over's ``reply`` (a dead host, a throttled
        destination): nothing was tried for them, and they may be tried again at ``until``
        (the earliest such time when one is passed over more than once). The reply is the
        pass-over's, so no relay is named for them; the transcript says why."""
        transcript.note(str(reply))
        for address in addresses:
            self.waiting[address] = min(until, self.waiting.get(address, until))
            self.relays.pop(address, None)
        return dict.fromkeys(addresses, reply)


def passed_over(
    envelope: Envelope, attempt: Attempt, *, now: datetime, deadline: datetime | None
) -> Envelope:
    """The envelope after an attempt that was not made (``attempt.made`` is false).

    Postfix defers mail for a dead destination without a delivery attempt of its own, and so
    does this: the attempt count, the last attempt time, the retry schedule and the replies of
    earlier attempts are left as they were (a recipient without one gets the pass-over's, so
    ``queue show`` says why it waits; the transcript says it too), and the message is due when
    the first of its dead hosts may be tried again, or at ``deadline`` (the earliest expiry of
    its recipients) if that comes first, to expire then as any attempt would have.
    """
    recipients = tuple(
        replaced(r, reply=attempt.replies[r.address], updated=now)
        if r.state is RecipientState.PENDING and r.reply is None and r.address in attempt.replies
        else r
        for r in envelope.recipients
    )
    due = min(attempt.waiting.values())
    if deadline is not None:
        due = min(due, deadline)
    return replaced(envelope, recipients=recipients, next_attempt=due)


@attrs.define
class Deliverer:
    """Delivers the pending recipients of queued messages (see the module docstring)."""

    transitions: Transitions
    router: Router
    transport: Transport
    clock: Callable[[], datetime]
    max_message_size: int
    max_hop_count: int
    resolver: HostResolver
    masquerade: str | None = None
    sleep: Callable[[float], None] = time.sleep
    dead: DeadDestinations = attrs.Factory(DeadDestinations)
    dead_for: timedelta = timedelta(minutes=5)
    concurrency: Concurrency = attrs.Factory(lambda: Concurrency(per_host=10))
    sts: MtaSts | None = None
    dane: Dane | None = None
    suppression: SuppressionList | None = None
    throttles: Throttles = attrs.Factory(Throttles)

    def attempt(self, envelope: Envelope) -> Attempt:
        attempt = Attempt()
        pending = [r.address for r in envelope.pending]
        block = self._precheck(envelope)
        if block is not None:
            transcript = attempt.transcripts.setdefault(TranscriptKind.REMOTE, self._transcript())
            transcript.begin(f"attempt {envelope.attempts + 1}: refused before delivery")
            transcript.note(str(block))
            attempt.replies.update(dict.fromkeys(pending, block))
            return attempt
        groups: dict[Route, list[str]] = defaultdict(list)
        for address in pending:
            groups[self.router.route(address)].append(address)
        for route, grouped in groups.items():
            kind = TranscriptKind.LOCAL if route.kind is RouteKind.LOCAL else TranscriptKind.REMOTE
            transcript = attempt.transcripts.get(kind) or attempt.transcripts.setdefault(
                kind, self._transcript()
            )
            transcript.begin(f"attempt {envelope.attempts + 1}: {route.description}")
            addresses = grouped
            if route.kind is RouteKind.SMTP and self.suppression is not None:
                addresses = self._unsuppressed(grouped, transcript, attempt)
                if not addresses:
                    continue
            if route.kind is RouteKind.LOCAL:
                self._deliver_local(envelope, addresses, transcript, attempt)
            else:
                self._deliver_remote(envelope, route, addresses, transcript, attempt)
        return attempt

    def _transcript(self) -> Transcript:
        """A new transcript; with the real clock, its lines keep ``time.time_ns()``, made a
        datetime only if they are read (``Transcript``: ``stamp``)."""
        return Transcript(self.clock, stamp=time.time_ns if self.clock is system_clock else None)

    def _precheck(self, envelope: Envelope) -> Reply | None:
        """Limits that fail the whole message before any delivery (IIS: size, hop count)."""
        # The size the message was taken in with (a Pickup file, the SMTP DATA): the fields
        # spoolmail added since, and CRLF line ends, do not count (IIS's limit was on that).
        size = envelope.size if envelope.received_size is None else envelope.received_size
        if size > self.max_message_size:
            return Reply(
                552,
                "5.3.4",
                f"message size {size} exceeds the limit of {self.max_message_size} bytes",
            )
        hops = envelope.hops
        if hops is None:  # not noted at intake (a message queued by an older release)
            with self.transitions.open_message(envelope.id) as handle:
                head, _ = read_head(handle, limit=HEAD_LIMIT)
            hops = count_received(head)
        if hops > self.max_hop_count:
            return Reply(
                554,
                "5.4.6",
                f"routing loop detected: {hops} Received: header fields, the limit is "
                f"{self.max_hop_count}",
            )
        return None

    def _deliver_remote(
        self,
        envelope: Envelope,
        route: Route,
        addresses: Sequence[str],
        transcript: Transcript,
        attempt: Attempt,
    ) -> None:
        """Try the route's hops in order: the domain's MX hosts, then (IIS's "attempt direct
        delivery before sending to smart host") the smart host for whatever they did not take.

        A hop that resolves to nothing passes its recipients on with its reason; a server's
        own 5xx is final and not tried elsewhere, and so is a domain that says it takes no mail
        at all (RFC 7505 null MX, 5.1.10): no smart host should carry it there either.
        """
        remaining = list(addresses)
        for hop in route.hops:
            key = destination(hop)
            throttles = self.throttles
            throttles.take(key, self.clock)
            try:
                # Looked at once the slot is ours, as for dead hosts (see _send).
                held = throttles.check(key, self.clock)
                if held is not None:
                    attempt.replies.update(attempt.pass_over(remaining, *held, transcript))
                    continue
                replies = self._deliver_hop(envelope, hop, remaining, transcript, attempt)
            finally:
                throttles.give(key)
            if replies is None:
                break  # a null MX: no other hop should carry it there either
            if replies:
                remaining = [a for a in remaining if 400 <= replies[a].code < 500]
            if not remaining:
                break

    def _deliver_hop(
        self,
        envelope: Envelope,
        hop: Hop,
        remaining: Sequence[str],
        transcript: Transcript,
        attempt: Attempt,
    ) -> dict[str, Reply] | None:
        """One hop: resolve it, apply MTA-STS and DANE (MX hops), try its targets, and let
        the throttle learn from the replies. ``None`` after a null MX, ``{}`` when the hop
        resolved to nothing (its reason is in ``attempt``; the next hop gets every recipient)."""
        # One lookup of a hop at a time: the others wait for it, then find its note or its
        # answers (DeadDestinations.resolving). An address needs no lookup.
        sharing = self.dead.resolving(hop) if hop.kind is not HopKind.ADDRESS else _ALONE
        with sharing:
            skipped = self.dead.skip_lookup(hop, self.clock)
            if skipped is not None:
                # Postfix's "delivery temporarily suspended" after a failed lookup: a domain
                # whose DNS does not answer costs one lookup's timeouts per retry, not one per
                # message.
                passed = attempt.pass_over(remaining, skipped.reply, skipped.until, transcript)
                attempt.replies.update(passed)
                return {}
            resolution = self.resolver.resolve(hop, transcript)
            if resolution.targets:
                self.dead.clear_lookup(hop)
            elif resolution.reply is not None and resolution.reply.code // 100 == 4:
                # Until the service knows this message's retry time and marks it longer.
                self.dead.mark_lookup(hop, self.clock() + self.dead_for, resolution.reply)
                attempt.unresolved[hop] = resolution.reply
        if hop.kind is HopKind.MX and self.sts is not None and resolution.targets:
            resolution = self._apply_sts(hop, resolution, transcript)
        if hop.kind is HopKind.MX and self.dane is not None and resolution.targets:
            domain = hop.name.lower().rstrip(".")
            if not domain.startswith("["):  # an address literal has no DNS
                resolution = self.dane.apply(domain, resolution, transcript)
        if not resolution.targets:
            reply = resolution.reply or Reply(451, "4.4.3", f"{hop} resolves to nothing")
            transcript.note(f"{hop}: {reply}")
            attempt.replies.update(dict.fromkeys(remaining, reply))
            for address in remaining:
                attempt.waiting.pop(address, None)  # the lookup was a real try
                attempt.relays.pop(address, None)  # an earlier hop's host did not answer last
            # The next hop gets them all, whatever this one's reason (not a server's 5xx).
            return None if reply.status == NULL_MX else {}
        replies = self._try_targets(
            envelope, resolution.targets, remaining, transcript, attempt, hop=hop
        )
        attempt.replies.update(replies)
        key = destination(hop)
        throttle = self.throttles.observe(key, replies.values(), self.clock)
        if throttle is not None and throttle.until is not None:
            text = (
                f"{key} asked to slow down ({throttle.reason}): at most "
                f"{throttle.connections} connection(s) at once, no new attempt before "
                f"{throttle.until.isoformat(timespec='seconds')}"
            )
            transcript.note(text)
            log.warning("%s", text)
        return replies

    def _apply_sts(self, hop: Hop, resolution: Resolution, transcript: Transcript) -> Resolution:
        """RFC 8461: the domain's MTA-STS policy, if it has one, decides the MX targets."""
        assert self.sts is not None  # noqa: S101 (only called with one)
        domain = hop.name.lower().rstrip(".")
        if domain.startswith("["):
            return resolution  # an address literal has no policy
        policy = self.sts.policy(domain, transcript)
        if policy is None:
            return resolution
        verdict = apply_policy(domain, policy, resolution.targets)
        for note in verdict.notes:
            transcript.note(note)
        return Resolution(verdict.targets, verdict.reply)

    def _unsuppressed(
        self, addresses: Sequence[str], transcript: Transcript, attempt: Attempt
    ) -> list[str]:
        """The addresses not on the suppression list; the others fail at once."""
        assert self.suppression is not None  # noqa: S101 (only called with one)
        left = []
        for address in addresses:
            entry = self.suppression.get(address)
            if entry is None:
                left.append(address)
                continue
            reply = suppressed_reply(entry)
            transcript.note(f"{address}: {reply}")
            attempt.replies[address] = reply
        return left

    def _try_targets(
        self,
        envelope: Envelope,
        targets: Sequence[Target],
        addresses: Sequence[str],
        transcript: Transcript,
        attempt: Attempt,
        *,
        hop: Hop,
    ) -> dict[str, Reply]:
        """Send to each target in turn; the next gets only what this one deferred.

        RFC 5321 section 5.1: on a temporary failure at one host, try the next before giving
        up for now. tenacity drives the hosts (one try each, no wait in between).
        """
        if len(targets) == 1:
            # One host (a smart host, a single MX): nothing to retry, and building tenacity's
            # machinery (or even this method's closure) for it cost more than the rest.
            return dict(self._send(envelope, targets[0], addresses, transcript, attempt, hop=hop))
        hosts = iter(targets)
        replies: dict[str, Reply] = {}
        remaining = list(addresses)

        def next_host() -> None:
            nonlocal remaining
            sent = self._send(envelope, next(hosts), remaining, transcript, attempt, hop=hop)
            replies.update(sent)
            remaining = [a for a in remaining if 400 <= sent[a].code < 500]
            if remaining:
                raise _TryNextHost

        with contextlib.suppress(_TryNextHost):
            tries = short_retrying(sleep=self.sleep, attempts=len(targets), retry_on=_TryNextHost)
            tries(next_host)
        return replies

    def _send(
        self,
        envelope: Envelope,
        target: Target,
        addresses: Sequence[str],
        transcript: Transcript,
        attempt: Attempt,
        *,
        hop: Hop,
    ) -> Mapping[str, Reply]:
        concurrency = self.concurrency
        concurrency.take(target)
        try:
            # Looked at once the slot is ours: a message that waited behind one that found the
            # host silent sees the mark and does not knock again.
            skipped = self.dead.skip(target, self.clock, hop=hop)
            if skipped is not None:
                return attempt.pass_over(addresses, skipped.reply, skipped.until, transcript)
            # And the destination's throttle: another delivery may have been asked to slow
            # down while this one waited for its connection. Each that connected anyway would
            # likely be refused alike, and each refusal doubled the destination's wait.
            held = self.throttles.waiting(destination(hop), self.clock)
            if held is not None:
                return attempt.pass_over(addresses, *held, transcript)
            for address in addresses:
                attempt.waiting.pop(address, None)
            # The DKIM fields kept in the envelope go in front of the stored bytes (and count
            # in SIZE=): the stored message never changes.
            outgoing = Outgoing.stored(
                id=envelope.id,
                sender=self._mail_from(envelope.sender),
                recipients=addresses,
                size=envelope.size,
                open=lambda: self.transitions.open_message(envelope.id),
                prepend=envelope.prepend,
                eight_bit=envelope.eight_bit,
                dot_lines=envelope.dot_lines,
            )
            replies = _kept(self.transport.send(target, outgoing, transcript))
            for address in addresses:
                attempt.relays[address] = str(target)
            silent = _unreachable([replies[a] for a in addresses])
            if silent is None:
                self.dead.clear(target)
            else:
                # Until the service knows this message's retry time and marks it longer.
                self.dead.mark(target, self.clock() + self.dead_for, silent, hop=hop)
                attempt.unreachable[target] = silent
            concurrency.answered(target, alive=silent is None)
        finally:
            concurrency.give(target)
        return replies

    def _mail_from(self, sender: str) -> str:
        """IIS's masquerade domain: a local domain in MAIL FROM is replaced on the first hop."""
        local, at, domain = sender.rpartition("@")
        if self.masquerade and at and self.router.is_local(domain):
            return f"{local}@{self.masquerade}"
        return sender

    def _deliver_local(
        self, envelope: Envelope, addresses: Sequence[str], transcript: Transcript, attempt: Attempt
    ) -> None:
        """Write ``Drop/ID.eml`` for every local recipient at once, in IIS's Drop format.

        The name is the queue id, so repeating this after a crash replaces the file instead of
        writing a second copy: a message is in Drop once. A file that cannot be written (disk
        full, I/O error, permissions) is a local fault, not a refusal: the recipients wait.

        An address with a control character (only a damaged or hand-edited envelope file holds
        one) cannot be an envelope line: that recipient fails for good, 553 5.1.3, as the SMTP
        transport fails it (5.1.7 for every recipient when it is the sender); waiting would not
        change the file, so it would retry until it expired.
        """
        if unwritable(envelope.sender):
            reply = Reply(
                553,
                "5.1.7",
                f"the sender {envelope.sender!r} holds a control character: it cannot be "
                "written into a Drop file (the envelope file is damaged)",
            )
            transcript.note(str(reply))
            attempt.replies.update(dict.fromkeys(addresses, reply))
            return
        bad = [address for address in addresses if unwritable(address)]
        for address in bad:
            reply = Reply(
                553,
                "5.1.3",
                f"recipient address {address!r} holds a control character: it cannot be "
                "written into a Drop file (the envelope file is damaged)",
            )
            transcript.note(str(reply))
            attempt.replies[address] = reply
        if bad:
            addresses = [address for address in addresses if address not in bad]
            if not addresses:
                return
        try:
            with self.transitions.open_message(envelope.id) as handle:
                head, body = read_head(handle, limit=HEAD_LIMIT)
                drop_head = render_drop_head(
                    head,
                    sender=envelope.sender,
                    recipients=addresses,
                    arrival=envelope.arrival,
                    prepend=envelope.prepend,
                )
                name, size = self.transitions.write_drop(
                    envelope.id, chain([drop_head, body], chunks(handle))
                )
        except SpoolmailError as exc:
            reply = Reply(451, "4.3.0", f"cannot write the Drop file: {exc}")
            transcript.note(str(reply))
            attempt.replies.update(dict.fromkeys(addresses, reply))
            attempt.local_faults.update(addresses)
            return
        transcript.note(f"wrote {name} ({size} bytes) for {len(addresses)} recipient(s)")
        attempt.drops.append((name, size, tuple(addresses)))
        attempt.replies.update(
            dict.fromkeys(addresses, Reply(250, "2.0.0", f"delivered to {name}"))
        )


def _kept(replies: Mapping[str, Reply]) -> Mapping[str, Reply]:
    """A transport's replies as the envelope and the log keep them (:func:`kept`): one reply to a
    whole transaction (a refused DATA) is cut once, and stays one object for all its recipients."""
    if all(len(reply.text) <= KEPT_TEXT for reply in replies.values()):
        return replies
    cut: dict[int, Reply] = {}
    for reply in replies.values():
        if id(reply) not in cut:
            cut[id(reply)] = kept(reply)
    return {address: cut[id(reply)] for address, reply in replies.items()}
