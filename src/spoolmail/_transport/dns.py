"""The DNS resolver: a routing hop's MX and address lookups with dnspython, as targets or a reply.

:class:`DnsResolver` implements the :class:`~spoolmail._transport.base.HostResolver` seam. It asks
only the ``dns.resolver.Resolver`` it is given (the system's by default, created at the first
lookup), always for absolute names with ``search=False``, and relies on that resolver's own
``timeout`` and ``lifetime``, within a budget for each hop's lookups in all (:data:`HOP_BUDGET`).
It writes every query and its answer into the
:class:`~spoolmail._core.transcript.Transcript`, and turns every dnspython exception into a
:class:`~spoolmail._core.reply.Reply` (docs/delivery.md): a name that does not exist is
permanent, a server that fails or does not answer is temporary, 4.4.3. The MX ordering rules
(preferences, shuffling, null MX, dropping this host) are the pure ``spoolmail._core.mx``; this
module only asks the questions. It never connects to a mail host; what it keeps is the resolver
it creates and the answers it got, each for its TTL (:class:`_AnswerCache`: at most
:data:`CACHE_SIZE`, never a failure). A TLSA answer dnspython refuses whole for one malformed
record is asked for once more and read here, record by record (``DnsResolver._ask_again``).
dnspython is imported at the first lookup: a service whose mail all goes to a smart host given
by address, or to Drop, never pays for it (about 50 ms of CPU at start).
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import random
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from spoolmail._core.mx import host_key, no_exchange, order_exchanges
from spoolmail._core.reply import Reply
from spoolmail._core.routing import Hop, HopKind, Target
from spoolmail._core.transcript import Transcript
from spoolmail._transport.base import Resolution

if TYPE_CHECKING:
    import dns.exception
    import dns.message
    import dns.name
    import dns.resolver

__all__ = [
    "CACHE_SIZE",
    "HOP_BUDGET",
    "MAX_CACHED_OCTETS",
    "MAX_CACHED_RECORDS",
    "MAX_CACHE_TTL",
    "MAX_EXCHANGES",
    "MAX_NEGATIVE_TTL",
    "MAX_TARGETS",
    "DnsResolver",
    "Lookup",
]

MAX_EXCHANGES = 10
"""Exchangers looked up per MX hop, best first. Each costs two lookups, each up to the resolver's
lifetime: without a cap a domain listing hundreds of MX hosts that time out would hold a delivery
for hours. RFC 5321 section 5.1 allows "a configurable limit on the number of alternate addresses"
as long as at least two are tried; Postfix tries 5 addresses (``smtp_mx_address_limit``), Exim 5
hosts (``hosts_max_try``)."""

MAX_TARGETS = 20
"""Addresses returned per hop: two per exchanger of the first ten, for dual-stack hosts."""

HOP_BUDGET = 30.0
"""Seconds one hop's lookups may take in all (default): the MX lookup and the exchangers'
addresses, each also bounded by the resolver's own ``lifetime``. Without it, ten exchangers
whose name servers are silent held a delivery thread for 21 lifetimes (105 s at dnspython's
5 s). A lookup is given no more than what is left; exchangers not looked up when it is spent
make the hop's verdict temporary, as a timeout does."""

CACHE_SIZE = 10_000
"""Answers a :class:`DnsResolver` keeps at most (default), the least recently used dropped first:
10,000 messages to one domain cost one MX lookup per TTL, not 10,000, and a run that meets
many domains still keeps a bounded number of answers (a few hundred bytes each)."""

MAX_CACHE_TTL = 86_400
"""Seconds an answer is kept at most, whatever its TTL: a day, as Unbound's ``cache-max-ttl``."""

MAX_CACHED_RECORDS = 20
"""Records an answer may hold to be kept (as many as :data:`MAX_TARGETS` addresses). A name's
owner chooses its answers: kept whatever their size, ten thousand names of up to 64 KiB of
records each would be hundreds of megabytes. A bigger answer is used, and asked again."""

MAX_CACHED_OCTETS = 2_048
"""The most octets of record data an answer may hold to be kept (a long TXT record, many
MX names): with :data:`MAX_CACHED_RECORDS`, a full cache stays within some tens of MiB."""

MAX_NEGATIVE_TTL = 3_600
"""Seconds a name that does not exist (NXDOMAIN) or has no record of a type (NODATA) is
remembered at most: RFC 2308 section 5 advises one to three hours; Unbound's
``cache-max-negative-ttl`` is an hour."""


class _Miss(enum.Enum):
    """Why a query gave no records."""

    NXDOMAIN = "nxdomain"
    """The name does not exist: no record of any type (RFC 8020)."""
    NODATA = "nodata"
    """The name exists without records of that type."""
    YXDOMAIN = "yxdomain"
    """A DNAME substitution made the name too long (RFC 6672)."""
    FAILED = "failed"
    """No answer: the servers failed (SERVFAIL, REFUSED), timed out or were not configured."""


@attrs.frozen
class _Failure:
    miss: _Miss
    detail: str
    unread: tuple[str, ...] = ()
    """The servers (``Do53:127.0.0.1@53``) that may have sent an answer dnspython would not
    read: those whose answer it refused (over TCP), or every server asked when the lookup timed
    out (over UDP it drops an answer it cannot read and waits for another, until it gives up)."""
    authenticated: bool = False
    """The AD bit of an NXDOMAIN or NODATA answer: the denial is DNSSEC-validated (DANE reads
    it for a domain without MX records, RFC 7672 section 2.2.2)."""


