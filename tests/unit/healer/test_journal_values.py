"""What the journal stores of a step's result: every value PostgreSQL's text and jsonb hold."""

from __future__ import annotations

import json

from healer.journal.values import storable


def test_nul_is_shown_as_an_escape_in_strings_keys_and_nested_values() -> None:
    value = {"a\x00": ["x\x00y", {"k": "\x00"}], "n": 1, "t": (True, None)}
    assert storable(value) == {
        "a\\u0000": ["x\\u0000y", {"k": "\\u0000"}],
        "n": 1,
        "t": [True, None],
    }


def test_unpaired_surrogates_and_non_finite_numbers_become_text() -> None:
    assert storable(["\udcff", float("nan"), float("inf"), 1.5]) == ["\\udcff", "nan", "inf", 1.5]
    json.dumps(storable({"x": float("-inf")}), allow_nan=False)


def test_ordinary_text_is_unchanged() -> None:
    text = "déjà vu \u202e\n\t"
    assert storable(text) is text
