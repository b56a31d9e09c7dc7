"""The ``spoolmail`` command: its tree, ``init`` and ``submit``, and :func:`main`.

Each command's parser is made by its own module: ``run`` in ``daemon``, ``queue``, ``badmail``
and ``drop`` in ``operations``, the listener's in ``listening`` ... (:data:`_COMMANDS`).
:func:`main` imports only the module of the command given, when argparse meets its name, so
that ``spoolmail queue flush`` does not import the service, nor ``spoolmail run`` the listener
or sendmail. Settings come from flags or a TOML file (``--config``, see ``settings``); exit
statuses are in ``status``. Tested through :func:`main` (argv in, exit status out).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from spoolmail._cli.quick import quick_flush
from spoolmail._cli.status import (
    EX_FAILED,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    UsageError,
    exit_status,
    report,
)
from spoolmail.exceptions import MessageError, SpoolmailError

# The settings, their flags, the examples and the log's handlers are imported when the command
# line is parsed (in the functions below): ``queue flush --quiet`` gets by without them
# (:func:`_quick_flush`).
if TYPE_CHECKING:
    from spoolmail._cli.settings import Settings

__all__ = ["EX_FAILED", "EX_OK", "EX_TEMPFAIL", "EX_USAGE", "main"]


# -- the command tree ------------------------------------------------------------------------------

#: Every command, in the order ``--help`` lists them: its one-line help, and the function that
#: adds its parser to the tree (``module:function``; it may add others of the same module).
_COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("create the MailRoot folders and exit", "spoolmail._cli.main:_add_init"),
    "run": ("process Pickup and the Queue until Ctrl-C", "spoolmail._cli.daemon:add_command"),
    "submit": (
        "put a message into Pickup; prints the queue id it will have",
        "spoolmail._cli.main:_add_submit",
    ),
    "queue": (
        "list, show, flush, hold, release or delete queued messages; import IIS's",
        "spoolmail._cli.operations:add_commands",
    ),
    "badmail": (
        "list, show, requeue or delete BadMail entries",
        "spoolmail._cli.operations:add_commands",
    ),
    "drop": ("list or show Drop files", "spoolmail._cli.operations:add_commands"),
    "log": (
        "what happened to a message (from the mail log in Log/, also once it is gone)",
        "spoolmail._cli.maillog:add_command",
    ),
    "listen": (
        "take mail over SMTP into the Queue (a 'run' elsewhere delivers it)",
        "spoolmail._cli.listening:add_commands",
    ),
    "listen-passwd": (
        "print a password file line for USER (the password is read from stdin)",
        "spoolmail._cli.listening:add_commands",
    ),
    "sendmail": (
        "read a message on stdin into Pickup, with Postfix's sendmail options",
        "spoolmail._cli.sendmail:add_command",
    ),
    "config": (
        "print the settings in effect as TOML (only those not at their defaults)",
        "spoolmail._cli.config:add_command",
    ),
    "suppress": (
        "list or remove recipients suppressed after a hard bounce",
        "spoolmail._cli.suppress:add_commands",
    ),
    "check": (
        "check that the EHLO name resolves forward and back (FCrDNS), as receivers want",
        "spoolmail._cli.suppress:add_commands",
    ),
    "dkim": (
        "DKIM keys: make one and print its DNS record",
        "spoolmail._cli.dkim:add_commands",
    ),
}

# Commands whose arguments are all their own: sendmail keeps Postfix's sendmail(1) options
# (-C is its settings file, -v verbose, and everything after the options is a recipient).
_OWN_ARGUMENTS = frozenset({"sendmail"})


def _adder(command: str) -> Callable[[Any], None]:
    module, _, function = _COMMANDS[command][1].partition(":")
    adder: Callable[[Any], None] = getattr(importlib.import_module(module), function)
    return adder


class _Commands:
    """What a module's ``add_commands`` is given: ``add_parser(name, **kwargs)`` makes the
    command's parser with the help from :data:`_COMMANDS`, its global options after the command
    and its examples."""

    def __init__(self, action: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._action = action
        self.added: list[tuple[str, argparse.ArgumentParser]] = []

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name in self._action.choices:
            # Made when argparse met the command's name: it takes the place of the stand-in
            # that gave --help its line (argparse's own add_parser would list it twice).
            kwargs.setdefault("prog", f"{self._action._prog_prefix} {name}")
            parser: argparse.ArgumentParser = self._action._parser_class(**kwargs)
            self._action.choices[name] = parser
        else:
            parser = self._action.add_parser(name, help=_COMMANDS[name][0], **kwargs)
        self.added.append((name, parser))
        return parser

    def finish(self) -> None:
        """The global options and the examples of the parsers added, once they are complete."""
        from spoolmail._cli import examples  # noqa: PLC0415 (see the imports)

        for name, parser in self.added:
            if name not in _OWN_ARGUMENTS:
                _global_options_after(parser)
            examples.add_examples(parser, path=(name,))


class _LazyCommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The command names, each with a stand-in parser that only gives ``--help`` its line; the
    command's own parser is made (its module imported) when argparse meets its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made: set[str] = set()

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        name = values[0] if values else None
        if name in _COMMANDS and name not in self.made:
            commands = _Commands(self)
            _adder(name)(commands)
            commands.finish()
            self.made.update(made for made, _ in commands.added)
        super().__call__(parser, namespace, values, option_string)


def _parser(*, whole: bool = True) -> argparse.ArgumentParser:
    """The command tree: every command's parser (``whole``: the reference page, the tests), or
    stand-ins, each replaced by the command's parser when its name is met (:func:`main`)."""
    from spoolmail._cli import examples  # noqa: PLC0415 (see the imports)

    parser = argparse.ArgumentParser(
        prog="spoolmail",
        description="An IIS-style MailRoot (Pickup, Queue, BadMail, Drop) mail spool.",
    )
    _global_options(parser, default=None)
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the version of spoolmail and exit"
    )
    action = _LazyCommands if not whole else argparse._SubParsersAction
    tree = parser.add_subparsers(dest="command", required=True, metavar="command", action=action)
    if whole:
        commands = _Commands(tree)
        for adder in dict.fromkeys(_adder(name) for name in _COMMANDS):
            adder(commands)
        commands.finish()
    else:
        for name, (help_text, _) in _COMMANDS.items():
            tree.add_parser(name, help=help_text)
    examples.add_examples(parser)
    return parser


