"""``file://`` backend: the embedded default. An SQLite index beside a directory of blob files.

Layout of a store directory::

    <root>/index.sqlite     documents, BSON-encoded, one table; WAL journal
    <root>/blobs/<key>      one file per blob, written to a temp file then os.replace()d

Several processes on one machine share a store safely: SQLite serialises writers, and
:meth:`SQLiteIndexStore.find_one_and_update` runs inside ``BEGIN IMMEDIATE`` so two
processes can never claim the same task. With ``synchronous=NORMAL`` in WAL mode a
committed write survives a crash of the writing process (not a power cut). Queries are
evaluated by :mod:`tensorhub.query` over the collection's documents.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from bson import ObjectId

from tensorhub.backends.base import BlobStore, Document, IndexStore, SortSpec
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import BackendUnavailableError, InvalidArgumentError, NotFoundError
from tensorhub.query import apply_update, matches, sort_documents
from tensorhub.registry import Stores

def path_from_uri(uri: str) -> Path:
    """``file:///abs``, ``file://./rel``, ``file://rel`` or a bare path -> a filesystem path."""
    if "://" not in uri:
        return Path(uri).expanduser()
    parts = urlsplit(uri)
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


_PUSHABLE = (str, int)  # exact types; bool is excluded (JSON true == 1 in SQLite)


def scalar_fields(document: Mapping[str, Any]) -> str:
    """JSON of a document's top-level str and int fields: what :func:`pushdown` filters on in SQL."""
    return json.dumps({k: v for k, v in document.items()
                       if type(v) in _PUSHABLE and not (type(v) is str and len(v) > 200)}, separators=(",", ":"))


def _equalities(query: Mapping[str, Any]) -> dict[str, set]:
    """Top-level fields a filter requires to equal one of a few str/int values (a necessary condition)."""
    required: dict[str, set] = {}

    def need(key: str, values: set) -> None:
        required[key] = required[key] & values if key in required else values

    for key, condition in query.items():
        if key == "$and" and isinstance(condition, list):
            for sub in condition:
                if isinstance(sub, Mapping):
                    for k, v in _equalities(sub).items():
                        need(k, v)
        elif key == "$or" and isinstance(condition, list) and condition:
            branches = [_equalities(sub) if isinstance(sub, Mapping) else {} for sub in condition]
            for k in set.intersection(*(set(b) for b in branches)):
                need(k, set().union(*(b[k] for b in branches)))
        elif not key.startswith("$") and "." not in key:
            if type(condition) in _PUSHABLE:
                need(key, {condition})
            elif isinstance(condition, Mapping) and set(condition) == {"$in"} and isinstance(condition["$in"], list) \
                    and condition["$in"] and all(type(v) in _PUSHABLE for v in condition["$in"]):
                need(key, set(condition["$in"]))
    return required


def pushdown(query: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """An SQL condition that keeps every document the filter could match (a superset).

    A document whose field is a str/int outside the required values is dropped in SQL, without
    decoding it; one whose field is anything else (an array, a float, long text, missing) is kept
    for :func:`tensorhub.query.matches` to decide. So results never change, only the work.
    """
    clauses, params = [], []
    for key, values in sorted(_equalities(query).items()):
        if not values:
            return " AND 0", []
        path = '$."' + key.replace('"', '""') + '"'
        marks = ",".join("?" * len(values))
        clauses.append(f" AND (json_extract(fields, ?) IN ({marks}) OR json_type(fields, ?) IS NULL"
                       f" OR json_type(fields, ?) NOT IN ('text', 'integer'))")
        params += [path, *sorted(values, key=repr), path, path]
    return "".join(clauses), params


class SQLiteIndexStore(IndexStore):
    """Documents in one SQLite table ``(collection, id, doc)``; queries run in Python."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.uri = f"file://{self.path.parent}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS documents ("
                " collection TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL, fields TEXT,"
                " PRIMARY KEY (collection, id))"
            )
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailableError(f"cannot open the index at {self.path}: {exc}") from exc
        self._lock = threading.RLock()

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
        ids = _ids_in(query)
        if ids is not None:  # look records up by primary key instead of scanning the collection
            marks = ",".join("?" * len(ids))
            rows = conn.execute(f"SELECT doc FROM documents WHERE collection = ? AND id IN ({marks}) ORDER BY rowid",
                                (collection, *ids))
        else:
            where, params = pushdown(query)
            rows = conn.execute(f"SELECT doc FROM documents WHERE collection = ?{where} ORDER BY rowid",
                                (collection, *params))
        docs = (decode_document(row[0]) for row in rows)
        return [d for d in docs if matches(d, query)]

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        rows = [(collection, str(d["_id"]), encode_document(d), scalar_fields(d)) for d in documents]
        with self._transaction(immediate=True) as conn:
            try:
                conn.executemany("INSERT INTO documents (collection, id, doc, fields) VALUES (?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as exc:
                raise InvalidArgumentError(f"a record with this _id already exists in {collection}: {exc}") from exc

    def find(
        self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None, limit: int | None = None
    ) -> list[Document]:
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
        with self._transaction(immediate=True) as conn:
            found = [apply_update(d, update) for d in self._scan(conn, collection, filter)]
            self._write_back(conn, collection, found)
        return len(found)

    def find_one_and_update(
        self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any], sort: SortSpec | None = None
    ) -> Document | None:
        with self._transaction(immediate=True) as conn:
            found = sort_documents(self._scan(conn, collection, filter), sort)
            if not found:
                return None
            document = apply_update(found[0], update)
            self._write_back(conn, collection, [document])
        return document

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        with self._transaction(immediate=True) as conn:
            ids = [(collection, str(d["_id"])) for d in self._scan(conn, collection, filter)]
            conn.executemany("DELETE FROM documents WHERE collection = ? AND id = ?", ids)
        return len(ids)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class FileBlobStore(BlobStore):
    """One file per blob under ``root``; writes go to a temp file and are ``os.replace``d into place."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.uri = f"file://{self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailableError(f"cannot create the blob directory {self.root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgumentError(f"invalid blob key {key!r}: use non-empty '/'-separated names without '..'")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
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

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key


def open_stores(uri: str, *, index: bool = True, blobs: bool = True) -> Stores:
    """Open ``file://PATH``: the index at ``PATH/index.sqlite``, blobs under ``PATH/blobs``."""
    root = path_from_uri(uri)
    if root.exists() and not root.is_dir():
        raise InvalidArgumentError(f"{root} exists and is not a directory; a file:// store needs a directory")
    return Stores(
        index=SQLiteIndexStore(root / "index.sqlite") if index else None,
        blobs=FileBlobStore(root / "blobs") if blobs else None,
    )
