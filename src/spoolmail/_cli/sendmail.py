"""``spoolmail sendmail`` and ``spoolmail-sendmail``: the sendmail command line, into Pickup.

Programs that send mail by running ``/usr/sbin/sendmail`` (PHP's ``mail()``, cron, s-nail and
mailx, mutt, git send-email) pipe a message in and give the envelope with Postfix's sendmail
options: ``-t``, ``-i``/``-oi``, ``-f``/``-r``, ``-F``, ``--``, the rest accepted and ignored as
Postfix does. This module reads those options, the settings (the MailRoot, the default domain,
the size limit) and the message on standard input, streamed, so that a message costs one chunk
of memory whatever its size; checks the header block as intake will (``parse_pickup``); and
writes exactly one file, as Postfix's ``postdrop`` writes one into ``maildrop``:
``Pickup/.ID.spoolmail.tmp`` created exclusively, fsync'd, renamed to ``Pickup/ID.eml``, then the
folder synced. It needs write access to Pickup alone and no running service; it never creates
the MailRoot and never touches Queue, SortTemp, BadMail or Drop. Every failure exits with a
sysexits.h status and leaves nothing in Pickup. Invoked as ``mailq`` it lists the Queue, as
``newaliases`` it does nothing. The user's side is docs/sendmail.md.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import getopt
import os
import platform
import re
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, Self, TextIO

import attrs

from spoolmail._cli.settings import Settings, load_settings
from spoolmail._core.address import AddressRole, parse_address_list, parse_domain, parse_mailbox
from spoolmail._core.headers import fields, without_fields
from spoolmail._core.ids import QueueIds
from spoolmail._core.pickup import (
    BodyRejected,
    PickupBody,
    PickupOptions,
    PickupRejected,
    parse_pickup,
    pickup_head_end,
    render_pickup,
)
from spoolmail._store.folders import pickup_path
from spoolmail._store.pickup_writer import PickupFile, TooLarge
from spoolmail.exceptions import ConfigurationError, MessageError, StorageError

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

__all__ = [
    "CONFIG_VARIABLE",
    "DEFAULT_SETTINGS",
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_IOERR",
    "EX_NOPERM",
    "EX_NOUSER",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "ROOT_VARIABLE",
    "Invocation",
    "Mode",
    "add_command",
    "find_settings",
    "main",
    "parse_command_line",
    "run",
]

# The service's limit on a header section (spoolmail._service.intake.MAX_HEAD) and its default
# host name (spoolmail._service.service.machine_name), kept here, a test holds them equal:
# importing the service for them would double what this command costs, and programs (PHP's
# mail()) run it once a message.
MAX_HEAD = 1024 * 1024


def machine_name() -> str:
    """This machine's name if it is a valid host name, else ``localhost`` (never a DNS lookup)."""
    try:
        return parse_domain(platform.node())
    except MessageError:
        return "localhost"


# sysexits.h, which sendmail's callers read: PHP's mail() returns false on any of them, cron and
# git report them, and 75 tells a caller that queues its own mail to try again later.
EX_OK = 0
EX_USAGE = 64  # a wrong option, no recipients
EX_DATAERR = 65  # the message: its header block, a NUL byte, its size
EX_NOUSER = 67  # an address that cannot be one
EX_SOFTWARE = 70  # a bug in spoolmail
EX_CANTCREAT = 73  # no file can be made in Pickup (a read-only filesystem)
EX_IOERR = 74  # reading the message or writing the file failed
EX_TEMPFAIL = 75  # the disk is full, or a signal stopped the command: trying again may work
EX_NOPERM = 77  # this user may not write into Pickup
EX_CONFIG = 78  # the settings, or a MailRoot without a Pickup folder

#: The settings file read when none is named (docs/running-as-a-service.md puts it there). A
#: string, made a ``Path`` when looked at: a send with the MailRoot in ``$SPOOLMAIL_ROOT``
#: looks at no file, and pathlib with its urllib.parse is ~2 ms of this command's start-up.
DEFAULT_SETTINGS = "/etc/spoolmail/spoolmail.toml"
#: The environment variables that name the settings file and the MailRoot (cron and PHP pass no
#: options of their own, and a symbolic link named ``sendmail`` takes none).
CONFIG_VARIABLE = "SPOOLMAIL_CONFIG"
ROOT_VARIABLE = "SPOOLMAIL_ROOT"

