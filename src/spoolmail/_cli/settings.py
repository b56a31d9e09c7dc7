"""Settings for the ``spoolmail`` command: IIS defaults, a TOML file, then command-line flags.

A settings file is TOML with one ``[spoolmail]`` table; every key is optional::

    [spoolmail]
    root = "C:/inetpub/mailroot"        # a folder or an FS URL (mem://, osfs://...)
    fqdn = "mail.example.com"
    local_domains = ["example.com"]     # the first is the default domain
    alias_domains = ["example.org"]
    smart_host = "relay.example.net:25" # or "[192.0.2.1]"; unset: remote mail waits in the Queue
    retry = "iis"                       # iis, postfix, qmail or exim
    max_message_size = 2097152          # bytes (IIS 2,048 KB)
    max_hop_count = 15
    ndr_copy_to = "pm@example.com"      # a copy of every failure DSN (IIS "Send copy of NDR to")
    pickup_dot_stuffed = false          # true: un-stuff leading dots as IIS 5+ did
    poll_interval = 1.0                 # seconds between looks at Pickup

Unknown keys and wrong types are errors that name the key. Reads files; builds nothing.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from spoolmail.exceptions import ConfigurationError

__all__ = ["RETRY_PRESETS", "Settings", "load_settings"]

RETRY_PRESETS = ("iis", "postfix", "qmail", "exim")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


def _preset(_instance: object, _attribute: object, value: str) -> None:
    if value not in RETRY_PRESETS:
        raise ConfigurationError(f"retry must be one of {', '.join(RETRY_PRESETS)}, not {value!r}")


@attrs.frozen(kw_only=True)
class Settings:
    """Everything the command needs to assemble a service; defaults are IIS's installed values."""

    root: str = "MailRoot"
    fqdn: str | None = None
    local_domains: tuple[str, ...] = attrs.field(default=("localhost",), converter=tuple)
    alias_domains: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    smart_host: str | None = None
    retry: str = attrs.field(default="iis", validator=_preset)
    max_message_size: int = attrs.field(default=2 * 1024 * 1024, validator=_positive)
    max_hop_count: int = attrs.field(default=15, validator=_positive)
    ndr_copy_to: str | None = None
    pickup_dot_stuffed: bool = False
    poll_interval: float = attrs.field(default=1.0, validator=_positive)


_TYPES: Mapping[str, tuple[type, ...]] = {
    "root": (str,),
    "fqdn": (str,),
    "local_domains": (list,),
    "alias_domains": (list,),
    "smart_host": (str,),
    "retry": (str,),
    "max_message_size": (int,),
    "max_hop_count": (int,),
    "ndr_copy_to": (str,),
    "pickup_dot_stuffed": (bool,),
    "poll_interval": (int, float),
}


def load_settings(path: Path | None, overrides: Mapping[str, object]) -> Settings:
    """Settings from the TOML file at ``path`` (if any), with ``overrides`` (flags given) on top."""
    values: dict[str, object] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"cannot read settings file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"settings file {path} is not valid TOML: {exc}") from exc
        table = document.get("spoolmail")
        if not isinstance(table, dict):
            raise ConfigurationError(f"settings file {path} needs a [spoolmail] table")
        for key, value in table.items():
            kinds = _TYPES.get(key)
            if kinds is None:
                known = ", ".join(sorted(_TYPES))
                raise ConfigurationError(f"{path}: unknown setting {key!r} (known: {known})")
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigurationError(
                    f"{path}: setting {key!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                    f"not {value!r}"
                )
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise ConfigurationError(f"{path}: setting {key!r} must be a list of strings")
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigurationError(str(exc)) from exc
