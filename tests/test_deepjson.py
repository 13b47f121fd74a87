"""JSON too deep for json.loads is read without recursion, exactly as json.loads reads the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.deepjson import KEEP_DEPTH, loads_without_recursion
from gateway.models import loads_json, row_problem

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


@given(json_values)
def test_it_reads_what_json_loads_reads(value: Any) -> None:
    text = json.dumps(value)
    assert loads_without_recursion(text) == json.loads(text)


def test_big_integers_and_duplicate_keys_read_as_json_loads_reads_them() -> None:
    text = '{"a": 123456789012345678901234567890, "a": 2, "b": 1e400, "c": -0.0, "d": "\\ud800"}'
    assert loads_without_recursion(text) == json.loads(text)


def test_a_row_nested_5000_deep_is_refused_alone_and_its_neighbours_are_read() -> None:
    text = json.dumps([{"id": 1}, "X", {"id": 3}]).replace('"X"', '{"deep": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(RecursionError):
        json.loads(text)
    first, deep, third = loads_json(text)
    assert first == {"id": 1} and third == {"id": 3}
    assert row_problem(deep) == ("invalid_depth", "rows may nest at most 16 levels")
    depth, item = 0, deep["deep"]
    while item:
        item, depth = item[0], depth + 1
    assert depth == KEEP_DEPTH - 2  # deeper containers are kept as []


@pytest.mark.parametrize("text", ["[" * 100_000, "[NaN]", "[1] x", '{"a": 1,}', "[" * 5000 + "]" * 4999])
def test_what_is_not_json_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        loads_without_recursion(text)
