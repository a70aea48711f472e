"""``file://`` backend: the embedded default. An SQLite index beside a directory of blob files.

Layout of a store directory::

    <root>/index.sqlite     documents, BSON-encoded, one table; WAL journal
    <root>/blobs/<key>      one file per blob, written to a temp file then os.replace()d

Several processes on one machine share a store safely: SQLite serialises writers, and
:meth:`SQLiteIndexStore.find_one_and_update` runs inside ``BEGIN IMMEDIATE`` so two
processes can never claim the same task. With ``synchronous=NORMAL`` in WAL mode a
committed write survives a crash of the writing process (not a power cut). Beside each
BSON document a row keeps its top-level scalars as JSON (``fields``, layout in
:mod:`tensorhub.query.sql`); declared indexes are SQLite expression indexes over them, a
filter, a sort and a limit become SQL that rules rows out, or in where the answer is certain, and
:mod:`tensorhub.query` decides the rest (and sorts what SQL cannot order exactly).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import bson
from bson import ObjectId
from bson.regex import Regex

from tensorhub.backends.base import BlobStore, Document, IndexStore, SortSpec, Stores
from tensorhub.query.sql import (
    K_UNTOLD,
    NULL,
    STALE,
    STRING,
    Plan,
    bracket_sql,
    compile_query,
    encode_fields,
    index_name,
    index_sql,
    indexable_keys,
    literal,
    literal_ok,
    pushdown,
    scalar_fields,
    value_sql,
)
from tensorhub.documents import CODEC_OPTIONS, encode_document
from tensorhub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptDataError,
    DuplicateKeyError,
    InvalidArgumentError,
    NotFoundError,
)
from tensorhub.query import (
    apply_update,
    matches,
    normalize_sort,
    regex_budget,
    sort_documents,
    validate_filter,
    validate_update,
)
from tensorhub.redaction import redact_uri

log = logging.getLogger(__name__)


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
    """The ``_id`` values a filter is restricted to at its top level (equality or ``$in`` of
    ObjectIds), as the ``id`` column spells them; None when it names no such set."""
    if "_id" not in query:
        return None
    condition = query["_id"]
    if isinstance(condition, ObjectId):
        return [str(condition)]
    if isinstance(condition, Mapping) and set(condition) == {"$in"} and isinstance(condition["$in"], (list, tuple)) \
            and all(isinstance(v, ObjectId) for v in condition["$in"]):
        return [str(v) for v in condition["$in"]]
    return None


#: field names count_by groups by in SQL
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: rows rewritten per transaction when a store of an older ``fields`` layout is opened
_MIGRATE_BATCH = 2000
#: SQLite's name of the (collection, id) primary key index: the lookup of records by ``_id``
_PRIMARY_KEY = "sqlite_autoindex_documents_1"
_INDEXED_BY = re.compile(r' INDEXED BY "[^"]*"')
_DECODE_ERRORS = (bson.errors.BSONError, ValueError, TypeError, OverflowError, RecursionError)


@dataclass(frozen=True)
class _State:
    """What query planning reads of a collection: its kinds (None while it holds stale rows) and
    its declared indexes (name, indexable keys)."""

    kinds: dict[str, int] | None
    indexes: tuple[tuple[str, tuple[tuple[str, int], ...]], ...]


def _top_level_conditions(query: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The top-level keys a filter pins to values (equality, ``$in``) and those it bounds (ranges)."""
    pinned, bounded = set(), set()
    for key, condition in query.items():
        if not isinstance(key, str) or key.startswith("$"):
            continue
        if not (isinstance(condition, Mapping) and condition and all(str(k).startswith("$") for k in condition)):
            if not isinstance(condition, (Mapping, list, tuple, re.Pattern, Regex)):
                pinned.add(key)
            continue
        if "$eq" in condition or "$in" in condition:
            pinned.add(key)
        elif any(op in condition for op in ("$gt", "$gte", "$lt", "$lte")):
            bounded.add(key)
    return pinned, bounded


