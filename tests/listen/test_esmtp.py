"""RFC 3461 parameters, the Received field and enhanced codes: pure functions, a table each."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

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
