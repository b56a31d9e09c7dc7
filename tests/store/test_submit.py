"""``Spool.submit``: any ``email.message.Message`` whatever its policy, UTF-8 addresses kept as
UTF-8 (RFC 6532), and the queue id the message will have. In memory, through the service."""

from __future__ import annotations

import email.message
import email.policy
import os
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from spoolmail import Limits, MailService, Pickup, Router, Spool
from spoolmail._core.ids import is_queue_id
from spoolmail.exceptions import ConfigurationError, MessageError
from spoolmail.testing import CapturingTransport


def pickup_file(spool: Spool) -> bytes:
    [name] = spool.pickup()
    return spool.fs.readbytes(f"Pickup/{name}")


class AsBytesWithoutPolicy(MIMEText):
    """As Django's ``SafeMIMEText``: ``as_bytes`` overridden without a ``policy`` argument."""

    def as_bytes(self, unixfrom: bool = False, linesep: str = "\n") -> bytes:  # type: ignore[override]
        return super().as_bytes(unixfrom=unixfrom, policy=self.policy.clone(linesep=linesep))


# -- the queue id ---------------------------------------------------------------------------------


def test_submit_returns_the_queue_id_that_names_its_pickup_file(spoolmail_spool: Spool) -> None:
    queue_id = spoolmail_spool.submit(b"From: a@example.com\r\nTo: b@example.com\r\n\r\nhi\r\n")
    assert is_queue_id(queue_id)
    assert spoolmail_spool.pickup() == [f"{queue_id}.eml"]


def test_the_submitted_message_keeps_that_id_in_the_queue(
    spoolmail_spool: Spool, spoolmail_service: MailService
) -> None:
    queue_id = spoolmail_spool.submit(b"From: a@example.com\r\nTo: b@example.com\r\n\r\nhi\r\n")
    assert spoolmail_service.run_once().picked_up == (queue_id,)
    assert spoolmail_spool.drop_item(queue_id).recipients == ("b@example.com",)


# -- email.message.Message, whatever its policy --------------------------------------------------


