"""Hostile or malformed operator input to the command line, on real MailRoots (OSFS, temp dirs).

Ids given on the command line, names given to ``queue import-iis``, settings files, ``--root``,
and files another user could have planted in the MailRoot (links, FIFOs, damaged envelopes,
transcripts, BadMail reports, Log/ lines, suppression lines, trigger files). For each: one clear
line on stderr, a sysexits-style status, no traceback, no hang, and nothing outside the MailRoot
read or changed. Tests that could hang run the command in a subprocess with a timeout.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spoolmail import Spool
from spoolmail._cli.main import EX_FAILED, EX_OK, EX_TEMPFAIL, EX_USAGE, main
from tests.messages import message

SECRET = b"TOPSECRET: outside the MailRoot\n"
ERROR_LINE_MOST = 400  # characters: an error names what was given, cut short
# A command that could hang runs in a subprocess, stopped after this many seconds.
TIMEOUT = 30


class Cli:
    """``spoolmail --root ROOT ...`` in this process: (status, stdout, stderr)."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys

    def __call__(self, *argv: str, root: bool = True) -> tuple[int, str, str]:
        self.capsys.readouterr()
        out = io.StringIO()
        status = main([*(["--root", str(self.root)] if root else []), *argv], out=out)
        return status, out.getvalue(), self.capsys.readouterr().err

    def admit(self, to: str = "bob@remote.test") -> str:
        with Spool(str(self.root)) as spool:
            return spool.admit(
                message(to), sender="alice@example.com", recipients=[to], origin="test"
            )

    def folder(self, name: str) -> Path:
        return self.root / name


@pytest.fixture
def secret(tmp_path: Path) -> Iterator[Path]:
    """A file outside the MailRoot: never read into any output, never changed."""
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    before = path.stat()
    yield path
    after = path.stat()
    assert path.read_bytes() == SECRET
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    root = tmp_path / "MailRoot"
    made = Cli(root, capsys)
    with Spool(str(root)):
        pass
    return made


def one_line(err: str, *, most: int = ERROR_LINE_MOST) -> str:
    """The error output: exactly one line, short, no traceback."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err[:2000]
    assert len(lines[0]) <= most, lines[0][:200]
    assert lines[0].startswith("spoolmail: ")
    return lines[0]


def spoolmail(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """The command in a subprocess that cannot hang the tests."""
    return subprocess.run(
        [sys.executable, "-m", "spoolmail", *argv],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def tree(path: Path) -> dict[str, bytes | str]:
    """Every entry under ``path``: a file's bytes, a link's target, a FIFO's kind."""
    found: dict[str, bytes | str] = {}
    for entry in sorted(path.rglob("*")):
        name = str(entry.relative_to(path))
        if entry.is_symlink():
            found[name] = f"-> {os.readlink(entry)}"
        elif entry.is_fifo():
            found[name] = "fifo"
        elif entry.is_file():
            found[name] = entry.read_bytes()
    return found


# -- ids on the command line -----------------------------------------------------------------------

