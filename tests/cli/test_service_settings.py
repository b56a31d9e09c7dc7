"""The IIS console's settings as keys and flags, ``spoolmail config``, global options after the
command, and where the log goes (``--log-file``, ``--syslog``, ``-v``'s SMTP dialogue).

Through ``main(argv)`` and ``load_settings``; delivery against aiosmtpd on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spoolmail._cli import assemble, flags, listening
from spoolmail._cli.config import render
from spoolmail._cli.main import EX_OK, EX_USAGE, _parser, main
from spoolmail._cli.settings import Settings, load_settings
from spoolmail._core.routing import TlsPolicy
from spoolmail._core.shares import Share
from spoolmail._store.spool import Spool
from spoolmail.exceptions import ConfigurationError
from tests.smtpservers import smtp_server
from tests.tlscerts import TestCertificates, make_certificates

ARRIVAL = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def from_file(tmp_path: Path, body: str) -> Settings:
    config = tmp_path / "spoolmail.toml"
    config.write_text(f"[spoolmail]\n{body}\n")
    return load_settings(config, {})


def submit(root: Path, to: str, name: str) -> None:
    (root / "Pickup").mkdir(parents=True, exist_ok=True)
    (root / "Pickup" / f"{name}.eml").write_bytes(
        f"From: app@example.com\r\nTo: {to}\r\nSubject: {name}\r\n\r\nbody\r\n".encode()
    )


# -- every new key, from the file and from its flag ------------------------------------------

GOOD = [
    # (TOML text, flags, key, value)
    ("retry_intervals = [10, 20, 40, 120]", ["--retry-intervals", "10,20,40,120"],
     "retry_intervals", (10, 20, 40, 120)),
    ('retry_intervals = [1.5, "2h"]', ["--retry-intervals", "1.5,2h"],
     "retry_intervals", (1.5, "2h")),
    ('delay_notification = "6h"', ["--delay-notification", "6h"], "delay_notification", "6h"),
    ('delay_notification = "never"', ["--delay-notification", "never"],
     "delay_notification", "never"),
    ('expiration_timeout = "3d"', ["--expiration-timeout", "3d"], "expiration_timeout", "3d"),
    ('local_delay_notification = "1h30m"', ["--local-delay-notification", "1h30m"],
     "local_delay_notification", "1h30m"),
    ('local_expiration_timeout = "1w"', ["--local-expiration-timeout", "1w"],
     "local_expiration_timeout", "1w"),
    ("max_messages_per_connection = 50", ["--max-messages-per-connection", "50"],
     "max_messages_per_connection", 50),
    ("smtp_connect_timeout = 5", ["--smtp-connect-timeout", "5"], "smtp_connect_timeout", 5),
    ("smtp_greeting_timeout = 60.5", ["--smtp-greeting-timeout", "60.5"],
     "smtp_greeting_timeout", 60.5),
    ("smtp_helo_timeout = 61", ["--smtp-helo-timeout", "61"], "smtp_helo_timeout", 61),
    ("smtp_mail_timeout = 62", ["--smtp-mail-timeout", "62"], "smtp_mail_timeout", 62),
    ("smtp_rcpt_timeout = 63", ["--smtp-rcpt-timeout", "63"], "smtp_rcpt_timeout", 63),
    ("smtp_data_init_timeout = 64", ["--smtp-data-init-timeout", "64"],
     "smtp_data_init_timeout", 64),
    ("smtp_data_block_timeout = 65", ["--smtp-data-block-timeout", "65"],
     "smtp_data_block_timeout", 65),
    ("smtp_data_end_timeout = 66", ["--smtp-data-end-timeout", "66"],
     "smtp_data_end_timeout", 66),
    ("smtp_starttls_timeout = 67", ["--smtp-starttls-timeout", "67"],
     "smtp_starttls_timeout", 67),
    ("smtp_idle_timeout = 0", ["--smtp-idle-timeout", "0"], "smtp_idle_timeout", 0),
    ("pickup_open_warning = 60", ["--pickup-open-warning", "60"], "pickup_open_warning", 60),
    ("listen_timeout = 30", ["--listen-timeout", "30"], "listen_timeout", 30),
    ("listen_reuse_port = true", ["--listen-reuse-port"], "listen_reuse_port", True),
    ('log_file = "x.log"', ["--log-file", "x.log"], "log_file", "x.log"),
    ("syslog = true", ["--syslog"], "syslog", True),
    ('syslog = "/run/log.sock"', ["--syslog", "/run/log.sock"], "syslog", "/run/log.sock"),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "argv", "key", "value"), GOOD)
def test_a_key_from_the_file_and_from_its_flag(
    tmp_path: Path, toml: str, argv: list[str], key: str, value: object
) -> None:
    assert getattr(from_file(tmp_path, toml), key) == value
    # The flag gives the same value, before the command and after it.
    orders = [["run", *argv]]
    # Global options go before the command too; a bare --syslog there would take the
    # command's name for its address, so it goes after it (docs/running-as-a-service.md).
    if key in ("log_file", "syslog") and len(argv) > 1:
        orders.append([*argv, "run"])
    for args in (_parser().parse_args(order) for order in orders):
        assert getattr(load_settings(None, flags.overrides(args)), key) == value
    # And `spoolmail config` writes it back as the file had it.
    if key not in ("log_file", "syslog"):  # these would open the file, the socket
        status, out = run("config", *argv)
        assert status == EX_OK, out
        written = tmp_path / "written.toml"
        written.write_text(out)
        assert getattr(load_settings(written, {}), key) == value


BAD = [
    # (TOML text, flags, what the error says)
    ('retry_intervals = "15,30"', ["--retry-intervals", ""], "retry_intervals"),
    ("retry_intervals = []", None, "retry_intervals needs at least one interval"),
    ("retry_intervals = [15, -1]", ["--retry-intervals", "15,-1"], "retry_intervals item 2"),
    ('retry_intervals = [15, "soon"]', ["--retry-intervals", "15,soon"], "retry_intervals item 2"),
    ("delay_notification = 720", None, "'delay_notification' must be a duration"),
    ('delay_notification = "12"', ["--delay-notification", "12"], "delay_notification must be"),
    ('expiration_timeout = "never"', ["--expiration-timeout", "never"],
     "expiration_timeout cannot be 'never'"),
    ('expiration_timeout = "0d"', ["--expiration-timeout", "0d"], "expiration_timeout must be"),
    ('local_expiration_timeout = "2 days"', ["--local-expiration-timeout", "2days"],
     "local_expiration_timeout must be"),
    ("max_messages_per_connection = -1", ["--max-messages-per-connection", "-1"],
     "max_messages_per_connection must be 0 or more"),
    ('max_messages_per_connection = "20"', ["--max-messages-per-connection", "x"],
     "max_messages_per_connection"),
    ("smtp_data_end_timeout = 0", ["--smtp-data-end-timeout", "0"],
     "smtp_data_end_timeout must be positive"),
    ("smtp_connect_timeout = true", ["--smtp-connect-timeout", "nan"], "smtp_connect_timeout"),
    ("smtp_idle_timeout = -1", ["--smtp-idle-timeout", "-1"], "smtp_idle_timeout"),
    ('syslog = ""', None, "syslog is true, a socket path or HOST:PORT"),
    ("log_file = 1", None, "'log_file' must be a string"),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "argv", "says"), BAD)
def test_a_wrong_value_is_an_error_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    toml: str,
    argv: list[str] | None,
    says: str,
) -> None:
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(")):
        from_file(tmp_path, toml)
    if argv is not None:
        assert run("config", *argv)[0] == EX_USAGE
        err = capsys.readouterr().err
        assert says.split(maxsplit=1)[0].strip("'") in err or argv[0] in err, err


# -- what the keys build ----------------------------------------------------------------------


def test_retry_intervals_change_the_preset_s_waits_only(tmp_path: Path) -> None:
    remote, local = assemble.retry_policies(from_file(tmp_path, "retry_intervals = [10, 20]"))
    times = remote.schedule(arrival=ARRIVAL, limit=5)
    assert [t - ARRIVAL for t in times] == [timedelta(minutes=m) for m in (0, 10, 30, 50, 70)]
    # IIS's delay notice and expiry stay, and so does its hourly local schedule.
    assert remote.delay_notice == timedelta(hours=12)
    assert remote.lifetime == timedelta(days=2)
    assert local is not None
    assert local.schedule(arrival=ARRIVAL, limit=2)[1] - ARRIVAL == timedelta(hours=1)


def test_delay_notification_and_expiration_remote_and_local(tmp_path: Path) -> None:
    settings = from_file(
        tmp_path,
        'delay_notification = "1h"\nexpiration_timeout = "3d"\n'
        'local_delay_notification = "never"\nlocal_expiration_timeout = "4h"',
    )
    remote, local = assemble.retry_policies(settings)
    assert (remote.delay_notice, remote.lifetime) == (timedelta(hours=1), timedelta(days=3))
    assert local is not None
    assert (local.delay_notice, local.lifetime) == (None, timedelta(hours=4))
    # Another preset: the local keys change a copy of its one schedule, for Drop only.
    remote, local = assemble.retry_policies(
        from_file(tmp_path, 'retry = "postfix"\nlocal_expiration_timeout = "1d"')
    )
    assert remote.lifetime == timedelta(days=5)
    assert local is not None
    assert local.lifetime == timedelta(days=1)
    assert assemble.retry_policies(from_file(tmp_path, 'retry = "qmail"'))[1] is None


def test_a_delay_notice_after_expiry_names_both_keys(tmp_path: Path) -> None:
    settings = from_file(tmp_path, 'expiration_timeout = "6h"')  # IIS's notice is at 12 h
    with pytest.raises(
        ConfigurationError, match=r"delay_notification \(12:00:00\) must come before expiration"
    ):
        assemble.retry_policies(settings)
    settings = from_file(tmp_path, 'local_delay_notification = "3d"')
    with pytest.raises(ConfigurationError, match=r"local_delay_notification .* local_expiration"):
        assemble.retry_policies(settings)


def test_the_smtp_timeouts_reach_the_transport(tmp_path: Path) -> None:
    names = ("connect", "greeting", "helo", "mail", "rcpt", "data_init", "data_block",
             "data_end", "starttls", "idle")  # fmt: skip
    body = "\n".join(f"smtp_{name}_timeout = {number}" for number, name in enumerate(names, 1))
    timeouts = assemble.timeouts(from_file(tmp_path, body))
    assert (
        timeouts.connect,
        timeouts.greeting,
        timeouts.ehlo,
        timeouts.mail,
        timeouts.rcpt,
        timeouts.data_start,
        timeouts.data_block,
        timeouts.data_end,
        timeouts.starttls,
        timeouts.idle,
    ) == tuple(float(n) for n in range(1, 11))
    assert assemble.timeouts(Settings()).data_end == 600  # RFC 5321 4.5.3.2.6's 10 minutes


@pytest.mark.integration
def test_messages_per_connection_closes_the_connection_after_n(tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    with smtp_server() as server:
        for number in range(5):
            submit(root, f"u{number}@partner.test", f"m{number}")
        status, out = run(
            "--root", str(root), "run", "--once",
            "--route", f"partner.test=[127.0.0.1]:{server.port}",
            "--max-connections", "1",
            "--max-messages-per-connection", "2",
        )  # fmt: skip
        assert status == EX_OK, out
        assert out.count("delivered to") == 5
        assert server.transactions_per_connection == [2, 2, 1]


# -- -v: the SMTP dialogue, without the password ---------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.mark.integration
def test_verbose_logs_the_smtp_dialogue_without_the_password(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    certificates: TestCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "MailRoot"
    monkeypatch.setenv("SPOOLMAIL_SMART_HOST_PASSWORD", "hunter2-secret")
    with smtp_server(
        tls_context=certificates.server_context(), auth_users={"relay": "hunter2-secret"}
    ) as server:
        submit(root, "ops@remote.test", "hello")
        status, out = run(
            "--root", str(root), "run", "--once", "-v",
            "--smart-host", f"[127.0.0.1]:{server.port}",
            "--smart-host-user", "relay",
            "--tls", TlsPolicy.ENCRYPT.value,
        )  # fmt: skip
    assert status == EX_OK, out
    err = capsys.readouterr().err
    queue_id = out.split(":")[0]
    assert f"{queue_id}: > 127.0.0.1:{server.port}: MAIL FROM:<app@example.com>" in err
    assert f"{queue_id}: < 127.0.0.1:{server.port}: 250" in err
    assert "STARTTLS" in err
    assert "AUTH PLAIN <redacted>" in err
    assert "hunter2" not in err
    assert "aHVudGVy" not in err  # nor in base64
    # Without -v there is no dialogue.
    submit(root, "ops@local.test", "again")
    run("--root", str(root), "run", "--once", "--local-domain", "local.test")
    assert "MAIL FROM" not in capsys.readouterr().err


# -- spoolmail config ---------------------------------------------------------------------------


def test_config_prints_what_differs_and_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "spoolmail.toml"
    config.write_text(
        "[spoolmail]\n"
        'root = "/srv/mail root"\n'
        'local_domains = ["example.com", "example.net"]\n'
        'smart_host = "[192.0.2.1]:587"\n'
        'smart_host_user = "relay"\n'
        'smart_host_password = "s3cret \\"quoted\\""\n'
        'routes = { "partner.example" = "[192.0.2.7]:2525", "b.example" = "mx.b" }\n'
        'retry_intervals = [10, 20.5, "4h"]\n'
        'delay_notification = "never"\n'
        "smtp_data_end_timeout = 900\n"
        "catch_all = true\n"
        'ndr_copy_to = "pm@example.com"\n'
    )
    status, out = run("--config", str(config), "config", "--max-connections", "5")
    assert status == EX_OK
    assert out == (
        "[spoolmail]\n"
        'root = "/srv/mail root"\n'
        'local_domains = ["example.com", "example.net"]\n'
        "catch_all = true\n"
        'smart_host = "[192.0.2.1]:587"\n'
        'smart_host_user = "relay"\n'
        "# smart_host_password: set, not shown\n"
        'routes = { "partner.example" = "[192.0.2.7]:2525", "b.example" = "mx.b" }\n'
        "max_connections = 5\n"
        'retry_intervals = [10, 20.5, "4h"]\n'
        'delay_notification = "never"\n'
        "smtp_data_end_timeout = 900\n"
        'ndr_copy_to = "pm@example.com"\n'
    )
    assert "s3cret" not in out
    expected = load_settings(config, {"max_connections": 5})
    for every in (False, True):
        written = tmp_path / f"config-{every}.toml"
        written.write_text(render(expected, every=every))
        again = load_settings(written, {})
        assert again == Settings(
            **{**{f: getattr(expected, f) for f in _fields()}, "smart_host_password": None}
        )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--route", "*=[192.0.2.7]"], "routes: '*' is not a domain"),
        (["--local-domain", "*.example.com"], "local_domains: '*.example.com' is not a domain"),
        (["--masquerade-domain", "no such domain"], "masquerade_domain"),
        (["--smart-host-mode", "fallback"], "smart_host_mode 'fallback' needs a smart_host"),
    ],
)
def test_config_says_what_run_would_refuse(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    """``spoolmail config`` printed settings ``run`` refuses (a route ``*``) without a word:
    an operator checking a file before a restart learnt nothing. The table still comes, then
    the reason and run's status (2)."""
    status, out = run("config", *argv)
    assert status == EX_USAGE
    assert out.startswith("[spoolmail]\n")
    assert fragment in capsys.readouterr().err


