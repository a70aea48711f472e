"""Zone maps of the S3 index: per-segment summaries of fields, and whether a filter can skip a segment.

Job: the pruning side of the index (design in :mod:`tensorhub.backends.s3._index`). A
:class:`Zone` summarises, per field, the values a segment's documents hold at the top level: all
distinct values when there are at most :data:`ZONE_DISTINCT` of them, else their minimum and
maximum in MongoDB's order (:func:`tensorhub.query.compare_values`), plus whether some document
lacks the field. Only scalars are summarised (null, booleans, numbers, strings, ObjectIds,
datetimes): a field that holds an array, a document or any other value in some document of the
segment is left out, so nothing can be pruned on it. :func:`may_match` answers "can any document
with these values match this filter?" conservatively: with the distinct values it asks the
evaluator itself (:func:`tensorhub.query.matches` on each value), so it is exact for any condition
on a top-level field; with a range it decides equality, ``$in`` and ``$gt``/``$gte``/``$lt``/``$lte``
only, and anything else (dotted paths, ``$nor``, ``$expr``, ...) is read in full.

A segment's zone is encoded into its object key (so a LIST says which segments to GET, with no
request per segment); a state's zone (the exact summary of the segment's documents as the state
resolves them) is in the state's header.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from bson import ObjectId
from bson.errors import BSONError

from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import CorruptDataError
from tensorhub.query import compare_values, matches

#: a field with at most this many distinct values keeps them all (exact pruning), else min/max
ZONE_DISTINCT = 8
#: characters of a segment key given to its zone (base64 of BSON) at most; S3 keys end at 1,024 bytes
ZONE_KEY_CHARS = 600
#: strings longer than this are not summarised (they would crowd the key)
ZONE_MAX_STRING = 96
#: at most this many fields of a segment are considered (declared ones first, then in order of appearance)
ZONE_MAX_FIELDS = 64
#: marks the zone part of a segment id: ``<oid>.z<base64>[.o<first>.merged]``
ZONE_TAG = ".z"

_SCALARS = (type(None), bool, int, float, str, ObjectId, datetime)
_ORDER = functools.cmp_to_key(compare_values)


@dataclass(frozen=True)
class FieldZone:
    """The values one field holds in a segment: ``values`` (all distinct ones) or ``lo``/``hi``."""

    values: tuple[Any, ...] | None
    lo: Any
    hi: Any
    present: bool  # some document holds the field
    missing: bool  # some document lacks the field

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"m": True} if self.missing else {}
        if self.values is not None:
            doc["v"] = list(self.values)
        elif self.present:
            doc["lo"], doc["hi"] = self.lo, self.hi
        return doc

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> FieldZone:
        missing = bool(doc.get("m"))
        if "v" in doc:
            values = tuple(doc["v"])
            return cls(values, None, None, bool(values), missing)
        return cls(None, doc["lo"], doc["hi"], True, missing)


@dataclass(frozen=True)
class Zone:
    """Per-field summaries of a segment's documents (a field not listed: unknown, never pruned on)."""

    fields: Mapping[str, FieldZone]

    def to_doc(self) -> dict[str, Any]:
        return {name: zone.to_doc() for name, zone in self.fields.items()}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Zone:
        return cls({str(name): FieldZone.from_doc(zone) for name, zone in doc.items()})


def _value_key(value: Any) -> Any:
    """Identity of a value for the distinct set: type-exact (1, 1.0, True and Int64(1) stay apart)."""
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def _summarisable(value: Any) -> bool:
    return isinstance(value, _SCALARS) and not (isinstance(value, str) and len(value) > ZONE_MAX_STRING)


def _bounds(values: list[Any]) -> tuple[Any, Any]:
    """Min and max in MongoDB's order (native comparison when every value has one plain type)."""
    kinds = {type(v) for v in values}
    if len(kinds) == 1 and next(iter(kinds)) in (int, str, ObjectId) or (
            kinds == {float} and not any(math.isnan(v) for v in values)) or (
            kinds == {datetime} and all(v.tzinfo is not None for v in values)):
        return min(values), max(values)  # str: code point order = UTF-8 byte order, as compare_values
    key = functools.cmp_to_key(compare_values)
    return min(values, key=key), max(values, key=key)


