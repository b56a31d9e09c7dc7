"""``spoolmail sendmail`` and ``spoolmail-sendmail``: options, input, the file in Pickup, exits.

Through ``main(["sendmail", ...])`` with real files in a temporary MailRoot; the written file
is taken by a real ``MailService`` run where what arrives in Drop matters. The console script
runs as a subprocess under the names it is linked as, and as another user where permissions
matter (root only, as CI runs). After every command, no dot-name or ``.tmp`` file may be left
in Pickup.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolmail import MailService, Router, Spool
from spoolmail._cli import sendmail as sendmail_module
from spoolmail._cli.main import main
from spoolmail._core.ids import is_made_id
from spoolmail._store.pickup_writer import is_stale_temp

SCRIPT = Path(sys.executable).parent / "spoolmail-sendmail"
ROOT_ONLY = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (as CI runs)"
)
# Ids no account has here: setpriv takes numbers, so the tests need no users of their own.
SERVICE, SENDER, SENDERS_GROUP, STRANGER = 2_000_201, 2_000_202, 2_000_203, 2_000_204


@dataclass(frozen=True)
class Sent:
    status: int
    out: str
    err: str


def leftovers(root: Path) -> list[str]:
    """Temp files a sendmail left in Pickup: there must never be any."""
    pickup = root / "Pickup"
    if not pickup.is_dir():
        return []
    return [n for n in os.listdir(pickup) if n.startswith(".") or n.endswith(".tmp")]


def settings_file(path: Path, root: Path, **extra: object) -> Path:
    values = {
        "root": f'"{root}"',
        "local_domains": '["example.com", "example.org"]',
        "max_message_size": 100_000,
        **extra,
    }
    lines = ["[spoolmail]"]
    for key, value in values.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A MailRoot, and the environment naming its settings (the login name is ``webapp``)."""
    path = tmp_path / "MailRoot"
    Spool(str(path)).close()
    monkeypatch.setenv("SPOOLMAIL_CONFIG", str(settings_file(tmp_path / "s.toml", path)))
    monkeypatch.delenv("SPOOLMAIL_ROOT", raising=False)
    monkeypatch.delenv("NAME", raising=False)
    monkeypatch.setenv("LOGNAME", "webapp")  # getpass.getuser() reads it first
    return path


@pytest.fixture
def send(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Sent]:
    """``spoolmail sendmail ARGV`` with ``stdin`` as its standard input."""

    def run(*argv: str, stdin: bytes | io.RawIOBase = b"", spoolmail: tuple[str, ...] = ()) -> Sent:
        raw = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
        buffered = raw if isinstance(raw, io.BytesIO) else io.BufferedReader(raw)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(buffered))  # type: ignore[arg-type]
        out = io.StringIO()
        capsys.readouterr()
        status = main([*spoolmail, "sendmail", *argv], out=out)
        assert leftovers(root) == []
        return Sent(status, out.getvalue(), capsys.readouterr().err)

    return run


def pickup_files(root: Path) -> list[Path]:
    return sorted((root / "Pickup").iterdir())


def the_file(root: Path) -> bytes:
    [path] = pickup_files(root)
    return path.read_bytes()


def deliver(root: Path, *, dot_stuffed: bool = False) -> list[bytes]:
    """One run of a real service on the MailRoot; the Drop files, oldest first."""
    with Spool(str(root)) as spool:
        service = MailService(
            spool,
            router=Router(local_domains=["example.com", "example.org"]),
            fqdn="mail.example.com",
            pickup_settle=timedelta(0),
            pickup_dot_stuffed=dot_stuffed,
        )
        try:
            report = service.run_once()
        finally:
            service.close()
    assert report.badmail == ()
    assert list((root / "Pickup").iterdir()) == []
    return [path.read_bytes() for path in sorted((root / "Drop").iterdir())]


def envelope_and_body(drop: bytes) -> tuple[list[bytes], bytes, bytes]:
    """A Drop file's x-sender / x-receiver lines, its header block and its body."""
    head, _, body = drop.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    envelope = [line for line in lines if line.startswith((b"x-sender:", b"x-receiver:"))]
    return envelope, b"\r\n".join(lines[len(envelope) :]), body


# -- the envelope ---------------------------------------------------------------------------------


def test_recipients_on_the_command_line_make_the_envelope_and_it_is_silent(
    root: Path, send: Callable[..., Sent]
) -> None:
    sent = send(
        "-i",
        "-f",
        "app@example.com",
        "ops@example.com",
        "dev@example.org",
        stdin=b"From: App <app@example.com>\nSubject: hi\n\nhello\nworld\n",
    )
    assert sent == Sent(0, "", "")
    [path] = pickup_files(root)
    assert path.suffix == ".eml"
    assert is_made_id(path.stem)
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.read_bytes() == (
        b"x-sender: <app@example.com>\r\n"
        b"x-receiver: <ops@example.com>\r\n"
        b"x-receiver: <dev@example.org>\r\n"
        b"From: App <app@example.com>\r\n"
        b"Subject: hi\r\n"
        b"\r\n"
        b"hello\r\n"
        b"world\r\n"
    )


def test_v_prints_the_queue_id_that_the_message_keeps(
    root: Path, send: Callable[..., Sent]
) -> None:
    sent = send("-v", "ops@example.com", stdin=b"Subject: hi\n\nhello\n")
    assert sent.status == 0
    queue_id = sent.out.removesuffix("\n")
    assert is_made_id(queue_id)
    assert [p.name for p in pickup_files(root)] == [f"{queue_id}.eml"]
    [drop] = deliver(root)
    assert sorted(p.name for p in (root / "Drop").iterdir()) == [f"{queue_id}.eml"]
    envelope, _, body = envelope_and_body(drop)
    assert envelope == [b"x-sender: webapp@example.com", b"x-receiver: ops@example.com"]
    assert body == b"hello\r\n"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["-f", "app@example.com"], b"x-sender: <app@example.com>"),
        (["-fapp@example.com"], b"x-sender: <app@example.com>"),
        (["-r", "app@example.com"], b"x-sender: <app@example.com>"),
        (["-rapp@example.com"], b"x-sender: <app@example.com>"),
        (["-f", "<app@Example.COM>"], b"x-sender: <app@example.com>"),
        (["-f", '"App, Inc." <app@example.com>'], b"x-sender: <app@example.com>"),
        (["-f", "cron"], b"x-sender: <cron@example.com>"),
        (["-f", "<>"], b"x-sender: <>"),
        (["-f", ""], b"x-sender: <>"),
        (["-f", "first@example.com", "-f", "last@example.com"], b"x-sender: <last@example.com>"),
        ([], b"x-sender: <webapp@example.com>"),  # the login name at the default domain
    ],
)
def test_the_sender_forms(
    root: Path, send: Callable[..., Sent], argv: list[str], line: bytes
) -> None:
    assert send(*argv, "ops@example.com", stdin=b"Subject: s\n\nb\n").status == 0
    assert the_file(root).split(b"\r\n")[0] == line