_PROGRAM = "spoolmail sendmail"
_CHUNK = 64 * 1024
# Postfix's sendmail option letters, so that the same command lines parse the same way; those
# with a colon take a value (-fADDR or -f ADDR). Parsing stops at "--" or the first recipient.
_OPTIONS = "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:q:r:tvx"
_USAGE = """\
usage: spoolmail sendmail [option ...] [--] [recipient ...]
       spoolmail-sendmail [option ...] [--] [recipient ...]

Reads a message on standard input and puts it into the MailRoot's Pickup folder, as
Postfix's sendmail does. Silent on success; the exit status says what went wrong.

  -t           also send to the To:, Cc: and Bcc: addresses (Resent-* when present);
               Bcc: and Resent-Bcc: are removed from the message
  -i, -oi      a line with only "." does not end the message
  -f ADDRESS   the envelope sender (also -fADDRESS, -r ADDRESS; <> for none);
               default: your login name at the default domain
  -F NAME      your full name, for the From: header of a message that has none
  -C FILE      the settings file (or a folder holding spoolmail.toml)
  -v           print the queue id
  -bm          send a message (the default)
  -bp          list the Queue (as "mailq")
  -bi, -I      nothing to do: spoolmail has no aliases (as "newaliases")
  --           every argument after it is a recipient

Accepted and ignored, as Postfix's sendmail does: -A, -B, -c, -e, -G, -h, -L, -m, -N, -n, -O,
-o (other than -oi), -p, -R, -U, -V, -X, -x, -bh, -bH.

Settings: -C, else spoolmail's --config, $SPOOLMAIL_CONFIG, /etc/spoolmail/spoolmail.toml;
the MailRoot: spoolmail's --root, $SPOOLMAIL_ROOT, the settings' root. See docs/sendmail.md.

example:
  printf 'Subject: hi\\n\\nhello\\n' | spoolmail sendmail -i ops@example.com
"""


class Mode(enum.Enum):
    """What the command was asked to do (``-b`` and the name it was run by)."""

    SEND = "send"
    LIST_QUEUE = "list the queue"
    NEWALIASES = "build the alias database"
    HELP = "help"


@attrs.frozen(kw_only=True)
class Invocation:
    """A sendmail command line, read: what to do, and the envelope as given (not yet checked)."""

    mode: Mode = Mode.SEND
    extract: bool = False  # -t
    dot_ends: bool = True  # no -i / -oi: a line with only "." ends the message
    sender: str | None = None  # -f / -r
    full_name: str | None = None  # -F
    config: str | None = None  # -C
    verbose: bool = False  # -v
    recipients: tuple[str, ...] = ()


