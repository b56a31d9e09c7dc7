"""A choice among an enum's members, given as the member or by its value: one reading for all.

Settings that are enums (``TlsPolicy``, ``SmartHostMode``, ``Durability``) are often written as
their names (``"required"``, ``"fsync"``). A string kept as it is would be no member, and the code
that compares members by identity would take it for none of them: ``"required"`` was not
``TlsPolicy.REQUIRED``, so the certificate went unchecked. Pure: no files, no clock.
"""

from __future__ import annotations

import contextlib
import enum
from typing import TypeVar

from spoolmail.exceptions import ConfigurationError

__all__ = ["member_named"]

E = TypeVar("E", bound=enum.Enum)


def member_named(kind: type[E], value: object, what: str) -> E:
    """``value`` as a member of ``kind`` (an enum of strings): the member, or its value as a
    string in any case and without surrounding blanks; anything else a ConfigurationError that
    names ``what`` and the choices."""
    if value.__class__ is kind:
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value.strip().lower())
    choices = ", ".join(repr(member.value) for member in kind)
    raise ConfigurationError(f"{what} is one of {choices}, not {value!r}")
