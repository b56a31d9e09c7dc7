"""A wildcard route in the settings file reaches the Router as IIS's remote domain did."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoolmail._cli.assemble import router
from spoolmail._cli.settings import load_settings
from spoolmail.exceptions import ConfigurationError


def settings_file(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "spoolmail.toml"
    path.write_text(f"[spoolmail]\n{line}\n", encoding="utf-8")
    return path


def test_a_wildcard_route_loads_and_routes_the_subdomains(tmp_path: Path) -> None:
    path = settings_file(tmp_path, 'routes = { "*.partner.example" = "[127.0.0.1]:2525" }')
    routing = router(load_settings(path, {}))
    assert routing.route("ann@mx.eu.partner.example").description == "SMTP via [127.0.0.1]:2525"
    assert routing.route("ann@partner.example").description == "SMTP via MX of partner.example"


def test_a_misplaced_wildcard_in_the_file_names_the_setting_and_value(tmp_path: Path) -> None:
    path = settings_file(tmp_path, 'routes = { "a.*.example" = "[127.0.0.1]:2525" }')
    with pytest.raises(ConfigurationError, match=r"^routes: 'a\.\*\.example' is not a domain \("):
        router(load_settings(path, {}))
