"""Routing: where each recipient's mail goes.

The :class:`Router` answers, per recipient address, with a :class:`Route`: local (the Drop folder,
for the local and alias domains, every address accepted as IIS did), SMTP to an ordered list of
:class:`Target` hosts (the smart host), or nowhere yet (a temporary :class:`Reply` saying why).
Recipients with equal routes travel together: one SMTP transaction per message and destination.
Pure: no DNS, no sockets; it reads only its own settings.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable

import attrs

from spoolmail._core.reply import Reply
from spoolmail.exceptions import ConfigurationError

__all__ = ["Route", "RouteKind", "Router", "Target", "parse_target"]

_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+$")
SMTP_PORT = 25


@attrs.frozen
class Target:
    """One host to open an SMTP connection to. ``literal`` means an IP address: no DNS lookup."""

    host: str
    port: int = SMTP_PORT
    literal: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.literal else self.host
        return f"{host}:{self.port}"


def parse_target(text: str, *, default_port: int = SMTP_PORT) -> Target:
    """Parse a smart host as IIS took it: ``host``, ``host:port``, ``[192.0.2.1]``, ``[::1]:2525``.

    Square brackets around an address mean "no DNS lookup" (KB Q303734, Q276347).
    """
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
    if not _HOST.match(host):
        raise ConfigurationError(f"smart host {text!r}: {host!r} is not a host name")
    return Target(host.rstrip(".").lower(), port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigurationError(f"smart host {whole!r}: port must be 1-65535, not {text!r}")
    return int(text)


class RouteKind(enum.Enum):
    LOCAL = "local"
    SMTP = "smtp"
    NONE = "none"


@attrs.frozen
class Route:
    """Where one recipient goes. Recipients whose routes are equal share a delivery."""

    kind: RouteKind
    targets: tuple[Target, ...] = ()
    reply: Reply | None = attrs.field(default=None, eq=False)

    @property
    def description(self) -> str:
        if self.kind is RouteKind.LOCAL:
            return "local delivery to Drop"
        if self.kind is RouteKind.SMTP:
            return "SMTP to " + ", ".join(str(t) for t in self.targets)
        return "no route"


def _target(value: Target | str | None) -> Target | None:
    return parse_target(value) if isinstance(value, str) else value


def _domains(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    return tuple(dict.fromkeys(v.strip().rstrip(".").lower() for v in values if v.strip()))


@attrs.frozen
class Router:
    """Routes recipients: local and alias domains to Drop, everything else to the smart host.

    ``Router(local_domains=["example.com"], alias_domains=["example.org"], smart_host="mx:2525")``.
    Without a smart host, remote recipients wait in the Queue with a temporary reply saying so
    (MX routing is not part of this release).
    """

    local_domains: tuple[str, ...] = attrs.field(default=("localhost",), converter=_domains)
    alias_domains: tuple[str, ...] = attrs.field(default=(), converter=_domains)
    smart_host: Target | None = attrs.field(default=None, converter=_target)

    def __attrs_post_init__(self) -> None:
        if not self.local_domains:
            raise ConfigurationError(
                "a Router needs at least one local domain (IIS's default domain)"
            )

    @property
    def default_domain(self) -> str:
        """The first local domain: it completes an address without one (IIS's "default domain")."""
        return self.local_domains[0]

    def is_local(self, domain: str) -> bool:
        domain = domain.rstrip(".").lower()
        return domain in self.local_domains or domain in self.alias_domains

    def route(self, address: str) -> Route:
        domain = address.rpartition("@")[2]
        if self.is_local(domain):
            return Route(RouteKind.LOCAL)
        if self.smart_host is not None:
            return Route(RouteKind.SMTP, (self.smart_host,))
        return Route(
            RouteKind.NONE,
            reply=Reply(
                451,
                "4.4.0",
                f"no route to {domain}: it is not a local domain and no smart host is set "
                "(direct MX delivery is not available in this release)",
            ),
        )