class _Failure(Exception):
    """Why nothing was sent, and the exit status that says so."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


# -- the command line ------------------------------------------------------------------------------

_PROGRAM_MODES = {"mailq": Mode.LIST_QUEUE, "newaliases": Mode.NEWALIASES}
_NO_QUEUE_RUN = (
    "-q (run the queue) is not a sendmail matter here: run `spoolmail queue flush` as the "
    "service's user"
)
# The -b modes spoolmail has no use for, and what to do instead.
_UNSUPPORTED_MODES = {
    "s": "-bs (SMTP on standard input) is not supported: pipe the message in (-bm, the default)",
    "d": "-bd (daemon mode) is not how spoolmail runs: start `spoolmail run`",
    "l": "-bl (daemon mode) is not how spoolmail runs: start `spoolmail run`",
    "v": "-bv (verify addresses) is not supported",
}


def parse_command_line(argv: Sequence[str], *, program: str = "sendmail") -> Invocation:
    """Read a sendmail command line as Postfix's sendmail reads it.

    ``program`` is the name the command was run by: ``mailq`` lists the Queue and
    ``newaliases`` builds the (absent) alias database, as with Postfix. Raises ``_Failure``
    (``EX_USAGE``) for an unknown option, a missing value or a mode spoolmail does not have.
    """
    try:
        options, recipients = getopt.getopt(list(argv), _OPTIONS, ["help"])
    except getopt.GetoptError as exc:
        if exc.opt == "q":
            raise _Failure(EX_USAGE, _NO_QUEUE_RUN) from None
        raise _Failure(EX_USAGE, f"{exc.msg} (spoolmail sendmail --help lists them)") from None
    values: dict[str, Any] = {"mode": _PROGRAM_MODES.get(program, Mode.SEND)}
    for option, value in options:
        _read_option(option, value, values)
    return Invocation(**values, recipients=tuple(recipients))


def _read_option(option: str, value: str, values: dict[str, Any]) -> None:  # noqa: PLR0912 (one option a branch)
    if option == "--help":
        values["mode"] = Mode.HELP
    elif option == "-t":
        values["extract"] = True
    elif option == "-i" or (option == "-o" and value[:1] == "i"):
        values["dot_ends"] = False
    elif option in ("-f", "-r"):
        values["sender"] = value
    elif option == "-F":
        values["full_name"] = value
    elif option == "-C":
        values["config"] = value
    elif option == "-v":
        values["verbose"] = True
    elif option == "-I":
        values["mode"] = Mode.NEWALIASES
    elif option == "-q":
        raise _Failure(EX_USAGE, _NO_QUEUE_RUN)
    elif option == "-b":
        letter = value[:1]
        if letter in _UNSUPPORTED_MODES:
            raise _Failure(EX_USAGE, _UNSUPPORTED_MODES[letter])
        if letter == "m":
            values["mode"] = Mode.SEND
        elif letter == "p":
            values["mode"] = Mode.LIST_QUEUE
        elif letter == "i":
            values["mode"] = Mode.NEWALIASES
        elif letter not in ("h", "H"):  # Postfix ignores -bh and -bH: it keeps no host status
            raise _Failure(EX_USAGE, f"-b{value}: no such mode (-bm sends, -bp lists the Queue)")
    # Everything else Postfix's sendmail accepts and ignores, and so does this one: -oXXX (-oem,
    # -odi, -odb), -B body type, -N dsn, -R return, -V envid (a Pickup file carries no DSN
    # parameters), -A, -c, -e, -G, -h, -L, -m, -n, -O, -p, -U, -X, -x.


# -- settings and the MailRoot --------------------------------------------------------------------


def find_settings(
    *,
    config_option: str | None = None,
    config_flag: Path | None = None,
    root_flag: str | None = None,
    environ: Mapping[str, str],
) -> Settings:
    """The settings sendmail works with, from the first place that names them.

    The file: ``-C`` (a file, or a folder holding ``spoolmail.toml``, as Postfix's ``-C``
    names a ``main.cf`` or its folder), else spoolmail's ``--config``, else
    ``$SPOOLMAIL_CONFIG``, else :data:`DEFAULT_SETTINGS` when it exists and no MailRoot was
    named either (so ``--root X`` alone means X with the defaults, as for every other
    spoolmail command). The MailRoot: spoolmail's ``--root``, else ``$SPOOLMAIL_ROOT``, else
    the file's ``root``. Raises ``_Failure`` (``EX_CONFIG``) for a file that cannot be read.
    """
    root = root_flag or environ.get(ROOT_VARIABLE) or None
    path: Path | None
    if config_option:
        path = _as_path(config_option)
        if path.is_dir():
            path /= "spoolmail.toml"
    elif config_flag is not None:
        path = config_flag
    elif environ.get(CONFIG_VARIABLE):
        path = _as_path(environ[CONFIG_VARIABLE])
    elif root is None and (default := _as_path(DEFAULT_SETTINGS)).exists():
        path = default
    else:
        path = None
    try:
        return load_settings(path, {"root": root})
    except ConfigurationError as exc:
        raise _Failure(EX_CONFIG, str(exc)) from None


def _as_path(name: str | os.PathLike[str]) -> Path:
    """``Path(name)``, pathlib imported only when a settings file is named or looked for."""
    from pathlib import Path  # noqa: PLC0415

    return Path(name)


def _default_domain(settings: Settings) -> str:
    if not settings.local_domains:
        raise _Failure(EX_CONFIG, "local_domains is empty: a default domain is needed")
    try:
        return parse_domain(settings.local_domains[0])
    except MessageError as exc:
        raise _Failure(EX_CONFIG, f"local_domains: {exc}") from None


def _local_root(root: str) -> str:
    """The MailRoot as a folder of this machine (a plain path, or an ``osfs://`` URL)."""
    scheme, separator, path = root.partition("://")
    if not separator:
        return root
    if scheme == "osfs":
        return path
    raise _Failure(
        EX_CONFIG,
        f"the MailRoot {root!r} is not a folder on this machine: sendmail writes its file "
        "with the operating system's own calls",
    )


def _pickup_folder(root: str) -> str:
    """The existing Pickup folder of the MailRoot ``root``; sendmail never creates one: made
    by another user than the service's, the MailRoot would not be the service's to use."""
    path = pickup_path(_local_root(root))
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _Failure(
            EX_CONFIG,
            f"no Pickup folder at {path}: sendmail writes into an existing MailRoot and makes "
            "none (create it with `spoolmail init` as the service's user; the settings' root, "
            f"${ROOT_VARIABLE} or -C name it)",
        ) from None
    except PermissionError:
        raise _Failure(
            EX_NOPERM, f"cannot reach {path}: permission denied on a folder above it"
        ) from None
    except OSError as exc:  # ENOTDIR: a file where the MailRoot should be, and the like
        raise _Failure(EX_CONFIG, f"cannot use {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise _Failure(EX_CONFIG, f"{path} is not a folder")
    return path


# -- addresses -------------------------------------------------------------------------------------

# A value with none of these characters is a plain list of addresses and bare names ("root,
# admin", as cron passes MAILTO): no display name can hide in it, so every bare name in it is a
# local mailbox (parse_address_list completes one only when it is the whole value).
_PLAIN_LIST = re.compile(r'[^"()<>\[\]:\\]*')
_DESTINATIONS = ("to", "cc", "bcc")
_RESENT_DESTINATIONS = ("resent-to", "resent-cc", "resent-bcc")
# RFC 5322 section 3.6.3: Bcc recipients get the message, the others do not see them.
_BLIND_HEADERS = ("bcc", "resent-bcc")


def _address_list(text: str, *, domain: str) -> list[str]:
    try:
        return parse_address_list(text, default_domain=domain)
    except MessageError:
        if not _PLAIN_LIST.fullmatch(text):
            raise
    return [
        parse_mailbox(item, default_domain=domain)
        for item in re.split(r"[,;]", text)
        if item.strip(" \t")
    ]


def _recipients(text: str, *, domain: str, where: str) -> list[str]:
    """The addresses in one argument or header value, bare names completed with ``domain``; a
    comma-separated list is several (as Postfix reads both)."""
    try:
        return _address_list(text, domain=domain)
    except MessageError as exc:
        raise _Failure(EX_NOUSER, f"bad recipient {where}: {exc}") from None


def _sender(given: str | None, *, domain: str) -> str:
    """The envelope sender: ``-f`` / ``-r``, else the login name at the default domain, as
    Postfix does; ``""`` for the null sender (``-f '<>'`` or ``-f ''``)."""
    if given is None:
        try:
            given = _login_name()
        except (OSError, KeyError):
            raise _Failure(
                EX_NOUSER, "cannot tell who is sending (no login name); give the sender with -f"
            ) from None
        where = f"the login name {given!r}"
    elif not given.strip(" \t"):
        return ""
    else:
        where = "-f"
    try:
        return parse_mailbox(given, default_domain=domain, role=AddressRole.SENDER)
    except MessageError as exc:
        raise _Failure(EX_NOUSER, f"bad sender ({where}): {exc}; give one with -f") from None


def _full_name(given: str | None, environ: Mapping[str, str]) -> str | None:
    """``-F``, else ``$NAME`` (as Postfix), refusing what would break the header line."""
    name, where = (given, "-F") if given is not None else (environ.get("NAME"), "$NAME")
    if not name:
        return None
    if any(char < " " or char == "\x7f" for char in name):
        raise _Failure(EX_USAGE, f"{where}: the full name holds a control character or line break")
    return name


def _from_field(sender: str, full_name: str | None) -> bytes:
    """The ``From:`` line added to a message without one (Postfix adds it too)."""
    if full_name is None:
        return b"From: " + sender.encode("utf-8")
    if sender.isascii():
        # An RFC 2047 encoded-word for a non-ASCII name, a quoted string where one is needed.
        # Imported here: the email package is a tenth of the command's start-up, and this is
        # the only use of it (-F or $NAME).
        from email.utils import formataddr  # noqa: PLC0415

        return b"From: " + formataddr((full_name, sender)).encode("ascii")
    # RFC 6532: beside a non-ASCII address the header is UTF-8 anyway, and an encoded-word may
    # not appear where an address is (RFC 2047 section 5).
    quoted = full_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'From: "{quoted}" <{sender}>'.encode()


# -- reading the message ---------------------------------------------------------------------------

_LONE_DOT = re.compile(rb"\n\.\r?\n")
_UNDECIDED = (b"\n.\r", b"\n.", b"\n")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
# RFC 5322 section 2.2: a field name is printable US-ASCII except ':'; section 4.5.8 allows white
# space before the colon.
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """Standard input as it comes, never an empty chunk before its end."""
    # read1: what is there now, so that a "." typed at a terminal ends the message at once.
    read: Callable[[int], bytes] = getattr(stream, "read1", stream.read)
    while True:
        try:
            chunk = read(_CHUNK)
        except OSError as exc:
            raise _Failure(
                EX_IOERR, f"cannot read the message from standard input: {exc.strerror or exc}"
            ) from None
        except ValueError:  # io's "I/O operation on closed file": a caller closed it first
            raise _Failure(
                EX_IOERR, "cannot read the message from standard input: it is closed"
            ) from None
        if not chunk:
            return
        yield chunk


def _until_lone_dot(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The input up to a line holding only ".", which ends the message when sendmail runs
    without -i / -oi, as it always has; the line and whatever follows it are dropped.

    A line end, with a "." and a CR after it, is held back until the next chunk shows whether
    a lone dot follows. The input starts as if after a line end (``virtual``: not output), so a
    "." on the first line counts too, and so does one on the last line without a line end.
    """
    held, virtual = b"\n", 1
    for chunk in chunks:
        text = held + chunk
        match = _LONE_DOT.search(text)
        if match is not None:
            if match.start() + 1 > virtual:
                yield text[virtual : match.start() + 1]
            return
        keep = len(text)
        for tail in _UNDECIDED:
            if text.endswith(tail):
                keep -= len(tail)
                break
        if keep > 0:
            if keep > virtual:
                yield text[virtual:keep]
            virtual = 0
        held = text[keep:]
    if held in (b"\n.", b"\n.\r"):
        held = held[:1]  # a lone dot on the last line: only the line end before it is the message's
    if held[virtual:]:
        yield held[virtual:]


@attrs.frozen
class _Head:
    """The message's header block (CRLF line ends) and the first bytes of its body."""

    block: bytes  # with its empty line when ``separated``; b"\r\n" when there is none
    separated: bool  # an empty line ended the block; a body may follow
    rest: bytes  # the body's first bytes, as read (any line ends)
    first_line: int  # the block's first line number in the input (2 after a "From " line)
    body_line: int  # the body's first line number in the input, for a NUL's report


def _crlf(text: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in text.splitlines())


def _too_large(limit: int) -> _Failure:
    return _Failure(
        EX_DATAERR,
        f"message larger than {limit} bytes (the max_message_size setting); nothing was sent",
    )


def _first_line_end(buffer: bytes, *, complete: bool) -> int | None:
    """Where the first line of ``buffer`` ends, its line break included; ``None`` while that is
    not known (no line break yet, or a CR at the end that may be half of a CRLF)."""
    match = _LINE_BREAK.search(buffer)
    if match is None:
        return len(buffer) if complete else None
    if match.group() == b"\r" and match.end() == len(buffer) and not complete:
        return None
    return match.end()


def _read_head(chunks: Iterator[bytes], *, limit: int) -> _Head:
    """Read up to the empty line that ends the header block, at most :data:`MAX_HEAD` bytes (as
    intake reads the file) and never more than ``limit``."""
    buffer = b""
    first_line = 1  # the input's line number of the buffer's first line
    decided = False  # whether the first line was looked at
    while True:
        chunk = next(chunks, b"")
        buffer += chunk
        if len(buffer) > limit:
            raise _too_large(limit)
        while not decided and (end := _first_line_end(buffer, complete=not chunk)) is not None:
            line = buffer[:end].rstrip(b"\r\n")
            if first_line == 1 and line.startswith(b"From ") and not _FIELD_START.match(line):
                # A Unix mailbox's "From sender date" line (procmail, formail): not part of
                # the message, and dropped as Postfix's sendmail drops it.
                buffer, first_line = buffer[end:], 2
                continue
            decided = True
            if line and not _FIELD_START.match(line):
                # No header block at all (echo text | sendmail root): all of it is the body, as
                # Postfix takes it. A line that is not a field further down is an error below.
                return _Head(
                    block=b"\r\n",
                    separated=True,
                    rest=buffer,
                    first_line=first_line,
                    body_line=first_line,
                )
        end = pickup_head_end(buffer, complete=not chunk)
        if end is not None:
            if end > MAX_HEAD + 2:
                break
            block = buffer[:end]
            return _Head(
                block=_crlf(block),
                separated=True,
                rest=buffer[end:],
                first_line=first_line,
                body_line=first_line + len(block.splitlines()),
            )
        if not chunk:
            block = _crlf(buffer)
            return _Head(
                block=block, separated=False, rest=b"", first_line=first_line, body_line=first_line
            )
        if len(buffer) > MAX_HEAD + _CHUNK:
            break
    raise _Failure(
        EX_DATAERR, f"the header section is longer than {MAX_HEAD} bytes; nothing was sent"
    )


def _header_recipients(block: bytes, *, domain: str) -> list[str]:
    """``-t``: the addresses in To:, Cc: and Bcc:, or in the Resent- ones when there are any
    (RFC 5322 section 3.6.6: a resent message goes to its new destinations, as sendmail and
    Postfix read it)."""
    found = list(fields(block))
    names = _DESTINATIONS
    if any(field.key in _RESENT_DESTINATIONS for field in found):
        names = _RESENT_DESTINATIONS
    recipients = []
    for field in found:
        if field.key not in names:
            continue
        try:
            value = field.raw.partition(b":")[2].decode("utf-8")
        except UnicodeDecodeError:
            raise _Failure(
                EX_DATAERR,
                f"the {field.name}: header is not valid UTF-8 (RFC 6532 allows UTF-8 only); "
                "nothing was sent",
            ) from None
        # RFC 5322 section 2.2.3: unfolding removes the line breaks.
        value = value.replace("\r\n", "")
        recipients += _recipients(value, domain=domain, where=f"in the {field.name}: header")
    return recipients


def _edited_head(head: _Head, *, from_field: bytes | None) -> bytes:
    """The header block as written to Pickup: without Bcc: and Resent-Bcc:, with ``From:`` added
    when given. Only for a block ``parse_pickup`` accepted: ``without_fields`` keeps fields."""
    block = head.block[:-2] if head.separated else head.block
    edited = without_fields(block, _BLIND_HEADERS)
    if from_field is not None:
        edited += from_field + b"\r\n"
    return edited + (b"\r\n" if head.separated else b"")


_LINE_NUMBER = re.compile(r"\bline (\d+)")


def _check(
    data: bytes, *, options: PickupOptions, line_offset: int, queue_id: str, now: datetime
) -> None:
    """Refuse now what intake would put into BadMail: the same parser, on the same head."""
    verdict = parse_pickup(
        data,
        options=attrs.evolve(options, max_message_size=len(data) + 1),  # the size is ours
        queue_id=queue_id,
        now=now,
    )
    if isinstance(verdict, PickupRejected):
        reason = _LINE_NUMBER.sub(
            lambda match: f"line {max(1, int(match[1]) - line_offset)}", verdict.reason
        )
        raise _Failure(EX_DATAERR, f"{reason} ({verdict.status}); nothing was sent")


class _DotStuffer:
    """Doubles the "." that starts a body line, for a service that un-stuffs Pickup files
    (``pickup_dot_stuffed``, IIS's ``DisablePickupDotStuff=0``, KB Q286358). Fed CRLF text."""

    def __init__(self) -> None:
        self._at_line_start = True

    def __call__(self, data: bytes) -> bytes:
        if not data:
            return data
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and data[:1] == b".":
            data = b"." + data
        self._at_line_start = data.endswith(b"\n")
        return data


# -- the file in Pickup ----------------------------------------------------------------------------

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def _storage_failures(folder: str, *, limit: int) -> Iterator[None]:
    """The store's errors while writing into Pickup, as sendmail's exit statuses."""
    try:
        yield
    except TooLarge:
        raise _too_large(limit) from None
    except StorageError as exc:
        cause = exc.__cause__
        if not isinstance(cause, OSError):
            raise _Failure(EX_IOERR, f"{exc}; nothing was sent") from None
        if cause.errno in (errno.EACCES, errno.EPERM):
            raise _Failure(
                EX_NOPERM,
                f"cannot create a file in {folder}: permission denied (the user {_user()} "
                "needs write and search permission on Pickup)",
            ) from None
        raise _storage_failure(cause, str(exc).rpartition(":")[0]) from None


def _storage_failure(exc: OSError, doing: str) -> _Failure:
    reason = f"{doing}: {exc.strerror or exc}; nothing was sent"
    if exc.errno in _DISK_FULL:
        return _Failure(EX_TEMPFAIL, reason + " (try again later)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _Failure(EX_NOPERM, reason)
    if exc.errno in (errno.EROFS, errno.EEXIST):
        return _Failure(EX_CANTCREAT, reason)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return _Failure(EX_CONFIG, reason)  # the Pickup folder went away
    return _Failure(EX_IOERR, reason)


def _login_name() -> str:
    """``getpass.getuser()``, imported when a sender or a message needs the login name: ``-f``
    (cron, git send-email) leaves it unused, and getpass brings termios with it."""
    import getpass  # noqa: PLC0415

    return getpass.getuser()


def _user() -> str:
    try:
        return _login_name()
    except (OSError, KeyError):
        return f"with id {os.getuid()}" if hasattr(os, "getuid") else "running this"


# -- signals ---------------------------------------------------------------------------------------

_STOPPING = ("SIGTERM", "SIGHUP", "SIGINT")


@attrs.define
class _Signals:
    """SIGTERM, SIGHUP and SIGINT stop a send before its commit, and the temp file goes with it
    (their default action would leave it in Pickup for good: the service never takes a .tmp).
    From the commit on they are let pass, so that "nothing was sent" is never said of a
    message that was."""

    armed: bool = True

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.armed:
            raise _Failure(
                EX_TEMPFAIL, f"stopped by {signal.Signals(signum).name}; nothing was sent"
            )

    @contextlib.contextmanager
    def installed(self) -> Iterator[Self]:
        """The handlers, while the block runs (main thread only: elsewhere signals cannot be
        caught, and the defaults stay)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        numbers = [getattr(signal, name) for name in _STOPPING if hasattr(signal, name)]
        before = {number: signal.getsignal(number) for number in numbers}
        try:
            for number in numbers:
                signal.signal(number, self.handler)
            yield self
        finally:
            for number, previous in before.items():
                signal.signal(number, previous)


# -- the modes -------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen(kw_only=True)
class _Context:
    """What a send reads besides the command line: all handed in, so tests need no globals."""

    stdin: BinaryIO | None
    out: TextIO
    environ: Mapping[str, str]
    clock: Callable[[], datetime]
    ids: QueueIds


def _send(invocation: Invocation, settings: Settings, context: _Context) -> int:
    domain = _default_domain(settings)
    sender = _sender(invocation.sender, domain=domain)
    recipients = [
        address
        for argument in invocation.recipients
        for address in _recipients(argument, domain=domain, where="on the command line")
    ]
    if not invocation.extract and not recipients:
        raise _Failure(
            EX_USAGE,
            "no recipients: name them after the options, or give -t to take them from the "
            "To:, Cc: and Bcc: headers",
        )
    full_name = _full_name(invocation.full_name, context.environ)
    try:
        options = PickupOptions(
            fqdn=settings.fqdn or machine_name(),
            default_domain=domain,
            max_message_size=settings.max_message_size,
            dot_stuffed=settings.pickup_dot_stuffed,
        )
    except ConfigurationError as exc:
        raise _Failure(EX_CONFIG, str(exc)) from None
    now = context.clock()
    queue_id = context.ids.new(now)
    pickup = _pickup_folder(settings.root)
    if context.stdin is None:
        raise _Failure(EX_IOERR, "there is no standard input to read the message from")
    chunks = _chunks(context.stdin)
    if invocation.dot_ends:
        chunks = _until_lone_dot(chunks)
    signals = _Signals()
    with (
        signals.installed(),
        _storage_failures(pickup, limit=options.max_message_size),
        PickupFile(pickup, queue_id, limit=options.max_message_size) as file,
    ):
        head = _read_head(chunks, limit=options.max_message_size)
        if invocation.extract:
            recipients += _header_recipients(head.block, domain=domain)
        recipients = list(dict.fromkeys(recipients))
        if not recipients:
            raise _Failure(
                EX_USAGE,
                "no recipients: -t found no address in the To:, Cc: and Bcc: headers, and "
                "none was named on the command line; nothing was sent",
            )
        envelope = _Envelope(sender=sender, recipients=tuple(recipients), full_name=full_name)
        file.write(_pickup_head(head, envelope, options=options, queue_id=queue_id, now=now))
        _write_body(file, head, chunks, dot_stuffed=options.dot_stuffed)
        signals.armed = False
        file.commit()
    if invocation.verbose:
        # Pickup/ID.eml keeps its id in the Queue: `spoolmail queue show ID` finds it.
        print(queue_id, file=context.out)
    return EX_OK


@attrs.frozen
class _Envelope:
    sender: str
    recipients: tuple[str, ...]
    full_name: str | None


def _pickup_head(
    head: _Head, envelope: _Envelope, *, options: PickupOptions, queue_id: str, now: datetime
) -> bytes:
    """The Pickup file up to its body: the envelope lines, then the header block without Bcc:
    and with ``From:`` when it had none; checked by the parser intake uses."""

    def rendered(block: bytes) -> bytes:
        data = render_pickup(block, sender=envelope.sender, recipients=envelope.recipients)
        _check(
            data,
            options=options,
            # The parser counts the file's lines; the sender counts the lines it was given.
            line_offset=1 + len(envelope.recipients) - (head.first_line - 1),
            queue_id=queue_id,
            now=now,
        )
        return data

    # The block as the caller wrote it first (the edit keeps fields only, so it would hide a
    # line that is not one), then as it will be written.
    rendered(head.block)
    from_field = None
    if envelope.sender and not any(field.key == "from" for field in fields(head.block)):
        from_field = _from_field(envelope.sender, envelope.full_name)
    written = rendered(_edited_head(head, from_field=from_field))
    if len(written) > MAX_HEAD:
        raise _Failure(
            EX_DATAERR,
            f"the header section with its {len(envelope.recipients)} recipients is longer "
            f"than {MAX_HEAD} bytes; nothing was sent",
        )
    return written


def _write_body(
    file: PickupFile, head: _Head, chunks: Iterator[bytes], *, dot_stuffed: bool
) -> None:
    """Stream the body into ``file``, a chunk at a time: line ends become CRLF and a NUL is
    refused, as intake does; leading dots are doubled for a service that un-stuffs them."""
    body = PickupBody(first_line=head.body_line, dot_stuffed=False)
    stuff = _DotStuffer() if dot_stuffed else None
    try:
        for chunk in _with_first(head.rest, chunks):
            data = body.feed(chunk)
            file.write(stuff(data) if stuff else data)
        data = body.finish()
        file.write(stuff(data) if stuff else data)
    except BodyRejected as problem:
        raise _Failure(
            EX_DATAERR, f"{problem.reason} ({problem.status}); nothing was sent"
        ) from None


def _with_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _list_queue(settings: Settings, out: TextIO) -> int:
    """``mailq`` / ``-bp``: ``spoolmail queue``, on a MailRoot that exists (listing one that
    does not would create it, as this user)."""
    root = _local_root(settings.root)
    if not os.path.isdir(root):
        raise _Failure(EX_CONFIG, f"no MailRoot at {root}")
    # Imported when used: the spoolmail-sendmail script needs none of the command tree.
    from spoolmail._cli.main import main as spoolmail  # noqa: PLC0415

    return spoolmail(["--root", root, "queue"], out=out)


# -- entry points ----------------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    *,
    program: str = "sendmail",
    config: Path | None = None,
    root: str | None = None,
    stdin: BinaryIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], datetime] = _now,
    ids: QueueIds | None = None,
) -> int:
    """Run one sendmail command line; returns its exit status (sysexits.h), never raises.

    ``program`` is the name it was run by (``sendmail``, ``mailq``, ``newaliases``);
    ``config`` and ``root`` are spoolmail's ``--config`` and ``--root``. ``stdin`` (default
    the process's, as bytes) holds the message; ``out`` gets what ``-v`` and ``-bp`` print,
    ``err`` one line per failure.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if stdin is None and sys.stdin is not None:
        stdin = sys.stdin.buffer
    context = _Context(
        stdin=stdin,
        out=out,
        environ=os.environ if environ is None else environ,
        clock=clock,
        ids=ids or QueueIds(),
    )
    try:
        invocation = parse_command_line(argv, program=program)
        if invocation.mode is Mode.HELP:
            out.write(_USAGE)
            return EX_OK
        if invocation.mode is Mode.NEWALIASES:
            err.write(f"{_PROGRAM}: spoolmail has no alias database; nothing to do\n")
            return EX_OK
        settings = find_settings(
            config_option=invocation.config,
            config_flag=config,
            root_flag=root,
            environ=context.environ,
        )
        if invocation.mode is Mode.LIST_QUEUE:
            return _list_queue(settings, out)
        return _send(invocation, settings, context)
    except _Failure as failure:
        err.write(f"{_PROGRAM}: {failure}\n")
        return failure.status
    except Exception as exc:  # noqa: BLE001 (a caller such as PHP gets a status, not a traceback)
        err.write(f"{_PROGRAM}: internal error, nothing was sent: {exc!r}\n")
        return EX_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    """The ``spoolmail-sendmail`` console script (link it as sendmail, mailq or newaliases)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "sendmail"
    return run(sys.argv[1:] if argv is None else argv, program=program)


def add_command(commands: Any) -> None:
    """Add ``sendmail`` to the ``spoolmail`` command tree."""
    # Imported here: the spoolmail-sendmail script, started once a message, has no use for it.
    import argparse  # noqa: PLC0415

    command = commands.add_parser(
        "sendmail",
        add_help=False,
        # Every argument is sendmail's (-t, -oi, -fADDR, --, recipients). A prefix that no
        # argument can hold (a NUL ends C strings) leaves them all to parse_command_line.
        prefix_chars="\0",
    )
    command.add_argument("arguments", nargs=argparse.REMAINDER)
    command.set_defaults(handler=_command)


def _command(_settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    # The settings are found again as the console script finds them (-C, $SPOOLMAIL_CONFIG,
    # the default file), with spoolmail's own --config and --root first.
    arguments: list[str] = args.arguments
    return run(arguments, config=args.config, root=args.root, out=out)
