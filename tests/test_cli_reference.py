"""docs/reference/cli.md is generated from the ``spoolmail`` command's own parser.

Every command and option on the page comes from ``spoolmail._cli.main._parser()`` (sendmail's
options from its own usage text, the exit statuses from ``spoolmail._cli.status``), and each
command links the pages whose executed ``console`` examples run it. When a command, an option or
a help text changes, or a page gains or loses an example, this test fails;
``python tests/test_cli_reference.py --write`` writes the page again (read the diff).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs

from spoolmail._cli import sendmail, status
from spoolmail._cli import settings as settings_module
from spoolmail._cli.examples import EXAMPLES
from spoolmail._cli.main import _parser
from spoolmail._cli.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "reference" / "cli.md"

_CONSOLE = re.compile(r"^```console[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_TITLE = re.compile(r"^# (.+)$", re.MULTILINE)
# Global options that take a value: skipped when a page's command line is matched to a command.
_GLOBAL_WITH_VALUE = {"--root", "--config"}
_COMMENT = re.compile(r"^    (\w+) = .*?  # (\S.*)$", re.MULTILINE)

# What each exit status means; a status the code gains without a line here fails the test.
EXIT_MEANINGS = {
    "EX_OK": "done",
    "EX_FAILED": "failed: no such id, an unreadable envelope, a `run --once` tick with errors, "
    "a MailRoot that is a file or holds a link or FIFO where a message should be",
    "EX_USAGE": "bad usage: an unknown option, ids together with `--all`, `--all` without "
    "`--yes`, a wrong setting or address",
    "EX_TEMPFAIL": "try again later (`EX_TEMPFAIL`): the message is being delivered right now, "
    "or the filesystem failed",
}

HEAD = """\
# Command line

Every `spoolmail` command and option, generated from the command's own parser
(`tests/test_cli_reference.py` writes this page and fails when it differs from the code). An
option that sets a setting of the settings file (`--config`) names its key{settings}. The
examples linked under each command are executed by the test suite, so they show what the command
prints today.