def _choose_index(state: _State, query: Mapping[str, Any], sort: Sequence[tuple[str, int]]) -> str | None:
    """The declared index that serves a query best: most leading keys pinned, then one bounded,
    then one that also gives the sort's order; None when none narrows anything (SQLite chooses)."""
    kinds = state.kinds or {}
    pinned, bounded = _top_level_conditions(query)
    pinned = {k for k in pinned if not kinds.get(k, 0) & K_UNTOLD}
    bounded = {k for k in bounded if not kinds.get(k, 0) & K_UNTOLD}
    best: tuple[int, int, int] = (0, 0, 0)
    chosen = None
    for name, keys in state.indexes:
        eq = 0
        while eq < len(keys) and keys[eq][0] in pinned:
            eq += 1
        ranged = int(eq < len(keys) and keys[eq][0] in bounded)
        rest = list(keys[eq:])
        wanted = [(k, d) for k, d in sort if k not in pinned]
        ordered = 0
        if not ranged:  # how many sort keys the index gives in order (SQLite sorts the rest, a group at a time)
            for flip in (1, -1):
                n = 0
                while n < min(len(rest), len(wanted)) and rest[n] == (wanted[n][0], wanted[n][1] * flip):
                    n += 1
                ordered = max(ordered, n)
        score = (eq, ranged, ordered)
        if score > best:
            best, chosen = score, name
    return chosen


