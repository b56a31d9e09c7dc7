"""Start-up checks: does this host's name resolve forward and back (FCrDNS)?

Receivers look up the connecting address's PTR record and then that name's addresses, and
refuse or mark mail whose sending address does not come back (Gmail: "The sending IP must have
a PTR record", Outlook and Yahoo alike); many also expect the EHLO name to be that name.
:func:`check_host_name` asks the service's resolver: the name's A and AAAA records, each
address's PTR, and whether one of those names is the name again; it reports what it found and
what is wrong as a :class:`HostNameCheck`, and never raises for what DNS says. It cannot know
which public address the mail will leave from (NAT, a cloud's egress): give it
``addresses`` when you know them. Reads DNS only.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs

from spoolmail._core.mx import host_key
from spoolmail._core.reply import Reply
from spoolmail._core.transcript import Transcript
from spoolmail._transport.dns import DnsResolver

if TYPE_CHECKING:
    import dns.resolver

__all__ = ["HostNameCheck", "check_host_name", "warn_about_host_name"]

log = logging.getLogger("spoolmail")


@attrs.frozen
class HostNameCheck:
    """What :func:`check_host_name` found: the name, its addresses, each address's PTR names,
    and the problems (empty when forward and reverse agree)."""

    name: str
    addresses: tuple[str, ...] = ()
    reverse: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether forward and reverse DNS agree (no problem was found)."""
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            pairs = ", ".join(
                f"{a} -> {', '.join(self.reverse.get(a, ()))}" for a in self.addresses
            )
            return f"{self.name}: forward and reverse DNS agree ({pairs})"
        return f"{self.name}: " + "; ".join(self.problems)


# Addresses no receiver on the Internet sees mail come from (RFC 1918, RFC 6598 shared, RFC
# 4193 unique local, loopback, link-local).
_INTERNAL = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if ip.is_loopback or ip.is_link_local:
        return True
    return any(ip.version == n.version and ip in n for n in _INTERNAL)


def check_host_name(
    name: str,
    *,
    dns_resolver: dns.resolver.Resolver | DnsResolver | None = None,
    addresses: Iterable[str] = (),
) -> HostNameCheck:
    """Check that ``name`` resolves to addresses whose PTR records give ``name`` back.

    ``dns_resolver`` is the resolver to ask (the service's; default the system's);
    ``addresses``, when given, are the public addresses mail leaves from: each must be among
    the name's addresses and point back to it.
    """
    resolver = (
        dns_resolver
        if isinstance(dns_resolver, DnsResolver)
        else DnsResolver(resolver=dns_resolver)
    )
    transcript = Transcript(lambda: datetime.now(UTC))  # its lines are not kept
    key = host_key(name)
    problems: list[str] = []
    if "." not in key:
        problems.append(f"{name!r} is not a fully qualified domain name (receivers want one)")
        return HostNameCheck(key, problems=tuple(problems))
    found = resolver.addresses(key, transcript)
    if isinstance(found, Reply):
        problems.append(f"does not resolve: {found.text}")
        return HostNameCheck(key, problems=tuple(problems))
    wanted = tuple(dict.fromkeys(addresses)) or found
    reverse: dict[str, tuple[str, ...]] = {}
    for address in wanted:
        if address not in found:
            problems.append(f"{address} is not one of its addresses ({', '.join(found)})")
        if _internal(address):
            problems.append(
                f"{address} is not a public address: receivers see the address mail leaves from"
            )
        ptr = resolver.lookup(address, "PTR", transcript)
        names = tuple(key for key in map(host_key, ptr.records) if key)  # "." names nothing
        reverse[address] = names
        if ptr.failure is not None:
            problems.append(f"the PTR lookup of {address} failed: {ptr.failure}")
        elif not names:
            problems.append(f"{address} has no PTR record")
        elif key not in names:
            problems.append(f"{address} points back to {', '.join(names)}, not to {key}")
    return HostNameCheck(key, found, reverse, tuple(problems))


def warn_about_host_name(check: HostNameCheck, *, helo_name: str) -> None:
    """Log the check's outcome: a warning per problem, or one line that all is well."""
    if check.ok:
        log.info("%s", check)
        return
    for problem in check.problems:
        log.warning(
            "EHLO name %s: %s; receivers (Gmail, Outlook, Yahoo) may refuse or mark its mail "
            "(docs/deliverability.md)",
            helo_name,
            problem,
        )