def _fields() -> list[str]:
    import attrs  # noqa: PLC0415 (only here)

    return [f.name for f in attrs.fields(Settings)]


def test_config_all_shows_every_key(tmp_path: Path) -> None:
    status, out = run("config", "--all")
    assert status == EX_OK
    for name in _fields():
        assert name in out or name == "smart_host_password"
    assert "# fqdn (not set): this server's name" in out
    assert 'retry = "iis"' in out
    assert "smart_host_password" not in out  # not set: nothing to say
    written = tmp_path / "all.toml"
    written.write_text(out)
    assert load_settings(written, {}) == Settings()
    # With nothing changed, the short form is the table alone.
    assert run("config") == (EX_OK, "[spoolmail]\n")


def test_a_string_with_quotes_and_controls_survives_the_round_trip(tmp_path: Path) -> None:
    settings = Settings(fqdn='a"b\\c\td\x7fe', local_domains=["é.example"])
    written = tmp_path / "odd.toml"
    written.write_text(render(settings))
    assert load_settings(written, {}) == settings


# -- global options after the command ---------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["init"],
        ["queue"],
        ["queue", "list"],
        ["badmail", "list"],
        ["drop"],
        ["config"],
        ["run", "--once"],
    ],
)
def test_root_and_config_before_or_after_the_command(tmp_path: Path, command: list[str]) -> None:
    root = tmp_path / "MailRoot"
    run("--root", str(root), "init")
    config = tmp_path / "spoolmail.toml"
    config.write_text(f'[spoolmail]\nroot = "{root}"\nmax_hop_count = 7\n')
    before = run("--config", str(config), "-v", *command)
    after = run(*command, "--config", str(config), "-v")
    assert before[0] == after[0] == EX_OK, (before, after)
    assert before == after
    if command[0] in ("init", "run"):
        other = tmp_path / "Other"
        assert run(*command, "--root", str(other))[0] == EX_OK
        assert (other / "Queue").is_dir()