def field_zone(docs: Iterable[Mapping[str, Any]], name: str) -> FieldZone | None:
    """The summary of ``name`` over ``docs``, or None if some document holds a value we do not summarise."""
    distinct: dict[Any, Any] = {}
    values: list[Any] = []
    missing = False
    for doc in docs:
        if name not in doc:
            missing = True
            continue
        value = doc[name]
        if not _summarisable(value):
            return None
        values.append(value)
        if len(distinct) <= ZONE_DISTINCT:
            distinct.setdefault(_value_key(value), value)
    if len(distinct) <= ZONE_DISTINCT:
        return FieldZone(tuple(distinct.values()), None, None, bool(values), missing)
    lo, hi = _bounds(values)
    return FieldZone(None, lo, hi, True, missing)


def build_zone(docs: Sequence[Mapping[str, Any]], first: Sequence[str] = (), only: Sequence[str] | None = None,
               budget: int | None = None) -> Zone:
    """The zone of ``docs``: ``_id`` and the ``first`` fields (declared indexes) before the others.

    ``only``: summarise exactly these fields (a state's zone keeps its segment's fields). ``budget``:
    the most base64 characters the encoded zone may take; fields are then added cheapest first
    after ``_id`` and ``first`` while they fit.
    """
    if only is not None:
        names = list(only)
    else:
        seen: dict[str, None] = {"_id": None}
        seen.update((name, None) for name in first if "." not in name and not name.startswith("$"))
        for doc in docs:
            seen.update((name, None) for name in doc)
        names = list(seen)
    zones = {name: z for name in names[:ZONE_MAX_FIELDS] if (z := field_zone(docs, name)) is not None}
    if budget is None:
        return Zone(zones)
    # a BSON element is its type byte, its name and a NUL, then the value: sizes add up exactly
    sizes = {n: 2 + len(n.encode("utf-8")) + len(encode_document(z.to_doc())) for n, z in zones.items()}
    priority = [n for n in dict.fromkeys(["_id", *first]) if n in zones]
    rest = sorted((n for n in zones if n not in priority), key=lambda n: (sizes[n], n))
    kept: dict[str, FieldZone] = {}
    total = 5  # the document's length and its final NUL
    for name in [*priority, *rest]:
        if 4 * (total + sizes[name]) <= 3 * budget:  # base64: 4 characters per 3 bytes
            kept[name] = zones[name]
            total += sizes[name]
    return Zone(kept)


def encode_zone(zone: Zone) -> str:
    """The zone as key-safe text (base64url of BSON, no padding)."""
    return base64.urlsafe_b64encode(encode_document(zone.to_doc())).rstrip(b"=").decode("ascii")


@functools.lru_cache(maxsize=65536)
def sid_zone(sid: str) -> Zone | None:
    """The zone encoded in a segment id, or None (a segment written before zones, or unreadable)."""
    for part in sid.split(".")[1:]:
        if part.startswith("z"):
            text = part[1:]
            try:
                data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
                return Zone.from_doc(decode_document(data))
            except (binascii.Error, BSONError, CorruptDataError, ValueError, KeyError, TypeError):
                return None  # an altered key: read the segment, never trust a summary we cannot parse
    return None


def sid_order(sid: str) -> str | None:
    """The order key a merged segment's id carries (its oldest source's), if any."""
    for part in sid.split(".")[1:]:
        if part.startswith("o") and len(part) == 25:
            return part[1:]
    return None


# ------------------------------------------------------------------------------ pruning
_RANGE_OPS = {"$gt": lambda c: c > 0, "$gte": lambda c: c >= 0, "$lt": lambda c: c < 0, "$lte": lambda c: c <= 0}


def may_match(zone: Zone | None, filter: Mapping[str, Any], memo: dict[int, Any] | None = None) -> bool:
    """Whether a segment summarised by ``zone`` can hold a document matching ``filter`` (True when unsure).

    ``memo``: one dict per query, shared by the calls for its segments (a long ``$in`` is sorted once).
    """
    if zone is None or not zone.fields or not isinstance(filter, Mapping):
        return True
    try:
        return _may_match(zone, filter, {} if memo is None else memo)
    except Exception:  # noqa: BLE001 - a malformed filter: read the segment, the evaluator raises the error
        return True


