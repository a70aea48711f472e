"""``mongodb://`` backend: pymongo collections for the index, GridFS for blobs.

One ``MongoClient`` serves both layers of a URI. The client is created with short server
selection and connect timeouts and pinged at once, so an unreachable server fails in
seconds with :class:`~tensorhub.errors.BackendUnavailableError` instead of hanging on the
first query. The database is the URI's path (``mongodb://host/mydb``), ``tensorhub`` if none.
Every driver error is translated in :func:`translate_errors`, and nowhere else.

Filters, sorts and updates are checked here before they are sent (:func:`tensorhub.query.validate_filter`,
``validate_update``, ``normalize_sort``), so a malformed one, or an operator the other backends do
not implement (``$where``, ``$expr``...), fails with the same :class:`~tensorhub.errors.InvalidQueryError`
as on ``file://``, ``s3://`` and ``mongomock://``, and never runs on the server. What only the
server can refuse (``$inc`` of a string it holds) comes back as an ``OperationFailure``, which
:func:`translate_errors` also makes an ``InvalidQueryError``.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, cast
from urllib.parse import unquote_plus

import gridfs
import pymongo
import pymongo.errors
from bson import ObjectId
from bson.errors import InvalidDocument

from tensorhub.backends.base import FRESH_FOR, BlobStore, Document, IndexStore, SortSpec, Stores, group_key
from tensorhub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptDataError,
    DuplicateKeyError,
    InvalidQueryError,
    NotFoundError,
    SerializationError,
)
from tensorhub.query import normalize_sort, validate_filter, validate_update
from tensorhub.redaction import redact_uri, scrub, shows_secret

DEFAULT_DATABASE = "tensorhub"
#: MongoDB's error code for a duplicate key (E11000)
_DUPLICATE_KEY = 11000
#: OperationFailure codes that say the server cannot serve now (credentials, shutdown, elections,
#: network), not that the operation was wrong: BackendUnavailableError. Every other code is the
#: server refusing the operation itself (BadValue 2, FailedToParse 9, TypeMismatch 14, PathNotViable 28,
#: ConflictingUpdateOperators 40, invalid regex 51091...): InvalidQueryError.
_UNAVAILABLE_CODES = frozenset({6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436})
_CREDENTIAL_CODES = frozenset({13, 18})  # Unauthorized, AuthenticationFailed
#: MongoDB's naming rule for databases, as it refuses them (on every platform; Windows forbids more)
DATABASE_RULE = ("a MongoDB database name is 1 to 63 bytes long and has none of the characters "
                 "/ \\ . space \" $ or NUL")
_BAD_DATABASE_CHARS = re.compile(r'[/\\. "$\x00]')
BLOB_BUCKET = "blobs"
#: seconds to wait for a server before giving up (TENSORHUB_MONGO_TIMEOUT overrides)
SERVER_TIMEOUT = float(os.environ.get("TENSORHUB_MONGO_TIMEOUT", "5"))


@contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Turn pymongo and bson errors into tensorhub errors that say what to do."""
    try:
        yield
    except InvalidDocument as exc:
        raise SerializationError(f"cannot store this value in a record: {exc}") from exc
    except gridfs.errors.CorruptGridFile as exc:  # a piece (fs.chunks document) of a blob is missing or cut short
        raise CorruptDataError(f"a blob in GridFS at {where} is damaged ({exc}); save the data again") from exc
    except pymongo.errors.DuplicateKeyError as exc:
        raise DuplicateKeyError(f"a record with this _id already exists at {where}: {exc}") from exc
    except pymongo.errors.BulkWriteError as exc:  # insert_many reports a duplicate _id inside its batch error
        if any(e.get("code") == _DUPLICATE_KEY for e in exc.details.get("writeErrors", ())):
            raise DuplicateKeyError(f"a record with this _id already exists at {where}: "
                                    f"{str(exc.details.get('writeErrors'))[:300]}") from exc
        raise InvalidQueryError(f"MongoDB rejected the operation: {exc}") from exc
    except (pymongo.errors.ConnectionFailure, pymongo.errors.ConfigurationError) as exc:
        raise BackendUnavailableError(
            f"MongoDB at {where} is unreachable ({exc.__class__.__name__}: {str(exc)[:200]}). "
            "Check that the server runs, the host and port, and the network."
        ) from exc
    except pymongo.errors.OperationFailure as exc:
        if exc.code in _CREDENTIAL_CODES:
            raise BackendUnavailableError(f"MongoDB at {where} refused the credentials: {exc}") from exc
        if exc.code in _UNAVAILABLE_CODES:
            raise BackendUnavailableError(f"MongoDB at {where} cannot serve the operation now "
                                          f"(code {exc.code}: {str(exc)[:200]}); try again") from exc
        raise InvalidQueryError(f"MongoDB rejected the operation: {exc}") from exc