def test_after_the_command_wins_and_before_stays_when_not_repeated(tmp_path: Path) -> None:
    first, second = tmp_path / "First", tmp_path / "Second"
    assert run("--root", str(first), "init", "--root", str(second))[0] == EX_OK
    assert (second / "Queue").is_dir()
    assert not first.exists()
    _, out = run("--root", str(first), "config")
    assert f'root = "{first}"' in out
    _, out = run("config", "--root", str(first), "--log-file", str(tmp_path / "l.log"))
    assert f'log_file = "{tmp_path / "l.log"}"' in out


def test_log_and_listen_passwd_take_them_after_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "MailRoot"
    run("--root", str(root), "init")
    status, _ = run("log", "NOSUCHID", "--root", str(root))
    assert status == 1
    assert "has nothing about NOSUCHID" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    status, out = run("listen-passwd", "app", "-v", "--root", str(root))
    assert status == EX_OK
    assert out.startswith("app:scrypt$")


def test_sendmail_keeps_its_own_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``sendmail`` every argument is sendmail's: ``--root`` there is not spoolmail's."""
    root = tmp_path / "MailRoot"
    run("--root", str(root), "init")
    monkeypatch.setattr(
        "sys.stdin", io.TextIOWrapper(io.BytesIO(b"Subject: s\n\nhi\n"), encoding="utf-8")
    )
    status, _ = run("--root", str(root), "sendmail", "-i", "ops@example.com")
    assert status == EX_OK
    assert len(list((root / "Pickup").glob("*.eml"))) == 1


# -- where the log goes -----------------------------------------------------------------------


def test_log_file_appends_and_is_reopened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "MailRoot"
    log_file = tmp_path / "spoolmail.log"
    log_file.write_text("an earlier line\n")
    submit(root, "a@localhost", "one")
    status, out = run("--root", str(root), "--log-file", str(log_file), "run", "--once", "-v")
    assert status == EX_OK
    text = log_file.read_text()
    assert text.startswith("an earlier line\n")
    assert ": delivered to a@localhost" in out
    assert "to=<a@localhost>" in text or "a@localhost" in text
    # Errors only on stderr when the log has a file.
    assert "a@localhost" not in capsys.readouterr().err

    # logrotate moves the file away: the next run (and a SIGHUP, see test_service_signals)
    # writes a new one.
    log_file.rename(tmp_path / "spoolmail.log.1")
    submit(root, "b@localhost", "two")
    run("--root", str(root), "run", "--once", "-v", "--log-file", str(log_file))
    assert "b@localhost" in log_file.read_text()
    assert "b@localhost" not in (tmp_path / "spoolmail.log.1").read_text()


def test_a_log_file_that_cannot_be_opened_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = run("--log-file", str(tmp_path / "no" / "such" / "dir.log"), "init")
    assert status == EX_USAGE
    assert "log_file: cannot open" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="a Unix socket stands for syslog")
def test_syslog_to_a_socket_of_our_own(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        root = tmp_path / "MailRoot"
        submit(root, "a@localhost", "one")
        status, _ = run("--root", str(root), "--syslog", str(path), "run", "--once", "-v")
        assert status == EX_OK
        datagrams = []
        receiver.setblocking(False)
        while True:
            try:
                datagrams.append(receiver.recv(65536))
            except BlockingIOError:
                break
    assert datagrams
    text = b"\n".join(datagrams)
    # <facility mail (2) * 8 + info (6)>, then the ident, as Postfix's programs log.
    assert f"<22>spoolmail[{os.getpid()}]: ".encode() in text
    assert b"a@localhost" in text


def test_syslog_where_nothing_listens_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("Unix sockets")
    status, _ = run("--syslog", str(tmp_path / "nobody"), "init")
    assert status == EX_USAGE
    assert "syslog: cannot reach" in capsys.readouterr().err


def test_each_worker_gets_its_part_of_the_whole_service_s_limits(tmp_path: Path) -> None:
    settings = from_file(
        tmp_path,
        "max_connections = 20\nmax_connections_per_host = 10\nmax_messages_per_minute = 601",
    )
    with Spool(tmp_path / "MailRoot") as spool:
        parts = []
        for index in range(4):
            service = assemble.service(settings, spool, share=Share(index, 4))
            delivery = service._delivery
            parts.append(
                (
                    service.limits.max_connections,
                    service.limits.max_connections_per_host,
                    delivery.concurrency.per_host,
                    delivery.throttles.rules.max_connections,
                    delivery.throttles.rules.max_messages_per_minute,
                )
            )
            service.close()
        alone = assemble.service(settings, spool)
        assert (alone.limits.max_connections, alone.limits.max_connections_per_host) == (20, 10)
        alone.close()
    # 10 connections to one host among four workers: 3, 3, 2, 2; 601 a minute: 151, 150 ...
    assert parts == [
        (5, 3, 3, 3, 151),
        (5, 3, 3, 3, 150),
        (5, 2, 2, 2, 150),
        (5, 2, 2, 2, 150),
    ]


def test_each_listening_worker_gets_its_part_of_max_sessions() -> None:
    settings = Settings(max_sessions=101)
    assert listening.listener_limits(settings).max_sessions == 101
    parts = [listening.listener_limits(settings, Share(i, 2)).max_sessions for i in range(2)]
    assert parts == [51, 50]
    prepared = listening.Prepared(sockets=(), tls=None, credentials=None).keep(2)
    workers = [prepared.for_worker(index) for index in range(2)]
    assert [w.listening_share() for w in workers if w is not None] == list(Share(0, 2).all())
    assert prepared.for_worker(2) is None  # a third worker does not listen