def _may_match(zone: Zone, filter: Mapping[str, Any], memo: dict[int, Any]) -> bool:
    for key, condition in filter.items():
        if key == "$and" and isinstance(condition, (list, tuple)):
            if not all(_may_match(zone, sub, memo) for sub in condition if isinstance(sub, Mapping)):
                return False
        elif key == "$or" and isinstance(condition, (list, tuple)) and condition:
            if all(isinstance(sub, Mapping) for sub in condition) and not any(
                    _may_match(zone, sub, memo) for sub in condition):
                return False
        elif isinstance(key, str) and not key.startswith("$") and key in zone.fields:
            if not _field_may_match(zone.fields[key], key, condition, memo):
                return False
    return True


class _InPlan(NamedTuple):
    exact: frozenset[Any] | None  # type-exact keys, when every value is a string or an ObjectId
    ordered: list[Any]  # the summarisable values, sorted in MongoDB's order (cmp_to_key wrappers)
    unsure: bool  # some value is not summarisable (a regex, a document...)
    has_null: bool


def _in_plan(values: Sequence[Any], memo: dict[int, Any]) -> _InPlan:
    plan = memo.get(id(values))
    if plan is None:
        simple = all(isinstance(v, (str, ObjectId)) for v in values)
        plain = [v for v in values if _summarisable(v)]
        plan = _InPlan(frozenset(_value_key(v) for v in values) if simple else None,
                       sorted(_ORDER(v) for v in plain), len(plain) != len(values),
                       any(v is None for v in plain))
        memo[id(values)] = plan
    return cast(_InPlan, plan)


def _field_may_match(fz: FieldZone, name: str, condition: Any, memo: dict[int, Any]) -> bool:
    single_in = (isinstance(condition, Mapping) and len(condition) == 1 and "$in" in condition
                 and isinstance(condition["$in"], (list, tuple)))
    if fz.values is not None:  # exact: ask the evaluator about each value the segment holds
        if single_in:
            plan = _in_plan(condition["$in"], memo)
            if plan.exact is not None:  # (strings and ObjectIds equal only their own type)
                return any(_value_key(v) in plan.exact for v in fz.values)
        if fz.missing and matches({}, {name: condition}):
            return True
        return any(matches({name: v}, {name: condition}) for v in fz.values)
    if single_in:
        return _in_may_match(fz, _in_plan(condition["$in"], memo))
    if isinstance(condition, Mapping) and condition and all(isinstance(k, str) and k.startswith("$")
                                                            for k in condition):
        for op, operand in condition.items():
            if op == "$eq" and not _value_may_match(fz, operand):
                return False
            if op == "$in" and isinstance(operand, (list, tuple)) and not _in_may_match(fz, _in_plan(operand, memo)):
                return False
            if op in _RANGE_OPS and _summarisable(operand):
                if operand is None and op in ("$gte", "$lte") and fz.missing:
                    continue
                bound = fz.hi if op in ("$gt", "$gte") else fz.lo
                if not _RANGE_OPS[op](compare_values(bound, operand)):
                    return False
        return True
    return _value_may_match(fz, condition)


def _in_may_match(fz: FieldZone, plan: _InPlan) -> bool:
    """``$in`` against a min/max summary: some listed value within [lo, hi] (or null/missing)."""
    if plan.unsure or (plan.has_null and (fz.missing or (fz.present and fz.lo is None))):
        return True
    if not fz.present or not plan.ordered:
        return False
    i = bisect.bisect_left(plan.ordered, _ORDER(fz.lo))
    return i < len(plan.ordered) and compare_values(plan.ordered[i].obj, fz.hi) <= 0


def _value_may_match(fz: FieldZone, value: Any) -> bool:
    """Equality with ``value`` against a min/max summary (True when unsure: regexes, documents...)."""
    if not _summarisable(value):
        return True
    if value is None:
        return fz.missing or (fz.present and fz.lo is None)
    return fz.present and compare_values(fz.lo, value) <= 0 <= compare_values(fz.hi, value)
