"""Replies: the value every delivery outcome is expressed in.

An SMTP server's answer to one recipient, or spoolmail's own verdict phrased the same way (a local
Drop write, a routing failure, an expired message), is a :class:`Reply`: code, enhanced status code
(RFC 3463), text and the host that gave it. 2xx delivers, 4xx defers, 5xx fails; the retry logic,
the transcript and the DSN builder all read the same value. A verdict spoolmail reaches after a
remote server's answers (the queue lifetime ran out while a host kept saying 451) keeps the last of
them as its ``cause``, so that a DSN can still name the remote host and quote what it said. Pure:
no I/O.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import attrs

__all__ = ["KEPT_TEXT", "Reply", "Severity", "kept"]

_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")

#: The most of a server's reply text kept for each recipient (:func:`kept`): the envelope holds
#: one reply a recipient and the mail log writes one a recipient, while a server may answer in
#: up to 64 KiB, the same reply for all of a message's thousand recipients. A DSN quotes no
#: more than this either; the transcript keeps the whole reply.
KEPT_TEXT = 2048


class Severity(enum.Enum):
    """What a reply means for the recipient it answers."""

    SUCCESS = "success"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"

    # Members are singletons: hashing by identity keeps each table lookup a C call (Enum's own
    # __hash__ is Python code, paid on every transition).
    __hash__ = object.__hash__


def _encodable(text: str) -> str:
    """A reply's text as UTF-8 can hold it: a lone surrogate (a transport's bytes decoded with
    ``surrogateescape``) becomes "?", or every envelope, transcript and report that quotes the
    reply fails to be written, and the message is tried again for ever."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _check_code(_instance: object, _attribute: object, value: int) -> None:
    if not 200 <= value <= 599:
        raise ValueError(f"an SMTP reply code is 200-599, not {value!r}")


def _check_enhanced(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None and not _ENHANCED.fullmatch(value):
        raise ValueError(f"an enhanced status code looks like 5.1.1 (RFC 3463), not {value!r}")


@attrs.frozen
class Reply:
    """One answer about one recipient: ``Reply(550, "5.1.1", "no such user", host="mx.example")``.

    ``host`` is the remote MTA that answered (``None`` when spoolmail itself decided). ``cause``
    is, for a verdict spoolmail reached itself (``host`` ``None``), the remote reply it rests on:
    an expiry's last 4xx, which a DSN reports as ``Remote-MTA`` and ``Diagnostic-Code``
    (RFC 3464 section 2.3.5, 2.3.6).
    """

    code: int = attrs.field(validator=_check_code)
    enhanced: str | None = attrs.field(validator=_check_enhanced)
    text: str = attrs.field(converter=_encodable)
    host: str | None = None
    cause: Reply | None = attrs.field(default=None, kw_only=True)

    @property
    def severity(self) -> Severity:
        """What the reply means: success (2xx), temporary (4xx) or permanent (5xx)."""
        if self.code < 400:
            return Severity.SUCCESS
        if self.code < 500:
            return Severity.TEMPORARY
        return Severity.PERMANENT

    @property
    def status(self) -> str:
        """The RFC 3463 status: the enhanced code, or one derived from the reply code's class."""
        if self.enhanced is not None:
            return self.enhanced
        return {Severity.SUCCESS: "2.0.0", Severity.TEMPORARY: "4.0.0"}.get(self.severity, "5.0.0")

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        if self.text:
            parts.append(self.text)
        return " ".join(parts)

    @property
    def remote(self) -> Reply | None:
        """The reply a remote MTA gave, if any: this one, or the one it rests on."""
        if self.host:
            return self
        if self.cause is not None and self.cause.host:
            return self.cause
        return None

    def to_json(self) -> dict[str, Any]:
        """The reply as JSON values, as envelopes and the mail log keep it."""
        data: dict[str, Any] = {
            "code": self.code,
            "enhanced": self.enhanced,
            "text": self.text,
            "host": self.host,
        }
        if self.cause is not None:
            # Only when there is one: files written before causes existed read the same.
            data["cause"] = self.cause.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reply:
        """The reply :meth:`to_json` gave."""
        raw_cause = data.get("cause")
        return cls(
            code=int(data["code"]),
            enhanced=data.get("enhanced"),
            text=str(data.get("text", "")),
            host=data.get("host"),
            # One level: a cause has no cause of its own, so a damaged file cannot recurse.
            cause=None if raw_cause is None else cls.from_json({**raw_cause, "cause": None}),
        )

    @classmethod
    def parse(cls, code: int, text: str, *, host: str | None = None) -> Reply:
        """Build a reply from a server's code and text, splitting off a leading enhanced code."""
        enhanced: str | None = None
        head, _, rest = text.partition(" ")
        match = _ENHANCED.fullmatch(head)
        if match and match.group(1) == str(code)[0]:
            enhanced, text = head, rest
        return cls(code, enhanced, text.strip(), host=host)


def kept(reply: Reply) -> Reply:
    """``reply`` with its text cut to :data:`KEPT_TEXT` characters, the cut marked ``[...]``."""
    if len(reply.text) <= KEPT_TEXT:
        return reply
    return attrs.evolve(reply, text=reply.text[:KEPT_TEXT] + " [...]")
