"""DSNs: the message that tells a sender their mail failed, is waiting or arrived (RFC 3464, 6522).

:func:`render_dsn` reads an envelope (with its RFC 3461 ENVID and RET), the recipients to report
(each with its last :class:`~spoolmail.Reply` and ORCPT), the original message's bytes and the
times handed in, and returns the complete DSN as bytes: a
``multipart/report; report-type=delivery-status`` in the IIS SMTP Service's wording, with a
human-readable part, a ``message/delivery-status`` part and the original (or only its headers);
for internationalized mail (RFC 6533) the ``message/global-delivery-status``, ``message/global``
and ``message/global-headers`` forms of those parts. It writes the bytes itself, CRLF line ends,
so that equal inputs give equal bytes and golden files can pin them. Pure: it never touches the
filesystem, the network or a clock, and it does not decide who gets a DSN or when (NOTIFY is the
state machine's to read), nor queue it; the state machine does that and hands the bytes to the
store, sent from the null reverse-path ``<>`` (docs/retries.md).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime

from spoolmail._core.envelope import Envelope, Recipient, Ret
from spoolmail._core.headers import has_long_line
from spoolmail._core.ids import is_queue_id
from spoolmail._core.reply import Reply, Severity

__all__ = ["DsnAction", "render_dsn"]

# A reporting MTA is named by an ASCII host name (A-labels for IDNs) or an address literal: it
# appears in From, Message-ID and `Reporting-MTA: dns; ...`, none of which may carry anything else.
_HOST = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z|^\[(?:IPv6:)?[0-9A-Fa-f.:]+\]\Z"
)
# A msg-id worth echoing in In-Reply-To (RFC 5322 section 3.6.4): printable ASCII in angle brackets.
_MSG_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,900}>\Z")
_BLANK_LINE = re.compile(rb"(\r?\n)\r?\n")  # the end of a header section (RFC 5322 section 2.1)
_LINE_END = re.compile(rb"\r\n|\r|\n")  # as the SMTP transport reads a stored message's lines
_MESSAGE_ID_FIELD = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.M)
# RFC 3463 status-code, ASCII digits only: Reply's own check (\d, $) lets "5.1.1\n" and other
# scripts' digits through, and a Status field must not end a line early.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
# RFC 6533 section 3: EmbeddedUnicodeChar is a unit that a cut must never split.
_UNIT = re.compile(r"\\x\{[0-9A-F]{2,6}\}|.", re.S)
# RFC 3461 section 4: xtext is xchar ("!" to "~" but "+" and "=") and hexchar ("+" and two upper
# case hex digits, the octet it stands for). Lower case digits are accepted: they are unambiguous.
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
# RFC 6533 section 3: the "utf-8" address type's utf-8-addr-xtext (QCHAR, that is printable ASCII
# but "+", "=" and "\\", and EmbeddedUnicodeChar) or, received with SMTPUTF8, utf-8-addr-unitext
# (the same plus raw non-ASCII characters).
_UTF8_ADDR = re.compile(r"(?:[!-*,-<>-\[\]-~]|\\x\{[0-9A-F]{2,6}\}|[^\x00-\x7f])+")
_EMBEDDED = re.compile(r"\\x\{([0-9A-F]{2,6})\}")
# An address-type (RFC 3464 section 2.3.1, RFC 3461 section 4.2) is an atom.
_ADDRESS_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
# Unicode classes that break a line or hide text: controls (CR, LF, NUL, NEL...), format characters
# (bidi overrides), lone surrogates (unencodable) and the line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # the unsafe characters in ASCII: its Cc
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_WIDTH = 78  # RFC 5322 section 2.1.1: lines SHOULD stay within 78 characters...
_CUT = 900  # ...and MUST stay within 998 octets: a longer word is cut (octets, not characters)
# The most of a reply quoted for one recipient: a reply line is at most 512 octets (RFC 5321
# section 4.5.3.1.5), but the transport takes up to 64 KiB, and a DSN quotes the reply twice
# for each of what may be thousands of recipients.
_QUOTED = 2048
_INDENT = "       "  # IIS indents each recipient by seven spaces
_REASON_INDENT = _INDENT + "    "
_BOUNDARY_PREFIX = "=_DSN_"  # "=_" never occurs in quoted-printable or base64 text (RFC 2045)
_CRLF = "\r\n"

_PREAMBLE = (
    "This is a MIME-formatted message.\r\n"
    "Portions of this message may be unreadable without a MIME-capable mail program.\r\n"
)


class DsnAction(enum.Enum):
    """What a DSN reports for its recipients (RFC 3464 section 2.3.3, ``Action:``).

    ``DELIVERED`` is final delivery (into the Drop folder); ``RELAYED`` is a hand-over to a server
    that was not asked for DSNs, so no later success notice will come. Both are success DSNs,
    sent only to a sender who asked for them with ``NOTIFY=SUCCESS`` (RFC 3461 section 4.1).
    """

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"


# The Subject in IIS's form, "Delivery Status Notification (...)". Failure and Delay are seen in
# real IIS DSNs (notes/iis-smtp.md section 6); Success and Relay are the words IIS 6 / Exchange
# 2003 used for the other two, from memory of such messages, not from a captured one.
_SUBJECT = {
    DsnAction.FAILED: "Failure",
    DsnAction.DELAYED: "Delay",
    DsnAction.DELIVERED: "Success",
    DsnAction.RELAYED: "Relay",
}
# The status class a recipient's Status must have for each action (RFC 3464 section 2.3.4), and
# the generic code that stands in when the reply gives none of that class.
_FALLBACK_STATUS = {
    DsnAction.FAILED: "5.0.0",
    DsnAction.DELAYED: "4.0.0",
    DsnAction.DELIVERED: "2.0.0",
    DsnAction.RELAYED: "2.0.0",
}
_SUCCESS = frozenset({DsnAction.DELIVERED, DsnAction.RELAYED})


def render_dsn(
    *,
    envelope: Envelope,
    recipients: Sequence[Recipient],
    action: DsnAction,
    original: bytes,
    reporting_mta: str,
    dsn_id: str,
    now: datetime,
    will_retry_until: datetime | None = None,
    max_original_size: int = 256 * 1024,
) -> bytes:
    """The DSN about ``recipients`` of the message ``envelope`` describes, as message bytes.

    ``original`` is the message as stored. A failure DSN returns it whole, byte for byte, as
    ``message/rfc822`` when it has at most ``max_original_size`` octets and the sender did not
    ask for ``RET=HDRS``; otherwise, and in every delay or success DSN, only its header block is
    returned, as ``text/rfc822-headers`` (RFC 3461 section 4.3). Internationalized mail (a
    reported address or the sender in UTF-8, or UTF-8 in the original's header fields) is
    returned as ``message/global`` or ``message/global-headers`` instead, and when a reported
    address is in UTF-8 the status part is ``message/global-delivery-status``, with the address
    written as it is (RFC 6533 sections 3 and 6). ``dsn_id`` is the DSN's own queue
    id: the Message-ID is ``<dsn_id@reporting_mta>`` and the MIME boundary is derived from it, so
    nothing is random. ``now`` dates the DSN; ``will_retry_until`` says, for a delay, when the
    queue gives up. The envelope's ENVID and each recipient's ORCPT are reported, xtext-decoded,
    as ``Original-Envelope-Id`` and ``Original-Recipient`` (RFC 3461 section 6.3 (a), (d)).

    Raises ``ValueError`` for a message with the null sender (a DSN is never answered,
    docs/retries.md), for no recipients, for naive times and for a malformed ``dsn_id`` or
    ``reporting_mta``. Text from the network (reply text, hosts, addresses) never raises: it is
    cleaned and folded so that it can neither add a header nor break a line limit; a malformed
    ORCPT is left out, a malformed ENVID is decoded as far as it is xtext and cleaned.
    """
    if envelope.sender == "":
        raise ValueError(
            f"message {envelope.id} has the null sender <>: a DSN is never answered with "
            "another DSN (RFC 3464 section 2, RFC 5321 section 4.5.5); send it to BadMail"
        )
    if not recipients:
        raise ValueError("a DSN reports at least one recipient")
    if not is_queue_id(dsn_id):
        raise ValueError(f"dsn_id must be 1-128 characters of [A-Za-z0-9_-], not {dsn_id!r}")
    if not _HOST.match(reporting_mta):
        raise ValueError(
            f"reporting_mta must be an ASCII host name or address literal, not {reporting_mta!r}"
        )
    _check_aware("now", now)
    _check_aware("will_retry_until", will_retry_until)
    if will_retry_until is not None and action is not DsnAction.DELAYED:
        raise ValueError("will_retry_until belongs to a delay DSN (RFC 3464 section 2.3.9)")

    human = _human_text(recipients=recipients, action=action, will_retry_until=will_retry_until)
    # RFC 6533 section 3 and 6: a recipient address in UTF-8 is written as it is in a
    # message/global-delivery-status part; the 7-bit message/delivery-status could only carry
    # it escaped (utf-8-addr-xtext), which no person reads.
    unicode = any(_has_utf8_address(recipient) for recipient in recipients)
    status = _delivery_status(
        envelope=envelope,
        recipients=recipients,
        action=action,
        reporting_mta=reporting_mta,
        now=now,
        will_retry_until=will_retry_until,
        unicode=unicode,
    )
    headers = _mail_safe(_header_block(original))
    # RFC 6533 section 6: mail that needed SMTPUTF8 (a UTF-8 address, or header fields in UTF-8,
    # RFC 6532) comes back as message/global or message/global-headers, whose headers may be
    # UTF-8 (RFC 6532 section 3.7); message/rfc822 and text/rfc822-headers may not.
    international = unicode or not envelope.sender.isascii() or _has_utf8_headers(headers)
    whole_type = "message/global" if international else "message/rfc822"
    headers_type = "message/global-headers" if international else "text/rfc822-headers"
    returned, returned_type = original, whole_type
    if (
        # RFC 3461 section 4.3: RET=HDRS asks for the headers alone, and RET (FULL or absent)
        # governs failure DSNs only: "If a DSN contains no indications of delivery failure,
        # only the headers of the message SHOULD be returned" - so delays and successes do.
        action is not DsnAction.FAILED
        or envelope.ret is Ret.HDRS
        or len(original) > max_original_size
        # A whole message only when SMTP can carry it: RFC 2046 section 5.2.1 allows 7bit, 8bit
        # or binary for message/rfc822, and binary (NUL, bare CR or LF, lines over 998) needs
        # BINARYMIME (RFC 3030), which our transport does not speak.
        or _transfer_encoding(original) == "binary"
    ):
        returned, returned_type = headers, headers_type
    parts = [
        ("text/plain; charset=utf-8", human.encode("utf-8")),
        (
            "message/global-delivery-status" if unicode else "message/delivery-status",
            status.encode("utf-8" if unicode else "ascii"),
        ),
        (returned_type, returned),
    ]
    boundary = _boundary(dsn_id, [body for _, body in parts])
    encodings = [_transfer_encoding(body) for _, body in parts]
    # RFC 2045 section 6.4: a multipart is labelled with the widest encoding of what it holds.
    overall = max(encodings, key=("7bit", "8bit", "binary").index)

    lines = [
        f"From: postmaster@{reporting_mta}",
        *_wrap(_clean(f"<{envelope.sender}>"), first="To: ", indent=" "),
        f"Date: {_date(now)}",
        f"Message-ID: <{dsn_id}@{reporting_mta}>",
        f"Subject: Delivery Status Notification ({_SUBJECT[action]})",
    ]
    parent = _message_id(headers)
    if parent is not None:
        # Threading, and bounce parsers that match a DSN to what was sent (RFC 5322 section 3.6.4).
        lines += [f"In-Reply-To: {parent}", f"References: {parent}"]
    lines += [
        "MIME-Version: 1.0",
        # RFC 3834 section 5: so that vacation responders and list software stay quiet.
        "Auto-Submitted: auto-replied",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
        f"Content-Transfer-Encoding: {overall}",
    ]
    out = [_CRLF.join(lines).encode("utf-8"), b"\r\n\r\n", _PREAMBLE.encode("ascii")]
    for (content_type, body), encoding in zip(parts, encodings, strict=True):
        out += [
            f"\r\n--{boundary}\r\n".encode("ascii"),
            f"Content-Type: {content_type}\r\n".encode("ascii"),
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode("ascii"),
            body,
        ]
    # The CRLF before a delimiter belongs to the delimiter (RFC 2046 section 5.1.1), so each body
    # above, the original included, keeps exactly its own bytes.
    out.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


def _check_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, not {value!r}")


@functools.lru_cache(maxsize=64)  # a DSN dates each of its thousands of recipients alike
def _date(value: datetime) -> str:
    """An RFC 5322 date-time (section 3.3) in UTC, as both headers and DSN fields write it."""
    return format_datetime(value.astimezone(UTC))


def _clean(text: str) -> str:
    """Text from outside as one line: unsafe characters become spaces, white space runs one space.

    Reply text arrives from remote servers; CR, LF or NUL in it must not start a header or field
    of its own in the DSN, nor end a line early. ASCII's unsafe characters are its controls, which
    a regular expression replaces; only characters outside ASCII are looked up one by one (a DSN
    may quote thousands of replies of kilobytes each).
    """
    if text.isprintable() and "  " not in text:
        # No control, format or separator character, and no white space but single spaces
        # (every other white space character is a control or a separator).
        return text.strip(" ")
    spaced = _ASCII_CONTROL.sub(" ", text)
    if not spaced.isascii():
        spaced = _NON_ASCII.sub(_unsafe_as_space, spaced)
    return " ".join(spaced.split())


def _unsafe_as_space(match: re.Match[str]) -> str:
    char = match.group()
    return " " if unicodedata.category(char) in _UNSAFE else char


def _quoted(reply: Reply) -> str:
    """A reply as a DSN quotes it: at most _QUOTED characters, a cut marked."""
    text = str(reply)
    return text if len(text) <= _QUOTED else text[:_QUOTED] + " [...]"


def _seven_bit(text: str) -> str:
    """Cleaned text with every non-ASCII character as ``\\x{HEX}`` (RFC 6533 section 3).

    The delivery-status part is 7-bit (RFC 3464 section 2.1.1); the human-readable part carries
    the same text in UTF-8.
    """
    cleaned = _clean(text)
    if cleaned.isascii():
        return cleaned
    return "".join(c if c.isascii() else f"\\x{{{ord(c):02X}}}" for c in cleaned)


def _typed_address(address: str, *, unicode: bool) -> str:
    """An address as a delivery-status field types it (RFC 3464 section 2.3.2, RFC 6533 section 3).

    Printable ASCII is ``rfc822; addr``. Anything else is ``utf-8;`` (:func:`_utf8_form`).
    """
    if all(" " <= c <= "~" for c in address):
        return f"rfc822; {_clean(address)}"
    return f"utf-8; {_utf8_form(address, unicode=unicode)}"


def _utf8_form(address: str, *, unicode: bool) -> str:
    """A ``utf-8`` address-type's value (RFC 6533 section 3).

    In a message/global-delivery-status part (``unicode``) an address of printable characters
    is written as it is, the utf-8-address form, as Postfix does. Otherwise, and in the 7-bit
    message/delivery-status, it takes the utf-8-addr-xtext form: every character but QCHAR
    (printable ASCII less ``\\``, ``+`` and ``=``) as ``\\x{HEX}``, so it stays 7-bit and one line.
    HEXPOINT has no form for most ASCII controls nor for surrogates, which no address may hold
    anyway; they are written as U+FFFD, visibly wrong rather than silently dropped.
    """
    if unicode and address.isprintable():
        return address
    return _utf8_addr_xtext(address)


def _has_utf8_address(recipient: Recipient) -> bool:
    """Whether a reported address (final or original recipient) is outside ASCII."""
    if not recipient.address.isascii():
        return True
    addr_type, _, value = (recipient.orcpt or "").partition(";")
    if addr_type.lower() != "utf-8":
        return False
    address = _utf8_address(value)
    return address is not None and not address.isascii()


def _has_utf8_headers(headers: bytes) -> bool:
    """Whether a header block holds UTF-8 (RFC 6532); other 8-bit octets are not UTF-8 headers."""
    if headers.isascii():
        return False
    try:
        headers.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _utf8_addr_xtext(address: str) -> str:
    """``address`` in RFC 6533's utf-8-addr-xtext: QCHAR as it is, anything else ``\\x{HEX}``."""
    units = []
    for char in address:
        c = "\ufffd" if char < " " or unicodedata.category(char) == "Cs" else char
        units.append(c if "!" <= c <= "~" and c not in "\\+=" else f"\\x{{{ord(c):02X}}}")
    return "".join(units)


def _envelope_id(envid: str) -> str:
    """The ENVID as ``Original-Envelope-Id`` carries it: xtext-decoded (RFC 3461 section 6.3 (a)).

    RFC 3464 section 2.2.1 wants its case and spelling kept, so it is decoded as far as it is
    xtext and nothing more: a ``+`` not followed by two hex digits, or a raw character that
    xtext does not allow, stays as it is. What decodes to a control (``+0D+0A``) or to anything
    but ASCII is cleaned like other network text, so it can neither end the line nor leave 7 bits.
    """
    return _seven_bit(_HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), envid))


