"""MX rules: which mail exchangers of a domain to try, and in which order (RFC 5321 section 5.1).

:func:`order_exchanges` takes a domain's MX records as plain ``(preference, exchange)`` pairs, the
names this host goes by and a random source, and returns the exchange names to try, best first, or
the :class:`~spoolmail._core.reply.Reply` saying why there is none: a null MX (RFC 7505) or mail
that would loop back to this host. :func:`no_exchange` phrases the verdict when no exchanger has a
usable address. The DNS adapter (``spoolmail._transport.dns``) asks the questions and hands the
answers in; this module only decides. Pure: no DNS, no I/O, and the random source is handed in.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from spoolmail._core.reply import Reply, Severity

if TYPE_CHECKING:
    import random

__all__ = ["host_key", "no_exchange", "order_exchanges"]

# How many failures a verdict names; the rest are counted (the transcript has them all).
_NAMED_FAILURES = 3


def host_key(name: str) -> str:
    """A host name as compared: lower case, without the trailing dot (DNS names compare
    case-insensitively, RFC 4343). The root, ``.``, becomes ``""``."""
    return name.strip().rstrip(".").lower()


def order_exchanges(
    domain: str,
    records: Iterable[tuple[int, str]],
    *,
    local_names: Collection[str] = (),
    rng: random.Random,
) -> tuple[str, ...] | Reply:
    """The exchanges of ``domain``'s MX ``records`` in the order to try them, or why none.

    - Lowest preference first; exchanges of equal preference in an order drawn from ``rng``
      (RFC 5321 section 5.1: the client "MUST randomize them to spread the load"). The draw
      depends only on the records, not on the order the DNS answer listed them in, so a seeded
      ``rng`` gives a repeatable order.
    - Only ``.`` (root) exchanges: a null MX, the domain accepts no mail (RFC 7505 section 3):
      556 (RFC 7504 section 3) 5.1.10 (RFC 7505 section 4.1), permanent. A ``.`` beside real
      exchanges is a misconfiguration RFC 7505 section 3 forbids; it is skipped and the real
      ones are used.
    - When one of ``local_names`` is an exchange, it and every exchange of equal or higher
      preference are dropped (RFC 5321 section 5.1), so mail never loops through this host. When
      that leaves none, this host is the best exchange of a domain it does not deliver locally:
      550 5.4.6 (RFC 3463 X.4.6 "routing loop detected"; Postfix: "mail for X loops back to
      myself", 5.4.6, a bounce).
    - Names are compared without case or trailing dot and returned that way (lower case, no dot);
      an exchange listed twice keeps its best preference.

    The records must not be empty: a domain without MX records has the implicit MX (the domain
    itself at preference 0, RFC 5321 section 5.1), which the caller applies.
    """
    best: dict[str, int] = {}
    null_mx = False
    for preference, exchange in records:
        key = host_key(exchange)
        if not key:
            null_mx = True
        elif key not in best or preference < best[key]:
            best[key] = preference
    if not best:
        if not null_mx:
            raise ValueError(
                f"no MX records for {domain}: the caller applies the implicit MX "
                "(RFC 5321 section 5.1)"
            )
        return Reply(556, "5.1.10", f"{domain} does not accept mail (null MX, RFC 7505)")

    local = {key for key in map(host_key, local_names) if key}
    own = [preference for exchange, preference in best.items() if exchange in local]
    if own:
        cutoff = min(own)
        best = {exchange: pref for exchange, pref in best.items() if pref < cutoff}
        if not best:
            return Reply(
                550,
                "5.4.6",
                f"mail for {domain} loops back to myself "
                "(this host is its best MX, RFC 5321 section 5.1)",
            )

    groups: dict[int, list[str]] = {}
    for exchange in sorted(best):
        groups.setdefault(best[exchange], []).append(exchange)
    ordered: list[str] = []
    for preference in sorted(groups):
        group = groups[preference]
        rng.shuffle(group)
        ordered.extend(group)
    return tuple(ordered)


def no_exchange(domain: str, failures: Sequence[Reply]) -> Reply:
    """The verdict when none of ``domain``'s exchangers gave a usable address.

    ``failures`` holds one reply per exchanger tried, saying why it gave none. One temporary
    failure (a lookup that timed out or a server that failed) makes the verdict temporary, 451
    4.4.3: that exchanger may answer later. When every exchanger failed for good (does not exist,
    has no address), the domain cannot be reached: 550 5.4.4 (RFC 3463 X.4.4 "unable to route";
    RFC 5321 section 5.1: unusable MX records "MUST be reported as an error").
    """
    if not failures:
        raise ValueError(f"no_exchange({domain!r}) needs the failure of at least one exchanger")
    temporary = [reply for reply in failures if reply.severity is Severity.TEMPORARY]
    permanent = [reply for reply in failures if reply.severity is not Severity.TEMPORARY]
    named = (temporary + permanent)[:_NAMED_FAILURES]
    reasons = "; ".join(reply.text for reply in named)
    if len(failures) > len(named):
        reasons += f"; and {len(failures) - len(named)} more"
    if temporary:
        return Reply(451, "4.4.3", f"no mail exchanger of {domain} can be reached now: {reasons}")
    return Reply(550, "5.4.4", f"no mail exchanger of {domain} has an address: {reasons}")
