"""Nested structures of arrays <-> a JSON spec plus a flat list of leaves.

Datasets and parameter-set models are numpy arrays inside lists, tuples and dicts, mixed with
JSON values. :func:`flatten` turns such a structure into a JSON-able *spec* (the shape of the
container tree, with dtype and shape of every array) and the list of arrays to store as blobs;
:func:`unflatten` rebuilds it. Anything else is refused with a clear error unless the caller
passed ``allow_pickle=True``: a shared store must not run code on whoever loads from it.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tensorhub.documents import MAX_DEPTH
from tensorhub.errors import CorruptDataError, SerializationError

_JSON_SCALARS = (str, int, float, bool, type(None))


@dataclass
class Flattened:
    """A structure taken apart: ``spec`` (JSON-able) and the leaves it refers to by index."""

    spec: Any
    arrays: list[np.ndarray] = field(default_factory=list)
    pickles: list[bytes] = field(default_factory=list)


def _check_array(array: np.ndarray, path: str) -> None:
    if array.dtype.hasobject:
        raise SerializationError(
            f"{path}: arrays of Python objects (dtype=object) cannot be stored safely; convert to a numeric "
            "or string dtype, or pass allow_pickle=True (loading will then need allow_pickle=True too)"
        )
    if array.dtype.kind == "V" and array.dtype.fields is None:
        raise SerializationError(f"{path}: raw void arrays cannot be stored; use a numeric or structured dtype")


def flatten(value: Any, allow_pickle: bool = False, root: str = "dataset") -> Flattened:
    """Take a nested structure apart into a spec and its arrays (see the module docstring).

    Errors name the offending leaf by its path from ``root`` (``dataset[1]['x']``). Containers
    nested more than :data:`~tensorhub.documents.MAX_DEPTH` levels deep are refused: their spec
    could not be read back.
    """
    out = Flattened(spec=None)

    def walk(node: Any, path: str, depth: int = 1) -> Any:
        if depth > MAX_DEPTH and isinstance(node, (list, tuple, dict)):
            raise SerializationError(f"{root} nests lists, tuples and dicts more than {MAX_DEPTH} levels deep (or "
                                     "contains itself); such a structure could not be read back. Store it flatter")
        if isinstance(node, np.ma.MaskedArray):  # np.asarray would keep the data and drop the mask
            if allow_pickle:
                return pickle_leaf(node)
            raise SerializationError(
                f"{path}: a masked array would lose its mask; store the data and the mask as two arrays "
                "(np.ma.getdata(a), np.ma.getmaskarray(a)), or pass allow_pickle=True (loading will need it too)"
            )
        if isinstance(node, np.ndarray) or isinstance(node, np.generic):
            array = np.asarray(node)
            if array.dtype.hasobject and allow_pickle:
                return pickle_leaf(node)
            _check_array(array, path)
            out.arrays.append(array)
            kind = "scalar" if isinstance(node, np.generic) else "array"
            return {"t": kind, "i": len(out.arrays) - 1, "dtype": array.dtype.str, "shape": list(array.shape)}
        if isinstance(node, bool) or node is None or isinstance(node, (str, int)):
            return {"t": "value", "v": node}
        if isinstance(node, float):
            return {"t": "value", "v": node} if math.isfinite(node) else {"t": "float", "v": repr(node)}
        if isinstance(node, (list, tuple)):
            # a tuple subclass (namedtuple) comes back as a plain tuple: its class would need pickle
            return {"t": "tuple" if isinstance(node, tuple) else "list",
                    "v": [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node)]}
        if isinstance(node, dict):
            bad = [k for k in node if not isinstance(k, str)]
            if bad and not allow_pickle:
                raise SerializationError(f"{path}: dict keys must be strings, got {bad[0]!r}; "
                                         "convert the keys or pass allow_pickle=True")
            if bad:
                return pickle_leaf(node)
            return {"t": "dict", "k": list(node), "v": [walk(v, f"{path}[{k!r}]", depth + 1) for k, v in node.items()]}
        if allow_pickle:
            return pickle_leaf(node)
        raise SerializationError(
            f"{path}: cannot store a {type(node).__module__}.{type(node).__qualname__} safely; "
            "use numpy arrays, lists, tuples, dicts and JSON values, or pass allow_pickle=True "
            "(whoever loads it must pass allow_pickle=True too)"
        )

    def pickle_leaf(node: Any) -> dict:
        out.pickles.append(pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL))
        return {"t": "pickle", "i": len(out.pickles) - 1}

    out.spec = walk(value, root)
    return out


def unflatten(
    spec: Any,
    load_array: Callable[[int, dict], Any],
    load_pickle: Callable[[int], bytes],
    allow_pickle: bool = False,
) -> Any:
    """Rebuild a structure from its spec; leaves come from ``load_array(i, node)``/``load_pickle(i)``."""
    # a module-level recursion, not a nested closure: a self-referencing closure is a reference
    # cycle that would keep every batch of a stream alive until the garbage collector runs
    try:
        return _build(spec, load_array, load_pickle, allow_pickle)
    except RecursionError as exc:  # only a record not written by flatten() nests this deep
        raise CorruptDataError(f"a stored structure nests deeper than tensorhub writes ({MAX_DEPTH} levels); "
                               "the record was not written by tensorhub or is damaged") from exc


def _build(node: dict, load_array: Callable[[int, dict], Any], load_pickle: Callable[[int], bytes],
           allow_pickle: bool) -> Any:
    kind = node["t"]
    if kind == "value":
        return node["v"]
    if kind == "float":
        return float(node["v"])
    if kind == "array":
        return load_array(node["i"], node)
    if kind == "scalar":
        return np.asarray(load_array(node["i"], node))[()]
    if kind in ("list", "tuple", "dict"):
        items = [_build(n, load_array, load_pickle, allow_pickle) for n in node["v"]]
        return {"list": list, "tuple": tuple}[kind](items) if kind != "dict" else dict(zip(node["k"], items))
    if kind == "pickle":
        if not allow_pickle:
            raise SerializationError(
                "this record holds pickled Python objects; loading them can run arbitrary code. "
                "Pass allow_pickle=True only if you trust whoever saved it"
            )
        return pickle.loads(load_pickle(node["i"]))
    raise SerializationError(f"unknown node type {kind!r} in a stored structure; upgrade tensorhub")


def dumps_spec(spec: Any) -> str:
    """The spec as compact JSON text (stored in the record; MongoDB keys stay plain)."""
    return json.dumps(spec, separators=(",", ":"))


def loads_spec(text: str) -> Any:
    """A spec from its JSON text; damaged or hand-made text that cannot be parsed is :class:`CorruptDataError`."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CorruptDataError(f"a stored structure spec cannot be read ({type(exc).__name__}); the record is "
                               "damaged or was not written by tensorhub") from exc


def array_paths(spec: Any, prefix: str = "") -> list[tuple[str, dict]]:
    """``(path, node)`` for every array in a spec, e.g. ``("[0]", {...})``, ``("['x']", {...})``."""
    kind = spec["t"]
    if kind in ("array", "scalar"):
        return [(prefix or "[]", spec)]
    if kind in ("list", "tuple"):
        return [p for i, n in enumerate(spec["v"]) for p in array_paths(n, f"{prefix}[{i}]")]
    if kind == "dict":
        return [p for k, n in zip(spec["k"], spec["v"]) for p in array_paths(n, f"{prefix}[{k!r}]")]
    return []
