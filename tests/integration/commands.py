"""The ``spoolmail`` command lines the subprocess tests start (kill tests, real writers)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["spoolmail_run"]


def spoolmail_run(root: Path | str, *extra: str, poll_interval: float = 0.01) -> list[str]:
    """``python -m spoolmail run`` on ``root``: local domain example.com, a quick poll."""
    return [
        sys.executable,
        "-m",
        "spoolmail",
        "--root",
        str(root),
        "run",
        "--local-domain",
        "example.com",
        "--fqdn",
        "mail.example.com",
        "--poll-interval",
        str(poll_interval),
        *extra,
    ]
