"""The ``spoolmail`` examples in ``docs/*.md`` run, in order, and print what the page says.

Every fenced block tagged ``console`` is a session: a line starting with ``$ spoolmail`` is a
command, the lines up to the next ``$`` line are its expected output (stdout and stderr, in
order). A command ending in ``<<EOF`` reads the lines up to ``EOF`` as its standard input, as in
a shell. All blocks of one page run in one empty folder, so the page's first commands make the
state the later ones rely on and the default ``./MailRoot`` is used, as a reader would.

A few file commands may set the scene (``mkdir``, ``printf ... > file``, ``cp``, ``mv``, ``ls``,
``cat``, ``chmod``, ``touch``): they run in ``sh`` in the same folder, must exit 0, and may name
only relative paths inside it, so a page cannot reach outside its folder.

In expected output:

- ``...`` matches anything, across lines too (doctest's ELLIPSIS);
- ``$NAME`` (capitals) matches a queue id the first time and is then bound to it, in later
  commands and later output alike, so ``$ spoolmail queue show $LUNCH`` works;
- runs of spaces are one space, so a page can pad ``$LUNCH`` to line a table up;
- a line starting ``spoolmail: `` is an error message: the command must then exit non-zero,
  and without one it must exit 0.

The clock of the examples starts at 2026-11-28 10:00 UTC and moves a millisecond each time it is
read, so the times a page shows are stable and ids sort in the order the commands ran.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import spoolmail._cli.daemon as cli_daemon
import spoolmail._cli.main as cli
import spoolmail._store.spool as spool_module
import spoolmail._store.submission as submission_module
from spoolmail import Durability, Pickup, Spool

DOCS = Path(__file__).resolve().parent.parent / "docs"

_BLOCK = re.compile(r"^```console[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_TOKEN = re.compile(r"\.\.\.|\$([A-Z][A-Z0-9_]*)")
_HEREDOC = re.compile(r"\s*<<\s*'?([A-Z]+)'?\s*$")
_ID = r"[A-Za-z0-9_-]+"  # the queue id alphabet (spoolmail._core.ids)
# File commands a page may use to set the scene (a folder copied from Windows, a file written by
# another program); nothing that installs, fetches or changes users.
_SHELL_COMMANDS = frozenset({"cat", "chmod", "cp", "ls", "mkdir", "mv", "printf", "touch"})


@dataclass
class Example:
    line: int  # in the page, 1-based, of the "$" line
    command: str
    stdin: str | None
    expected: str


def examples(text: str) -> Iterator[Example]:
    for block in _BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).splitlines()
        index = 0
        while index < len(lines):
            if not lines[index].startswith("$ "):
                raise AssertionError(
                    f"line {first + index}: a console block starts with a '$ ' command, "
                    f"not {lines[index]!r}"
                )
            start, command, stdin = index, lines[index][2:], None
            index += 1
            heredoc = _HEREDOC.search(command)
            if heredoc:
                command = command[: heredoc.start()]
                end = lines.index(heredoc.group(1), index)
                stdin = "".join(f"{line}\n" for line in lines[index:end])
                index = end + 1
            output = []
            while index < len(lines) and not lines[index].startswith("$ "):
                output.append(lines[index])
                index += 1
            yield Example(first + start, command, stdin, "\n".join(output))


def normalized(text: str) -> str:
    lines = (
        re.sub(r"[ \t]+", " ", line).strip() for line in text.replace("\r\n", "\n").split("\n")
    )
    return "\n".join(lines).strip("\n")


def pattern(expected: str, bound: dict[str, str]) -> re.Pattern[str]:
    parts, seen, position = [], set(), 0
    for token in _TOKEN.finditer(expected):
        parts.append(re.escape(expected[position : token.start()]))
        name = token.group(1)
        if name is None:
            parts.append(".*?")
        elif name in bound:
            parts.append(re.escape(bound[name]))
        elif name in seen:
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>{_ID})")
        position = token.end()
    parts.append(re.escape(expected[position:]))
    return re.compile("".join(parts), re.DOTALL)


def substitute(text: str, bound: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)
        return bound.get(match.group(1), match.group(0))

    return _TOKEN.sub(value, text)


class TickingClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def run_shell(example: Example, bound: dict[str, str]) -> str:
    """A scene-setting file command, in ``sh`` in the current (the page's) folder."""
    command = substitute(example.command, bound)
    words = shlex.split(command)
    outside = [w for w in words if w.startswith(("/", "~")) or ".." in w.split("/")]
    if outside:
        raise AssertionError(f"line {example.line}: paths outside the page's folder: {outside}")
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        input=example.stdin or "",
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    actual = normalized(done.stdout + done.stderr)
    match = pattern(normalized(example.expected), bound).fullmatch(actual)
    if done.returncode != 0 or match is None:
        raise AssertionError(
            f"line {example.line}: $ {example.command}\nexit status {done.returncode}, "
            f"output:\n{actual}"
        )
    bound.update(match.groupdict())
    return actual


def run(example: Example, bound: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    argv = shlex.split(substitute(example.command, bound))
    if argv[:1] and argv[0] in _SHELL_COMMANDS:
        return run_shell(example, bound)
    if argv[:1] != ["spoolmail"]:
        raise AssertionError(f"line {example.line}: only spoolmail commands run: {argv}")
    if argv[1:2] == ["run"] and "--once" not in argv:
        raise AssertionError(f"line {example.line}: 'spoolmail run' needs --once here")
    stdin = io.TextIOWrapper(io.BytesIO((example.stdin or "").encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    output = io.StringIO()
    with contextlib.redirect_stderr(output):
        status = cli.main(argv[1:], out=output)
    actual = normalized(output.getvalue())
    expected = normalized(example.expected)
    match = pattern(expected, bound).fullmatch(actual)
    if match is None:
        diff = "\n".join(
            difflib.unified_diff(
                substitute(expected, bound).splitlines(),
                actual.splitlines(),
                "expected (in the page)",
                "actual",
                lineterm="",
            )
        )
        raise AssertionError(f"line {example.line}: $ {example.command}\n{diff}")
    failed = any(line.startswith("spoolmail: ") for line in expected.splitlines())
    if failed != (status != 0):
        raise AssertionError(
            f"line {example.line}: $ {example.command}\nexit status {status}, expected "
            + ("non-zero (the page shows an error)" if failed else "0")
        )
    bound.update(match.groupdict())
    return actual


def pages() -> list[Path]:
    """Every page with console examples, in docs/ and its folders (tutorials, how-to guides),
    but not the built site."""
    return sorted(
        page
        for page in DOCS.rglob("*.md")
        if not page.relative_to(DOCS).parts[0].startswith("_")
        and _BLOCK.search(page.read_text(encoding="utf-8"))
    )


def test_some_page_has_console_examples() -> None:
    assert "operations.md" in [page.name for page in pages()]


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.relative_to(DOCS).as_posix())
def test_console_examples(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    clock = TickingClock()

    class TickingSpool(Spool):
        def __init__(self, location: Any = "MailRoot", **kwargs: Any) -> None:
            super().__init__(location, clock=clock, durability=Durability.NONE, **kwargs)

    class TickingPickup(Pickup):
        def __init__(self, location: Any = "MailRoot", **kwargs: Any) -> None:
            super().__init__(location, clock=clock, fsync=False, **kwargs)

    # The commands import the spool when they run (spoolmail._cli.main), from its module;
    # ``run`` imports it with its own module.
    for module in (spool_module, cli_daemon):
        monkeypatch.setattr(module, "Spool", TickingSpool)
    monkeypatch.setattr(submission_module, "Pickup", TickingPickup)
    bound: dict[str, str] = {}
    for example in examples(page.read_text(encoding="utf-8")):
        run(example, bound, monkeypatch)


# -- the runner's own rules ------------------------------------------------------------------------


def test_examples_are_split_into_commands_input_and_output() -> None:
    text = (
        "Intro\n\n```console\n$ spoolmail submit --to a@b <<EOF\nSubject: s\n\nbody\nEOF\n"
        "Pickup/...\n$ spoolmail queue\nThe Queue is empty.\n```\n"
    )
    assert list(examples(text)) == [
        Example(4, "spoolmail submit --to a@b", "Subject: s\n\nbody\n", "Pickup/..."),
        Example(10, "spoolmail queue", None, "The Queue is empty."),
    ]


def test_placeholders_bind_once_and_ellipsis_spans_lines() -> None:
    bound: dict[str, str] = {}
    match = pattern(normalized("$ID:   queued\n...\n$ID: done"), bound).fullmatch(
        normalized("1a2-ff: queued\nx\ny\n1a2-ff: done")
    )
    assert match is not None
    assert match.groupdict() == {"ID": "1a2-ff"}
    assert pattern("$ID: done", {"ID": "1a2-ff"}).fullmatch("1a2-ee: done") is None
    assert substitute("spoolmail queue show $ID ...", {"ID": "1a2-ff"}) == (
        "spoolmail queue show 1a2-ff ..."
    )


def test_file_commands_run_in_the_folder_and_stay_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bound: dict[str, str] = {}
    run(Example(1, "mkdir -p a/b && printf 'x\\n' > a/b/c.txt", None, ""), bound, monkeypatch)
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x\n"
    assert run(Example(2, "ls a/b", None, "c.txt"), bound, monkeypatch) == "c.txt"
    for command in ("cat /etc/hostname", "cp ../x y", "ls ~"):
        with pytest.raises(AssertionError, match="outside the page's folder"):
            run(Example(3, command, None, ""), bound, monkeypatch)
    with pytest.raises(AssertionError, match="only spoolmail commands run"):
        run(Example(4, "pip install spoolmail", None, ""), bound, monkeypatch)