class _Version(argparse.Action):
    """``--version``: the installed version, read only when asked (``spoolmail.__version__``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        import spoolmail  # noqa: PLC0415

        sys.stdout.write(f"spoolmail {spoolmail.__version__}\n")
        parser.exit()


def _global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    """``--config``, ``--root``, ``-v``, ``--log-file`` and ``--syslog``: before the command,
    and (``default=SUPPRESS``) after it too, where one not given leaves the first alone."""
    from spoolmail._cli import flags  # noqa: PLC0415 (see the imports)

    where: Any = parser
    if default is argparse.SUPPRESS:
        where = parser.add_argument_group("global options (also before the command)")
    where.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar="FILE",
        help="a TOML settings file ([spoolmail] table; see docs/settings.md)",
    )
    flags.add_setting_flags(where, ["root"], default=default)
    where.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if default is None else default,
        help="log every step, the SMTP dialogue too",
    )
    flags.add_setting_flags(where, ["log_file", "syslog"], default=default)


def _global_options_after(parser: argparse.ArgumentParser) -> None:
    """Give a command (and every action of one, ``queue list``) the global options."""
    _global_options(parser, default=argparse.SUPPRESS)
    for action in parser._actions:  # argparse lists subcommands nowhere else
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _global_options_after(child)


# -- init, submit ----------------------------------------------------------------------------------


def _add_init(commands: Any) -> None:
    commands.add_parser("init").set_defaults(handler=_init)


def _init(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from spoolmail._store.spool import Spool  # noqa: PLC0415 (see _COMMANDS)

    with Spool(settings.root):
        print(f"MailRoot ready at {settings.root}", file=out)
    return EX_OK


def _add_submit(commands: Any) -> None:
    submit = commands.add_parser("submit")
    submit.set_defaults(handler=_submit)
    submit.add_argument("file", nargs="?", default="-", help="the message file (default stdin)")
    submit.add_argument("--from", dest="sender", help="envelope sender (x-sender)")
    submit.add_argument(
        "--to",
        action="append",
        dest="recipients",
        metavar="ADDRESS",
        help="envelope recipient (x-receiver; repeat)",
    )


def _submit(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    # The service takes no Pickup file over max_message_size, and the file is at least the
    # message: more than that is refused unread, never held whole (stdin may not end).
    limit = settings.max_message_size
    if args.file == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        try:
            with Path(args.file).open("rb") as source:
                data = source.read(limit + 1)
        except OSError as exc:
            raise SpoolmailError(f"cannot read {args.file}: {exc}") from exc
    if len(data) > limit:
        raise MessageError(
            f"the message is over the limit of {limit} bytes (max_message_size)", status="5.3.4"
        )
    from spoolmail._store.spool import Spool  # noqa: PLC0415 (see _COMMANDS)
    from spoolmail._store.submission import Pickup  # noqa: PLC0415

    if "://" not in settings.root and Path(settings.root, "Pickup").is_dir():
        # Pickup alone, as an application on a locked-down MailRoot may write it.
        queue_id = Pickup(settings.root).submit(
            data, sender=args.sender, recipients=args.recipients, max_size=limit
        )
    else:
        with Spool(settings.root) as spool:  # makes the MailRoot, as `init` would
            queue_id = spool.submit(
                data, sender=args.sender, recipients=args.recipients, max_size=limit
            )
    # The id alone, for scripts: the Pickup file is <id>.eml and the message keeps the id in the
    # Queue, so `spoolmail queue show <id>` finds it once it is picked up.
    print(queue_id, file=out)
    return EX_OK


# -- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the ``spoolmail`` command; returns the exit status.

    0 done, 1 failed, 2 bad usage, 75 (EX_TEMPFAIL) try again later. Output goes to ``out``
    (default stdout), errors to stderr, never as a traceback.
    """
    quick = quick_flush(sys.argv[1:] if argv is None else argv)
    if quick is not None:
        return quick
    # A SIGHUP while the command starts (logrotate, `systemctl reload` just after the start)
    # would end it, SIGHUP's default: it is held from here, through the imports and the
    # settings, until `run`'s or `listen`'s handler is set and reads it. Every other command
    # lets it through once its command line is read.
    held = _hold_hangup()
    try:
        return _main(argv, out, held)
    finally:
        _let_go(held)


