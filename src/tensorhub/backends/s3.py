"""``s3://bucket/prefix`` backend: index and blobs on S3 (or MinIO, moto, R2...), no database.

URI and options
---------------
``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1``. Credentials,
region and endpoint come from the standard AWS chain (environment, ``~/.aws``, instance
roles); the query parameters ``endpoint_url``, ``region``, ``profile``,
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
``addressing_style`` (``path``/``virtual``), ``connect_timeout`` and ``read_timeout`` (seconds)
override it. Secrets are replaced by ``***`` in every ``uri`` attribute and message. Opening
checks the bucket
with ``HeadBucket`` through a client that does not retry and has a short connect timeout
(``$TENSORHUB_S3_TIMEOUT``, 3 s), so a missing bucket, refused credentials or an
unreachable endpoint fail at once with :class:`~tensorhub.errors.ConfigurationError` /
:class:`~tensorhub.errors.BackendUnavailableError`. Every botocore error is translated in
:func:`translate_errors`, and nowhere else.

Key layout under the prefix::

    <prefix>/blobs/<key>                          one object per blob
    <prefix>/index/<collection>/seg/<sid>.bson    immutable segment: the documents of one insert_many
    <prefix>/index/<collection>/state/<sid>.bson  mutable state of that segment's documents

Index design
------------
S3 gives no transactions, but it does give per-object compare-and-swap: ``PutObject`` with
``IfNoneMatch="*"`` (create only if absent) and ``IfMatch=<etag>`` (replace only if
unchanged). The index is built on that alone, so it is correct across processes and
machines with nothing but the bucket.

* ``insert_many`` writes ONE segment object (the BSON documents concatenated, as in a
  ``mongodump`` file) with ``IfNoneMatch="*"``: a batch of 10,000 log rows is one PUT, all
  or none, durable when the call returns. Segment ids are fresh ObjectIds, so segments list
  in roughly insertion order.
* Segments are never rewritten. Updates and deletes of a segment's documents go to its
  *state* object, which holds the current version of every updated document and the ids of
  the deleted ones, and which takes precedence over the segment's copies. Every change of a
  state is a CAS write (``IfNoneMatch="*"`` for the first, ``IfMatch`` after that); the
  write carries a fresh ``rev`` id, so ETags never repeat (no ABA) and a write whose reply
  was lost is recognised as ours when it is read back.
* ``find_one_and_update`` reads the collection, takes the first match, applies the update
  with :func:`tensorhub.query.apply_update` and CAS-writes the state of that document's
  segment. On ``412 PreconditionFailed`` / ``409 ConditionalRequestConflict`` it re-reads
  that state and tries again (bounded, with jittered backoff). Two callers can never both
  win the same document: the loser's CAS fails and the document no longer matches when it
  re-reads. ``update_many`` / ``delete_many`` do the same per touched segment, in parallel.
* When every document of a segment is deleted, its state says ``dead``; the segment object
  is removed at once and readers never download it again. The small dead state is kept as a
  tombstone (a late writer's CAS must fail on it) and swept by ``delete_many`` once it is
  older than :data:`DEAD_STATE_GRACE`; writers re-check any state older than
  :data:`MAX_VIEW_AGE` (well under the grace) before a CAS, so the sweep can never race one.
* Queries run in Python with :mod:`tensorhub.query` (same semantics as MongoDB). Each store
  instance caches segments (immutable) and states by ETag: a query costs one LIST request per
  1,000 objects of the collection plus a GET of each segment or state that is new or changed
  since this instance last looked; nothing is downloaded twice. A filter on ``_id`` (the
  repository's finish, heartbeat and delete paths) for documents this instance already knows
  re-reads just their segments' states (one GET each) instead of listing the collection, and
  matches ``{"_id": {"$in": [...]}}`` by set lookup instead of document by document.
* If the PUT of a segment fails in a way that leaves its outcome unknown (the request may have
  landed, only the reply been lost), the segment is deleted again before the error is raised,
  so a failed insert is not left visible (and a save whose blobs are cleaned up after the
  error does not leave a record pointing at them).

Costs and limits: a find is O(collection size) in memory and CPU (no server-side index) and
LISTs the whole collection prefix; single-row inserts (``save_training_log`` per step) make
one small segment each, and a fresh process downloads each once (no compaction yet);
deleting documents spread over many segments costs one PUT per segment; ``insert_many``
does not check ``_id`` uniqueness against stored documents (the repository always uses
fresh ObjectIds); a find reads each document at some moment during the call (as MongoDB
does without a snapshot), not the whole collection at one instant; ``find_one_and_update``
with a ``sort`` takes the first match of the view it read (the CAS guarantees it still
matched when it was taken, not that nothing sorting before it appeared meanwhile). Dead-state
tombstones make a bucket's key count grow with deleted segments until they are swept.
Conditional writes need an S3 that implements them (AWS since 2024, MinIO, R2, moto >= 5).

Blobs
-----
Small values are one ``PutObject``; large ones and streams go through boto3's
``upload_fileobj`` (multipart, parts uploaded in parallel; S3 publishes the object only
when the upload completes, so a reader never sees half a blob). ``get`` reads the first
chunk with a ranged GET and, for large blobs, the rest in parallel ranged GETs pinned to the
first chunk's ETag (``IfMatch``), so a concurrent replace cannot mix two versions.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import boto3
import boto3.exceptions
import botocore.exceptions
import botocore.loaders
import botocore.session
import botocore.utils
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from bson import ObjectId

from tensorhub.backends.base import BlobStore, Document, IndexStore, SortSpec
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
)
from tensorhub.query import apply_update, matches, sort_documents
from tensorhub.registry import Stores

log = logging.getLogger(__name__)

#: seconds to wait for a TCP connection to the endpoint ($TENSORHUB_S3_TIMEOUT overrides)
CONNECT_TIMEOUT = float(os.environ.get("TENSORHUB_S3_TIMEOUT", "3"))
READ_TIMEOUT = 60.0
#: attempts per request (botocore "standard" retries: connection errors, throttling, 5xx)
REQUEST_ATTEMPTS = 3
#: CAS attempts of one update before giving up (each failure means another writer succeeded)
CAS_ATTEMPTS = 64
#: a dead state (all of its segment deleted) older than this may be swept
DEAD_STATE_GRACE = timedelta(hours=1)
#: a state read longer ago than this is re-read before a CAS write (must stay << DEAD_STATE_GRACE)
MAX_VIEW_AGE = 600.0
#: an ``_id`` filter re-reads the states of at most this many segments instead of LISTing the collection
ID_LOOKUP_SEGMENTS = 8
#: blobs above this size are uploaded and downloaded in parallel parts of this size
PART_SIZE = 8 << 20
TRANSFER_CONCURRENCY = 8
#: parallel GETs/PUTs of one store (segments, states, blob parts)
IO_THREADS = 16

_OPTIONS = ("endpoint_url", "region", "profile", "aws_access_key_id", "aws_secret_access_key",
            "aws_session_token", "addressing_style", "connect_timeout", "read_timeout")
_SECRET_OPTIONS = ("aws_secret_access_key", "aws_session_token")
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "ExpiredToken",
                 "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled"}


# ---------------------------------------------------------------------------------- URI and errors
@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://`` URI: bucket, key prefix (``""`` or ending in ``/``) and options."""

    bucket: str
    prefix: str
    options: dict[str, str]
    uri: str  # redacted


