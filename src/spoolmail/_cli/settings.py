"""Settings for the ``spoolmail`` command: IIS defaults, a TOML file, then command-line flags.

A settings file is TOML with one ``[spoolmail]`` table; every key is optional::

    [spoolmail]
    root = "C:/inetpub/mailroot"        # a folder or an FS URL (mem://, osfs://...)
    fqdn = "mail.example.com"
    local_domains = ["example.com"]     # the first is the default domain
    alias_domains = ["example.org"]
    catch_all = false                   # true: capture mode, every recipient lands in Drop
    smart_host = "relay.example.net:25" # or "[192.0.2.1]"; unset: remote mail goes to the MX hosts
    smart_host_mode = "always"          # always, or fallback: MX first, the smart host on failure
    smart_host_user = "relay-user"      # AUTH to the smart host (over TLS only); the password
    smart_host_password = "secret"      #   may come from SPOOLMAIL_SMART_HOST_PASSWORD instead
    routes = { "partner.example" = "[192.0.2.7]:2525" }   # a domain's own host
    tls = "opportunistic"               # never, opportunistic, encrypt or required (verified)
    tls_domains = { "bank.example" = "required" }
    tls_ca_file = "/etc/ssl/certs/ca-certificates.crt"   # trust for "required" (default: system)
    dns_servers = ["192.0.2.53", "[2001:db8::53]:5353"]  # default: the system's resolver
    smtp_port = 25                      # the port MX hosts are reached on
    masquerade_domain = "example.com"   # replaces a local domain in MAIL FROM when sending out
    max_connections = 20                # messages attempted at once
    max_connections_per_host = 10
    max_recipients = 100                # RCPT TO per SMTP transaction (IIS: 100)
    retry = "iis"                       # iis, postfix, qmail or exim
    max_message_size = 2097152          # bytes (IIS 2,048 KB)
    max_hop_count = 15
    ndr_copy_to = "pm@example.com"      # a copy of every failure DSN (IIS "Send copy of NDR to")
    pickup_dot_stuffed = false          # true: un-stuff leading dots as IIS 5+ did
    poll_interval = 1.0                 # seconds between looks at Pickup
    pickup_settle = 2.0                 # seconds a file must stay unchanged where no lease or
                                        # inotify tells that its writer is done
    pickup_open_warning = 3600          # seconds a file may stay open for writing before a warning
    min_free_space = 104857600          # bytes; Pickup waits below it (queue_minfree); 0: off
    log_days = 30                       # days the mail log (Log/) keeps; 0: no mail log
    user = "spoolmail"                  # started as root, run as this user (or "user:group")

    # The SMTP listener (spoolmail run or spoolmail listen). No listen: nothing listens.
    listen = ["127.0.0.1:2525", "[::1]:2525"]   # ADDRESS:PORT; port 25 as root, then user
    relay_networks = ["192.0.2.0/24"]   # may send to any domain (default: nobody relays)
    listen_allow = []                   # when not empty, only these clients may connect
    listen_deny = ["203.0.113.0/24"]    # these may not (a deny wins)
    tls_certificate = "/etc/spoolmail/cert.pem"   # STARTTLS
    tls_key = "/etc/spoolmail/key.pem"
    auth_file = "/etc/spoolmail/passwd"  # AUTH over TLS: lines from spoolmail listen-passwd
    max_sessions = 100                  # concurrent SMTP sessions
    listen_timeout = 300                # seconds a client may stay silent (RFC 5321 4.5.3.2.7)
    listen_reuse_port = false           # true: several processes share the port (SO_REUSEPORT)

The listener also applies ``max_message_size``, ``max_recipients`` (per message) and
``min_free_space`` (``452 4.3.1`` below it).

Unknown keys and wrong types are errors that name the key. Reads files; builds nothing.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from spoolmail._service.service import MIN_FREE_SPACE
from spoolmail.exceptions import ConfigurationError

__all__ = ["RETRY_PRESETS", "TLS_POLICIES", "Settings", "load_settings"]

RETRY_PRESETS = ("iis", "postfix", "qmail", "exim")
TLS_POLICIES = ("never", "opportunistic", "encrypt", "required")


def _one_of(name: str, choices: tuple[str, ...]) -> Any:
    def check(_instance: object, _attribute: object, value: str | None) -> None:
        if value is not None and value not in choices:
            raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, not {value!r}")

    return check


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ConfigurationError(f"{attribute.name} must be positive, not {value!r}")


def _not_negative(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigurationError(f"{attribute.name} must be 0 or more, not {value!r}")


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
    catch_all: bool = False
    smart_host: str | None = None
    smart_host_mode: str | None = attrs.field(
        default=None, validator=_one_of("smart_host_mode", ("always", "fallback"))
    )
    smart_host_user: str | None = None
    smart_host_password: str | None = attrs.field(default=None, repr=False)
    routes: Mapping[str, str] = attrs.field(factory=dict)
    tls: str = attrs.field(default="opportunistic", validator=_one_of("tls", TLS_POLICIES))
    tls_domains: Mapping[str, str] = attrs.field(factory=dict)
    tls_ca_file: str | None = None
    dns_servers: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    smtp_port: int = attrs.field(default=25, validator=_positive)
    masquerade_domain: str | None = None
    max_connections: int = attrs.field(default=20, validator=_positive)
    max_connections_per_host: int = attrs.field(default=10, validator=_positive)
    max_recipients: int = attrs.field(default=100, validator=_positive)
    retry: str = attrs.field(default="iis", validator=_preset)
    max_message_size: int = attrs.field(default=2 * 1024 * 1024, validator=_positive)
    max_hop_count: int = attrs.field(default=15, validator=_positive)
    ndr_copy_to: str | None = None
    pickup_dot_stuffed: bool = False
    poll_interval: float = attrs.field(default=1.0, validator=_positive)
    pickup_settle: float = attrs.field(default=2.0, validator=_not_negative)
    pickup_open_warning: float = attrs.field(default=3600.0, validator=_positive)
    min_free_space: int = attrs.field(default=MIN_FREE_SPACE, validator=_not_negative)
    log_days: int = attrs.field(default=30, validator=_not_negative)
    user: str | None = None
    listen: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    relay_networks: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    listen_allow: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    listen_deny: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    tls_certificate: str | None = None
    tls_key: str | None = None
    auth_file: str | None = None
    max_sessions: int = attrs.field(default=100, validator=_positive)
    listen_timeout: float = attrs.field(default=300.0, validator=_positive)
    listen_reuse_port: bool = False


_TYPES: Mapping[str, tuple[type, ...]] = {
    "root": (str,),
    "fqdn": (str,),
    "local_domains": (list,),
    "alias_domains": (list,),
    "catch_all": (bool,),
    "smart_host": (str,),
    "smart_host_mode": (str,),
    "smart_host_user": (str,),
    "smart_host_password": (str,),
    "routes": (dict,),
    "tls": (str,),
    "tls_domains": (dict,),
    "tls_ca_file": (str,),
    "dns_servers": (list,),
    "smtp_port": (int,),
    "masquerade_domain": (str,),
    "max_connections": (int,),
    "max_connections_per_host": (int,),
    "max_recipients": (int,),
    "retry": (str,),
    "max_message_size": (int,),
    "max_hop_count": (int,),
    "ndr_copy_to": (str,),
    "pickup_dot_stuffed": (bool,),
    "poll_interval": (int, float),
    "pickup_settle": (int, float),
    "pickup_open_warning": (int, float),
    "min_free_space": (int,),
    "log_days": (int,),
    "user": (str,),
    "listen": (list,),
    "relay_networks": (list,),
    "listen_allow": (list,),
    "listen_deny": (list,),
    "tls_certificate": (str,),
    "tls_key": (str,),
    "auth_file": (str,),
    "max_sessions": (int,),
    "listen_timeout": (int, float),
    "listen_reuse_port": (bool,),
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
            if isinstance(value, dict) and not all(isinstance(v, str) for v in value.values()):
                raise ConfigurationError(f"{path}: setting {key!r} must map names to strings")
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigurationError(str(exc)) from exc