def test_a_null_sender_arrives_as_one(root: Path, send: Callable[..., Sent]) -> None:
    assert send("-f", "<>", "ops@example.com", stdin=b"Subject: s\n\nb\n").status == 0
    [drop] = deliver(root)
    assert envelope_and_body(drop)[0][0] == b"x-sender: <>"
    assert b"\r\nFrom:" not in drop  # no From: made up for the null sender


def test_bare_local_names_get_the_default_domain(root: Path, send: Callable[..., Sent]) -> None:
    # As cron passes MAILTO ("root,admin") and writes it into To:.
    sent = send("-t", "-f", "cron", "root,admin", stdin=b"To: ops, dev@example.org\n\nbody\n")
    assert sent.status == 0, sent.err
    assert the_file(root).split(b"\r\n")[:5] == [
        b"x-sender: <cron@example.com>",
        b"x-receiver: <root@example.com>",
        b"x-receiver: <admin@example.com>",
        b"x-receiver: <ops@example.com>",
        b"x-receiver: <dev@example.org>",
    ]


def test_t_sends_to_to_cc_and_bcc_and_removes_bcc(root: Path, send: Callable[..., Sent]) -> None:
    message = (
        b"From: App <app@example.com>\n"
        b"To: Ops <ops@example.com>\n"
        b"Cc: dev@example.org,\n"
        b"  qa@example.org\n"
        b"Bcc: audit@example.com\n"
        b"Subject: hi\n"
        b"\n"
        b"hello\n"
    )
    assert send("-t", "-i", stdin=message).status == 0
    written = the_file(root)
    assert b"audit" not in written.partition(b"x-receiver: <audit@example.com>\r\n")[2]
    [drop] = deliver(root)
    envelope, head, body = envelope_and_body(drop)
    assert envelope == [
        b"x-sender: webapp@example.com",
        b"x-receiver: ops@example.com",
        b"x-receiver: dev@example.org",
        b"x-receiver: qa@example.org",
        b"x-receiver: audit@example.com",
    ]
    assert b"Bcc" not in head
    assert b"audit" not in head
    assert b"\r\nCc: dev@example.org,\r\n  qa@example.org\r\n" in head
    assert body == b"hello\r\n"


def test_t_adds_the_command_line_recipients(root: Path, send: Callable[..., Sent]) -> None:
    sent = send("-t", "boss@example.com", "ops@example.com", stdin=b"To: ops@example.com\n\nb\n")
    assert sent.status == 0
    assert [line for line in the_file(root).split(b"\r\n") if line.startswith(b"x-r")] == [
        b"x-receiver: <boss@example.com>",
        b"x-receiver: <ops@example.com>",
    ]


def test_t_sends_a_resent_message_to_its_resent_destinations(
    root: Path, send: Callable[..., Sent]
) -> None:
    message = (
        b"Resent-From: ops@example.com\n"
        b"Resent-To: dev@example.org\n"
        b"Resent-Bcc: audit@example.com\n"
        b"From: app@example.com\n"
        b"To: ops@example.com\n"
        b"\n"
        b"forwarded\n"
    )
    assert send("-t", stdin=message).status == 0
    written = the_file(root)
    assert [line for line in written.split(b"\r\n") if line.startswith(b"x-")] == [
        b"x-sender: <webapp@example.com>",
        b"x-receiver: <dev@example.org>",
        b"x-receiver: <audit@example.com>",
    ]
    assert b"Resent-Bcc" not in written


def test_without_t_the_headers_name_no_recipient(root: Path, send: Callable[..., Sent]) -> None:
    message = b"To: ops@example.com\nBcc: audit@example.com\n\nb\n"
    assert send("dev@example.org", stdin=message).status == 0
    written = the_file(root)
    assert [line for line in written.split(b"\r\n") if line.startswith(b"x-r")] == [
        b"x-receiver: <dev@example.org>"
    ]
    assert b"Bcc" not in written  # removed all the same: a Bcc: is never shown


@pytest.mark.parametrize(
    ("argv", "environ", "line"),
    [
        ([], {}, b"From: webapp@example.com"),
        (["-F", "Web App"], {}, b"From: Web App <webapp@example.com>"),
        (["-FCronDaemon"], {}, b"From: CronDaemon <webapp@example.com>"),
        (["-F", "App, Inc."], {}, b'From: "App, Inc." <webapp@example.com>'),
        (["-F", "Zoë"], {}, b"From: =?utf-8?q?Zo=C3=AB?= <webapp@example.com>"),
        ([], {"NAME": "From Env"}, b"From: From Env <webapp@example.com>"),
        (["-F", "Flag"], {"NAME": "From Env"}, b"From: Flag <webapp@example.com>"),
    ],
)
def test_a_message_without_from_gets_one(
    root: Path,
    send: Callable[..., Sent],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    environ: dict[str, str],
    line: bytes,
) -> None:
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert send(*argv, "ops@example.com", stdin=b"Subject: s\n\nb\n").status == 0
    head = the_file(root).partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[-1] == line
    [drop] = deliver(root)
    assert b"\r\n" + line + b"\r\n" in drop


def test_full_name_is_used_only_without_from(root: Path, send: Callable[..., Sent]) -> None:
    message = b"From: The App <app@example.com>\n\nb\n"
    assert send("-F", "Other", "ops@example.com", stdin=message).status == 0
    written = the_file(root)
    assert written.count(b"From:") == 1
    assert b"From: The App <app@example.com>\r\n" in written