HOSTILE_IDS = [
    pytest.param("../x", id="dotdot"),
    pytest.param("..%2fetc%2fpasswd", id="encoded-dotdot"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("Queue/../../etc/passwd", id="folder-dotdot"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\nb", id="newline"),
    pytest.param("x" * 100_000, id="100KB"),
    pytest.param("\uff41\uff42\uff43-\u0430", id="unicode-lookalikes"),
    pytest.param("*", id="glob-star"),
    pytest.param("[a-z]?", id="glob-class"),
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dotdot-alone"),
    pytest.param("id\x1b]0;owned\x07", id="terminal-escape"),
    pytest.param("a\\b", id="backslash"),
]

ID_COMMANDS = [
    pytest.param(["queue", "show"], id="queue-show"),
    pytest.param(["queue", "show", "--message"], id="queue-show-message"),
    pytest.param(["queue", "hold"], id="queue-hold"),
    pytest.param(["queue", "release"], id="queue-release"),
    pytest.param(["queue", "delete"], id="queue-delete"),
    pytest.param(["queue", "flush"], id="queue-flush"),
    pytest.param(["queue", "flush", "--quiet"], id="queue-flush-quiet"),
    pytest.param(["badmail", "show"], id="badmail-show"),
    pytest.param(["badmail", "show", "--message"], id="badmail-show-message"),
    pytest.param(["badmail", "requeue"], id="badmail-requeue"),
    pytest.param(["badmail", "delete"], id="badmail-delete"),
    pytest.param(["drop", "show"], id="drop-show"),
    pytest.param(["log"], id="log"),
]


@pytest.mark.parametrize("command", ID_COMMANDS)
@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_a_hostile_id_is_one_short_line_and_touches_nothing(
    cli: Cli, tmp_path: Path, command: list[str], hostile: str
) -> None:
    queue_id = cli.admit()
    before = tree(tmp_path)
    status, out, err = cli(*command, hostile)
    line = one_line(err)
    assert "is not a queue id" in line
    assert line.isascii()  # look-alikes, escapes and NUL are shown escaped
    assert "\x1b" not in line
    assert status == (EX_USAGE if command == ["log"] else EX_FAILED)
    assert out == ""
    assert tree(tmp_path) == before
    assert cli("queue", "list", "--json")[0] == EX_OK
    assert queue_id in cli("queue", "list", "--json")[1]


@pytest.mark.parametrize("command", ID_COMMANDS)
def test_a_leading_dash_is_an_option_not_an_id(cli: Cli, command: list[str]) -> None:
    status, out, err = cli(*command, "--no-such-option")
    assert (status, out) == (EX_USAGE, "")
    assert "Traceback" not in err
    assert "error:" in err


@pytest.mark.parametrize(
    "command", [["queue", "show"], ["queue", "hold"], ["badmail", "show"], ["drop", "show"]]
)
def test_an_id_with_a_final_newline_is_no_queue_id(cli: Cli, command: list[str]) -> None:
    queue_id = cli.admit()
    _, _, err = cli(*command, queue_id + "\n")
    assert "is not a queue id" in one_line(err)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../../etc/passwd", id="dotdot"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("NTFS_1/../../x.EML", id="dotdot-inside"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\nb\x1b[2J", id="newline-escape"),
        pytest.param("N" * 100_000, id="100KB"),
    ],
)
def test_import_iis_names_are_checked_and_shown_short(
    cli: Cli, tmp_path: Path, secret: Path, name: str
) -> None:
    before = tree(tmp_path)
    status, _, err = cli("queue", "import-iis", name)
    assert status == EX_FAILED
    line = one_line(err)
    assert "is not an IIS queue file" in line
    assert line.isascii()
    assert tree(tmp_path) == before


# -- files planted in the MailRoot: links and FIFOs ------------------------------------------------


def test_a_link_as_a_queued_message_is_not_followed_by_show(cli: Cli, secret: Path) -> None:
    queue_id = cli.admit()
    eml = cli.folder("Queue") / f"{queue_id}.eml"
    eml.unlink()
    eml.symlink_to(secret)
    status, out, err = cli("queue", "show", "--message", queue_id)
    assert "symbolic link" in one_line(err)
    assert status == EX_FAILED  # not 75: trying again will not make the link a message
    assert "TOPSECRET" not in out


def test_deleting_a_message_whose_file_is_a_link_writes_nothing_through_it(
    cli: Cli, secret: Path
) -> None:
    # The delete kept the link as a spare file and wrote the service's trigger through it.
    queue_id = cli.admit()
    eml = cli.folder("Queue") / f"{queue_id}.eml"
    eml.unlink()
    eml.symlink_to(secret)
    assert cli("queue", "delete", queue_id)[:2] == (EX_OK, f"{queue_id}: deleted\n")
    assert not os.path.lexists(eml)
    assert cli("queue", "list")[1] == "The Queue is empty.\n"