def redact_uri(uri: str) -> str:
    """``uri`` with secret query parameters and any password replaced by ``***``."""
    parts = urlsplit(uri)
    pairs = [item.partition("=") for item in parts.query.split("&")] if parts.query else []
    query = "&".join(f"{k}{eq}***" if k in _SECRET_OPTIONS else f"{k}{eq}{v}" for k, eq, v in pairs)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def parse_uri(uri: str) -> S3Location:
    """Split ``s3://bucket/prefix?opt=value`` and validate its options."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "s3" or not parts.hostname:
        raise ConfigurationError(f"an S3 URI looks like s3://bucket/prefix, got {redact_uri(uri)!r}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigurationError(f"unknown s3:// option(s) {unknown} in {redact_uri(uri)!r}; "
                                 f"known options: {', '.join(_OPTIONS)}")
    if parts.username and "aws_access_key_id" not in options:  # s3://KEY:SECRET@bucket/prefix
        options["aws_access_key_id"] = parts.username
        if parts.password:
            options["aws_secret_access_key"] = parts.password
    prefix = parts.path.strip("/")
    return S3Location(bucket=parts.hostname, prefix=f"{prefix}/" if prefix else "", options=options,
                      uri=redact_uri(uri))


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_conflict(exc: BaseException) -> bool:
    """Whether a conditional write lost a race (412/409, or 404 for ``IfMatch`` on a removed key)."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    return _code(exc) in _CONFLICT_CODES or _status(exc) in (409, 412)


def is_missing(exc: BaseException) -> bool:
    """Whether a request failed because the object does not exist."""
    return isinstance(exc, botocore.exceptions.ClientError) and (_code(exc) in _MISSING_CODES or _status(exc) == 404)


