"""The settings reference, written from the settings table (``settings.Key`` on each field).

Three texts are made from it: the example settings file in ``settings.py``'s docstring,
``docs/settings.md`` (every key: type, default, flag, IIS console name, SIGHUP, what it does)
and the two SIGHUP lists in ``docs/running-as-a-service.md``. ``python -m
spoolmail._cli.reference --write`` rewrites the three in place; ``--check`` exits 1 when one
differs from the code (``tests/cli/test_reference.py`` fails then too). Reads and writes those
files only, and only when run as a program.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from spoolmail._cli import settings as settings_module
from spoolmail._cli.config import _toml
from spoolmail._cli.settings import Key, default_of, keys

__all__ = [
    "Generated",
    "generated_texts",
    "render_example",
    "render_page",
    "render_reload_lists",
]

_SOURCE = Path(settings_module.__file__)
_DOCS = Path(__file__).resolve().parents[3] / "docs"


def _shown(field_default: object, key: Key) -> object:
    return key.example if key.example is not None else field_default


def render_example() -> str:
    """The example settings file of the docstring: each key's description, then the key."""
    lines = ["    [spoolmail]"]
    for field, key in keys():
        lines.extend(
            textwrap.wrap(key.doc, width=96, initial_indent="    # ", subsequent_indent="    # ")
        )
        lines.append(f"    {field.name} = {_toml(_shown(default_of(field), key))}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(field_default: object, key: Key) -> str:
    if key.secret:
        return "not set"
    if field_default is None:
        return "not set"
    if field_default in ((), {}):
        return "none"
    return f"`{_cell(_toml(field_default))}`"


def _flag(key: Key) -> str:
    if key.flag is None:
        return "none"
    value = "" if key.kind.name == "boolean" else f" {key.metavar or 'VALUE'}"
    repeat = " (repeat)" if key.repeat else ""
    return f"`{key.flag}{value}`{repeat}"


_PAGE_HEAD = """\
# Settings

Every setting of the `spoolmail` command: a key of the `[spoolmail]` table of the settings file
(`--config FILE`) and, but for the password, a flag. A flag wins over the file, the file over
the default; the defaults are the IIS SMTP service's installed values where it had the setting.
`spoolmail config` prints the settings in effect, as a settings file (`--all`: every key),
then checks them as `spoolmail run` would, DKIM keys included: exit status 2 and the reason if
run would refuse them (a key file this user may not read is said as not checked: run reads the
keys as root).

This page is generated from the code (the metadata of `spoolmail._cli.settings.Settings`):
`python -m spoolmail._cli.reference --write` writes it, and `tests/cli/test_reference.py` fails
when it differs. Keys, types and values:

- **duration**: a string with units, `"90m"`, `"12h"`, `"2d"`, `"1h30m"` (s, m, h, d, w);
  `"never"` where the key says so.
- **list of minutes or durations**: `[15, 30, 60, 240]` are minutes, as on IIS's Delivery tab;
  `["15m", "4h"]` works too. The flag takes them comma-separated: `--retry-intervals 15,30,60,240`.
- Times in seconds are numbers: `smtp_data_end_timeout = 600`, at most 604800 (7 days).
- `workers` and `listening_workers` are at most 1024; the settings file is a regular file of
  at most 1 MiB.
- **SIGHUP**: *applied* when `spoolmail run` is sent SIGHUP (at its next tick), or *restart*:
  kept until the service is restarted ([running as a service](running-as-a-service.md#reload)).

The retry keys change the preset chosen with `retry` ([retries](retries.md)): with
`retry = "iis"`, `retry_intervals = [10, 10, 30, 60]` keeps IIS's 12 h delay notice and 2 day
expiry and changes only the intervals. IIS's separate local (Drop) schedule is hourly.

IIS's outbound "Time-out (minutes)" bounded an inactive connection at any step; spoolmail has
the RFC 5321 section 4.5.3.2 timeout of each step (`smtp_*_timeout`, each at the RFC's minimum)
and the time an unused connection is kept for the next message (`smtp_idle_timeout`).

"""


def render_page() -> str:
    """docs/settings.md."""
    rows = [
        "| key | type | default | flag | SIGHUP | IIS console | what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    for field, key in keys():
        rows.append(
            f"| `{field.name}` | {key.kind.name} | {_default(default_of(field), key)} "
            f"| {_flag(key)} | {'restart' if key.restart else 'applied'} "
            f"| {_cell(key.iis or '')} | {_cell(key.doc)} |"
        )
    example = render_example()
    body = textwrap.dedent(example)
    return (
        _PAGE_HEAD
        + "\n".join(rows)
        + "\n\n## Every key, as a settings file\n\n"
        + "The values shown are the defaults, or examples where a key has none.\n\n"
        + "```toml\n"
        + body
        + "```\n"
    )


def render_reload_lists() -> str:
    """The two lists of docs/running-as-a-service.md: what SIGHUP applies, what it cannot."""
    applied = [field.name for field, key in keys() if not key.restart]
    restart = [field.name for field, key in keys() if key.restart]
    return (
        "Applied at the next tick: "
        + ", ".join(f"`{name}`" for name in applied)
        + ".\n\nKept until a restart (a change is logged as needing one): "
        + ", ".join(f"`{name}`" for name in restart)
        + ".\n"
    )


class Generated:
    """A generated block of a file, between two marker lines (or the whole file)."""

    def __init__(self, path: Path, render: str, *, begin: str | None, end: str | None) -> None:
        self.path = path
        self.render = render
        self.begin = begin
        self.end = end

    def _pattern(self) -> re.Pattern[str]:
        begin, end = self.begin or "", self.end or ""
        # The block is every line between the two marker lines, blank lines around it included.
        return re.compile(
            rf"(^{re.escape(begin)}[^\n]*\n)(.*?)(^{re.escape(end)})",
            re.DOTALL | re.MULTILINE,
        )

    def current(self) -> str | None:
        if not self.path.exists():
            return None
        text = self.path.read_text(encoding="utf-8")
        if self.begin is None:
            return text
        found = self._pattern().search(text)
        return found.group(2) if found else None

    def write(self) -> None:
        if self.begin is None:
            self.path.write_text(self.render, encoding="utf-8")
            return
        text = self.path.read_text(encoding="utf-8")
        if not self._pattern().search(text):
            raise SystemExit(f"{self.path}: no {self.begin!r} marker")
        self.path.write_text(
            self._pattern().sub(lambda m: m.group(1) + self.render + m.group(3), text, count=1),
            encoding="utf-8",
        )


def generated_texts() -> list[Generated]:
    """The three texts, with what the code makes of them now."""
    return [
        Generated(
            _SOURCE,
            f"\n{render_example()}\n",
            begin=".. settings-example: begin",
            end=".. settings-example: end",
        ),
        Generated(_DOCS / "settings.md", render_page(), begin=None, end=None),
        Generated(
            _DOCS / "running-as-a-service.md",
            f"\n{render_reload_lists()}\n",
            begin="<!-- reload-lists: begin",
            end="<!-- reload-lists: end -->",
        ),
    ]


def main(argv: Sequence[str]) -> int:
    if list(argv) == ["--write"]:
        for text in generated_texts():
            if text.current() != text.render:
                text.write()
                sys.stdout.write(f"wrote {text.path}\n")
        return 0
    if list(argv) == ["--check"]:
        stale = [str(t.path) for t in generated_texts() if t.current() != t.render]
        for path in stale:
            sys.stderr.write(f"{path} differs from the settings table; run --write\n")
        return 1 if stale else 0
    sys.stderr.write("usage: python -m spoolmail._cli.reference --write | --check\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
