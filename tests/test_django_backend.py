"""``spoolmail.django.EmailBackend`` driven by Django itself: ``send_mail``, ``send_mass_mail``,
``EmailMultiAlternatives``, connections, failures, then a real ``MailService`` delivering what it
wrote, into Drop on a real folder and to a capturing transport."""

from __future__ import annotations

import email
import email.message
import email.policy
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")  # in the test extra; a bare checkout may lack it

from django.conf import settings
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.message import BadHeaderError
from django.core.mail.utils import DNS_NAME
from django.test import override_settings

import spoolmail.django
from spoolmail import Durability, MailService, Router, Spool
from spoolmail._store.submission import Pickup
from spoolmail.exceptions import ConfigurationError, MessageError
from spoolmail.testing import CapturingTransport, Outbox

BACKEND = "spoolmail.django.EmailBackend"


@pytest.fixture
def django_mail(monkeypatch: pytest.MonkeyPatch) -> None:
    """Django configured in this process (once: settings.configure cannot be undone)."""
    if not settings.configured:
        settings.configure()
    # Django names Message-IDs after socket.getfqdn(): a lookup that could leave the machine.
    monkeypatch.setattr(DNS_NAME, "_fqdn", "app.example.com", raising=False)


@pytest.fixture
def mailroot(django_mail: None, tmp_path: Path) -> Iterator[Path]:
    """Django sending into a MailRoot folder, as a project's settings.py would say; the
    service (``spoolmail init`` or ``run``) made the folder, the application only writes."""
    root = tmp_path / "MailRoot"
    Spool(root).close()
    with override_settings(
        EMAIL_BACKEND=BACKEND,
        SPOOLMAIL_ROOT=str(root),
        SPOOLMAIL_DURABILITY="none",
        DEFAULT_FROM_EMAIL="App <app@example.com>",
    ):
        yield root


@pytest.fixture
def memory_spool(django_mail: None, spoolmail_spool: Spool) -> Iterator[Spool]:
    """Django sending into the plugin's in-memory spool (a Spool object as SPOOLMAIL_ROOT)."""
    with override_settings(
        EMAIL_BACKEND=BACKEND,
        SPOOLMAIL_ROOT=spoolmail_spool,
        DEFAULT_FROM_EMAIL="app@example.com",
    ):
        yield spoolmail_spool


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)


def head(data: bytes) -> bytes:
    """The header block, without a Drop file's x-sender / x-receiver lines (the envelope)."""
    lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return b"".join(line + b"\r\n" for line in lines if not line.startswith(b"x-"))


# -- through a real service, on a real folder ------------------------------------------------------


def test_send_mail_ends_in_drop_through_a_real_service(mailroot: Path) -> None:
    assert mail.send_mail("Welcome", "Hello Bob.\n", None, ["Bob <bob@example.com>"]) == 1
    with Spool(mailroot, durability=Durability.NONE) as spool:
        [pickup_name] = spool.pickup()
        service = MailService(
            spool,
            router=Router(local_domains=["example.com"]),
            fqdn="mail.example.com",
            transport=CapturingTransport(),
        )
        try:
            report = service.run_once()
        finally:
            service.close()
        [dropped] = spool.drop()
        assert report.picked_up == (dropped.id,)
        assert pickup_name == f"{dropped.id}.eml"
        # DEFAULT_FROM_EMAIL is the envelope sender, the display name taken off.
        assert (dropped.sender, dropped.recipients) == ("app@example.com", ("bob@example.com",))
        data = spool.drop_message(dropped.id)
    assert data.startswith(b"x-sender: app@example.com\r\nx-receiver: bob@example.com\r\n")
    message = parse(data)
    assert message["Subject"] == "Welcome"
    assert message["From"] == "App <app@example.com>"
    assert message["To"] == "Bob <bob@example.com>"
    assert message["Message-ID"].endswith("@app.example.com>")
    assert message.get_content() == "Hello Bob.\n"
    assert (mailroot / "Drop" / f"{dropped.id}.eml").read_bytes() == data


