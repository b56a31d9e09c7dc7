"""Routing: where each recipient's mail goes, and how it is to be reached.

The :class:`Router` answers, per recipient address, with a :class:`Route`: local (the Drop
folder, for the local and alias domains, every address accepted as IIS did) or SMTP through an
ordered list of :class:`Hop` s: the domain's MX hosts (RFC 5321 section 5.1), a host by name, or
an address literal. IIS's smart host modes decide the list: no smart host (MX only), always the
smart host, or MX first and the smart host when direct delivery fails; a per-domain route
overrides both. The delivery agent asks a resolver to turn each hop into :class:`Target` s (one
address each) and tries them in order. Recipients with equal routes travel together: one SMTP
transaction per message and destination.

Every name it is given must be a domain (RFC 5321 section 2.3.5) or, for hosts, an address
literal: a wildcard such as ``*`` is refused with a :class:`ConfigurationError`, because a
Router that took it would quietly route that mail to the MX hosts of a domain named ``*``. The
one wildcard is IIS's remote domain ``*.example.com`` as a key of ``routes`` and
``tls_domains``: every subdomain of ``example.com``, at any depth, but not ``example.com``
itself (capture mode, ``catch_all``, is the wildcard for local delivery).

Pure: no DNS, no sockets. Which DNS resolver looks the hops up is the service's business
(``MailService(dns_resolver=...)``), not the router's.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

import attrs

from spoolmail._core.address import parse_domain
from spoolmail._core.choices import member_named
from spoolmail.exceptions import ConfigurationError, MessageError

__all__ = [
    "Credentials",
    "Hop",
    "HopKind",
    "Route",
    "RouteKind",
    "Router",
    "SmartHostMode",
    "Target",
    "TlsPolicy",
    "parse_hop",
    "parse_target",
]

# \Z, not $: "$" also matches before a final newline ("smtp.example.com\n" is no host name).
_HOST = re.compile(r"^(?=.{1,253}\Z)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+\Z")


def _is_host_name(text: str) -> bool:
    """Whether ``text`` is a host name: labels as :data:`_HOST` says, the last not all digits
    (RFC 1123 section 2.1: so ``10.0.0.256``, an address mistyped, is not looked up as a name,
    whose NXDOMAIN would fail every message for good)."""
    return bool(_HOST.match(text)) and not text.rstrip(".").rpartition(".")[2].isdigit()


SMTP_PORT = 25


class TlsPolicy(enum.Enum):
    """How a connection uses STARTTLS (RFC 3207); Postfix's smtp_tls_security_level in words."""

    NEVER = "never"
    """Plain text only, for a server whose TLS is known to be broken (Postfix: none)."""
    OPPORTUNISTIC = "opportunistic"
    """STARTTLS when the server offers it, without checking its certificate (RFC 7435); plain
    text when it does not (Postfix: may)."""
    ENCRYPT = "encrypt"
    """STARTTLS or nothing, certificate not checked: never in the clear (Postfix: encrypt)."""
    REQUIRED = "required"
    """STARTTLS or nothing, the certificate and host name verified (RFC 6125; Postfix:
    verify). A server that cannot is a temporary failure; nothing is sent in the clear."""


def tls_policy(value: object) -> TlsPolicy:
    """``value`` as a :class:`TlsPolicy`: the member, or its name (``"required"``); anything
    else a ConfigurationError (see ``_core.choices``)."""
    return member_named(TlsPolicy, value, "a TLS policy")


@attrs.frozen
class Credentials:
    """A user name and password for SMTP AUTH to a smart host (RFC 4954; over TLS only)."""

    username: str
    password: str = attrs.field(repr=False)


