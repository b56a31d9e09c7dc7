"""docs/reference/replies.md's tables are generated from the code's own replies.

The listener's replies are the strings in ``spoolmail/_listen`` that start with a reply code and
an RFC 3463 enhanced status code (``"550 5.7.1 Unable to relay for ..."``), and aiosmtpd's own
replies get the codes of ``spoolmail._listen.replies``. The statuses spoolmail gives recipients
and BadMail entries are every ``"X.Y.Z"`` string in the rest of the package, with the call it is
given to (``Reply(451, "4.4.3", f"MX lookup for {domain} failed: ...")``). Tables are found by
reading the source (``ast``), so a reply added, changed or removed in the code changes the page:
this test then fails, and ``python tests/test_replies_reference.py --write`` writes the tables
again between their markers. A status string whose call says nothing of it needs a line in
``NOTES``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs

import spoolmail
from spoolmail._listen import replies

PACKAGE = Path(spoolmail.__file__).resolve().parent
PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "replies.md"

_REPLY = re.compile(r"^([2-5]\d\d) ([2-5]\.\d{1,3}\.\d{1,3})(?: (.*))?$", re.DOTALL)
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_MARKED = re.compile(r"(<!-- (\w[\w-]*): begin[^\n]*-->\n)(.*?)(<!-- \2: end -->)", re.DOTALL)

# Where in the listener a reply is sent, by the function that sends it.
LISTENER_WHEN = {
    "_handle_client": "connect",
    "_turn_away": "connect, refused client",
    "_shut": "shutdown (`Listener.stop()`)",
    "finish": "shutdown (`Listener.stop()`)",
    "handle_MAIL": "`MAIL FROM`",
    "handle_RCPT": "`RCPT TO`",
    "handle_DATA": "end of `DATA`",
    "_check_content": "end of `DATA`",
    "handle_AUTH": "`AUTH`",
    "_refuse_login": "`AUTH`",
    "_read_login": "`AUTH`",
    "_response": "`AUTH`",
    "smtp_STARTTLS": "`STARTTLS`",
    "_too_much_junk": "the 101st `NOOP`, `RSET` or `VRFY` since the last accepted message; closed",
    "handle_exception": "any command: an error inside spoolmail",
    "<module>": "aiosmtpd's own reply, its code added",
}

# A reply sent from a function that sends others at other times.
LISTENER_WHEN_BY_CODE = {"521": "any line with a bare CR or LF; the connection is closed"}

# Where a status is decided, by module (relative to the package). A module that gains a status
# and is not here fails the test: say where it belongs.
STAGES = {
    "_cli/main.py": "`spoolmail submit`",
    "_core/address.py": "addresses (Pickup, `submit`, the listener's envelope)",
    "_core/badmail.py": "BadMail reports",
    "_core/dane.py": "DANE",
    "_core/dsn.py": "DSNs",
    "_core/esmtp.py": "the listener's MAIL and RCPT parameters",
    "_core/mtasts.py": "MTA-STS",
    "_core/mx.py": "routing: MX",
    "_core/pickup.py": "Pickup files",
    "_core/reply.py": "replies",
    "_core/states.py": "expiry",
    "_core/suppression.py": "the suppression list",
    "_service/delivery.py": "delivery",
    "_service/destinations.py": "delivery",
    "_service/iis.py": "`queue import-iis`",
    "_service/intake.py": "Pickup files",
    "_store/pickup_writer.py": "`Pickup`, `sendmail`",
    "_store/spool.py": "`Spool.submit`, `Spool.admit`",
    "_store/submission.py": "`Spool.submit`, `Pickup.submit`",
    "_transport/dane.py": "DANE",
    "_transport/dns.py": "routing: DNS",
    "_transport/policy.py": "the SMTP client",
    "_transport/protocol.py": "the SMTP client",
    "_transport/session.py": "the SMTP client",
    "exceptions.py": "exceptions",
    "testing.py": "`spoolmail.testing`",
}

# Calls that make a reply with a code of their own.
CALL_CODES = {"_over": "451"}  # the SMTP client's connection-level failures

# What a status string means where the code around it says nothing a reader could use:
# (module, status) -> text for the page.
NOTES = {
    ("_core/address.py", "5.1.3"): "a recipient address that is not one",
    ("_core/address.py", "5.1.7"): "a sender address that is not one",
    ("_core/badmail.py", "4.3.0"): "a queued message whose files cannot be read, moved aside "
    "for an operator",
    ("_core/dane.py", "4.7.5"): "DANE: the TLSA lookup for an MX host failed, so whether DANE "
    "applies cannot be told: that host is not used now (RFC 7672 section 2.2.3)",
    ("_core/esmtp.py", "5.5.4"): "a malformed `RET`, `ENVID`, `NOTIFY` or `ORCPT` parameter "
    "(`501 5.5.4`)",
    ("_core/suppression.py", "5.1.1"): "a hard bounce from the recipient's server: the "
    "address goes on the suppression list",
    ("_core/suppression.py", "5.1.2"): "a hard bounce: the domain does not exist; the address "
    "goes on the suppression list",
    ("_core/suppression.py", "5.1.10"): "a hard bounce: a null MX; the address goes on the "
    "suppression list",
    ("_service/delivery.py", "5.1.10"): "the domain has a null MX (RFC 7505): the recipient "
    "fails at once",
    ("_service/intake.py", "4.3.0"): "a Pickup file the parser failed on (a bug in "
    "spoolmail): kept in BadMail with the traceback",
    ("_core/dsn.py", "2.0.0"): "a DSN's `Status:` for a delivered or relayed recipient "
    "without a reply of its own",
    ("_core/dsn.py", "4.0.0"): "a delay DSN's `Status:` without a reply of its own",
    ("_core/dsn.py", "5.0.0"): "a failure DSN's `Status:` without a reply of its own",
    ("_core/reply.py", "2.0.0"): "a server's reply without an enhanced code: its class's",
    ("_core/reply.py", "4.0.0"): "a server's reply without an enhanced code: its class's",
    ("_core/reply.py", "5.0.0"): "a server's reply without an enhanced code: its class's",
    ("_transport/policy.py", "4.7.0"): "the smart host refused AUTH (not with 535): the "
    "message waits, as Postfix's `smtp_sasl_auth_soft_bounce`",
    ("_transport/policy.py", "4.7.8"): "the smart host refused AUTH with 535: the message waits",
    ("exceptions.py", "5.6.0"): "a message that cannot be one (the default of `MessageError`)",
    ("testing.py", "2.0.0"): "`CapturingTransport`'s answer",
    ("testing.py", "5.1.2"): "`StaticResolver`: a name not in its table",
    ("testing.py", "5.1.10"): "`StaticResolver`: a null MX in its table",
}
# Status strings that are compared, not given (a comparison is never a reply).
_SKIP_PARENTS = (ast.Compare,)


@attrs.frozen(order=True)
class Found:
    status: str
    code: str  # "451", or "" when the place gives no reply code
    text: str  # the text, placeholders as {name}
    where: str


def _placeholder(node: ast.expr) -> str:
    """``{name}`` for an expression in an f-string: ``{recipient}``, ``{fqdn}`` for
    ``self.config.fqdn``, ``{when}`` for ``when.isoformat()``, ``{n}`` for ``len(...)``."""
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id == "len":
            return "{n}"
        if isinstance(node.func, ast.Attribute):  # a method: name the object
            return _placeholder(node.func.value)
        return _placeholder(node.func)
    if isinstance(node, ast.Subscript):
        return _placeholder(node.value)
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "...")
    return "{" + name.strip("_").lower() + "}"


def template(node: ast.expr | None) -> str | None:
    """A string expression as text: literal parts kept, expressions as ``{name}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue):
                parts.append(_placeholder(value.value))
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = template(node.left), template(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return node.name
    return "<module>"


def listener_replies() -> list[tuple[str, str, str, str]]:
    """(code, status, text, when) of every reply string in spoolmail/_listen."""
    found = set()
    for name, tree in _modules():
        if not name.startswith("_listen/"):
            continue
        parents = _parents(tree)
        for node in ast.walk(tree):
            text = template(node) if isinstance(node, ast.Constant | ast.JoinedStr) else None
            if text is None or isinstance(parents.get(node), ast.JoinedStr):
                continue
            match = _REPLY.match(text)
            if match is None:
                continue
            function = _function(node, parents)
            when = LISTENER_WHEN_BY_CODE.get(match.group(1)) or LISTENER_WHEN.get(
                function, f"`{function}`"
            )
            found.add((match.group(1), match.group(2), match.group(3) or "", when))
    return sorted(found)


def _call_of(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> ast.Call | None:
    """The call ``node`` is an argument of, through ``a if c else b``."""
    parent = parents.get(node)
    while isinstance(parent, ast.IfExp | ast.keyword):
        node, parent = parent, parents.get(parent)
    return parent if isinstance(parent, ast.Call) and node is not parent.func else None


def _text_of(call: ast.Call, status: ast.AST) -> str | None:
    for keyword in call.keywords:
        if keyword.arg in ("reason", "text", "message") and template(keyword.value):
            return template(keyword.value)
    for argument in call.args:
        if argument is not status and template(argument) is not None:
            return template(argument)
    return None


def _code_of(call: ast.Call) -> str:
    function = call.func.attr if isinstance(call.func, ast.Attribute) else None
    if function in CALL_CODES:
        return CALL_CODES[function]
    for argument in call.args:
        if isinstance(argument, ast.Constant) and isinstance(argument.value, int):
            return str(argument.value)
        if isinstance(argument, ast.IfExp):  # Reply(554 if ... else 451, ...)
            branches = (argument.body, argument.orelse)
            if all(isinstance(b, ast.Constant) and isinstance(b.value, int) for b in branches):
                return " or ".join(sorted(str(b.value) for b in branches))  # type: ignore[attr-defined]
    return ""


def statuses(*, strict: bool = False) -> list[Found]:
    """Every enhanced status code given outside the listener, with its call's code and text.

    ``strict``: fail when a module has no line in ``STAGES`` or a status no text (nor ``NOTES``
    line); otherwise the module's name and an empty text stand in."""
    found, missing = set(), []
    for name, tree in _modules():
        if name.startswith("_listen/"):
            continue
        parents = _parents(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if not _STATUS.match(node.value) or isinstance(parents.get(node), _SKIP_PARENTS):
                continue
            if name not in STAGES:
                missing.append(f"{name} (no STAGES line)")
            call = _call_of(node, parents)
            text = _text_of(call, node) if call is not None else None
            code = _code_of(call) if call is not None else ""
            note = NOTES.get((name, node.value)) if text is None else None
            if text is None:
                text = f"({note})" if note else ""
            where = STAGES.get(name, f"`{Path(name).stem}`")
            found.add(Found(node.value, code, text, where))
            if text == "" and note is None:
                missing.append(f"{name}:{node.lineno}: {node.value} (no NOTES line)")
    # A status given with a text made elsewhere (a variable) is shown by the same status's
    # other lines from the same place; alone, it needs a NOTES line.
    texts = {(f.status, f.where) for f in found if f.text}
    found = {f for f in found if f.text or (f.status, f.where) not in texts}
    missing = [m for m in missing if not _shown_elsewhere(m, found)]
    if strict and missing:
        raise AssertionError(f"say where and what in STAGES and NOTES: {', '.join(missing)}")
    return sorted(found, key=_status_order)


def _shown_elsewhere(missing: str, found: set[Found]) -> bool:
    name, _, status = missing.partition(" (")[0].rpartition(": ")
    module = name.rsplit(":", 1)[0]
    where = STAGES.get(module)
    return where is not None and any(f.status == status and f.where == where for f in found)


def _status_order(found: Found) -> tuple[int | str, ...]:
    return (
        *(int(part) for part in found.status.split(".")),
        int(found.code.split()[0] or 0) if found.code else 0,
        found.where,
        found.text,
    )


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def render_tables() -> dict[str, str]:
    listener = ["| reply | when | text |", "|---|---|---|"]
    for code, status, text, when in listener_replies():
        listener.append(f"| `{code} {status}` | {when} | {_cell(text)} |")
    added = ["| aiosmtpd's reply code | enhanced status added |", "|---|---|"]
    for code, status in sorted(replies._BY_CODE.items()):
        added.append(f"| `{code}` | `{status}` |")
    decided = ["| status | reply | where | text |", "|---|---|---|---|"]
    for found in statuses():
        code = f"`{found.code}`" if found.code else ""
        decided.append(f"| `{found.status}` | {code} | {found.where} | {_cell(found.text)} |")
    return {
        "listener-replies": "\n".join(listener) + "\n",
        "listener-codes": "\n".join(added) + "\n",
        "statuses": "\n".join(decided) + "\n",
    }


def render(page: str) -> str:
    tables = render_tables()

    def table(match: re.Match[str]) -> str:
        return match.group(1) + tables[match.group(2)] + match.group(4)

    return _MARKED.sub(table, page)


def test_the_page_shows_the_codes_replies() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert {m.group(2) for m in _MARKED.finditer(page)} == set(render_tables())
    assert page == render(page), (
        "docs/reference/replies.md differs from the replies in the code; "
        "run `python tests/test_replies_reference.py --write` and read the change"
    )


def test_every_listener_reply_in_the_code_is_found() -> None:
    # A grep, independent of the ast walk: every literal reply with an enhanced code.
    pattern = re.compile(r'"([2-5]\d\d [2-5]\.\d{1,3}\.\d{1,3})')
    grepped = {
        match
        for path in (PACKAGE / "_listen").glob("*.py")
        for match in pattern.findall(path.read_text(encoding="utf-8"))
    }
    shown = {f"{code} {status}" for code, status, _, _ in listener_replies()}
    assert grepped <= shown
    for needed in ("550 5.7.1", "452 4.3.1", "521 5.5.2", "535 5.7.8", "250 2.0.0"):
        assert needed in shown


def test_every_status_in_the_code_is_found() -> None:
    # A grep, independent of the ast walk; doctest lines and comparisons give no status.
    pattern = re.compile(r'"([245]\.\d{1,3}\.\d{1,3})"')
    grepped = {
        match
        for path in PACKAGE.rglob("*.py")
        if "_listen" not in path.parts
        for line in path.read_text(encoding="utf-8").splitlines()
        if ">>>" not in line and not re.search(r"==|!=|\bin\b", line)
        for match in pattern.findall(line)
    }
    shown = {found.status for found in statuses(strict=True)}
    assert grepped <= shown


def test_a_template_shows_its_placeholders() -> None:
    node = ast.parse('f"Unable to relay for {recipient} at {self.config.fqdn}!"').body[0]
    assert isinstance(node, ast.Expr)
    assert template(node.value) == "Unable to relay for {recipient} at {fqdn}!"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    PAGE.write_text(render(PAGE.read_text(encoding="utf-8")), encoding="utf-8")