def test_a_full_name_with_a_line_break_is_refused(root: Path, send: Callable[..., Sent]) -> None:
    sent = send("-F", "x\nBcc: everyone@example.com", "ops@example.com", stdin=b"\nb\n")
    assert sent.status == 64
    assert sent.err == (
        "spoolmail sendmail: -F: the full name holds a control character or line break\n"
    )
    assert pickup_files(root) == []


# -- the input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdin", "body"),
    [
        (b"Subject: s\n\nhello\n.\nnot sent\n", b"hello\r\n"),
        (b"Subject: s\r\n\r\nhello\r\n.\r\nnot sent\r\n", b"hello\r\n"),
        (b"Subject: s\n\nhello\n.", b"hello\r\n"),  # on the last line, without a line end
        (b"Subject: s\n\n.\nnot sent\n", b""),
        (b"Subject: s\n\n..\n. \n.x\n.\n", b"..\r\n. \r\n.x\r\n"),  # only a lone "." ends
    ],
)
def test_without_i_a_lone_dot_ends_the_message(
    root: Path, send: Callable[..., Sent], stdin: bytes, body: bytes
) -> None:
    assert send("ops@example.com", stdin=stdin).status == 0
    assert the_file(root).partition(b"\r\n\r\n")[2] == body


def test_a_lone_dot_in_the_header_block_ends_a_message_of_headers(
    root: Path, send: Callable[..., Sent]
) -> None:
    assert send("ops@example.com", stdin=b"Subject: s\n.\nX-Not: sent\n").status == 0
    assert the_file(root).split(b"\r\n")[2:] == [
        b"Subject: s",
        b"From: webapp@example.com",
        b"",
    ]


def test_a_lone_dot_on_the_first_line_is_an_empty_message(
    root: Path, send: Callable[..., Sent]
) -> None:
    assert send("ops@example.com", stdin=b".\nSubject: not sent\n").status == 0
    assert the_file(root).split(b"\r\n")[2:] == [b"From: webapp@example.com", b""]


@pytest.mark.parametrize("option", [["-i"], ["-oi"], ["-o", "i"]])
def test_i_and_oi_keep_a_lone_dot_verbatim(
    root: Path, send: Callable[..., Sent], option: list[str]
) -> None:
    stdin = b"Subject: s\n\nhello\n.\nstill here\n.\n"
    assert send(*option, "ops@example.com", stdin=stdin).status == 0
    assert the_file(root).partition(b"\r\n\r\n")[2] == b"hello\r\n.\r\nstill here\r\n.\r\n"
    [drop] = deliver(root)
    assert envelope_and_body(drop)[2] == b"hello\r\n.\r\nstill here\r\n.\r\n"


def lone_dot_reference(data: bytes) -> bytes:
    """What a line-by-line sendmail keeps: the lines before the first one holding only "."."""
    kept = []
    for line in data.splitlines(keepends=True):
        if line in (b".", b".\n", b".\r\n"):
            break
        kept.append(line)
    return b"".join(kept)


@given(
    lines=st.lists(st.sampled_from([b".", b"..", b"a", b".a", b"", b"\r", b"x."]), max_size=12),
    ends=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=12, max_size=12),
    last_end=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_the_lone_dot_is_found_wherever_the_chunks_are_cut(
    lines: list[bytes], ends: list[bytes], last_end: bool, cuts: list[int]
) -> None:
    data = b"".join(line + end for line, end in zip(lines, ends, strict=False))
    if lines and not last_end:
        data = data.removesuffix(ends[len(lines) - 1])
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points) if data[a:b]]
    pieces = list(sendmail_module._until_lone_dot(iter(chunks)))
    assert b"" not in pieces
    assert b"".join(pieces) == lone_dot_reference(data)


@pytest.mark.parametrize(
    "stdin",
    [
        b"Subject: s\n\none\ntwo\n",
        b"Subject: s\r\n\r\none\r\ntwo\r\n",
        b"Subject: s\r\rone\rtwo\r",
        b"Subject: s\r\n\none\rtwo",
    ],
)
def test_line_ends_become_crlf(root: Path, send: Callable[..., Sent], stdin: bytes) -> None:
    assert send("-i", "ops@example.com", stdin=stdin).status == 0
    assert the_file(root).split(b"\r\n", 2)[2] == (
        b"Subject: s\r\nFrom: webapp@example.com\r\n\r\none\r\ntwo\r\n"
    )


def test_empty_input_is_a_message_with_the_headers_added(
    root: Path, send: Callable[..., Sent]
) -> None:
    assert send("ops@example.com").status == 0
    assert the_file(root) == (
        b"x-sender: <webapp@example.com>\r\n"
        b"x-receiver: <ops@example.com>\r\n"
        b"From: webapp@example.com\r\n"
    )
    [drop] = deliver(root)
    _, head, body = envelope_and_body(drop)
    assert b"\r\nFrom: webapp@example.com\r\n" in head
    assert b"\r\nMessage-ID: <" in head
    assert b"\r\nDate: " in head
    assert body == b""


def test_input_without_a_header_block_is_all_body(root: Path, send: Callable[..., Sent]) -> None:
    # echo "disk full" | sendmail root
    assert send("root", stdin=b"disk full on /var: 91%\nsecond line\n").status == 0
    [drop] = deliver(root)
    envelope, head, body = envelope_and_body(drop)
    assert envelope == [b"x-sender: webapp@example.com", b"x-receiver: root@example.com"]
    assert b"\r\nFrom: webapp@example.com\r\n" in head
    assert body == b"disk full on /var: 91%\r\nsecond line\r\n"


