"""``spoolmail queue|badmail|drop`` subcommands, through ``main(argv)``, on a real MailRoot."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest

from spoolmail import RecipientState, Spool
from spoolmail._cli.assemble import service as assemble_service
from spoolmail._cli.main import EX_FAILED, EX_OK, EX_TEMPFAIL, EX_USAGE, main
from spoolmail._cli.settings import Settings
from spoolmail._core.envelope import Envelope, Recipient, encode_envelope

DOWN = "[127.0.0.1]:1"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "MailRoot"


class Cli:
    """``spoolmail --root ROOT ...``: returns (status, stdout); stderr via capsys."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        status = main(["--root", str(self.root), *argv], out=out)
        return status, out.getvalue()

    def err(self) -> str:
        return self.capsys.readouterr().err

    def pickup(self, name: str, data: bytes) -> None:
        (self.root / "Pickup").mkdir(parents=True, exist_ok=True)
        (self.root / "Pickup" / name).write_bytes(data)

    def run_once(self, *flags: str) -> str:
        # Remote mail goes to a smart host that is down (nothing listens on 127.0.0.1:1).
        status, out = self(
            "run", "--once", "--local-domain", "example.com", "--smart-host", DOWN, *flags
        )
        assert status == EX_OK, self.err()
        return out

    def queued(self) -> list[dict[str, object]]:
        status, out = self("queue", "list", "--json")
        assert status == EX_OK
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def cli(root: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(root, capsys)


def message(to: str, sender: str = "alice@example.com", extra: str = "") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\n{extra}Subject: s\r\n\r\nbody\r\n".encode()


@pytest.fixture
def two(cli: Cli) -> tuple[str, str]:
    """Two messages waiting in the Queue (no smart host): to dan@remote.test, eve@other.test."""
    cli.pickup("1.eml", message("bob@example.com, dan@remote.test"))
    cli.pickup("2.eml", message("eve@other.test"))
    cli.run_once()
    first, second = (row["id"] for row in cli.queued())
    assert isinstance(first, str)
    assert isinstance(second, str)
    return first, second


# -- listing and showing ------------------------------------------------------------------------


def test_run_once_prints_what_it_did(cli: Cli) -> None:
    cli.pickup("1.eml", message("bob@example.com, dan@remote.test"))
    out = cli.run_once()
    [queue_id] = {line.split(":")[0] for line in out.splitlines()}
    assert out.splitlines() == [
        f"{queue_id}: queued from Pickup",
        f"{queue_id}: delivered to bob@example.com",
        f"{queue_id}: deferred for dan@remote.test",
    ]
    assert cli.run_once() == ""  # nothing due


def test_queue_json_keys(cli: Cli, two: tuple[str, str]) -> None:
    first, _ = two
    row = cli.queued()[0]
    assert set(row) == {
        "id",
        "state",
        "held",
        "held_since",
        "arrival",
        "next_attempt",
        "last_attempt",
        "attempts",
        "size",
        "sender",
        "origin",
        "recipients",
    }
    assert (row["id"], row["state"], row["held"], row["held_since"]) == (
        first,
        "queued",
        False,
        None,
    )
    assert (row["attempts"], row["sender"]) == (1, "alice@example.com")
    assert str(row["origin"]).startswith("pickup:")
    bob, dan = row["recipients"]  # type: ignore[misc]
    assert bob["state"] == "delivered"
    assert bob["reply"] == f"250 2.0.0 delivered to Drop/{first}.eml"
    assert set(dan) == {"address", "state", "reply", "host", "updated"}
    assert (dan["address"], dan["state"]) == ("dan@remote.test", "pending")
    # The smart host refused (host 127.0.0.1), or, for the message that waited its turn, was
    # known to be down (spoolmail's own verdict: no host).
    assert dan["host"] in ("127.0.0.1", None)
    assert dan["reply"].startswith("451 4.4.1 ")
    # "queue --json" (no action) is the same listing, as before the actions existed.
    assert cli("queue", "--json") == cli("queue", "list", "--json")


def test_queue_table(cli: Cli, two: tuple[str, str]) -> None:
    first, second = two
    status, out = cli("queue")
    lines = out.splitlines()
    assert status == EX_OK
    assert lines[0].split() == [
        "ID",
        "STATE",
        "ARRIVAL",
        "(UTC)",
        "NEXT",
        "ATTEMPT",
        "TRIES",
        "SIZE",
        "SENDER",
    ]
    assert lines[1].startswith(f"{first}  queued  ")
    assert lines[1].endswith("alice@example.com")
    assert lines[2].startswith("    delivered  bob@example.com: 250 2.0.0")
    assert lines[3].startswith("    pending    dan@remote.test: 451 4.4.1 ")
    assert lines[4].startswith(f"{second}  queued  ")
    assert lines[-1].startswith("-- 2 messages (0 on hold, 0 being delivered), ")
    assert cli("queue", "list") == (status, out)


def test_empty_listings(cli: Cli) -> None:
    assert cli("queue") == (EX_OK, "The Queue is empty.\n")
    assert cli("badmail", "list") == (EX_OK, "BadMail is empty.\n")
    assert cli("drop") == (EX_OK, "Drop is empty.\n")
    assert cli("queue", "--json") == cli("badmail", "--json") == cli("drop", "--json") == (0, "")


def test_queue_show(cli: Cli, two: tuple[str, str]) -> None:
    first, _ = two
    status, out = cli("queue", "show", first)
    assert status == EX_OK
    assert out.startswith(f"Queue ID:     {first}\nState:        queued\n")
    assert "Sender:       alice@example.com\n" in out
    assert "Next attempt: " in out
    assert "  pending    dan@remote.test: 451 4.4.1 " in out
    transcript = out.split("\nTranscript:\n", 1)[1]
    assert "attempt 1: SMTP via [127.0.0.1]:1" in transcript
    assert "attempt 1: local delivery to Drop" in transcript
    status, out = cli("queue", "show", first, "--message")
    assert status == EX_OK
    assert out.startswith("Received: from mail pickup service by ")
    assert out.endswith("\r\n\r\nbody\r\n")


def test_show_of_a_missing_id_is_exit_1_without_a_traceback(cli: Cli) -> None:
    for command in ("queue", "badmail", "drop"):
        assert cli(command, "show", "19ac9b2f1c0-000000000000") == (EX_FAILED, "")
        err = cli.err()
        assert err.startswith("spoolmail: no ")
        assert "19ac9b2f1c0-000000000000" in err
        assert "Traceback" not in err
    assert cli("queue", "show", "../../etc/passwd") == (EX_FAILED, "")
    assert "is not a queue id" in cli.err()


# -- flush, hold, release, delete ---------------------------------------------------------------


def test_flush_by_id_domain_and_all(cli: Cli, two: tuple[str, str]) -> None:
    first, second = two
    before = {row["id"]: row["attempts"] for row in cli.queued()}
    assert cli("queue", "flush", second) == (EX_OK, f"{second}: flushed\n")
    assert cli("queue", "flush", "--domain", "REMOTE.test.") == (EX_OK, f"{first}: flushed\n")
    assert cli("queue", "flush", "--domain", "nowhere.test") == (
        EX_OK,
        "No queued message with a recipient at nowhere.test still to be delivered.\n",
    )
    assert cli("queue", "flush") == (EX_OK, f"{first}: flushed\n{second}: flushed\n")
    out = cli.run_once()
    assert f"{first}: deferred for dan@remote.test" in out
    assert f"{second}: deferred for eve@other.test" in out
    # At least one knocked on the silent smart host; one passed over after that (the delivery
    # threads race) was not tried, and its attempt is not counted: each grows by one at most
    # (tests/service/test_dead_hosts.py pins the order without threads).
    grown = {row["id"]: row["attempts"] - before[row["id"]] for row in cli.queued()}
    assert set(grown) == {first, second}
    assert set(grown.values()) <= {0, 1}
    assert sum(grown.values()) >= 1


def test_flush_leaves_a_hold_and_says_so(cli: Cli, two: tuple[str, str]) -> None:
    first, second = two
    assert cli("queue", "hold", second) == (EX_OK, f"{second}: on hold\n")
    assert cli("queue", "flush") == (
        EX_OK,
        f"{first}: flushed\n{second}: on hold, not flushed (release it to send it)\n",
    )
    assert cli.run_once() == f"{first}: deferred for dan@remote.test\n"


def _triggers(root: Path) -> list[object]:
    return [json.loads(path.read_text()) for path in sorted((root / "SortTemp").glob("*.trigger"))]


def test_quiet_flush_gives_the_order_and_prints_nothing(cli: Cli, two: tuple[str, str]) -> None:
    """``--quiet``, as ``postqueue -f``: one trigger for the service, no envelope read."""
    first, second = two
    assert cli("queue", "flush", "--quiet") == (EX_OK, "")
    assert _triggers(cli.root) == [{"flush": {"sender": None, "domain": None}}]
    assert cli.err() == ""
    out = cli.run_once()  # a service that starts takes the order: both are due at once
    assert f"{first}: deferred for dan@remote.test" in out
    assert f"{second}: deferred for eve@other.test" in out
    assert _triggers(cli.root) == []


def test_quiet_flush_by_domain_and_sender(cli: Cli, two: tuple[str, str]) -> None:
    first, _ = two
    assert cli("queue", "flush", "-q", "--domain", "@REMOTE.test.") == (EX_OK, "")
    assert cli("queue", "flush", "-q", "--sender", "nobody@example.com") == (EX_OK, "")
    assert sorted(_triggers(cli.root), key=str) == sorted(
        [
            {"flush": {"sender": None, "domain": "remote.test"}},
            {"flush": {"sender": "nobody@example.com", "domain": None}},
        ],
        key=str,
    )
    assert cli.run_once() == f"{first}: deferred for dan@remote.test\n"


def test_quiet_flush_by_id_prints_only_errors(cli: Cli, two: tuple[str, str]) -> None:
    first, second = two
    assert cli("queue", "hold", second) == (EX_OK, f"{second}: on hold\n")
    cli.err()
    assert cli("queue", "flush", "-q", first, second, MISSING) == (EX_FAILED, "")
    assert cli.err() == f"spoolmail: no queued message {MISSING!r}\n"
    assert cli.run_once() == f"{first}: deferred for dan@remote.test\n"


def test_quiet_flush_keeps_the_usage_errors(cli: Cli) -> None:
    assert cli("queue", "flush", "-q", "--domain", "@") == (EX_USAGE, "")
    assert "--domain: '@' is not a domain: it is empty" in cli.err()
    assert not (cli.root / "SortTemp").exists()


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["queue", "hold", "--domain", "remote test"], "--domain: 'remote test' is not a domain"),
        (["queue", "release", "--domain", "../.."], "--domain: '../.' is not a domain"),
        (["queue", "flush", "-q", "--domain", "remote.test/x"], "contains '/'"),
        (["queue", "delete", "--domain", "*", "--dry-run"], "--domain: '*' is not a domain"),
        (
            ["queue", "hold", "--sender", "alice@example,com"],
            "--sender: 'alice@example,com' is not",
        ),
        (["queue", "flush", "--sender", "a@b@c"], "is not an address"),
        (["queue", "release", "--sender", "@exa mple"], "--sender: 'exa mple' is not a domain"),
        (["badmail", "requeue", "--sender", "bad address"], "is not an address"),
        (["badmail", "delete", "--domain", "a..b", "--yes"], "is not a domain"),
    ],
)
def test_filters_that_no_message_could_match_are_usage_errors(
    cli: Cli, two: tuple[str, str], argv: list[str], complaint: str
) -> None:
    """A typo in --sender or --domain is told as one (exit 2, nothing done), not answered "no
    message" as if the Queue had been searched."""
    before = cli.queued()
    assert cli(*argv) == (EX_USAGE, "")
    err = cli.err()
    assert complaint in err
    assert err.count("\n") == 1
    assert cli.queued() == before
    assert _triggers(cli.root) == []


