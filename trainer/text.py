"""Safe text and JSON values for every string a run carries (names, tags, paths, option keys; docs/limits.md).

A run's strings end up in a database column (PostgreSQL refuses NUL, neither driver encodes a lone UTF-16
surrogate), in JSON answers and in file names, so each one is checked once, where it enters: printable (no control
characters, NUL included), no lone surrogates, and at most as long as the column or file name that holds it.
The same rules give the same answer on SQLite and PostgreSQL: a 422 naming the field, never a 500 or half a row.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Any

from annotated_types import Len
from pydantic import AfterValidator

MAX_JSON_DEPTH = 8  # nesting of free-form option and override values
MAX_JSON_ITEMS = 1000  # keys + items in one free-form value


def check_text(value: str) -> str:
    """`value` if it is printable text; ValueError naming the first bad character otherwise."""
    for i, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cs":
            raise ValueError(f"character {i} is a lone UTF-16 surrogate (U+{ord(char):04X}): not valid text")
        if category == "Cc":
            raise ValueError(f"character {i} is a control character (U+{ord(char):04X}); only printable text")
    return value


def Text(max_length: int, min_length: int = 0) -> Any:  # noqa: N802 - a type factory, read like a type
    """`str` of printable text (check_text) of `min_length` to `max_length` characters.

    Constraints as annotated_types (not pydantic's Field), so the type also serves FastAPI query and path parameters.
    """
    return Annotated[str, Len(min_length, max_length), AfterValidator(check_text)]


def check_json(value: Any, *, depth: int = 0, budget: list[int] | None = None) -> Any:
    """`value` if it is a JSON value a database stores alike everywhere: text keys and strings (check_text), finite
    numbers, at most MAX_JSON_DEPTH deep and MAX_JSON_ITEMS entries; ValueError naming the path otherwise."""
    budget = budget if budget is not None else [MAX_JSON_ITEMS]
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if isinstance(value, dict | list):
        budget[0] -= len(value)
        if budget[0] < 0:
            raise ValueError(f"more than {MAX_JSON_ITEMS} entries")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            try:
                if isinstance(key, str):
                    check_text(key)
                check_json(item, depth=depth + 1, budget=budget)
            except ValueError as err:
                raise ValueError(f"at {key!r}: {err}"[:500]) from None
    return value


JsonDict = Annotated[dict[str, Any], AfterValidator(check_json)]
