"""Least privilege for ``spoolmail run``: become the service's own user, or say that it is root.

A mail service needs root for one thing only, binding port 25, and spoolmail does not even
need that until its inbound listener exists. So ``spoolmail run`` does what needs root first
(reading the settings, which may hold the smart host's password in a file only root can read;
binding the listener's sockets, once there is one), then :func:`drop_privileges` switches the
process to the configured user for good, before the MailRoot is opened: every file the service
writes is the service user's, and a flaw in the parsing of mail cannot be used as root. Started
as root without a user, :func:`root_warning` gives the one line the service logs.

Changes the process's credentials only; never touches the MailRoot or the network. POSIX only.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import attrs

from spoolmail.exceptions import ConfigurationError, SpoolmailError

if TYPE_CHECKING:
    from spoolmail._cli.settings import Settings

__all__ = [
    "IMPORTED_BEFORE_DROP",
    "NOT_IN_A_SERVICE",
    "Identity",
    "drop_privileges",
    "import_before_drop",
    "is_root",
    "lose_root",
    "parse_user",
    "resolve",
    "root_warning",
]

log = logging.getLogger("spoolmail")

_T = TypeVar("_T")

#: Modules spoolmail imports at their first use, imported before the drop: the service's user may
#: not be able to read the Python installation (a venv or pyenv under /root, mode 700), and then
#: an import after the drop fails in the middle of a delivery. Besides these, every spoolmail
#: module a service can reach (:func:`import_before_drop`) and all of dnspython's record types,
#: which it imports as answers bring them. A test reads the sources for imports inside functions
#: and codecs named by text, and fails for any not covered here.
IMPORTED_BEFORE_DROP = (
    "fcntl",  # the Pickup lease probe
    "grp",
    "pwd",  # owners named in BadMail reports
    "encodings.idna",
    "encodings.punycode",  # address and DKIM domain lengths
    "importlib.metadata",  # spoolmail.__version__
    "tomllib",  # the settings file, read again at a SIGHUP
    "dns.exception",
    "dns.flags",
    "dns.name",
    "dns.nameserver",
    "dns.rdata",
    "dns.resolver",
    "dns.reversename",
    # optional dependencies, where installed: DKIM and DANE, --metrics
    "cryptography",
    "cryptography.exceptions",
    "cryptography.x509",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.asymmetric.padding",
    "cryptography.hazmat.primitives.asymmetric.rsa",
    "cryptography.hazmat.primitives.asymmetric.utils",
    "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.serialization",
    "prometheus_client",
    "prometheus_client.core",
)

#: spoolmail's modules that no service runs: they are not imported before the drop.
NOT_IN_A_SERVICE = frozenset(
    {"spoolmail.__main__", "spoolmail.django", "spoolmail.testing", "spoolmail._cli.sendmail"}
)


def import_before_drop() -> None:
    """Import what a service may import at first use (:data:`IMPORTED_BEFORE_DROP`, spoolmail's
    own modules, dnspython's record types), while the installation can still be read. A module
    whose optional dependency is missing is left out: the feature that needs it says so."""
    import spoolmail  # noqa: PLC0415

    names = [
        info.name
        for info in pkgutil.walk_packages(spoolmail.__path__, "spoolmail.")
        if info.name not in NOT_IN_A_SERVICE
    ]
    for name in (*names, *IMPORTED_BEFORE_DROP):
        with contextlib.suppress(ImportError):  # fcntl: POSIX only; optional dependencies
            importlib.import_module(name)
    with contextlib.suppress(ImportError):
        import dns.rdata  # noqa: PLC0415

        # A record type's module is imported when an answer first holds one.
        dns.rdata.load_all_types()  # type: ignore[no-untyped-call]


@attrs.frozen
class Identity:
    """Who the process becomes: the user, its numeric ids, and every group it keeps."""

    user: str
    uid: int
    gid: int
    groups: frozenset[int]


def is_root() -> bool:
    """Whether the process runs with root's effective user id (never on Windows)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def root_warning() -> str | None:
    """The warning for a service started as root with nobody to become, or ``None``."""
    if not is_root():
        return None
    return (
        "running as root; give the service its own user (--user NAME or the 'user' "
        "setting) so that it drops root after start-up"
    )


def lose_root(settings: Settings) -> None:
    """Become the service's user, or warn once that the service runs as root.

    Called once start-up needs root no more (``run``, ``listen``): after the settings are
    read, and before the MailRoot is opened, so that every file the service writes is its
    user's. The inbound listener, when there is one, binds its sockets before this (port 25
    needs root). The warning goes to the log, on stderr: the daemon shows it at every start,
    while a ``--once`` run, whose log shows errors only, keeps its output for its results
    (``-v`` shows it there too).
    """
    if settings.user is not None:
        import_before_drop()
        identity = drop_privileges(*parse_user(settings.user))
        log.info("running as %s (uid %d, gid %d)", identity.user, identity.uid, identity.gid)
        return
    warning = root_warning()
    if warning is not None:
        log.warning("%s", warning)


def parse_user(value: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:GROUP`` (as chown writes it) as ``(user, group or None)``."""
    user, colon, group = value.partition(":")
    if not user or (colon and not group):
        raise ConfigurationError(f"user must be NAME or NAME:GROUP, not {value!r}")
    return user, group or None


def resolve(user: str, group: str | None = None) -> Identity:
    """Look ``user`` (and ``group``, default its login group) up in the system's databases.

    The groups kept are the user's supplementary groups (``/etc/group``) and the group: the
    service reads Pickup files through a group it shares with the applications that write them.
    """
    # Imported here: Windows has neither module, and it must still import the command.
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    entry = _look_up(pwd.getpwnam, pwd.getpwuid, user, what="user")
    gid = entry.pw_gid
    if group is not None:
        gid = _look_up(grp.getgrnam, grp.getgrgid, group, what="group").gr_gid
    if entry.pw_uid == 0 or gid == 0:
        raise ConfigurationError(f"user: {user!r} would keep root; name an unprivileged user")
    groups = frozenset(os.getgrouplist(entry.pw_name, gid))
    return Identity(user=user, uid=entry.pw_uid, gid=gid, groups=groups | {gid})


def _look_up(
    by_name: Callable[[str], _T], by_id: Callable[[int], _T], name: str, *, what: str
) -> _T:
    """The entry named ``name``, or numbered ``name`` where no name is that, as chown takes
    ``65534:65534`` (systemd's ``User=`` too)."""
    try:
        return by_name(name)
    except KeyError:
        pass
    if name.isascii() and name.isdigit():
        with contextlib.suppress(KeyError, OverflowError):
            return by_id(int(name))
    raise ConfigurationError(f"user: no such {what} {name!r}")


def drop_privileges(user: str, group: str | None = None) -> Identity:
    """Become ``user`` (and ``group``) for good: real, effective and saved ids, and groups.

    Started as that user already, there is nothing to do. Otherwise the process must be root.
    The order matters (CERT POS36-C): the supplementary groups and the group id first, while
    the process may still change them, the user id last; ``setuid`` first would leave root's
    groups behind. Then it checks that every id changed and that root cannot be regained
    (``setuid(0)`` must fail), and raises :class:`SpoolmailError` if not: a service that
    believes it dropped root but did not is worse than one that says it runs as root.
    """
    if not hasattr(os, "setresuid"):
        raise ConfigurationError("user: changing the user needs a POSIX system with setresuid")
    identity = resolve(user, group)
    if (os.getresuid(), os.getresgid()) == ((identity.uid,) * 3, (identity.gid,) * 3):
        return identity  # started as the service's user (systemd's User=, su, runuser)
    if os.geteuid() != 0:
        raise ConfigurationError(
            f"user: cannot become {user!r}: spoolmail runs as uid {os.geteuid()}, not root"
        )
    try:
        os.setgroups(sorted(identity.groups))
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as exc:
        raise SpoolmailError(f"cannot become {user!r}: {exc}") from exc
    _verify(identity)
    return identity


def _can_become_root() -> bool:
    """Whether ``setuid(0)`` still works; a PermissionError is what a dropped process must get."""
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


def _verify(identity: Identity) -> None:
    """Raise unless the process is ``identity`` through and through and cannot be root again."""
    problems = []
    if os.getresuid() != (identity.uid,) * 3:
        problems.append(f"user ids are {os.getresuid()}")
    if os.getresgid() != (identity.gid,) * 3:
        problems.append(f"group ids are {os.getresgid()}")
    if set(os.getgroups()) - identity.groups:
        problems.append(f"groups are {sorted(os.getgroups())}")
    if _can_become_root():
        problems.append("setuid(0) succeeded")
    if problems:
        raise SpoolmailError(f"dropping root to {identity.user!r} failed: {'; '.join(problems)}")