def _original_recipient(orcpt: str, *, unicode: bool) -> str | None:
    """The ORCPT as ``Original-Recipient`` carries it (RFC 3464 section 2.3.1), or None.

    ORCPT is ``addr-type ";" xtext`` (RFC 3461 section 4.2), and the field is the same with the
    xtext decoded (section 6.3 (d)). The decoded address must be printable US-ASCII (section
    4.2), except for the ``utf-8`` type of RFC 6533, which carries ``\\x{HEX}`` escapes (or, sent
    with SMTPUTF8, raw UTF-8) and is written back as :func:`_utf8_form` says. Anything
    else is malformed and gives None: a garbled Original-Recipient misleads more than none.
    """
    addr_type, separator, value = orcpt.partition(";")
    if not separator or not _ADDRESS_TYPE.fullmatch(addr_type):
        return None
    if addr_type.lower() == "utf-8":
        address = _utf8_address(value)
        return None if address is None else f"utf-8; {_utf8_form(address, unicode=unicode)}"
    if not _XTEXT.fullmatch(value):
        return None
    address = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)
    if not address.strip() or not all(" " <= c <= "~" for c in address):
        return None
    return f"{addr_type}; {_clean(address)}"


def _utf8_address(value: str) -> str | None:
    """The address a utf-8-addr-xtext or -unitext stands for (RFC 6533 section 3), or None."""
    if not _UTF8_ADDR.fullmatch(value):
        return None
    try:
        address = _EMBEDDED.sub(lambda m: chr(int(m.group(1), 16)), value)
    except ValueError:  # beyond U+10FFFF
        return None
    # No address holds a control, a bidi override or a surrogate; one that claims to is garbled.
    return None if any(unicodedata.category(c) in _UNSAFE for c in address) else address


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _pieces(word: str) -> list[str]:
    """A word cut into pieces of at most _CUT octets, never inside a ``\\x{HEX}`` escape."""
    if _octets(word) <= _CUT:
        return [word]
    pieces, piece = [], ""
    for unit in _UNIT.findall(word):
        if piece and _octets(piece) + _octets(unit) > _CUT:
            pieces.append(piece)
            piece = ""
        piece += unit
    pieces.append(piece)
    return pieces


