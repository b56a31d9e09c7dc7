"""Assembling a :class:`~spoolmail.MailService` from settings: the only place that does.

Turns a :class:`~spoolmail._cli.settings.Settings` into the router (domains, smart host and its
credentials, routes, TLS policies, DNS servers), the SMTP transport (trust store, recipient
limit) and the limits, with IIS's local retry schedule beside its remote one. Reads the
environment for the smart host's password; opens nothing itself.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Sequence
from datetime import timedelta

import dns.nameserver
import dns.resolver

from spoolmail._cli.settings import Settings
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Credentials, Router, SmartHostMode, TlsPolicy, parse_target
from spoolmail._service.service import Limits, MailService, machine_name
from spoolmail._store.spool import Spool
from spoolmail._transport.smtp import SmtpTransport
from spoolmail.exceptions import ConfigurationError

__all__ = ["PASSWORD_VARIABLE", "service"]

# The smart host's password may come from the environment rather than a file or a flag (flags
# are visible to every user of the machine in the process list).
PASSWORD_VARIABLE = "SPOOLMAIL_SMART_HOST_PASSWORD"  # noqa: S105 (the variable's name, no secret)


def service(settings: Settings, spool: Spool) -> MailService:
    presets: dict[str, Callable[[], RetryPolicy]] = {
        "iis": RetryPolicy.iis,
        "postfix": RetryPolicy.postfix,
        "qmail": RetryPolicy.qmail,
        "exim": RetryPolicy.exim,
    }
    # IIS kept a separate, hourly schedule for local delivery; the other MTAs have one schedule.
    local = RetryPolicy.iis_local() if settings.retry == "iis" else None
    fqdn = settings.fqdn or machine_name()
    tls_context = None
    if settings.tls_ca_file is not None:
        try:
            tls_context = ssl.create_default_context(cafile=settings.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"tls_ca_file {settings.tls_ca_file!r}: {exc}") from None
    return MailService(
        spool,
        router=router(settings),
        dns_resolver=dns_resolver(settings.dns_servers),
        retry=presets[settings.retry](),
        local_retry=local,
        transport=SmtpTransport(
            helo_name=fqdn, tls_context=tls_context, max_recipients=settings.max_recipients
        ),
        fqdn=fqdn,
        limits=Limits(
            max_message_size=settings.max_message_size,
            max_hop_count=settings.max_hop_count,
            max_connections=settings.max_connections,
            max_connections_per_host=settings.max_connections_per_host,
        ),
        ndr_copy_to=settings.ndr_copy_to,
        log_days=settings.log_days,
        masquerade_domain=settings.masquerade_domain,
        pickup_dot_stuffed=settings.pickup_dot_stuffed,
        pickup_settle=timedelta(seconds=settings.pickup_settle),
        pickup_open_warning=timedelta(seconds=settings.pickup_open_warning),
        min_free_space=settings.min_free_space,
    )


def router(settings: Settings) -> Router:
    credentials = None
    if settings.smart_host_user:
        password = settings.smart_host_password or os.environ.get(PASSWORD_VARIABLE)
        if not password:
            raise ConfigurationError(
                f"smart_host_user is set but no password: put smart_host_password in the "
                f"settings file or {PASSWORD_VARIABLE} in the environment"
            )
        credentials = Credentials(settings.smart_host_user, password)
    try:
        tls_domains = {d: TlsPolicy(p) for d, p in settings.tls_domains.items()}
    except ValueError as exc:
        raise ConfigurationError(f"tls_domains: {exc}") from None
    return Router(
        local_domains=settings.local_domains,
        alias_domains=settings.alias_domains,
        smart_host=settings.smart_host,
        smart_host_mode=SmartHostMode(settings.smart_host_mode)
        if settings.smart_host_mode
        else None,
        smart_host_auth=credentials,
        routes=settings.routes,
        tls=TlsPolicy(settings.tls),
        tls_domains=tls_domains,
        smtp_port=settings.smtp_port,
        catch_all=settings.catch_all,
    )


def dns_resolver(servers: Sequence[str]) -> dns.resolver.Resolver | None:
    """A resolver asking only ``servers`` (``address`` or ``address:port``, ``[v6]:port``)."""
    if not servers:
        return None
    resolver = dns.resolver.Resolver(configure=False)
    nameservers = []
    for text in servers:
        target = parse_target(text, default_port=53)
        if not target.literal:
            raise ConfigurationError(f"dns_servers: {text!r} is not an IP address")
        nameservers.append(dns.nameserver.Do53Nameserver(target.host, target.port))
    resolver.nameservers = nameservers
    return resolver
