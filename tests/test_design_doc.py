"""docs/design.md's state table is the code's: rendered from ``TRANSITIONS``, compared here.

The table sits between two HTML comments in the page. When the state machine changes, this test
fails and says so; ``python tests/test_design_doc.py --write`` puts the new table in its place.
The diagram beside it is drawn at build time (``docs/_diagram.py``, called by ``docs/conf.py``);
the tests below check that it has one edge per row of the table and names every state.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from spoolmail._core.states import TRANSITIONS, State

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


def _diagram_module() -> ModuleType:
    # Loaded by path, as docs/conf.py does: docs/ is no package.
    spec = importlib.util.spec_from_file_location(
        "spoolmail_docs_diagram", DESIGN.with_name("_diagram.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EDGE = re.compile(r"^    (\S+) --> (\S+) : (\S+)$")


def test_the_diagram_has_one_edge_per_row_of_the_table() -> None:
    source = _diagram_module().state_diagram()
    lines = source.splitlines()
    assert lines[0] == "stateDiagram-v2"
    edges = [_EDGE.match(line) for line in lines[1:]]
    assert all(edges), f"not an edge: {lines[1:]}"
    node = {state: "[*]" if state is State.DONE else state.value for state in State}
    expected = [
        (node[state], node[target], event.value)
        for state, events in TRANSITIONS.items()
        for event, target in events.items()
    ]
    assert [m.groups() for m in edges if m] == expected


def test_the_diagram_names_every_state() -> None:
    source = _diagram_module().state_diagram()
    named = {name for m in map(_EDGE.match, source.splitlines()) if m for name in m.group(1, 2)}
    assert named == {"[*]" if state is State.DONE else state.value for state in State}


def test_the_design_page_has_the_diagram_marker_and_the_build_replaces_it() -> None:
    diagram = _diagram_module()
    page = DESIGN.read_text()
    assert page.count(diagram.MARKER) == 1, f"{DESIGN} needs one {diagram.MARKER} line"
    built = diagram.replace_marker(page)
    assert diagram.MARKER not in built
    assert "```{mermaid}\n" + diagram.state_diagram() + "```\n" in built


def write() -> None:
    page = DESIGN.read_text()
    documented_table(page)
    DESIGN.write_text(
        _TABLE.sub(lambda m: m.group(1) + render_state_table() + m.group(3), page, count=1)
    )


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