def test_compat32_mime_message(
    spoolmail_spool: Spool, spoolmail_service: MailService, spoolmail_transport: CapturingTransport
) -> None:
    mail = MIMEMultipart()
    mail["From"] = "App <app@example.com>"
    mail["To"] = "ops@partner.test, bob@example.com"
    mail["Subject"] = "Rapport trimestriel: café"
    mail.attach(MIMEText("naïve body\nFrom the start.\n", "plain", "utf-8"))
    assert mail.policy is email.policy.compat32
    spoolmail_spool.submit(mail)
    data = pickup_file(spoolmail_spool)
    assert b"\r\nSubject: =?utf-8?q?Rapport_trimestriel=3A_caf=C3=A9?=\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")
    spoolmail_service.run_once()
    [sent] = spoolmail_transport.messages
    assert (sent.sender, sent.recipients) == ("app@example.com", ("ops@partner.test",))
    parsed = email.message_from_bytes(sent.data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    assert parsed["Subject"] == "Rapport trimestriel: café"
    body = parsed.get_body()
    assert body is not None
    # Not mangled to ">From" as compat32's own generator would by default (mboxo quoting).
    assert body.get_content() == "naïve body\nFrom the start.\n"


def test_message_whose_as_bytes_takes_no_policy(spoolmail_spool: Spool) -> None:
    mail = AsBytesWithoutPolicy("hello", "plain", "utf-8")
    mail["From"] = "app@example.com"
    mail["To"] = "ops@example.com"
    queue_id = spoolmail_spool.submit(mail)
    assert pickup_file(spoolmail_spool).startswith(b'Content-Type: text/plain; charset="utf-8"\r\n')
    assert is_queue_id(queue_id)


def test_django_message(spoolmail_spool: Spool, spoolmail_service: MailService) -> None:
    pytest.importorskip("django")  # in the test extra; a bare checkout may lack it
    from django.conf import settings  # noqa: PLC0415 (only when Django is installed)

    if not settings.configured:
        settings.configure()
    from django.core.mail import EmailMessage  # noqa: PLC0415

    mail = EmailMessage(
        "Héllo", "body\n", "App <app@example.com>", ["bob@example.com"], bcc=["carol@example.com"]
    )
    spoolmail_spool.submit(mail.message(), sender=mail.from_email, recipients=mail.recipients())
    [queue_id] = spoolmail_service.run_once().picked_up
    assert spoolmail_spool.drop_item(queue_id).recipients == (
        "bob@example.com",
        "carol@example.com",
    )


# -- non-ASCII addresses stay UTF-8 (RFC 6532) ----------------------------------------------------


@pytest.mark.parametrize("policy", [email.policy.default, email.policy.SMTP, email.policy.SMTPUTF8])
def test_email_message_with_a_utf8_address(
    spoolmail_spool: Spool,
    spoolmail_service: MailService,
    spoolmail_transport: CapturingTransport,
    policy: email.policy.EmailPolicy,
) -> None:
    mail = email.message.EmailMessage(policy=policy)
    mail["From"] = "App <app@example.com>"
    mail["To"] = "Zoë <zoë@partner.test>, bob@partner.test"
    mail["Subject"] = "café"
    mail.set_content("naïve")
    spoolmail_spool.submit(mail)
    data = pickup_file(spoolmail_spool)
    assert "To: Zoë <zoë@partner.test>, bob@partner.test\r\n".encode() in data
    assert "Subject: café\r\n".encode() in data
    spoolmail_service.run_once()
    [sent] = spoolmail_transport.messages
    assert sent.recipients == ("zoë@partner.test", "bob@partner.test")
    assert "\r\nTo: Zoë <zoë@partner.test>, bob@partner.test\r\n".encode() in sent.data


def test_utf8_envelope_address_given_to_submit(spoolmail_spool: Spool) -> None:
    mail = email.message.EmailMessage()
    mail["From"] = "app@example.com"
    mail["To"] = "Undisclosed recipients:;"
    mail["Subject"] = "café"
    mail.set_content("x")
    spoolmail_spool.submit(mail, recipients=["<zoë@partner.test>"])
    data = pickup_file(spoolmail_spool)
    assert data.startswith("x-receiver: <zoë@partner.test>\r\n".encode())
    assert "Subject: café\r\n".encode() in data  # the message needs SMTPUTF8 anyway


def test_compat32_message_with_a_utf8_address(spoolmail_spool: Spool) -> None:
    mail = MIMEText("hello", "plain", "utf-8")
    mail["From"] = "app@example.com"
    mail["To"] = "Zoë <zoë@partner.test>"
    spoolmail_spool.submit(mail)
    assert "\r\nTo: Zoë <zoë@partner.test>\r\n".encode() in pickup_file(spoolmail_spool)


@pytest.mark.parametrize("policy", [email.policy.default, email.policy.SMTPUTF8])
def test_ascii_addresses_keep_headers_ascii(
    spoolmail_spool: Spool, policy: email.policy.EmailPolicy
) -> None:
    # No address needs SMTPUTF8, so none of the text does: a display name is RFC 2047-encoded.
    mail = email.message.EmailMessage(policy=policy)
    mail["From"] = "Zoë <zoe@partner.test>"
    mail["To"] = "bob@example.com"
    mail["Subject"] = "café"
    mail.set_content("naïve")
    spoolmail_spool.submit(mail)
    head = pickup_file(spoolmail_spool).split(b"\r\n\r\n")[0]
    assert head.isascii()
    assert b"From: =?utf-8?q?Zo=C3=AB?= <zoe@partner.test>\r\n" in head


def test_what_is_not_a_message_is_refused(spoolmail_spool: Spool) -> None:
    with pytest.raises(TypeError, match=r"bytes or an email\.message\.Message"):
        spoolmail_spool.submit("From: a@example.com\r\n\r\n")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="no sender"):
        spoolmail_spool.submit(MIMEText("no headers"))
    assert spoolmail_spool.pickup() == []


MESSAGE = b"From: a@example.com\r\nTo: list@example.com\r\n\r\nhi\r\n"


