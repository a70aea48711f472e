"""BSON encoding of records, shared by every backend that stores documents as bytes.

Records are BSON everywhere (MongoDB natively; SQLite and S3 store the encoded bytes), so
a record round-trips with the same types on every backend: timezone-aware UTC datetimes at
millisecond precision, ObjectIds, ints kept apart from floats.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import bson
import numpy as np
from bson import Int64, ObjectId
from bson.codec_options import CodecOptions, TypeRegistry
from bson.tz_util import utc

from tensorhub.errors import CorruptDataError, SerializationError

Document = dict[str, Any]
CODEC_OPTIONS: CodecOptions[Document] = CodecOptions(tz_aware=True)
#: how deeply dicts and lists may nest in a record, and containers in a dataset or parameter set
#: (:func:`tensorhub.structure.flatten`). Far below what breaks a reader (BSON decoders and
#: Python's recursion give out near 1,000 levels; a dataset's spec doubles its nesting), so
#: what is saved can always be read back, on every backend.
MAX_DEPTH = 100


def check_depth(value: Any, what: str = "a record") -> None:
    """Refuse ``value`` if its dicts, lists and tuples nest more than :data:`MAX_DEPTH` levels.

    Iterative, so a structure that contains itself fails here too, not with a RecursionError.
    """
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > MAX_DEPTH:
            raise SerializationError(
                f"{what} nests dicts and lists more than {MAX_DEPTH} levels deep (or contains itself); "
                "such a value could not be read back. Store the deep part flatter, e.g. as JSON text")
        stack.extend((child, depth + 1) for child in children)


def _plain_number(value: Any) -> Any:
    """numpy's bool, int and float scalars as Python's (a metric is often an ``np.float32``)."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    return value  # anything else stays unencodable: bson raises InvalidDocument


def plain_numbers(value: Any) -> Any:
    """``value`` (a query: dicts, lists, tuples) with numpy's number scalars as Python's, so a query
    means the same on every backend (pymongo cannot encode them, the matcher cannot compare them)."""
    if isinstance(value, Mapping):
        return {k: plain_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_numbers(v) for v in value]
    return _plain_number(value)


#: how records are encoded: as BSON, with numpy's number scalars taken as plain numbers
ENCODE_OPTIONS: CodecOptions[Document] = CodecOptions(type_registry=TypeRegistry(fallback_encoder=_plain_number))


def encode_document(document: Mapping[str, Any]) -> bytes:
    """BSON-encode a record, turning bson's errors into a clear :class:`SerializationError`."""
    try:
        return bson.encode(document, codec_options=ENCODE_OPTIONS)
    except (bson.errors.InvalidDocument, bson.errors.InvalidStringData, OverflowError, TypeError,
            UnicodeEncodeError) as exc:
        raise SerializationError(
            f"cannot store this value in a record: {exc}. Record fields must be JSON-like "
            "(str, int, float, bool, None, datetime, lists, dicts with str keys); "
            "put arrays and other large values in a dataset."
        ) from exc


def decode_document(data: bytes) -> Document:
    """Decode BSON bytes into a record with timezone-aware datetimes.

    Damaged bytes raise :class:`CorruptDataError` (never a raw bson error); a caller that knows
    which record they are names it.
    """
    try:
        return bson.decode(data, codec_options=CODEC_OPTIONS)
    except (bson.errors.BSONError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CorruptDataError(f"a stored record is damaged and cannot be read ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from exc


def normalize_document(document: Mapping[str, Any]) -> Document:
    """A record as every backend will return it (BSON round trip: ms datetimes, tuples -> lists).

    The repository stores this normalised form so the caller's view of a record and the
    stored one agree on every backend, and a value BSON cannot hold fails before any write.
    Flat records of plain values (a log row: str, int, float, bool, None, ObjectId, UTC
    datetimes at ms precision) are already in that form and skip the round trip. Records
    nested deeper than :data:`MAX_DEPTH` are refused (:class:`SerializationError`).
    """
    plain = _plain_copy(document)
    if plain is not None:
        return plain
    check_depth(document)
    return decode_document(encode_document(document))


_INT32 = range(-(1 << 31), 1 << 31)
_INT64 = range(-(1 << 63), 1 << 63)
_SAME_AFTER_ROUND_TRIP = frozenset({float, bool, type(None), ObjectId})


def _plain_copy(document: Mapping[str, Any]) -> Document | None:
    """``document`` as its BSON round trip would return it, or None if that needs the round trip."""
    copy: Document = {}
    for key, value in document.items():
        if type(key) is not str or not key.isascii() or "\x00" in key:
            return None
        kind = type(value)
        if kind is str:
            if not value.isascii():  # non-ASCII text may not be valid UTF-8 (lone surrogates)
                return None
        elif kind is int:
            if value not in _INT32:
                if value not in _INT64:
                    return None
                value = Int64(value)  # as BSON decodes a 64-bit int
        elif kind is dt.datetime:
            if value.tzinfo is None or value.utcoffset() or value.microsecond % 1000:
                return None
            value = value.replace(tzinfo=utc)
        elif kind not in _SAME_AFTER_ROUND_TRIP:
            return None
        copy[key] = value
    return copy
