"""Assembling a :class:`~spoolmail.MailService` from settings: the only place that does.

Turns a :class:`~spoolmail._cli.settings.Settings` into the router (domains, smart host and its
credentials, routes, TLS policies, DNS servers), the SMTP transport (trust store, recipient
and per-connection message limits, the RFC 5321 timeouts) and the limits, and the retry
schedules: the preset's, with IIS's local schedule beside its remote one, and what the
``retry_intervals``, ``delay_notification`` and ``expiration_timeout`` keys change in them.
Reads the environment for the smart host's password; opens nothing itself.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

import attrs

from spoolmail._cli.settings import Settings, parse_duration, retry_interval_seconds
from spoolmail._core.dkim import (
    OVERSIGNED_FIELDS,
    SIGNED_FIELDS,
    Canonicalization,
    DkimAlgorithm,
    DkimKey,
    DkimPolicy,
    DkimSigner,
)
from spoolmail._core.retry import RetryPolicy
from spoolmail._core.routing import Credentials, Router, SmartHostMode, TlsPolicy, parse_target
from spoolmail._core.shares import WHOLE, Share, part
from spoolmail._core.throttle import ThrottleRules
from spoolmail._service.service import Limits, MailService, checked_names, machine_name
from spoolmail._store.given import check_given, read_given
from spoolmail._store.spool import Spool
from spoolmail._transport.smtp import SmtpTransport
from spoolmail._transport.timeouts import SmtpTimeouts
from spoolmail.exceptions import ConfigurationError

if TYPE_CHECKING:
    import dns.resolver

__all__ = ["PASSWORD_VARIABLE", "check", "retry_policies", "service", "timeouts"]

# The smart host's password may come from the environment rather than a file or a flag (flags
# are visible to every user of the machine in the process list).
PASSWORD_VARIABLE = "SPOOLMAIL_SMART_HOST_PASSWORD"  # noqa: S105 (the variable's name, no secret)


_PRESETS: dict[str, Callable[[], RetryPolicy]] = {
    "iis": RetryPolicy.iis,
    "postfix": RetryPolicy.postfix,
    "qmail": RetryPolicy.qmail,
    "exim": RetryPolicy.exim,
}


def _changed(
    policy: RetryPolicy,
    *,
    intervals: tuple[object, ...] | None,
    delay: tuple[str, str | None],
    expiry: tuple[str, str | None],
) -> RetryPolicy:
    """``policy`` with the waits, delay notice and lifetime the settings give, if any."""
    changes: dict[str, object] = {}
    if intervals is not None:
        seconds = [
            retry_interval_seconds(item, what=f"retry_intervals item {number}")
            for number, item in enumerate(intervals, start=1)
        ]
        changes["wait"] = RetryPolicy.from_intervals(seconds, lifetime=None, delay_notice=None).wait
    (delay_key, delay_text), (expiry_key, expiry_text) = delay, expiry
    if delay_text is not None:
        changes["delay_notice"] = parse_duration(delay_text, what=delay_key)
    if expiry_text is not None:
        changes["lifetime"] = parse_duration(expiry_text, what=expiry_key)
    if not changes:
        return policy
    notice = changes.get("delay_notice", policy.delay_notice)
    lifetime = changes.get("lifetime", policy.lifetime)
    if isinstance(notice, timedelta) and isinstance(lifetime, timedelta) and notice >= lifetime:
        # The failure DSN is due at expiry; a delay notice at or after it would never go out.
        raise ConfigurationError(
            f"{delay_key} ({notice}) must come before {expiry_key} ({lifetime}), "
            f"with retry = {policy.name!r}"
        )
    return attrs.evolve(policy, name=f"{policy.name}, changed by the settings", **changes)  # type: ignore[arg-type]


def retry_policies(settings: Settings) -> tuple[RetryPolicy, RetryPolicy | None]:
    """The remote and the local (Drop) retry schedules; ``None``: local uses the remote one.

    IIS kept a separate, hourly schedule for local delivery, with its own delay notice and
    expiry; the other MTAs have one schedule, which the local keys then change for Drop only.
    """
    remote = _changed(
        _PRESETS[settings.retry](),
        intervals=settings.retry_intervals,
        delay=("delay_notification", settings.delay_notification),
        expiry=("expiration_timeout", settings.expiration_timeout),
    )
    local_base = RetryPolicy.iis_local() if settings.retry == "iis" else remote
    local = _changed(
        local_base,
        intervals=None,
        delay=("local_delay_notification", settings.local_delay_notification),
        expiry=("local_expiration_timeout", settings.local_expiration_timeout),
    )
    return remote, (None if local is remote else local)


def timeouts(settings: Settings) -> SmtpTimeouts:
    """The SMTP client's waits (RFC 5321 4.5.3.2) from the ``smtp_*_timeout`` keys."""
    return SmtpTimeouts(
        connect=settings.smtp_connect_timeout,
        greeting=settings.smtp_greeting_timeout,
        ehlo=settings.smtp_helo_timeout,
        mail=settings.smtp_mail_timeout,
        rcpt=settings.smtp_rcpt_timeout,
        data_start=settings.smtp_data_init_timeout,
        data_block=settings.smtp_data_block_timeout,
        data_end=settings.smtp_data_end_timeout,
        starttls=settings.smtp_starttls_timeout,
        idle=settings.smtp_idle_timeout,
    )


