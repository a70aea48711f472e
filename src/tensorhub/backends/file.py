"""``file://`` backend: the embedded default. An SQLite index beside a directory of blob files.

Layout of a store directory::

    <root>/index.sqlite     documents, BSON-encoded, one table; WAL journal
    <root>/blobs/<key>      one file per blob, written to a temp file then os.replace()d

Several processes on one machine share a store safely: SQLite serialises writers, and
:meth:`SQLiteIndexStore.find_one_and_update` runs inside ``BEGIN IMMEDIATE`` so two
processes can never claim the same task. With ``synchronous=NORMAL`` in WAL mode a
committed write survives a crash of the writing process (not a power cut). Beside each
BSON document a row keeps its top-level scalars as JSON (``fields``); a filter becomes an SQL
expression over them that rules rows out, or in where the answer is certain, and
:mod:`tensorhub.query` decides the rest and sorts.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import bson
from bson import ObjectId
from bson.regex import Regex

from tensorhub.backends.base import BlobStore, Document, IndexStore, SortSpec, Stores
from tensorhub.documents import CODEC_OPTIONS, encode_document
from tensorhub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptDataError,
    DuplicateKeyError,
    InvalidArgumentError,
    NotFoundError,
)
from tensorhub.query import apply_update, matches, regex_budget, sort_documents, validate_filter, validate_update
from tensorhub.redaction import redact_uri


def path_from_uri(uri: str) -> Path:
    """``file:///abs``, ``file://./rel``, ``file://rel`` or a bare path -> a filesystem path."""
    if "://" not in uri:
        return Path(uri).expanduser()
    parts = urlsplit(uri)
    if not parts.netloc + parts.path:
        raise ConfigurationError(f"{redact_uri(uri)!r} names no directory; give the store's path, e.g. file://./tensorhub-data "
                                 "or file:///data/hub")
    return Path(parts.netloc + parts.path).expanduser()


def _ids_in(query: Mapping[str, Any]) -> list[str] | None:
    """The ``_id`` values a filter is restricted to at its top level (equality or ``$in``), if any."""
    if "_id" not in query:
        return None
    condition = query["_id"]
    if isinstance(condition, ObjectId):
        return [str(condition)]
    if isinstance(condition, Mapping) and set(condition) == {"$in"} and isinstance(condition["$in"], list) \
            and all(isinstance(v, ObjectId) for v in condition["$in"]) and len(condition["$in"]) <= 500:
        return [str(v) for v in condition["$in"]]
    return None


# ------------------------------------------------------------------ the ``fields`` column
#
# Each row keeps, beside the BSON document, a JSON object of its top-level scalars that SQL
# filters on (``pushdown``). Rows written in the current layout (2) start with the key "\u0000"
# (no document key can hold a NUL) and list EVERY top-level key `_pushable_key` accepts: a str
# (up to 200 characters, without NUL: SQLite's JSON functions cut text at a NUL), int, finite
# float, bool or None as itself, any other value as ``{}`` ("present, not told"). So in a
# layout-2 row a pushable key that is absent is a missing field. Rows written before (no
# marker) hold only str and int values, an absent key tells nothing, and their text may be
# cut at a NUL. A later layout must keep "a JSON scalar is the field's value" or drop the
# marker, since readers of layout 2 rely on it for any row that starts with it.

_MAX_TEXT = 200
#: 1 for a row written in the current layout, else 0 (never NULL, even when ``fields`` is NULL)
_CURRENT = "(substr(fields, 1, 11) IS '{\"\\u0000\":2')"
_UNSAFE_KEY = re.compile(r'[."\\\x00-\x1f]')


def _pushable_key(key: Any) -> bool:
    """Whether a top-level key goes into ``fields``: one a ``$."key"`` JSON path names exactly.

    Python's JSON encoder (``ensure_ascii=False``) escapes only ``"``, ``\\`` and control
    characters, and SQLite matches path labels against the raw JSON text, so keys with those
    are left out; so are dotted keys, which a filter never names (``"a.b"`` is a path).
    """
    return type(key) is str and not key.startswith("$") and _UNSAFE_KEY.search(key) is None