Global options go before the command: `spoolmail [--config FILE] [--root DIR] [-v] COMMAND ...`.
Flags given on the command line win over the settings file, which wins over the defaults (IIS's
installed values).
"""


@attrs.frozen
class Command:
    path: tuple[str, ...]  # ("queue", "flush"); () is spoolmail itself
    summary: str | None
    parser: argparse.ArgumentParser


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), summary: str | None = None
) -> Iterator[Command]:
    """The command tree, depth first, in the order the parser adds the commands."""
    yield Command(path, summary, parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                yield from commands(child, (*path, name), helps.get(name))


def _text(text: str | None) -> str:
    """Help text in a table cell: one line, no table-breaking bar."""
    return " ".join((text or "").split()).replace("|", "\\|")


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return " \\| ".join(f"`{choice}`" for choice in action.choices)
    metavar = action.metavar or action.dest.upper()
    return f"`{metavar}`"


def _setting(action: argparse.Action) -> str:
    names = {field.name for field in attrs.fields(Settings)}
    key = action.dest
    if key.endswith("_items"):  # --route DOMAIN=HOST is one item of the routes table
        key = key.removesuffix("_items") + "s"
    return f"`{key}`" if key in names and action.option_strings else ""


def _repeat(action: argparse.Action) -> str:
    repeated = isinstance(action, argparse._AppendAction) and "repeat" not in (action.help or "")
    return " (repeat)" if repeated else ""


def _setting_comments() -> dict[str, str]:
    """The comment of each key in the settings module's example file, for options whose help
    is empty."""
    return dict(_COMMENT.findall(settings_module.__doc__ or ""))


def _help(action: argparse.Action) -> str:
    if action.help:
        return _text(action.help)
    key = _setting(action).strip("`")
    return _text(_setting_comments().get(key, ""))


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
    ]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        action
        for action in parser._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


def _synopsis(command: Command) -> str:
    if command.path == ("sendmail",):  # its own parser: its own usage line
        return sendmail._USAGE.splitlines()[0].removeprefix("usage: ")
    words = ["spoolmail", *command.path] if command.path else ["spoolmail", "[OPTION ...]"]
    if command.path and _options(command.parser):
        words.append("[OPTION ...]")
    for action in _positionals(command.parser):
        metavar = action.metavar or action.dest.upper()
        if action.nargs in ("*", argparse.REMAINDER):
            words.append(f"[{metavar} ...]")
        elif action.nargs == "?":
            words.append(f"[{metavar}]")
        else:
            words.append(metavar)
    subcommands = _subcommands(command.parser)
    if subcommands:
        words.append("COMMAND" if not command.path else "[ACTION]")
    return " ".join(words)


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(("spoolmail", *path))


def example_pages(docs: Path = DOCS) -> dict[tuple[str, ...], list[Path]]:
    """For each command path, the pages whose console examples run it."""
    tree = {command.path: command for command in commands(_parser())}
    found: dict[tuple[str, ...], list[Path]] = {}
    pages = sorted(
        page
        for page in docs.rglob("*.md")
        if not page.relative_to(docs).parts[0].startswith(("_", "reference"))
    )
    for page in pages:
        for block in _CONSOLE.findall(page.read_text(encoding="utf-8")):
            for line in block.splitlines():
                if not line.startswith("$ spoolmail "):
                    continue
                path = _command_path(shlex.split(line[2:])[1:], tree)
                if path and page not in found.setdefault(path, []):
                    found[path].append(page)
    return found


def _command_path(words: list[str], tree: dict[tuple[str, ...], Command]) -> tuple[str, ...]:
    path: tuple[str, ...] = ()
    index = 0
    while index < len(words):
        word = words[index]
        if word in _GLOBAL_WITH_VALUE and not path:
            index += 2
            continue
        if word.startswith("-"):
            index += 1
            continue
        if (*path, word) in tree:
            path = (*path, word)
            index += 1
            continue
        break
    return path


def _title(page: Path) -> str:
    found = _TITLE.search(page.read_text(encoding="utf-8"))
    return found.group(1).replace("`", "") if found else page.stem


def render(docs: Path = DOCS) -> str:
    examples = example_pages(docs)
    settings = (
        " ([the settings reference](../settings.md) says more of each)"
        if (docs / "settings.md").exists()
        else ""
    )
    parts = [HEAD.format(settings=settings)]
    for command in commands(_parser()):
        name = " ".join(("spoolmail", *command.path))
        parts.append(f"\n({_anchor(command.path)})=\n## `{name}`\n")
        if command.summary:
            summary = _text(command.summary)
            parts.append(f"\n{summary[:1].upper()}{summary[1:]}.\n")
        if command.parser.description:
            parts.append(f"\n{_text(command.parser.description)}\n")
        parts.append(f"\n```text\n{_synopsis(command)}\n```\n")
        if command.path == ("sendmail",):
            # sendmail parses Postfix's options itself; its usage text is the reference.
            parts.append(
                "\nIts options are Postfix's sendmail's, parsed by the command itself "
                "(`spoolmail sendmail --help`; the same as `spoolmail-sendmail`):\n"
                f"\n```text\n{sendmail._USAGE.rstrip()}\n```\n"
            )
        else:
            parts.append(_arguments_table(command))
        example = EXAMPLES.get(" ".join(command.path))
        if example and command.path != ("sendmail",):
            label = "Example" if len(example) == 1 else "Examples"
            parts.append(f"\n{label}:\n\n```text\n" + "\n".join(example) + "\n```\n")
        subcommands = _subcommands(command.parser)
        if subcommands:
            links = ", ".join(
                f"[`{word}`](#{_anchor((*command.path, word))})" for word in subcommands
            )
            parts.append(f"\n{'Commands' if not command.path else 'Actions'}: {links}.\n")
        pages = examples.get(command.path, [])
        if pages and command.path:
            links = ", ".join(
                f"[{_title(page)}](../{page.relative_to(docs).as_posix()})" for page in pages
            )
            parts.append(f"\nExecuted examples: {links}.\n")
    parts.append(_exit_statuses())
    return "".join(parts)


def _arguments_table(command: Command) -> str:
    rows = []
    for action in _positionals(command.parser):
        metavar = action.metavar or action.dest.upper()
        rows.append(f"| `{metavar}` | | | {_text(action.help)}{_repeat(action)} |")
    for action in _options(command.parser):
        flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
        rows.append(
            f"| {flags} | {_value(action)} | {_setting(action)} | "
            f"{_help(action)}{_repeat(action)} |"
        )
    if not rows:
        return ""
    return "\n| argument | value | setting | what it does |\n|---|---|---|---|\n" + (
        "\n".join(rows) + "\n"
    )


def _exit_statuses() -> str:
    names = sorted(
        (value, name)
        for name, value in vars(status).items()
        if name.startswith("EX_") and isinstance(value, int)
    )
    rows = [f"| {value} | `{name}` | {EXIT_MEANINGS[name]} |" for value, name in names]
    return (
        "\n(cli-exit-statuses)=\n## Exit statuses\n\n"
        "Every command but `sendmail` (whose statuses are sysexits.h's: see "
        "[sendmail](../sendmail.md#exit-statuses)). Errors go to stderr as one line starting "
        "`spoolmail: `, never as a traceback; a command given several ids does every one it "
        "can and exits with the worst status.\n\n"
        "| status | name | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def test_the_page_is_what_the_parser_says() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/reference/cli.md differs from the command's parser (or the pages' examples); "
        "run `python tests/test_cli_reference.py --write` and read the change"
    )


def test_every_command_and_option_is_on_the_page() -> None:
    page = render()
    for command in commands(_parser()):
        assert f"## `{' '.join(('spoolmail', *command.path))}`" in page
        for action in _options(command.parser):
            for flag in action.option_strings:
                assert f"`{flag}`" in page


def test_every_exit_status_has_a_meaning() -> None:
    names = {name for name in vars(status) if name.startswith("EX_")}
    assert names == set(EXIT_MEANINGS)


def test_a_command_line_is_matched_to_its_command() -> None:
    tree = {command.path: command for command in commands(_parser())}
    assert _command_path(["--root", "MailRoot", "queue", "flush", "X"], tree) == (
        "queue",
        "flush",
    )
    assert _command_path(["queue", "--json", "list"], tree) == ("queue", "list")
    assert _command_path(["run", "--once"], tree) == ("run",)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    PAGE.write_text(render(), encoding="utf-8")