def _update(update: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse replacement documents, pipelines and operators tensorhub.query does not implement
    up front, with the same error on every backend."""
    validate_update(update)
    return dict(update)


def _sort(sort: SortSpec | None) -> list[tuple[str, int]] | None:
    return normalize_sort(sort) or None


class MongoIndexStore(IndexStore):
    """Each collection of the index is a MongoDB collection of the URI's database."""

    supports_cheap_count = True  # count_documents runs on the server
    supports_server_side_indexes = True

    def __init__(self, client: Any, database: str, where: str) -> None:
        self.client = client
        self.db = client[database]
        self.uri = where

    def close(self) -> None:
        self.client.close()  # idempotent; shared with the GridFS store of the same URI

    def _coll(self, name: str) -> Any:
        return self.db[name]

    def _filter(self, filter: Mapping[str, Any]) -> dict[str, Any]:
        """``filter`` checked as every backend checks it: a malformed filter, or an operator
        tensorhub does not implement, fails here rather than on the server (which would run ``$where``)."""
        validate_filter(filter)
        return dict(filter)

    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        """Insert all or none: an ordered insert stops at the first duplicate ``_id``; the documents
        it inserted before it are deleted again before :class:`DuplicateKeyError` is raised (a
        concurrent reader may glimpse them meanwhile: MongoDB has no multi-document atomicity
        without a transaction, which a standalone server lacks)."""
        if not documents:
            return
        batch = [dict(d) for d in documents]  # pymongo adds a missing _id to these copies
        with translate_errors(self.uri):
            try:
                self._coll(collection).insert_many(batch, ordered=True)
            except pymongo.errors.BulkWriteError as exc:
                inserted = batch[:exc.details.get("nInserted", 0)]
                if inserted:  # these _ids did not exist before this call: deleting them touches no one else's
                    self._coll(collection).delete_many({"_id": {"$in": [d["_id"] for d in inserted]}})
                raise

    def find(
        self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None, limit: int | None = None
    ) -> list[Document]:
        with translate_errors(self.uri):
            cursor = self._coll(collection).find(self._filter(filter))
            if sort:
                cursor = cursor.sort(_sort(sort))
            if limit:
                cursor = cursor.limit(limit)
            return list(cursor)

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        with translate_errors(self.uri):
            return self._coll(collection).update_many(self._filter(filter), _update(update)).matched_count

    def find_one_and_update(
        self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any], sort: SortSpec | None = None
    ) -> Document | None:
        with translate_errors(self.uri):
            return self._coll(collection).find_one_and_update(
                self._filter(filter), _update(update), sort=_sort(sort), return_document=pymongo.ReturnDocument.AFTER
            )

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        with translate_errors(self.uri):
            return self._coll(collection).delete_many(self._filter(filter)).deleted_count

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        with translate_errors(self.uri):
            return self._coll(collection).count_documents(self._filter(filter))

    def count_by(self, collection: str, fields: Sequence[str],
                 filter: Mapping[str, Any] | None = None) -> dict[tuple[Any, ...], int]:
        # grouped on the server: one aggregation, no document leaves it
        names = {f"f{i}": f"${field}" for i, field in enumerate(fields)}
        pipeline = [{"$match": self._filter(filter or {})}, {"$group": {"_id": names, "n": {"$sum": 1}}}]
        counts: dict[tuple[Any, ...], int] = {}
        with translate_errors(self.uri):
            for row in self._coll(collection).aggregate(pipeline):
                key = tuple(group_key((row["_id"] or {}).get(name)) for name in names)
                counts[key] = counts.get(key, 0) + row["n"]
        return counts

    def create_index(self, collection: str, keys: SortSpec) -> None:
        with translate_errors(self.uri):
            self._coll(collection).create_index(list(keys))