@pytest.mark.parametrize(
    "sender",
    [
        "alice@example.com",
        "ALICE@Example.com",
        "<alice@example.com>",
        "Alice <alice@example.com>",
        "@EXAMPLE.com.",
    ],
)
def test_every_form_of_a_sender_filter_still_matches(
    cli: Cli, two: tuple[str, str], sender: str
) -> None:
    first, second = two
    assert cli("queue", "hold", "--sender", sender) == (
        EX_OK,
        f"{first}: on hold\n{second}: on hold\n",
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["queue", "hold", "--sender", "<>"], "No queued message left to hold from <>.\n"),
        (["queue", "hold", "--sender", ""], "No queued message left to hold from <>.\n"),
        (["queue", "hold", "--domain", "[192.0.2.1]"], "at [192.0.2.1].\n"),
        (["queue", "hold", "--domain", "bücher.example"], "at bücher.example.\n"),
        (["queue", "hold", "--sender", "üser@bücher.example"], "from üser@bücher.example.\n"),
    ],
)
def test_null_sender_literals_and_idn_are_filters(
    cli: Cli, two: tuple[str, str], argv: list[str], said: str
) -> None:
    status, out = cli(*argv)
    assert status == EX_OK, cli.err()
    assert out.startswith("No queued message left to hold")
    assert out.endswith(said)