def _wrap(text: str, *, first: str, indent: str) -> list[str]:
    """Cleaned ``text`` filled into lines starting ``first``, then ``indent``.

    Lines break at spaces, aiming for 78 octets; a word that fits no line is cut at 900 octets.
    With ``indent=" "`` this is RFC 5322 folding (section 2.2.3): unfolding gives the text back
    (a cut word gains one space, the price of the 998-octet limit).
    """
    plain = _wrap_plain(text, first=first, indent=indent) if _plain(text, first, indent) else None
    if plain is not None:
        return plain
    lines: list[str] = []
    line = first
    for piece in (p for word in text.split(" ") for p in _pieces(word)):
        if line in (first, indent):
            line += piece
        elif _octets(line) + 1 + _octets(piece) <= _WIDTH:
            line += " " + piece
        else:
            lines.append(line)
            line = indent + piece
    lines.append(line.rstrip())
    return lines


def _plain(text: str, first: str, indent: str) -> bool:
    """Whether ``text`` is ASCII words between single spaces, and the prefixes ASCII: as
    :func:`_clean` leaves ASCII text, and what :func:`_wrap_plain` fills alike."""
    return (
        text.isascii()
        and first.isascii()
        and indent.isascii()
        and text[:1] not in ("", " ")
        and not text.endswith(" ")
        and "  " not in text
    )


