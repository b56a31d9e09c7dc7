"""Sphinx settings for the documentation site: ``nox -s docs`` builds it into ``docs/_build``.

Sphinx with MyST and furo, not MkDocs: the docstrings are reStructuredText (``literal``,
:class:`...` roles), which autodoc renders as written, and a nitpicky build turns every broken
cross-reference into an error. The pages stay plain Markdown that GitHub renders too; their
``<a id="...">`` anchors become MyST targets here (``_anchors`` below), so a link to
``design.md#crash-safety`` is checked; the line ``<!-- state-diagram -->`` becomes a Mermaid
diagram of the state machine drawn from the code's table (``_state_diagram`` below,
``docs/_diagram.py``; sphinxcontrib-mermaid, drawn in the reader's browser, so the build needs
no network). The Python examples on the pages are doctests that the test suite runs; the build
does not run them again.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

project = "spoolmail"
author = "the spoolmail developers"
copyright = "2026, the spoolmail developers"  # noqa: A001 (Sphinx's name)
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinxcontrib.mermaid"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 4
html_theme = "furo"
html_title = "spoolmail"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = True
# A console block whose output Pygments cannot lex is shown unhighlighted: not an error.
suppress_warnings = ["misc.highlighting_failure"]
# No inventories are fetched (the build needs no network): references to the standard library
# and to our dependencies are not checked; references to spoolmail's own names are.
nitpick_ignore_regex = [
    (r"py:.*", r"(builtins|datetime|collections|os|ssl|socket|email|contextlib|time|typing)\b.*"),
    (r"py:.*", r"(fs|dns|tenacity|attrs|django|cryptography)\..*"),
    (r"py:class", r"(RSAPrivateKey|Ed25519PrivateKey)"),  # cryptography's, named bare
    (r"py:class", r"(datetime|timedelta|Path|BinaryIO|Self|WaitBaseT|StopBaseT|pyfs\.FS)"),
    # Type aliases, which autodoc names without a page of their own.
    (r"py:class", r"(QueueIds|Clock|Observer|Answer|SigningKey|DnsResolver)"),
    (r"py:attr", r"(messages|lookups)"),  # CapturingTransport's and StaticResolver's lists
    # attrs fields, which autodoc does not list as attributes of their own.
    (r"py:attr", r"(dkim|DkimSession\.unsigned)"),
    (r"py:.*", r"spoolmail\._.*"),  # private modules, named in a few signatures
    (r"py:func", r"hash_password"),
]

_ANCHOR = re.compile(r'^<a id="([a-z0-9-]+)"></a>\s*$', re.MULTILINE)


def _anchors(_app: Any, _docname: str, source: list[str]) -> None:
    """``<a id="x"></a>`` (GitHub's anchors) becomes the MyST target ``(x)=``."""
    source[0] = _ANCHOR.sub(r"(\1)=", source[0])


def _load_diagram() -> Any:
    """``docs/_diagram.py`` by its path: the docs folder is not a package, nor on sys.path."""
    spec = importlib.util.spec_from_file_location(
        "spoolmail_docs_diagram", Path(__file__).with_name("_diagram.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_diagram = _load_diagram()


def _state_diagram(_app: Any, _docname: str, source: list[str]) -> None:
    """``<!-- state-diagram -->`` becomes a ``{mermaid}`` block of ``TRANSITIONS``."""
    source[0] = _diagram.replace_marker(source[0])


def setup(app: Any) -> None:
    app.connect("source-read", _anchors)
    app.connect("source-read", _state_diagram)