def test_hold_and_release(cli: Cli, two: tuple[str, str]) -> None:
    first, second = two
    assert cli("queue", "hold", "--all") == (EX_OK, f"{first}: on hold\n{second}: on hold\n")
    assert cli("queue", "hold", "--all") == (EX_OK, "No queued message is left to hold.\n")
    rows = cli.queued()
    assert [(row["state"], row["held"]) for row in rows] == [("held", True)] * 2
    assert all(isinstance(row["held_since"], str) for row in rows)
    out = cli("queue")[1]
    assert f"{first}  held  " in out
    assert "on hold" in out.splitlines()[1]
    assert "(2 on hold, 0 being delivered)" in out
    assert "On hold:      since " in cli("queue", "show", first)[1]
    assert cli.run_once() == ""  # held: never attempted
    assert cli("queue", "release", first) == (EX_OK, f"{first}: released\n")
    assert cli("queue", "release", "--all") == (EX_OK, f"{second}: released\n")
    assert cli("queue", "release", "--all") == (EX_OK, "No queued message is on hold.\n")
    assert [row["state"] for row in cli.queued()] == ["queued", "queued"]
    assert len(cli.run_once().splitlines()) == 2  # release makes them due at once


def test_delete(cli: Cli, two: tuple[str, str]) -> None:
    first, second = two
    assert cli("queue", "delete", first) == (EX_OK, f"{first}: deleted\n")
    assert [row["id"] for row in cli.queued()] == [second]
    assert cli("queue", "delete", "--all") == (EX_USAGE, "")
    assert "add --yes" in cli.err()
    assert [row["id"] for row in cli.queued()] == [second]
    assert cli("queue", "delete", "--all", "--yes") == (EX_OK, f"{second}: deleted\n")
    assert cli("queue", "delete", "--all", "--yes") == (EX_OK, "The Queue is empty.\n")
    assert list((cli.root / "Drop").iterdir())  # bob's copy was delivered before


def test_missing_ids_are_reported_and_the_rest_is_done(cli: Cli, two: tuple[str, str]) -> None:
    first, _ = two
    missing = "19ac9b2f1c0-000000000000"
    for action, done in (("hold", "on hold"), ("release", "released"), ("flush", "flushed")):
        assert cli("queue", action, missing, first) == (EX_FAILED, f"{first}: {done}\n")
        assert cli.err() == f"spoolmail: no queued message {missing!r}\n"
    assert cli("queue", "delete", missing, first, first) == (EX_FAILED, f"{first}: deleted\n")
    assert cli("queue", "delete", first) == (EX_FAILED, "")


def test_a_message_being_delivered_is_a_temporary_error(
    cli: Cli, two: tuple[str, str], root: Path
) -> None:
    first, _ = two
    with Spool(str(root)) as other:
        assert other._store.claim_queued(first)  # a live service is attempting it
        assert [row["state"] for row in cli.queued()] == ["delivering", "queued"]
        assert "delivering (by process " in cli("queue", "show", first)[1]
        for action in ("hold", "release", "flush", "delete"):
            status, out = cli("queue", action, first)
            assert (status, out) == (EX_TEMPFAIL, ""), action
            assert cli.err() == (
                f"spoolmail: {first} is being delivered right now; try again in a moment\n"
            )
        # A missing id is worse than a busy one: trying again will not help it.
        assert cli("queue", "hold", first, "19ac9b2f1c0-000000000000")[0] == EX_FAILED
        status, out = cli("queue", "flush")
        assert status == EX_OK
        assert out.splitlines()[0] == f"{first}: being delivered now"
        status, out = cli("queue")
        assert f"{first}  delivering  " in out
        assert "(0 on hold, 1 being delivered)" in out


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["queue", "hold"], "give at least one ID, or --all"),
        (["queue", "release", "--all", "x"], "give IDs or --all, not both"),
        (["queue", "flush", "x", "--domain", "example.com"], "give IDs or --domain, not both"),
        (["badmail", "delete"], "give at least one ID, or --all"),
        (["badmail", "delete", "--all"], "add --yes"),
        (["queue", "show"], "the following arguments are required: ID"),
        (["queue", "frob"], "invalid choice: 'frob'"),
        (["badmail", "requeue", "x", "--to", "not an address"], "is not an address"),
    ],
)
def test_bad_usage_is_exit_2(cli: Cli, root: Path, argv: list[str], complaint: str) -> None:
    (root / "BadMail").mkdir(parents=True)
    (root / "BadMail" / "x.BDR").write_text("5.0.0 broken\n")
    (root / "BadMail" / "x.BAD").write_text("junk\n")
    assert cli(*argv) == (EX_USAGE, "")
    assert complaint in cli.err()


