"""The settings' command-line flags, made from the settings table (``settings.Key``).

:func:`add_setting_flags` gives a parser the flags of the keys it is asked for, each with the
key's own name, help and value type; :func:`overrides` reads what was given back into setting
values (``DOMAIN=HOST`` pairs into a table, ``15,30,60,240`` into a list). A flag that was not
given is absent, so the settings file's value stands. Builds parsers; reads nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

from spoolmail._cli.settings import (
    ADDRESS_OR_FLAG,
    BOOLEAN,
    INTEGER,
    INTERVALS,
    NUMBER,
    TABLE,
    Key,
    keys,
)
from spoolmail.exceptions import ConfigurationError

__all__ = ["add_setting_flags", "flag_keys", "overrides"]


def flag_keys() -> dict[str, Key]:
    """Every key that has a flag, by name, in table order."""
    return {field.name: key for field, key in keys() if key.flag is not None}


def add_setting_flags(
    parser: argparse.ArgumentParser | Any,
    names: Iterable[str],
    *,
    default: object = None,
) -> None:
    """Add the flags of the settings ``names`` to ``parser`` (a parser or an argument group).

    ``default=argparse.SUPPRESS`` leaves a flag that was not given out of the namespace, so
    that the same flag on a subcommand does not undo it given before the subcommand.
    """
    table = flag_keys()
    for name in names:
        key = table[name]
        if key.flag is None:  # pragma: no cover (flag_keys has only keys with a flag)
            continue
        options: dict[str, Any] = {"dest": name, "help": key.doc, "default": default}
        if key.kind is BOOLEAN:
            options.update(action="store_const", const=key.const)
        elif key.kind is ADDRESS_OR_FLAG:
            options.update(nargs="?", const=True, metavar=key.metavar)
        else:
            options["metavar"] = key.metavar
            if key.repeat:
                options["action"] = "append"
                options["help"] += " (repeat)"
            elif key.kind is INTEGER:
                options["type"] = int
            elif key.kind is NUMBER:
                options["type"] = float
        parser.add_argument(key.flag, **options)


def _pairs(items: Iterable[str], flag: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ConfigurationError(f"{flag} takes DOMAIN=VALUE, not {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _intervals(text: str) -> list[object]:
    """``15,30,60,240`` (minutes, IIS's metabase SmtpRemoteProgressiveRetry) or ``15m,1h``."""
    items: list[object] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            number = float(part)
        except ValueError:
            items.append(part)  # a duration such as "4h"; the setting checks it
            continue
        items.append(int(number) if number.is_integer() and "." not in part else number)
    return items


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The setting values the flags in ``args`` give (those not given are left out)."""
    given: Mapping[str, object] = vars(args)
    values: dict[str, object] = {}
    for name, key in flag_keys().items():
        value = given.get(name)
        if value is None:
            continue
        if key.kind is TABLE:
            value = _pairs(value, key.flag or name)  # type: ignore[arg-type]
        elif key.kind is INTERVALS:
            value = _intervals(str(value))
        values[name] = value
    return values