class GridFSBlobStore(BlobStore):
    """Blobs as GridFS files named by key; a put uploads the new file, then removes older versions."""

    def __init__(self, client: Any, database: str, where: str) -> None:
        self.client = client
        self.bucket = gridfs.GridFSBucket(client[database], bucket_name=BLOB_BUCKET)
        self.files = client[database][f"{BLOB_BUCKET}.files"]
        self.uri = where

    def close(self) -> None:
        self.client.close()

    def _ids(self, key: str) -> list[Any]:
        return [f["_id"] for f in self.files.find({"filename": key}, {"_id": 1}).sort("uploadDate", 1)]

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)  # GridFS takes bytes or a stream
        with translate_errors(self.uri):
            old = self._ids(key)
            self.bucket.upload_from_stream(key, data)
            for file_id in old:
                self.bucket.delete(file_id)

    def _open(self, key: str) -> Any:
        try:
            return self.bucket.open_download_stream_by_name(key)
        except gridfs.errors.NoFile as exc:
            raise NotFoundError(f"blob {key!r} is missing from GridFS at {self.uri}") from exc

    def get(self, key: str) -> bytes:
        with translate_errors(f"{self.uri}, blob {key!r}"):
            with self._open(key) as stream:
                return stream.read()

    def get_range(self, key: str, start: int, length: int | None = None) -> bytes:
        with translate_errors(f"{self.uri}, blob {key!r}"):
            with self._open(key) as stream:
                stream.seek(start)
                return stream.read() if length is None else stream.read(length)

    def open(self, key: str) -> BinaryIO:
        where = f"{self.uri}, blob {key!r}"
        with translate_errors(where):
            return cast(BinaryIO, _TranslatedStream(self._open(key), where))  # GridFS reads its pieces lazily, as the caller reads

    def exists(self, key: str) -> bool:
        with translate_errors(self.uri):
            return self.files.count_documents({"filename": key}, limit=1) > 0

    def delete(self, key: str) -> None:
        with translate_errors(self.uri):
            for file_id in self._ids(key):
                try:
                    self.bucket.delete(file_id)
                except gridfs.errors.NoFile:
                    pass  # deleted concurrently: the goal is reached

    def list(self, prefix: str = "") -> Iterator[str]:
        with translate_errors(self.uri):
            names = self.files.distinct("filename", _starting_with(prefix))
        yield from names

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime | None]]:
        newest: dict[str, dt.datetime] = {}
        with translate_errors(self.uri):
            for f in self.files.find(_starting_with(prefix), {"filename": 1, "uploadDate": 1}):
                when = f["uploadDate"].replace(tzinfo=dt.timezone.utc) if f["uploadDate"].tzinfo is None \
                    else f["uploadDate"]
                newest[f["filename"]] = max(when, newest.get(f["filename"], when))
        yield from newest.items()

    def freshen(self, key: str) -> bool:
        now = dt.datetime.now(dt.timezone.utc)
        with translate_errors(self.uri):
            found = self.files.find_one({"filename": key}, {"uploadDate": 1})  # one round trip, as exists()
            if found is None:
                return False
            written = found["uploadDate"]
            if (written if written.tzinfo else written.replace(tzinfo=dt.timezone.utc)) < now - FRESH_FOR:
                self.files.update_many({"filename": key}, {"$set": {"uploadDate": now}})
        return True


    def sweep_incomplete(self, older_than: dt.timedelta, dry_run: bool = False) -> int:
        """Delete the chunk documents of uploads killed before GridFS wrote their files document.

        GridFS writes a file's chunks first and its ``files`` document last, so chunks whose
        ``files_id`` has no ``files`` document are an upload in progress or a dead one; the
        ``files_id`` is an ObjectId made when the upload began, so only uploads begun more
        than ``older_than`` ago are swept. Returns the number of dead uploads.
        """
        chunks = self.files.database[f"{BLOB_BUCKET}.chunks"]
        # an ObjectId's time is whole seconds: uploads begun in the cutoff's second are kept, unless 0 asks for all
        cutoff = ObjectId.from_datetime(dt.datetime.now(dt.timezone.utc) - older_than)
        with translate_errors(self.uri):
            started = chunks.distinct("files_id", {"files_id": {"$lt": cutoff}} if older_than > dt.timedelta(0) else {})
            dead = []
            for i in range(0, len(started), 1000):  # bounded $in lists
                batch = started[i:i + 1000]
                alive = {f["_id"] for f in self.files.find({"_id": {"$in": batch}}, {"_id": 1})}
                dead += [file_id for file_id in batch if file_id not in alive]
            if not dry_run:
                for i in range(0, len(dead), 1000):
                    chunks.delete_many({"files_id": {"$in": dead[i:i + 1000]}})
        return len(dead)