def test_help_goes_to_out(cli: Cli) -> None:
    status, out = cli("queue", "--help")
    assert status == EX_OK
    assert "flush" in out
    assert "hold" in out


# -- BadMail ------------------------------------------------------------------------------------


@pytest.fixture
def bounce(cli: Cli) -> str:
    """A DSN (null sender) that looped: failed for carol and frank, so it is in BadMail."""
    cli.pickup(
        "dsn.eml",
        b"x-sender: <>\r\nx-receiver: carol@example.com\r\nx-receiver: frank@example.com\r\n"
        b"Received: from a\r\nReceived: from b\r\nSubject: loop\r\n\r\nbody\r\n",
    )
    out = cli.run_once("--max-hop-count", "2")
    [queue_id] = {line.split(":")[0] for line in out.splitlines()}
    assert out.endswith(f"{queue_id}: moved to BadMail\n")
    return queue_id


@pytest.fixture
def rejected(cli: Cli) -> str:
    """A Pickup file over the size limit, in BadMail as it was written."""
    cli.pickup("big.eml", message("bob@example.com", extra="X-Pad: " + "x" * 300 + "\r\n"))
    out = cli.run_once("--max-message-size", "200")
    [line] = out.splitlines()
    return line.split(":")[0]


def test_badmail_list_and_show(cli: Cli, bounce: str, rejected: str) -> None:
    status, out = cli("badmail")
    assert status == EX_OK
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "REASON"]
    assert lines[1].startswith(bounce)
    assert "5.4.6 This message has a null sender" in lines[1]
    assert lines[2] == "    from <> to carol@example.com, frank@example.com"
    assert lines[3].startswith(rejected)
    assert "5.3.4 message size" in lines[3]
    assert lines[-1] == "-- 2 entries"

    rows = [json.loads(line) for line in cli("badmail", "list", "--json")[1].splitlines()]
    assert [set(row) for row in rows] == [
        {"id", "reason", "has_message", "origin", "sender", "recipients"}
    ] * 2
    assert rows[0]["sender"] == ""
    assert [r["address"] for r in rows[0]["recipients"]] == [
        "carol@example.com",
        "frank@example.com",
    ]
    assert rows[0]["recipients"][0]["reply"].startswith("554 5.4.6 routing loop detected")
    assert rows[1]["has_message"] is True

    status, out = cli("badmail", "show", bounce)
    assert status == EX_OK
    assert out.startswith(f"BadMail ID:   {bounce}\nReason:       5.4.6 ")
    assert f"Message:      BadMail/{bounce}.BAD\n" in out
    assert "  failed     carol@example.com: 554 5.4.6 routing loop detected" in out
    assert f"Report (BadMail/{bounce}.BDR):\n5.4.6 This message has a null sender" in out
    assert cli("badmail", "show", bounce, "--message")[1].endswith("\r\n\r\nbody\r\n")


def test_requeue_selected_recipients(cli: Cli, bounce: str) -> None:
    status, out = cli("badmail", "requeue", bounce, "--to", "<CAROL@example.com>")
    assert status == EX_OK
    new_id = out.removeprefix(f"{bounce}: requeued as ").strip()
    [row] = cli.queued()
    assert row["id"] == new_id
    assert row["origin"] == f"requeue:{bounce}"
    assert [r["address"] for r in row["recipients"]] == ["carol@example.com"]  # type: ignore[attr-defined]
    # The entry stays in BadMail for the recipient not sent again.
    [left] = [json.loads(line) for line in cli("badmail", "--json")[1].splitlines()]
    assert left["id"] == bounce
    assert [r["address"] for r in left["recipients"]] == ["frank@example.com"]
    assert cli.run_once() == f"{new_id}: delivered to carol@example.com\n"


def test_requeue_refuses_a_recipient_the_entry_does_not_have(cli: Cli, bounce: str) -> None:
    assert cli("badmail", "requeue", bounce, "--to", "carl@example.com") == (EX_USAGE, "")
    assert cli.err() == (
        f"spoolmail: BadMail entry {bounce!r} has no recipient 'carl@example.com' "
        "(it has: carol@example.com, frank@example.com)\n"
    )
    assert len(cli("badmail", "--json")[1].splitlines()) == 1  # nothing moved


def test_requeue_all_with_a_new_sender(cli: Cli, bounce: str) -> None:
    status, out = cli("badmail", "requeue", bounce, "--from", "Postmaster <pm@example.com>")
    assert status == EX_OK
    assert out.startswith(f"{bounce}: requeued as ")
    [row] = cli.queued()
    assert row["sender"] == "pm@example.com"
    assert len(row["recipients"]) == 2  # type: ignore[arg-type]


def test_requeue_a_pickup_rejection_returns_it_to_pickup(cli: Cli, rejected: str) -> None:
    written = (cli.root / "BadMail" / f"{rejected}.BAD").read_bytes()
    assert cli("badmail", "requeue", rejected, "--to", "bob@example.com") == (EX_USAGE, "")
    assert "is a file rejected at Pickup: it goes back to Pickup as it is" in cli.err()
    assert cli("badmail", "requeue", rejected) == (
        EX_OK,
        f"{rejected}: returned to Pickup/{rejected}.eml\n",
    )
    assert (cli.root / "Pickup" / f"{rejected}.eml").read_bytes() == written
    assert "delivered to bob@example.com" in cli.run_once()


def test_requeue_without_an_envelope_needs_to_and_from(cli: Cli, root: Path) -> None:
    cli("init")
    entry = "19ac9b2f1c0-000000000001"
    (root / "BadMail" / f"{entry}.BAD").write_bytes(message("x@example.com"))
    (root / "BadMail" / f"{entry}.BDR").write_bytes(b"4.3.0 envelope lost\n")
    assert cli("badmail", "requeue", entry) == (EX_USAGE, "")
    assert "give the recipients and the sender" in cli.err()
    status, out = cli(
        "badmail", "requeue", entry, "--to", "bob@example.com", "--from", "a@example.com"
    )
    assert status == EX_OK
    assert out.startswith(f"{entry}: requeued as ")