@attrs.frozen
class _Records:
    """What a lookup reads of an answer, and all the cache keeps of one (not the whole message):
    its records (dnspython rdata, in the answer's order) and its AD bit."""

    rdata: tuple[Any, ...]
    authenticated: bool = False
    canonical: str = ""
    """The name the records belong to when the name asked is an alias: where its CNAME chain,
    which dnspython follows, ends (lower case, no final dot); empty when they are the name's
    own. Kept with the answer, so a cached answer tells DANE the same TLSA base domain
    (RFC 7672 section 2.2.2) as a fresh one."""

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rdata)

    def small(self) -> bool:
        """Whether the answer is small enough to keep (:data:`MAX_CACHED_RECORDS`,
        :data:`MAX_CACHED_OCTETS`)."""
        if len(self.rdata) > MAX_CACHED_RECORDS:
            return False
        return sum(len(r.to_wire()) for r in self.rdata) <= MAX_CACHED_OCTETS


_Key = tuple["dns.name.Name", str, bool]
"""A cached answer's question: the name, the type, and whether the query asked for the AD bit."""


class _AnswerCache:
    """Answers kept for their TTL, in seconds of ``monotonic``; ``size`` at most, the least
    recently used dropped first. Thread-safe.

    Only answers are kept: records, and NXDOMAIN or NODATA for the TTL their SOA gives (RFC 2308
    section 5; one without an SOA is not kept). A failure (SERVFAIL, REFUSED, a timeout, a
    truncated answer) never is: the next lookup asks again, and holding back the domain's other
    mail meanwhile is the failed-lookup notes' job (``_service.destinations``). A TTL of 0 means
    the record "can only be used for the transaction in progress" (RFC 1035 section 3.2.1).
    """

    def __init__(self, size: int, monotonic: Callable[[], float]) -> None:
        self._size = size
        self._monotonic = monotonic
        self._entries: OrderedDict[_Key, tuple[float, _Records | _Failure]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _Key) -> tuple[_Records | _Failure, float] | None:
        """The answer kept for ``key`` and the seconds it has left, or ``None``; counted as a
        hit or a miss (:meth:`counts`)."""
        now = self._monotonic()
        # A miss takes the lock too, to be counted: beside the question it sends next (a round
        # trip to the server), that costs nothing.
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now >= entry[0]:
                del self._entries[key]
                entry = None
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            self._entries.move_to_end(key)
        expires, found = entry
        return found, expires - now

    def counts(self) -> tuple[int, int, int]:
        """Hits and misses since the cache was made, and the answers it keeps now."""
        with self._lock:
            return self._hits, self._misses, len(self._entries)

    def put(self, key: _Key, found: _Records | _Failure, ttl: float) -> None:
        """Keep ``found`` for ``ttl`` seconds; a TTL of 0 (or less) is not kept, nor an answer
        over :data:`MAX_CACHED_RECORDS` records or :data:`MAX_CACHED_OCTETS` octets."""
        if ttl <= 0 or (isinstance(found, _Records) and not found.small()):
            return
        expires = self._monotonic() + ttl
        with self._lock:
            self._entries[key] = (expires, found)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


@attrs.frozen
class Lookup:
    """One query's outcome, for lookups other than routing (MTA-STS, DANE, FCrDNS).

    ``records`` are the answer's records as text (a TXT record's strings joined, RFC 7208
    section 3.3 and RFC 8461 section 3.1 read them so); ``missing`` says the name or the type
    does not exist (NXDOMAIN, NODATA): an answer, not a failure; ``failure`` says why there
    was no answer (SERVFAIL, timeout); ``authenticated`` is the AD bit of the answer (RFC 4035
    section 3.2.3: the resolver validated it with DNSSEC; worth only as much as the path to a
    resolver one trusts).
    """

    records: tuple[str, ...] = ()
    missing: bool = False
    failure: str | None = None
    authenticated: bool = False
    canonical: str = ""
    """Where the name's CNAME chain led, when it is an alias (dnspython follows CNAMEs): the
    name that owns ``records``, lower case without the final dot; empty when the records are
    the name's own. With ``authenticated``, every link of the chain was validated too (the AD
    bit covers the whole answer, RFC 4035 section 3.2.3): DANE's TLSA base domain may then be
    this name (RFC 7672 section 2.2.2, RFC 7671 section 7)."""


@attrs.frozen
class _Addresses:
    """One host's addresses, IPv6 and IPv4 interleaved, or why it has none."""

    addresses: tuple[str, ...] = ()
    failure: Reply | None = None


