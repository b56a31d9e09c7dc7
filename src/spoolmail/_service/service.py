"""``MailService``: runs the state machine over the spool, the router and the transport.

One :meth:`MailService.run_once` takes every file in Pickup into the Queue or BadMail
(``intake``), then hands every queued message that is due to its delivery threads, where each
is attempted (``delivery``), the attempt concluded with the pure rules of ``_core.states`` and
the outcome committed (``attempts``): DSNs and BadMail (``bounce``), the envelope back into the
Queue, or the message's files removed. It returns a :class:`Report` (``report``) of what moved
where. Which message is due comes from an in-memory
:class:`~spoolmail._service.schedule.Schedule`, built by one scan of the Queue and kept up to
date as the service changes it, so a tick costs O(due messages), not O(queue size); a periodic
rescan (and operators' triggers) picks up what other processes changed.

Nothing a single message does can stop the loop: an unexpected error is logged, counted in the
report, and the message waits or goes to BadMail with the reason. The clock is injected, so a
test moves time through a whole retry schedule at once.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

import attrs

from spoolmail._core.badmail import orphan_report
from spoolmail._core.envelope import Envelope, Recipient, decode_envelope, read_due
from spoolmail._core.events import MailEvent, Observer, ToBadMail
from spoolmail._core.pickup import PickupOptions
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Hop, RouteKind, Router
from spoolmail._core.shares import WHOLE, Share
from spoolmail._core.throttle import ThrottleRules
from spoolmail._service.attempts import Attempts
from spoolmail._service.bounce import Bouncer
from spoolmail._service.checks import HostNameCheck, check_host_name, warn_about_host_name
from spoolmail._service.delivery import Deliverer
from spoolmail._service.destinations import Concurrency, Throttles
from spoolmail._service.handoff import Handoff, received
from spoolmail._service.helping import Helping
from spoolmail._service.intake import Intake
from spoolmail._service.observers import Counters, LogObserver, Stats
from spoolmail._service.parts import (
    asking_for_ad,
    check_waits,
    checked_names,
    dane_checks,
    machine_name,
    mta_sts_policies,
    suppression_list,
)
from spoolmail._service.report import Report, Tally
from spoolmail._service.schedule import Schedule
from spoolmail._service.threads import Batch, DeliveryThreads
from spoolmail._service.tick import Tick, Waker
from spoolmail._store.maillog import MailLog
from spoolmail._store.recovery import recover
from spoolmail._store.spool import Spool, flush_chooser
from spoolmail._store.store import FlushOrder, MailStore, PickupClaim, QueueFiles, Triggers
from spoolmail._store.transitions import Transitions
from spoolmail._transport.base import HostResolver, Transport
from spoolmail._transport.dns import CACHE_SIZE, DnsResolver
from spoolmail._transport.mtasts import PolicyFetcher
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.exceptions import (
    ConfigurationError,
    EnvelopeError,
    SpoolmailError,
    StorageError,
)

if TYPE_CHECKING:
    # dnspython costs tens of milliseconds to import: only DANE's resolver needs it here.
    import dns.resolver

__all__ = ["Limits", "MailService", "Report", "Stats", "checked_names", "machine_name"]

log = logging.getLogger("spoolmail")

# Postfix's queue_minfree defaults to 0 but refuses mail below 1.5 x message_size_limit, room for
# one message; intake here takes a batch of 32 files at once, and 32 x 1.5 x IIS's 2 MiB is
# 96 MiB. The floor also leaves room to deliver what is queued: Drop copies, envelopes, DSNs.
MIN_FREE_SPACE = 100 * 1024 * 1024


@attrs.frozen
class Limits:
    """Message limits, with the values an IIS SMTP virtual server was installed with."""

    max_message_size: int = 2 * 1024 * 1024
    """IIS "Limit message size": 2,048 KB (metabase MaxMessageSize 2097152)."""
    max_hop_count: int = 15
    """IIS "Maximum hop count": more ``Received:`` fields than this is a routing loop (5.4.6)."""
    max_dsn_original: int = 256 * 1024
    """A DSN attaches the whole original up to this size, only its headers above it."""
    max_connections: int = 20
    """Messages attempted at once (threads). IIS allowed 1,000 outbound connections."""
    max_connections_per_host: int = 10
    """Connections to one host at once, after it has taken a message (slow start: one until
    then). IIS allowed 100 per domain."""

    def __attrs_post_init__(self) -> None:
        # A size limit of 0 or less would send every message to BadMail (5.3.4), a hop count
        # of 0 every relayed one (5.4.6), no connection would deliver nothing: said at once.
        for name, value in attrs.asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"Limits.{name} is a whole number, not {value!r}")
            if value < 1:
                raise ConfigurationError(f"Limits.{name} must be 1 or more, not {value}")


# Pickup files claimed (and made durable) together; also how often intake hands its work over.
_PICKUP_BATCH = 32
# A tick's first batch: its messages leave while the next batches are taken in. Each batch
# costs the same few fsyncs whatever its size, so only the first is small.
_FIRST_PICKUP_BATCH = 8
# And a batch ends at this much mail, whatever its count: 8 files of 1 MiB held the first
# delivery back by the intake of 8 MiB in each worker (0.45 s to the first message at the sink,
# against 0.28 s for 2 KB files).
_PICKUP_BATCH_BYTES = 4 << 20
_FIRST_PICKUP_BATCH_BYTES = 1 << 20


class MailService:
    """Processes a spool: Pickup → Queue → Drop / SMTP / DSN / BadMail.

    ``MailService(spool, router=Router(...), retry=RetryPolicy.iis(), clock=clock)``.

    - ``retry`` is the remote delivery schedule (default IIS's); ``local_retry`` the one for
      Drop (default: IIS's local schedule when ``retry`` is not given either, else ``retry``).
    - ``clock`` defaults to the spool's; ``fqdn`` (``Received:``, Message-IDs, DSNs) to this
      machine's name.
    - ``ndr_copy_to`` is IIS's "Send copy of Non-Delivery Report to": failure DSNs go there too.
    - ``masquerade_domain`` replaces a local domain in MAIL FROM when sending out (IIS's
      "Masquerade domain", KB Q303734: first hop only; headers are left alone).
    - ``host_resolver`` looks names up (default: DNS, through ``dns_resolver``, a
      ``dns.resolver.Resolver``, or the system's; tests use ``spoolmail.testing.StaticResolver``).
    - ``dns_cache_size`` (default 10,000; 0: none) is how many DNS answers the service's own
      resolver keeps, each for its TTL (docs/delivery.md); :meth:`stats` counts the cache's
      hits, misses and entries. It applies only to the resolver the service builds: a
      ``host_resolver`` given keeps its own cache, or none, whatever ``dns_cache_size`` says.
    - ``pickup_dot_stuffed=True`` un-stuffs leading dots in Pickup files as IIS 5+ did
      (``DisablePickupDotStuff=0``); by default files are taken as written (.NET Core 3+).
    - A Pickup file is taken only once no process has it open for writing (a Linux read lease
      or inotify's close event where they are to be had); elsewhere once its size and time
      stayed unchanged for ``pickup_settle``. One still open after ``pickup_open_warning`` is
      logged once, and left.
    - ``min_free_space`` (bytes, default 100 MiB; 0: no floor) is Postfix's
      ``queue_minfree``: while the MailRoot's filesystem has less free, Pickup files are left
      where they are (mail already queued is still delivered) and taken again once there is
      room, with one warning and one notice in the log. See :meth:`room_for_mail`.
    - ``observers`` are called with every event the spool commits (:meth:`Spool.subscribe`),
      from the service's close on no more; every event is also logged (``spoolmail.mail``
      logger) and, unless ``log_days`` is 0, appended to the mail log in ``Log/``, whose daily
      files are kept ``log_days`` days (default 30). :meth:`stats` counts them. See
      docs/events.md.
    - ``helo_name`` is the name EHLO gives (default ``fqdn``); receivers check that it
      resolves and that this host's address resolves back to it (docs/deliverability.md,
      :func:`spoolmail.check_host_name`). A ``transport`` given has its own.
    - ``mta_sts`` (default on) applies the MX domain's MTA-STS policy (RFC 8461) to MX
      delivery (not to smart hosts or routes), fetched with ``mta_sts_fetcher`` (default: HTTPS
      through the service's DNS). It needs the service's own DNS: with a ``host_resolver`` that
      is not a ``DnsResolver`` there is no policy lookup.
    - ``dane=True`` (default off) applies DANE (RFC 7672) to MX delivery, and declares that the
      DNS resolver (``dns_resolver``, or the system's) validates DNSSEC and is reached over a
      trusted path (a validating resolver on this host, such as unbound at 127.0.0.1): its AD
      bit is all DANE rests on, so behind a resolver that does not validate DANE never applies
      (no AD bit) and nothing changes. Where it applies: TLS required and the certificate
      matched against the MX host's TLSA records, else ``451 4.7.5``. Needs the service's own
      DNS (no extra package); queries set the AD flag.
    - ``suppression_days`` (default 30; 0: no list) keeps recipients that hard-bounced
      (5.1.1, 5.1.2, 5.1.10 from a remote server) in ``Suppression/``; mail to them fails at
      once (:class:`~spoolmail.SuppressionList`).
    - ``throttle`` (:class:`~spoolmail.ThrottleRules`) says how a destination that asks to
      slow down (421, 4.7.x "rate", "try again later") is slowed, and sets an optional
      ``max_messages_per_minute`` per destination.
    - ``share`` (:class:`~spoolmail.Share`) makes this service worker ``index`` of ``count``
      processes on one MailRoot (``spoolmail run --workers``): it takes only its share of the
      Pickup files and schedules only its share of the Queue, and the ids it makes fall in its
      share, so the workers divide the mail without racing for it. Each message is still
      claimed by rename, so it is delivered once whatever the workers do. Give every worker
      of a group the same ``count`` and each index once; a worker that is down leaves its
      share waiting until it runs again. Operators' triggers (hold, flush) reach every worker.
    - One service per :class:`Spool` object at a time; a second process opens its own Spool.
    """

    def __init__(
        self,
        spool: Spool,
        *,
        router: Router | None = None,
        retry: RetryPolicy | None = None,
        local_retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        host_resolver: HostResolver | None = None,
        dns_resolver: dns.resolver.Resolver | None = None,
        dns_cache_size: int = CACHE_SIZE,
        clock: Callable[[], datetime] | None = None,
        fqdn: str | None = None,
        limits: Limits | None = None,
        ndr_copy_to: str | None = None,
        masquerade_domain: str | None = None,
        pickup_dot_stuffed: bool = False,
        pickup_settle: timedelta = timedelta(seconds=2),
        pickup_open_warning: timedelta = timedelta(hours=1),
        rescan_interval: timedelta = timedelta(minutes=5),
        min_free_space: int = MIN_FREE_SPACE,
        observers: Iterable[Observer] = (),
        log_days: int = 30,
        helo_name: str | None = None,
        mta_sts: bool = True,
        mta_sts_fetcher: PolicyFetcher | None = None,
        dane: bool = False,
        suppression_days: int = 30,
        throttle: ThrottleRules | None = None,
        share: Share = WHOLE,
    ) -> None:
        if spool.service is not None:
            raise ConfigurationError(
                "this Spool already has a MailService; close it first, or open a second Spool "
                "on the same MailRoot for a second service (each has its own claims)"
            )
        limits = limits or Limits()
        check_waits(pickup_settle, pickup_open_warning, rescan_interval)
        if min_free_space < 0:
            raise ConfigurationError(f"min_free_space must be 0 or more, not {min_free_space!r}")
        if (
            isinstance(dns_cache_size, bool)
            or not isinstance(dns_cache_size, int)
            or dns_cache_size < 0
        ):
            raise ConfigurationError(
                f"dns_cache_size must be 0 (no cache) or more answers, not {dns_cache_size!r}"
            )
        self.min_free_space, self._room = min_free_space, True
        self._room_lock = threading.Lock()
        self.spool = spool
        self._store: MailStore = spool._store
        self._transitions: Transitions = spool._transitions
        self.share = self._store.share = share
        self._store.readiness.settle = pickup_settle.total_seconds()
        self._store.readiness.open_warning = pickup_open_warning.total_seconds()
        self.router = router or Router()
        self.retry = retry or RetryPolicy.iis()
        self.local_retry = local_retry or (RetryPolicy.iis_local() if retry is None else retry)
        self.clock = clock or spool.clock
        fqdn, ndr_copy_to, masquerade = checked_names(
            fqdn=fqdn, ndr_copy_to=ndr_copy_to, masquerade_domain=masquerade_domain
        )
        self.fqdn = fqdn or machine_name()
        self.limits = limits
        self.helo_name = helo_name or self.fqdn
        self.transport = transport or SmtpTransport(helo_name=self.helo_name)
        self.rescan_interval = rescan_interval
        self._schedule = Schedule()
        self._emit: Callable[[MailEvent], None] = spool._emit
        self._started = self.clock()
        self._counters = Counters()
        self._mail_log: MailLog | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._intake = Intake(
            self._transitions,
            self.clock,
            PickupOptions(
                fqdn=self.fqdn,
                default_domain=self.router.default_domain,
                max_message_size=limits.max_message_size,
                dot_stuffed=pickup_dot_stuffed,
            ),
            emit=self._emit,
            emit_all=spool._emit_all,
        )
        self._names = host_resolver = host_resolver or DnsResolver(
            resolver=asking_for_ad(dns_resolver) if dane else dns_resolver,
            local_names=[self.fqdn],
            cache_size=dns_cache_size,
        )
        self.suppression = suppression_list(spool, suppression_days)
        self._delivery = Deliverer(
            transitions=self._transitions,
            router=self.router,
            transport=self.transport,
            clock=self.clock,
            max_message_size=limits.max_message_size,
            max_hop_count=limits.max_hop_count,
            resolver=host_resolver,
            masquerade=masquerade,
            concurrency=Concurrency(per_host=limits.max_connections_per_host),
            sts=mta_sts_policies(host_resolver, mta_sts, mta_sts_fetcher, self.clock),
            dane=dane_checks(host_resolver, dane),
            suppression=self.suppression,
            throttles=Throttles(
                throttle or ThrottleRules(max_connections=limits.max_connections_per_host)
            ),
        )
        self._attempts = Attempts(
            transitions=self._transitions,
            delivery=self._delivery,
            bounce=Bouncer(
                transitions=self._transitions,
                clock=self.clock,
                fqdn=self.fqdn,
                max_original_size=limits.max_dsn_original,
                copy_failures_to=ndr_copy_to,
                retry_until=self._retry_until,
            ),
            router=self.router,
            suppression=self.suppression,
            clock=self.clock,
            policy=self._policy,
            due_at=self._due_at,
            take_flushed=self._take_flushed,
            emit=self._emit,
            emit_all=spool._emit_all,
        )
        self._next_rescan: datetime | None = None
        self._signatures: dict[str, tuple[int, ...]] = {}
        # A plain flag, not a threading.Event: stop() runs in signal handlers, which must take no
        # lock the interrupted main thread may hold (an Event's clear() holds one).
        self._stop = False
        # Messages Spool.admit committed in this process (a listener's threads): the loop
        # schedules them at its next tick, and is woken for them rather than polling; a
        # complete Pickup file wakes it too, where inotify tells (store.wait_for_pickup).
        self._arrivals: deque[str] = deque()
        self._wakeup = Waker()
        self._handoff: Handoff | None = None
        self._helping = Helping(self.share)
        self._schedule_lock = threading.Lock()
        self._threads: DeliveryThreads | None = None
        self._observe(observers, log_days=log_days)
        self._attach()

    def _attach(self) -> None:
        """Become the spool's service, last in ``__init__``: told of what it admits."""
        self.spool.service = self
        self.spool._on_admit = self._arrived
        # What intake and a listener in this process queue, this service claims next: the
        # envelopes they wrote stand for the files it reads back (Transitions.written).
        self._transitions.remember_written(True)

    def _use_handoff(self, handoff: Handoff) -> None:
        """One worker of a group where some listen (``_service.handoff``), before it runs: a
        listening worker names its sessions' messages in the shares of the workers that take
        them and tells those; a taking worker's wake socket is its inbox."""
        if handoff.gives(self.share):
            self._handoff = handoff
            self._helping.never()  # its CPU is its sessions'
            self.spool._new_ids_in = handoff.takes
            # What it hands off another process claims: nothing to remember for that.
            self._transitions.remember_written(True, only=self.share.owns_id)
            self._store.exchange_spares(inbox=handoff.spare_inbox(self.share))
        else:
            self._wakeup = Waker(handoff.inbox(self.share))
            self._store.exchange_spares(give=handoff.pass_spare)

    def _observe(self, observers: Iterable[Observer], *, log_days: int) -> None:
        """Subscribe to the spool's events, last in ``__init__`` (nothing is left subscribed
        by a service that failed to start): the mail log first (the record people read), then
        the log records and the counters, then the embedder's observers."""
        if log_days < 0:
            raise ConfigurationError(f"log_days must be 0 (no mail log) or more, not {log_days!r}")
        wanted = list(observers)
        for given in wanted:
            if not callable(given):
                raise ConfigurationError(f"an observer is a callable of one event: {given!r}")
        chain: list[Observer] = []
        if log_days:
            self._mail_log = MailLog(self._store, days=log_days)
            chain.append(self._mail_log)
        chain += [LogObserver(), self._counters, *wanted]
        self._unsubscribe = [self.spool.subscribe(observer) for observer in chain]

    # -- the loop -------------------------------------------------------------------------------

    def run_once(self) -> Report:
        """Process Pickup and every due queued message once; report what moved where."""
        tally = Tally()
        now = self.clock()
        if self._next_rescan is None or now >= self._next_rescan:
            self._guard(tally, "recovering the spool", partial(self._rescan, tally))
        else:
            self._guard(tally, "reading operators' triggers", partial(self._triggers, tally))
        self._guard(tally, "renewing this process's lease", self._store.announce)
        self._take_arrivals()
        tick = Tick(
            pop_due=self._pop_due, helped=self._helped, submit=self._submit, due_now=self._due_now
        )
        # Pickup in batches, and what each batch queues is handed to the delivery threads at
        # once: delivery's waits (the network, fsync) overlap the next batch's intake. Files are
        # looked at as the batches need them, and the first batch is small: the first message
        # leaves after a few files are queued, not after a look at thousands (a drain).
        if self.room_for_mail():
            batch: list[str] = []
            count, budget, octets = _FIRST_PICKUP_BATCH, _FIRST_PICKUP_BATCH_BYTES, 0
            for name, size in self._ready_pickups(tally):
                batch.append(name)
                octets += size
                if len(batch) < count and octets < budget:
                    continue
                self._guard(tally, "picking up files", partial(self._pickup, batch, tally))
                tick.dispatch()
                batch, count, budget, octets = [], _PICKUP_BATCH, _PICKUP_BATCH_BYTES, 0
                if not self.room_for_mail():
                    break  # the rest stays in Pickup until there is room
            if batch:
                self._guard(tally, "picking up files", partial(self._pickup, batch, tally))
                tick.dispatch()
        # DSNs queued by this tick are due at once, so go on until nothing new is due.
        while tick.dispatch():
            tick.collect(tally)
        while self._helping.active and tick.help():
            tick.collect(tally)
            while tick.dispatch():
                tick.collect(tally)
        tick.finish()
        self._guard(tally, "telling other workers what they own", self._tell_owners)
        return tally.freeze()

    def _helped(self) -> list[str]:
        """The other shares' waiting messages to help with now (``_service.helping``); none
        once a pass attempted nothing."""
        if self._helping.over:
            return []
        try:
            return self._helping.candidates(self._store.queue_files())
        except StorageError as exc:
            log.warning("cannot list the Queue to help the other workers: %s", exc)
            return []

    def _tell_owners(self) -> None:
        self._helping.tell_owners(self._store.write_trigger)

    def _ready_pickups(self, tally: Tally) -> Iterator[tuple[str, int]]:
        """The Pickup files ready to take and their sizes, in turn
        (``MailStore.pickup_ready_in_turn``); an error while looking ends them, reported as any
        other."""
        entries = self._store.pickup_ready_in_turn()
        while True:
            try:
                entry = next(entries)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 (reported as _guard reports it)
                self._report(tally, "listing Pickup", exc)
                return
            yield entry

    def _arrived(self, queue_id: str) -> None:
        """``Spool.admit`` committed ``queue_id`` (from any thread): due at the next tick, here
        or, handed off, in the worker whose share it is in."""
        handoff = self._handoff
        if handoff is not None and not self.share.owns_id(queue_id) and handoff.send(queue_id):
            return
        self._arrivals.append(queue_id)
        self._wakeup.set()

    def wake(self) -> None:
        """End the loop's wait now (from any thread): an operator's order in this process."""
        self._wakeup.set()

    def _take_arrivals(self) -> None:
        now = self.clock()
        while self._arrivals:
            self._schedule.set(self._arrivals.popleft(), now)

    def next_due(self) -> datetime | None:
        """When the next queued message this service knows of is due, ``None`` when none is.

        A test that drives a fake clock sets it to this time and calls :meth:`run_once` again.
        """
        return self._schedule.next_due()

    def stats(self, *, gauges: bool = True) -> Stats:
        """Counters since this service was made, and gauges measured now (:class:`Stats`).

        Safe to call from any thread while the service runs (a metrics endpoint). The gauges
        look at the spool as it is, whoever changed it: one listing of the Queue and of Pickup,
        and a read of each waiting envelope the schedule does not hold (the held ones), so it
        costs about what a rescan's listing does; call it every few seconds, not per message.
        ``gauges=False`` lists and reads nothing and leaves ``queue``, ``held``, ``delivering``
        and ``pickup`` at 0: for a process of several on one MailRoot whose gauges another
        reports (every one would count the same files).
        """
        if not gauges:
            return Stats(
                started=self._started,
                **self._counters.snapshot(),
                connections=self._delivery.concurrency.active(),
                dead_hosts=len(self._delivery.dead.marks),
                failed_lookups=len(self._delivery.dead.lookups),
                **self._connection_counts(),
                **self._dns_cache_counts(),
            )
        files = self._store.queue_files()
        delivering = sum(1 for entry in files.values() if entry.claims)
        waiting = [queue_id for queue_id, e in files.items() if e.envelope and not e.claims]
        with self._schedule_lock:
            scheduled = self._schedule.ids()
        held = 0
        for queue_id in waiting:
            if queue_id in scheduled:
                continue
            try:
                held += read_due(self._transitions.envelope(queue_id))[1]
            except (FileNotFoundError, EnvelopeError, StorageError):
                continue  # claimed or finished meanwhile, or damaged or no file (not held)
        return Stats(
            started=self._started,
            **self._counters.snapshot(),
            queue=len(waiting) - held,
            held=held,
            delivering=delivering,
            pickup=len(self._store.pickup_names()),
            connections=self._delivery.concurrency.active(),
            dead_hosts=len(self._delivery.dead.marks),
            failed_lookups=len(self._delivery.dead.lookups),
            **self._connection_counts(),
            **self._dns_cache_counts(),
        )

    def _connection_counts(self) -> dict[str, int]:
        counts = getattr(self.transport, "connection_counts", None)
        if not callable(counts):
            return {}  # a transport that keeps no count (a test's)
        opened, reused = counts()
        return {"connections_opened": opened, "connections_reused": reused}

    def _dns_cache_counts(self) -> dict[str, int]:
        if not isinstance(self._names, DnsResolver):
            return {}  # a host_resolver of the caller's (StaticResolver): no cache to count
        hits, misses, entries = self._names.cache_counts()
        return {"dns_cache_hits": hits, "dns_cache_misses": misses, "dns_cache_entries": entries}

    def check_host_name(self, *, addresses: Iterable[str] = ()) -> HostNameCheck:
        """Whether ``helo_name`` resolves forward to addresses that resolve back to it (FCrDNS),
        asked through the service's DNS; each problem is logged as a warning. ``addresses``:
        the public addresses mail leaves from, when known. The command line runs it when the
        service starts (``spoolmail check``); see :func:`spoolmail.check_host_name`."""
        names = self._names if isinstance(self._names, DnsResolver) else None
        check = check_host_name(self.helo_name, dns_resolver=names, addresses=addresses)
        warn_about_host_name(check, helo_name=self.helo_name)
        return check

    def room_for_mail(self) -> bool:
        """Whether there is room to take new mail: at least ``min_free_space`` bytes free on the
        MailRoot's filesystem, as Postfix's ``queue_minfree`` asks of its queue's.

        Intake asks before each Pickup batch; the SMTP listener is to ask before MAIL and answer
        ``452 4.3.1`` (RFC 3463: mail system full) when there is none. Filesystems without a
        free-space figure (MemoryFS, plugins) always have room. A change is logged once: a
        warning when space runs low, a notice when it is back; not at every look.
        """
        if self.min_free_space <= 0:
            return True
        free = self._store.free_space()
        room = free is None or free >= self.min_free_space
        with self._room_lock:
            changed, self._room = room is not self._room, room
        if changed and not room:
            log.warning(
                "only %d bytes free on the MailRoot's filesystem, less than min_free_space "
                "(%d): Pickup files are left where they are until there is room",
                free,
                self.min_free_space,
            )
        elif changed:
            log.info(
                "%s bytes free on the MailRoot's filesystem again: taking Pickup files",
                "unknown" if free is None else free,
            )
        return room

    def _pop_due(self) -> list[str]:
        with self._schedule_lock:
            return self._schedule.pop_due(self.clock())

    def _due_at(self, queue_id: str, when: datetime) -> None:
        if self._helping.hands_back(queue_id):
            return  # another share's: its owner is told (run_once)
        with self._schedule_lock:
            self._schedule.set(queue_id, when)

    def _take_flushed(self, queue_id: str) -> bool:
        with self._schedule_lock:
            return self._schedule.take_flushed(queue_id)

    def _due_now(self, queue_id: str) -> None:
        self._due_at(queue_id, self.clock())

    def _submit(self, batch: Batch[Tally], queue_id: str, helped: bool = False) -> None:
        if self._threads is None:
            self._threads = DeliveryThreads(self.limits.max_connections, name="spoolmail")
        self._threads.submit(
            batch, self._attempt_helped if helped else self._attempt_alone, queue_id
        )

    def _attempt_alone(self, queue_id: str) -> Tally:
        tally = Tally()
        self._guard(
            tally, f"delivering {queue_id}", partial(self._attempts.attempt, queue_id, tally)
        )
        return tally

    def _attempt_helped(self, queue_id: str) -> Tally:
        """Another share's message, flushed: attempted unless an attempt rewrote its envelope
        since the flush (or it is gone); its owner may claim it first."""
        tally = Tally()
        if self._helping.untouched(self._transitions.envelope_signature(queue_id)):
            attempt = partial(self._attempts.attempt, queue_id, tally, flushed=True)
            self._guard(tally, f"delivering {queue_id}", attempt)
        return tally

    def run_forever(
        self,
        *,
        poll_interval: float = 1.0,
        on_report: Callable[[Report], object] | None = None,
    ) -> None:
        """Run until :meth:`stop`: a tick, then wait for the next due message or the poll interval.

        ``on_report`` sees every tick's report (the command line logs them). A :meth:`stop`
        that came before the loop began (a SIGTERM right after start-up) ends it after one tick.
        """
        wake = self._wakeup.open()  # before the first look at _stop: no stop() is missed
        try:
            while True:
                report = self.run_once()
                if on_report is not None:
                    on_report(report)
                if self._stopping():
                    break
                wait = poll_interval
                next_due = self._schedule.next_due()
                if next_due is not None:
                    wait = max(0.0, min(wait, (next_due - self.clock()).total_seconds()))
                self._store.wait_for_pickup(wait, wake=wake)
                self._arrivals.extend(received(self._wakeup.clear(), self.share))
                if self._stopping():
                    break
        finally:
            self._stop = False  # the stop is spent: a later run_forever runs again
            self._wakeup.close()

    def rescan(self) -> Report:
        """Recover and rescan the Queue now, as every tick does each ``rescan_interval``.

        For changes made behind the service's back (files moved by hand, another process).
        """
        tally = Tally()
        self._guard(tally, "recovering the spool", partial(self._rescan, tally))
        return tally.freeze()

    def _stopping(self) -> bool:
        # A call, not the attribute: another thread or a signal handler sets it meanwhile.
        return self._stop

    def stop(self) -> None:
        """Make :meth:`run_forever` return after the current tick."""
        self._stop = True
        self._wakeup.set()

    def close(self) -> None:
        """Close kept-open connections and let the spool serve another service."""
        if self._threads is not None:
            self._threads.close()
            self._threads = None
        with self._schedule_lock:
            left = self._schedule.flushed()
        if left:
            # Flushed in memory, not attempted yet: the next service flushes them.
            try:
                self._store.write_flush_trigger(ids=left)
            except StorageError as exc:
                log.warning("%d flushed message(s) keep their retry times: %s", len(left), exc)
        self.transport.close()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._mail_log is not None:
            self._mail_log.close()
        if self.spool.service is self:
            self.spool.service = None
            self.spool._on_admit = None
            self.spool._new_ids_in = None
            self._store.exchange_spares()
            self._transitions.remember_written(False)
            # What arrived after the last tick is on disk: the next service's rescan finds it.

    def _guard(self, tally: Tally, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 (reported, and the loop goes on)
            self._report(tally, what, exc)

    @staticmethod
    def _report(tally: Tally, what: str, exc: Exception) -> None:
        """Log an error that stopped ``what`` (a traceback for a bug) and count it."""
        if isinstance(exc, SpoolmailError):
            log.error("error while %s: %s", what, exc)  # expected: no traceback
        else:
            log.error("error while %s", what, exc_info=exc)
        tally.errors.append(f"{what}: {exc}")

    def _policy(self, recipient: Recipient) -> RetryPolicy:
        if self.router.route(recipient.address).kind is RouteKind.LOCAL:
            return self.local_retry
        return self.retry

    def _retry_until(self, envelope: Envelope) -> datetime | None:
        """When the last pending recipient of ``envelope`` will be given up (Will-Retry-Until)."""
        ends = [self._policy(r).expires_at(arrival=envelope.retry_base) for r in envelope.pending]
        known = [end for end in ends if end is not None]
        return max(known) if known else None

    # -- recovery and the schedule ------------------------------------------------------------

    def _rescan(self, tally: Tally, triggers: Triggers | None = None) -> None:
        """Finish what dead processes left half done, then bring the schedule up to date.

        Recovery is the store's (``_store.recovery``): a Pickup claim is taken in again (queued
        once: the id is kept), a delivery claim goes back to the Queue, a finish is completed, a
        half-written file is deleted. What it did is reported here.
        """
        self._next_rescan = self.clock() + self.rescan_interval
        self._store.look_everywhere()  # this tick lists Pickup and the triggers, events or not
        # A rescan sees everything the triggers could ask for; what they flushed still has its
        # dead-host notes forgotten (below), whichever of the two read the trigger.
        self._store.announce()
        if triggers is None:
            triggers = self._store.take_triggers()
        done = recover(
            self._transitions,
            take_in=partial(self._take_in, tally=tally),
            owns=None if self.share.whole else self.share.owns_id,
        )
        tally.badmail.extend(done.badmail)  # what was taken in again, _intake tallied
        tally.errors.extend(f"recovering the spool: {error}" for error in done.errors)
        orphan = orphan_report()
        for queue_id in done.badmail:
            self._emit(
                ToBadMail(
                    queue_id=queue_id, time=self.clock(), status=orphan.status, reason=orphan.reason
                )
            )
        if done.returned or done.finished:
            log.info(
                "recovery: %d claim(s) of dead processes returned to the Queue, %d finish(es) "
                "completed",
                len(done.returned),
                len(done.finished),
            )
        self._reschedule(done.files)
        flushed = triggers.ids
        self._forget_dead_hosts(self._schedule.ids() if flushed is None else flushed)
        self._flush(triggers.flushes)
        if self.suppression is not None:
            self.suppression.prune()  # expired entries leave the file (they count no more)

    def _reschedule(self, files: Mapping[str, QueueFiles]) -> None:
        """Bring the schedule in line with the Queue, re-reading only envelopes that changed.

        An envelope is rewritten by renaming a new file over it, so an unchanged (inode, mtime,
        size) means an unchanged envelope: 100,000 stats, not 100,000 reads and parses.
        """
        known: dict[str, tuple[int, ...]] = {}
        owned = self.share.owns_id
        for queue_id, entry in files.items():
            if not entry.envelope or not owned(queue_id):
                self._schedule.discard(queue_id)  # claimed (being delivered) or finishing
                continue
            signature = self._transitions.envelope_signature(queue_id)
            # Read again if not scheduled: held, or an attempt failed before it could schedule
            # it again (a claim returned by recovery keeps its envelope's inode and time).
            unchanged = (
                signature is not None
                and self._signatures.get(queue_id) == signature
                and queue_id in self._schedule
            )
            if signature is not None:
                known[queue_id] = signature
            if not unchanged:
                self._schedule_from_disk(queue_id)
        for queue_id in self._schedule.ids().difference(files):
            self._schedule.discard(queue_id)
        self._signatures = known

    def _schedule_from_disk(self, queue_id: str) -> None:
        try:
            due, held = read_due(self._transitions.envelope(queue_id))
        except FileNotFoundError:
            self._schedule.discard(queue_id)  # claimed or finished meanwhile
            return
        except (EnvelopeError, StorageError):
            # The attempt moves it aside with the reason (damaged, or no regular file) or
            # reports the read error; one such file must not stop the scheduling of the rest.
            self._schedule.set(queue_id, self.clock())
            return
        if held:
            self._schedule.discard(queue_id)
        else:
            self._schedule.set(queue_id, due)

    def _triggers(self, tally: Tally) -> None:
        """Look again at what operators changed (``Spool.hold``, ``flush``, ...)."""
        triggers = self._store.take_triggers()
        wanted = triggers.ids
        if wanted is None:
            self._rescan(tally, triggers)
            return
        wanted = {queue_id for queue_id in wanted if self.share.owns_id(queue_id)}
        for queue_id in wanted:
            self._schedule_from_disk(queue_id)
        self._forget_dead_hosts(wanted)
        self._flush(triggers.flushes)

    def _flush(self, orders: Sequence[FlushOrder]) -> None:
        """Apply flushes (``Spool.flush_queue``) in memory: each waiting message they choose is
        due now, and its attempt commits the flush with its outcome; the dead-host notes of
        their destinations are forgotten, as :meth:`_forget_dead_hosts` does.

        Only messages in the schedule are taken: held ones are not in it, nor are those being
        attempted (just tried, they are not tried again). A flush of everything reads no
        envelope and forgets every dead-host note; a filtered one reads the waiting envelopes.
        """
        if not orders:
            return
        with self._schedule_lock:
            scheduled = self._schedule.ids()
        chosen: set[str] = set()
        hops: set[Hop] = set()
        everything = False
        for order in orders:
            ids = scheduled if order.ids is None else scheduled & order.ids
            if order.everything:
                chosen |= ids
                everything = True
                self._helping.start(order.issued)
                continue
            try:
                choose = flush_chooser(order.sender, order.domain)
            except ConfigurationError as exc:  # a trigger not written by Spool.flush_queue
                log.warning("flush order ignored, its filter matches no message: %s", exc)
                continue
            for queue_id in sorted(ids - chosen):
                try:
                    envelope = decode_envelope(self._transitions.envelope(queue_id))
                except (FileNotFoundError, EnvelopeError, StorageError):
                    continue  # being delivered, gone, or moved aside (or reported) by its attempt
                if envelope.held or not choose(envelope):
                    continue
                chosen.add(queue_id)
                for recipient in envelope.pending:
                    hops.update(self.router.route(recipient.address).hops)
        with self._schedule_lock:
            count = self._schedule.flush(chosen, self.clock())  # those not popped meanwhile
        dead = self._delivery.dead
        forgotten = list(dict(dead.marks)) if everything else dead.forget(hops)
        for target in forgotten:
            dead.clear(target)
            log.info("%s: dead-host note forgotten, the operator flushed its mail", target)
        for hop in dead.forget_lookups(None if everything else hops):
            log.info("%s: failed-lookup note forgotten, the operator flushed its mail", hop)
        log.info("flush: %d waiting message(s) due now", count)

    def _forget_dead_hosts(self, queue_ids: Iterable[str]) -> None:
        """Forget the dead-host notes of messages an operator made due now (flush, release).

        As Postfix's ``postqueue -f``: the flush is meant to try the destination now, so a note
        that would pass the message over is dropped; if the host is still silent, that attempt
        is made, counted and noted again. Messages not due now (held, not flushed) are left.
        """
        now = self.clock()
        hops: set[Hop] = set()
        for queue_id in sorted(queue_ids):
            try:
                envelope = decode_envelope(self._transitions.envelope(queue_id))
            except (FileNotFoundError, EnvelopeError, StorageError):
                continue  # being delivered, gone, or moved aside (or reported) by its attempt
            if envelope.held or envelope.next_attempt > now:
                continue
            for recipient in envelope.pending:
                hops.update(self.router.route(recipient.address).hops)
        for target in self._delivery.dead.forget(hops):
            log.info("%s: dead-host note forgotten, the operator flushed its mail", target)
        for hop in self._delivery.dead.forget_lookups(hops):
            log.info("%s: failed-lookup note forgotten, the operator flushed its mail", hop)

    # -- Pickup ----------------------------------------------------------------------------------

    def _pickup(self, names: Sequence[str], tally: Tally) -> None:
        """Take a batch of Pickup files in: each is queued or in BadMail, and what was queued
        becomes durable with one fsync of the Queue before any of it is due."""
        staged: list[tuple[PickupClaim, Envelope]] = []

        def stage(claim: PickupClaim) -> None:
            envelope = self._intake.stage(claim)
            if envelope is None:
                tally.badmail.append(claim.id)
            else:
                staged.append((claim, envelope))

        for claim in self._store.claim_pickups(names):
            self._guard(tally, f"picking up {claim.name!r}", partial(stage, claim))
        if not staged:
            return
        # Should the commit fail, the claims stay in SortTemp and the next recovery finishes
        # what is queued and takes the rest in again; until then nothing of it is scheduled.
        self._intake.commit(staged)
        for _, envelope in staged:
            self._due_at(envelope.id, envelope.next_attempt)
            tally.picked_up.append(envelope.id)

    def _take_in(self, claim: PickupClaim, tally: Tally) -> None:
        envelope = self._intake.process(claim)
        if envelope is None:
            tally.badmail.append(claim.id)
        else:
            self._due_at(envelope.id, envelope.next_attempt)
            tally.picked_up.append(envelope.id)
