"""What an inbound SMTP session records: ESMTP parameters of MAIL and RCPT, and the Received field.

The listener hands this module the words a client sent after ``MAIL FROM:<...>`` and
``RCPT TO:<...>`` and gets back the RFC 3461 DSN values (RET and ENVID; NOTIFY and ORCPT),
checked, plus the parameters it did not take (SIZE, BODY, SMTPUTF8), for the SMTP engine to
judge. A malformed or repeated parameter is a :class:`~spoolmail.exceptions.MessageError` with
status 5.5.4 (RFC 3463 "invalid command arguments"), which the listener answers with ``501``.
ENVID and ORCPT are kept as the client sent them, in xtext: the DSN renderer decodes them
(``_core/dsn.py``) and the SMTP client passes them on unchanged.

:func:`received_field` writes the trace field an SMTP server prepends (RFC 5321 section 4.4),
with the protocol names of RFC 3848 and RFC 6531 and the TLS details as Postfix writes them.
Pure: the time, the client's address and the TLS facts are handed in; no sockets, no DNS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import format_datetime

import attrs

from spoolmail._core.envelope import Notify, Ret
from spoolmail.exceptions import MessageError

__all__ = [
    "MailDsn",
    "RcptDsn",
    "TlsFacts",
    "protocol_name",
    "received_field",
    "split_mail_parameters",
    "split_rcpt_parameters",
]

# RFC 3461 section 4: xtext is xchar ("!" to "~" except "+" and "=") or "+" and two upper-case
# hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
# RFC 3461 section 4.4 (ENVID at most 100 characters) and 4.2 (ORCPT at most 500).
_ENVID_MAX = 100
_ORCPT_MAX = 500
# RFC 3461 section 4.2: addr-type is an atom (RFC 5322); in practice rfc822 or utf-8.
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_NOTIFY_WORDS = {"SUCCESS": Notify.SUCCESS, "FAILURE": Notify.FAILURE, "DELAY": Notify.DELAY}


@attrs.frozen
class MailDsn:
    """MAIL FROM's RFC 3461 parameters: ``RET=FULL|HDRS`` and ``ENVID=xtext``."""

    ret: Ret | None = None
    envid: str | None = None


@attrs.frozen
class RcptDsn:
    """RCPT TO's RFC 3461 parameters: ``NOTIFY=NEVER|SUCCESS,FAILURE,DELAY``, ``ORCPT=t;xtext``."""

    notify: Notify | None = None
    orcpt: str | None = None


def _bad(text: str) -> MessageError:
    return MessageError(text, status="5.5.4")


def _split(params: Sequence[str], wanted: set[str]) -> tuple[dict[str, str], list[str]]:
    """The ``wanted`` keyword=value parameters by upper-cased keyword, and the others as given."""
    taken: dict[str, str] = {}
    rest: list[str] = []
    for param in params:
        keyword, equals, value = param.partition("=")
        key = keyword.upper()
        if key not in wanted:
            rest.append(param)
            continue
        if key in taken:
            raise _bad(f"{key} given twice")
        if not equals or not value:
            raise _bad(f"{key} needs a value")
        taken[key] = value
    return taken, rest


def _xtext(value: str, keyword: str, limit: int) -> str:
    if len(value) > limit:
        raise _bad(f"{keyword} is longer than {limit} characters (RFC 3461)")
    if not _XTEXT.fullmatch(value):
        raise _bad(f"{keyword} is not xtext (RFC 3461 section 4)")
    return value


def split_mail_parameters(params: Sequence[str]) -> tuple[MailDsn, list[str]]:
    """RET and ENVID taken out of MAIL FROM's parameters, checked; the rest as given."""
    taken, rest = _split(params, {"RET", "ENVID"})
    ret = None
    if "RET" in taken:
        try:
            ret = Ret(taken["RET"].upper())
        except ValueError:
            raise _bad("RET must be FULL or HDRS (RFC 3461 section 4.3)") from None
    envid = _xtext(taken["ENVID"], "ENVID", _ENVID_MAX) if "ENVID" in taken else None
    return MailDsn(ret=ret, envid=envid), rest


