"""AUTH for the listener from a file of scrypt hashes: ``user:scrypt$N$r$p$salt$hash`` a line.

What an administrator expects of a password file (htpasswd, dovecot's passwd-file): one user a
line, ``#`` comments, never a password in the clear. :func:`hash_password` makes a line's hash
(``spoolmail listen-passwd USER`` prints the whole line); :class:`PasswordFile` reads the file
once, when made, so that a service that drops root afterwards may keep the file root's, and
checks a user name and password against it in constant time. scrypt (RFC 7914) with N=2**14,
r=8, p=1 costs a client about 16 MiB and tens of milliseconds per guess; the listener asks from
a worker thread, never on its event loop. Reads one file; logs no password, ever.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from spoolmail._store.given import read_given
from spoolmail.exceptions import ConfigurationError

__all__ = ["PasswordFile", "hash_password"]

_SCHEME = "scrypt"
#: The largest password file read: a line a user of about 120 bytes, some 130,000 users.
MOST_BYTES = 16 * 1024 * 1024
_N, _R, _P = 2**14, 8, 1
_LENGTH = 32
# A hash checked for an unknown user, so that a missing name takes as long as a wrong password.
_DECOY = (
    f"{_SCHEME}${_N}${_R}${_P}$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` for ``password`` (UTF-8), with a random 16-byte salt."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_LENGTH, maxmem=64 << 20
    )
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _parse(text: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, digest = text.split("$")
    if scheme != _SCHEME:
        raise ValueError(f"unknown scheme {scheme!r}")
    values = int(n), int(r), int(p)
    if values[0] < 2 or values[0] & (values[0] - 1) or values[0] > 2**20 or values[1] > 32:
        raise ValueError("scrypt parameters out of range")
    return (*values, _unb64(salt), _unb64(digest))


def _matches(stored: str, password: str) -> bool:
    n, r, p, salt, digest = _parse(stored)
    tried = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=256 << 20
    )
    return hmac.compare_digest(tried, digest)


class PasswordFile:
    """The users who may AUTH to the listener, read from ``path``; call it as ``(user, password)``.

    Each line is ``user:scrypt$...`` as :func:`hash_password` writes it; blank lines and lines
    starting with ``#`` are skipped. A line that is not that is a
    :class:`~spoolmail.exceptions.ConfigurationError` naming the file and line (not its text,
    which may be a password pasted by mistake).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            text = read_given(self.path, what="password file", most=MOST_BYTES).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read password file {self.path}: {exc}") from None
        self._users: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()  # noqa: PLW2901 (the stripped line is the line)
            if not line or line.startswith("#"):
                continue
            user, colon, stored = line.partition(":")
            try:
                _parse(stored if colon and user else "")
            except ValueError:
                raise ConfigurationError(
                    f"{self.path}, line {number}: not 'user:scrypt$N$r$p$salt$hash' "
                    "(make one with: spoolmail listen-passwd USER)"
                ) from None
            self._users[user] = stored

    def __len__(self) -> int:
        return len(self._users)

    def __call__(self, user: str, password: str) -> bool:
        stored = self._users.get(user)
        if stored is None:
            _matches(_DECOY, password)
            return False
        return _matches(stored, password)

    def __repr__(self) -> str:
        return f"PasswordFile({str(self.path)!r}, {len(self)} users)"