class DnsResolver:
    """Resolves routing hops with dnspython: ``DnsResolver(resolver=dns.resolver.Resolver())``.

    - ``HopKind.ADDRESS``: the address itself, no lookup.
    - ``HopKind.HOST``: the host's AAAA and A records, a target for each address.
    - ``HopKind.MX``: the domain's MX records ordered by ``spoolmail._core.mx.order_exchanges``
      (or the domain itself when it has none, the implicit MX), then each exchanger's addresses;
      at most :data:`MAX_EXCHANGES` exchangers and :data:`MAX_TARGETS` targets.

    Each host's addresses alternate between IPv6 and IPv4, IPv6 first (RFC 8305 section 4,
    following RFC 6724's preference for IPv6), so a host whose IPv6 path is broken costs one
    failed connection before its IPv4 address is tried, not all of them. An address already
    listed under a better exchanger is not listed again.

    ``resolver`` is the ``dns.resolver.Resolver`` to ask (default: the system's, created at the
    first lookup); ``local_names`` are the names this host goes by (ASCII), dropped from MX lists
    with every worse exchanger (RFC 5321 section 5.1); ``rng`` shuffles exchangers of equal
    preference (default: a ``random.Random`` of its own); ``budget`` bounds the seconds one
    hop's lookups take in all (:data:`HOP_BUDGET`), read from ``monotonic``.

    Answers are kept for their TTL (at most :data:`MAX_CACHE_TTL`; NXDOMAIN and NODATA for
    their SOA's, at most :data:`MAX_NEGATIVE_TTL`), ``cache_size`` of them at most
    (:data:`CACHE_SIZE`; 0 keeps none), timed by ``monotonic``; never a failure, nor a TTL
    of 0. A kept answer keeps its AD bit (a denial's too) and the name its CNAME chain led
    to, and answers to queries that asked for AD (DANE's, ``MailService(dane=True)``) are kept
    apart from those to queries that did not.
    :meth:`cache_counts` tells the cache's hits, misses and size (``MailService.stats()``).
    """

    def __init__(
        self,
        *,
        resolver: dns.resolver.Resolver | None = None,
        local_names: Collection[str] = (),
        rng: random.Random | None = None,
        budget: float = HOP_BUDGET,
        monotonic: Callable[[], float] = time.monotonic,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        if isinstance(local_names, str):
            local_names = (local_names,)
        if not budget > 0:
            raise ValueError(f"budget must be a positive number of seconds, not {budget!r}")
        # A bool is an int to isinstance: True would have been a cache of one answer.
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be 0 or more answers, not {cache_size!r}")
        self._cache = _AnswerCache(cache_size, monotonic) if cache_size else None
        self._resolver = resolver
        self._local_names = tuple(local_names)
        self._rng = rng if rng is not None else random.Random()
        self._budget = budget
        self._monotonic = monotonic
        self._lock = threading.Lock()

    def resolve(self, hop: Hop, transcript: Transcript) -> Resolution:
        """The targets for ``hop`` in the order to try them, or the reply saying why none;
        its lookups take at most the budget in all."""
        if hop.kind is HopKind.ADDRESS:
            return Resolution((_literal(hop, hop.name),))
        deadline = self._monotonic() + self._budget
        if hop.kind is HopKind.HOST:
            return self._resolve_host(hop, transcript, deadline)
        return self._resolve_mx(hop, transcript, deadline)

    def lookup(
        self, name: str, rdtype: str, transcript: Transcript, *, deadline: float | None = None
    ) -> Lookup:
        """The ``rdtype`` records of ``name`` (``TXT``, ``TLSA``, ``PTR``, ``A``...), noted in
        the transcript; ``PTR`` takes an address and asks its reverse name. With ``deadline``
        (``monotonic``'s time), asked only with the time left before it: a budget shared by
        several lookups (DANE's of one domain)."""
        import dns.exception  # noqa: PLC0415 (dnspython at the first lookup, see above)
        import dns.reversename  # noqa: PLC0415

        if rdtype == "PTR":
            try:
                query = dns.reversename.from_address(name)
            except (dns.exception.DNSException, ValueError):
                return Lookup(failure=f"{name!r} is not an address")
        else:
            found = _dns_name(host_key(name))
            if found is None:
                return Lookup(failure=f"{name!r} is not a domain name")
            query = found
        answer = self._query(query, rdtype, transcript, deadline)
        if isinstance(answer, _Failure):
            if answer.miss in (_Miss.NXDOMAIN, _Miss.NODATA):
                return Lookup(missing=True, authenticated=answer.authenticated)
            return Lookup(failure=answer.detail)
        if rdtype == "TXT":
            texts = tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer)
        else:
            texts = tuple(rdata.to_text() for rdata in answer)
        return Lookup(texts, authenticated=answer.authenticated, canonical=answer.canonical)

    def cache_counts(self) -> tuple[int, int, int]:
        """The answer cache's hits (lookups answered from it) and misses (lookups it had no
        answer for, which go to the server) since this resolver was made, and the answers it
        keeps now; ``(0, 0, 0)`` with ``cache_size=0``. Safe from any thread."""
        return (0, 0, 0) if self._cache is None else self._cache.counts()

    def addresses(self, host: str, transcript: Transcript) -> tuple[str, ...] | Reply:
        """The addresses of ``host`` (IPv6 and IPv4 interleaved), or why it has none."""
        found = self._addresses(host_key(host), transcript)
        return found.failure if found.failure is not None else found.addresses

    def _resolve_host(self, hop: Hop, transcript: Transcript, deadline: float) -> Resolution:
        if _is_address(hop.name):
            return Resolution((_literal(hop, hop.name),))
        name = host_key(hop.name)
        found = self._addresses(name, transcript, deadline)
        if found.failure is not None:
            return Resolution(reply=found.failure)
        return Resolution(tuple(_target(hop, name, a) for a in found.addresses[:MAX_TARGETS]))

    def _resolve_mx(self, hop: Hop, transcript: Transcript, deadline: float) -> Resolution:
        domain = host_key(hop.name)
        if domain.startswith("["):
            # RFC 5321 section 5.1: a domain that is an address literal is used as it is.
            literal = _address_literal(domain)
            if literal is None:
                text = f"{hop.name!r} is not an address literal"
                return Resolution(reply=Reply(550, "5.1.2", text))
            return Resolution((_literal(hop, literal),))
        records = self._mx_records(domain, transcript, deadline)
        if isinstance(records, Reply):
            return Resolution(reply=records)
        ordered = order_exchanges(domain, records, local_names=self._local_names, rng=self._rng)
        if isinstance(ordered, Reply):
            transcript.note(f"MX {domain}: {ordered}")
            return Resolution(reply=ordered)
        if len(ordered) > MAX_EXCHANGES:
            transcript.note(
                f"MX {domain}: {len(ordered)} exchangers, trying the first {MAX_EXCHANGES}"
            )
            ordered = ordered[:MAX_EXCHANGES]
        if records != [(0, domain)]:
            transcript.note(f"MX {domain}: trying {', '.join(ordered)}")
        return self._exchange_targets(hop, domain, ordered, transcript, deadline)

    def _mx_records(
        self, domain: str, transcript: Transcript, deadline: float
    ) -> list[tuple[int, str]] | Reply:
        """The MX records of ``domain`` (the implicit MX when it has none), or why none."""
        name = _dns_name(domain)
        if name is None:
            return Reply(550, "5.1.2", f"{domain!r} is not a domain name")
        answer = self._query(name, "MX", transcript, deadline)
        if not isinstance(answer, _Failure):
            return [(rdata.preference, rdata.exchange.to_text()) for rdata in answer]
        if answer.miss is _Miss.NODATA:
            transcript.note(f"MX {domain}: implicit MX, {domain} at preference 0 (RFC 5321 5.1)")
            return [(0, domain)]
        if answer.miss is _Miss.NXDOMAIN:
            # No implicit MX for a name that does not exist: RFC 5321 section 5.1 applies it
            # only to a domain without MX records.
            return Reply(550, "5.1.2", f"domain {domain} does not exist (DNS NXDOMAIN)")
        if answer.miss is _Miss.YXDOMAIN:
            return Reply(550, "5.1.2", f"domain {domain} cannot be looked up: {answer.detail}")
        return Reply(451, "4.4.3", f"MX lookup for {domain} failed: {answer.detail}")

    def _exchange_targets(
        self,
        hop: Hop,
        domain: str,
        exchanges: Iterable[str],
        transcript: Transcript,
        deadline: float,
    ) -> Resolution:
        targets: list[Target] = []
        seen: set[str] = set()
        failures: list[Reply] = []
        for exchange in exchanges:
            if len(targets) >= MAX_TARGETS:
                transcript.note(f"MX {domain}: {MAX_TARGETS} addresses found, looking no further")
                break
            if self._monotonic() >= deadline:
                spent = self._spent(f"MX {domain}")
                transcript.note(f"{spent.text}, looking no further")
                failures.append(spent)  # the exchangers not looked up may answer later
                break
            found = self._addresses(exchange, transcript, deadline)
            if found.failure is not None:
                failures.append(found.failure)
                continue
            for address in found.addresses:
                if address in seen:
                    transcript.note(f"{exchange}: {address} is already listed, not repeated")
                elif len(targets) < MAX_TARGETS:
                    seen.add(address)
                    targets.append(_target(hop, exchange, address))
        if targets:
            return Resolution(tuple(targets))
        return Resolution(reply=no_exchange(domain, failures))

    def _spent(self, what: str) -> Reply:
        """The reply for lookups cut short by the budget: temporary, as a timeout is."""
        return Reply(
            451, "4.4.3", f"{what}: the lookups took {self._budget:g} s, the most a hop may"
        )

    def _addresses(
        self, host: str, transcript: Transcript, deadline: float | None = None
    ) -> _Addresses:
        """AAAA then A of ``host``: its addresses, or a reply saying why it has none."""
        name = _dns_name(host)
        if name is None:
            return _Addresses(failure=Reply(550, "5.4.4", f"{host!r} is not a host name"))
        found: dict[str, list[str]] = {}
        failed: dict[str, list[str]] = {}
        skipped: list[str] = []
        for rdtype in ("AAAA", "A"):
            answer = self._query(name, rdtype, transcript, deadline)
            if not isinstance(answer, _Failure):
                found[rdtype] = [rdata.address for rdata in answer if _unicast(rdata.address)]
                unusable = [rdata.address for rdata in answer if not _unicast(rdata.address)]
                if unusable:
                    # 0.0.0.0 and :: connect to this very host: a DNS answer must not turn a
                    # remote domain into a delivery to ourselves, nor to a multicast group.
                    transcript.note(f"{host}: {', '.join(unusable)}: not a host address, skipped")
                    skipped.extend(unusable)
            elif answer.miss is _Miss.NXDOMAIN:
                # The name has no records of any type (RFC 8020): asking for A is pointless.
                text = f"host {host} does not exist (DNS NXDOMAIN)"
                return _Addresses(failure=Reply(550, "5.4.4", text))
            elif answer.miss is not _Miss.NODATA:
                failed.setdefault(answer.detail, []).append(rdtype)
        interleaved = itertools.zip_longest(found.get("AAAA", ()), found.get("A", ()))
        addresses = tuple(a for pair in interleaved for a in pair if a is not None)
        if addresses:
            return _Addresses(addresses)
        if failed:
            # One family failed and the other has nothing: the failed one may answer later.
            why = "; ".join(f"{' and '.join(types)}: {detail}" for detail, types in failed.items())
            text = f"address lookup for {host} failed: {why}"
            return _Addresses(failure=Reply(451, "4.4.3", text))
        text = f"host {host} has no address (no AAAA or A record)"
        if skipped:
            text = f"host {host} has no usable address ({', '.join(skipped)})"
        return _Addresses(failure=Reply(550, "5.4.4", text))

    def _query(
        self,
        name: dns.name.Name,
        rdtype: str,
        transcript: Transcript,
        deadline: float | None = None,
    ) -> _Records | _Failure:
        """One lookup, noted in the transcript; dnspython exceptions become :class:`_Failure` s.
        An answer still kept is given without asking (whatever the budget left: it costs
        nothing); else, with ``deadline`` (:meth:`resolve`'s budget), the question is given no
        more than the time left."""
        import dns.exception  # noqa: PLC0415 (dnspython at the first lookup, see above)

        shown = name.to_text(omit_final_dot=True)
        try:
            resolver = self._dns()
        except dns.exception.DNSException as exc:
            # No resolver configuration (no /etc/resolv.conf): the DNS is broken now.
            failure = _Failure(_Miss.FAILED, f"{type(exc).__name__}: {exc}")
            transcript.note(f"{rdtype} {shown}: {failure.detail}")
            return failure
        key: _Key = (name, rdtype, _asks_for_ad(resolver))
        cache = self._cache
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                found, kept = hit
                text = _outcome_text(rdtype, found)
                transcript.note(f"{rdtype} {shown}: {text} (cached, {kept:.0f} s left)")
                return found
        left = None if deadline is None else deadline - self._monotonic()
        if left is not None and left <= 0:
            failure = _Failure(_Miss.FAILED, self._spent(f"{rdtype} {shown}").text)
            transcript.note(f"{rdtype} {shown}: not asked, {failure.detail}")
            return failure
        # The resolver's own lifetime, unless less than that is left.
        lifetime = left if left is not None and left < resolver.lifetime else None
        found, ttl = _ask(resolver, name, rdtype, lifetime)
        transcript.note(f"{rdtype} {shown}: {_outcome_text(rdtype, found)}")
        if isinstance(found, _Failure) and found.unread and rdtype in _READ_AGAIN:
            found, ttl = self._ask_again(
                resolver, name, rdtype, failure=found, transcript=transcript, deadline=deadline
            )
        if cache is not None:
            cache.put(key, found, ttl)
        return found

    def _ask_again(
        self,
        resolver: dns.resolver.Resolver,
        name: dns.name.Name,
        rdtype: str,
        *,
        failure: _Failure,
        transcript: Transcript,
        deadline: float | None,
    ) -> tuple[_Records | _Failure, float]:
        """Ask once more and read the answer here (:func:`_read_leniently`), for an answer
        dnspython may have refused whole for one record it would not read (RFC 6698 section
        4.1: such a record is unusable, the others still count). One question to the first
        server that may have sent it, over UDP (TCP when truncated), in one ``timeout`` of the
        resolver at most and within ``deadline``; the answer noted, and kept as any other."""
        shown = name.to_text(omit_final_dot=True)
        server = _do53_server(resolver, failure.unread)
        left = float(resolver.timeout)
        if deadline is not None:
            left = min(left, deadline - self._monotonic())
        why = None
        if server is None:
            why = "no server to ask over plain DNS (Do53)"
        elif resolver.keyname is not None:
            why = "the resolver signs its queries (TSIG), which an answer read here cannot check"
        elif left <= 0:
            why = self._spent(f"{rdtype} {shown}").text
        if why is not None or server is None:
            transcript.note(f"{rdtype} {shown}: not asked again to read the answer here: {why}")
            return failure, 0
        query = _same_query(resolver, name, rdtype)
        read = _exchange(query, server, left)
        if isinstance(read, str):
            found = attrs.evolve(
                failure, detail=f"{failure.detail}; asked again: {read}", unread=()
            )
            transcript.note(f"{rdtype} {shown}: asked {_shown(server)} again: {read}")
            return found, 0
        records, ttl, refused = read
        if refused:
            why = "; ".join(dict.fromkeys(record.why for record in refused))
            transcript.note(
                f"{rdtype} {shown}: asked {_shown(server)} again and read the answer here: "
                f"{len(refused)} malformed record{'s' if len(refused) > 1 else ''} dnspython "
                f"cannot read ({why}), passed on as they are: unusable, the others still "
                "count (RFC 6698 section 4.1)"
            )
        transcript.note(f"{rdtype} {shown}: {_answer_text(rdtype, records)}")
        return records, ttl

    def _dns(self) -> dns.resolver.Resolver:
        import dns.resolver  # noqa: PLC0415 (dnspython at the first lookup, see above)

        with self._lock:
            if self._resolver is None:
                self._resolver = dns.resolver.Resolver()
            return self._resolver