def _wrap_plain(text: str, *, first: str, indent: str) -> list[str] | None:
    """:func:`_wrap` for :func:`_plain` text, a line at a time instead of a word at a time;
    ``None`` when a word is longer than _CUT (to be cut, as :func:`_wrap` does).

    Greedy filling takes words while the line stays within _WIDTH; their lengths only add up,
    so a line ends at the last space that keeps it within _WIDTH, or after its first word when
    that word alone is longer. One octet a character: the text and the prefixes are ASCII.
    """
    lines = []
    end, prefix, start = len(text), first, 0
    while True:
        stop = text.find(" ", start)
        if stop < 0:
            stop = end
        if stop - start > _CUT:
            return None
        limit = start + _WIDTH - len(prefix)  # the line may reach text[limit], exclusive
        if stop < limit:
            stop = end if limit >= end else text.rfind(" ", stop, limit + 1)
        lines.append(prefix + text[start:stop])
        if stop >= end:
            lines[-1] = lines[-1].rstrip()
            return lines
        start, prefix = stop + 1, indent


# The paragraphs IIS wrote above the recipient list. Failed and delayed are quoted from real IIS
# DSNs (notes/iis-smtp.md section 6); delivered and relayed are IIS 6 / Exchange 2003's sentences
# as remembered from such messages, not checked against a captured one.
_INTRODUCTION: dict[DsnAction, tuple[str, ...]] = {
    DsnAction.FAILED: ("Delivery to the following recipients failed.",),
    DsnAction.DELAYED: (
        "THIS IS A WARNING MESSAGE ONLY.",
        "YOU DO NOT NEED TO RESEND YOUR MESSAGE.",
        "Delivery to the following recipients has been delayed.",
    ),
    DsnAction.DELIVERED: ("Delivery to the following recipients succeeded.",),
    DsnAction.RELAYED: (
        "Your message has been successfully relayed to the following recipients, but the "
        "requested delivery status notifications may not be generated by the destination.",
    ),
}