@contextmanager
def translate_errors(where: str, key: str | None = None) -> Iterator[None]:
    """Turn botocore/boto3 errors into tensorhub errors that say what to do."""
    try:
        yield
    except boto3.exceptions.S3UploadFailedError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
            with translate_errors(where, key):
                raise cause from exc
        raise BackendUnavailableError(f"upload of {key!r} to {where} failed: {exc}") from exc
    except botocore.exceptions.ClientError as exc:
        code, status = _code(exc), _status(exc)
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        if code == "NoSuchBucket":
            raise ConfigurationError(f"the bucket of {where} does not exist: create it "
                                     "(e.g. `aws s3 mb s3://BUCKET`) or fix the URI") from exc
        if key is not None and (code in _MISSING_CODES or status == 404):
            raise NotFoundError(f"{key!r} is missing from {where}") from exc
        if code in _DENIED_CODES or status in (401, 403):
            raise BackendUnavailableError(
                f"S3 at {where} refused the request ({code}: {message}). Check the credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ?profile=, ?aws_access_key_id=) and that they "
                "may read, write, list and delete under the prefix.") from exc
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "301", "IllegalLocationConstraintException"):
            raise ConfigurationError(f"the bucket of {where} is in another region ({code}: {message}); "
                                     "pass ?region=THE_BUCKET_REGION") from exc
        if is_conflict(exc):
            raise BackendUnavailableError(f"S3 at {where}: a concurrent writer changed {key or 'an object'} "
                                          f"({code}); try again") from exc
        raise BackendUnavailableError(f"S3 at {where} failed ({code or status}: {message})") from exc
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as exc:
        raise ConfigurationError(
            f"no usable AWS credentials for {where} ({exc}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, configure a profile (?profile=NAME) or pass "
            "?aws_access_key_id=...&aws_secret_access_key=... in the URI") from exc
    except (botocore.exceptions.ProfileNotFound, botocore.exceptions.NoRegionError,
            botocore.exceptions.InvalidConfigError) as exc:
        raise ConfigurationError(f"the AWS configuration for {where} is invalid: {exc}") from exc
    except botocore.exceptions.ParamValidationError as exc:
        raise InvalidArgumentError(f"invalid S3 request for {where}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:  # connection refused, timeouts, broken streams
        raise BackendUnavailableError(
            f"the S3 endpoint of {where} is unreachable ({exc.__class__.__name__}: {str(exc)[:200]}). "
            "Check that it runs, the ?endpoint_url= and the network.") from exc


# ---------------------------------------------------------------------------------- connection
_loader: botocore.loaders.Loader | None = None
_loader_lock = threading.Lock()


def _parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser, with a fast path for S3's ISO-8601 ``LastModified``.

    botocore parses every timestamp with dateutil, which dominated the CPU cost of listing a
    collection (milliseconds per hundred keys).
    """
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        try:
            return datetime.fromisoformat(value[:-1] + "+00:00")
        except ValueError:
            pass
    return botocore.utils.parse_timestamp(value)


def _botocore_session() -> botocore.session.Session:
    """A botocore session sharing this process's data loader (service models are parsed once)."""
    global _loader
    session = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    return session


class S3Connection:
    """One boto3 client (thread-safe) and a thread pool, shared by the stores of one URI."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self.bucket = location.bucket
        self.uri = location.uri
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        opts = location.options
        try:
            timeout = float(opts.get("connect_timeout", CONNECT_TIMEOUT))
            read_timeout = float(opts.get("read_timeout", READ_TIMEOUT))
        except ValueError as exc:
            raise ConfigurationError(f"connect_timeout and read_timeout are seconds, in {self.uri}") from exc
        style = opts.get("addressing_style") or ("path" if opts.get("endpoint_url") else "auto")
        if style not in ("path", "virtual", "auto"):
            raise ConfigurationError(f"addressing_style must be path, virtual or auto in {self.uri}")
        with translate_errors(self.uri):
            session = boto3.session.Session(
                botocore_session=_botocore_session(),
                profile_name=opts.get("profile") or None, region_name=opts.get("region") or None,
                aws_access_key_id=opts.get("aws_access_key_id") or None,
                aws_secret_access_key=opts.get("aws_secret_access_key") or None,
                aws_session_token=opts.get("aws_session_token") or None)
            if session.get_credentials() is None:
                raise botocore.exceptions.NoCredentialsError()

            def make(attempts: int) -> Any:
                config = Config(connect_timeout=timeout, read_timeout=read_timeout,
                                retries={"total_max_attempts": attempts, "mode": "standard"},
                                max_pool_connections=IO_THREADS * 2, s3={"addressing_style": style},
                                user_agent_extra="tensorhub")
                return session.client("s3", endpoint_url=opts.get("endpoint_url") or None, config=config)

            self._client = make(REQUEST_ATTEMPTS)
            probe = make(1)  # the open check must fail fast, not retry with backoff
            try:
                probe.head_bucket(Bucket=self.bucket)
            except BaseException as exc:
                self._client.close()
                if isinstance(exc, botocore.exceptions.ClientError) and _code(exc) in ("404", "NoSuchBucket"):
                    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                    if not any(h.lower().startswith("x-amz") for h in headers):
                        raise BackendUnavailableError(
                            f"the endpoint of {self.uri} answered 404 but does not look like an S3 service "
                            "(no x-amz-* headers): check ?endpoint_url= and the network") from exc
                    raise ConfigurationError(
                        f"S3 bucket {self.bucket!r} does not exist at {self.uri}: create it "
                        f"(e.g. `aws s3 mb s3://{self.bucket}`) or fix the URI") from exc
                raise
            finally:
                probe.close()

    @property
    def client(self) -> Any:
        """The boto3 client; :class:`BackendUnavailableError` once closed."""
        if self._closed:
            raise BackendUnavailableError(f"the store at {self.uri} is closed")
        return self._client

    @property
    def executor(self) -> ThreadPoolExecutor:
        """A thread pool for parallel requests (created on first use)."""
        with self._lock:
            if self._closed:
                raise BackendUnavailableError(f"the store at {self.uri} is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="tensorhub-s3")
            return self._executor

    def map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        """``[fn(x) for x in items]``, in parallel when there are several."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        return list(self.executor.map(fn, items))

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        """Drop one user; the last one closes the client and the thread pool."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        self._client.close()

    def list(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object (``Key``, ``ETag``, ``LastModified``, ``Size``) under ``prefix``."""
        with translate_errors(self.uri):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                yield from page.get("Contents", ())

    def get(self, key: str) -> tuple[bytes, str] | None:
        """``(body, etag)`` of an object, or ``None`` if it does not exist."""
        with translate_errors(self.uri):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                return response["Body"].read(), response["ETag"]
            except botocore.exceptions.ClientError as exc:
                if is_missing(exc):
                    return None
                raise

    def exists(self, key: str) -> bool:
        with translate_errors(self.uri):
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
                return True
            except botocore.exceptions.ClientError as exc:
                if is_missing(exc):
                    return False
                raise

    def put_if(self, key: str, body: bytes, etag: str | None) -> str | None:
        """CAS write: replace ``key`` if its ETag is ``etag`` (create it if ``etag`` is None).

        Returns the new ETag, or ``None`` when another writer got there first.
        """
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        with translate_errors(self.uri):
            try:
                return self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)["ETag"]
            except botocore.exceptions.ClientError as exc:
                if is_conflict(exc) or (etag and is_missing(exc)):
                    return None
                raise

    def delete_keys(self, keys: Iterable[str]) -> int:
        """Delete keys in batches of 1,000 (``DeleteObjects``); return how many were sent."""
        keys = list(keys)
        with translate_errors(self.uri):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start:start + 1000]]
                response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                errors = response.get("Errors") or []
                if errors:
                    first = errors[0]
                    raise BackendUnavailableError(
                        f"S3 at {self.uri} could not delete {len(errors)} object(s), e.g. {first.get('Key')!r}: "
                        f"{first.get('Code')} {first.get('Message')}")
        return len(keys)