_TRUNCATED = "truncated answer (TC) over TCP"


def _ask(
    resolver: dns.resolver.Resolver, name: dns.name.Name, rdtype: str, lifetime: float | None
) -> tuple[_Records | _Failure, float]:
    """Ask ``resolver`` once: the answer (or why none) and how many seconds it may be kept
    (0: not at all; a failure never is)."""
    import dns.exception  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.flags  # noqa: PLC0415
    import dns.resolver  # noqa: PLC0415

    ttl: float = 0
    found: _Records | _Failure
    try:
        answer = resolver.resolve(name, rdtype, search=False, lifetime=lifetime)
    except dns.resolver.NXDOMAIN as exc:
        response = (exc.kwargs.get("responses") or {}).get(name)
        ad = _authenticated(response)
        found = _Failure(_Miss.NXDOMAIN, "does not exist (NXDOMAIN)", authenticated=ad)
        ttl = _negative_ttl(response)
    except dns.resolver.YXDOMAIN:
        found = _Failure(_Miss.YXDOMAIN, "name too long after DNAME substitution (YXDOMAIN)")
    except dns.resolver.NoAnswer as exc:
        response = exc.kwargs.get("response")
        if _truncated(response):
            found = _Failure(_Miss.FAILED, _TRUNCATED)
        else:
            ad = _authenticated(response)
            found = _Failure(_Miss.NODATA, f"no {rdtype} record (NODATA)", authenticated=ad)
            ttl = _negative_ttl(response)
    except dns.resolver.NoNameservers as exc:
        # SERVFAIL, REFUSED or a malformed answer from every server.
        detail = f"no nameserver answered ({_server_errors(exc)})"
        found = _Failure(_Miss.FAILED, detail, _asked(exc, dns.exception.FormError))
    except dns.exception.Timeout as exc:
        # LifetimeTimeout: the resolver's lifetime ran out (servers silent or unreachable, or
        # answering what dnspython drops unread over UDP).
        found = _Failure(_Miss.FAILED, _timeout_text(exc), _asked(exc, dns.exception.Timeout))
    except dns.exception.DNSException as exc:
        # Anything else dnspython raises (a bad name from a server): the DNS is broken now;
        # deferring lets it be fixed before the mail bounces.
        found = _Failure(_Miss.FAILED, f"{type(exc).__name__}: {exc}")
    else:
        if _truncated(answer.response):
            found = _Failure(_Miss.FAILED, _TRUNCATED)
        else:
            ad = bool(answer.response.flags & dns.flags.AD)
            canonical = _canonical(name, answer.canonical_name)
            found = _Records(tuple(answer), authenticated=ad, canonical=canonical)
            # The least TTL of the records and of the CNAMEs that led to them.
            ttl = min(float(answer.chaining_result.minimum_ttl), MAX_CACHE_TTL)
    return found, ttl