def test_an_envelope_that_is_a_link_is_not_followed_and_its_claim_goes_back(
    cli: Cli, secret: Path
) -> None:
    queue_id = cli.admit()
    env = cli.folder("Queue") / f"{queue_id}.env"
    env.unlink()
    env.symlink_to(secret)
    status, out, err = cli("queue", "show", queue_id)
    assert "symbolic link" in one_line(err)
    assert status == EX_FAILED
    assert "TOPSECRET" not in out
    status, _, err = cli("queue", "hold", queue_id)
    assert "symbolic link" in one_line(err)
    assert status == EX_FAILED
    # Handed back as it was: not "being delivered right now" until a lease ends.
    assert os.path.islink(env)
    status, _, err = cli("queue", "delete", queue_id)
    assert (status, err) == (EX_OK, "")
    assert sorted(os.listdir(cli.folder("Queue"))) == []


def test_one_unreadable_envelope_does_not_hide_the_rest_of_the_queue(
    cli: Cli, secret: Path
) -> None:
    good = cli.admit()
    linked, piped = cli.admit(), cli.admit()
    queue = cli.folder("Queue")
    (queue / f"{linked}.env").unlink()
    (queue / f"{linked}.env").symlink_to(secret)
    (queue / f"{piped}.env").unlink()
    os.mkfifo(queue / f"{piped}.env")
    for command in (["queue", "list"], ["queue", "flush"], ["queue", "shape"]):
        status, out, err = cli(*command)
        assert status == EX_FAILED, command
        assert good in out or command == ["queue", "shape"]
        assert "TOPSECRET" not in out + err
        lines = err.splitlines()
        assert len(lines) == 2, err
        assert any(linked in line and "symbolic link" in line for line in lines)
        assert any(piped in line and "FIFO" in line for line in lines)


def test_badmail_files_that_are_links_are_listed_not_followed_and_deletable(
    cli: Cli, secret: Path
) -> None:
    queue_id = "1a24def59ae-0000aaaaaaaaaaaa"
    badmail = cli.folder("BadMail")
    for kind in ("BDR", "BAD", "BDP"):
        (badmail / f"{queue_id}.{kind}").symlink_to(secret)
    status, out, err = cli("badmail", "list")
    assert (status, err) == (EX_OK, "")
    assert queue_id in out
    assert "symbolic link" in out
    status, out, err = cli("badmail", "show", queue_id)
    assert status == EX_OK
    assert "Envelope:     unknown (no readable .BDP)" in out
    status, out, err = cli("badmail", "show", "--message", queue_id)
    assert "symbolic link" in one_line(err)
    assert status == EX_FAILED
    assert "TOPSECRET" not in out
    status, _, err = cli("badmail", "requeue", queue_id, "--to", "b@x.test", "--from", "a@x.test")
    assert "symbolic link" in one_line(err)
    assert status == EX_FAILED
    assert cli("badmail", "delete", queue_id)[:2] == (EX_OK, f"{queue_id}: deleted\n")
    assert os.listdir(badmail) == []


def test_a_drop_file_that_is_a_link_is_not_shown_nor_listed(cli: Cli, secret: Path) -> None:
    queue_id = "1a24def59ae-0000aaaaaaaaaaaa"
    (cli.folder("Drop") / f"{queue_id}.eml").symlink_to(secret)
    status, out, err = cli("drop", "show", queue_id)
    assert status == EX_FAILED
    assert "symbolic link" in one_line(err)
    assert "TOPSECRET" not in out
    assert cli("drop", "list")[:2] == (EX_OK, "Drop is empty.\n")


