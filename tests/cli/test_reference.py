"""The settings reference is the code's: docs/settings.md, the example in ``settings.py``'s
docstring and the SIGHUP lists of docs/running-as-a-service.md are made from the settings table.

When a key changes, this fails; ``python -m spoolmail._cli.reference --write`` writes the three
again (read the diff).
"""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import attrs
import pytest

from spoolmail._cli import flags
from spoolmail._cli.main import _parser
from spoolmail._cli.reference import Generated, generated_texts, render_example, render_page
from spoolmail._cli.settings import Settings, keys, load_settings


@pytest.mark.parametrize("text", generated_texts(), ids=lambda t: t.path.name)
def test_the_generated_text_is_the_code_s(text: Generated) -> None:
    assert text.current() == text.render, (
        f"{text.path} differs from the settings table; run "
        "`python -m spoolmail._cli.reference --write` and read the change"
    )


def test_every_key_is_on_the_page_with_its_flag() -> None:
    page = render_page()
    for field, key in keys():
        assert f"| `{field.name}` |" in page
        if key.flag is not None:
            assert f"`{key.flag}" in page


def test_the_example_is_a_settings_file_that_loads(tmp_path: Path) -> None:
    text = textwrap.dedent(render_example())
    table = tomllib.loads(text)["spoolmail"]
    assert list(table) == [f.name for f in attrs.fields(Settings)]
    path = tmp_path / "example.toml"
    path.write_text(text)
    load_settings(path, {})


def test_every_flag_of_the_table_is_a_flag_of_run_or_a_global_option() -> None:
    """The table's flags are the command's: each parses into its own key."""
    parser = _parser()
    for name, key in flags.flag_keys().items():
        assert key.flag is not None
        value = {"boolean": [], "string or boolean": ["/dev/log"]}.get(key.kind.name, ["1"])
        if key.kind.name in ("list of strings", "table of strings"):
            value = ["a=b"]
        elif key.kind.name == "duration":
            value = ["1h"]
        args = parser.parse_args(["run", key.flag, *value])
        assert name in flags.overrides(args), name


def test_only_the_password_and_the_dkim_tables_have_no_flag() -> None:
    """A password on the command line is seen by every user (ps); DKIM signers are tables."""
    assert [f.name for f, key in keys() if key.flag is None] == ["smart_host_password", "dkim"]