# Target, Hop and Route key the delivery's dicts (connection slots, the pool, dead hosts,
# recipients grouped by route) some twenty times a message: each keeps its hash, which would
# otherwise be worked out again each time through its fields and their enums' Python __hash__.
@attrs.frozen(cache_hash=True)
class Target:
    """One address to open an SMTP connection to.

    ``host`` is what the connection goes to: an IP address once a resolver has looked the
    name up, so no system resolver is ever consulted. ``name`` is the host name it was found
    under (an MX exchange, a smart host), for the transcript and TLS (SNI and the certificate
    check). ``literal`` means it was given as an address and is not checked against a name.
    """

    host: str
    port: int = SMTP_PORT
    literal: bool = False
    name: str | None = None
    tls: TlsPolicy = attrs.field(default=TlsPolicy.OPPORTUNISTIC, converter=tls_policy)
    credentials: Credentials | None = None

    def __str__(self) -> str:
        if self.name and self.name != self.host:
            return f"{self.name}[{self.host}]:{self.port}"
        host = f"[{self.host}]" if self.literal else self.host
        return f"{host}:{self.port}"


class HopKind(enum.Enum):
    """How a hop names where to connect: a domain's MX hosts, a host name, or an address literal."""

    MX = "mx"
    """The domain's MX hosts, or its own address when it has none (RFC 5321 section 5.1)."""
    HOST = "host"
    """A host by name: its addresses (AAAA and A)."""
    ADDRESS = "address"
    """An address literal: no lookup (IIS: a smart host in square brackets)."""

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every transition).
    __hash__ = object.__hash__


@attrs.frozen(cache_hash=True)
class Hop:
    """One way to reach a destination, resolved into targets when a message is sent."""

    kind: HopKind
    name: str
    port: int = SMTP_PORT
    tls: TlsPolicy = attrs.field(default=TlsPolicy.OPPORTUNISTIC, converter=tls_policy)
    credentials: Credentials | None = attrs.field(default=None, eq=False)

    def __str__(self) -> str:
        if self.kind is HopKind.MX:
            return f"MX of {self.name}"
        if self.kind is HopKind.ADDRESS:
            return f"[{self.name}]:{self.port}"
        return f"{self.name}:{self.port}"


def parse_hop(text: str, *, default_port: int = SMTP_PORT) -> Hop:
    """Parse a smart host or route as IIS took it: ``host``, ``host:port``, ``[192.0.2.1]``,
    ``[::1]:2525``. Square brackets around an address mean "no DNS lookup" (KB Q303734)."""
    target = parse_target(text, default_port=default_port)
    kind = HopKind.ADDRESS if target.literal else HopKind.HOST
    return Hop(kind, target.host, target.port)


def parse_target(text: str, *, default_port: int = SMTP_PORT) -> Target:
    """Parse ``host``, ``host:port``, ``[192.0.2.1]``, ``[::1]:2525`` into a target."""
    value = text.strip()
    if not value:
        raise ConfigurationError("a smart host cannot be empty")
    port = default_port
    if value.startswith("["):
        inner, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise ConfigurationError(f"smart host {text!r} has an unclosed '['")
        if rest:
            if not rest.startswith(":"):
                raise ConfigurationError(f"smart host {text!r}: expected ':port' after ']'")
            port = _port(rest[1:], text)
        address = inner.removeprefix("IPv6:")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigurationError(
                f"smart host {text!r}: brackets hold an IP address, not {inner!r}"
            ) from None
        return Target(address, port, literal=True)
    host, colon, port_text = value.rpartition(":")
    if not colon:
        host = value
    elif ":" in host:
        raise ConfigurationError(f"smart host {text!r}: write an IPv6 address as [::1]:port")
    else:
        port = _port(port_text, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return Target(host, port, literal=True)
    if not _is_host_name(host):
        raise ConfigurationError(f"smart host {text!r}: {host!r} is not a host name")
    return Target(host.rstrip(".").lower(), port)


def _port(text: str, whole: str) -> int:
    # isdigit() alone takes "²" (which int() refuses) and other scripts' digits: ASCII only.
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ConfigurationError(f"smart host {whole!r}: port must be 1-65535, not {text!r}")
    return int(text)


class RouteKind(enum.Enum):
    """Where a recipient's mail goes: into Drop (``LOCAL``) or over SMTP."""

    LOCAL = "local"
    SMTP = "smtp"

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every transition).
    __hash__ = object.__hash__


