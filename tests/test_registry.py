"""The one registry idiom: decorator or call registration, sorted listing with patterns, errors with close names."""

from __future__ import annotations

import pytest

from irlib.registry import Registry


def test_register_list_get_and_errors() -> None:
    calls = []
    table: Registry[int] = Registry("colour", populate=lambda: calls.append(1))
    table.register("red", 1)

    @table.register("green")
    def green() -> int:
        return 2

    assert table.names() == ["green", "red"] and table.names("g*") == ["green"]
    assert table["red"] == 1 and table.get("green") is green and "red" in table and "blue" not in table
    assert list(table) == ["green", "red"] and len(table) == 2 and table.items() == [("green", green), ("red", 1)]
    assert calls  # populate runs before look-ups (e.g. importing the modules that register themselves)
    with pytest.raises(
        ValueError, match=r"Unknown colour 'gren'. Available colours: green, red. Did you mean 'green'\?"
    ):
        table.get("gren")
    with pytest.raises(ValueError, match="Unknown colour 'blue'. Available colours: green, red.$"):
        table["blue"]
    with pytest.raises(ValueError, match="Colour 'red' is already registered"):
        table.register("red", 3)
    assert Registry("loss", "losses").names() == []