# ---------------------------------------------------------------------------------- index
def _split_bson(data: bytes, where: str) -> list[bytes]:
    """Cut concatenated BSON documents apart (each starts with its int32 length)."""
    out, pos, view = [], 0, memoryview(data)
    while pos < len(data):
        size = int.from_bytes(view[pos:pos + 4], "little")
        if size < 5 or pos + size > len(data):
            raise CorruptDataError(f"{where} is not a sequence of BSON documents (truncated or altered)")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    return out


def _idkey(value: Any) -> Any:
    """A hashable key for an ``_id`` (ObjectIds and other BSON scalars)."""
    return ("oid", value.binary) if isinstance(value, ObjectId) else (type(value).__name__, repr(value))


def _split_id_condition(filter: Mapping[str, Any]) -> tuple[set[Any] | None, Mapping[str, Any]]:
    """``(keys, rest)``: the ``_id`` keys a top-level ``_id``/``$in`` of ObjectIds allows, and the rest.

    Matching ``{"_id": {"$in": [1,000 ids]}}`` document by document costs 1,000 comparisons each;
    a set lookup is exact instead (an ``_id`` is never an array, and only an ObjectId equals an
    ObjectId). Anything else returns ``(None, filter)`` and is matched in full.
    """
    if not isinstance(filter, Mapping) or "_id" not in filter:
        return None, filter
    condition = filter["_id"]
    if isinstance(condition, Mapping) and len(condition) == 1 and "$eq" in condition:
        condition = condition["$eq"]
    if isinstance(condition, ObjectId):
        values: Any = [condition]
    elif (isinstance(condition, Mapping) and len(condition) == 1 and isinstance(condition.get("$in"), (list, tuple))
          and all(isinstance(v, ObjectId) for v in condition["$in"])):
        values = condition["$in"]
    else:
        return None, filter
    return {_idkey(v) for v in values}, {k: v for k, v in filter.items() if k != "_id"}


class _Entry(NamedTuple):
    sid: str
    key: Any
    raw: bytes
    doc: Document  # shared with the cache: never mutated, never returned


class _Segment:
    """An immutable segment: its documents in insertion order (decoded on first use)."""

    def __init__(self, raws: list[bytes]) -> None:
        self.raws = raws
        self._docs: list[Document] | None = None

    @property
    def docs(self) -> list[Document]:
        if self._docs is None:  # two threads may both decode: harmless, one result wins
            self._docs = [decode_document(r) for r in self.raws]
        return self._docs

    @classmethod
    def parse(cls, data: bytes, where: str) -> _Segment:
        return cls(_split_bson(data, where))


@dataclass
class _State:
    """The mutable overlay of one segment (absent object: ``etag=None``, no changes)."""

    etag: str | None = None
    rev: Any = None
    docs: dict[Any, tuple[bytes, Document]] = field(default_factory=dict)  # key -> current version
    deleted: dict[Any, Any] = field(default_factory=dict)  # key -> _id
    dead: bool = False
    checked: float = field(default_factory=time.monotonic)  # when this version was known current

    @classmethod
    def parse(cls, data: bytes, etag: str, where: str) -> _State:
        raws = _split_bson(data, where)
        if not raws:
            raise CorruptDataError(f"{where} is empty")
        header = decode_document(raws[0])
        docs = {}
        for raw in raws[1:]:
            doc = decode_document(raw)
            docs[_idkey(doc["_id"])] = (raw, doc)
        return cls(etag=etag, rev=header.get("rev"), docs=docs,
                   deleted={_idkey(i): i for i in header.get("deleted", [])}, dead=bool(header.get("dead")))

    def encode(self, rev: ObjectId) -> bytes:
        header = encode_document({"v": 1, "rev": rev, "dead": self.dead, "deleted": list(self.deleted.values())})
        return header + b"".join(raw for raw, _ in self.docs.values())


@dataclass
class _View:
    """What one store instance knows of one collection."""

    lock: threading.RLock = field(default_factory=threading.RLock)  # short in-memory sections only
    refresh_lock: threading.Lock = field(default_factory=threading.Lock)
    segments: dict[str, _Segment] = field(default_factory=dict)
    states: dict[str, _State] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # live segment ids, in listing order
    orphans: dict[str, datetime] = field(default_factory=dict)  # state without segment -> LastModified
    undeleted: list[str] = field(default_factory=list)  # dead segments whose object is still there
    seen: dict[str, float] = field(default_factory=dict)  # sid -> when a listing (or our insert) showed it
    entries: list[_Entry] = field(default_factory=list)
    key_index: dict[Any, str] = field(default_factory=dict)  # _id key -> sid of the live documents
    signature: Any = None


