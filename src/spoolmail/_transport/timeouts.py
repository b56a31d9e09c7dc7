"""How long the SMTP client waits at each step: :class:`SmtpTimeouts`, a checked value.

It holds numbers only; the protocol names the one that bounds each reply it awaits, and the
socket session turns that into a deadline. It reads no clock and touches no socket.
"""

from __future__ import annotations

import attrs

from spoolmail.exceptions import ConfigurationError

__all__ = ["RFC_TIMEOUTS", "SmtpTimeouts"]


#: The longest wait, in seconds (7 days): the client waits in ``poll``, whose milliseconds
#: are a C int (24.8 days), and a socket timeout of 1e300 overflows.
MOST = 7 * 86400.0


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"SmtpTimeouts.{attribute.name} must be above 0 s, not {value!r}")
    _at_most(attribute, value)


def _not_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ConfigurationError(f"SmtpTimeouts.{attribute.name} cannot be negative: {value!r}")
    _at_most(attribute, value)


def _at_most(attribute: attrs.Attribute[float], value: float) -> None:
    if value > MOST:
        raise ConfigurationError(
            f"SmtpTimeouts.{attribute.name} must be {MOST:.0f} s (7 days) or less, not {value!r}"
        )


def _float(value: float) -> float:
    """``float``, as a function of ours: attrs reads each converter's signature when it builds
    the class, which for a builtin means parsing its text signature, about half a millisecond
    a field at every start of every command (13 fields here)."""
    return float(value)


@attrs.frozen(kw_only=True)
class SmtpTimeouts:
    """How long to wait at each step, in seconds.

    The defaults are RFC 5321 §4.5.3.2's minimums. ``connect`` (30 s, Postfix's
    ``smtp_connect_timeout``), ``rset`` (20 s, Postfix's ``smtp_rset_timeout``) and ``quit`` are not
    in the RFC: RSET only probes a kept connection, and a 221 to QUIT decides nothing, so neither is
    worth minutes. ``starttls`` bounds the reply to STARTTLS and each wait of the TLS handshake
    (300 s, Postfix's ``smtp_starttls_timeout``); ``auth`` each reply during AUTH (RFC 4954 sets
    none; as long as EHLO's). ``idle`` is how long an unused connection is kept for the next
    message to the same host (0: never keep one).
    """

    connect: float = attrs.field(default=30.0, converter=_float, validator=_positive)
    greeting: float = attrs.field(default=300.0, converter=_float, validator=_positive)  # 4.5.3.2.1
    ehlo: float = attrs.field(default=300.0, converter=_float, validator=_positive)
    mail: float = attrs.field(default=300.0, converter=_float, validator=_positive)  # §4.5.3.2.2
    rcpt: float = attrs.field(default=300.0, converter=_float, validator=_positive)  # §4.5.3.2.3
    data_start: float = attrs.field(default=120.0, converter=_float, validator=_positive)  # .2.4
    data_block: float = attrs.field(default=180.0, converter=_float, validator=_positive)  # .2.5
    data_end: float = attrs.field(default=600.0, converter=_float, validator=_positive)  # .2.6
    starttls: float = attrs.field(default=300.0, converter=_float, validator=_positive)
    auth: float = attrs.field(default=300.0, converter=_float, validator=_positive)
    rset: float = attrs.field(default=20.0, converter=_float, validator=_positive)
    quit: float = attrs.field(default=5.0, converter=_float, validator=_positive)
    idle: float = attrs.field(default=30.0, converter=_float, validator=_not_negative)


RFC_TIMEOUTS = SmtpTimeouts()
