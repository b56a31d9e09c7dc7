"""Every ``--help`` ends with an example (issue 16), and every example names a real command."""

from __future__ import annotations

import io
import shlex

import pytest

from spoolmail._cli.examples import EXAMPLES, commands
from spoolmail._cli.main import _parser, main

PATHS = [path for path, _ in commands(_parser())]


def test_every_command_has_an_example_and_no_example_is_stale() -> None:
    assert sorted(EXAMPLES) == sorted(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p or "spoolmail")
def test_help_ends_with_the_example(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main([*path.split(), "--help"], out=out) == 0
    text = out.getvalue() or capsys.readouterr().out
    assert text.rstrip().endswith(EXAMPLES[path][-1])
    assert "example" in text.rstrip().splitlines()[-1 - len(EXAMPLES[path])]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p or "spoolmail")
def test_the_example_parses(path: str) -> None:
    """Each example is a command line the parser takes (not run: some would send mail)."""
    for line in EXAMPLES[path]:
        words = shlex.split(line.split("|")[-1].split("<")[0].split(">>")[0])
        assert words[0] == "spoolmail"
        if words[1:2] == ["sendmail"]:
            continue  # Postfix's option rules, parsed by the sendmail command itself
        _parser().parse_args(words[1:])