def check(settings: Settings) -> None:
    """Build what :func:`service` builds from ``settings`` alone (the router, the retry
    policies, the timeouts, the CA file's context) and check the names it is given (fqdn,
    ndr_copy_to, masquerade_domain), then drop it all: a setting that cannot be built fails
    here, once, in the parent, instead of in every worker after the fork."""
    retry_policies(settings)
    timeouts(settings)
    router(settings)
    _tls_context(settings)
    checked_names(
        fqdn=settings.fqdn,
        ndr_copy_to=settings.ndr_copy_to,
        masquerade_domain=settings.masquerade_domain,
    )


def service(
    settings: Settings, spool: Spool, *, share: Share = WHOLE, handing_off: int = 0
) -> MailService:
    """The service of ``settings`` for worker ``share``: the limits on connections and messages
    a minute are the whole service's, so each worker gets its part (``shares.part``; the
    workers past the first ``handing_off``, which deliver what those accept, a larger one)."""
    retry, local = retry_policies(settings)

    def share_of(limit: int) -> int:
        return part(limit, share, handing_off=handing_off)

    per_host = share_of(settings.max_connections_per_host)
    fqdn = settings.fqdn or machine_name()
    tls_context = _tls_context(settings)
    return MailService(
        spool,
        router=router(settings),
        dns_resolver=dns_resolver(settings.dns_servers),
        dns_cache_size=settings.dns_cache_size,
        retry=retry,
        local_retry=local,
        transport=SmtpTransport(
            helo_name=settings.helo_name or fqdn,
            tls_context=tls_context,
            timeouts=timeouts(settings),
            max_recipients=settings.max_recipients,
            max_messages_per_connection=settings.max_messages_per_connection,
        ),
        fqdn=fqdn,
        helo_name=settings.helo_name,
        mta_sts=settings.mta_sts,
        dane=settings.dane,
        suppression_days=settings.suppression_days,
        throttle=ThrottleRules(
            max_connections=per_host,
            max_messages_per_minute=None
            if settings.max_messages_per_minute is None
            else share_of(settings.max_messages_per_minute),
        ),
        share=share,
        limits=Limits(
            max_message_size=settings.max_message_size,
            max_hop_count=settings.max_hop_count,
            max_connections=share_of(settings.max_connections),
            max_connections_per_host=per_host,
        ),
        ndr_copy_to=settings.ndr_copy_to,
        log_days=settings.log_days,
        masquerade_domain=settings.masquerade_domain,
        pickup_dot_stuffed=settings.pickup_dot_stuffed,
        pickup_settle=timedelta(seconds=settings.pickup_settle),
        pickup_open_warning=timedelta(seconds=settings.pickup_open_warning),
        min_free_space=settings.min_free_space,
    )


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The context for verified STARTTLS with ``tls_ca_file``; ``None`` for the system's."""
    if settings.tls_ca_file is None:
        return None
    check_given(settings.tls_ca_file, what="tls_ca_file")  # a FIFO would hang a SIGHUP
    try:
        return ssl.create_default_context(cafile=settings.tls_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"tls_ca_file {settings.tls_ca_file!r}: {exc}") from None


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
    # dnspython only when it is configured: most services never look anything up (a smart host
    # given by address), and it costs tens of milliseconds at every start.
    import dns.nameserver  # noqa: PLC0415
    import dns.resolver  # noqa: PLC0415

    resolver = dns.resolver.Resolver(configure=False)
    nameservers = []
    for text in servers:
        target = parse_target(text, default_port=53)
        if not target.literal:
            raise ConfigurationError(f"dns_servers: {text!r} is not an IP address")
        nameservers.append(dns.nameserver.Do53Nameserver(target.host, target.port))
    resolver.nameservers = nameservers
    return resolver


