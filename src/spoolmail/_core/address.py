"""Mailbox addresses: reading them as mail writers wrote them, checking them, writing them as paths.

This module turns one envelope or header value (``a@b``, ``<a@b>``, ``"Name, Jr." <a@b>``, an RFC
2047-encoded display name, IIS's bare ``Sender``) into the canonical address spoolmail keeps in
envelopes, ``local@domain`` with the domain lower-cased, and writes an address back as an SMTP
path (``<a@b>``, ``<>``). It reads only the ``str`` it is given and returns strings; a value that
cannot be an address is a :class:`~spoolmail.exceptions.MessageError` whose ``status`` is RFC
3463's 5.1.7 (bad sender syntax) or 5.1.3 (bad destination syntax). Display names are skipped,
never decoded or kept. It never touches files, the network or a clock, and does no DNS: a domain
here is syntax only.

The splitter is hand-written rather than ``email.utils.getaddresses`` because that function's
behaviour on malformed input changed inside Python 3.11 patch releases (the ``strict`` mode added
for CVE-2023-27043), and a spool must read the same file the same way on every interpreter. It is
one linear pass over the characters, so no input can make it backtrack.
"""

from __future__ import annotations

import enum
import re

from spoolmail.exceptions import MessageError

__all__ = [
    "AddressRole",
    "format_path",
    "parse_address_list",
    "parse_domain",
    "parse_mailbox",
]

# RFC 5322 section 3.2.3 atext, the ASCII characters a dot-atom local part may use besides letters
# and digits. RFC 6531 section 3.3 adds every non-ASCII character (SMTPUTF8).
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")
# RFC 5321 section 4.1.2 Let-dig / Ldh-str: what an ASCII domain label is made of.
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
# IDNA (RFC 3490 section 3.1) treats these as label separators; people paste them from CJK text.
_IDEOGRAPHIC_DOTS = {0x3002: ".", 0xFF0E: ".", 0xFF61: "."}
# The address nearly every writer writes: an ASCII dot-atom local part and a domain of LDH labels,
# bare or in angle brackets, white space around. Such a value is read by this one match (and the
# lengths checked); anything else, and anything a length check refuses, goes through the scanner,
# which reads a plain one the same way (a hypothesis test holds the two together).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN = re.compile(
    rf"[ \t]*(?:<({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    rf"|({_ATOM}(?:\.{_ATOM})*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*))[ \t]*"
)


def _plain(text: str) -> str | None:
    """``text`` as ``local@domain`` if it is one plain address (see :data:`_PLAIN`), else None."""
    found = _PLAIN.fullmatch(text)
    if found is None:
        return None
    local, domain = found.group(1, 2) if found.group(1) is not None else found.group(3, 4)
    if len(local) > 64 or len(domain) > 253 or len(local) + len(domain) > 253:
        return None
    labels = domain.split(".")
    for label in labels:
        if len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return None
    if labels[-1].isdigit():
        return None
    return f"{local}@{domain.lower()}"


class AddressRole(enum.Enum):
    """Which side of the envelope a value is for: it decides if ``<>`` is allowed, and the status.

    A sender may be the null reverse-path ``<>`` (RFC 5321 section 4.5.5, the sender of a DSN) and a
    bad one is 5.1.7; a recipient may not be null and a bad one is 5.1.3 (RFC 3463).
    """

    SENDER = "sender"
    RECIPIENT = "recipient"

    @property
    def status(self) -> str:
        return "5.1.7" if self is AddressRole.SENDER else "5.1.3"


class _NotAnAddress(Exception):
    """Why a value is not an address; the public functions turn it into a MessageError."""


def format_path(address: str) -> str:
    """The SMTP path for an address: ``<a@b>``, or ``<>`` for the null reverse-path ``""``."""
    return f"<{address}>"


def parse_domain(text: str) -> str:
    """Check a domain or address literal and return it canonical (lower-case, literals normalised).

    Accepts ``example.com``, IDN in Unicode (``bücher.example``) or ACE form, ``[192.0.2.1]`` and
    ``[IPv6:2001:db8::1]``. Raises :class:`MessageError` (5.1.3) naming what is wrong.
    """
    try:
        return _check_domain(text)
    except _NotAnAddress as exc:
        raise MessageError(f"{_shown(text)} is not a domain: {exc}", status="5.1.3") from None


