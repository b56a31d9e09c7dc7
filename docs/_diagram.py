"""The message state machine as a Mermaid diagram, drawn from the code's own table.

``docs/conf.py`` calls :func:`replace_marker` when Sphinx reads a page: a line
``<!-- state-diagram -->`` becomes a ``{mermaid}`` block built from
``spoolmail._core.states.TRANSITIONS``, so the picture on the site cannot drift from the code.
On GitHub the marker is an invisible comment and the generated Markdown table beside it
(``tests/test_design_doc.py``) stands alone. ``tests/test_design_doc.py`` checks the edges.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from spoolmail._core.states import TRANSITIONS, Event, State

MARKER = "<!-- state-diagram -->"
_MARKER_LINE = re.compile(r"^" + re.escape(MARKER) + r"[ \t]*$", re.MULTILINE)

# DONE has no folder: its files are gone. Mermaid's final state says exactly that.
_FINAL = "[*]"


def _node(state: State) -> str:
    return _FINAL if state is State.DONE else state.value


def state_diagram(table: Mapping[State, Mapping[Event, State]] = TRANSITIONS) -> str:
    """Mermaid ``stateDiagram-v2`` source: one edge per (state, event) row of ``table``, in the
    table's order, labelled with the event; ``done`` is the final state ``[*]``."""
    lines = ["stateDiagram-v2"]
    for state, events in table.items():
        for event, target in events.items():
            lines.append(f"    {_node(state)} --> {_node(target)} : {event.value}")
    return "\n".join(lines) + "\n"


def diagram_block(table: Mapping[State, Mapping[Event, State]] = TRANSITIONS) -> str:
    """The MyST text that takes the marker's place: a line saying where the picture comes
    from, then the ``{mermaid}`` directive."""
    return (
        "The same transitions as a diagram, drawn by the documentation build from "
        "`TRANSITIONS` (`done` is the final state; a message enters at `pickup`, or at `new` "
        "when the listener or a DSN makes it):\n\n"
        "```{mermaid}\n" + state_diagram(table) + "```\n"
    )


def replace_marker(text: str) -> str:
    """``text`` with every marker line replaced by :func:`diagram_block`."""
    return _MARKER_LINE.sub(lambda _: diagram_block(), text)