def _authenticated(response: object) -> bool:
    """The AD bit of ``response`` (a ``dns.message.Message``, or nothing)."""
    import dns.flags  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.message  # noqa: PLC0415

    return isinstance(response, dns.message.Message) and bool(response.flags & dns.flags.AD)


def _canonical(name: dns.name.Name, owner: dns.name.Name) -> str:
    """``owner`` (where the CNAME chain of ``name`` ended) as :attr:`_Records.canonical`:
    empty when it is ``name`` itself (no alias; names compare without regard to case)."""
    return "" if owner == name else host_key(owner.to_text())


def _negative_ttl(response: object) -> float:
    """How long an NXDOMAIN or NODATA ``response`` may be kept: its SOA's TTL or minimum,
    whichever is less (RFC 2308 section 5), and no more than the CNAMEs that led there; 0
    without an SOA, which RFC 2308 section 5 says not to keep (dnspython keeps it 300 s)."""
    import dns.message  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.rdatatype  # noqa: PLC0415

    if not isinstance(response, dns.message.Message):
        return 0
    soa = next((r for r in response.authority if r.rdtype == dns.rdatatype.SOA and r), None)
    if soa is None:
        return 0
    ttls = [soa.ttl, soa[0].minimum, MAX_NEGATIVE_TTL]
    ttls.extend(r.ttl for r in response.answer if r.rdtype == dns.rdatatype.CNAME)
    return float(min(ttls))