def _human_text(
    *,
    recipients: Sequence[Recipient],
    action: DsnAction,
    will_retry_until: datetime | None,
) -> str:
    """Part 1: what IIS wrote (notes/iis-smtp.md section 6), plus each recipient's reason."""
    lines = ["This is an automatically generated Delivery Status Notification.", ""]
    for paragraph in _INTRODUCTION[action]:
        lines += [*_wrap(paragraph, first="", indent=""), ""]
    for recipient in recipients:
        lines += _wrap(_clean(recipient.address), first=_INDENT, indent=_INDENT)
        reply = recipient.reply
        if reply is None:
            reason = "No reply was recorded."
        elif reply.host:
            reason = f"Remote host {reply.host} said: {_quoted(reply)}"
        elif action in _SUCCESS:
            reason = f"Result: {_quoted(reply)}"
        else:
            reason = f"Reason: {_quoted(reply)}"
        lines += _wrap(_clean(reason), first=_REASON_INDENT, indent=_REASON_INDENT)
        lines.append("")
    if action is DsnAction.DELAYED:
        until = "" if will_retry_until is None else f" until {_date(will_retry_until)}"
        lines += _wrap(f"Delivery will be retried{until}.", first="", indent="")
    else:
        lines.pop()  # the part ends after the last recipient, as IIS's does
    return "".join(line + _CRLF for line in lines)