@attrs.frozen(cache_hash=True)
class Route:
    """Where one recipient goes. Recipients whose routes are equal share a delivery."""

    kind: RouteKind
    hops: tuple[Hop, ...] = ()
    # Every attempt's transcript names its route: worded once, when the route is made (the
    # router keeps its routes).
    _description: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.kind is RouteKind.LOCAL:
            text = "local delivery to Drop"
        else:
            text = "SMTP via " + ", then ".join(str(hop) for hop in self.hops)
        object.__setattr__(self, "_description", text)

    @property
    def description(self) -> str:
        """The route in words, for transcripts: ``local delivery to Drop`` or its hops."""
        return self._description


class SmartHostMode(enum.Enum):
    """IIS's smart host setting (metabase ``SmartHostType``)."""

    NONE = "none"
    """No smart host: MX only (SmartHostType 0)."""
    ALWAYS = "always"
    """Every remote message to the smart host (SmartHostType 2, the default when one is set)."""
    FALLBACK = "fallback"
    """"Attempt direct delivery before sending to smart host" (SmartHostType 1)."""


# What a refused wildcard is told, by setting: local delivery has capture mode instead, routes
# take one form of wildcard, and the rest (tls_domains, an MX hop) take none.
_WILDCARD_HINTS = {
    "local_domains": "wildcards are not supported; catch_all=True sends every recipient to Drop",
    "alias_domains": "wildcards are not supported; catch_all=True sends every recipient to Drop",
    "routes": "a wildcard route is '*.' and a domain name, as '*.example.com' for its subdomains",
    "tls_domains": "a wildcard is '*.' and a domain name, as '*.example.com' for its subdomains",
}
_NO_WILDCARDS = "wildcards are not supported here"

# A route key for every subdomain of a domain: IIS's remote domain wildcard, "an asterisk (*) as
# the first character, followed by a period (.)" (Windows Server 2003, "Creating SMTP Domains",
# cc758491).
_WILDCARD = "*."

_V = TypeVar("_V")  # what a mapping by domain holds: a route's hop, a TLS policy


