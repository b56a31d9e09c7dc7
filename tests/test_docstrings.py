"""Every public name has a docstring (issue 16): the reference pages are made from them.

The names are those of ``spoolmail.__all__`` and of the public modules (``spoolmail.events``,
``spoolmail.exceptions``, ``spoolmail.testing``); for classes, their public methods and
properties too (not those inherited from the standard library or attrs).
"""

from __future__ import annotations

import enum
import importlib
import inspect
from collections.abc import Iterator

import pytest

import spoolmail

MODULES = ("spoolmail", "spoolmail.events", "spoolmail.exceptions", "spoolmail.testing")


def public_objects() -> Iterator[tuple[str, object]]:
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
        for name in names:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue  # constants and type aliases are described where they are defined
            yield f"{module_name}.{name}", value
            if inspect.isclass(value) and not issubclass(value, enum.Enum):
                yield from members(f"{module_name}.{name}", value)


def members(owner: str, cls: type) -> Iterator[tuple[str, object]]:
    for attribute, value in vars(cls).items():
        if attribute.startswith("_"):
            continue
        if isinstance(value, property):
            yield f"{owner}.{attribute}", value.fget
        elif isinstance(value, staticmethod | classmethod):
            yield f"{owner}.{attribute}", value.__func__
        elif inspect.isfunction(value):
            yield f"{owner}.{attribute}", value


def undocumented() -> list[str]:
    missing = []
    for name, value in public_objects():
        doc = inspect.getdoc(value) if value is not None else None
        own = getattr(value, "__doc__", None)
        if not doc or not own or not own.strip():
            missing.append(name)
    return sorted(set(missing))


def test_every_public_name_has_a_docstring() -> None:
    assert undocumented() == []


def test_the_check_sees_a_missing_docstring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spoolmail.Spool.close, "__doc__", None)
    assert "spoolmail.Spool.close" in undocumented()