class _Gone(Exception):
    """A segment vanished (it was dead and got swept) while we worked on it."""


class S3IndexStore(IndexStore):
    """Collections of documents in immutable segments plus CAS-written state objects (see module doc)."""

    def __init__(self, connection: S3Connection) -> None:
        self._conn = connection
        self._conn.acquire()
        self._root = f"{connection.location.prefix}index/"
        self._views: dict[str, _View] = {}
        self._views_lock = threading.Lock()
        self._closed = False
        self.uri = connection.uri

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.release()

    # -------------------------------------------------------------- keys and cache
    def _prefix(self, collection: str) -> str:
        if not isinstance(collection, str) or not _COLLECTION_NAME.match(collection):
            raise InvalidArgumentError(f"collection names are letters, digits, '_', '.', '-'; got {collection!r}")
        return f"{self._root}{collection}/"

    def _seg_key(self, collection: str, sid: str) -> str:
        return f"{self._prefix(collection)}seg/{sid}.bson"

    def _state_key(self, collection: str, sid: str) -> str:
        return f"{self._prefix(collection)}state/{sid}.bson"

    def _view(self, collection: str) -> _View:
        with self._views_lock:
            return self._views.setdefault(collection, _View())

    def _listing(self, prefix: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """``(segments, states)`` of a collection, from one LIST of its prefix: sid -> object."""
        segments: dict[str, dict[str, Any]] = {}
        states: dict[str, dict[str, Any]] = {}
        for obj in self._conn.list(prefix):
            kind, _, name = obj["Key"][len(prefix):].partition("/")
            if name.endswith(".bson") and "/" not in name:
                {"seg": segments, "state": states}.get(kind, {})[name[:-5]] = obj
        return segments, states

    def _fetch_state(self, collection: str, sid: str) -> _State:
        """The current state of a segment from S3 (an empty one, ``etag=None``, if it has none)."""
        key = self._state_key(collection, sid)
        got = self._conn.get(key)
        if got is None:
            return _State()
        return _State.parse(got[0], got[1], key)

    def _refresh(self, collection: str) -> _View:
        """Bring the cached view of a collection up to date: a LIST, GETs of what changed only.

        ``view.lock`` is only held for short in-memory steps, never while waiting on the thread
        pool (whose threads may be CAS workers needing it); ``refresh_lock`` serialises refreshes.
        """
        prefix = self._prefix(collection)
        view = self._view(collection)
        with view.refresh_lock:
            # A segment is deleted only after its state is dead, and a dead state is swept only
            # DEAD_STATE_GRACE later, so a listing never shows a live segment without its state.
            segments, states = self._listing(prefix)
            now = time.monotonic()
            with view.lock:
                stale = [sid for sid, obj in states.items()
                         if sid in segments and (sid not in view.states or view.states[sid].etag != obj["ETag"])]
            fetched = self._conn.map(lambda sid: (sid, self._fetch_state(collection, sid)), stale)
            with view.lock:
                for sid, state in fetched:
                    view.states[sid] = state
                fetched_ids = {sid for sid, _ in fetched}
                for sid in segments:
                    cached = view.states.get(sid)
                    if sid not in states and (cached is None or cached.etag is None):
                        view.states[sid] = _State(checked=now)  # no state object: fresh
                    elif cached is not None and sid not in fetched_ids:
                        cached.checked = now
                live = [sid for sid in sorted(segments) if sid in view.states and not view.states[sid].dead]
                missing = [sid for sid in live if sid not in view.segments]

            def load(sid: str) -> tuple[str, _Segment | None]:
                key = self._seg_key(collection, sid)
                got = self._conn.get(key)
                return sid, None if got is None else _Segment.parse(got[0], key)

            loaded = self._conn.map(load, missing)
            with view.lock:
                gone = {sid for sid, segment in loaded if segment is None}  # swept between LIST and GET: dead
                view.segments.update((sid, segment) for sid, segment in loaded if segment is not None)
                view.order = [sid for sid in live if sid not in gone]
                keep = set(view.order)
                view.segments = {sid: seg for sid, seg in view.segments.items() if sid in keep}
                view.states = {sid: st for sid, st in view.states.items() if sid in segments}
                view.orphans = {sid: obj["LastModified"] for sid, obj in states.items() if sid not in segments}
                view.undeleted = [sid for sid in segments if sid in view.states and view.states[sid].dead]
                view.seen = {sid: now for sid in view.order}
                self._rebuild(view)
        return view

    def _rebuild(self, view: _View) -> None:
        """Recompute the resolved documents if any segment or state changed (caller holds the lock)."""
        signature = tuple((sid, view.states[sid].etag, view.states[sid].rev) for sid in view.order)
        if signature == view.signature:
            return
        entries = []
        for sid in view.order:
            entries.extend(self._segment_entries(view, sid))
        view.entries, view.signature = entries, signature
        view.key_index = {e.key: e.sid for e in entries}

    def _segment_entries(self, view: _View, sid: str) -> list[_Entry]:
        segment, state = view.segments.get(sid), view.states.get(sid) or _State()
        if segment is None or state.dead:
            return []
        out = []
        for raw, doc in zip(segment.raws, segment.docs, strict=True):
            key = _idkey(doc["_id"])
            if key in state.deleted:
                continue
            if key in state.docs:
                raw, doc = state.docs[key]
            out.append(_Entry(sid, key, raw, doc))
        return out

    @staticmethod
    def _select(entries: list[_Entry], filter: Mapping[str, Any], sort: SortSpec | None = None) -> list[_Entry]:
        keys, rest = _split_id_condition(filter)
        if keys is not None:  # exact pre-filter: the repository deletes and claims by _id / $in
            entries = [e for e in entries if e.key in keys]
        hits = [e for e in entries if matches(e.doc, rest)]
        if sort:
            by_doc = {id(e.doc): e for e in hits}
            docs = sort_documents([e.doc for e in hits], sort)
            hits = [by_doc[id(d)] for d in docs]
        return hits

    # -------------------------------------------------------------- CAS on a segment's state
    def _install(self, collection: str, sid: str, state: _State) -> None:
        view = self._view(collection)
        with view.lock:
            old = view.states.get(sid)
            if old is None or old.etag != state.etag or old.rev != state.rev:
                view.states[sid] = state
                if sid in view.order:
                    self._rebuild(view)

    def _reload(self, collection: str, sid: str) -> _State:
        """Re-read one segment's state after a lost race (raises :class:`_Gone` if it was swept)."""
        state = self._fetch_state(collection, sid)
        view = self._view(collection)
        with view.lock:
            recently_seen = time.monotonic() - view.seen.get(sid, float("-inf")) < MAX_VIEW_AGE
        # no state object: a fresh segment, unless it died and was swept (which takes DEAD_STATE_GRACE)
        if state.etag is None and not recently_seen and not self._conn.exists(self._seg_key(collection, sid)):
            with view.lock:
                view.segments.pop(sid, None)
                view.states.pop(sid, None)
                if sid in view.order:
                    view.order.remove(sid)
                    self._rebuild(view)
            raise _Gone(sid)
        self._install(collection, sid, state)
        return state

    def _current(self, collection: str, sid: str) -> _State:
        view = self._view(collection)
        with view.lock:
            state = view.states.get(sid) or _State()
        if time.monotonic() - state.checked > MAX_VIEW_AGE:
            state = self._reload(collection, sid)
        return state

    def _cas(self, collection: str, sid: str, old: _State, new: _State) -> bool:
        """Write ``new`` over ``old`` if nobody changed it meanwhile; install it in the cache."""
        rev = ObjectId()
        key = self._state_key(collection, sid)
        etag = self._conn.put_if(key, new.encode(rev), old.etag)
        if etag is None:
            current = self._reload(collection, sid)
            if current.rev != rev:
                return False
            etag = current.etag  # our write landed; only its reply was lost
        new.etag, new.rev, new.checked = etag, rev, time.monotonic()
        self._install(collection, sid, new)
        return True

    def _change_segment(self, collection: str, sid: str, filter: Mapping[str, Any],
                        change: Any, first_only: bool = False, sort: SortSpec | None = None) -> list[bytes]:
        """CAS-apply ``change(state, entries) -> new state`` to the matches of one segment.

        Retries on conflicts (re-reading the state); returns the raw BSON of the changed documents.
        """
        view = self._view(collection)
        for attempt in range(CAS_ATTEMPTS):
            try:
                state = self._current(collection, sid)
            except _Gone:
                return []
            with view.lock:
                hits = self._select(self._segment_entries(view, sid), filter, sort)
            if first_only:
                hits = hits[:1]
            if not hits:
                return []
            new, raws = change(state, hits)
            try:
                if self._cas(collection, sid, state, new):
                    if new.dead:
                        self._drop_segment(collection, sid)
                    return raws
            except _Gone:
                return []
            log.debug("s3 index %s/%s: CAS conflict on segment %s (attempt %d)", self.uri, collection, sid, attempt)
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
        raise BackendUnavailableError(
            f"gave up updating {collection} at {self.uri} after {CAS_ATTEMPTS} conflicting concurrent writes; "
            "too many writers on the same records, try again")

    def _drop_segment(self, collection: str, sid: str) -> None:
        """Remove a dead segment's object (its state stays as a tombstone until swept)."""
        view = self._view(collection)
        with view.lock:
            view.segments.pop(sid, None)
            if sid in view.order:
                view.order.remove(sid)
                self._rebuild(view)
        try:
            self._conn.delete_keys([self._seg_key(collection, sid)])
        except BackendUnavailableError:
            log.warning("could not remove the dead segment %s of %s; it will be retried", sid, collection,
                        exc_info=True)

    @staticmethod
    def _updated(state: _State, hits: list[_Entry], update: Mapping[str, Any]) -> tuple[_State, list[bytes]]:
        docs = dict(state.docs)
        raws = []
        for e in hits:
            doc = apply_update(decode_document(e.raw), update)
            raw = encode_document(doc)
            docs[e.key] = (raw, decode_document(raw))
            raws.append(raw)
        return _State(etag=state.etag, rev=state.rev, docs=docs, deleted=dict(state.deleted)), raws

    def _deleted(self, view: _View, sid: str, state: _State, hits: list[_Entry]) -> tuple[_State, list[bytes]]:
        deleted = dict(state.deleted)
        docs = dict(state.docs)
        for e in hits:
            deleted[e.key] = e.doc["_id"]
            docs.pop(e.key, None)
        segment = view.segments.get(sid)
        dead = segment is not None and len(deleted) >= len(segment.raws)
        if dead:
            deleted, docs = {}, {}
        new = _State(etag=state.etag, rev=state.rev, docs=docs, deleted=deleted, dead=dead)
        return new, [e.raw for e in hits]

    # -------------------------------------------------------------- IndexStore
    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        if not documents:
            return
        prefix = self._prefix(collection)
        if any("_id" not in d for d in documents):
            raise InvalidArgumentError(f"insert_many into {collection}: every document needs an _id")
        raws = [encode_document(d) for d in documents]
        segment = _Segment(raws)
        keys = [_idkey(d["_id"]) for d in documents]
        if len(set(keys)) != len(keys):
            raise InvalidArgumentError(f"insert_many into {collection}: the batch repeats an _id")
        body = b"".join(raws)
        for _ in range(3):
            sid = str(ObjectId())
            key = f"{prefix}seg/{sid}.bson"
            try:
                created = self._conn.put_if(key, body, None)
            except BackendUnavailableError:
                self._rollback(key)
                raise
            if created is None:
                got = self._conn.get(key)  # a retried PUT whose first try landed reads back as ours
                if got is None or got[0] != body:
                    continue
            break
        else:
            raise BackendUnavailableError(f"could not create a new segment in {collection} at {self.uri}")
        view = self._view(collection)
        with view.lock:
            view.segments[sid] = segment
            view.states.setdefault(sid, _State())
            view.seen[sid] = time.monotonic()

    def _rollback(self, key: str) -> None:
        """After a failed segment PUT whose outcome is unknown (the request may have landed and
        only the reply been lost), delete the segment so the caller's error means "not inserted"."""
        try:
            self._conn.delete_keys([key])
        except BackendUnavailableError:
            log.warning("an insert into %s failed and its segment %s could not be removed: it may become "
                        "visible", self.uri, key, exc_info=True)

    def find(
        self, collection: str, filter: Mapping[str, Any], sort: SortSpec | None = None, limit: int | None = None
    ) -> list[Document]:
        view, _ = self._targets(collection, filter)
        with view.lock:
            entries = view.entries
        hits = self._select(entries, filter, sort)
        if limit:
            hits = hits[:limit]
        return [decode_document(e.raw) for e in hits]

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        view, _ = self._targets(collection, filter)
        with view.lock:
            entries = view.entries
        return len(self._select(entries, filter))

    def _validate_update(self, update: Mapping[str, Any]) -> None:
        apply_update({}, update)  # raises InvalidQueryError before anything is read or written

    def _targets(self, collection: str, filter: Mapping[str, Any]) -> tuple[_View, list[str]]:
        """The collection's view, up to date for the segments that can hold matches of ``filter``.

        A filter on ``_id`` whose documents this instance already knows, in a few segments (the
        repository's finish, heartbeat and delete paths) costs one GET of each of those segments'
        states instead of a LIST of the whole collection; anything else refreshes the whole view.
        """
        keys, _ = _split_id_condition(filter)
        view = self._view(collection)
        if keys is not None:
            with view.lock:
                sids = {view.key_index.get(k) for k in keys}
            if None not in sids and len(sids) <= ID_LOOKUP_SEGMENTS:
                def reload(sid: str) -> None:
                    with suppress(_Gone):
                        self._reload(collection, sid)

                self._conn.map(reload, sorted(sids))
                return view, sorted(sids)
        view = self._refresh(collection)
        with view.lock:
            return view, list(view.order)

    def _by_segment(self, collection: str, filter: Mapping[str, Any]) -> list[str]:
        view, _ = self._targets(collection, filter)
        with view.lock:
            entries = view.entries
        return list(dict.fromkeys(e.sid for e in self._select(entries, filter)))

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        self._validate_update(update)
        sids = self._by_segment(collection, filter)
        done = self._conn.map(
            lambda sid: self._change_segment(collection, sid, filter,
                                             lambda state, hits: self._updated(state, hits, update)), sids)
        return sum(len(raws) for raws in done)

    def find_one_and_update(
        self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any], sort: SortSpec | None = None
    ) -> Document | None:
        self._validate_update(update)
        view, _ = self._targets(collection, filter)
        for _ in range(CAS_ATTEMPTS):
            with view.lock:
                hits = self._select(view.entries, filter, sort)
            if not hits:
                return None
            first = hits[0]
            raws = self._change_segment(
                collection, first.sid, {"_id": first.doc["_id"], "$and": [filter]},
                lambda state, found: self._updated(state, found, update), first_only=True)
            if raws:
                return decode_document(raws[0])
            # the first match stopped matching under us (taken by another writer): next candidate
        raise BackendUnavailableError(f"gave up on find_one_and_update in {collection} at {self.uri}: "
                                      "every candidate was taken by concurrent writers; try again")

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        sids = self._by_segment(collection, filter)
        view = self._view(collection)
        done = self._conn.map(
            lambda sid: self._change_segment(collection, sid, filter,
                                             lambda state, hits: self._deleted(view, sid, state, hits)), sids)
        self._sweep(collection)
        return sum(len(raws) for raws in done)

    def _sweep(self, collection: str) -> None:
        """Best effort: remove dead segments left behind, and tombstones older than the grace period."""
        view = self._view(collection)
        cutoff = datetime.now(timezone.utc) - DEAD_STATE_GRACE
        with view.lock:
            old = [sid for sid, modified in view.orphans.items() if modified < cutoff]
            keys = [self._seg_key(collection, sid) for sid in view.undeleted]
            keys += [self._state_key(collection, sid) for sid in old]
        if not keys:
            return
        try:
            self._conn.delete_keys(keys)
        except BackendUnavailableError:
            log.warning("could not sweep %d dead objects of %s", len(keys), collection, exc_info=True)
            return
        with view.lock:
            for sid in old:
                view.orphans.pop(sid, None)
            view.undeleted = []