@functools.lru_cache(maxsize=4096)
def _key_json(key: str) -> str:
    """``,"key":`` for a pushable key, else the empty string (cached: records repeat their keys)."""
    return f",{encode_basestring(key)}:" if _pushable_key(key) else ""


def scalar_fields(document: Mapping[str, Any]) -> str:
    """The ``fields`` JSON of a document (layout 2, see above): what :func:`pushdown` filters on in SQL.

    Written by hand as :class:`json.JSONEncoder` would (``ensure_ascii=False``, no spaces),
    at half its cost: the encoder is rebuilt on every call.
    """
    parts = ['{"\\u0000":2']
    for key, value in document.items():
        name = _key_json(key)
        if not name:
            continue
        kind = type(value)
        if kind is int:
            parts.append(name + int.__repr__(value))
        elif kind is str:
            parts.append(name + (encode_basestring(value) if len(value) <= _MAX_TEXT and "\x00" not in value else "{}"))
        elif kind is float:
            parts.append(name + (float.__repr__(value) if math.isfinite(value) else "{}"))
        elif kind is bool:
            parts.append(name + ("true" if value else "false"))
        elif value is None:
            parts.append(name + "null")
        else:
            parts.append(name + "{}")
    parts.append("}")
    return "".join(parts)


# ------------------------------------------------------------------ filters as SQL
#
# A filter becomes one SQL expression per row with three values: 0 (the row cannot match),
# 2 (it matches: the fields the filter reads are scalars ``fields`` states exactly) and 1 (it
# may: the Python matcher decides). Conditions combine in Kleene's three-valued logic: AND
# is min, OR is max, NOT is 2 - x. Every condition SQL cannot judge is 1, so the rows SQL
# keeps are always a superset of the matches, and a 2 is given only where MongoDB's answer
# for that scalar (or missing field) is certain: floats compare only as a filter (SQLite
# may parse their text a unit in the last place away), as does text in rows of the old layout.

NO, MAYBE, YES = "0", "1", "2"
_JSON_TYPES = ("integer", "real", "text", "true", "false", "null", "object", "array")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_RANGES = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_MAX_IN = 500
#: SQLite's default limit on a statement's parameters before 3.32; a filter needing more is not pushed down
_MAX_PARAMS = 999


def _and(parts: list[str]) -> str:
    parts = [p for p in parts if p != YES]
    if NO in parts:
        return NO
    if not parts:
        return YES
    return parts[0] if len(parts) == 1 else f"min({', '.join(parts)})"


def _or(parts: list[str]) -> str:
    parts = [p for p in parts if p != NO]
    if YES in parts:
        return YES
    if not parts:
        return NO
    return parts[0] if len(parts) == 1 else f"max({', '.join(parts)})"


def _not(part: str) -> str:
    return {NO: YES, YES: NO, MAYBE: MAYBE}.get(part) or f"(2 - {part})"


def _missing(matches: bool) -> str:
    """The value for a field absent from ``fields``: missing (current layout) or untold (old rows)."""
    return f"(1 + {_CURRENT})" if matches else f"(1 - {_CURRENT})"


def _is_number(value: Any) -> bool:
    return (type(value) is int and _INT64_MIN <= value <= _INT64_MAX) or (type(value) is float and math.isfinite(value))


def _text_ok(value: Any) -> bool:
    return type(value) is str and "\x00" not in value


def _margin(bound: float) -> float:
    """How far SQLite's reading of a float's text could at most be from it, many times over."""
    return abs(bound) * 2.0**-40 + 2.0**-1000


def _is_operator_doc(value: Any) -> bool:  # as tensorhub.query reads a condition
    return isinstance(value, Mapping) and bool(value) and all(str(k).startswith("$") for k in value)