def parse_mailbox(
    text: str,
    *,
    default_domain: str | None,
    role: AddressRole = AddressRole.RECIPIENT,
) -> str:
    """Read exactly one address as writers produce it and return it as ``local@domain``.

    ``a@b``, ``<a@b>``, ``Name <a@b>``, ``"Name, Jr." <a@b>`` and comments are accepted; a bare
    local part (``Sender``, as KB Q221384's ``x-sender: Sender``) is completed with
    ``default_domain`` the way IIS stamped addresses that lack a domain (``default_domain=None``
    refuses it instead). With ``role=AddressRole.SENDER``, ``<>`` is the null reverse-path and
    returns ``""``.
    """
    try:
        plain = _plain(text)
    except TypeError:  # bytes, None, a number: a program's mistake, said plainly
        raise TypeError(
            f"an address is a str, not {type(text).__name__}: {repr(text)[:100]}"
        ) from None
    if plain is not None:
        return plain
    try:
        return _parse_one(
            text, default_domain=default_domain, allow_null=role is AddressRole.SENDER
        )
    except _NotAnAddress as exc:
        raise MessageError(f"{_shown(text)} is not an address: {exc}", status=role.status) from None


def parse_address_list(
    text: str,
    *,
    default_domain: str | None,
    role: AddressRole = AddressRole.RECIPIENT,
) -> list[str]:
    """Read a header or ``x-receiver`` value holding any number of addresses and groups.

    Addresses are separated by ``,`` (RFC 5322 section 3.4) or ``;`` (as Outlook and CDO write
    lists); a group ``name: a@b, c@d;`` yields its members and ``undisclosed-recipients:;`` none.
    An empty value yields an empty list. Duplicates are kept; callers decide about them.
    A bare local part is completed with ``default_domain`` only when it is the whole value: in a
    list it is far more often the front half of ``Name, Jr. <a@b>`` than a local mailbox.
    """
    plain = _plain(text)
    if plain is not None:
        return [plain]
    try:
        items = _split_list(text)
        # Complete a bare local part only when it is the whole value (see above).
        completion = default_domain if len(items) == 1 else None
        return [_parse_item(item, default_domain=completion, allow_null=False) for item in items]
    except _NotAnAddress as exc:
        raise MessageError(
            f"{_shown(text)} is not an address list: {exc}", status=role.status
        ) from None


def _shown(text: str) -> str:
    """The value as a reason quotes it: a header may be megabytes long, a reason is one line."""
    text = text.strip(" \t")
    if len(text) > 100:
        return repr(text[:100]) + "..."
    return repr(text)


def _parse_one(text: str, *, default_domain: str | None, allow_null: bool) -> str:
    items = _split_list(text)
    if not items:
        raise _NotAnAddress("it is empty")
    if len(items) > 1:
        raise _NotAnAddress(
            f"it holds {len(items)} addresses where one is expected "
            "(an unquoted comma in a display name?)"
        )
    return _parse_item(items[0], default_domain=default_domain, allow_null=allow_null)


class _Item:
    """One mailbox of a list as the splitter saw it: the text outside and inside ``<...>``."""

    __slots__ = ("angle", "outside")

    def __init__(self) -> None:
        self.outside: list[str] = []
        self.angle: list[str] | None = None