def test_an_empty_recipient_list_is_refused_not_read_as_the_headers(
    spoolmail_spool: Spool, tmp_path: Path
) -> None:
    # An app's list that came out empty (no active subscribers) sent to the To: field instead.
    (tmp_path / "Pickup").mkdir()
    for submit in (spoolmail_spool.submit, Pickup(str(tmp_path)).submit):
        for empty in ([], ()):
            with pytest.raises(MessageError, match="recipients is empty") as refused:
                submit(MESSAGE, recipients=empty)
            assert refused.value.status == "5.5.1"
    assert spoolmail_spool.pickup() == []
    assert os.listdir(tmp_path / "Pickup") == []
    spoolmail_spool.submit(MESSAGE, recipients=None)  # None: the headers, as documented
    assert len(spoolmail_spool.pickup()) == 1


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"recipients": [b"b@example.com"]}, "an address is a str, not bytes: b'b@example.com'"),
        ({"recipients": [None]}, "an address is a str, not NoneType: None"),
        ({"sender": 5}, "an address is a str, not int: 5"),
        ({"sender": b"a@example.com"}, "an address is a str, not bytes"),
    ],
)
def test_an_address_that_is_not_a_string_says_so(
    spoolmail_spool: Spool, options: dict[str, object], said: str
) -> None:
    with pytest.raises(TypeError) as refused:
        spoolmail_spool.submit(MESSAGE, **options)  # type: ignore[arg-type]
    assert str(refused.value).startswith(said)
    assert spoolmail_spool.pickup() == []


# -- the service's size limit, known to the sender ---------------------------------------------

SIZED = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: sized\r\n\r\n" + b"x" * 1000 + b"\r\n"
)


@pytest.mark.parametrize("writer", ["spool", "pickup folder"])
def test_a_message_over_max_size_is_refused_at_once_and_one_at_it_is_taken(
    tmp_path: Path, writer: str
) -> None:
    """``max_size`` is the service's ``max_message_size``, measured as intake measures it (the
    whole Pickup file): one byte over is refused now, not put into BadMail later unseen; one at
    the limit the service takes."""
    root = tmp_path / "MailRoot"
    with Spool(root) as spool:
        size = len(pickup_file_bytes(spool))
        submit = spool.submit if writer == "spool" else Pickup(root).submit
        with pytest.raises(MessageError, match=rf"is {size} bytes .* over the limit of {size - 1}"):
            submit(SIZED, sender="a@example.com", recipients=["b@example.com"], max_size=size - 1)
        assert spool.pickup() == []
        assert (caught_status(submit, size - 1)) == "5.3.4"
        queue_id = submit(
            SIZED, sender="a@example.com", recipients=["b@example.com"], max_size=size
        )
        assert taken(spool, limit=size) == ((queue_id,), ())
        assert spool.drop_item(queue_id).recipients == ("b@example.com",)
        # The other edge: unchecked, the same file is one the service with a limit a byte
        # lower puts into BadMail: the two measure alike.
        unchecked = submit(SIZED, sender="a@example.com", recipients=["b@example.com"])
        assert taken(spool, limit=size - 1) == ((), (unchecked,))


def taken(spool: Spool, *, limit: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a service with ``max_message_size=limit`` picks up, and puts into BadMail."""
    service = MailService(
        spool,
        fqdn="mail.example.com",
        router=Router(local_domains=["example.com"]),
        limits=Limits(max_message_size=limit),
    )
    try:
        report = service.run_once()
    finally:
        service.close()
    return report.picked_up, tuple(report.badmail)


def pickup_file_bytes(spool: Spool) -> bytes:
    """The Pickup file ``SIZED`` makes, written and taken away again (its size)."""
    queue_id = spool.submit(SIZED, sender="a@example.com", recipients=["b@example.com"])
    data = spool.fs.readbytes(f"Pickup/{queue_id}.eml")
    spool.fs.remove(f"Pickup/{queue_id}.eml")
    return data


def caught_status(submit: object, max_size: int) -> str:
    with pytest.raises(MessageError) as caught:
        submit(SIZED, sender="a@example.com", recipients=["b@example.com"], max_size=max_size)  # type: ignore[operator]
    return caught.value.status


@pytest.mark.parametrize("wrong", [0, -1, True, "2048", 1.5])
def test_a_max_size_that_is_no_size_is_refused(spoolmail_spool: Spool, wrong: object) -> None:
    with pytest.raises(ConfigurationError, match="max_size must be a number of bytes"):
        spoolmail_spool.submit(SIZED, max_size=wrong)  # type: ignore[arg-type]
    assert spoolmail_spool.pickup() == []