def test_fifos_planted_in_every_folder_hang_no_command(cli: Cli) -> None:
    queue_id = cli.admit()
    other = "1a24def59ae-0000cccccccccccc"
    queue = cli.folder("Queue")
    (queue / f"{queue_id}.eml").unlink()
    os.mkfifo(queue / f"{queue_id}.eml")
    os.mkfifo(queue / f"{queue_id}.RTR")
    os.mkfifo(queue / f"{other}.env")
    for folder, names in (("BadMail", ("BDR", "BAD", "BDP")), ("Drop", ("eml",))):
        for kind in names:
            os.mkfifo(cli.folder(folder) / f"{other}.{kind}")
    root = ["--root", str(cli.root)]
    for command in (
        ["queue", "show", "--message", queue_id],
        ["queue", "show", queue_id],
        ["queue", "show", other],
        ["queue", "list"],
        ["queue", "hold", other],
        ["badmail", "list"],
        ["badmail", "show", other],
        ["badmail", "show", "--message", other],
        ["drop", "show", other],
        ["drop", "list"],
    ):
        done = spoolmail(*root, *command)  # raises TimeoutExpired if it hangs
        err = done.stderr.decode()
        assert "Traceback" not in err, (command, err)
        assert done.returncode in (EX_OK, EX_FAILED, EX_TEMPFAIL), (command, err)


# -- damaged envelopes and transcripts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        pytest.param(lambda good: good[: len(good) // 2], "truncated or damaged", id="truncated"),
        pytest.param(
            lambda good: b"\xff\xfe\x00garbage" * 40, "truncated or damaged", id="garbage"
        ),
        pytest.param(lambda good: b"", "truncated or damaged", id="empty"),
        pytest.param(lambda good: b"null", "not a spoolmail envelope", id="null"),
        pytest.param(lambda good: b" " * (8 << 20) + b"[", "truncated or damaged", id="8MB"),
        pytest.param(
            lambda good: b"[" * 10_000 + b"]" * 10_000, "nested too deep", id="deep-array"
        ),
        pytest.param(
            lambda good: b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
            "nested too deep",
            id="deep-object",
        ),
    ],
)
def test_a_damaged_envelope_is_one_line_and_the_message_stays_put(
    cli: Cli, data: object, complaint: str
) -> None:
    queue_id = cli.admit()
    env = cli.folder("Queue") / f"{queue_id}.env"
    env.write_bytes(data(env.read_bytes()))  # type: ignore[operator]
    for command in (["queue", "show"], ["queue", "hold"], ["queue", "release"]):
        status, out, err = cli(*command, queue_id)
        assert status == EX_FAILED, command
        assert complaint in one_line(err)
        assert env.exists()  # handed back, not left claimed
    status, out, err = cli("queue", "list")
    assert status == EX_FAILED
    assert out == "No queued message can be read.\n"
    assert complaint in one_line(err)
    assert cli("queue", "delete", queue_id)[:2] == (EX_OK, f"{queue_id}: deleted\n")


def test_an_envelope_naming_another_message_never_acts_on_that_one(cli: Cli) -> None:
    victim = cli.admit("bob@victim.test")
    liar = cli.admit("carol@junk.test")
    env = cli.folder("Queue") / f"{liar}.env"
    env.write_bytes(env.read_bytes().replace(liar.encode(), victim.encode()))
    status, out, err = cli("queue", "delete", "--domain", "junk.test")
    assert status == EX_FAILED
    assert "names another message" in one_line(err)
    assert (cli.folder("Queue") / f"{victim}.env").exists()
    status, out, _ = cli("queue", "list", "--json")
    assert [line for line in out.splitlines() if victim in line]
    assert cli("queue", "show", liar)[0] == EX_FAILED


def test_a_transcript_that_is_not_utf8_is_shown_with_replacements(cli: Cli) -> None:
    queue_id = cli.admit()
    (cli.folder("Queue") / f"{queue_id}.RTR").write_bytes(b"550 \xff\xfe bad \x80 reply\n")
    status, out, err = cli("queue", "show", queue_id)
    assert (status, err) == (EX_OK, "")
    assert "550 \ufffd\ufffd bad \ufffd reply" in out