class SQLiteIndexStore(IndexStore):
    """Documents in one SQLite table ``(collection, id, doc, fields)``, queried through SQL.

    A query runs as SQL over ``fields`` first (:func:`~tensorhub.query.sql.compile_query`):
    declared indexes are SQLite expression indexes, filters on them, sorts and limits run in
    SQL, and :mod:`tensorhub.query` decides only the rows SQL could not (arrays, documents,
    floats near a bound, regexes...), and sorts only what SQL cannot order exactly.
    """

    supports_cheap_count = True  # count(*) in SQL; documents are decoded only where the matcher must look
    supports_server_side_indexes = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.uri = redact_uri(f"file://{self.path.parent}")  # shown: a user:password@ path part is hidden
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None  # opened when the file exists or a write creates it
        self._closed = False
        self._states: dict[str, tuple[tuple[int, int], _State]] = {}
        self._found_last: set[str] = set()  # collections whose last find_one_and_update matched
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
                conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False,
                                       cached_statements=512)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS documents ("
                    " collection TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL, fields TEXT,"
                    " PRIMARY KEY (collection, id))"
                )
                self._add_fields_column(conn)
                conn.execute("CREATE TABLE IF NOT EXISTS field_kinds (collection TEXT NOT NULL, key TEXT NOT NULL,"
                             " kinds INTEGER NOT NULL, PRIMARY KEY (collection, key))")
                conn.execute("CREATE TABLE IF NOT EXISTS declared_indexes (collection TEXT NOT NULL,"
                             " name TEXT NOT NULL, keys TEXT NOT NULL, PRIMARY KEY (collection, name))")
                conn.execute(f"CREATE INDEX IF NOT EXISTS documents_stale ON documents (collection) WHERE {STALE}")
                self._migrate(conn)
            except (OSError, sqlite3.Error) as exc:
                raise BackendUnavailableError(f"cannot open the index at {self.path}: {exc}") from exc
            self._conn = conn
            return True

    @staticmethod
    def _add_fields_column(conn: sqlite3.Connection) -> None:
        """Give a table written before the ``fields`` column existed that column (NULL: a stale row)."""
        if any(column[1] == "fields" for column in conn.execute("PRAGMA table_info(documents)")):
            return
        try:
            conn.execute("ALTER TABLE documents ADD COLUMN fields TEXT")
        except sqlite3.OperationalError:  # another process added it first
            if not any(column[1] == "fields" for column in conn.execute("PRAGMA table_info(documents)")):
                raise

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Rewrite the ``fields`` of rows of an older layout (or none), a batch per transaction, so
        that queries can use SQL again; rows that cannot be decoded stay stale (queries name them)."""
        last = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(f"SELECT rowid, collection, doc FROM documents WHERE {STALE} AND rowid > ?"
                                    f" ORDER BY rowid LIMIT {_MIGRATE_BATCH}", (last,)).fetchall()
                updates: list[tuple[str, int]] = []
                kinds: dict[tuple[str, str], int] = {}
                for rowid, collection, doc in rows:
                    try:
                        decoded: Document = bson.decode(doc, CODEC_OPTIONS)
                        fields, doc_kinds = encode_fields(decoded)
                    except _DECODE_ERRORS:
                        continue
                    updates.append((fields, rowid))
                    for key, kind in doc_kinds.items():
                        kinds[(collection, key)] = kinds.get((collection, key), 0) | kind
                if updates and not last:
                    log.info("rewriting the query fields of rows an older tensorhub wrote (once, %d rows a batch)", _MIGRATE_BATCH)
                conn.executemany("UPDATE documents SET fields = ? WHERE rowid = ?", updates)
                SQLiteIndexStore._add_kinds(conn, kinds)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if len(rows) < _MIGRATE_BATCH:
                return
            last = rows[-1][0]

    @staticmethod
    def _add_kinds(conn: sqlite3.Connection, kinds: Mapping[tuple[str, str], int]) -> int:
        """Record what rows now hold per key; how many keys gained a kind (0: plans stay as they were)."""
        return conn.executemany("INSERT INTO field_kinds (collection, key, kinds) VALUES (?, ?, ?) ON CONFLICT"
                         " (collection, key) DO UPDATE SET kinds = kinds | excluded.kinds"
                         " WHERE kinds | excluded.kinds != kinds",
                         [(c, k, v) for (c, k), v in kinds.items()]).rowcount

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

    def _state(self, conn: sqlite3.Connection, collection: str) -> _State:
        """The collection's kinds and indexes, read again after another connection's commit or a change
        through this one that :meth:`_own_write` did not vouch for."""
        version = (conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        cached = self._states.get(collection)
        if cached is not None and cached[0] == version:
            return cached[1]
        stale = conn.execute(f"SELECT 1 FROM documents WHERE collection = ? AND {STALE} LIMIT 1",
                             (collection,)).fetchone() is not None
        kinds = None if stale or not literal_ok(collection) else dict(
            conn.execute("SELECT key, kinds FROM field_kinds WHERE collection = ?", (collection,)).fetchall())
        indexes = tuple((name, tuple((k, d) for k, d in json.loads(keys))) for name, keys in conn.execute(
            "SELECT name, keys FROM declared_indexes WHERE collection = ? ORDER BY name", (collection,)))
        state = _State(kinds, indexes)
        self._states[collection] = (version, state)
        return state

    def _own_write(self, conn: sqlite3.Connection, collection: str, changed: int = 0) -> None:
        """After a write of ours: the collection's cached state still holds unless it ``changed`` its kinds
        (our rows are never stale), so the next query need not read it again."""
        cached = self._states.get(collection)
        if changed:
            self._states.pop(collection, None)
        elif cached is not None:
            self._states[collection] = ((cached[0][0], conn.total_changes), cached[1])

    def _plan(self, conn: sqlite3.Connection, collection: str, query: Mapping[str, Any],
              sort: Sequence[tuple[str, int]] | None) -> tuple[Plan, str]:
        """The plan of a query and its ``FROM ... WHERE`` (the collection, the index, the terms)."""
        validate_filter(query)  # a malformed filter fails even when SQL leaves no row to match
        state = self._state(conn, collection)
        order = list(sort or [])
        plan = compile_query(query, order or [("$natural", 1)], state.kinds)
        if not order and state.kinds is not None:
            plan.order = "rowid"
        elif state.kinds is None:
            plan.order = "rowid" if not order else None
        ids = _ids_in(query)
        if state.kinds is not None:
            plan.params["collection"] = collection
            where = f"collection = {literal(collection)} AND {plan.where}"
            index = _PRIMARY_KEY if ids is not None else _choose_index(state, query, order if plan.order else [])
            source = f'documents INDEXED BY "{index}"' if index else "documents"
        else:
            plan.params["collection"] = collection
            where = f"collection = :collection AND {plan.where}"
            source = f'documents INDEXED BY "{_PRIMARY_KEY}"' if ids is not None else "documents"
        if ids is not None:  # look records up by primary key
            plan.params["ids"] = json.dumps(ids)
            where += " AND id IN (SELECT value FROM json_each(:ids))"
        return plan, f"FROM {source} WHERE {where}"

    @staticmethod
    def _execute(conn: sqlite3.Connection, sql: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
        """Run ``sql`` with the index it names, or without where SQLite cannot use that index."""
        try:
            return conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if "no query solution" not in str(exc):
                raise
            return conn.execute(_INDEXED_BY.sub("", sql), params)

    def _select(self, conn: sqlite3.Connection, sql: str, params: Mapping[str, Any]) -> list[Any]:
        return self._execute(conn, sql, params).fetchall()

    def _scan(self, conn: sqlite3.Connection, collection: str, query: Mapping[str, Any],
              sort: Sequence[tuple[str, int]] | None = None, limit: int | None = None) -> list[Document]:
        """The matching documents, ordered by ``sort`` (insertion order without one), at most ``limit``.

        SQL drops the rows the plan rules out, orders and limits where it can; the matcher
        confirms the rows SQL could not decide, fetched page by page when a limit applies.
        """
        plan, source = self._plan(conn, collection, query, sort)
        if plan.empty:
            return []
        verdict = plan.verdict
        where = source if plan.decided else f"{source} AND {verdict}"
        order = f" ORDER BY {plan.order or 'rowid'}"  # Python's sort is stable: ties stay in insertion order
        if plan.order is None or not limit:
            rows = self._select(conn, f"SELECT doc, id, {verdict} {where}{order}", plan.params)
            found = self._confirm(collection, query, rows)
            if plan.order is None:
                sort_documents(found, sort)
            return found[:limit] if limit else found
        found, offset, page = [], 0, limit
        while True:  # pages in SQL order until the matcher has confirmed ``limit`` rows
            rows = self._select(conn, f"SELECT doc, id, {verdict} {where}{order} LIMIT {page} OFFSET {offset}",
                                plan.params)
            found += self._confirm(collection, query, rows)
            if len(found) >= limit or len(rows) < page:
                return found[:limit]
            offset += page
            page = min(page * 2, 10_000)

    def explain(self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None,
                limit: int | None = None) -> list[str]:
        """SQLite's ``EXPLAIN QUERY PLAN`` of the first statement :meth:`find` runs for this query
        (e.g. ``SEARCH documents USING INDEX thidx_...``): to check that a declared index serves it."""
        order = normalize_sort(sort)
        if self._conn is None and not self._ready(create=False):
            return []
        with self._transaction() as conn:
            plan, source = self._plan(conn, collection, filter, order)
            if plan.empty:
                return ["nothing can match: no SQL runs"]
            where = source if plan.decided else f"{source} AND {plan.verdict}"
            sql = f"SELECT doc, id, {plan.verdict} {where}" + (f" ORDER BY {plan.order}" if plan.order else "")
            if plan.order is not None and limit:
                sql += f" LIMIT {int(limit)}"
            try:
                rows = conn.execute("EXPLAIN QUERY PLAN " + sql, plan.params).fetchall()
            except sqlite3.OperationalError:
                rows = conn.execute("EXPLAIN QUERY PLAN " + _INDEXED_BY.sub("", sql), plan.params).fetchall()
        return [str(row[-1]) for row in rows] + ([] if plan.decided else ["the matcher decides some rows"])

    def _confirm(self, collection: str, query: Mapping[str, Any], rows: list[Any]) -> list[Document]:
        """Decode ``(doc, id, verdict)`` rows; keep those SQL decided (2) or the matcher accepts."""
        try:
            docs = bson.decode_all(b"".join([row[0] for row in rows]), CODEC_OPTIONS)
        except _DECODE_ERRORS:
            docs = [self._decode_row(collection, row[1], row[0]) for row in rows]  # find the damaged row and name it
        if all(row[2] == 2 for row in rows):
            return docs
        with regex_budget():  # one regex time allowance for the whole scan (SQL never runs a regex)
            return [d for d, row in zip(docs, rows) if row[2] == 2 or matches(d, query)]

    def _decode_row(self, collection: str, row_id: str, doc: Any) -> Document:
        """One row's document, or :class:`CorruptDataError` naming the record and how to remove it.

        A damaged row fails every query that reads it (rather than being skipped silently): the
        error names its collection and ``_id``; the repository cannot delete a record it cannot
        read, hence the SQL that removes it.
        """
        try:
            return bson.decode(doc, CODEC_OPTIONS)
        except _DECODE_ERRORS as exc:
            raise CorruptDataError(
                f"record {row_id} of collection {collection!r} in the index {self.path} is damaged and cannot be "
                f"read ({type(exc).__name__}: {str(exc)[:200]}); restore the index from a backup, or remove the "
                f"record with: sqlite3 {self.path} \"DELETE FROM documents WHERE collection = '{collection}' AND "
                f"id = '{row_id}'\"") from exc

    @staticmethod
    def _rows(collection: str, documents: Sequence[Document]) -> tuple[list[tuple[Any, ...]], dict[tuple[str, str], int]]:
        """``(doc, fields, collection, id)`` per document, and the kinds they add."""
        rows: list[tuple[Any, ...]] = []
        kinds: dict[tuple[str, str], int] = {}
        for d in documents:
            fields, doc_kinds = encode_fields(d)
            rows.append((encode_document(d), fields, collection, str(d["_id"])))
            for key, kind in doc_kinds.items():
                kinds[(collection, key)] = kinds.get((collection, key), 0) | kind
        return rows, kinds

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        rows, kinds = self._rows(collection, documents)
        self._ready(create=True)
        with self._transaction(immediate=True) as conn:
            try:
                conn.executemany("INSERT INTO documents (doc, fields, collection, id) VALUES (?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(f"a record with this _id already exists in {collection}: {exc}") from exc
            self._own_write(conn, collection, self._add_kinds(conn, kinds))

    def find(
        self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None, limit: int | None = None
    ) -> list[Document]:
        order = normalize_sort(sort)
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)  # malformed filters fail on every store, even one not created yet
            return []
        with self._transaction() as conn:
            return self._scan(conn, collection, filter, order, limit)

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Counted in SQL; only rows SQL cannot decide are decoded and matched."""
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)
            return 0
        with self._transaction() as conn:
            plan, source = self._plan(conn, collection, filter, None)
            if plan.empty:
                return 0
            if plan.decided:
                return int(self._select(conn, f"SELECT count(*) {source}", plan.params)[0][0])
            sure = self._select(conn, f"SELECT count(*) {source} AND {plan.verdict} = 2", plan.params)[0][0]
            rows = self._select(conn, f"SELECT doc, id, 1 {source} AND {plan.verdict} = 1", plan.params)
            return int(sure) + len(self._confirm(collection, filter, rows))

    def _write_back(self, conn: sqlite3.Connection, collection: str, documents: list[Document]) -> None:
        rows, kinds = self._rows(collection, documents)
        conn.executemany("UPDATE documents SET doc = ?, fields = ? WHERE collection = ? AND id = ?", rows)
        self._own_write(conn, collection, self._add_kinds(conn, kinds))

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
        """The task claim: in one ``BEGIN IMMEDIATE`` transaction, the first match by an indexed
        ``SELECT ... ORDER BY ... LIMIT`` (pages until the matcher confirms one), then one ``UPDATE``.

        After a call on this collection that matched nothing, a plain read looks first, and when it
        finds no match the call returns None without taking the write lock: idle runners polling an
        empty queue then never wait on, nor hold up, the store's writers. After a call that
        matched, the read is skipped (the queue is busy: the next claim most likely matches too,
        and the read would cost every claim a second scan)."""
        validate_update(update)
        order = normalize_sort(sort)
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)
            return None
        if collection not in self._found_last:
            with self._transaction() as conn:
                if not self._scan(conn, collection, filter, order, limit=1):
                    return None
        with self._transaction(immediate=True) as conn:
            found = self._scan(conn, collection, filter, order, limit=1)
            if not found:
                self._found_last.discard(collection)
                return None
            self._found_last.add(collection)
            document = apply_update(found[0], update)
            self._write_back(conn, collection, [document])
        return document

    def change_token(self) -> Any:
        """SQLite's ``data_version`` (it changes when another connection, of any process, commits) and
        this connection's own ``total_changes``: one ``PRAGMA``, no read of the data (~10 us)."""
        if self._conn is None and not self._ready(create=False):
            return None
        with self._lock:
            if self._conn is None:
                return None
            return self._conn.execute("PRAGMA data_version").fetchone()[0], self._conn.total_changes

    def count_by(self, collection: str, fields: Sequence[str],
                 filter: Mapping[str, Any] | None = None) -> dict[tuple[Any, ...], int]:
        """Grouped in SQL over ``fields`` (no document decoded) when every group's values are text or
        null/missing there; otherwise (a filter, stale rows, other types) the scan of :class:`IndexStore`."""
        if filter or not all(_PLAIN_NAME.fullmatch(field) for field in fields):
            return super().count_by(collection, fields, filter)
        if self._conn is None and not self._ready(create=False):
            return {}
        columns = ", ".join(f"{bracket_sql(f)}, {value_sql(f)}" for f in fields)
        with self._transaction() as conn:
            if self._state(conn, collection).kinds is None:
                rows = None
            else:
                rows = conn.execute(f"SELECT {columns}, count(*) FROM documents WHERE collection = ?"
                                    f" GROUP BY {', '.join(str(i) for i in range(1, 1 + 2 * len(fields)))}",
                                    (collection,)).fetchall()
        if rows is None:
            return super().count_by(collection, fields, filter)
        counts: dict[tuple[Any, ...], int] = {}
        for row in rows:
            brackets, values = row[0:-1:2], row[1:-1:2]
            if any(b not in (STRING, NULL) for b in brackets):
                return super().count_by(collection, fields, filter)  # SQL cannot tell these values exactly
            key = tuple(v if b == STRING else None for v, b in zip(values, brackets))
            counts[key] = counts.get(key, 0) + row[-1]
        return counts

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        """One ``DELETE ... WHERE`` when SQL decides the filter; else the matches' ids, deleted in one statement."""
        if self._conn is None and not self._ready(create=False):
            validate_filter(filter)
            return 0
        with self._transaction(immediate=True) as conn:
            plan, source = self._plan(conn, collection, filter, None)
            if plan.empty:
                return 0
            if plan.decided:
                deleted = int(self._execute(conn, "DELETE " + source, plan.params).rowcount)
                self._own_write(conn, collection)
                return deleted
            ids = [str(d["_id"]) for d in self._scan(conn, collection, filter)]
            conn.execute(f'DELETE FROM documents INDEXED BY "{_PRIMARY_KEY}" WHERE collection = :c'
                         " AND id IN (SELECT value FROM json_each(:ids))", {"c": collection, "ids": json.dumps(ids)})
            self._own_write(conn, collection)
        return len(ids)

    def create_index(self, collection: str, keys: SortSpec) -> None:
        """An SQLite expression index over the collection's rows (its indexable leading keys, see
        :func:`~tensorhub.query.sql.indexable_keys`), recorded so every process plans with it."""
        usable = indexable_keys(normalize_sort(keys))
        if not usable or not literal_ok(collection):
            return
        name = index_name(collection, usable)
        self._ready(create=True)
        with self._lock:
            assert self._conn is not None
            if self._conn.execute("SELECT 1 FROM declared_indexes WHERE collection = ? AND name = ?",
                                  (collection, name)).fetchone():
                return
        with self._transaction(immediate=True) as conn:
            conn.execute(index_sql(collection, usable, name))
            conn.execute("INSERT OR IGNORE INTO declared_indexes (collection, name, keys) VALUES (?, ?, ?)",
                         (collection, name, json.dumps(usable)))
            self._states.pop(collection, None)

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


__all__ = ["FileBlobStore", "SQLiteIndexStore", "open_stores", "path_from_uri", "pushdown", "scalar_fields"]