def _split_list(text: str) -> list[_Item]:  # noqa: PLR0912, PLR0915 (one scanner, one loop)
    """Split a value into mailboxes in one pass: quotes, comments, literals and groups respected."""
    items: list[_Item] = []
    current = _Item()
    seen_anything = False  # does `current` hold more than white space?
    in_quote = False
    comment_depth = 0
    in_literal = False
    in_angle = False
    angle_closed = False
    in_group = False
    escaped = False

    def finish() -> None:
        nonlocal current, seen_anything, angle_closed
        if seen_anything:
            items.append(current)
        current = _Item()
        seen_anything = False
        angle_closed = False

    for char in text:
        # Controls never belong in an address or display name; CR/LF here means a header was
        # injected or badly unfolded (RFC 5322 section 2.2.3). TAB is folding white space.
        if (char < " " and char != "\t") or "\x7f" <= char <= "\x9f":
            raise _NotAnAddress(f"it contains the control character {char!r}")
        target = current.angle if in_angle and current.angle is not None else current.outside
        if escaped:
            escaped = False
            if not comment_depth:
                target.append(char)
            continue
        if comment_depth:
            # RFC 5322 section 3.2.2: comments nest and may hold quoted-pairs; they mean nothing.
            if char == "\\":
                escaped = True
            elif char == "(":
                comment_depth += 1
            elif char == ")":
                comment_depth -= 1
                if not comment_depth:
                    target.append(" ")
            continue
        if in_quote:
            target.append(char)
            if char == "\\":
                escaped = True
            elif char == '"':
                in_quote = False
            continue
        if in_literal:
            target.append(char)
            if char == "]":
                in_literal = False
            elif char == "[":
                raise _NotAnAddress("it has '[' inside an address literal")
            continue
        if char == "(":
            comment_depth = 1
            continue
        if char == '"':
            in_quote = True
        elif char == "[":
            in_literal = True
        elif in_angle:
            if char == ">":
                in_angle = False
                angle_closed = True
                continue
            if char == "<":
                raise _NotAnAddress("it has '<' inside '<...>'")
        elif char == "<":
            if current.angle is not None:
                raise _NotAnAddress("a mailbox has two '<...>' parts")
            current.angle = []
            in_angle = True
            seen_anything = True
            continue
        elif char == ">":
            raise _NotAnAddress("it has a '>' without '<'")
        elif char == ",":
            finish()
            continue
        elif char == ";":
            # Ends a group (RFC 5322 section 3.4); outside one, Outlook's list separator.
            in_group = False
            finish()
            continue
        elif char == ":":
            if in_group or current.angle is not None:
                raise _NotAnAddress("it has a ':' that starts no group")
            # A group: what came before the colon is its display name, not a mailbox.
            in_group = True
            current = _Item()
            seen_anything = False
            continue
        if angle_closed and char not in " \t":
            raise _NotAnAddress("it has text after '>'")
        if char not in " \t":
            seen_anything = True
        target.append(char)
    if in_quote:
        raise _NotAnAddress("it has a '\"' without its closing '\"'")
    if comment_depth:
        raise _NotAnAddress("it has a '(' without its closing ')'")
    if in_literal:
        raise _NotAnAddress("it has a '[' without its closing ']'")
    if in_angle:
        raise _NotAnAddress("it has a '<' without its closing '>'")
    if escaped:
        raise _NotAnAddress("it ends with a lone '\\'")
    # A group without its closing ';' is accepted: `undisclosed-recipients:` is common and harmless.
    finish()
    return items


def _parse_item(item: _Item, *, default_domain: str | None, allow_null: bool) -> str:
    if item.angle is None:
        spec = "".join(item.outside).strip(" \t")
    else:
        spec = "".join(item.angle).strip(" \t")
        if not spec:
            if allow_null:
                return ""  # RFC 5321 section 4.5.5: the null reverse-path of a DSN
            raise _NotAnAddress("the null path <> is not an address here (only a sender may be <>)")
        if spec.startswith("@"):
            # RFC 5321 section 4.1.2 / appendix C: a source route `@a,@b:` is accepted and ignored.
            route, colon, spec = spec.partition(":")
            if not colon:
                raise _NotAnAddress(f"the source route {route!r} has no ':'")
    return _parse_addr_spec(spec, default_domain=default_domain)


def _parse_addr_spec(spec: str, *, default_domain: str | None) -> str:
    if spec.startswith('"'):
        local, rest = _split_quoted_local(spec)
        at, domain = rest[:1], rest[1:]
        if rest and at != "@":
            raise _NotAnAddress("it has text after the quoted local part")
        _check_quoted(local)
    else:
        local, at, domain = spec.partition("@")
        _check_dot_atom(local)
    if "@" in domain:
        raise _NotAnAddress("it has more than one '@'")
    if not at:
        if default_domain is None:
            raise _NotAnAddress(f"{spec!r} has no domain")
        domain = default_domain
    domain = _check_domain(domain)
    if len(local.encode("utf-8")) > 64:
        raise _NotAnAddress("its local part is longer than 64 octets (RFC 5321 section 4.5.3.1.1)")
    address = f"{local}@{domain}"
    if len(address.encode("utf-8")) > 254:
        # RFC 5321 section 4.5.3.1.3: a path is at most 256 octets with its angle brackets.
        raise _NotAnAddress("it is longer than 254 octets (RFC 5321 section 4.5.3.1.3)")
    return address


