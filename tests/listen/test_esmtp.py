"""RFC 3461 parameters, the Received field and enhanced codes: pure functions, a table each."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import format_datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spoolmail import Notify, Ret
from spoolmail._core.esmtp import (
    MailDsn,
    RcptDsn,
    TlsFacts,
    protocol_name,
    received_field,
    split_mail_parameters,
    split_rcpt_parameters,
)
from spoolmail._listen.replies import enhance
from spoolmail.exceptions import MessageError


@pytest.mark.parametrize(
    ("params", "dsn", "rest"),
    [
        ([], MailDsn(), []),
        (["SIZE=10", "BODY=8BITMIME"], MailDsn(), ["SIZE=10", "BODY=8BITMIME"]),
        (["RET=HDRS", "ENVID=QQ+2B1"], MailDsn(Ret.HDRS, "QQ+2B1"), []),
        (["ret=full", "SIZE=1"], MailDsn(Ret.FULL), ["SIZE=1"]),
        (["ENVID=" + "a" * 100], MailDsn(envid="a" * 100), []),
    ],
)
def test_mail_parameters(params: list[str], dsn: MailDsn, rest: list[str]) -> None:
    assert split_mail_parameters(params) == (dsn, rest)


@pytest.mark.parametrize(
    "params",
    [
        ["RET=NONE"],
        ["RET="],
        ["RET"],
        ["RET=FULL", "RET=HDRS"],
        ["ENVID=a b"],
        ["ENVID=a=b"],
        ["ENVID=+2b"],  # hex digits are upper case
        ["ENVID=+2"],
        ["ENVID=" + "a" * 101],
        ["ENVID=caf\u00e9"],
    ],
)
def test_bad_mail_parameters_are_5_5_4(params: list[str]) -> None:
    with pytest.raises(MessageError) as raised:
        split_mail_parameters(params)
    assert raised.value.status == "5.5.4"


@pytest.mark.parametrize(
    ("params", "dsn"),
    [
        ([], RcptDsn()),
        (["NOTIFY=NEVER"], RcptDsn(notify=Notify.NEVER)),
        (["NOTIFY=SUCCESS,DELAY"], RcptDsn(notify=Notify.SUCCESS | Notify.DELAY)),
        (["notify=failure"], RcptDsn(notify=Notify.FAILURE)),
        (["ORCPT=rfc822;bob@example.com"], RcptDsn(orcpt="rfc822;bob@example.com")),
        (["ORCPT=utf-8;b+2Bx@example.com"], RcptDsn(orcpt="utf-8;b+2Bx@example.com")),
    ],
)
def test_rcpt_parameters(params: list[str], dsn: RcptDsn) -> None:
    assert split_rcpt_parameters(params) == (dsn, [])


@pytest.mark.parametrize(
    "params",
    [
        ["NOTIFY=NEVER,SUCCESS"],
        ["NOTIFY=SOMETIMES"],
        ["NOTIFY=SUCCESS,SUCCESS"],
        ["NOTIFY="],
        ["ORCPT=bob@example.com"],
        ["ORCPT=;bob@example.com"],
        ["ORCPT=rfc822;"],
        ["ORCPT=rfc822;bob example"],
        ["ORCPT=rfc822;" + "a" * 500],
        ["NOTIFY=NEVER", "NOTIFY=NEVER"],
    ],
)
def test_bad_rcpt_parameters_are_5_5_4(params: list[str]) -> None:
    with pytest.raises(MessageError) as raised:
        split_rcpt_parameters(params)
    assert raised.value.status == "5.5.4"


@pytest.mark.parametrize(
    ("extended", "tls", "authenticated", "smtputf8", "name"),
    [
        (False, False, False, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, True, True, False, "ESMTPSA"),
        (True, False, True, False, "ESMTPA"),
        (True, True, False, True, "UTF8SMTPS"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_protocol_names(
    extended: bool, tls: bool, authenticated: bool, smtputf8: bool, name: str
) -> None:
    assert (
        protocol_name(extended=extended, tls=tls, authenticated=authenticated, smtputf8=smtputf8)
        == name
    )


DATE = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_received_field_with_tls_and_one_recipient() -> None:
    field = received_field(
        helo="client.test",
        client="192.0.2.7",
        fqdn="mx.example.com",
        protocol="ESMTPS",
        queue_id="ID1",
        recipients=["bob@example.com"],
        date=DATE,
        tls=TlsFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
    )
    assert field == (
        b"Received: from client.test ([192.0.2.7])\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"
        b"\tby mx.example.com (spoolmail) with ESMTPS id ID1\r\n"
        b"\tfor <bob@example.com>; Mon, 06 May 2024 07:08:09 +0000\r\n"
    )


def test_received_field_names_no_recipient_of_several_and_quotes_no_helo_trickery() -> None:
    field = received_field(
        helo="evil)\x7f(x",
        client="2001:db8::7",
        fqdn="mx.example.com",
        protocol="ESMTP",
        queue_id="ID2",
        recipients=["a@example.com", "b@example.com"],
        date=DATE,
    )
    assert field == (
        b"Received: from evil???x ([IPv6:2001:db8::7])\r\n"
        b"\tby mx.example.com (spoolmail) with ESMTP id ID2;\r\n"
        b"\tMon, 06 May 2024 07:08:09 +0000\r\n"
    )
    assert b"a@example.com" not in field


def reference_received_field(
    *,
    helo: str,
    client: str,
    fqdn: str,
    protocol: str,
    queue_id: str,
    recipients: Sequence[str],
    date: datetime,
    tls: TlsFacts | None = None,
) -> bytes:
    """received_field as it was first written (each name checked a character at a time, the
    date formatted for each message): what the quicker one must give, octet for octet."""

    def printable(text: str, limit: int = 255) -> str:
        shown = "".join(c if "!" <= c <= "~" and c not in "()\\" else "?" for c in text)
        return shown[:limit] or "?"

    literal = f"[IPv6:{client}]" if ":" in client else f"[{client}]"
    lines = [f"Received: from {printable(helo)} ({literal})"]
    if tls is not None:
        lines.append(
            f"\t(using {printable(tls.version)} with cipher {printable(tls.cipher)}"
            f" ({tls.bits}/{tls.bits} bits))"
        )
    lines.append(f"\tby {fqdn} (spoolmail) with {protocol} id {queue_id}")
    stamp = format_datetime(date)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


NAMES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=20),
    st.text(max_size=300),
    st.sampled_from(["client.test", "", "evil)(x", "a\\b", "a b", "[192.0.2.1]", "x" * 256]),
)
ZONES = st.one_of(
    st.none(),
    st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30)), timezone(timedelta(0))]),
    st.timezones(),
)


def walk(start: datetime, moves: list[tuple[int, tzinfo | None]]) -> list[datetime]:
    """Dates from ``start`` on, each some microseconds after the last, in a zone or another:
    the date stamp made once a second is reused, or must not be."""
    dates = [start]
    for step, zone in moves:
        dates.append((dates[-1] + timedelta(microseconds=step)).replace(tzinfo=zone))
    return dates


DATES = st.builds(
    walk,
    st.datetimes(
        min_value=datetime(1970, 1, 2),  # noqa: DTZ001 (naive: hypothesis adds the zone)
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=ZONES,
    ),
    st.lists(st.tuples(st.integers(0, 1_500_000), ZONES), max_size=6),
)


@given(
    helo=NAMES,
    client=st.sampled_from(["192.0.2.7", "2001:db8::7", "None"]),
    recipients=st.lists(st.text(max_size=20), max_size=3),
    dates=DATES,
    tls=st.none() | st.builds(TlsFacts, NAMES, NAMES, st.integers(0, 512)),
)
@example(
    helo="a b\t(c)",
    client="192.0.2.7",
    recipients=["bob@example.com"],
    dates=[DATE, DATE + timedelta(seconds=1), DATE.replace(tzinfo=None), DATE],
    tls=TlsFacts("TLS v1", "x\\y", 1),
)
def test_received_field_is_the_reference_octet_for_octet(
    helo: str, client: str, recipients: list[str], dates: list[datetime], tls: TlsFacts | None
) -> None:
    for date in dates:
        facts = {
            "helo": helo,
            "client": client,
            "fqdn": "mx.example.com",
            "protocol": "ESMTPSA",
            "queue_id": "ID3",
            "recipients": recipients,
            "date": date,
            "tls": tls,
        }
        assert received_field(**facts) == reference_received_field(**facts)


@pytest.mark.parametrize(
    ("reply", "enhanced"),
    [
        ("250 OK", "250 2.0.0 Ok"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
        ("503 Error: send HELO first", "503 5.5.1 Error: send HELO first"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        (
            "552 Error: Too much mail data",
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        ("538 5.7.11 Encryption required", "538 5.7.11 Encryption required"),
        ("550 5.7.1 Unable to relay", "550 5.7.1 Unable to relay"),
        ("599 Something odd", "599 5.0.0 Something odd"),
        # Untouched: greeting, EHLO and HELO lines, challenges, 354.
        ("220 mx.example.com ESMTP spoolmail", "220 mx.example.com ESMTP spoolmail"),
        ("250-SIZE 100", "250-SIZE 100"),
        ("250 HELP", "250 HELP"),
        ("250 mx.example.com", "250 mx.example.com"),
        ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_replies_carry_enhanced_codes(reply: str, enhanced: str) -> None:
    assert enhance(reply) == enhanced
