"""``_core.choices``: an enum setting given as its member or by its value, and nothing else."""

from __future__ import annotations

import enum
import re

import pytest

from spoolmail._core.choices import member_named
from spoolmail.exceptions import ConfigurationError


class Colour(enum.Enum):
    RED = "red"
    DARK_BLUE = "dark-blue"


class Other(enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("given", "member"),
    [
        (Colour.RED, Colour.RED),
        ("red", Colour.RED),
        (" RED\t", Colour.RED),
        ("Dark-Blue", Colour.DARK_BLUE),
    ],
)
def test_a_member_or_its_value_in_any_case(given: object, member: Colour) -> None:
    assert member_named(Colour, given, "the colour") is member


@pytest.mark.parametrize("given", ["green", "RED_", "DARK_BLUE", "", None, True, 1, Other.RED])
def test_anything_else_names_the_setting_and_the_choices(given: object) -> None:
    """A member of another enum with the same value is no member either: its identity is what
    the code compares."""
    said = f"the colour is one of 'red', 'dark-blue', not {given!r}"
    with pytest.raises(ConfigurationError, match=re.escape(said)):
        member_named(Colour, given, "the colour")