class _Pushdown:
    """Builds the three-valued SQL of one filter; ``params`` are its named parameters."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return ":" + name

    def query(self, query: Mapping[str, Any]) -> str:
        parts = []
        for key, condition in query.items():
            if key in ("$and", "$or", "$nor"):
                if not (isinstance(condition, (list, tuple)) and condition
                        and all(isinstance(q, Mapping) for q in condition)):
                    parts.append(MAYBE)  # malformed: the matcher raises
                    continue
                subs = [self.query(q) for q in condition]
                parts.append(_and(subs) if key == "$and" else _or(subs) if key == "$or" else _not(_or(subs)))
            elif key == "$comment":
                continue
            elif isinstance(key, str) and _pushable_key(key):
                parts.append(self.field(key, condition))
            else:
                parts.append(MAYBE)
        return _and(parts)

    def field(self, key: str, condition: Any) -> str:
        if not _is_operator_doc(condition):
            return self.equals(key, condition)
        return _and([self.operator(key, op, arg) for op, arg in condition.items()])

    def operator(self, key: str, op: str, arg: Any) -> str:
        if op == "$eq":
            return self.equals(key, arg)
        if op == "$ne":
            return _not(self.equals(key, arg)) if not isinstance(arg, (re.Pattern, Regex)) else MAYBE
        if op in _RANGES:
            return self.compare(key, op, arg)
        if op in ("$in", "$nin") and isinstance(arg, (list, tuple)):
            hit = self.one_of(key, arg)
            return hit if op == "$in" else _not(hit)
        if op == "$exists" and (type(arg) in (bool, int) or arg is None):
            present = YES if arg else NO
            return self.case(key, {t: present for t in _JSON_TYPES}, _missing(not arg))
        if op == "$not" and _is_operator_doc(arg):
            return _not(self.field(key, arg))
        return MAYBE

    def case(self, key: str, outcome: dict[str, str], missing: str) -> str:
        """``outcome`` by the JSON type of the key's entry in ``fields`` (default 0; ``object``, a
        value not told, 1); ``missing`` when the key is absent. ``$V`` in an outcome is the entry."""
        outcome = {"object": MAYBE, "array": MAYBE, **outcome}
        path = self.param(f'$."{key}"')
        whens = " ".join(f"WHEN '{t}' THEN {outcome.get(t, NO)}" for t in _JSON_TYPES)
        return f"CASE json_type(fields, {path}) {whens} ELSE {missing} END".replace("$V", f"json_extract(fields, {path})")

    def integer(self, op: str, bound: int) -> str:
        """An integer entry compared with an integer ``bound``, exactly."""
        if bound < _INT64_MIN:
            return YES if op in (">", ">=") else NO
        if bound > _INT64_MAX:
            return YES if op in ("<", "<=") else NO
        return f"2 * ($V {op} {self.param(bound)})"

    def real_between(self, low: float, high: float) -> str:
        """A float entry in ``[low, high]`` widened by far more than a parse can be off: a filter only."""
        return f"($V BETWEEN {self.param(low - _margin(low))} AND {self.param(high + _margin(high))})"

    def equals(self, key: str, target: Any) -> str:
        """``{key: target}``: equality, or for None a null or missing field."""
        if target is None:
            return self.case(key, {"null": YES}, _missing(True))
        if type(target) is bool:
            return self.case(key, {"true" if target else "false": YES}, _missing(False))
        if _text_ok(target):
            return self.case(key, {"text": f"(CASE WHEN $V = {self.param(target)} THEN 1 + {_CURRENT} ELSE 0 END)"},
                             _missing(False))
        if _is_number(target):
            integral = type(target) is int or target.is_integer()
            return self.case(key, {"integer": self.integer("=", int(target)) if integral else NO,
                                   "real": self.real_between(float(target), float(target))}, _missing(False))
        return MAYBE

    def one_of(self, key: str, targets: list | tuple) -> str:
        """``$in``: equal to one of ``targets`` (all of simple types, else MAYBE)."""
        if not targets:
            return NO
        if len(targets) > _MAX_IN or not all(t is None or type(t) is bool or _text_ok(t) or _is_number(t)
                                             for t in targets):
            return MAYBE
        numbers = [t for t in targets if _is_number(t)]
        ints = sorted(i for i in {int(t) for t in numbers if type(t) is int or t.is_integer()}
                      if _INT64_MIN <= i <= _INT64_MAX)
        texts = sorted({t for t in targets if type(t) is str})
        outcome = {
            "integer": f"2 * ($V IN ({', '.join(self.param(i) for i in ints)}))" if ints else NO,
            "real": MAYBE if numbers else NO,
            "text": f"(CASE WHEN $V IN ({', '.join(self.param(t) for t in texts)}) THEN 1 + {_CURRENT} ELSE 0 END)"
            if texts else NO,
            "true": YES if any(t is True for t in targets) else NO,
            "false": YES if any(t is False for t in targets) else NO,
            "null": YES if any(t is None for t in targets) else NO,
        }
        return self.case(key, outcome, _missing(any(t is None for t in targets)))

    def compare(self, key: str, op: str, target: Any) -> str:
        """``$gt $gte $lt $lte``: only values of the target's type bracket compare."""
        sql = _RANGES[op]
        if target is None:  # $gte/$lte null match null and missing; $gt/$lt null match nothing
            return self.case(key, {"null": YES}, _missing(True)) if "=" in sql else NO
        if _is_number(target):
            bound = (math.floor(target) if sql in (">", "<=") else math.ceil(target)) if type(target) is float else target
            near = float(target)
            return self.case(key, {"integer": self.integer(sql, bound),
                                   "real": self.real_between(near, math.inf) if ">" in sql
                                   else self.real_between(-math.inf, near)}, _missing(False))
        if _text_ok(target):  # SQLite compares text by bytes: MongoDB's order of UTF-8 strings
            return self.case(key, {"text": f"(CASE WHEN {_CURRENT} THEN 2 * ($V {sql} {self.param(target)}) ELSE 1 END)"},
                             _missing(False))
        return MAYBE


