"""MongoDB update documents, applied in Python: ``$set $unset $inc $push $min $max``.

Fields change in MongoDB's order (by path: names lexicographically, array indexes numerically).
Where MongoDB refuses an update (``$inc`` of a string, ``$push`` onto a non-array, a field inside
a scalar, two operators on one path) :func:`apply_update` raises
:class:`~tensorhub.errors.InvalidQueryError` and leaves the document as it was. The positional
operators (``a.$``, ``a.$[]``, ``a.$[name]``) need the filter's matched element, which an update
here does not know, so they are refused on every backend rather than mis-applied (a ``$unset`` of
``a.$`` would otherwise change nothing and report "not modified").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from tensorhub.errors import InvalidQueryError
from tensorhub.query.values import ARRAY_TYPES, MISSING, compare_values, is_number


def _check_path(op: str, path: str) -> None:
    """Refuse empty components and ``$``-names: the positional operators are not supported."""
    for part in path.split("."):
        if not part:
            raise InvalidQueryError(f"{op} path {path!r} has an empty component")
        if part.startswith("$"):
            raise InvalidQueryError(
                f"{op} path {path!r}: the positional operator {part!r} (and any field name starting with '$') "
                "is not supported in updates; name the array index (e.g. 'a.0') or update the whole array")


_UPDATE_OPERATORS = ("$set", "$unset", "$inc", "$push", "$min", "$max")


def _path_order(path: str) -> list[tuple[int, int, str]]:
    """MongoDB's (5.0+) order of update paths: names lexicographically, array indexes numerically."""
    return [(0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p) for p in path.split(".")]


def validate_update(update: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidQueryError` for an update :func:`apply_update` would refuse whatever the document.

    The MongoDB backends call it too, so an update operator tensorhub does not implement
    (``$rename``, a pipeline...) fails the same way on every backend.
    """
    for path, op, value in _update_steps(update, copy_values=False):
        if op == "$push":
            _push_items(value)


def _update_steps(update: Mapping[str, Any], copy_values: bool = True) -> list[tuple[str, str, Any]]:
    """The ``(path, operator, value)`` steps of an update document, checked, in MongoDB's order."""
    if not isinstance(update, Mapping) or not update or not all(str(k).startswith("$") for k in update):
        raise InvalidQueryError("an update must use operators such as {'$set': {...}}")
    steps: list[tuple[str, str, Any]] = []
    for op, fields in update.items():
        if op not in _UPDATE_OPERATORS:
            raise InvalidQueryError(f"unsupported update operator {op!r}; use $set $unset $inc $push $min $max")
        if not isinstance(fields, Mapping):
            raise InvalidQueryError(f"{op} needs a document such as {{'field': value}}")
        for path in fields:
            if not isinstance(path, str) or not path:
                raise InvalidQueryError(f"{op} needs field paths as non-empty strings, got {path!r}")
            _check_path(op, path)
        steps.extend((path, op, copy.deepcopy(value) if copy_values else value) for path, value in fields.items())
    steps.sort(key=lambda step: _path_order(step[0]))
    for (first, _, _), (second, _, _) in zip(steps, steps[1:]):
        if second == first or second.startswith(first + "."):
            raise InvalidQueryError(f"one update cannot change both {first!r} and {second!r}")
    return steps


def _update_index(part: str) -> int | None:
    return int(part) if part.isascii() and part.isdigit() else None


def _child(node: Any, part: str) -> Any:
    """The value under ``part`` of a dict or list, or ``MISSING``."""
    if isinstance(node, dict):
        return node.get(part, MISSING)
    index = _update_index(part)
    return node[index] if index is not None and index < len(node) else MISSING


def _put(node: Any, part: str, value: Any, path: str) -> None:
    """Set ``part`` of a dict, or an index of a list (padding it with nulls, as MongoDB does)."""
    if isinstance(node, dict):
        node[part] = value
        return
    index = _update_index(part)
    if index is None:
        raise InvalidQueryError(f"cannot update {path!r}: {part!r} is not an index of the array it is in")
    node.extend([None] * (index + 1 - len(node)))
    node[index] = value


def _remove(node: Any, part: str) -> None:
    """``$unset``: drop a field; an array element becomes null (the array keeps its length)."""
    if isinstance(node, dict):
        node.pop(part, None)
        return
    index = _update_index(part)
    if index is not None and index < len(node):
        node[index] = None


def _container(document: dict, path: str, create: bool) -> Any:
    """The dict or list that holds the last component of ``path``, created as needed.

    ``None`` when the path cannot exist and ``create`` is False (``$unset`` is then a no-op).
    """
    node: Any = document
    for part in path.split(".")[:-1]:
        child = _child(node, part)
        if isinstance(child, (dict, list)):
            node = child
            continue
        if not create:
            return None
        if child is not MISSING:
            raise InvalidQueryError(
                f"cannot update {path!r}: {part!r} holds a {type(child).__name__}, which has no fields"
            )
        child = {}
        _put(node, part, child, path)
        node = child
    return node


def _updated(op: str, current: Any, value: Any, path: str) -> Any:
    """The new value of a field under ``$set $inc $push $min $max`` (``current`` may be ``MISSING``)."""
    if op == "$set":
        return value
    if op == "$inc":
        if not is_number(value):
            raise InvalidQueryError(f"$inc needs a number, got {value!r} for {path!r}")
        if current is not MISSING and not is_number(current):
            raise InvalidQueryError(f"cannot $inc {path!r}: it holds a {type(current).__name__}, not a number")
        return value if current is MISSING else current + value
    if op == "$push":
        items = _push_items(value)
        if current is not MISSING and not isinstance(current, list):
            raise InvalidQueryError(f"cannot $push to {path!r}: it holds a {type(current).__name__}, not an array")
        return items if not isinstance(current, list) else current + items
    better = -1 if op == "$min" else 1
    if current is MISSING or compare_values(value, current) == better:
        return value
    return current


def _push_items(value: Any) -> list[Any]:
    """What ``$push`` appends: the value, or the items of ``{"$each": [...]}``."""
    if not (isinstance(value, Mapping) and "$each" in value):
        return [value]
    if set(value) != {"$each"} or not isinstance(value["$each"], ARRAY_TYPES):
        raise InvalidQueryError("$push supports {'$each': [...]} only (no $slice, $sort or $position)")
    return list(value["$each"])


def _apply_step(document: dict, path: str, op: str, value: Any) -> None:
    if path == "_id" or path.startswith("_id."):
        raise InvalidQueryError("the _id of a record cannot be changed")
    container = _container(document, path, create=op != "$unset")
    if container is None:
        return
    leaf = path.split(".")[-1]
    if op == "$unset":
        _remove(container, leaf)
    else:
        _put(container, leaf, _updated(op, _child(container, leaf), value, path), path)


def apply_update(document: dict, update: Mapping[str, Any]) -> dict:
    """Apply a MongoDB update document to ``document`` in place and return it.

    Fields change in MongoDB's order (by path: names lexicographically, array indexes
    numerically), which is the order new fields are added in. Where MongoDB refuses an update
    (``$inc`` of a string, ``$push`` onto a non-array, a field inside a scalar, two operators
    on one path) this raises :class:`InvalidQueryError` and leaves ``document`` as it was.
    """
    work = copy.deepcopy(document)
    for path, op, value in _update_steps(update):
        _apply_step(work, path, op, value)
    document.clear()
    document.update(work)
    return document
