"""What ``MailService`` is made of, checked and built from its arguments: its names, this
machine's name, the MTA-STS policies and DANE for MX delivery, the waits, the suppression list.
Kept apart from the service (``_service.service``); the command line checks the names with the
same functions before it starts its workers."""

from __future__ import annotations

import platform
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from spoolmail._core.address import parse_domain, parse_mailbox
from spoolmail._store.spool import Spool
from spoolmail._store.suppression import SuppressionList
from spoolmail._transport.base import HostResolver
from spoolmail._transport.dane import Dane
from spoolmail._transport.dns import DnsResolver
from spoolmail._transport.mtasts import HttpsPolicyFetcher, MtaSts, PolicyFetcher
from spoolmail.exceptions import ConfigurationError, MessageError

if TYPE_CHECKING:
    # dnspython costs tens of milliseconds to import: only DANE's resolver needs it here.
    import dns.resolver

__all__ = [
    "asking_for_ad",
    "check_waits",
    "checked_names",
    "dane_checks",
    "machine_name",
    "mta_sts_policies",
    "suppression_list",
]


def _checked_domain(value: str, setting: str) -> str:
    try:
        return parse_domain(value)
    except MessageError as exc:
        raise ConfigurationError(f"{setting}: {exc}") from None


def checked_names(
    *, fqdn: str | None, ndr_copy_to: str | None, masquerade_domain: str | None
) -> tuple[str | None, str | None, str | None]:
    """``MailService``'s names, each checked (``ConfigurationError`` names the one that is
    wrong): the command asks before it starts its workers, the service when it is made."""
    if ndr_copy_to is not None:
        try:
            ndr_copy_to = parse_mailbox(ndr_copy_to, default_domain=None)
        except MessageError as exc:
            raise ConfigurationError(f"ndr_copy_to: {exc}") from None
    return (
        _checked_domain(fqdn, "fqdn") if fqdn else None,
        ndr_copy_to,
        _checked_domain(masquerade_domain, "masquerade_domain") if masquerade_domain else None,
    )


def machine_name() -> str:
    """This machine's name if it is a valid host name, else ``localhost`` (never a DNS lookup)."""
    try:
        return parse_domain(platform.node())
    except MessageError:
        return "localhost"


def mta_sts_policies(
    resolver: HostResolver,
    enabled: bool,
    fetcher: PolicyFetcher | None,
    clock: Callable[[], datetime],
) -> MtaSts | None:
    """The MTA-STS policies for MX delivery: only through the service's own DNS."""
    if not enabled or not isinstance(resolver, DnsResolver):
        return None
    return MtaSts(resolver, fetcher=fetcher or HttpsPolicyFetcher(resolver), clock=clock)


def dane_checks(resolver: HostResolver, enabled: bool) -> Dane | None:
    """DANE for MX delivery, when the operator declared the resolver validates DNSSEC."""
    if not enabled:
        return None
    if not isinstance(resolver, DnsResolver):
        raise ConfigurationError(
            "dane=True needs the service's own DNS (dns_resolver, or a DnsResolver as "
            "host_resolver): the AD bit of its answers is what DANE rests on"
        )
    return Dane(resolver)


def asking_for_ad(resolver: dns.resolver.Resolver | None) -> dns.resolver.Resolver:
    """``resolver`` (the system's by default) setting AD in its queries, which asks a
    validating resolver to say whether it validated the answer (RFC 6840 section 5.7)."""
    import dns.flags  # noqa: PLC0415 (dnspython only with DANE, see the imports)
    import dns.resolver  # noqa: PLC0415

    resolver = resolver or dns.resolver.Resolver()
    resolver.flags = (dns.flags.RD if resolver.flags is None else resolver.flags) | dns.flags.AD
    return resolver


def check_waits(settle: timedelta, open_warning: timedelta, rescan: timedelta) -> None:
    """The service's waits as the settings file has them: a Pickup file's settle time 0 or more
    (0: complete when found), the open-file warning and the Queue's rescan above 0 (a rescan
    every tick would make a tick cost the whole Queue)."""
    for name, value, zero_allowed in (
        ("pickup_settle", settle, True),
        ("pickup_open_warning", open_warning, False),
        ("rescan_interval", rescan, False),
    ):
        if not isinstance(value, timedelta):
            raise ConfigurationError(f"{name} is a timedelta, not {value!r}")
        if value < timedelta(0) or (value == timedelta(0) and not zero_allowed):
            least = "0 or more" if zero_allowed else "above 0"
            raise ConfigurationError(f"{name} must be {least}, not {value}")


def suppression_list(spool: Spool, days: int) -> SuppressionList | None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ConfigurationError(f"suppression_days must be 0 (no list) or more, not {days!r}")
    return SuppressionList(spool, days=days) if days else None
