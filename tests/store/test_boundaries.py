"""The store is the only code that builds MailRoot paths (docs/design.md#layers).

Outside ``src/spoolmail/_store`` no module imports a MailRoot folder constant, spells a queue
file name (``f"{queue_id}.eml"``, ``.env``, ``.BAD``, ``.BDR``, ``.BDP``, ``.RTR``, ``.LTR``) or
calls the store's raw file operations: what a transition does to the files is the store's,
chosen by the state table.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "spoolmail"
STORE_IMPORT = re.compile(
    r"from spoolmail\._store\.(?:store|folders) import \(?([^)]*?)\)?\n", re.DOTALL
)
FOLDERS = {"PICKUP", "QUEUE", "BADMAIL", "DROP", "SORTTEMP", "FOLDERS", "STATE_FOLDERS"}
FILE_NAME = re.compile(r"""f["'][^"'\n]*\}\.(eml|env|BAD|BDR|BDP|RTR|LTR)\b""")
# The store's raw file operations: outside the package, a transition or a named query is used.
RAW_CALL = re.compile(
    r"\bstore\.(write|read|remove|rename|open|exists|isfile|size|listdir|recycle|sync|"
    r"commit_\w+|claim_queued|read_claimed|release|finish|finish_claim|take_over\w*|inspect|"
    r"signature|queue_files)\("
)
OUTSIDE = sorted(p for p in SRC.rglob("*.py") if "_store" not in p.relative_to(SRC).parts)


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: str(p.relative_to(SRC)))
def test_no_mailroot_path_is_built_outside_the_store(path: Path) -> None:
    text = path.read_text()
    named = {n.strip() for group in STORE_IMPORT.findall(text) for n in group.split(",")}
    assert not named & FOLDERS, f"{path} imports a MailRoot folder"
    assert not FILE_NAME.findall(text), f"{path} builds a MailRoot file name"
    assert not RAW_CALL.findall(text), f"{path} works on MailRoot files directly"


def test_the_check_sees_a_path_being_built() -> None:
    assert FILE_NAME.search('name = f"{queue_id}.eml"')
    assert STORE_IMPORT.findall("from spoolmail._store.store import QUEUE, MailStore\n")
    assert STORE_IMPORT.findall("from spoolmail._store.folders import PICKUP\n")
    assert RAW_CALL.search("self.store.write(QUEUE, name, data)")
