"""``spoolmail config``: the settings in effect, as a settings file (Postfix's ``postconf -n``).

Prints a ``[spoolmail]`` table of the keys whose values differ from the defaults (every key with
``--all``), in the order of the settings table, from the settings file and the flags given, so
``spoolmail --config FILE config --max-connections 5`` shows what ``run`` with the same flags
would use. A secret (the smart host's password) is never printed: a comment says whether one is
set. A key not set, whose default is decided elsewhere (this machine's name, the retry
preset's schedule), is a comment under ``--all``. The output is TOML that
:func:`~spoolmail._cli.settings.load_settings` reads back to the same settings, the secret
aside. Then it builds what ``run`` would build from them alone (``assemble.check``: the router,
the retry policies, the timeouts, the CA file, the DKIM signers): a value that the settings'
types take but that ``run`` would refuse (a route ``*``, a CA file that does not load, a DKIM key
file that is missing or holds no usable key) is said on stderr and the status is 2, as
``run``'s would be. A DKIM key file this user may not read (often root's alone: ``run`` reads
it before dropping root) is said on stderr as not checked, and is no error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from spoolmail._cli import flags
from spoolmail._cli.settings import Settings, default_of, keys
from spoolmail._cli.status import EX_OK

__all__ = ["add_command", "render"]


def add_command(commands: Any) -> None:
    """Add ``config`` to the command tree."""
    config = commands.add_parser(
        "config",
        description="Print the settings from the settings file and the flags given as a "
        "[spoolmail] table, like postconf -n: only the keys that differ from the defaults, "
        "or every key with --all. Passwords are never shown. Then check them as spoolmail run "
        "would (routes, domains, retry schedule, timeouts, CA file, DKIM keys): exit status 2 "
        "and the reason on stderr if run would refuse them.",
    )
    config.add_argument("--all", action="store_true", help="every key, defaults too")
    group = config.add_argument_group("settings (as spoolmail run takes them)")
    flags.add_setting_flags(group, [n for n in flags.flag_keys() if n not in _GLOBAL])
    config.set_defaults(handler=_config)


# Keys whose flags are the command's global options (main adds them).
_GLOBAL = frozenset({"root", "log_file", "syslog"})


def _config(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from spoolmail._cli import assemble  # noqa: PLC0415 (the service's parts: only here)

    out.write(render(settings, every=args.all))
    out.flush()  # the table first, then what is wrong with it
    assemble.check(settings)  # a ConfigurationError: the command's usage status and message
    for note in assemble.check_dkim(settings):
        sys.stderr.write(f"spoolmail: {note}\n")
    return EX_OK


def render(settings: Settings, *, every: bool = False) -> str:
    """The ``[spoolmail]`` table of ``settings`` (see the module docstring)."""
    return "".join(f"{line}\n" for line in _lines(settings, every=every))


def _lines(settings: Settings, *, every: bool) -> Iterator[str]:
    yield "[spoolmail]"
    for field, key in keys():
        value = getattr(settings, field.name)
        default = default_of(field)
        if key.secret:
            if value is not None:
                yield f"# {field.name}: set, not shown"
            continue
        if not every and value == default:
            continue
        if value is None:
            yield f"# {field.name} (not set): {key.doc}"
            continue
        yield f"{field.name} = {_toml(value)}"


def _string(text: str) -> str:
    # JSON's escapes are TOML's (\", \\, \n, \uXXXX); TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml(value: object) -> str:  # noqa: PLR0911 (one return per TOML type)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_string(str(k))} = {_toml(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list | tuple):
        return f"[{', '.join(_toml(item) for item in value)}]"
    raise TypeError(f"no TOML for {value!r}")  # pragma: no cover (the settings table's kinds)
