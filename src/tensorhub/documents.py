"""BSON encoding of records, shared by every backend that stores documents as bytes.

Records are BSON everywhere (MongoDB natively; SQLite and S3 store the encoded bytes), so
a record round-trips with the same types on every backend: timezone-aware UTC datetimes at
millisecond precision, ObjectIds, ints kept apart from floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bson
from bson.codec_options import CodecOptions

from tensorhub.errors import SerializationError

Document = dict[str, Any]
CODEC_OPTIONS = CodecOptions(tz_aware=True)


def encode_document(document: Mapping[str, Any]) -> bytes:
    """BSON-encode a record, turning bson's errors into a clear :class:`SerializationError`."""
    try:
        return bson.encode(document)
    except (bson.errors.InvalidDocument, bson.errors.InvalidStringData, OverflowError, TypeError) as exc:
        raise SerializationError(
            f"cannot store this value in a record: {exc}. Record fields must be JSON-like "
            "(str, int, float, bool, None, datetime, lists, dicts with str keys); "
            "put arrays and other large values in a dataset."
        ) from exc


def decode_document(data: bytes) -> Document:
    """Decode BSON bytes into a record with timezone-aware datetimes."""
    return bson.decode(data, codec_options=CODEC_OPTIONS)


def normalize_document(document: Mapping[str, Any]) -> Document:
    """A record as every backend will return it (BSON round trip: ms datetimes, tuples -> lists).

    The repository stores this normalised form so the caller's view of a record and the
    stored one agree on every backend, and a value BSON cannot hold fails before any write.
    """
    return decode_document(encode_document(document))
