"""Every reply the listener sends carries an RFC 3463 enhanced status code (RFC 2034).

The listener advertises ENHANCEDSTATUSCODES, so each reply to a command must start with one
(RFC 2034 section 3). Its own replies are written with one; aiosmtpd's built-in replies
(``503 Error: send HELO first``, ``552 Error: Too much mail data``) are not, and
:func:`enhance` gives them theirs on the way out. The greeting, EHLO's and HELO's ``250``
lines, ``334`` challenges and ``354`` keep none, as RFC 2034 says. Pure: strings in and out.
"""

from __future__ import annotations

import re

__all__ = ["enhance"]

_HAS_CODE = re.compile(r"^[245]\d\d [245]\.\d{1,3}\.\d{1,3}(?: |$)")
_PLAIN = re.compile(r"^([45]\d\d) (.*)$", re.DOTALL)

# aiosmtpd's success replies that are answers to commands (not greetings or EHLO lines).
_SUCCESS = {
    "250 OK": "250 2.0.0 Ok",
    "221 Bye": "221 2.0.0 Bye",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
}
# aiosmtpd's refusals whose class the reply code alone would get wrong.
_SPECIFIC = {
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "500 Line too long (see RFC5321 4.5.3.1.6)": (
        "500 5.5.2 Line longer than 998 octets (RFC 5321 4.5.3.1.6)"
    ),
    "454 TLS not available": "454 4.7.0 TLS not available",
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
}
# RFC 3463 codes by reply code, for the rest: syntax (5.5.x), security (x.7.0), system (x.3.0).
_BY_CODE = {
    "421": "4.7.0",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}


def enhance(reply: str) -> str:
    """``reply`` with an enhanced status code if it is a final reply that lacks one."""
    if _HAS_CODE.match(reply):
        return reply
    if reply in _SUCCESS:
        return _SUCCESS[reply]
    if reply in _SPECIFIC:
        return _SPECIFIC[reply]
    match = _PLAIN.match(reply)
    if match is None:
        return reply  # 2xx and 3xx lines: greeting, EHLO, HELO, 334, 354
    code, text = match.groups()
    enhanced = _BY_CODE.get(code, f"{code[0]}.0.0")
    return f"{code} {enhanced} {text}"