class _TranslatedStream(io.RawIOBase):
    """A GridFS download stream whose reads raise tensorhub's errors (a missing piece shows when read)."""

    def __init__(self, inner: Any, where: str) -> None:
        super().__init__()
        self._inner, self._where = inner, where

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with translate_errors(self._where):
            return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def read(self, size: int = -1) -> bytes:
        with translate_errors(self._where):
            return self._inner.read(size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))  # GridOut has no readinto
        view[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


def _starting_with(prefix: str) -> dict[str, Any]:
    """A GridFS files filter for names starting with ``prefix``."""
    import re

    return {"filename": {"$regex": "^" + re.escape(prefix)}}


def check_database_name(uri: str) -> None:
    """Refuse a database in ``uri`` that MongoDB would refuse, naming the rule, before any connection.

    The URI is split where pymongo splits it (``pymongo.uri_parser_shared``): the path runs
    from the first ``/`` to the first ``?``. pymongo would read ``/a.b`` as database ``a`` and
    collection ``b``, and leaves a name that is too long to the server: tensorhub takes the
    whole path as the database, so both are refused here, as a configuration error rather
    than as an unreachable server or a failed first write.
    """
    scheme_free = uri.split("://", 1)[-1]
    host_and_path = scheme_free.partition("?")[0]
    if "/" not in host_and_path:
        return
    database = unquote_plus(host_and_path.partition("/")[2])
    if database and (_BAD_DATABASE_CHARS.search(database) or len(database.encode("utf-8")) > 63):
        # the name is not quoted: with a raw '/' in the password, pymongo's path starts inside the password
        raise ConfigurationError(f"invalid MongoDB URI {redact_uri(uri)}: its path is not a valid MongoDB database "
                                 f"name: {DATABASE_RULE}. Pick another name (a password holding '/', '?' or '@' "
                                 "must be percent-encoded)")


def connect(uri: str) -> Any:
    """A pinged ``MongoClient`` for ``uri`` (fails fast when the server is unreachable).

    A URI pymongo refuses, or whose database MongoDB would refuse (:func:`check_database_name`),
    is a :class:`~tensorhub.errors.ConfigurationError`; the driver's message is scrubbed of the
    URI's secrets (and not chained when it quoted one).
    """
    timeout_ms = int(SERVER_TIMEOUT * 1000)
    where = redact_uri(uri)
    check_database_name(uri)
    try:
        client: pymongo.MongoClient[Document] = pymongo.MongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
        )
    except (pymongo.errors.ConfigurationError, ValueError, TypeError) as exc:
        if uri.lower().startswith("mongodb+srv:") and not isinstance(exc, pymongo.errors.InvalidURI):
            # the SRV/TXT records are looked up here: an unknown name is an unreachable server
            error: Exception = BackendUnavailableError(
                f"MongoDB at {where} is unreachable or misconfigured ({exc.__class__.__name__}: "
                f"{scrub(str(exc), uri)[:200]}). Check the host name, its DNS records and the network.")
        else:
            error = ConfigurationError(f"invalid MongoDB URI {where}: {scrub(str(exc), uri)}")
        raise error from (None if shows_secret(str(exc), uri) else exc)
    with translate_errors(where):
        try:
            client.admin.command("ping")
        except Exception:
            client.close()
            raise
    return client


def open_stores(uri: str, *, index: bool = True, blobs: bool = True) -> Stores:
    """Open ``mongodb://[user:pw@]host[:port]/[db]``: one client shared by the index and GridFS."""
    client = connect(uri)
    # the database as pymongo parsed it (a password may hold a raw '#', which urllib takes for a fragment)
    where, database = redact_uri(uri), client.get_default_database(DEFAULT_DATABASE).name
    return Stores(
        index=MongoIndexStore(client, database, where) if index else None,
        blobs=GridFSBlobStore(client, database, where) if blobs else None,
    )