def test_badmail_delete(cli: Cli, bounce: str, rejected: str) -> None:
    missing = "19ac9b2f1c0-000000000000"
    assert cli("badmail", "delete", bounce, missing) == (EX_FAILED, f"{bounce}: deleted\n")
    assert cli.err() == f"spoolmail: no BadMail entry {missing!r}\n"
    assert cli("badmail", "delete", "--all", "--yes") == (EX_OK, f"{rejected}: deleted\n")
    assert cli("badmail", "delete", "--all", "--yes") == (EX_OK, "BadMail is empty.\n")
    assert list((cli.root / "BadMail").iterdir()) == []


# -- Drop ---------------------------------------------------------------------------------------


def test_drop_list_and_show(cli: Cli, two: tuple[str, str]) -> None:
    first, _ = two
    status, out = cli("drop", "list")
    assert status == EX_OK
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "SIZE", "SENDER", "RECIPIENTS"]
    assert lines[1].startswith(first)
    assert lines[1].endswith("alice@example.com  bob@example.com")
    assert lines[2] == "-- 1 file"
    status, out = cli("drop", "show", first)
    assert status == EX_OK
    assert out == (cli.root / "Drop" / f"{first}.eml").read_bytes().decode()


def test_drop_show_writes_the_bytes_to_a_binary_stdout(cli: Cli, two: tuple[str, str]) -> None:
    first, _ = two
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="utf-8")  # like sys.stdout: it has a .buffer
    print("before", file=stdout)
    assert main(["--root", str(cli.root), "drop", "show", first], out=stdout) == EX_OK
    expected = (cli.root / "Drop" / f"{first}.eml").read_bytes()
    assert raw.getvalue() == b"before\n" + expected


# -- settings -----------------------------------------------------------------------------------


def test_ndr_copy_to(cli: Cli, tmp_path: Path) -> None:
    cli.pickup("m.eml", message("x@remote.test", extra="Received: a\r\nReceived: b\r\n"))
    out = cli.run_once("--max-hop-count", "1", "--ndr-copy-to", "Postmaster <pm@example.com>")
    [dsn] = [line.split(":")[0] for line in out.splitlines() if "notification queued" in line]
    [drop] = [json.loads(line) for line in cli("drop", "--json")[1].splitlines()]
    assert drop["id"] == dsn
    assert drop["recipients"] == ["alice@example.com", "pm@example.com"]
    status, _ = cli("run", "--once", "--ndr-copy-to", "not an address")
    assert status == EX_USAGE
    assert "ndr_copy_to" in cli.err()


def test_local_delivery_uses_iis_local_schedule_by_default() -> None:
    with Spool("mem://") as spool:
        service = assemble_service(Settings(), spool)
        assert (service.retry.name, service.local_retry.name) == ("iis", "iis-local")
        service.close()
    with Spool("mem://") as spool:
        service = assemble_service(Settings(retry="postfix"), spool)
        assert service.local_retry is service.retry
        service.close()