def pushdown(query: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The three-valued SQL expression of a filter over a row's ``fields`` and its parameters.

    0: the row cannot match; 2: it matches; 1: :func:`tensorhub.query.matches` must decide.
    Rows SQL drops (0) never match, so results never change, only the work.
    """
    builder = _Pushdown()
    return builder.query(query), builder.params


#: field names count_by groups by in SQL (spelled into a JSON path as they are)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SQLiteIndexStore(IndexStore):
    """Documents in one SQLite table ``(collection, id, doc, fields)``.

    A query runs as SQL over ``fields`` first (:func:`pushdown`); :mod:`tensorhub.query`
    decides the rows SQL could not, and sorts.
    """

    # an ``_id`` filter is a key lookup, anything else reads every row of the collection (no
    # indexes: create_index is ignored), and count() is a find()
    supports_cheap_count = False
    supports_server_side_indexes = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.uri = redact_uri(f"file://{self.path.parent}")  # shown: a user:password@ path part is hidden
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None  # opened when the file exists or a write creates it
        self._closed = False
        if self.path.exists():  # an existing store's problems (permissions, damage) show at open
            self._ready(create=False)

    def store_exists(self) -> bool:
        """Whether the index file exists: opening a store never creates it, the first write does."""
        return self._conn is not None or self.path.is_file()

    def _ready(self, create: bool) -> bool:
        """Connect (creating the directory and the file when ``create``); False when there is no
        store yet and ``create`` is False: a read of a store that does not exist finds nothing."""
        with self._lock:
            if self._closed:
                raise BackendUnavailableError(f"the store at {self.path} is closed")
            if self._conn is not None:
                return True
            if not create and not self.path.is_file():
                return False
            try:
                if create:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS documents ("
                    " collection TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL, fields TEXT,"
                    " PRIMARY KEY (collection, id))"
                )
                self._add_fields_column(conn)
            except (OSError, sqlite3.Error) as exc:
                raise BackendUnavailableError(f"cannot open the index at {self.path}: {exc}") from exc
            self._conn = conn
            return True

    @staticmethod
    def _add_fields_column(conn: sqlite3.Connection) -> None:
        """Give a table written before the ``fields`` column existed that column (NULL: SQL keeps every row)."""
        if any(column[1] == "fields" for column in conn.execute("PRAGMA table_info(documents)")):
            return
        try:
            conn.execute("ALTER TABLE documents ADD COLUMN fields TEXT")
        except sqlite3.OperationalError:  # another process added it first
            if not any(column[1] == "fields" for column in conn.execute("PRAGMA table_info(documents)")):
                raise

    @contextmanager
    def _transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise BackendUnavailableError(f"the store at {self.path} is closed")
            self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def _scan(self, conn: sqlite3.Connection, collection: str, query: Mapping[str, Any]) -> list[Document]:
        """The matching documents in insertion order: SQL drops the rows :func:`pushdown` rules
        out, the matcher confirms the rows it could not decide."""
        validate_filter(query)  # a malformed filter fails even when SQL leaves no row to match
        expression, params = pushdown(query)
        if expression == NO:
            return []
        ids = _ids_in(query)
        if len(params) + len(ids or ()) >= _MAX_PARAMS:
            expression, params = MAYBE, {}
        params["collection"] = collection
        where = "collection = :collection"
        if ids is not None:  # look records up by primary key instead of scanning the collection
            params.update((f"id{i}", v) for i, v in enumerate(ids))
            where += f" AND id IN ({', '.join(f':id{i}' for i in range(len(ids)))})"
        if expression in (YES, MAYBE):
            sql = f"SELECT doc, {expression}, id FROM documents WHERE {where} ORDER BY rowid"
        else:  # LIMIT -1 keeps SQLite from copying the expression into the outer WHERE: it runs once a row
            sql = (f"SELECT doc, m, i FROM (SELECT rowid AS r, doc, {expression} AS m, id AS i FROM documents"
                   f" WHERE {where} LIMIT -1) WHERE m ORDER BY r")
        rows = conn.execute(sql, params).fetchall()
        try:
            docs = bson.decode_all(b"".join([row[0] for row in rows]), CODEC_OPTIONS)
        except (bson.errors.BSONError, ValueError, TypeError, OverflowError, RecursionError):
            docs = [self._decode_row(collection, row[2], row[0]) for row in rows]  # find the damaged row and name it
        with regex_budget():  # one regex time allowance for the whole scan (SQL never runs a regex)
            return [d for d, (_, sure, _) in zip(docs, rows) if sure == 2 or matches(d, query)]

    def _decode_row(self, collection: str, row_id: str, doc: Any) -> Document:
        """One row's document, or :class:`CorruptDataError` naming the record and how to remove it.

        A damaged row fails every query that reads it (rather than being skipped silently): the
        error names its collection and ``_id``; the repository cannot delete a record it cannot
        read, hence the SQL that removes it.
        """
        try:
            return bson.decode(doc, CODEC_OPTIONS)
        except (bson.errors.BSONError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise CorruptDataError(
                f"record {row_id} of collection {collection!r} in the index {self.path} is damaged and cannot be "
                f"read ({type(exc).__name__}: {str(exc)[:200]}); restore the index from a backup, or remove the "
                f"record with: sqlite3 {self.path} \"DELETE FROM documents WHERE collection = '{collection}' AND "
                f"id = '{row_id}'\"") from exc

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        rows = [(collection, str(d["_id"]), encode_document(d), scalar_fields(d)) for d in documents]
        self._ready(create=True)
        with self._transaction(immediate=True) as conn:
            try:
                conn.executemany("INSERT INTO documents (collection, id, doc, fields) VALUES (?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(f"a record with this _id already exists in {collection}: {exc}") from exc

    def find(
        self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None, limit: int | None = None
    ) -> list[Document]:
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)  # malformed filters fail on every store, even one not created yet
            return []
        with self._transaction() as conn:
            found = self._scan(conn, collection, filter)
        sort_documents(found, sort)
        return found[:limit] if limit else found

    def _write_back(self, conn: sqlite3.Connection, collection: str, documents: list[Document]) -> None:
        conn.executemany(
            "UPDATE documents SET doc = ?, fields = ? WHERE collection = ? AND id = ?",
            [(encode_document(d), scalar_fields(d), collection, str(d["_id"])) for d in documents],
        )

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        validate_update(update)  # fails the same when nothing matches
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)
            return 0
        with self._transaction(immediate=True) as conn:
            found = [apply_update(d, update) for d in self._scan(conn, collection, filter)]
            self._write_back(conn, collection, found)
        return len(found)

    def find_one_and_update(
        self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any], sort: SortSpec | None = None
    ) -> Document | None:
        validate_update(update)
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)
            return None
        with self._transaction(immediate=True) as conn:
            found = sort_documents(self._scan(conn, collection, filter), sort)
            if not found:
                return None
            document = apply_update(found[0], update)
            self._write_back(conn, collection, [document])
        return document

    def count_by(self, collection: str, fields: Sequence[str],
                 filter: Mapping[str, Any] | None = None) -> dict[tuple[Any, ...], int]:
        """Grouped in SQL over ``fields`` (no document decoded) when every group's values are text or
        missing there; otherwise (a filter, old-layout rows, other types) the scan of :class:`IndexStore`."""
        if filter or not all(_PLAIN_NAME.fullmatch(field) for field in fields):
            return super().count_by(collection, fields, filter)
        columns = ", ".join(f"json_extract(fields, '$.{f}'), json_type(fields, '$.{f}')" for f in fields)
        sql = (f"SELECT fields IS NULL, {columns}, count(*) FROM documents WHERE collection = ?"
               f" GROUP BY {', '.join(str(i) for i in range(1, 2 + 2 * len(fields)))}")
        with self._transaction() as conn:
            rows = conn.execute(sql, (collection,)).fetchall()
        counts: dict[tuple[Any, ...], int] = {}
        for row in rows:
            values, types = row[1:-1:2], row[2:-1:2]
            if row[0] or any(t not in (None, "text", "null") for t in types):
                return super().count_by(collection, fields, filter)  # SQL cannot tell these values exactly
            key = tuple(v if t == "text" else None for v, t in zip(values, types))
            counts[key] = counts.get(key, 0) + row[-1]
        return counts

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)
            return 0
        with self._transaction(immediate=True) as conn:
            ids = [(collection, str(d["_id"])) for d in self._scan(conn, collection, filter)]
            conn.executemany("DELETE FROM documents WHERE collection = ? AND id = ?", ids)
        return len(ids)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


#: names of the temp files a put writes before renaming them into place: never listed, swept when old
_TMP_PREFIX = ".tmp-"


class FileBlobStore(BlobStore):
    """One file per blob under ``root``; writes go to a temp file and are ``os.replace``d into place."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.uri = redact_uri(f"file://{self.root}")  # the directory is made by the first put, not here

    def store_exists(self) -> bool:
        """Whether the blob directory exists (the first put makes it)."""
        return self.root.is_dir()

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(_TMP_PREFIX) for p in parts):
            raise InvalidArgumentError(f"invalid blob key {key!r}: use non-empty '/'-separated names without '..' "
                                       f"(and none starting with {_TMP_PREFIX!r}: the store's temp files)")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailableError(f"cannot create the blob directory {path.parent}: {exc}") from exc
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    out.write(data)
                else:
                    shutil.copyfileobj(data, out, 1 << 22)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"blob {key!r} is missing from {self.root}") from exc

    def get_range(self, key: str, start: int, length: int | None = None) -> bytes:
        with self.open(key) as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"blob {key!r} is missing from {self.root}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def freshen(self, key: str) -> bool:
        try:
            os.utime(self._path(key))  # as cheap as the stat of exists(): always freshen
            return True
        except FileNotFoundError:
            return False
        except PermissionError:  # another user's file: it exists, only its age stays
            return self.exists(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime | None]]:
        for key in self.list(prefix):
            try:
                mtime = self._path(key).stat().st_mtime
            except FileNotFoundError:
                continue  # deleted meanwhile
            yield key, dt.datetime.fromtimestamp(mtime, dt.timezone.utc)

    def sweep_incomplete(self, older_than: dt.timedelta, dry_run: bool = False) -> int:
        """Delete the ``.tmp-*`` files of puts killed before their ``os.replace`` (unchanged for ``older_than``)."""
        cutoff = dt.datetime.now(dt.timezone.utc).timestamp() - older_than.total_seconds()
        swept = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                try:
                    if path.stat().st_mtime > cutoff:  # a put may still be writing it
                        continue
                    if not dry_run:
                        path.unlink()
                except FileNotFoundError:
                    continue  # renamed into place or removed meanwhile
                swept += 1
        return swept

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key


def open_stores(uri: str, *, index: bool = True, blobs: bool = True) -> Stores:
    """Open ``file://PATH``: the index at ``PATH/index.sqlite``, blobs under ``PATH/blobs``."""
    root = path_from_uri(uri)
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"{redact_uri(f'file://{root}')} exists and is not a directory; "
                                   "a file:// store needs a directory")
    return Stores(
        index=SQLiteIndexStore(root / "index.sqlite") if index else None,
        blobs=FileBlobStore(root / "blobs") if blobs else None,
    )
