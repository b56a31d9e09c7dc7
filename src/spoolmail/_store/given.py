"""Files an operator names: the settings file, DKIM keys, the password file, TLS certificates.

Trusted for what they say, not for what they are: a path typed wrong may name a FIFO (which
would hang the start, or a SIGHUP's reading in the middle of the service, until something
writes to it), a device that never ends (``/dev/zero``) or a log file of gigabytes. So each is
opened without waiting, must be a regular file (links are followed: an operator's links are
the operator's), and is read only up to a bound. Only ``os`` and ``stat``: the command line's
start-up pays for this module.
"""

from __future__ import annotations

import os
import stat

from spoolmail.exceptions import ConfigurationError

__all__ = ["check_given", "read_given"]

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _refuse(mode: int, path: str | os.PathLike[str], what: str) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise ConfigurationError(f"cannot read {what} {os.fspath(path)}: it is {kind}")


def read_given(path: str | os.PathLike[str], *, what: str, most: int) -> bytes:
    """The bytes of the ``what`` (``"settings file"``) at ``path``: a regular file of at most
    ``most`` bytes, read through one descriptor opened without waiting.

    :class:`~spoolmail.exceptions.ConfigurationError` naming ``what``, the path and what is
    there instead; ``OSError`` from the open as it was raised (no such file, no permission).
    """
    fd = os.open(path, _FLAGS)
    try:
        _refuse(os.fstat(fd).st_mode, path, what)
        data = b""
        while len(data) <= most and (chunk := os.read(fd, most + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > most:
        raise ConfigurationError(f"{what} {os.fspath(path)} is over {most} bytes")
    return data


def check_given(path: str | os.PathLike[str], *, what: str) -> None:
    """Refuse, before a library opens ``path`` itself (``ssl`` a certificate), what
    :func:`read_given` refuses but the size; a missing file is left to that library's error."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    _refuse(mode, path, what)