# -- Log/, Suppression/ and SortTemp lines ---------------------------------------------------------


def test_log_lines_that_are_huge_or_not_utf8_are_passed_over(cli: Cli) -> None:
    queue_id = cli.admit()
    assert cli("queue", "hold", queue_id)[0] == EX_OK
    [name] = os.listdir(cli.folder("Log"))
    with (cli.folder("Log") / name).open("ab") as log:
        log.write(b"\xff\xfe" + queue_id.encode() + b"\x80\n")
        log.write(b'{"event": "' + b"x" * (50 << 20) + queue_id.encode() + b'"}\n')
        log.write(b"not json " + queue_id.encode() + b"\n")
    status, out, err = cli("log", queue_id)
    assert status == EX_OK
    # The two that are short enough to read are counted (the huge one is passed over unread).
    assert err.startswith(f"spoolmail: 2 damaged lines about {queue_id} in Log/ left out")
    assert out.endswith(f"{queue_id}: placed on hold by an operator\n")
    assert len(out.splitlines()) == 1


def test_a_log_line_nested_too_deep_is_passed_over(cli: Cli) -> None:
    queue_id = cli.admit()
    assert cli("queue", "hold", queue_id)[0] == EX_OK
    [name] = os.listdir(cli.folder("Log"))
    with (cli.folder("Log") / name).open("ab") as log:
        log.write(b"[" * 10_000 + queue_id.encode() + b"]" * 10_000 + b"\n")
    assert cli("log", queue_id)[0] == EX_OK


def test_a_fifo_in_log_hangs_no_log_command(cli: Cli) -> None:
    queue_id = cli.admit()
    os.makedirs(cli.folder("Log"), exist_ok=True)
    os.mkfifo(cli.folder("Log") / "spoolmail-2020-01-01.jsonl")
    done = subprocess.run(
        [sys.executable, "-m", "spoolmail", "--root", str(cli.root), "log", queue_id],
        capture_output=True,
        timeout=3,
        check=False,
    )
    assert b"Traceback" not in done.stderr


def test_damaged_suppression_lines_are_passed_over(cli: Cli) -> None:
    folder = cli.folder("Suppression")
    folder.mkdir()
    good = (
        b'{"address": "bob@remote.test", "time": "2099-01-01T00:00:00+00:00", '
        b'"reply": {"code": 550, "text": "no"}, "queue_id": "q"}\n'
    )
    (folder / "suppressed.jsonl").write_bytes(
        b'\xff\xfe\x80garbage\n{}\n[]\nnull\n"s"\n{"address": 5}\n' + good
    )
    status, out, err = cli("suppress", "list")
    assert "Traceback" not in err
    assert status == EX_OK
    assert out.endswith("suppressed\n")


def test_a_suppression_line_nested_too_deep_is_passed_over(cli: Cli) -> None:
    folder = cli.folder("Suppression")
    folder.mkdir()
    (folder / "suppressed.jsonl").write_bytes(b"[" * 10_000 + b"]" * 10_000 + b"\n")
    assert cli("suppress", "list")[0] == EX_OK


def test_a_trigger_nested_too_deep_is_read_as_look_at_everything(cli: Cli) -> None:
    cli.admit()
    (cli.folder("SortTemp") / "x.y.trigger").write_bytes(b"[" * 10_000 + b"]" * 10_000)
    status, _, err = cli("run", "--once", "--smart-host", "[127.0.0.1]:1")
    assert "Traceback" not in err
    assert status == EX_OK


