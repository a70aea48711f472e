"""Dotted paths, walked the way MongoDB's matcher walks them.

A path such as ``"a.b"`` reaches every ``b`` inside ``a``, through arrays of documents too; a
numeric component (``"a.0"``) also picks an element out of an array. Sorting walks paths
differently (as the index key generator does): see :mod:`tensorhub.query.sort`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tensorhub.query.values import ARRAY_TYPES, MISSING

#: What a dotted path reaches: ``(value, traverse)`` pairs. ``traverse`` is False for an array
#: that a numeric path component picked out of an outer array: conditions compare it whole.
Reached = list[tuple[Any, bool]]


def resolve(value: Any, parts: Sequence[str]) -> Reached:
    """Every value a dotted path reaches, walked the way MongoDB's matcher walks it.

    A path that runs into a scalar or a missing field reaches ``MISSING``. Inside an array only
    sub-documents, and the element a numeric component names, carry the path on: ``"a.b"``
    reaches nothing at all in ``{"a": [1, 2]}``, not even ``MISSING``, so ``{"a.b": None}``
    does not match it (while it does match ``{"a": 1}``).
    """
    if not parts:
        return [(value, True)]
    if isinstance(value, Mapping):
        return resolve(value[parts[0]], parts[1:]) if parts[0] in value else [(MISSING, True)]
    if isinstance(value, ARRAY_TYPES):
        return _resolve_in_array(value, parts)
    return [(MISSING, True)]


def _resolve_in_array(array: Sequence[Any], parts: Sequence[str]) -> Reached:
    """The path continued through each sub-document of ``array``, and through the element at
    the index ``parts[0]`` names (``"a.0"``), which is reached as it is, arrays not opened."""
    head, rest = parts[0], parts[1:]
    found: Reached = []
    for index, element in enumerate(array):
        if isinstance(element, Mapping):
            found.extend(resolve(element, parts))
        if head != str(index):
            continue
        if not rest:
            found.append((element, False))
        elif isinstance(element, (Mapping, *ARRAY_TYPES)):
            found.extend(resolve(element, rest))
    return found


def expand(values: Reached) -> list[Any]:
    """The candidates a condition tests: each value, and each element of an array value.

    One level only (``[[1]]`` offers ``[1]``, not ``1``), and not into an array a numeric path
    component picked out.
    """
    out: list[Any] = []
    for v, traverse in values:
        out.append(v)
        if traverse and isinstance(v, ARRAY_TYPES):
            out.extend(v)
    return out


def array_index(part: str, array: Sequence[Any]) -> int | None:
    """The index ``part`` names in ``array``: ``"1"`` does, ``"01"``, ``"x"`` and ``"9"`` (too far) do not."""
    if part.isascii() and part.isdigit() and str(int(part)) == part and int(part) < len(array):
        return int(part)
    return None
