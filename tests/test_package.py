"""The package's shape: exported names, layers whose imports point down, the fs import guard."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import attrs
import pytest

import spoolmail
from spoolmail.exceptions import DependencyError

SRC = Path(spoolmail.__file__).parent

# What each layer may import from spoolmail (besides itself and spoolmail.exceptions).
LAYERS = {
    "_core": set(),
    "_store": {"_core"},
    "_transport": {"_core"},
    "_service": {"_core", "_store", "_transport"},
    "_listen": {"_core", "_store", "_service"},
    "_cli": {"_core", "_store", "_transport", "_service", "_listen"},
}
# The core is pure: no filesystem, network, DNS or clock (docs/design.md#layers).
CORE_FORBIDDEN = {
    "fs",
    "socket",
    "ssl",
    "dns",
    "time",
    "asyncio",
    "aiosmtpd",
    "os",
    "threading",
    "subprocess",
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_exported_names_are_pinned() -> None:
    assert spoolmail.__all__ == sorted(spoolmail.__all__)
    assert set(spoolmail.__all__) == {
        "BadMailItem",
        "Canonicalization",
        "Credentials",
        "DkimAlgorithm",
        "DkimKey",
        "DkimPolicy",
        "DkimSigner",
        "DropItem",
        "Durability",
        "Envelope",
        "Hop",
        "HopKind",
        "HostNameCheck",
        "HostResolver",
        "HttpsPolicyFetcher",
        "Limits",
        "Listener",
        "ListenerLimits",
        "MailEvent",
        "MailService",
        "Notify",
        "Outgoing",
        "PasswordFile",
        "Pickup",
        "PolicyFetcher",
        "QueuedMessage",
        "Recipient",
        "RecipientState",
        "Reply",
        "Report",
        "Resolution",
        "Ret",
        "RetryPolicy",
        "Route",
        "RouteKind",
        "Router",
        "Severity",
        "Share",
        "SmartHostMode",
        "SmtpTimeouts",
        "SmtpTransport",
        "Spool",
        "SpoolmailError",
        "State",
        "Stats",
        "Suppressed",
        "SuppressionList",
        "Target",
        "ThrottleRules",
        "TlsPolicy",
        "Transcript",
        "Transport",
        "__version__",
        "check_host_name",
    }
    for name in spoolmail.__all__:
        assert hasattr(spoolmail, name), name


def test_every_public_name_of_the_package_is_exported() -> None:
    """Nothing public sits in ``spoolmail`` without being in ``__all__`` (submodules aside)."""
    public = {
        name
        for name, value in vars(spoolmail).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(spoolmail.__all__), public - set(spoolmail.__all__)


def _private_class(value: object) -> str | None:
    """The name of ``value``'s class when it is one of spoolmail's private classes."""
    cls = type(value)
    module = cls.__module__
    if not module.startswith("spoolmail._"):
        return None
    if getattr(spoolmail, cls.__name__, None) is cls:
        return None  # defined in a private module, exported by the package
    return f"{module}.{cls.__qualname__}"


def test_no_private_class_is_reachable_from_a_public_attribute() -> None:
    """What users reach through a public attribute is a public type (docs/api.md), never the
    store, the state machine's commits or the service's parts: those may change any day."""
    with spoolmail.Spool("mem://") as spool:
        service = spoolmail.MailService(spool, router=spoolmail.Router(smart_host="relay.test"))
        try:
            assert _private_class(spool._store) == "spoolmail._store.store.MailStore"
            for owner in (spool, service, service.router, service.retry, service.transport):
                names = attrs.fields_dict(type(owner)) if attrs.has(type(owner)) else vars(owner)
                for name in names:
                    if not name.startswith("_"):
                        value = getattr(owner, name)
                        assert _private_class(value) is None, (type(owner).__name__, name)
        finally:
            service.close()


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_imports_point_down(layer: str) -> None:
    allowed = LAYERS[layer] | {layer}
    for path in (SRC / layer).glob("*.py"):
        for module in imports(path):
            if module.startswith("spoolmail._"):
                assert module.split(".")[1] in allowed, f"{path.name} imports {module}"


def test_core_touches_no_io_or_clock() -> None:
    for path in (SRC / "_core").glob("*.py"):
        for module in imports(path):
            assert module.split(".")[0] not in CORE_FORBIDDEN, f"{path.name} imports {module}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in {"now", "utcnow", "today"}, (
                    f"{path.name} reads a clock"
                )


def test_only_the_seam_imports_fs() -> None:
    for path in SRC.rglob("*.py"):
        if path.name == "pyfs.py":
            continue
        assert not any(m == "fs" or m.startswith("fs.") for m in imports(path)), path


def test_broken_fs_import_names_the_fix() -> None:
    # As on a new setuptools: pkg_resources cannot be imported. ``import spoolmail`` alone
    # imports nothing (the names are lazy); the Spool needs fs.
    code = "import sys; sys.modules['pkg_resources'] = None; from spoolmail import Spool"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("spoolmail.exceptions.DependencyError:")
    assert "pip install 'setuptools<82'" in last


def test_dependency_error_is_an_import_error() -> None:
    assert issubclass(DependencyError, ImportError)


def _imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    shown = "import sys; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", f"{code}; {shown}"], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_importing_the_package_imports_no_part_of_it() -> None:
    """The names are imported at their first use (PEP 562): ``import spoolmail`` is cheap."""
    loaded = _imported_after("import spoolmail")
    assert not {m for m in loaded if m.startswith("spoolmail.")}, loaded
    assert not {"fs", "dns", "attrs", "importlib.metadata", "pkg_resources"} & loaded


def test_a_name_imports_only_its_module() -> None:
    loaded = _imported_after("from spoolmail import Envelope")
    assert "spoolmail._core.envelope" in loaded
    assert not {"spoolmail._store.spool", "spoolmail._service.service", "fs", "dns"} & loaded


def test_every_exported_name_is_found_where_the_package_says() -> None:
    assert set(spoolmail._ORIGINS) | {"__version__"} == set(spoolmail.__all__)
    assert set(spoolmail.__all__) <= set(dir(spoolmail))
    for name, origin in spoolmail._ORIGINS.items():
        assert getattr(spoolmail, name) is getattr(sys.modules[origin], name), name
    with pytest.raises(AttributeError, match="no_such_name"):
        spoolmail.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_the_version_is_the_installed_distribution_s() -> None:
    from importlib import metadata  # noqa: PLC0415

    assert spoolmail.__version__ == metadata.version("spoolmail")


def test_fs_is_imported_without_pkg_resources() -> None:
    """pkg_resources (0.1 s of CPU) is imported only when a plugin's protocol is asked for:
    fs's own protocols open without it."""
    code = (
        "import tempfile; from spoolmail._store import pyfs; "
        "pyfs.open_fs('mem://').close(); pyfs.open_fs(tempfile.mkdtemp()).close(); "
        "pyfs.open_fs('osfs://' + tempfile.mkdtemp()).close()"
    )
    loaded = _imported_after(code)
    assert "fs" in loaded
    assert "pkg_resources" not in loaded


def test_a_plugin_protocol_asks_pkg_resources() -> None:
    from spoolmail._store import pyfs  # noqa: PLC0415

    with pytest.raises(pyfs.UnsupportedProtocol, match="no-such-plugin"):
        pyfs.open_fs("no-such-plugin://x")
