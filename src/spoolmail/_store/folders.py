"""The MailRoot's folders, by name: the one place they are named (``_store.pickup_writer``
looks for IIS's other spellings of Pickup after this one).

The store (``_store.store``) builds every path from these and maps each message state to its
folder; nothing outside ``_store`` imports them (``tests/store/test_boundaries.py``). They live
apart from the store so that a writer that needs nothing else of it, ``spoolmail sendmail``,
started once a message by PHP's ``mail()`` or cron, does not import the store, the state table
and PyFilesystem2 to find Pickup: a third of that command's start-up. Reads and writes nothing.
"""

from __future__ import annotations

import os

__all__ = ["BADMAIL", "DROP", "FOLDERS", "LOG", "PICKUP", "QUEUE", "SORTTEMP", "pickup_path"]

PICKUP = "Pickup"
QUEUE = "Queue"
BADMAIL = "BadMail"
DROP = "Drop"
SORTTEMP = "SortTemp"
FOLDERS = (PICKUP, QUEUE, BADMAIL, DROP, SORTTEMP)
#: The mail log's folder (``_store.maillog``): not a state, and made only once a line is written.
LOG = "Log"


def pickup_path(root: str) -> str:
    """The path of Pickup in the MailRoot folder ``root`` of this machine (not looked at)."""
    return os.path.join(root, PICKUP)