def _asks_for_ad(resolver: dns.resolver.Resolver) -> bool:
    """Whether ``resolver``'s queries ask a validating resolver to say it validated the answer:
    the AD bit (RFC 6840 section 5.7) or EDNS's DO (RFC 3225). Such a resolver sets AD only
    when asked: an answer to a query that did not ask is kept apart from one that did, so that a
    DANE lookup never reads the other's missing bit (nor the other way round)."""
    import dns.flags  # noqa: PLC0415 (dnspython at the first lookup, see above)

    flags = resolver.flags if resolver.flags is not None else dns.flags.RD
    return bool(flags & dns.flags.AD) or bool(resolver.ednsflags & dns.flags.DO)


def _outcome_text(rdtype: str, found: _Records | _Failure) -> str:
    return found.detail if isinstance(found, _Failure) else _answer_text(rdtype, found)


def _truncated(response: object) -> bool:
    """Whether ``response`` is cut short (TC set). dnspython asks again over TCP when a UDP
    answer has TC set, but takes a TCP answer with TC set as it is: records missing from it are
    no proof that there are none (no implicit MX, no bounce on a broken server's word)."""
    import dns.flags  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.message  # noqa: PLC0415

    return isinstance(response, dns.message.Message) and bool(response.flags & dns.flags.TC)


def _answer_text(rdtype: str, answer: _Records) -> str:
    """An answer as the transcript shows it: addresses in the order given; MX records by
    preference and name, without trailing dots (``10 mx1.example.test, 20 backup.example.test``)."""
    if rdtype == "MX":
        records = sorted((rdata.preference, host_key(rdata.exchange.to_text())) for rdata in answer)
        return ", ".join(f"{preference} {exchange or '.'}" for preference, exchange in records)
    return ", ".join(str(rdata) for rdata in answer)


def _server_errors(exc: dns.exception.DNSException) -> str:
    """What each server did, as dnspython recorded it, once each: ``Do53:127.0.0.1@53 REFUSED``."""
    errors = exc.kwargs.get("errors") or ()
    texts = dict.fromkeys(f"{error[0]} {error[3]}" for error in errors)
    return "; ".join(texts) or "no nameservers configured"


def _timeout_text(exc: dns.exception.Timeout) -> str:
    seconds = exc.kwargs.get("timeout")
    after = f" after {seconds:.1f} s" if isinstance(seconds, int | float) else ""
    servers = dict.fromkeys(str(error[0]) for error in exc.kwargs.get("errors") or ())
    asking = f" asking {', '.join(servers)}" if servers else ""
    return f"timed out{after}{asking}"


