"""Real peer programs the tests drive: where they are, and what to do when one is missing.

``.ci/run`` installs them all (Debian's ``postfix`` for ``smtp-sink``/``smtp-source``, ``swaks``,
``php-cli``, ``strace``, and npm's ``nodemailer`` with ``nodemailer-pickup-transport`` into
``tests/node``) and sets ``SPOOLMAIL_REQUIRE_PEERS=1``: there a missing peer fails its test. On a
developer's machine without them, the test is skipped and says what to install.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["NODE_MODULES", "REQUIRE_ENV", "require_node_module", "require_program"]

REQUIRE_ENV = "SPOOLMAIL_REQUIRE_PEERS"
NODE_MODULES = Path(__file__).parent / "node" / "node_modules"

# Debian puts smtp-sink, dnsmasq and friends in /usr/sbin, which an unprivileged PATH lacks.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def _missing(why: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{why}, and {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(why)


def require_program(name: str, *, package: str) -> str:
    """The path of program ``name``; skips the test without it, or fails where CI requires it."""
    found = shutil.which(name, path=_SEARCH)
    if found is None:
        _missing(f"{name} is not installed (Debian package {package})")
        raise AssertionError("unreachable")  # pragma: no cover (skip and fail raise)
    return found


def require_node_module(name: str) -> Path:
    """``tests/node/node_modules/NAME``, and the ``node`` binary; installed by
    ``npm install --prefix tests/node``."""
    require_program("node", package="nodejs")
    module = NODE_MODULES / name
    if not module.is_dir():
        _missing(f"the npm package {name} is not installed (npm install --prefix tests/node)")
    return module
