"""Choosing queued messages by sender and recipient domain: what a filter means, in one place.

``Spool.select``, ``Spool.select_badmail``, ``Spool.flush_queue`` (and the service that carries
out its trigger) and the command line's ``--sender`` and ``--domain`` all read a filter here. A
filter is read as the intake reads what it compares with: a sender as a sender address
(``Bob <bob@example.com>`` is ``bob@example.com``, ``<>`` the null sender of DSNs, ``@example.com``
every sender at that domain), a domain as a recipient's domain (lower case, IDN and address
literals canonical, a root dot dropped). One that no message could match, because it is no address
or no domain, is a :class:`~spoolmail.exceptions.ConfigurationError` naming what is wrong: a typo
must not look like an empty Queue. Pure: no files, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import attrs

from spoolmail._core.address import AddressRole, parse_domain, parse_mailbox
from spoolmail._core.envelope import Envelope, Recipient
from spoolmail.exceptions import ConfigurationError, MessageError

__all__ = ["DomainMatch", "Selection", "domain_filter", "sender_filter"]

DomainMatch = Literal["any", "all"]


def sender_filter(text: str) -> str:
    """A sender filter as it is compared: ``""`` for the null sender (``""`` or ``<>``),
    ``@domain`` for every sender at a domain, else the address as the intake reads a sender."""
    given = text.strip()
    if given.startswith("@"):
        return "@" + domain_filter(given[1:])
    if given in ("", "<>"):
        return ""
    try:
        return parse_mailbox(given, default_domain=None, role=AddressRole.SENDER)
    except MessageError as exc:
        raise ConfigurationError(str(exc)) from None


def domain_filter(text: str) -> str:
    """A recipient domain filter as it is compared (``@`` before it and a root dot after it
    allowed); canonical as the intake writes a recipient's domain."""
    given = text.strip().removeprefix("@").removesuffix(".")
    if not given:
        raise ConfigurationError(f"{text!r} is not a domain: it is empty")
    try:
        return parse_domain(given)
    except MessageError as exc:
        raise ConfigurationError(str(exc)) from None


@attrs.frozen
class Selection:
    """Which messages a filter takes: from a sender (case folded; or any sender at a domain),
    with recipients at a domain (``every``: all of those looked at there, else at least one)."""

    sender: str | None = None
    sender_domain: str | None = None
    domain: str | None = None
    every: bool = False

    @classmethod
    def of(cls, sender: str | None, domain: str | None, match: DomainMatch = "any") -> Selection:
        """The filters read and checked (:func:`sender_filter`, :func:`domain_filter`); ``None``:
        no filter of that kind."""
        if match not in ("any", "all"):
            raise ConfigurationError(f"domain_match is 'any' or 'all', not {match!r}")
        sender_domain = None
        if sender is not None:
            sender = sender_filter(sender)
            if sender.startswith("@"):
                sender_domain, sender = sender[1:], None
            else:
                sender = sender.casefold()
        return cls(
            sender,
            sender_domain,
            None if domain is None else domain_filter(domain),
            every=match == "all",
        )

    @property
    def everything(self) -> bool:
        return self.sender is None and self.sender_domain is None and self.domain is None

    def matches(
        self, envelope: Envelope, recipients: Callable[[Envelope], Sequence[Recipient]]
    ) -> bool:
        """Whether ``envelope`` is chosen, looking at the ``recipients`` of it given."""
        if self.sender is not None and envelope.sender.casefold() != self.sender:
            return False
        if self.sender_domain is not None:
            _, at, domain = envelope.sender.rpartition("@")
            if not at or domain.lower() != self.sender_domain:
                return False
        if self.domain is None:
            return True
        domains = [r.domain for r in recipients(envelope)]
        if self.every:
            return bool(domains) and all(d == self.domain for d in domains)
        return self.domain in domains