_DKIM_KEYS = frozenset(
    {"selector", "key_file", "algorithm", "canonicalization", "expire_after", "headers", "oversign"}
)


def dkim_policy(settings: Settings) -> DkimPolicy | None:
    """The ``[spoolmail.dkim."DOMAIN"]`` tables as a policy (``None``: no signing).

    Reads the key files: call it before dropping root, so that a key only root may read works.
    """
    if not settings.dkim:
        return None
    return DkimPolicy(
        _dkim_signer(domain, table)
        for domain, entry in settings.dkim.items()
        for table in (entry if isinstance(entry, list) else [entry])
    )


def check_dkim(settings: Settings) -> list[str]:
    """Build :func:`dkim_policy` as ``run`` would, and drop it (``spoolmail config``): a table
    or key that ``run`` would refuse is its ``ConfigurationError``. A key file this process
    may not read (``run`` reads them as root, before it drops privileges) is no error here:
    what was not checked is returned, to be said."""
    if not settings.dkim:
        return []
    unread: list[str] = []
    signers: list[DkimSigner] = []
    for domain, entry in settings.dkim.items():
        for table in entry if isinstance(entry, list) else [entry]:
            key_file = table.get("key_file") if isinstance(table, Mapping) else None
            if (
                isinstance(key_file, str)
                and os.path.exists(key_file)
                and not os.access(key_file, os.R_OK)
            ):
                unread.append(
                    f'dkim."{domain}": key_file {key_file!r} not read (no permission here); '
                    "run reads it before it drops root"
                )
                continue
            signers.append(_dkim_signer(domain, table))
    if signers:
        DkimPolicy(signers)  # what it refuses across tables (two signers for one selector...)
    return unread


# A PEM private key is a few KiB (an RSA key of 16384 bits about 13).
_MOST_KEY_BYTES = 64 * 1024


def _dkim_signer(domain: str, table: Mapping[str, object]) -> DkimSigner:
    where = f'dkim."{domain}"'
    unknown = sorted(set(table) - _DKIM_KEYS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}")
    selector, key_file = table.get("selector"), table.get("key_file")
    if not isinstance(selector, str) or not isinstance(key_file, str):
        raise ConfigurationError(f"{where}: selector and key_file (strings) are required")
    try:
        pem = read_given(key_file, what="key_file", most=_MOST_KEY_BYTES)
    except OSError as exc:
        raise ConfigurationError(f"{where}: key_file {key_file!r}: {exc.strerror}") from None
    except ConfigurationError as exc:  # a FIFO, a device, a log file named by mistake
        raise ConfigurationError(f"{where}: {exc}") from None
    try:
        key = DkimKey.from_pem(pem)
    except ConfigurationError as exc:  # no private key, encrypted, too short: which file
        raise ConfigurationError(f"{where}: key_file {key_file!r}: {exc}") from None
    try:
        wanted = DkimAlgorithm(str(table.get("algorithm", key.algorithm.value)))
        header, _, body = str(table.get("canonicalization", "relaxed/relaxed")).partition("/")
        header_c, body_c = Canonicalization(header), Canonicalization(body or header)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if wanted is not key.algorithm:
        raise ConfigurationError(
            f"{where}: key_file holds a {key.algorithm.value} key, not {wanted.value}"
        )
    expire = table.get("expire_after")
    headers, oversign = (
        table.get("headers", SIGNED_FIELDS),
        table.get("oversign", OVERSIGNED_FIELDS),
    )
    for name, value in (("headers", headers), ("oversign", oversign)):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigurationError(f"{where}.{name}: a list of header field names")
    # Its own error names the key already: outside the try below, which would name it again.
    expire_after = (
        parse_duration(str(expire), what=f"{where}.expire_after") if expire is not None else None
    )
    try:
        return DkimSigner(
            key,
            domain=domain,
            selector=selector,
            headers=tuple(headers),  # type: ignore[arg-type]
            oversign=tuple(oversign),  # type: ignore[arg-type]
            header_canonicalization=header_c,
            body_canonicalization=body_c,
            expire_after=expire_after,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
