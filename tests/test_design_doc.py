"""docs/design.md's state table is the code's: rendered from ``TRANSITIONS``, compared here.

The table sits between two HTML comments in the page. When the state machine changes, this test
fails and says so; ``python tests/test_design_doc.py --write`` puts the new table in its place.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from spoolmail._core.states import TRANSITIONS

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"
_TABLE = re.compile(
    r"(<!-- state-table: begin[^\n]*-->\n)(.*?)(<!-- state-table: end -->)", re.DOTALL
)


def render_state_table() -> str:
    """The transitions as a Markdown table, in the table's own order: from, event, to."""
    rows = ["| from | event | to |", "|---|---|---|"]
    for state, events in TRANSITIONS.items():
        for event, target in events.items():
            rows.append(f"| `{state.value}` | `{event.value}` | `{target.value}` |")
    return "\n".join(rows) + "\n"


def documented_table(page: str) -> str:
    found = _TABLE.search(page)
    assert found is not None, f"{DESIGN} has no state-table markers"
    return found.group(2)


def test_the_design_page_shows_the_state_table_of_the_code() -> None:
    assert documented_table(DESIGN.read_text()) == render_state_table(), (
        "docs/design.md's state table differs from spoolmail._core.states.TRANSITIONS; "
        "run `python tests/test_design_doc.py --write` and read the change"
    )


def test_every_state_and_event_of_the_table_is_shown() -> None:
    table = render_state_table()
    for state, events in TRANSITIONS.items():
        assert events == {} or f"| `{state.value}` |" in table
        for event in events:
            assert f"| `{event.value}` |" in table


def write() -> None:
    page = DESIGN.read_text()
    documented_table(page)
    DESIGN.write_text(
        _TABLE.sub(lambda m: m.group(1) + render_state_table() + m.group(3), page, count=1)
    )


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