def test_send_mass_mail_opens_the_mailroot_once(
    mailroot: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []

    class CountingPickup(Pickup):
        def __init__(self, location: Any, **kwargs: Any) -> None:
            opened.append(location)
            super().__init__(location, **kwargs)

    monkeypatch.setattr(spoolmail.django, "Pickup", CountingPickup)
    messages = [
        (f"Report {n}", "body\n", "app@example.com", [f"user{n}@example.com"]) for n in range(3)
    ]
    assert mail.send_mass_mail(messages) == 3
    assert opened == [str(mailroot)]
    assert len(list((mailroot / "Pickup").iterdir())) == 3


def test_an_fs_url_opens_the_whole_spool(django_mail: None, tmp_path: Path) -> None:
    root = tmp_path / "MailRoot"
    with override_settings(EMAIL_BACKEND=BACKEND, SPOOLMAIL_ROOT=f"osfs://{root}"):
        assert mail.send_mail("Hi", "x", "app@example.com", ["bob@example.com"]) == 1
    assert len(list((root / "Pickup").iterdir())) == 1
    assert (root / "SortTemp").is_dir()  # a Spool made the MailRoot, as Spool() does


def test_a_connection_opened_once_serves_many_sends(mailroot: Path) -> None:
    connection = mail.get_connection()
    with connection:
        assert connection.open() is False  # already open: not opened again
        first = mail.EmailMessage("one", "1", to=["a@example.com"], connection=connection)
        second = mail.EmailMessage("two", "2", to=["b@example.com"], connection=connection)
        assert first.send() == 1
        assert second.send() == 1
        assert first.spoolmail_queue_id != second.spoolmail_queue_id
    # Closed again: the next send opens and closes the spool by itself.
    assert connection.open() is True
    connection.close()
    names = sorted(p.name for p in (mailroot / "Pickup").iterdir())
    assert names == sorted(f"{m.spoolmail_queue_id}.eml" for m in (first, second))


def test_everything_django_builds_reaches_drop_and_the_smart_host(
    memory_spool: Spool, spoolmail_service: MailService, spoolmail_transport: CapturingTransport
) -> None:
    message = mail.EmailMultiAlternatives(
        subject="Quarterly report",
        body="See the attachments.\n",
        from_email="Reports <reports@example.com>",
        to=["Bob <bob@example.com>"],
        cc=["partner@example.net"],
        bcc=["audit@example.com", "archive@example.net"],
        reply_to=["help@example.com"],
        headers={"X-Campaign": "q3", "List-Unsubscribe": "<mailto:unsub@example.com>"},
    )
    message.attach_alternative("<p>See the <b>attachments</b>.</p>", "text/html")
    message.attach("report.csv", "a,b\n1,2\n", "text/csv")
    message.attach("logo.png", b"\x89PNG\r\n\x1a\n\x00\xff", "image/png")
    assert message.send() == 1
    queue_id = message.spoolmail_queue_id
    assert memory_spool.pickup() == [f"{queue_id}.eml"]
    spoolmail_service.run_once()

    dropped = memory_spool.drop_item(queue_id)
    assert dropped.sender == "reports@example.com"
    assert dropped.recipients == ("bob@example.com", "audit@example.com")
    [remote] = spoolmail_transport.messages
    assert remote.queue_id == queue_id
    assert remote.recipients == ("partner@example.net", "archive@example.net")
    for data in (memory_spool.drop_message(queue_id), remote.data):
        # Bcc recipients got the message, and no header names them.
        assert b"bcc" not in head(data).lower()
        assert b"audit@" not in head(data)
        assert b"archive@" not in head(data)
        parsed = parse(data)
        assert parsed["Reply-To"] == "help@example.com"
        assert parsed["Cc"] == "partner@example.net"
        assert parsed["X-Campaign"] == "q3"
        assert parsed["List-Unsubscribe"] == "<mailto:unsub@example.com>"
        assert parsed.get_body(("plain",)).get_content() == "See the attachments.\n"
        assert "<b>attachments</b>" in parsed.get_body(("html",)).get_content()
        attachments = {
            part.get_filename(): (part.get_content_type(), part.get_payload(decode=True))
            for part in parsed.iter_attachments()
        }
        assert attachments == {
            "report.csv": ("text/csv", b"a,b\n1,2\n"),
            "logo.png": ("image/png", b"\x89PNG\r\n\x1a\n\x00\xff"),
        }


def test_non_ascii_subject_and_addresses_go_as_utf8(
    memory_spool: Spool, spoolmail_service: MailService, spoolmail_transport: CapturingTransport
) -> None:
    message = mail.EmailMessage(
        "Café ✓",
        "Grüße\n",
        "Zoë <zoë@example.com>",
        ["jürgen@müller.test", "Åsa <åsa@example.com>"],
        cc=["Renée <renee@example.com>"],
    )
    assert message.send() == 1
    spoolmail_service.run_once()
    [remote] = spoolmail_transport.messages
    assert remote.sender == "zoë@example.com"
    assert remote.recipients == ("jürgen@müller.test",)
    dropped = memory_spool.drop_message(message.spoolmail_queue_id)
    assert "x-receiver: åsa@example.com\r\n".encode() in dropped
    for data in (remote.data, dropped):
        # Django < 6 writes =?utf-8?q?j=C3=BCrgen?=@xn--mller-kva.test; RFC 6532 keeps it.
        assert "\r\nFrom: Zoë <zoë@example.com>\r\n".encode() in data
        assert "\r\nTo: jürgen@müller.test, Åsa <åsa@example.com>\r\n".encode() in data
        parsed = parse(data)
        assert parsed["Subject"] == "Café ✓"
        assert parsed["Cc"] == "Renée <renee@example.com>"  # an ASCII address: as Django wrote it
        assert parsed.get_content() == "Grüße\n"


def test_ascii_addresses_with_non_ascii_names_stay_as_django_encodes_them(
    memory_spool: Spool,
) -> None:
    assert mail.send_mail("Hi", "x", "Zoë <app@example.com>", ["Åsa <asa@example.com>"]) == 1
    [name] = memory_spool.pickup()
    data = memory_spool.fs.readbytes(f"Pickup/{name}")
    assert data.isascii()  # no SMTPUTF8 needed, so none asked for
    assert parse(data)["To"] == "Åsa <asa@example.com>"


# -- failures --------------------------------------------------------------------------------------


def test_an_invalid_address_raises_a_message_error_naming_it(memory_spool: Spool) -> None:
    with pytest.raises(MessageError, match=r"'bob at example\.com' is not an address"):
        mail.send_mail("Hi", "x", None, ["bob at example.com"])
    assert memory_spool.pickup() == []


def test_fail_silently_skips_a_bad_message_and_sends_the_rest(memory_spool: Spool) -> None:
    assert mail.send_mail("Hi", "x", None, ["bob@"], fail_silently=True) == 0
    good = [mail.EmailMessage("ok", "x", to=[f"u{n}@example.com"]) for n in range(2)]
    bad = mail.EmailMessage("bad", "x", to=["bob@"])
    connection = mail.get_connection(fail_silently=True)
    assert connection.send_messages([good[0], bad, good[1]]) == 2
    assert sorted(memory_spool.pickup()) == sorted(f"{m.spoolmail_queue_id}.eml" for m in good)
    assert not hasattr(bad, "spoolmail_queue_id")


def test_a_failure_in_a_batch_says_what_was_already_written(memory_spool: Spool) -> None:
    good = mail.EmailMessage("ok", "x", to=["u@example.com"])
    bad = mail.EmailMessage("bad", "x", to=["bob@"])
    with pytest.raises(MessageError, match="its domain is empty") as caught:
        mail.get_connection().send_messages([good, bad])
    assert caught.value.__notes__ == ["1 message(s) before this one were written"]
    assert memory_spool.pickup() == [f"{good.spoolmail_queue_id}.eml"]


def test_djangos_own_header_check_raises_even_when_silent(memory_spool: Spool) -> None:
    # As with Django's SMTP backend: fail_silently covers delivery, not a message that is wrong.
    with pytest.raises(BadHeaderError):
        mail.send_mail("Hi\nBcc: victim@example.net", "x", None, ["bob@example.com"], True)
    assert memory_spool.pickup() == []


def test_a_mailroot_that_cannot_be_opened(django_mail: None, tmp_path: Path) -> None:
    """The application never makes the MailRoot: that is the service's (and its owner's)."""
    with override_settings(EMAIL_BACKEND=BACKEND, SPOOLMAIL_ROOT=str(tmp_path / "MailRoot")):
        with pytest.raises(ConfigurationError, match="has no Pickup folder"):
            mail.send_mail("Hi", "x", "app@example.com", ["bob@example.com"])
        assert mail.send_mail("Hi", "x", "app@example.com", ["bob@example.com"], True) == 0
        assert mail.get_connection(fail_silently=True).open() is None


def test_nothing_to_send(memory_spool: Spool) -> None:
    connection = mail.get_connection()
    assert connection.send_messages([]) == 0
    assert connection.send_messages([mail.EmailMessage("nobody", "x")]) == 0
    assert memory_spool.pickup() == []


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        (None, "needs SPOOLMAIL_ROOT"),
        ("mem://", "a new, empty spool for every connection"),
        ("TEMP://", "a new, empty spool for every connection"),
        (42, "must be a folder, an FS URL or a spoolmail.Spool, not 42"),
    ],
)
def test_settings_that_cannot_work_are_refused(
    django_mail: None, setting: object, problem: str
) -> None:
    with (
        override_settings(EMAIL_BACKEND=BACKEND, SPOOLMAIL_ROOT=setting),
        pytest.raises(ImproperlyConfigured, match=problem),
    ):
        mail.get_connection()


