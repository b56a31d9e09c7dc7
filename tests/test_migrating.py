"""``docs/migrating.md``: its settings file loads, and the names it gives exist.

The page's console examples run with the other pages' (``tests/test_docs_commands.py``); here its
TOML example goes through the settings code and the router, as ``spoolmail --config`` would.
"""

from __future__ import annotations

import re
from pathlib import Path

from spoolmail._cli.assemble import router
from spoolmail._cli.main import _parser
from spoolmail._cli.settings import load_settings
from spoolmail._core.routing import SmartHostMode

PAGE = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"
_TOML = re.compile(r"^```toml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def test_the_settings_file_loads(tmp_path: Path) -> None:
    [block] = _TOML.findall(PAGE.read_text(encoding="utf-8"))
    path = tmp_path / "spoolmail.toml"
    path.write_text(block, encoding="utf-8")
    settings = load_settings(path, {})
    assert settings.local_domains == ("example.com",)
    assert (settings.max_message_size, settings.max_hop_count, settings.retry) == (
        2097152,
        15,
        "iis",
    )
    assert settings.pickup_dot_stuffed is False
    routing = router(settings)  # every domain and host in it is one
    assert routing.mode is SmartHostMode.ALWAYS
    assert routing.is_local("example.org")
    assert set(routing.routes) == {"partner.example"}


def test_the_flags_it_names_exist() -> None:
    text = PAGE.read_text(encoding="utf-8")
    run_help = _parser().parse_args(["run", "--pickup-dot-stuffed"])
    assert run_help.pickup_dot_stuffed is True
    assert "`spoolmail run --pickup-dot-stuffed`" in text
    assert _parser().parse_args(["queue", "import-iis", "--dry-run"]).dry_run is True