def _domain(text: str, setting: str, *, wildcard: bool = False) -> str:
    """``text`` as a canonical domain, or a ConfigurationError naming the setting.

    Only a real domain (or address literal) is a domain here: ``*`` and ``*.example.com`` are
    not, rather than be taken for domains literally named so. With ``wildcard`` (route keys),
    ``*.`` and then a domain is kept as ``*.`` and the canonical domain; ``*`` anywhere else
    (``*``, ``a.*.com``, ``*example.com``, ``**.x``, ``*.[192.0.2.1]``) is refused. Local and
    alias domains take no wildcard: ``catch_all=True`` is capture mode.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"{setting}: a domain is a string, not {text!r}")
    value = text.strip().rstrip(".")
    prefix = _WILDCARD if wildcard and value.startswith(_WILDCARD) else ""
    name = value.removeprefix(prefix)
    # parse_domain refuses any other "*" (not a letter, digit or hyphen); an address literal
    # has no subdomains.
    if not (prefix and name.startswith("[")):
        try:
            return prefix + parse_domain(name)
        except MessageError:
            pass
    # Postfix's ".example.com" is the same wish as "*.example.com": say how it is written here.
    wished = "*" in value or (wildcard and value.startswith("."))
    hint = f" ({_WILDCARD_HINTS.get(setting, _NO_WILDCARDS)})" if wished else ""
    raise ConfigurationError(f"{setting}: {text!r} is not a domain{hint}")


def _domain_key(domain: str) -> str:
    """``domain`` as the router compares it: lower case (the ``IPv6:`` tag of an address literal
    too), no final dot, each Unicode label as its A-label. RFC 5890 section 2.3.2.1:
    ``bücher.example`` and ``xn--bcher-kva.example`` are one domain, and mail for either must
    end in Drop when the other is a local domain, not be sent to its own MX (or refused at RCPT
    as a relay)."""
    domain = domain.rstrip(".").lower()
    if domain.isascii():
        return domain
    return ".".join(
        label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii")
        for label in domain.split(".")
    )


def _domains(values: Iterable[str], setting: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    return tuple(
        dict.fromkeys(_domain(v, setting) for v in values if not isinstance(v, str) or v.strip())
    )


def _local_domains(values: Iterable[str]) -> tuple[str, ...]:
    return _domains(values, "local_domains")


def _alias_domains(values: Iterable[str]) -> tuple[str, ...]:
    return _domains(values, "alias_domains")


def _checked_hop(hop: Hop, setting: str) -> Hop:
    """A hop given as an object is held to the same rules as one parsed from text."""
    if hop.kind is HopKind.ADDRESS:
        try:
            ipaddress.ip_address(hop.name)
        except ValueError:
            raise ConfigurationError(f"{setting}: {hop.name!r} is not an IP address") from None
    elif hop.kind is HopKind.MX:
        _domain(hop.name, setting)
    elif not _is_host_name(hop.name):
        raise ConfigurationError(f"{setting}: {hop.name!r} is not a host name")
    return hop


def _smart_host(value: Hop | str | None) -> Hop | None:
    if value is None:
        return None
    hop = parse_hop(value) if isinstance(value, str) else value
    return _checked_hop(hop, "smart_host")


def _keyed_domain(domain: str, setting: str, seen: dict[str, str]) -> str:
    """``domain`` checked as a key of ``setting`` (wildcards allowed), refused when another key
    already named the same domain in another spelling (case, a final dot, a U-label and its
    A-label: ``bücher.example`` and ``xn--bcher-kva.example``): one would silently win."""
    key = _domain(domain, setting, wildcard=True)
    same = _domain_key(key)
    if same in seen:
        raise ConfigurationError(
            f"{setting}: {seen[same]!r} and {domain!r} name the same domain; keep one"
        )
    seen[same] = domain
    return key


def _routes(value: Mapping[str, Hop | str]) -> Mapping[str, Hop]:
    routes = {}
    seen: dict[str, str] = {}
    for domain, hop in value.items():
        key = _keyed_domain(domain, "routes", seen)
        parsed = parse_hop(hop) if isinstance(hop, str) else hop
        routes[key] = _checked_hop(parsed, f"routes[{domain!r}]")
    return routes


def _closest_wildcard(key: str, wildcards: Mapping[str, _V]) -> _V | None:
    """The value (a route's hop, a TLS policy) of the most specific wildcard key over ``key``
    (a :func:`_domain_key`), if any.

    ``wildcards`` maps the domain after ``*.`` to its value. The domain's parents are tried from
    the nearest up (``x.y.example.com``: ``y.example.com``, ``example.com``, ``com``), so the
    longest suffix wins, in at most 127 dict lookups (a domain has at most 127 labels), however
    many routes there are. ``key`` itself is never tried: ``*.example.com`` is not
    ``example.com``. That is Postfix's transport(5) as installed (``transport_maps`` is not in
    ``parent_domain_matches_subdomains``: ``.example.com`` matches "any subdomain", not the
    domain) and a DNS wildcard's (RFC 4592: the name that owns ``*`` is not matched). IIS's
    documentation says only "all inclusive domains" (cc758491); a route that took the apex too
    could not be undone, while one more key (``example.com``) adds it.
    """
    rest = key
    while True:
        _, dot, rest = rest.partition(".")
        if not dot:
            return None
        found = wildcards.get(rest)
        if found is not None:
            return found


def _split_wildcards(keyed: Mapping[str, _V]) -> tuple[dict[str, _V], dict[str, _V]]:
    """A mapping by domain (checked by :func:`_domain`) as the lookups read it: the exact keys,
    and the wildcard keys by the domain after ``*.``, each as :func:`_domain_key` writes it."""
    exact: dict[str, _V] = {}
    wildcards: dict[str, _V] = {}
    for domain, value in keyed.items():
        if domain.startswith(_WILDCARD):
            wildcards[_domain_key(domain.removeprefix(_WILDCARD))] = value
        else:
            exact[_domain_key(domain)] = value
    return exact, wildcards


def _tls_domains(value: Mapping[str, TlsPolicy | str]) -> Mapping[str, TlsPolicy]:
    seen: dict[str, str] = {}
    return {
        _keyed_domain(domain, "tls_domains", seen): _policy(policy, f"tls_domains[{domain!r}]")
        for domain, policy in value.items()
    }


def _policy(value: object, setting: str) -> TlsPolicy:
    try:
        return tls_policy(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None


def _router_tls(value: object) -> TlsPolicy:
    return _policy(value, "tls")


def _smart_host_mode(value: object) -> SmartHostMode | None:
    return None if value is None else member_named(SmartHostMode, value, "smart_host_mode")


def _catch_all(value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"catch_all is True or False, not {value!r}")
    return value


_ROUTE_CACHE = 4096


@attrs.frozen
class Router:
    """Routes recipients: local and alias domains to Drop; others by route, smart host or MX.

    ``Router(local_domains=["example.com"], smart_host="relay.example.net:587",
    smart_host_auth=Credentials("user", "secret"))``.

    - ``smart_host`` (``host``, ``host:port`` or ``[address]``) with ``smart_host_mode``: ALWAYS
      (the default when a smart host is given, as IIS), FALLBACK (MX first) or NONE.
    - ``routes`` maps a domain to its own host (``{"partner.example": "[192.0.2.7]:2525"}``);
      it overrides the smart host and MX, as IIS's remote domains did. A key ``*.example.com``
      is every subdomain of example.com (``a.example.com``, ``x.y.example.com``), not
      example.com itself; an exact key wins over a wildcard, and the longest wildcard over a
      shorter one.
    - ``tls`` is the STARTTLS policy for every connection, ``tls_domains`` per recipient domain
      (``{"bank.example": TlsPolicy.REQUIRED}``); a smart host with credentials gets at least
      ``TlsPolicy.ENCRYPT``, because AUTH never goes in the clear.
    - ``smtp_port`` is the port MX hosts are reached on (25).
    - ``catch_all=True`` is capture mode, for test rigs and development machines (as Mailpit or
      smtp4dev): every recipient, whatever its domain, is local and lands in Drop; nothing is
      ever sent out.
    """

    local_domains: tuple[str, ...] = attrs.field(default=("localhost",), converter=_local_domains)
    alias_domains: tuple[str, ...] = attrs.field(default=(), converter=_alias_domains)
    smart_host: Hop | None = attrs.field(default=None, converter=_smart_host)
    smart_host_mode: SmartHostMode | None = attrs.field(default=None, converter=_smart_host_mode)
    smart_host_auth: Credentials | None = None
    routes: Mapping[str, Hop] = attrs.field(factory=dict, converter=_routes)
    tls: TlsPolicy = attrs.field(default=TlsPolicy.OPPORTUNISTIC, converter=_router_tls)
    tls_domains: Mapping[str, TlsPolicy] = attrs.field(factory=dict, converter=_tls_domains)
    smtp_port: int = 25
    catch_all: bool = attrs.field(default=False, converter=_catch_all)
    # Routes by domain: a Router never changes, so a domain is routed once, not at every look
    # (delivery groups by route, the retry policy and the transcripts ask again). Bounded.
    _cache: dict[str, Route] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    # The domains above as _domain_key writes them, for the lookups; the fields keep them as given.
    _local_keys: frozenset[str] = attrs.field(init=False, eq=False, repr=False)
    _route_keys: dict[str, Hop] = attrs.field(init=False, eq=False, repr=False)
    # Wildcard routes by the domain after "*.", as _domain_key writes it.
    _wildcard_keys: dict[str, Hop] = attrs.field(init=False, eq=False, repr=False)
    _tls_keys: dict[str, TlsPolicy] = attrs.field(init=False, eq=False, repr=False)
    _tls_wildcard_keys: dict[str, TlsPolicy] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.local_domains:
            raise ConfigurationError(
                "a Router needs at least one local domain (IIS's default domain)"
            )
        if self.smart_host is None and self.smart_host_mode not in (None, SmartHostMode.NONE):
            raise ConfigurationError(
                f"smart_host_mode {self.smart_host_mode.value!r} needs a smart_host"
            )
        if not 0 < self.smtp_port < 65536:
            raise ConfigurationError(f"smtp_port must be 1-65535, not {self.smtp_port!r}")
        keys = frozenset(map(_domain_key, self.local_domains + self.alias_domains))
        object.__setattr__(self, "_local_keys", keys)
        routes, wildcards = _split_wildcards(self.routes)
        object.__setattr__(self, "_route_keys", routes)
        object.__setattr__(self, "_wildcard_keys", wildcards)
        # IIS's wildcard remote domain carried its Outbound Security too: the same rule.
        tls, tls_wildcards = _split_wildcards(self.tls_domains)
        object.__setattr__(self, "_tls_keys", tls)
        object.__setattr__(self, "_tls_wildcard_keys", tls_wildcards)

    @property
    def default_domain(self) -> str:
        """The first local domain: it completes an address without one (IIS's default domain)."""
        return self.local_domains[0]

    @property
    def mode(self) -> SmartHostMode:
        """The smart host mode in effect: ``NONE`` without a smart host, else the one given
        (``ALWAYS`` by default)."""
        if self.smart_host is None:
            return SmartHostMode.NONE
        return self.smart_host_mode or SmartHostMode.ALWAYS

    def is_local(self, domain: str) -> bool:
        """Whether mail for ``domain`` ends in Drop (a local or alias domain, or capture mode)."""
        if self.catch_all:
            return True
        return _domain_key(domain) in self._local_keys

    def route(self, address: str) -> Route:
        """Where mail for ``address`` goes: Drop (``RouteKind.LOCAL``) or the SMTP hops to try."""
        domain = address.rpartition("@")[2].rstrip(".").lower()
        found = self._cache.get(domain)
        if found is None:
            if len(self._cache) >= _ROUTE_CACHE:
                self._cache.clear()
            found = self._cache[domain] = self._route(domain)
        return found

    def _route(self, domain: str) -> Route:
        if self.is_local(domain):
            return Route(RouteKind.LOCAL)
        key = _domain_key(domain)
        tls = self._tls_keys.get(key)
        if tls is None and self._tls_wildcard_keys:
            tls = _closest_wildcard(key, self._tls_wildcard_keys)
        if tls is None:
            tls = self.tls
        route = self._route_keys.get(key)
        if route is None and self._wildcard_keys:
            route = _closest_wildcard(key, self._wildcard_keys)
        if route is not None:
            return Route(RouteKind.SMTP, (attrs.evolve(route, tls=tls),))
        direct = Hop(HopKind.MX, domain, self.smtp_port, tls=tls)
        mode = self.mode
        if mode is SmartHostMode.NONE:
            return Route(RouteKind.SMTP, (direct,))
        assert self.smart_host is not None  # noqa: S101 (mode says so)
        if self.smart_host_auth and tls in (TlsPolicy.NEVER, TlsPolicy.OPPORTUNISTIC):
            tls = TlsPolicy.ENCRYPT
        smart = attrs.evolve(self.smart_host, tls=tls, credentials=self.smart_host_auth)
        if mode is SmartHostMode.ALWAYS:
            return Route(RouteKind.SMTP, (smart,))
        return Route(RouteKind.SMTP, (direct, smart))