def test_durability_from_settings_or_for_one_connection(mailroot: Path) -> None:
    assert mail.get_connection().durability is Durability.NONE
    connection = mail.get_connection(root=mailroot / "other", durability="fsync")
    assert (connection.root, connection.durability) == (mailroot / "other", Durability.FSYNC)
    with pytest.raises(ImproperlyConfigured, match="'fsync', 'none', not 'sometimes'"):
        mail.get_connection(durability="sometimes")


def test_a_message_over_the_services_size_limit_raises_when_django_sends_it(
    memory_spool: Spool,
) -> None:
    """With SPOOLMAIL_MAX_MESSAGE_SIZE the service's max_message_size, a message the service
    would put into BadMail unseen raises in the view that sends it."""
    big = mail.EmailMessage("big", "x" * 5000, to=["bob@example.com"])
    small = mail.EmailMessage("small", "x", to=["bob@example.com"])
    with override_settings(SPOOLMAIL_MAX_MESSAGE_SIZE=4096):
        with pytest.raises(MessageError, match="over the limit of 4096 bytes") as caught:
            mail.get_connection().send_messages([big])
        assert caught.value.status == "5.3.4"
        assert memory_spool.pickup() == []
        assert mail.get_connection(fail_silently=True).send_messages([big, small]) == 1
        assert memory_spool.pickup() == [f"{small.spoolmail_queue_id}.eml"]
    # For one connection; and unset, nothing is checked here.
    with pytest.raises(MessageError, match="over the limit of 100 bytes"):
        mail.get_connection(max_message_size=100).send_messages([small])
    assert mail.get_connection().send_messages([big]) == 1