def _delivery_status(
    *,
    envelope: Envelope,
    recipients: Sequence[Recipient],
    action: DsnAction,
    reporting_mta: str,
    now: datetime,
    will_retry_until: datetime | None,
    unicode: bool,
) -> str:
    """Part 2: the per-message fields, then one block per recipient (RFC 3464 section 2.1).

    ``unicode``: for a message/global-delivery-status part, whose addresses may be UTF-8 (RFC
    6533 section 3); every other field stays 7-bit either way.
    """

    def field(name: str, value: str) -> list[str]:
        return _wrap(value, first=f"{name}: ", indent=" ")

    per_message = []
    envid = _envelope_id(envelope.envid or "")
    if envid:
        # RFC 3461 section 6.3 (a): the sender's ENVID comes back, first (RFC 3464 section 2.2).
        per_message += field("Original-Envelope-Id", envid)
    per_message += [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Arrival-Date: {_date(envelope.arrival)}",
        # An extension field (RFC 3464 section 2.1.1 and 3), as Postfix's X-Postfix-Queue-ID:
        # it names Queue/ID.RTR, where the operator reads the whole story.
        *field("X-Spoolmail-Queue-Id", _seven_bit(envelope.id)),
    ]
    blocks = [per_message]
    fallback = _FALLBACK_STATUS[action]
    for recipient in recipients:
        reply = recipient.reply
        # RFC 3464 section 2.3.4: Status is the RFC 3463 code of the reply when the reply is of
        # the action's kind (a success for delivered or relayed, a 4xx or 5xx for failed or
        # delayed) and its code's class agrees; otherwise (no reply, a reply of the other kind, a
        # malformed code) it says nothing about this outcome, and the generic code stands in.
        status = fallback
        if reply is not None and (reply.severity is Severity.SUCCESS) == (action in _SUCCESS):
            code = reply.status
            if _STATUS.fullmatch(code) and (code[0] == "2") == (action in _SUCCESS):
                status = code
        block = []
        original_recipient = (
            None
            if recipient.orcpt is None
            else _original_recipient(recipient.orcpt, unicode=unicode)
        )
        if original_recipient is not None:
            # RFC 3461 section 6.3 (d), RFC 3464 section 2.3.1: before Final-Recipient.
            block += field("Original-Recipient", original_recipient)
        block += [
            *field("Final-Recipient", _typed_address(recipient.address, unicode=unicode)),
            f"Action: {action.value}",
            f"Status: {status}",
        ]
        remote = None if reply is None else reply.remote
        if remote is not None and remote.host:
            # Section 2.3.5 and 2.3.6: both name what a remote MTA said. A verdict spoolmail
            # reached itself (a routing failure) has no remote MTA and no SMTP code; an expiry
            # reports the last reply it rests on, as Postfix and sendmail do.
            block += field("Remote-MTA", f"dns; {_seven_bit(remote.host)}")
            block += field("Diagnostic-Code", f"smtp; {_seven_bit(_quoted(remote))}")
        attempted = recipient.updated or envelope.last_attempt or now
        block.append(f"Last-Attempt-Date: {_date(attempted)}")
        if will_retry_until is not None:
            block.append(f"Will-Retry-Until: {_date(will_retry_until)}")
        blocks.append(block)
    # delivery-status-content = per-message-fields 1*( CRLF per-recipient-fields ), each field
    # ending in CRLF: blocks are separated by one empty line.
    return _CRLF.join("".join(line + _CRLF for line in block) for block in blocks)