def split_rcpt_parameters(params: Sequence[str]) -> tuple[RcptDsn, list[str]]:
    """NOTIFY and ORCPT taken out of RCPT TO's parameters, checked; the rest as given."""
    taken, rest = _split(params, {"NOTIFY", "ORCPT"})
    notify = None
    if "NOTIFY" in taken:
        words = taken["NOTIFY"].upper().split(",")
        if words == ["NEVER"]:
            notify = Notify.NEVER
        elif len(set(words)) != len(words) or not all(w in _NOTIFY_WORDS for w in words):
            raise _bad("NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY (RFC 3461 4.1)")
        else:
            notify = Notify.NEVER
            for word in words:
                notify |= _NOTIFY_WORDS[word]
    orcpt = None
    if "ORCPT" in taken:
        addr_type, semicolon, value = taken["ORCPT"].partition(";")
        if not semicolon or not _ADDR_TYPE.fullmatch(addr_type) or not value:
            raise _bad("ORCPT is addr-type;xtext, as rfc822;bob@example.com (RFC 3461 4.2)")
        if len(taken["ORCPT"]) > _ORCPT_MAX:
            raise _bad(f"ORCPT is longer than {_ORCPT_MAX} characters (RFC 3461 4.2)")
        orcpt = f"{addr_type};{_xtext(value, 'ORCPT', _ORCPT_MAX)}"
    return RcptDsn(notify=notify, orcpt=orcpt), rest


# -- the Received field ----------------------------------------------------------------------------


@attrs.frozen
class TlsFacts:
    """The TLS session a message came over: ``TLSv1.3``, ``TLS_AES_256_GCM_SHA384``, 256 bits."""

    version: str
    cipher: str
    bits: int


def protocol_name(*, extended: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The ``with`` word of RFC 3848 (ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 (UTF8SMTP...)."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


# A name that _printable shows as it is: printable ASCII ("!" to "~") but "(", ")" and "\".
_SHOWN_AS_IS = re.compile(r"[!-'*-\[\]-~]+")


def _printable(text: str, limit: int = 255) -> str:
    """A client-given name as a trace field may show it: printable ASCII, no comment brackets."""
    if _SHOWN_AS_IS.fullmatch(text) is not None:  # the usual name: nothing to replace
        return text[:limit]
    shown = "".join(c if "!" <= c <= "~" and c not in "()\\" else "?" for c in text)
    return shown[:limit] or "?"


# The last date stamp written and what it was made from: every message of one second shares it.
_last_stamp: tuple[tuple[object, ...], str] = ((), "")


def _stamp(date: datetime) -> str:
    """``format_datetime(date)``, made once a second. Only for a naive date or one with a fixed
    offset (``datetime.timezone``): another zone's offset may depend on more than the time."""
    zone = date.tzinfo
    if zone is not None and type(zone) is not timezone:
        return format_datetime(date)
    global _last_stamp  # noqa: PLW0603 (a cache: one tuple, replaced whole)
    key = (date.second, date.minute, date.hour, date.day, date.month, date.year, zone)
    last = _last_stamp
    if last[0] == key:
        return last[1]
    stamp = format_datetime(date)
    _last_stamp = (key, stamp)
    return stamp


def _literal(address: str) -> str:
    """An address literal (RFC 5321 section 4.1.3): ``[192.0.2.7]``, ``[IPv6:2001:db8::7]``."""
    return f"[IPv6:{address}]" if ":" in address else f"[{address}]"


def received_field(
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
    """The ``Received:`` field (RFC 5321 section 4.4) to prepend, folded, ending in CRLF.

    ``from <helo> ([<client>])`` (no reverse DNS: no lookups are made, so none is claimed),
    the TLS line as Postfix writes it, ``by <fqdn> (spoolmail) with <protocol> id <queue id>``,
    and ``for <recipient>`` only when there is exactly one: naming every recipient of a message
    would show the Bcc recipients to all of them (Postfix does the same).
    """
    lines = [f"Received: from {_printable(helo)} ({_literal(client)})"]
    if tls is not None:
        lines.append(
            f"\t(using {_printable(tls.version)} with cipher {_printable(tls.cipher)}"
            f" ({tls.bits}/{tls.bits} bits))"
        )
    lines.append(f"\tby {fqdn} (spoolmail) with {protocol} id {queue_id}")
    stamp = _stamp(date)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