def _hold_hangup() -> set[int | signal.Signals] | None:
    """Block SIGHUP (POSIX); the mask it replaced, to put back."""
    if not hasattr(signal, "SIGHUP"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


def _let_go(held: set[int | signal.Signals] | None) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _main(
    argv: Sequence[str] | None, out: TextIO | None, held: set[int | signal.Signals] | None
) -> int:
    from spoolmail._cli import flags  # noqa: PLC0415 (see the imports)
    from spoolmail._cli.logs import Logs  # noqa: PLC0415
    from spoolmail._cli.settings import load_settings  # noqa: PLC0415

    out = out or sys.stdout
    parser = _parser(whole=False)
    try:
        with contextlib.redirect_stdout(out):  # --help goes where the output goes
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    # The daemon logs what it does; a one-shot command prints its result on stdout instead,
    # and its log shows only errors (everything with -v).
    daemon = args.command in ("run", "listen") and not getattr(args, "once", False)
    if not daemon:
        _let_go(held)  # a SIGHUP held meanwhile ends the command now, as it would have
    logs = Logs(level=logging.DEBUG if args.verbose else logging.INFO if daemon else logging.ERROR)
    args.logs = logs
    handler: Callable[[Settings, argparse.Namespace, TextIO], int] = args.handler
    try:
        settings = load_settings(args.config, flags.overrides(args))
        if settings.log_file:
            logs.to_file(settings.log_file)
        if settings.syslog:
            logs.to_syslog(settings.syslog)
        return handler(settings, args, out)
    except UsageError as exc:
        sys.stderr.write(f"spoolmail: {exc}\n")
        return EX_USAGE
    except SpoolmailError as exc:
        report(exc)
        return exit_status(exc)
    finally:
        logs.close()