def test_ndr_copy_to_in_the_settings_file(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "spoolmail.toml"
    config.write_text('[spoolmail]\nndr_copy_to = "pm@example.com"\n')
    cli.pickup("m.eml", message("x@remote.test", extra="Received: a\r\nReceived: b\r\n"))
    status, _ = cli(
        "--config",
        str(config),
        "run",
        "--once",
        "--local-domain",
        "example.com",
        "--max-hop-count",
        "1",
    )
    assert status == EX_OK
    [drop] = [json.loads(line) for line in cli("drop", "--json")[1].splitlines()]
    assert drop["recipients"] == ["alice@example.com", "pm@example.com"]


# -- bulk orders: by sender and domain, ids from stdin, dry runs (postsuper -d -) -----------------

MISSING = "19ac9b2f1c0-000000000000"


@pytest.fixture
def three(cli: Cli) -> tuple[str, str, str]:
    """Three queued messages (no smart host): alice's to dan@remote.test (bob@example.com had
    his copy), alice's to eve@other.test, and carol's to both remote.test and other.test."""
    cli.pickup("1.eml", message("bob@example.com, dan@remote.test"))
    cli.pickup("2.eml", message("eve@other.test"))
    cli.pickup("3.eml", message("dan2@remote.test, fay@other.test", sender="carol@partner.test"))
    cli.run_once()
    first, second, third = (str(row["id"]) for row in cli.queued())
    return first, second, third


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """What ``spoolmail ... -`` reads: ``data`` on a stdin with a byte buffer, as a pipe's."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def states(cli: Cli) -> dict[str, object]:
    return {row["id"]: row["state"] for row in cli.queued()}  # type: ignore[misc]


def test_hold_release_and_delete_by_sender(cli: Cli, three: tuple[str, str, str]) -> None:
    first, second, third = three
    assert cli("queue", "hold", "--sender", "ALICE@example.com") == (
        EX_OK,
        f"{first}: on hold\n{second}: on hold\n",
    )
    assert cli("queue", "hold", "--sender", "alice@example.com") == (
        EX_OK,
        "No queued message left to hold from alice@example.com.\n",
    )
    assert states(cli) == {first: "held", second: "held", third: "queued"}
    # '@DOMAIN' is every sender there.
    assert cli("queue", "release", "--sender", "@example.com") == (
        EX_OK,
        f"{first}: released\n{second}: released\n",
    )
    assert cli("queue", "release", "--sender", "@example.com") == (
        EX_OK,
        "No queued message on hold from @example.com.\n",
    )
    # A delete by sender needs no --yes: it is not the whole Queue.
    assert cli("queue", "delete", "--sender", "<carol@partner.test>") == (
        EX_OK,
        f"{third}: deleted\n",
    )
    assert list(states(cli)) == [first, second]


def test_delete_by_domain_leaves_a_message_also_for_another_domain(
    cli: Cli, three: tuple[str, str, str]
) -> None:
    first, second, third = three
    # first: bob@example.com was delivered, dan@remote.test is all that is left to deliver.
    assert cli("queue", "delete", "--domain", "Remote.TEST.") == (
        EX_OK,
        f"{third}: not deleted, also for fay@other.test\n{first}: deleted\n",
    )
    assert list(states(cli)) == [second, third]
    assert cli("queue", "delete", "--domain", "other.test", "--sender", "carol@partner.test") == (
        EX_OK,
        f"{third}: not deleted, also for dan2@remote.test\n"
        "No queued message from carol@partner.test with every recipient still to be delivered "
        "at other.test.\n",
    )
    assert cli("queue", "delete", "--domain", "other.test") == (
        EX_OK,
        f"{third}: not deleted, also for dan2@remote.test\n{second}: deleted\n",
    )


def test_hold_by_domain_takes_only_what_is_all_there_release_any(
    cli: Cli, three: tuple[str, str, str]
) -> None:
    first, second, third = three
    assert cli("queue", "hold", "--domain", "other.test") == (
        EX_OK,
        f"{third}: not held, also for dan2@remote.test\n{second}: on hold\n",
    )
    assert cli("queue", "hold", third) == (EX_OK, f"{third}: on hold\n")
    # A release delays nothing: any recipient at the domain will do.
    assert cli("queue", "release", "--domain", "remote.test") == (EX_OK, f"{third}: released\n")
    assert states(cli) == {first: "queued", second: "held", third: "queued"}
    assert cli("queue", "release", "--domain", "remote.test") == (
        EX_OK,
        "No queued message on hold with a recipient at remote.test still to be delivered.\n",
    )


def test_flush_by_sender(cli: Cli, three: tuple[str, str, str]) -> None:
    _, _, third = three
    assert cli("queue", "flush", "--sender", "carol@partner.test") == (EX_OK, f"{third}: flushed\n")
    assert cli("queue", "flush", "--sender", "carol@partner.test", "--domain", "nowhere.test") == (
        EX_OK,
        "No queued message from carol@partner.test with a recipient at nowhere.test still to "
        "be delivered.\n",
    )
    assert cli("queue", "flush", "--sender", "<>") == (EX_OK, "No queued message from <>.\n")


def test_delete_dry_run_lists_and_deletes_nothing(cli: Cli, three: tuple[str, str, str]) -> None:
    first, second, third = three
    # --all needs --yes, but not to look.
    assert cli("queue", "delete", "--all", "--dry-run") == (
        EX_OK,
        f"{first}: would be deleted (from alice@example.com to dan@remote.test)\n"
        f"{second}: would be deleted (from alice@example.com to eve@other.test)\n"
        f"{third}: would be deleted (from carol@partner.test to dan2@remote.test, "
        "fay@other.test)\n",
    )
    status, out = cli("queue", "delete", "--domain", "remote.test", "--dry-run")
    assert (status, out.splitlines()) == (
        EX_OK,
        [
            f"{third}: not deleted, also for fay@other.test",
            f"{first}: would be deleted (from alice@example.com to dan@remote.test)",
        ],
    )
    assert cli("queue", "delete", "--dry-run", second, MISSING) == (
        EX_FAILED,
        f"{second}: would be deleted (from alice@example.com to eve@other.test)\n",
    )
    assert cli.err() == f"spoolmail: no queued message {MISSING!r}\n"
    assert list(states(cli)) == [first, second, third]


def test_ids_from_stdin(
    cli: Cli, three: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = three
    stdin(
        monkeypatch,
        f"# to hold, from a script\n\n{first}\n  {second}\t# trailing comment\r\n"
        f"../../etc/passwd\n".encode()
        + b"\xff\xfe\x00junk\n"
        + f"{first}\n{MISSING}\n".encode(),
    )
    assert cli("queue", "hold", "-") == (EX_FAILED, f"{first}: on hold\n{second}: on hold\n")
    assert cli.err().splitlines() == [
        "spoolmail: stdin line 5: '../../etc/passwd' is not a queue id",
        "spoolmail: stdin line 6: '\\xff\\xfe\\x00junk' is not a queue id",
        f"spoolmail: no queued message {MISSING!r}",
    ]
    assert states(cli) == {first: "held", second: "held", third: "queued"}
    # '-' among ids on the command line reads stdin at its place.
    stdin(monkeypatch, f"{second}\n".encode())
    assert cli("queue", "release", first, "-", third) == (
        EX_OK,
        f"{first}: released\n{second}: released\n{third}: released\n",
    )
    stdin(monkeypatch, f"{third}\n".encode())
    assert cli("queue", "delete", "-") == (EX_OK, f"{third}: deleted\n")
    stdin(monkeypatch, f"{second}\n".encode())
    assert cli("queue", "flush", "-") == (EX_OK, f"{second}: flushed\n")
    stdin(monkeypatch, b"")
    assert cli("queue", "hold", "-") == (EX_OK, "")  # nothing given, nothing done


def test_stdin_lines_too_long_are_skipped_without_being_kept(
    cli: Cli, three: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, _ = three
    stdin(monkeypatch, b"x" * 3_000_000 + b"\n" + f"{first}\n".encode() + b"y" * 100_000)
    assert cli("queue", "hold", "-") == (EX_FAILED, f"{first}: on hold\n")
    assert cli.err().splitlines() == [
        "spoolmail: stdin line 1: longer than 4096 bytes, no queue id",
        "spoolmail: stdin line 3: longer than 4096 bytes, no queue id",
    ]
    # A big stream of comments, blank lines and repeats costs no memory for what it skips.
    stdin(monkeypatch, b"# a comment\n\n" * 200_000 + f"{second}\n".encode() * 1000)
    tracemalloc.start()
    try:
        assert cli("queue", "hold", "-") == (EX_OK, f"{second}: on hold\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


def test_stdin_is_read_as_the_orders_are_done(
    cli: Cli, three: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, _ = three
    out = io.StringIO()
    seen: list[str] = []

    class Pipe:
        """A stdin whose lines come one by one, noting what was printed before each."""

        def __init__(self) -> None:
            self.lines = [f"{first}\n".encode(), f"{second}\n".encode()]

        def readline(self, size: int) -> bytes:
            seen.append(out.getvalue())
            return self.lines.pop(0) if self.lines else b""

    monkeypatch.setattr("sys.stdin", type("Stdin", (), {"buffer": Pipe()})())
    assert main(["--root", str(cli.root), "queue", "hold", "-"], out=out) == EX_OK
    assert seen == ["", f"{first}: on hold\n", f"{first}: on hold\n{second}: on hold\n"]


def test_ids_on_the_command_line_are_checked(cli: Cli, three: tuple[str, str, str]) -> None:
    first, _, _ = three
    long_id = "a" * 5000
    assert cli("queue", "delete", "../../etc/passwd", first, long_id) == (
        EX_FAILED,
        f"{first}: deleted\n",
    )
    assert cli.err().splitlines() == [
        "spoolmail: '../../etc/passwd' is not a queue id",
        f"spoolmail: {'a' * 60!r}... is not a queue id",
    ]


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["queue", "hold", "-", "-"], "give '-' (the ids on stdin) once"),
        (["queue", "delete", "x", "--sender", "a@b.test"], "give IDs or --sender, not both"),
        (["queue", "hold", "--domain", " . "], "--domain: ' . ' is not a domain: it is empty"),
        (["badmail", "requeue"], "give at least one ID, or --all, --sender or --domain"),
        (["badmail", "requeue", "--all", "--to", "a@b.test"], "give exactly one ID with it"),
        (["badmail", "requeue", "-", "--to", "a@b.test"], "give exactly one ID with it"),
        (["badmail", "requeue", "x", "y", "--to", "a@b.test"], "give exactly one ID with it"),
        (["badmail", "delete", "--all", "x"], "give IDs or --all, not both"),
        (["queue", "shape", "--buckets", "1"], "at least 2"),
    ],
)
def test_bulk_usage_errors(cli: Cli, argv: list[str], complaint: str) -> None:
    assert cli(*argv) == (EX_USAGE, "")
    assert complaint in cli.err()


@pytest.fixture
def loops(cli: Cli, root: Path) -> tuple[str, str, str]:
    """Three entries in BadMail: two DSNs a routing loop failed for every recipient (to
    carol@example.com and zed@remote.test; to frank@example.com), and a message from
    ops@partner.test refused for yan@remote.test (as one imported from IIS's BadMail is)."""
    head = "Received: from a\r\nReceived: from b\r\nSubject: loop\r\n\r\nbody\r\n"
    to_both = "x-receiver: carol@example.com\r\nx-receiver: zed@remote.test\r\n"
    cli.pickup("a.eml", f"x-sender: <>\r\n{to_both}{head}".encode())
    cli.pickup("b.eml", f"x-sender: <>\r\nx-receiver: frank@example.com\r\n{head}".encode())
    out = cli.run_once("--max-hop-count", "2")
    first, second = (line.split(":")[0] for line in out.splitlines() if "BadMail" in line)
    with Spool(str(root)) as spool:
        third = spool.new_id()
        now = spool.clock()
        envelope = Envelope(
            id=third,
            sender="ops@partner.test",
            recipients=(Recipient("yan@remote.test", state=RecipientState.FAILED),),
            arrival=now,
            next_attempt=now,
            origin="smtp:192.0.2.7",
            attempts=1,
        )
        spool.fs.writebytes(f"BadMail/{third}.BAD", message("yan@remote.test", "ops@partner.test"))
        spool.fs.writebytes(f"BadMail/{third}.BDR", b"5.1.1 refused\n")
        spool.fs.writebytes(f"BadMail/{third}.BDP", encode_envelope(envelope))
    return first, second, third


def badmail_ids(cli: Cli) -> list[str]:
    return [json.loads(line)["id"] for line in cli("badmail", "--json")[1].splitlines()]


def test_badmail_requeue_several_ids_and_failures(
    cli: Cli, loops: tuple[str, str, str], rejected: str
) -> None:
    first, second, _ = loops
    status, out = cli("badmail", "requeue", first, MISSING, rejected, second)
    assert status == EX_FAILED
    lines = out.splitlines()
    assert lines[0].startswith(f"{first}: requeued as ")
    assert lines[1] == f"{rejected}: returned to Pickup/{rejected}.eml"
    assert lines[2].startswith(f"{second}: requeued as ")
    assert cli.err() == f"spoolmail: no BadMail entry {MISSING!r} (BadMail/{MISSING}.BDR)\n"
    assert len(cli.queued()) == 2


def test_badmail_requeue_all_with_a_new_sender(cli: Cli, loops: tuple[str, str, str]) -> None:
    status, out = cli("badmail", "requeue", "--all", "--from", "postmaster@example.com")
    assert status == EX_OK
    assert [line.split(": requeued as ")[0] for line in out.splitlines()] == list(loops)
    assert {row["sender"] for row in cli.queued()} == {"postmaster@example.com"}
    assert cli("badmail", "requeue", "--all") == (EX_OK, "BadMail is empty.\n")


def test_badmail_requeue_by_domain_sends_only_those_recipients(
    cli: Cli, loops: tuple[str, str, str]
) -> None:
    first, second, third = loops
    assert cli("badmail", "requeue", "--domain", "remote.test", "--dry-run") == (
        EX_OK,
        f"{first}: would be requeued for zed@remote.test\n"
        f"{third}: would be requeued for yan@remote.test\n",
    )
    assert badmail_ids(cli) == [first, second, third]
    status, out = cli("badmail", "requeue", "--domain", "remote.test")
    assert status == EX_OK
    first_line, third_line = out.splitlines()
    assert first_line.startswith(f"{first}: requeued as ")
    assert first_line.endswith(" for zed@remote.test")
    assert third_line.endswith(" for yan@remote.test")
    assert sorted(r["address"] for row in cli.queued() for r in row["recipients"]) == [  # type: ignore[attr-defined]
        "yan@remote.test",
        "zed@remote.test",
    ]
    # carol stays in BadMail, in the entry that now lists her alone.
    assert badmail_ids(cli) == [first, second]
    assert cli("badmail", "requeue", "--domain", "remote.test") == (
        EX_OK,
        "No BadMail entry with a recipient at remote.test not delivered.\n",
    )


def test_badmail_requeue_by_sender_and_from_stdin(
    cli: Cli, loops: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = loops
    assert cli("badmail", "requeue", "--sender", "ops@partner.test", "--dry-run") == (
        EX_OK,
        f"{third}: would be requeued for yan@remote.test\n",
    )
    stdin(monkeypatch, f"{second}\nnot/an/id\n{second}\n".encode())
    status, out = cli("badmail", "requeue", "-")
    assert status == EX_FAILED
    assert out.startswith(f"{second}: requeued as ")
    assert len(out.splitlines()) == 1  # the repeat was done once
    assert cli.err() == "spoolmail: stdin line 2: 'not/an/id' is not a queue id\n"
    assert badmail_ids(cli) == [first, third]


def test_badmail_delete_by_sender_and_domain(
    cli: Cli, loops: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = loops
    assert cli("badmail", "delete", "--domain", "example.com", "--dry-run") == (
        EX_OK,
        f"{first}: not deleted, also for zed@remote.test\n"
        f"{second}: would be deleted (5.4.6 This message has a null sender (it is a delivery "
        "status notification) and cannot be delivered, so it cannot be returned to anybody.)\n",
    )
    assert cli("badmail", "delete", "--domain", "example.com") == (
        EX_OK,
        f"{first}: not deleted, also for zed@remote.test\n{second}: deleted\n",
    )
    assert cli("badmail", "delete", "--sender", "<>") == (EX_OK, f"{first}: deleted\n")
    assert cli("badmail", "delete", "--sender", "<>") == (
        EX_OK,
        "No BadMail entry from <>.\n",
    )
    stdin(monkeypatch, f"{third}\n{MISSING}\n".encode())
    assert cli("badmail", "delete", "-") == (EX_FAILED, f"{third}: deleted\n")
    assert cli.err() == f"spoolmail: no BadMail entry {MISSING!r}\n"
    assert badmail_ids(cli) == []


def test_a_pickup_rejection_matches_no_filter(
    cli: Cli, loops: tuple[str, str, str], rejected: str
) -> None:
    # Its envelope was never read: its empty sender is not the null sender of a DSN.
    first, second, _ = loops
    status, out = cli("badmail", "delete", "--sender", "<>", "--dry-run")
    assert status == EX_OK
    assert [line.split(":")[0] for line in out.splitlines()] == [first, second]
    assert rejected in badmail_ids(cli)


# -- a damaged envelope in the listings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "left"),
    [
        (["queue"], "not listed"),
        (["queue", "list", "--json"], "not listed"),
        (["queue", "shape"], "not counted"),
        (["queue", "shape", "--json"], "not counted"),
    ],
)
def test_a_listing_names_the_messages_it_cannot_read(
    cli: Cli, two: tuple[str, str], argv: list[str], left: str
) -> None:
    """The rest is listed; the damaged one is named on stderr with why, and the status is 1
    (an unreadable envelope, as ``queue show`` of it says), not a clean 0."""
    first, second = two
    (cli.root / "Queue" / f"{second}.env").write_bytes(b'{"format": "spoolmail-envel')
    status, out = cli(*argv)
    assert status == EX_FAILED
    assert first in out or "remote.test" in out
    assert second not in out
    (line,) = cli.err().splitlines()
    assert line.startswith(f"spoolmail: {second}: {left}, its envelope cannot be read: ")
    assert "BadMail" in line


def test_a_queue_of_damaged_envelopes_is_not_called_empty(cli: Cli, two: tuple[str, str]) -> None:
    for queue_id in two:
        (cli.root / "Queue" / f"{queue_id}.env").write_bytes(b"")
    assert cli("queue") == (EX_FAILED, "No queued message can be read.\n")
    assert len(cli.err().splitlines()) == 2
    cli.run_once()  # the service moves both aside, with the reason
    assert cli("queue") == (EX_OK, "The Queue is empty.\n")
    suffixes = sorted(p.suffix for p in (cli.root / "BadMail").iterdir())
    assert suffixes == [".BAD", ".BAD", ".BDR", ".BDR"]


@pytest.mark.parametrize(
    ("argv", "done"),
    [
        (["queue", "hold", "--all"], "on hold"),
        (["queue", "flush"], "flushed"),
        (["queue", "delete", "--domain", "remote.test", "--yes"], "deleted"),
    ],
)
def test_an_order_names_the_messages_it_passes_over_unread(
    cli: Cli, two: tuple[str, str], argv: list[str], done: str
) -> None:
    first, second = two
    (cli.root / "Queue" / f"{second}.env").write_bytes(b"")
    assert cli(*argv) == (EX_FAILED, f"{first}: {done}\n")
    (line,) = cli.err().splitlines()
    assert line.startswith(f"spoolmail: {second}: passed over, its envelope cannot be read: ")


def test_delete_all_deletes_the_messages_it_cannot_read_too(cli: Cli, two: tuple[str, str]) -> None:
    """ "Every queued message" is every one: after delete --all the Queue is empty."""
    first, second = two
    (cli.root / "Queue" / f"{second}.env").write_bytes(b"\x00")
    assert cli("queue", "delete", "--all") == (EX_USAGE, "")
    assert "(2 now)" in cli.err()
    assert cli("queue", "delete", "--all", "--dry-run") == (
        EX_OK,
        f"{first}: would be deleted (from alice@example.com to dan@remote.test)\n"
        f"{second}: would be deleted (its envelope cannot be read)\n",
    )
    assert cli("queue", "delete", "--all", "--yes") == (
        EX_OK,
        f"{first}: deleted\n{second}: deleted\n",
    )
    assert cli.err() == ""
    assert sorted((cli.root / "Queue").iterdir()) == []