def _header_block(original: bytes) -> bytes:
    """The original's header section: the lines before the first empty one (RFC 5322 2.1)."""
    if original.startswith((b"\r\n", b"\n")):
        return b""
    blank = _BLANK_LINE.search(original)
    return original if blank is None else original[: blank.end(1)]


def _mail_safe(headers: bytes) -> bytes:
    """The header block as 7bit or 8bit data that SMTP can carry without BINARYMIME (RFC 3030).

    A stored message that did not come through Pickup is kept as its writer made it, and its
    header block may hold a bare CR or LF, a NUL or a line over 998 octets; returned as it is,
    it would make the whole DSN ``binary``, which our transport cannot send. So, only then,
    every line end becomes CRLF (as the transport would send it, RFC 5321 section 2.3.8), a NUL
    a space, and a longer line is folded (a CRLF and a space) every _CUT octets, never inside a
    UTF-8 sequence. A clean header block is returned as it is, byte for byte.
    """
    if _transfer_encoding(headers) != "binary":
        return headers
    out = []
    for line in _LINE_END.split(headers.replace(b"\0", b" ")):
        rest = line
        while len(rest) > _CUT:
            cut = _CUT
            # Back to the start of a UTF-8 sequence (at most 4 octets; other bytes cut anywhere).
            while cut > _CUT - 3 and 0x80 <= rest[cut] < 0xC0:
                cut -= 1
            out.append(rest[:cut])
            rest = b" " + rest[cut:]
        out.append(rest)
    return b"\r\n".join(out)