def _split_quoted_local(spec: str) -> tuple[str, str]:
    """Split ``"quoted local"@rest`` into the quoted local part (with quotes) and ``@rest``."""
    escaped = False
    for index in range(1, len(spec)):
        char = spec[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            if index == 1:
                raise _NotAnAddress("its local part is empty")
            return spec[: index + 1], spec[index + 1 :]
    raise _NotAnAddress("its quoted local part has no closing '\"'")


def _check_dot_atom(local: str) -> None:
    """RFC 5321 section 4.1.2 Dot-string, widened to UTF-8 by RFC 6531 section 3.3."""
    if not local:
        raise _NotAnAddress("its local part is empty")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise _NotAnAddress(f"its local part {local!r} has a leading, trailing or double '.'")
    for char in local:
        if char.isascii():
            if char.isalnum() or char in _ATEXT_SPECIALS or char == ".":
                continue
            if char in " \t":
                raise _NotAnAddress("it contains white space (missing '<...>' around the address?)")
            raise _NotAnAddress(f"its local part contains {char!r}")
        if not char.isprintable():
            raise _NotAnAddress(f"its local part contains the invisible character {char!r}")


def _check_quoted(local: str) -> None:
    """RFC 5321 section 4.1.2 Quoted-string: what is between the quotes is printable (ASCII,
    or UTF-8 by RFC 6531); a control character or a lone surrogate (bytes that were not UTF-8,
    read with surrogateescape) is no address, not an error of the encoder later."""
    for char in local[1:-1]:
        if char.isascii() and (char.isprintable() or char == "\t"):
            continue
        if not char.isascii() and char.isprintable():
            continue
        raise _NotAnAddress(f"its quoted local part contains the invisible character {char!r}")


def _check_domain(text: str) -> str:
    if not text:
        raise _NotAnAddress("its domain is empty")
    if text.startswith("["):
        return _check_literal(text)
    domain = text.translate(_IDEOGRAPHIC_DOTS)
    if domain.endswith("."):
        raise _NotAnAddress(f"the domain {text!r} ends with '.'")
    labels = domain.split(".")
    length = len(labels) - 1  # the dots
    for label in labels:
        length += _check_label(label, domain=text)
    if length > 253:
        raise _NotAnAddress(f"the domain is {length} octets long; the limit is 253 (RFC 1035)")
    if labels[-1].isascii() and labels[-1].isdigit():
        raise _NotAnAddress(f"the domain {text!r} is an IP address; write it as [{text}]")
    return domain.lower()


def _check_label(label: str, *, domain: str) -> int:
    """Check one label and return its length on the wire (its A-label length if it is Unicode)."""
    if not label:
        raise _NotAnAddress(f"the domain {domain!r} has an empty label")
    if label.startswith("-") or label.endswith("-"):
        raise _NotAnAddress(f"the domain label {label!r} starts or ends with '-'")
    if label.isascii():
        bad = [char for char in label if char not in _LDH]
        if bad:
            raise _NotAnAddress(f"the domain {domain!r} contains {bad[0]!r}")
        length = len(label)
    else:
        for char in label:
            if (char.isascii() and char not in _LDH) or not char.isprintable():
                raise _NotAnAddress(f"the domain {domain!r} contains {char!r}")
        # RFC 5890 section 2.3.2.1: the A-label ("xn--" + Punycode) is what the 63 limit counts.
        length = 4 + len(label.lower().encode("punycode"))
    if length > 63:
        raise _NotAnAddress(f"the domain label {label!r} is longer than 63 octets (RFC 1035)")
    return length


def _check_literal(text: str) -> str:
    """RFC 5321 section 4.1.3 address literals: ``[192.0.2.1]`` and ``[IPv6:2001:db8::1]``."""
    if not text.endswith("]"):
        raise _NotAnAddress(f"the address literal {text!r} does not end with ']'")
    inner = text[1:-1]
    # Imported here: few addresses are literals, and spoolmail-sendmail, started once a
    # message, would pay for ipaddress every time (close to a millisecond).
    import ipaddress  # noqa: PLC0415

    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:])}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise _NotAnAddress(f"{text!r} is not an IPv4 or IPv6 address literal") from None