# ---------------------------------------------------------------------------------- blobs
class S3BlobStore(BlobStore):
    """One object per blob under ``<prefix>/blobs/``."""

    def __init__(self, connection: S3Connection) -> None:
        self._conn = connection
        self._conn.acquire()
        self._root = f"{connection.location.prefix}blobs/"
        self._closed = False
        self.uri = connection.uri
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                       max_concurrency=TRANSFER_CONCURRENCY, use_threads=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.release()

    def _key(self, key: str) -> str:
        parts = key.split("/") if isinstance(key, str) else [""]
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgumentError(f"invalid blob key {key!r}: use non-empty '/'-separated names without '..'")
        return self._root + key

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        s3key = self._key(key)
        client, bucket = self._conn.client, self._conn.bucket
        with translate_errors(self.uri, key):
            if isinstance(data, (bytes, bytearray, memoryview)):
                if len(data) <= PART_SIZE:
                    client.put_object(Bucket=bucket, Key=s3key, Body=bytes(data))
                    return
                data = io.BytesIO(data)
            if not hasattr(data, "read"):
                raise InvalidArgumentError(
                    f"a blob must be bytes or a readable binary stream, got {type(data).__name__}")
            client.upload_fileobj(data, bucket, s3key, Config=self.transfer)

    def get(self, key: str) -> bytes:
        s3key = self._key(key)
        client, bucket = self._conn.client, self._conn.bucket
        with translate_errors(self.uri, key):
            try:
                first = client.get_object(Bucket=bucket, Key=s3key, Range=f"bytes=0-{PART_SIZE - 1}")
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "InvalidRange":  # an empty object has no byte 0
                    return client.get_object(Bucket=bucket, Key=s3key)["Body"].read()
                raise
            head = first["Body"].read()
            total = int(first.get("ContentRange", "/0").rsplit("/", 1)[-1] or 0)
            if "ContentRange" not in first or total <= len(head):
                return head
            etag = first["ETag"]

            def part(start: int) -> bytes:
                end = min(start + PART_SIZE, total) - 1
                return client.get_object(Bucket=bucket, Key=s3key, Range=f"bytes={start}-{end}",
                                         IfMatch=etag)["Body"].read()

            try:
                rest = self._conn.map(part, list(range(len(head), total, PART_SIZE)))
            except botocore.exceptions.ClientError as exc:
                if not is_conflict(exc):
                    raise
                # replaced while we read it: read the new version whole, in one request
                return client.get_object(Bucket=bucket, Key=s3key)["Body"].read()
            return b"".join([head, *rest])

    def get_range(self, key: str, start: int, length: int | None = None) -> bytes:
        if start < 0 or (length is not None and length < 0):
            raise InvalidArgumentError(f"get_range needs start >= 0 and length >= 0, got {start}, {length}")
        if length == 0:
            return b""
        s3key = self._key(key)
        span = f"bytes={start}-" if length is None else f"bytes={start}-{start + length - 1}"
        with translate_errors(self.uri, key):
            try:
                return self._conn.client.get_object(Bucket=self._conn.bucket, Key=s3key, Range=span)["Body"].read()
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "InvalidRange":  # start at or past the end
                    if not self._conn.exists(s3key):
                        raise NotFoundError(f"{key!r} is missing from {self.uri}") from exc
                    return b""
                raise

    def open(self, key: str) -> BinaryIO:
        """A streaming reader over the blob (not seekable; use :meth:`get_range` for slices)."""
        s3key = self._key(key)
        with translate_errors(self.uri, key):
            return self._conn.client.get_object(Bucket=self._conn.bucket, Key=s3key)["Body"]

    def exists(self, key: str) -> bool:
        return self._conn.exists(self._key(key))

    def delete(self, key: str) -> None:
        s3key = self._key(key)
        with translate_errors(self.uri):
            self._conn.client.delete_object(Bucket=self._conn.bucket, Key=s3key)

    def list(self, prefix: str = "") -> Iterator[str]:
        for obj in self._conn.list(self._root + prefix):
            yield obj["Key"][len(self._root):]

    def delete_prefix(self, prefix: str) -> int:
        return self._conn.delete_keys(self._root + key for key in list(self.list(prefix)))


def open_stores(uri: str, *, index: bool = True, blobs: bool = True) -> Stores:
    """Open ``s3://bucket/prefix[?options]``: the index under ``prefix/index/``, blobs under ``prefix/blobs/``."""
    location = parse_uri(uri)
    connection = S3Connection(location)
    connection.acquire()  # held until both stores exist, so a failure below closes the client
    try:
        return Stores(index=S3IndexStore(connection) if index else None,
                      blobs=S3BlobStore(connection) if blobs else None)
    finally:
        connection.release()


__all__ = ["S3BlobStore", "S3Connection", "S3IndexStore", "open_stores", "parse_uri", "redact_uri",
           "translate_errors"]