# -- settings files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        pytest.param("max_message_size = 'big'", "must be an integer", id="wrong-type"),
        pytest.param("root = 5", "must be a string", id="root-not-a-string"),
        pytest.param("bogus = 1", "unknown setting 'bogus'", id="unknown-key"),
        pytest.param("max_message_size = -1", "must be positive", id="negative"),
        pytest.param("pickup_settle = nan", "must be 0 or more", id="nan"),
        pytest.param("log_days = 10000000000", "log_days must be 36500 days", id="huge-days"),
        pytest.param(
            "suppression_days = 10000000000000", "suppression_days must be 36500", id="huge-days2"
        ),
        pytest.param(
            "expiration_timeout = '99999999999999d'", "must be 36500d or less", id="huge-duration"
        ),
        pytest.param("x = " + "[" * 10_000 + "]" * 10_000, "nests too deep", id="deep-array"),
        pytest.param("root = ''", "root must name a folder", id="empty-root"),
    ],
)
def test_a_bad_settings_file_is_one_usage_line(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, complaint: str
) -> None:
    monkeypatch.chdir(tmp_path)  # where a MailRoot would be made for root = ''
    path = tmp_path / "settings.toml"
    path.write_text(f"[spoolmail]\n{text}\n")
    status, out, err = cli("--config", str(path), "queue", "list", root=False)
    assert status == EX_USAGE
    assert complaint in one_line(err, most=2000)  # an unknown key's line names every key
    assert out == ""


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'[spoolmail]\nroot = "\xff"\n', id="not-utf8"),
        pytest.param(b"spoolmail = 1\n", id="no-table"),
        pytest.param(b"[spoolmail\n", id="not-toml"),
    ],
)
def test_a_settings_file_that_is_no_toml_is_one_usage_line(
    cli: Cli, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "settings.toml"
    path.write_bytes(content)
    status, _, err = cli("--config", str(path), "queue", "list")
    assert status == EX_USAGE
    assert str(path) in one_line(err)


def test_a_settings_path_that_is_a_folder_is_one_usage_line(cli: Cli, tmp_path: Path) -> None:
    status, _, err = cli("--config", str(tmp_path), "queue", "list")
    assert status == EX_USAGE
    assert "cannot read settings file" in one_line(err)


# -- --root ----------------------------------------------------------------------------------------


def test_a_root_that_is_a_file_a_fifo_or_a_dangling_link_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_bytes(b"x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    before = tree(tmp_path)
    for root, status, says in (
        (plain, EX_FAILED, "it is a regular file"),  # waiting will not make it a folder
        (fifo, EX_FAILED, "it is a FIFO (named pipe)"),
        (dangling, EX_TEMPFAIL, ""),  # its target may be a volume not mounted yet
    ):
        for command in (["queue", "list"], ["queue", "flush", "--quiet"], ["init"]):
            done = spoolmail("--root", str(root), *command)
            assert done.returncode == status, (root, command, done.stderr)
            line = one_line(done.stderr.decode())
            assert "cannot open the MailRoot" in line
            assert says in line
            assert ("not a folder" in line) is bool(says)
    assert tree(tmp_path) == before
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("root", ["", "\x00", "Mail\x00Root"])
@pytest.mark.parametrize(
    "command",
    [["queue", "list"], ["queue", "flush", "--quiet"], ["queue", "delete", "--all", "--yes"]],
)
def test_an_empty_root_or_one_with_nul_is_a_usage_error_not_the_current_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root: str,
    command: list[str],
) -> None:
    # "--root $MAILROOT" with the variable unset made the current folder a MailRoot.
    monkeypatch.chdir(tmp_path)
    assert main(["--root", root, *command], out=io.StringIO()) == EX_USAGE
    assert "root must name a folder or an FS URL" in one_line(capsys.readouterr().err)
    assert os.listdir(tmp_path) == []


def test_spool_refuses_a_location_with_nul_as_a_configuration_error() -> None:
    from spoolmail.exceptions import ConfigurationError  # noqa: PLC0415

    with pytest.raises(ConfigurationError, match="is no MailRoot"):
        Spool("Mail\x00Root")