def _message_id(headers: bytes) -> str | None:
    """The original's Message-ID when it has one that is safe to repeat in a header."""
    match = _MESSAGE_ID_FIELD.search(headers)
    if match is None:
        return None
    value = match.group(1).decode("latin-1").replace("\r", "").replace("\n", "").strip()
    return value if _MSG_ID.match(value) else None


def _transfer_encoding(data: bytes) -> str:
    """The Content-Transfer-Encoding that describes ``data`` truthfully (RFC 2045 section 2.7-2.9).

    7bit and 8bit are CRLF lines of at most 998 octets without NUL, 8bit also with octets over
    127; anything else (a bare CR or LF, a NUL, a longer line) is binary.
    """
    # Every CR and every LF is half of a CRLF: counted, not copied (a returned message may be
    # big, and a DSN's parts quote thousands of replies).
    crlf = data.count(b"\r\n")
    if b"\0" in data or data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        return "binary"
    if has_long_line(data, 998):
        return "binary"
    return "7bit" if data.isascii() else "8bit"


def _boundary(dsn_id: str, bodies: Sequence[bytes]) -> str:
    """The MIME boundary: derived from the DSN's id, and absent from every body (RFC 2046 5.1.1).

    A boundary has at most 70 characters, so a long id is replaced by its hash. When a body
    happens to contain it (a returned DSN, or a sender who guessed the id), a hash of the bodies
    is appended: still deterministic, and no text can contain a hash of itself.
    """
    stem = dsn_id if len(dsn_id) <= 40 else hashlib.sha256(dsn_id.encode("ascii")).hexdigest()[:40]
    boundary = _BOUNDARY_PREFIX + stem
    digest = hashlib.sha256()
    while any(f"--{boundary}".encode("ascii") in body for body in bodies):
        for body in bodies:
            digest.update(body)
        boundary = f"{_BOUNDARY_PREFIX}{stem}_{digest.hexdigest()[:16]}"
    return boundary
