"""Who may connect to the inbound listener, and for whom it takes mail: IIS's two dialogs as values.

IIS's SMTP virtual server had a "Connection" dialog (which clients may open a session at all)
and a "Relay" dialog (which clients may send mail to domains that are not local), and its
default for relaying was **nobody**: mail for a local or alias domain is taken from anyone,
mail for any other domain only from a client in the relay networks or one that authenticated
(IIS's "Allow all computers which successfully authenticate to relay"). Everyone else gets
``550 5.7.1 Unable to relay`` at RCPT, so the listener is never an open relay.

:class:`AccessPolicy` holds the networks; :meth:`AccessPolicy.admits` and
:meth:`AccessPolicy.rcpt_verdict` are the two decisions, from values alone (a client address,
whether the session authenticated, whether the recipient's domain is local as the
:class:`~spoolmail.Router` says). Pure: no sockets, no DNS, no clock; the listener asks, and does
what the answer says.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable

import attrs

from spoolmail.exceptions import ConfigurationError

__all__ = ["AccessPolicy", "IPAddress", "IPNetwork", "RcptVerdict", "client_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RcptVerdict(enum.Enum):
    """What RCPT TO gets: taken for Drop, taken to be relayed, or refused (550 5.7.1)."""

    LOCAL = "local"
    RELAY = "relay"
    REFUSED = "refused"


def client_address(text: str) -> IPAddress:
    """A client's address as the decisions compare it: an IPv4-mapped IPv6 address
    (``::ffff:192.0.2.7``, what a dual-stack socket reports) is the IPv4 address it maps,
    and an IPv6 zone (``fe80::1%eth0``) is dropped."""
    address = ipaddress.ip_address(text.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network(text: str, setting: str) -> IPNetwork:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigurationError(
            f"{setting}: {text!r} is not an address or a network (192.0.2.0/24, 2001:db8::/32)"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        # ::ffff:192.0.2.0/120 means 192.0.2.0/24: compare as client_address() does.
        mapped = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    return network


def _networks(values: Iterable[str | IPNetwork], setting: str) -> tuple[IPNetwork, ...]:
    if isinstance(values, str):
        values = [values]
    return tuple(
        v if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network) else _network(v, setting)
        for v in values
    )


def _allowed(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return _networks(values, "allowed_clients")


def _denied(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return _networks(values, "denied_clients")


def _relaying(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return _networks(values, "relay_networks")


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


@attrs.frozen(kw_only=True)
class AccessPolicy:
    """The Connection and Relay dialogs: networks given as ``"192.0.2.0/24"``, ``"::1"``.

    - ``allowed_clients``: when not empty, only these may connect (IIS "Only the list below");
    - ``denied_clients``: these may not, whatever the allowed list says (IIS "All except the
      list below"; a deny wins over an allow, as in an access list read most specific first);
    - ``relay_networks``: these may send mail to any domain (IIS's relay list, empty by default:
      nobody relays); an authenticated session may as well.
    """

    allowed_clients: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_allowed)
    denied_clients: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_denied)
    relay_networks: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_relaying)

    def admits(self, client: IPAddress) -> bool:
        """Whether ``client`` may open a session (else ``554 5.7.1`` at connect)."""
        if _within(client, self.denied_clients):
            return False
        return not self.allowed_clients or _within(client, self.allowed_clients)

    def rcpt_verdict(self, *, local: bool, client: IPAddress, authenticated: bool) -> RcptVerdict:
        """RCPT TO for a recipient whose domain is ``local`` (Router.is_local) or not."""
        if local:
            return RcptVerdict.LOCAL
        if authenticated or _within(client, self.relay_networks):
            return RcptVerdict.RELAY
        return RcptVerdict.REFUSED