@pytest.mark.parametrize("wrong", [0, -5, True, "10MB", 2.5])
def test_a_size_limit_that_is_no_size_is_refused(memory_spool: Spool, wrong: object) -> None:
    with (
        override_settings(SPOOLMAIL_MAX_MESSAGE_SIZE=wrong),
        pytest.raises(ImproperlyConfigured, match="SPOOLMAIL_MAX_MESSAGE_SIZE must be"),
    ):
        mail.get_connection()


def test_a_spool_given_as_the_root_is_left_open(memory_spool: Spool) -> None:
    with mail.get_connection() as connection:
        connection.send_messages([mail.EmailMessage("one", "x", to=["a@example.com"])])
    memory_spool.submit(b"Subject: still open\r\n\r\nx\r\n", sender="a@example.com",
                        recipients=["b@example.com"])  # fmt: skip
    assert len(memory_spool.pickup()) == 2


# -- threads ---------------------------------------------------------------------------------------


def test_one_backend_shared_by_threads(mailroot: Path) -> None:
    connection = mail.get_connection()
    barrier = threading.Barrier(4)

    def send(worker: int) -> list[str]:
        barrier.wait()
        sent = []
        for n in range(5):
            message = mail.EmailMessage(f"{worker}-{n}", "x", to=["bob@example.com"])
            assert connection.send_messages([message]) == 1
            sent.append(message.spoolmail_queue_id)
        return sent

    with ThreadPoolExecutor(4) as pool:
        ids = [queue_id for sent in pool.map(send, range(4)) for queue_id in sent]
    assert len(set(ids)) == 20
    assert sorted(p.name for p in (mailroot / "Pickup").iterdir()) == sorted(
        f"{queue_id}.eml" for queue_id in ids
    )
    assert not list((mailroot / "SortTemp").iterdir())  # every spool it opened was closed


# -- the import ------------------------------------------------------------------------------------


def test_spoolmail_never_imports_django_and_the_backend_names_the_fix() -> None:
    code = (
        "import sys, spoolmail, spoolmail.testing\n"
        "assert 'django' not in sys.modules, 'spoolmail imported Django'\n"
        "sys.modules['django'] = None\n"
        "import spoolmail.django\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "spoolmail.exceptions.DependencyError: "
        "spoolmail.django needs Django: pip install 'spoolmail[django]'"
    )


# -- in users' tests -------------------------------------------------------------------------------


def test_django_mail_in_the_outbox(memory_spool: Spool, spoolmail_outbox: Outbox) -> None:
    mail.send_mail("Welcome", "Hello Bob.\n", None, ["bob@example.com"])
    mail.send_mail("Invoice", "Pay.\n", None, ["partner@example.net"], html_message="<p>Pay.</p>")
    welcome = spoolmail_outbox.assert_sent(to="bob@example.com", subject="Welcome")
    assert (welcome.where, welcome.sender, welcome.body) == (
        "drop",
        "app@example.com",
        "Hello Bob.\n",
    )
    invoice = spoolmail_outbox.assert_sent(to="partner@example.net")
    assert (invoice.where, invoice.html) == ("smarthost.test", "<p>Pay.</p>")
    spoolmail_outbox.assert_not_sent(to="admin@example.com")