class Pieces(io.RawIOBase):
    """Standard input that arrives in the given pieces, one a read."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.pieces.pop(0) if self.pieces else b""
        buffer[: len(data)] = data
        return len(data)


@pytest.mark.parametrize(
    "stdin",
    [
        b"From someone@example.com Sat Nov 28 10:00:00 2026\nSubject: s\n\nbody\n",
        b"From someone@example.com  Sat Nov 28 10:00:00 2026\r\nSubject: s\r\n\r\nbody\r\n",
        Pieces(b"From someone@example.com Sat Nov 28 10:00:00 2026\r", b"\nSubject: s\r\n\r\nbody"),
    ],
)
def test_a_leading_mailbox_from_line_is_dropped(
    root: Path, send: Callable[..., Sent], stdin: bytes | io.RawIOBase
) -> None:
    # procmail and formail pipe mailbox messages on, as Postfix's sendmail takes them.
    assert send("-i", "ops@example.com", stdin=stdin).status == 0
    assert the_file(root).split(b"\r\n")[2:] == [
        b"Subject: s",
        b"From: webapp@example.com",
        b"",
        b"body",
        b"",
    ]


def test_a_from_header_with_space_before_its_colon_is_a_header(
    root: Path, send: Callable[..., Sent]
) -> None:
    # RFC 5322 section 4.5.8: the obsolete syntax allows white space before the colon.
    assert send("ops@example.com", stdin=b"From : App <app@example.com>\n\nb\n").status == 0
    assert the_file(root).split(b"\r\n")[2:] == [b"From : App <app@example.com>", b"", b"b", b""]


@pytest.mark.parametrize(
    ("stdin", "complaint"),
    [
        (b"From x@example.com Sat\nSubject: s\nbad line\n\nb\n", "line 3 is not a header field"),
        (b"From x@example.com Sat\nSubject: s\n\nok\nbad\0\n", "line 5 contains a NUL byte"),
        (b"no header here\nsecond\0\n", "line 2 contains a NUL byte"),
        (b"\nbody first\nthen\0\n", "line 3 contains a NUL byte"),
    ],
)
def test_line_numbers_in_reasons_are_the_input_s(
    root: Path, send: Callable[..., Sent], stdin: bytes, complaint: str
) -> None:
    sent = send("-i", "ops@example.com", "dev@example.org", stdin=stdin)
    assert sent.status == 65
    assert sent.err.startswith(f"spoolmail sendmail: {complaint}")


def test_leading_envelope_lines_of_the_input_are_replaced(
    root: Path, send: Callable[..., Sent]
) -> None:
    # A Drop file piped back in: the command line's envelope wins.
    stdin = b"x-sender: old@example.com\nx-receiver: old@example.com\nSubject: s\n\nb\n"
    assert send("-f", "new@example.com", "ops@example.com", stdin=stdin).status == 0
    assert the_file(root).split(b"\r\n")[:3] == [
        b"x-sender: <new@example.com>",
        b"x-receiver: <ops@example.com>",
        b"Subject: s",
    ]


def test_a_setting_that_unstuffs_pickup_files_gets_its_dots_stuffed(
    root: Path, send: Callable[..., Sent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings_file(tmp_path / "stuffed.toml", root, pickup_dot_stuffed=True)
    monkeypatch.setenv("SPOOLMAIL_CONFIG", str(config))
    stdin = b"Subject: s\n\n.\n..two\nthree\n.four"
    assert send("-i", "ops@example.com", stdin=stdin).status == 0
    assert the_file(root).partition(b"\r\n\r\n")[2] == b"..\r\n...two\r\nthree\r\n..four\r\n"
    [drop] = deliver(root, dot_stuffed=True)
    assert envelope_and_body(drop)[2] == b".\r\n..two\r\nthree\r\n.four\r\n"


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "stdin", "complaint"),
    [
        ([], b"Subject: s\n\nb\n", "no recipients: name them after the options"),
        (["-t"], b"Subject: s\n\nb\n", "no recipients: -t found no address"),
        (["-t"], b"To: undisclosed-recipients:;\n\nb\n", "no recipients: -t found no address"),
        (["-t"], b"", "no recipients: -t found no address"),
    ],
)
def test_no_recipients_is_a_usage_error(
    root: Path, send: Callable[..., Sent], argv: list[str], stdin: bytes, complaint: str
) -> None:
    sent = send(*argv, stdin=stdin)
    assert sent.status == 64
    assert sent.err.startswith(f"spoolmail sendmail: {complaint}")
    assert pickup_files(root) == []


@pytest.mark.parametrize(
    ("argv", "stdin", "complaint"),
    [
        (
            ["a@@example.com"],
            b"",
            "bad recipient on the command line: 'a@@example.com' is not an address: "
            "it has more than one '@'",
        ),
        (
            ["<>"],
            b"",
            "bad recipient on the command line: '<>' is not an address list: the null path "
            "<> is not an address here",
        ),
        (
            ["-f", "two words@example.com", "ops@example.com"],
            b"",
            "bad sender (-f): 'two words@example.com' is not an address: it contains white space",
        ),
        (
            ["-t"],
            b"To: ops@example.com, Jo <jo@example..com>\n\nb\n",
            "bad recipient in the To: header: ",
        ),
    ],
)
def test_an_address_that_cannot_be_one_is_ex_nouser(
    root: Path, send: Callable[..., Sent], argv: list[str], stdin: bytes, complaint: str
) -> None:
    sent = send(*argv, stdin=stdin)
    assert sent.status == 67
    assert sent.err.startswith(f"spoolmail sendmail: {complaint}")
    assert pickup_files(root) == []


def test_a_login_name_that_cannot_be_an_address_asks_for_f(
    root: Path, send: Callable[..., Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGNAME", "web app")
    sent = send("ops@example.com", stdin=b"\nb\n")
    assert sent.status == 67
    assert sent.err.startswith("spoolmail sendmail: bad sender (the login name 'web app'): ")
    assert sent.err.endswith("; give one with -f\n")


@pytest.mark.parametrize(
    ("stdin", "complaint"),
    [
        (
            b"Subject: s\nthis is not a header\n\nbody\n",
            "line 2 is not a header field (no blank line separates the headers from the body?) "
            "(5.6.0); nothing was sent",
        ),
        (
            b"Subject: s\n\tfolded\nX-Bad Name: v\n\nbody\n",
            "line 3 is not a header field (no blank line separates the headers from the body?) "
            "(5.6.0); nothing was sent",
        ),
        (b"Subject: a\0b\n\nbody\n", "line 1 contains a NUL byte; a message is text (5.6.0)"),
        (
            b"Subject: s\n\nline two\nline three \0\n",
            "line 4 contains a NUL byte; a message is text (5.6.0); nothing was sent",
        ),
        (
            b"Subject: s\nFrom: \xff@example.com\n\nb\n",
            "the From: header (line 2) is not valid UTF-8",
        ),
        (
            b"Subject: " + b"x" * 1200 + b"\n\nb\n",
            "line 1 is 1209 octets long, over the 998 a line may have",
        ),
    ],
)
def test_a_message_intake_would_refuse_is_refused_now(
    root: Path, send: Callable[..., Sent], stdin: bytes, complaint: str
) -> None:
    sent = send("-i", "ops@example.com", stdin=stdin)
    assert sent.status == 65, sent.err
    assert sent.err.startswith(f"spoolmail sendmail: {complaint}")
    assert pickup_files(root) == []


def test_a_t_header_that_is_not_utf8_is_a_data_error(root: Path, send: Callable[..., Sent]) -> None:
    sent = send("-t", stdin=b"To: \xe9t\xe9@example.com\n\nb\n")
    assert sent.status == 65
    assert sent.err.startswith("spoolmail sendmail: the To: header is not valid UTF-8")
    assert pickup_files(root) == []


def test_a_message_over_the_size_limit_is_refused_and_nothing_is_left(
    root: Path, send: Callable[..., Sent]
) -> None:
    body = b"".join(b"line %06d of a long message\n" % n for n in range(10_000))  # 280 kB
    sent = send("-i", "ops@example.com", stdin=b"Subject: big\n\n" + body)
    assert sent.status == 65
    assert sent.err == (
        "spoolmail sendmail: message larger than 100000 bytes (the max_message_size setting); "
        "nothing was sent\n"
    )
    assert pickup_files(root) == []


def test_a_file_of_exactly_the_size_limit_is_sent(root: Path, send: Callable[..., Sent]) -> None:
    # The limit is intake's: on the Pickup file, envelope lines and CRLF line ends included.
    head = b"x-sender: <webapp@example.com>\r\nx-receiver: <ops@example.com>\r\nSubject: s\r\n"
    head += b"From: webapp@example.com\r\n\r\n"
    body_size = 100_000 - len(head)
    body = b"x" * (body_size - 2) + b"\n"
    assert send("-i", "ops@example.com", stdin=b"Subject: s\n\n" + body).status == 0
    assert len(the_file(root)) == 100_000
    [drop] = deliver(root)
    assert envelope_and_body(drop)[2] == b"x" * (body_size - 2) + b"\r\n"
    sent = send("-i", "ops@example.com", stdin=b"Subject: s\n\nx" + body)
    assert sent.status == 65


def test_a_header_section_over_a_mebibyte_is_refused(
    root: Path, send: Callable[..., Sent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings_file(tmp_path / "big.toml", root, max_message_size=8 * 1024 * 1024)
    monkeypatch.setenv("SPOOLMAIL_CONFIG", str(config))
    head = b"".join(b"X-Filler-%07d: %s\n" % (n, b"y" * 60) for n in range(15_000))
    sent = send("-i", "ops@example.com", stdin=head + b"\nbody\n")
    assert sent.status == 65
    assert sent.err == (
        "spoolmail sendmail: the header section is longer than 1048576 bytes; nothing was sent\n"
    )
    assert pickup_files(root) == []


class Generated(io.RawIOBase):
    """``size`` bytes of numbered lines after ``head``, made as they are read, never held."""

    def __init__(self, head: bytes, size: int) -> None:
        self.head = head
        self.left = size
        self.number = 0
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.head:
            data, self.head = self.head, b""
        else:
            if len(self.pending) < len(buffer):
                count = len(buffer) // 77 + 1
                lines = range(self.number, self.number + count)
                self.pending += b"".join(b"%076d\n" % n for n in lines)
                self.number += count
            data = self.pending[: min(len(buffer), self.left)]
            self.pending = self.pending[len(data) :]
            self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def test_a_50_megabyte_message_streams_through_in_little_memory(
    root: Path, send: Callable[..., Sent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 50 * 1024 * 1024
    config = settings_file(tmp_path / "big.toml", root, max_message_size=64 * 1024 * 1024)
    monkeypatch.setenv("SPOOLMAIL_CONFIG", str(config))
    tracemalloc.start()
    try:
        sent = send("-i", "ops@example.com", stdin=Generated(b"Subject: big\n\n", size))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent.status == 0, sent.err
    assert peak < 4 * 1024 * 1024  # the message is 50 MiB; one chunk is 64 KiB
    # What was written is the input with CRLF line ends, checked a chunk at a time.
    expected, written = hashlib.sha256(), hashlib.sha256()
    source, chunk = io.BufferedReader(Generated(b"", size)), b""
    while data := source.read(1 << 20):
        expected.update(data.replace(b"\n", b"\r\n"))
        chunk = data
    if not chunk.endswith(b"\n"):
        expected.update(b"\r\n")  # the last line, cut short, gets its line end
    [path] = pickup_files(root)
    with path.open("rb") as handle:
        head, _, start = handle.read(200).partition(b"\r\n\r\n")
        assert head.endswith(b"Subject: big\r\nFrom: webapp@example.com")
        written.update(start)
        while chunk := handle.read(1 << 20):
            written.update(chunk)
    assert written.hexdigest() == expected.hexdigest()


# -- options and modes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-oem"],
        ["-odi"],
        ["-odb"],
        ["-om"],
        ["-o", "x"],
        ["-N", "never"],
        ["-N", "delay,failure"],
        ["-R", "hdrs"],
        ["-V", "envid-1"],
        ["-B", "8BITMIME"],
        ["-B8BITMIME"],
        ["-Am"],
        ["-c"],
        ["-e", "m"],
        ["-G"],
        ["-h", "17"],
        ["-L", "label"],
        ["-m"],
        ["-n"],
        ["-O", "DeliveryMode=b"],
        ["-p", "smtp"],
        ["-U"],
        ["-X", "/tmp/log"],
        ["-XV"],
        ["-x"],
        ["-bm"],
        ["-bh"],
        ["-bp", "-bm"],
    ],
)
def test_options_postfix_ignores_are_accepted(
    root: Path, send: Callable[..., Sent], argv: list[str]
) -> None:
    assert send(*argv, "ops@example.com", stdin=b"Subject: s\n\nb\n") == Sent(0, "", "")
    assert len(pickup_files(root)) == 1


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (
            ["-k", "ops@example.com"],
            "option -k not recognized (spoolmail sendmail --help lists them)",
        ),
        (["--root=/x"], "option --root not recognized (spoolmail sendmail --help lists them)"),
        (["-f"], "option -f requires argument (spoolmail sendmail --help lists them)"),
        (
            ["-bs", "ops@example.com"],
            "-bs (SMTP on standard input) is not supported: pipe the message in",
        ),
        (["-bd"], "-bd (daemon mode) is not how spoolmail runs: start `spoolmail run`"),
        (["-bv"], "-bv (verify addresses) is not supported"),
        (["-bz"], "-bz: no such mode (-bm sends, -bp lists the Queue)"),
        (["-q"], "-q (run the queue) is not a sendmail matter here"),
        (["-q1h"], "-q (run the queue) is not a sendmail matter here"),
    ],
)
def test_unknown_options_and_modes_are_usage_errors(
    root: Path, send: Callable[..., Sent], argv: list[str], complaint: str
) -> None:
    sent = send(*argv, stdin=b"Subject: s\n\nb\n")
    assert sent.status == 64
    assert sent.err.startswith(f"spoolmail sendmail: {complaint}")
    assert pickup_files(root) == []


def test_double_dash_ends_the_options(root: Path, send: Callable[..., Sent]) -> None:
    # Postfix's advice for user-supplied recipients: /path/to/sendmail options -- recipients
    sent = send("-i", "--", "-t@example.com", "ops@example.com", stdin=b"To: x@example.com\n\nb")
    assert sent.status == 0, sent.err
    assert [line for line in the_file(root).split(b"\r\n") if line.startswith(b"x-r")] == [
        b"x-receiver: <-t@example.com>",
        b"x-receiver: <ops@example.com>",
    ]


def test_options_after_a_recipient_are_recipients(root: Path, send: Callable[..., Sent]) -> None:
    # Postfix's getopt stops at the first operand too: "-t" is a local name, not the option.
    sent = send("ops@example.com", "-t", stdin=b"To: dev@example.org\n\nb\n")
    assert sent.status == 0
    assert [line for line in the_file(root).split(b"\r\n") if line.startswith(b"x-r")] == [
        b"x-receiver: <ops@example.com>",
        b"x-receiver: <-t@example.com>",
    ]


def test_help_lists_the_options(send: Callable[..., Sent]) -> None:
    sent = send("--help")
    assert sent.status == 0
    assert sent.out.startswith("usage: spoolmail sendmail [option ...] [--] [recipient ...]\n")
    assert "  -t           also send to the To:, Cc: and Bcc: addresses" in sent.out


def test_bp_lists_the_queue_as_spoolmail_queue_does(root: Path, send: Callable[..., Sent]) -> None:
    assert send("-bp") == Sent(0, "The Queue is empty.\n", "")


def test_bi_and_capital_i_build_no_alias_database(send: Callable[..., Sent]) -> None:
    note = "spoolmail sendmail: spoolmail has no alias database; nothing to do\n"
    assert send("-bi") == Sent(0, "", note)
    assert send("-I") == Sent(0, "", note)


# -- settings and the MailRoot ---------------------------------------------------------------------


def test_c_names_the_settings_file_or_its_folder(
    root: Path, send: Callable[..., Sent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPOOLMAIL_CONFIG")
    folder = tmp_path / "etc"
    folder.mkdir()
    settings_file(folder / "spoolmail.toml", root)
    for config in (str(folder / "spoolmail.toml"), str(folder)):
        assert send("-C", config, "cron", stdin=b"\nb\n").status == 0
    assert len(pickup_files(root)) == 2
    assert all(b"x-receiver: <cron@example.com>" in p.read_bytes() for p in pickup_files(root))


def test_the_root_comes_from_spoolmail_root_or_the_environment(
    tmp_path: Path, send: Callable[..., Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "Other"
    Spool(str(other)).close()
    monkeypatch.setenv("SPOOLMAIL_ROOT", str(other))
    assert send("ops@example.com", stdin=b"\nb\n").status == 0
    third = tmp_path / "Third"
    Spool(str(third)).close()
    assert send("ops@example.com", stdin=b"\nb\n", spoolmail=("--root", str(third))).status == 0
    assert len(list((other / "Pickup").iterdir())) == 1
    assert len(list((third / "Pickup").iterdir())) == 1


def test_without_any_settings_the_default_file_is_read(
    tmp_path: Path, send: Callable[..., Sent], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPOOLMAIL_CONFIG")
    default = settings_file(tmp_path / "etc.toml", root)
    monkeypatch.setattr(sendmail_module, "DEFAULT_SETTINGS", default)
    assert send("cron", stdin=b"\nb\n").status == 0
    assert b"x-receiver: <cron@example.com>" in the_file(root)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("[spoolmail\n", "is not valid TOML"),
        ("[spoolmail]\nnot_a_setting = 1\n", "unknown setting 'not_a_setting'"),
        ('[spoolmail]\nlocal_domains = ["bad domain"]\n', "local_domains: 'bad domain' is not"),
        ('[spoolmail]\nfqdn = "-x-"\n', "PickupOptions.fqdn: "),
        ("[spoolmail]\nlocal_domains = []\n", "local_domains is empty"),
    ],
)
def test_bad_settings_are_ex_config(
    root: Path,
    send: Callable[..., Sent],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: str,
    complaint: str,
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content.replace("[spoolmail]\n", f'[spoolmail]\nroot = "{root}"\n'))
    monkeypatch.setenv("SPOOLMAIL_CONFIG", str(config))
    sent = send("ops@example.com", stdin=b"\nb\n")
    assert sent.status == 78
    assert complaint in sent.err
    assert pickup_files(root) == []


def test_an_unreadable_settings_file_is_ex_config(
    send: Callable[..., Sent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOOLMAIL_CONFIG", str(tmp_path / "missing.toml"))
    sent = send("ops@example.com", stdin=b"\nb\n")
    assert sent.status == 78
    assert sent.err.startswith(
        f"spoolmail sendmail: cannot read settings file {tmp_path / 'missing.toml'}: "
    )


def test_a_mailroot_without_pickup_is_ex_config_and_nothing_is_made(
    tmp_path: Path, send: Callable[..., Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "Nowhere"
    monkeypatch.setenv("SPOOLMAIL_ROOT", str(missing))
    sent = send("ops@example.com", stdin=b"\nb\n")
    assert sent.status == 78
    assert sent.err.startswith(
        f"spoolmail sendmail: no Pickup folder at {missing / 'Pickup'}: sendmail writes into an "
        "existing MailRoot and makes none"
    )
    assert not missing.exists()
    assert send("-bp").status == 78  # mailq neither
    assert not missing.exists()


def test_a_pickup_that_is_a_file_is_ex_config(
    tmp_path: Path, send: Callable[..., Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / "Odd"
    odd.mkdir()
    (odd / "Pickup").write_text("not a folder")
    monkeypatch.setenv("SPOOLMAIL_ROOT", str(odd))
    sent = send("ops@example.com", stdin=b"\nb\n")
    assert sent == Sent(78, "", f"spoolmail sendmail: {odd / 'Pickup'} is not a folder\n")
    (tmp_path / "File").write_text("not a MailRoot")
    monkeypatch.setenv("SPOOLMAIL_ROOT", str(tmp_path / "File"))
    sent = send("ops@example.com", stdin=b"\nb\n")
    assert sent.status == 78
    assert "Not a directory" in sent.err


def test_a_mailroot_that_is_not_a_local_folder_is_ex_config(
    send: Callable[..., Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOOLMAIL_ROOT", "mem://")
    sent = send("ops@example.com", stdin=b"\nb\n")
    assert sent.status == 78
    assert "the MailRoot 'mem://' is not a folder on this machine" in sent.err


def test_osfs_urls_name_local_folders(
    root: Path, send: Callable[..., Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOOLMAIL_ROOT", f"osfs://{root}")
    assert send("ops@example.com", stdin=b"\nb\n").status == 0
    assert len(pickup_files(root)) == 1


# -- failures while writing ------------------------------------------------------------------------


class Interrupting(io.RawIOBase):
    """Standard input that gets SIGTERM after its header block, as a killed writer would; it
    notes what Pickup holds at that moment."""

    def __init__(self, pickup: Path) -> None:
        self.pickup = pickup
        self.reads = 0
        self.seen: list[str] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        data = b"Subject: s\n\n" if self.reads == 1 else b"more body\n"
        if self.reads == 2:
            self.seen = os.listdir(self.pickup)
            os.kill(os.getpid(), signal.SIGTERM)
        buffer[: len(data)] = data
        return len(data)


def test_a_signal_before_the_commit_removes_the_temp_file(
    root: Path, send: Callable[..., Sent]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    stdin = Interrupting(root / "Pickup")
    sent = send("-i", "ops@example.com", stdin=stdin)
    assert sent == Sent(75, "", "spoolmail sendmail: stopped by SIGTERM; nothing was sent\n")
    assert pickup_files(root) == []
    assert signal.getsignal(signal.SIGTERM) is before
    # While it was written: one hidden file, of the name the service's sweep removes once a
    # killed writer (SIGKILL, a power cut) left it a day.
    [temp] = stdin.seen
    assert temp.startswith(".")
    assert is_stale_temp(temp, mtime=0.0, now=2 * 86_400.0)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (errno.ENOSPC, 75),
        (errno.EDQUOT, 75),
        (errno.EACCES, 77),
        (errno.EPERM, 77),
        (errno.EROFS, 73),
        (errno.EEXIST, 73),
        (errno.ENOENT, 78),
        (errno.EIO, 74),
        (errno.EFBIG, 74),
    ],
)
def test_what_each_file_error_exits_with(code: int, status: int) -> None:
    failure = sendmail_module._storage_failure(OSError(code, os.strerror(code)), "doing")
    assert failure.status == status
    assert str(failure).startswith(f"doing: {os.strerror(code)}; nothing was sent")


@ROOT_ONLY
def test_a_full_disk_is_ex_tempfail_and_leaves_nothing(
    tmp_path: Path, send: Callable[..., Sent], monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        full = disk / "MailRoot"
        Spool(str(full)).close()
        config = settings_file(tmp_path / "full.toml", full, max_message_size=4 * 1024 * 1024)
        monkeypatch.setenv("SPOOLMAIL_CONFIG", str(config))
        body = b"".join(b"%078d\n" % n for n in range(8_000))  # 632 kB
        sent = send("-i", "ops@example.com", stdin=b"Subject: s\n\n" + body)
        assert sent.status == 75
        assert sent.err.startswith("spoolmail sendmail: cannot write ")
        assert sent.err.endswith(": No space left on device; nothing was sent (try again later)\n")
        assert list((full / "Pickup").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# -- the console script, as the names it is linked as ---------------------------------------------


def script() -> Path:
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing: install spoolmail (pip install -e .) to make it")
    return SCRIPT


def test_the_console_script_linked_as_sendmail_mailq_and_newaliases(
    root: Path, tmp_path: Path
) -> None:
    links = tmp_path / "sbin"
    links.mkdir()
    for name in ("sendmail", "mailq", "newaliases"):
        (links / name).symlink_to(script())
    environ = {**os.environ}
    sent = subprocess.run(
        [links / "sendmail", "-v", "-t", "-i"],
        input=b"To: ops@example.com\nSubject: s\n\nhello\n.\n",
        capture_output=True,
        check=False,
        env=environ,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr == b""
    queue_id = sent.stdout.decode().strip()
    assert is_made_id(queue_id)
    assert (root / "Pickup" / f"{queue_id}.eml").read_bytes().endswith(b"\r\nhello\r\n.\r\n")
    listed = subprocess.run([links / "mailq"], capture_output=True, check=False, env=environ)
    assert (listed.returncode, listed.stdout) == (0, b"The Queue is empty.\n")
    built = subprocess.run([links / "newaliases"], capture_output=True, check=False, env=environ)
    assert built.returncode == 0
    refused = subprocess.run(
        [links / "sendmail", "-bs"], capture_output=True, check=False, env=environ
    )
    assert refused.returncode == 64
    assert refused.stderr.startswith(b"spoolmail sendmail: -bs (SMTP on standard input)")
    assert leftovers(root) == []


# -- as real clients call it ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "stdin", "envelope"),
    [
        # git send-email --smtp-server=/path/to/spoolmail-sendmail: -i, the recipients, and the
        # envelope sender when one is set (--envelope-sender).
        (
            ["-i", "ops@example.com", "dev@example.org"],
            b"From: Jo Dev <jo@example.org>\nTo: ops@example.com\nCc: dev@example.org\n"
            b"Subject: [PATCH] fix\nMessage-ID: <patch-1@example.org>\n\n---\n.\n",
            [
                b"x-sender: webapp@example.com",
                b"x-receiver: ops@example.com",
                b"x-receiver: dev@example.org",
            ],
        ),
        (
            ["-i", "-f", "jo@example.org", "ops@example.com"],
            b"From: Jo Dev <jo@example.org>\nTo: ops@example.com\nSubject: [PATCH] fix\n\n.\n",
            [b"x-sender: jo@example.org", b"x-receiver: ops@example.com"],
        ),
        # s-nail / mailx (mta=/path/to/spoolmail-sendmail): -i, -r or -f for the sender,
        # then -- and the recipients.
        (
            ["-i", "-r", "me@example.com", "--", "ops@example.com"],
            b"Date: Sat, 28 Nov 2026 10:00:00 +0000\nTo: ops@example.com\nSubject: s-nail\n"
            b"Message-ID: <n-1@example.com>\nUser-Agent: s-nail v14.9\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n"
            b"From: me@example.com\n\n.\n",
            [b"x-sender: me@example.com", b"x-receiver: ops@example.com"],
        ),
        # mutt: -oem -oi -- recipients.
        (
            ["-oem", "-oi", "--", "ops@example.com"],
            b"From: me@example.com\nTo: ops@example.com\nSubject: mutt\n\n.\n",
            [b"x-sender: webapp@example.com", b"x-receiver: ops@example.com"],
        ),
        # Debian's cron: MAILTO on the command line, its own From: and To:.
        (
            ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
            b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> job\n\n.\n",
            [b"x-sender: webapp@example.com", b"x-receiver: root@example.com"],
        ),
        # cronie: -t, with MAILTO in To: and the sender given.
        (
            ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"],
            b"From: root (Cron Daemon)\nTo: root,admin\nSubject: Cron <root@host> job\n\n.\n",
            [
                b"x-sender: root@example.com",
                b"x-receiver: root@example.com",
                b"x-receiver: admin@example.com",
            ],
        ),
    ],
    ids=["git-send-email", "git-send-email-f", "s-nail", "mutt", "debian-cron", "cronie"],
)
def test_as_real_clients_call_it(
    root: Path, send: Callable[..., Sent], argv: list[str], stdin: bytes, envelope: list[bytes]
) -> None:
    assert send(*argv, stdin=stdin) == Sent(0, "", "")
    [drop] = deliver(root)
    got, head, body = envelope_and_body(drop)
    assert got == envelope
    assert head.count(b"From:") == 1  # theirs, none added
    assert body.endswith(b".\r\n")  # with -i a lone dot is the message's own


# -- as other users: the permissions of docs/running-as-a-service.md ------------------------------


def as_user(
    uid: int,
    groups: str,
    argv: list[str],
    stdin: bytes,
    environ: dict[str, str],
    *,
    umask: int = 0o022,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", f"--groups={groups}", *argv],
        input=stdin,
        capture_output=True,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ},
        cwd="/",
        umask=umask,
    )


@ROOT_ONLY
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_a_sender_with_write_access_to_pickup_alone_sends(shared_root: Path) -> None:
    # The page's folders: Pickup is setgid, sticky and -wx for the senders' group.
    root = shared_root / "spool"
    root.mkdir(mode=0o710)
    os.chown(root, SERVICE, SENDERS_GROUP)
    for name in ("Pickup", "Queue", "BadMail", "Drop", "SortTemp"):
        (root / name).mkdir()
    pickup = root / "Pickup"
    os.chown(pickup, SERVICE, SENDERS_GROUP)
    pickup.chmod(0o3730)
    config = settings_file(shared_root / "s.toml", root)
    config.chmod(0o644)
    environ = {"SPOOLMAIL_CONFIG": str(config), "LOGNAME": "webapp"}
    stdin = b"To: ops@example.com\n\nhello\n"
    sent = as_user(
        SENDER, str(SENDERS_GROUP), [str(script()), "-t", "-i"], stdin, environ, umask=0o077
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr == b""
    assert as_user(SENDER, str(SENDERS_GROUP), ["ls", str(pickup)], b"", {}).returncode != 0
    [written] = pickup.iterdir()
    info = written.stat()
    # The service reads it through the group, whatever the sender's umask.
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (SENDER, SENDERS_GROUP, 0o640)
    [drop] = deliver(root)
    assert envelope_and_body(drop)[0] == [
        b"x-sender: webapp@example.com",
        b"x-receiver: ops@example.com",
    ]


@ROOT_ONLY
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_a_sender_who_may_not_write_pickup_is_ex_noperm(shared_root: Path) -> None:
    root = shared_root / "spool"
    Spool(str(root)).close()
    for path in (root, *root.iterdir()):
        path.chmod(0o755)
    config = settings_file(shared_root / "s.toml", root)
    config.chmod(0o644)
    environ = {"SPOOLMAIL_CONFIG": str(config)}
    sent = as_user(
        STRANGER, str(STRANGER), [str(script()), "-f", "a@example.com", "ops"], b"", environ
    )
    assert sent.returncode == 77
    name = pwd.getpwuid(STRANGER).pw_name if _has_user(STRANGER) else f"with id {STRANGER}"
    assert sent.stderr.decode() == (
        f"spoolmail sendmail: cannot create a file in {root / 'Pickup'}: permission denied "
        f"(the user {name} needs write and search permission on Pickup)\n"
    )
    assert list((root / "Pickup").iterdir()) == []


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