def _asked(exc: dns.exception.DNSException, kind: type[Exception]) -> tuple[str, ...]:
    """The servers dnspython recorded an error of ``kind`` for, in the order it asked them."""
    errors = exc.kwargs.get("errors") or ()
    return tuple(dict.fromkeys(str(error[0]) for error in errors if isinstance(error[3], kind)))


# --- an answer dnspython refuses whole for one record, read here ---------------------------

_READ_AGAIN = frozenset({"TLSA"})
"""The types whose failed lookups are asked again and read here (``DnsResolver._ask_again``).
dnspython refuses a whole message for one TLSA record whose data has the wrong length for its
matching type (2.9, ``tlsabase.py``: a SHA-256 digest of 31 octets), where RFC 6698 section 4.1
and RFC 7671 section 5 make that record unusable and the others still count, as Postfix, which
reads TLSA records itself, does. The other types asked here (MX, A, AAAA, TXT, PTR) are refused
only for broken framing (an A record of three octets, a TXT record without a string), which no
record-by-record reading makes sense of."""

_SET_ASIDE = 0xFFFE
"""The type a TLSA record dnspython refuses is given before the answer is read (private use,
RFC 6895 section 3.1): two octets changed in place, so every offset and compression pointer of
the message still holds, and dnspython reads the rest as strictly as ever."""

_MAX_ANSWER = 65_535
"""Octets of an answer read at most: what dnspython reads (a UDP datagram; TCP's length)."""


@attrs.frozen
class _Unreadable:
    """A TLSA record dnspython will not read, kept as its data (and why not), beside the records
    it reads: DANE judges it unusable (``spoolmail._core.dane.usable``: a digest of the wrong
    length; ``parse_tlsa``: fewer than three octets), as RFC 6698 section 4.1 has it."""

    data: bytes
    why: str

    def to_wire(self) -> bytes:
        return self.data

    def to_text(self) -> str:
        """The presentation form (RFC 6698 section 2.2), or RFC 3597 section 5's generic one
        when there are not even the three one-octet fields."""
        if len(self.data) < 3:
            return f"\\# {len(self.data)} {self.data.hex()}".rstrip()
        usage, selector, matching = self.data[:3]
        return f"{usage} {selector} {matching} {self.data[3:].hex()}".rstrip()

    def __str__(self) -> str:
        return self.to_text()


def _do53_server(resolver: dns.resolver.Resolver, unread: Iterable[str]) -> tuple[str, int] | None:
    """The address and port of the first of the ``unread`` servers that ``resolver`` asks over
    plain DNS (Do53), as dnspython names them (``Do53:127.0.0.1@53``); ``None`` if none is."""
    import dns.inet  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.nameserver  # noqa: PLC0415

    servers: dict[str, tuple[str, int]] = {}
    for server in resolver.nameservers:
        if isinstance(server, dns.nameserver.Do53Nameserver):
            address, port = server.address, server.port
        elif isinstance(server, str) and dns.inet.is_address(server):
            address, port = server, resolver.nameserver_ports.get(server, resolver.port)
        else:
            continue
        servers.setdefault(f"Do53:{address}@{port}", (address, port))
    return next((servers[name] for name in unread if name in servers), None)


def _shown(server: tuple[str, int]) -> str:
    return f"Do53:{server[0]}@{server[1]}"


def _same_query(
    resolver: dns.resolver.Resolver, name: dns.name.Name, rdtype: str
) -> dns.message.QueryMessage:
    """The query ``resolver`` sends for ``name`` and ``rdtype``: its EDNS, DO and flags (the
    AD bit DANE's resolver asks for, :func:`_asks_for_ad`), as ``dns.resolver`` builds it."""
    import dns.message  # noqa: PLC0415 (dnspython at the first lookup, see above)

    query = dns.message.make_query(name, rdtype)
    query.use_edns(
        resolver.edns, resolver.ednsflags, resolver.payload, options=resolver.ednsoptions
    )
    if resolver.flags is not None:
        query.flags = resolver.flags
    return query


def _exchange(
    query: dns.message.QueryMessage, server: tuple[str, int], seconds: float
) -> tuple[_Records, float, tuple[_Unreadable, ...]] | str:
    """Ask ``server`` ``query`` over UDP, then TCP if the answer is truncated, in ``seconds``
    in all; the records read (:func:`_read_leniently`), how long they may be kept and the
    records dnspython would not read among them, or why there are none."""
    import dns.flags  # noqa: PLC0415 (dnspython at the first lookup, see above)

    expiration = time.monotonic() + seconds
    wire = query.to_wire()
    try:
        answer = _udp_exchange(wire, server, expiration)
        if len(answer) >= 4 and struct.unpack_from("!H", answer, 2)[0] & dns.flags.TC:
            answer = _tcp_exchange(wire, server, expiration)
            if len(answer) >= 4 and struct.unpack_from("!H", answer, 2)[0] & dns.flags.TC:
                return _TRUNCATED
    except TimeoutError:
        return f"timed out after {seconds:.1f} s"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return _read_leniently(answer, query)


def _udp_exchange(wire: bytes, server: tuple[str, int], expiration: float) -> bytes:
    """The first datagram ``server`` sends back for ``wire`` (a connected socket takes none
    from elsewhere), before ``expiration`` (``time.monotonic``)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_left(expiration))
        sock.connect(server)
        sock.send(wire)
        sock.settimeout(_left(expiration))
        return sock.recv(_MAX_ANSWER)


def _tcp_exchange(wire: bytes, server: tuple[str, int], expiration: float) -> bytes:
    """The answer to ``wire`` over TCP (RFC 1035 section 4.2.2: a two-octet length first)."""
    with socket.create_connection(server, timeout=_left(expiration)) as sock:
        sock.settimeout(_left(expiration))
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (size,) = struct.unpack("!H", _receive(sock, 2, expiration))
        return _receive(sock, size, expiration)


def _receive(sock: socket.socket, size: int, expiration: float) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(_left(expiration))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        data += chunk
    return data


def _left(expiration: float) -> float:
    left = expiration - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _read_leniently(
    wire: bytes, query: dns.message.QueryMessage
) -> tuple[_Records, float, tuple[_Unreadable, ...]] | str:
    """The answer ``wire`` to ``query`` as dnspython reads it, but for the TLSA records it would
    refuse the whole message for: those are set aside (:data:`_SET_ASIDE`) and returned as
    :class:`_Unreadable` after the others. Anything else dnspython refuses still fails, and so
    does an answer that is not NOERROR with records (the next lookup asks as usual). Returns
    the records, their least TTL (and the CNAMEs'), and those it would not read; or why not."""
    import dns.exception  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.flags  # noqa: PLC0415
    import dns.message  # noqa: PLC0415
    import dns.rcode  # noqa: PLC0415
    import dns.rdatatype  # noqa: PLC0415

    try:
        patched, refused = _set_aside(wire)
        response = dns.message.from_wire(patched)
        if not isinstance(response, dns.message.QueryMessage) or not query.is_response(response):
            return "the answer is not one to the question"
        chain = response.resolve_chaining()
    except (dns.exception.DNSException, ValueError) as exc:
        return f"the answer cannot be read ({type(exc).__name__}: {exc})"
    if response.rcode() != dns.rcode.NOERROR:
        return f"the server answered {dns.rcode.to_text(response.rcode())}"
    question = response.question[0]
    read = list(chain.answer or ())
    ttls = [rrset.ttl for rrset in chain.cnames]
    if chain.answer is not None:
        ttls.append(chain.answer.ttl)
    unread = []
    for owner, rdclass, kept, record in refused:
        if owner == chain.canonical_name and rdclass == question.rdclass:
            unread.append(record)
            ttls.append(kept)
    # Nothing readable but malformed records is an RRset none of whose records is usable:
    # passed on, DANE makes it TLS without authentication (RFC 7672 section 2.2), as Postfix.
    ad = bool(response.flags & dns.flags.AD)
    ttl = float(min([*ttls, MAX_CACHE_TTL]))
    canonical = _canonical(question.name, chain.canonical_name)
    records = _Records((*read, *unread), authenticated=ad, canonical=canonical)
    return records, ttl, tuple(unread)


def _set_aside(wire: bytes) -> tuple[bytes, list[tuple[dns.name.Name, int, int, _Unreadable]]]:
    """``wire`` with each answer-section TLSA record that dnspython will not read given the type
    :data:`_SET_ASIDE`, and those records (owner, class, TTL, data). The message is walked as
    dnspython walks it (RFC 1035 section 4.1), each TLSA record's data read as dnspython reads
    it; a message whose framing is broken raises ``dns.exception.FormError``, and the rest
    (trailing octets, the other records) is left to dnspython's reading of the result."""
    import dns.exception  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.rdata  # noqa: PLC0415
    import dns.rdatatype  # noqa: PLC0415
    import dns.wire  # noqa: PLC0415

    parser = dns.wire.Parser(wire)
    _, _, questions, answers, authorities, additionals = parser.get_struct("!HHHHHH")
    for _ in range(questions):
        parser.get_name(decompress=True)
        parser.get_struct("!HH")
    patched = bytearray(wire)
    refused = []
    for index in range(answers + authorities + additionals):
        owner = parser.get_name(decompress=True)
        at = parser.current
        rdtype, rdclass, ttl, size = parser.get_struct("!HHIH")
        start = parser.current
        if rdtype == dns.rdatatype.TLSA and index < answers:
            try:
                with parser.restrict_to(size):
                    dns.rdata.from_wire_parser(rdclass, rdtype, parser)
            except dns.exception.FormError as exc:
                struct.pack_into("!H", patched, at, _SET_ASIDE)
                why = str(exc) or type(exc).__name__
                refused.append((owner, rdclass, ttl, _Unreadable(wire[start : start + size], why)))
        parser.seek(start + size)
    return bytes(patched), refused


def _dns_name(text: str) -> dns.name.Name | None:
    """``text`` as an absolute DNS name; ``None`` when it is not one (``dns.name.from_text``
    reads ``""`` as the root, which is never a mail domain)."""
    if not text:
        return None
    import dns.exception  # noqa: PLC0415 (dnspython at the first lookup, see above)
    import dns.name  # noqa: PLC0415

    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException:
        return None


def _unicast(address: str) -> bool:
    """Whether ``address`` (from an A or AAAA record) can be a mail host's: not unspecified
    (``0.0.0.0``, ``::``), multicast, or the IPv4 broadcast address."""
    ip = ipaddress.ip_address(address)
    return not (ip.is_unspecified or ip.is_multicast or address == "255.255.255.255")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _address_literal(domain: str) -> str | None:
    """The address in a domain literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, RFC 5321
    section 4.1.3), or ``None``."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    return inner if _is_address(inner) else None


def _literal(hop: Hop, address: str) -> Target:
    return Target(address, hop.port, literal=True, tls=hop.tls, credentials=hop.credentials)


def _target(hop: Hop, name: str, address: str) -> Target:
    return Target(address, hop.port, name=name, tls=hop.tls, credentials=hop.credentials)
