"""fsspec blob stores: any filesystem fsspec reaches as the blob layer of a hub.

``TensorHub("file://./hub", blobs="gs://bucket/prefix")`` keeps the index where the first URI
says and the bytes in Google Cloud Storage; ``az://container/prefix`` (Azure Blob), ``sftp://``,
``hdfs://``, ``webhdfs://`` and ``memory://name/prefix`` (fsspec's in-process memory) work the
same. ``fsspec+PROTOCOL://...`` reaches any other protocol fsspec knows, e.g. ``fsspec+file:///path``
for a local directory through fsspec (``file://`` is tensorhub's own SQLite + files backend).
``s3://`` stays on tensorhub's boto3 backend: s3fs is never used. The URI's path scopes the store:
key ``chunks/ab..`` of ``memory://bucket/prefix`` is ``/bucket/prefix/chunks/ab..``. Options
(credentials, accounts) come from fsspec's own configuration and each implementation's environment
variables (``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_ACCOUNT_NAME``...), or the URI's
netloc where the implementation reads it (``sftp://user@host:22/path``).

These URIs hold blobs only: an index needs ``file://``, ``mongodb://`` or ``s3://``, and opening
one as an index says so.

Writes are atomic per key (:class:`~tensorhub.backends.base.BlobStore`), by one of two means that
each protocol declares (:data:`PROTOCOLS`, :attr:`FsspecBlobStore.atomic_writes`):

* ``"rename"`` (local, memory, sftp, hdfs): the bytes go to a temp key ``.tmp-<uuid>`` beside the
  key (hidden from :meth:`~FsspecBlobStore.list`; :meth:`~FsspecBlobStore.sweep_incomplete` removes
  old ones a killed write left), then are moved onto the key. Where a rename does not replace an
  existing file (HDFS, SFTPv3 servers without ``posix-rename``) the old value is removed first:
  a reader then briefly sees nothing, never part of a value.
* ``"put"`` (gcs, azure): one upload of the whole object, which the service publishes only when
  complete; a stream is read whole first, so it is one upload too.

A protocol declaring neither is refused; :func:`register_fsspec_protocol` declares another one.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, cast

import fsspec
from fsspec.core import url_to_fs

from tensorhub.backends.base import FRESH_FOR, BlobStore, Stores
from tensorhub.errors import (
    BackendNotInstalledError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NotFoundError,
)
from tensorhub.redaction import redact_uri

AtomicWrites = Literal["rename", "put"]

#: the URI form that reaches any fsspec protocol: ``fsspec+memory://``, ``fsspec+file:///path``
FSSPEC_PREFIX = "fsspec+"
#: temp keys of "rename" writes start with this (as ``file://``'s temp files)
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Protocol:
    """What tensorhub knows of one fsspec protocol."""

    #: how a put is made atomic: a temp key moved into place, or one upload the service publishes whole
    atomic_writes: AtomicWrites
    #: the package that implements it for fsspec ("" when fsspec has it built in)
    package: str = ""
    #: what installs it (the pip extra, and the package where no extra names it)
    install: str = "pip install 'tensorhub[fsspec]'"


PROTOCOLS: dict[str, Protocol] = {
    "memory": Protocol("rename"),
    "file": Protocol("rename"),    # as fsspec+file:// (file:// is tensorhub's own backend)
    "local": Protocol("rename"),
    "gs": Protocol("put", "gcsfs", "pip install 'tensorhub[gcs]'"),
    "gcs": Protocol("put", "gcsfs", "pip install 'tensorhub[gcs]'"),
    "az": Protocol("put", "adlfs", "pip install 'tensorhub[azure]'"),
    "abfs": Protocol("put", "adlfs", "pip install 'tensorhub[azure]'"),
    "sftp": Protocol("rename", "paramiko", "pip install 'tensorhub[fsspec]' paramiko (or sshfs)"),
    "ssh": Protocol("rename", "paramiko", "pip install 'tensorhub[fsspec]' paramiko (or sshfs)"),
    "hdfs": Protocol("rename", "pyarrow", "pip install 'tensorhub[fsspec]' pyarrow, with a Hadoop client (libhdfs)"),
    "webhdfs": Protocol("rename", "requests", "pip install 'tensorhub[fsspec]' requests"),
}
#: protocols whose URIs open here without the ``fsspec+`` prefix (the registry's entries)
SCHEMES = ("memory", "gs", "gcs", "az", "abfs", "sftp", "ssh", "hdfs", "webhdfs")
#: never through fsspec: tensorhub's s3:// backend (boto3) serves them
REFUSED = {"s3": "s3://", "s3a": "s3://"}


def register_fsspec_protocol(protocol: str, atomic_writes: AtomicWrites, package: str = "",
                             install: str = "pip install 'tensorhub[fsspec]'") -> None:
    """Declare how fsspec's ``protocol`` writes a key atomically, so that ``fsspec+PROTOCOL://`` opens.

    ``"rename"``: its move replaces a file in one step (or removes then moves); ``"put"``: one
    upload of a whole object is published only when complete. Declaring a filesystem that does
    neither makes readers see partial blobs.
    """
    if atomic_writes not in ("rename", "put"):
        raise InvalidArgumentError(f"atomic_writes must be 'rename' or 'put', got {atomic_writes!r}")
    PROTOCOLS[protocol.lower()] = Protocol(atomic_writes, package, install)


def _protocol(uri: str) -> tuple[str, str]:
    """``(protocol, fsspec URL)`` of a tensorhub URI: ``fsspec+file:///x`` -> ``("file", "file:///x")``."""
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    protocol = scheme[len(FSSPEC_PREFIX):] if scheme.startswith(FSSPEC_PREFIX) else scheme
    return protocol, f"{protocol}://{rest}"


def _refuse_index(uri: str, protocol: str) -> ConfigurationError:
    shown = redact_uri(uri)
    return ConfigurationError(
        f"{shown} is a blob store (fsspec's {protocol!r} filesystem) and holds no index; give an index URI "
        f"(file://, mongodb://, s3://) and this URI as blobs, e.g. TensorHub('file://./hub', blobs='{shown}') "
        f"or TENSORHUB_BLOBS_URI={shown}")


def open_filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str, Protocol]:
    """The fsspec filesystem, root path and declared protocol a blob URI names (errors say how to fix it)."""
    protocol, url = _protocol(uri)
    shown = redact_uri(uri)
    if protocol in REFUSED:
        raise ConfigurationError(f"{shown}: {protocol} is served by tensorhub's boto3 backend, never through fsspec "
                                 f"(s3fs); use {REFUSED[protocol]}bucket/prefix")
    declared = PROTOCOLS.get(protocol)
    if declared is None:
        raise ConfigurationError(
            f"{shown}: fsspec's {protocol!r} filesystem is not declared to write a key atomically (by a rename that "
            "replaces, or by one upload published whole), so tensorhub refuses it as a blob store. Declared: "
            f"{', '.join(sorted(PROTOCOLS))}; if {protocol!r} does one of them, declare it with "
            "tensorhub.backends.fsspec.register_fsspec_protocol(protocol, 'rename' | 'put')")
    if "?" in url or "#" in url:
        raise ConfigurationError(f"{shown}: an fsspec blob URI takes no ?options; configure {protocol!r} through "
                                 "fsspec's configuration or the implementation's environment variables")
    try:
        fs, root = url_to_fs(url)
    except ImportError as exc:
        package = declared.package or exc.name or "its implementation"
        raise BackendNotInstalledError(
            f"the {protocol}:// blob store needs {package} (fsspec's implementation of {protocol!r}), which is not "
            f"installed: {exc}. {declared.install}") from exc
    except ValueError as exc:  # "Protocol not known"
        raise ConfigurationError(f"{shown}: fsspec cannot open {protocol!r}: {exc}") from exc
    root = root.rstrip("/")
    if not root.strip("/"):
        raise ConfigurationError(f"{shown} names no location; give a bucket or directory and an optional prefix, "
                                 f"e.g. {protocol}://bucket/prefix")
    return fs, root, declared


class FsspecBlobStore(BlobStore):
    """One file (object) per blob under ``root`` of an fsspec filesystem."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, uri: str, atomic_writes: AtomicWrites) -> None:
        if atomic_writes not in ("rename", "put"):  # a filesystem with neither would show partial blobs
            raise ConfigurationError(
                f"{redact_uri(uri)}: atomic_writes must be 'rename' or 'put', got {atomic_writes!r}")
        self.fs, self.root, self.uri = fs, root.rstrip("/"), redact_uri(uri)
        #: how puts are atomic here: "rename" (temp key, then moved) or "put" (one upload, published whole)
        self.atomic_writes: AtomicWrites = atomic_writes
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.shared_across_processes = "memory" not in protocols  # fsspec's memory lives in this process

    # ------------------------------------------------------------------ paths
    def _path(self, key: str) -> str:
        if not isinstance(key, str):
            raise InvalidArgumentTypeError(f"a blob key must be a string, got {type(key).__name__}")
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) or "\\" in p for p in parts):
            raise InvalidArgumentError(f"invalid blob key {key!r}: use non-empty '/'-separated names without '..' "
                                       f"or a leading '/' (and none starting with {TMP_PREFIX!r}: temp keys)")
        return f"{self.root}/{key}"

    def _key(self, path: str) -> str | None:
        """The key of a listed path, None for temp keys and paths outside the root."""
        path = path.rstrip("/")  # fsspec lists paths without the protocol, as url_to_fs gives the root
        if not path.startswith(self.root + "/"):
            return None
        key = path[len(self.root) + 1:]
        return None if any(p.startswith(TMP_PREFIX) for p in key.split("/")) else key

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """The filesystem's errors as tensorhub's: a missing key is NotFoundError, the rest unavailable."""
        try:
            yield
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFoundError(f"blob {key!r} is missing from {self.uri}") from exc
        except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
            raise BackendUnavailableError(f"{self.uri}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ writes
    def put(self, key: str, data: bytes | BinaryIO) -> None:
        path = self._path(key)
        if not isinstance(data, (bytes, bytearray, memoryview)) and not hasattr(data, "read"):
            raise InvalidArgumentTypeError(
                f"a blob must be bytes or a readable binary stream, got {type(data).__name__}")
        if self.atomic_writes == "put":
            # one upload the service publishes whole: a stream is read first (its errors are the caller's),
            # so that an upload interrupted mid-way is never committed
            body = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else data.read()
            with self._errors(key):
                self.fs.pipe_file(path, body)
            return
        with self._errors(key):
            parent = path.rsplit("/", 1)[0]
            tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}"
            try:
                self._write(tmp, data)
                self._move(tmp, path)
            except BaseException:
                try:
                    self.fs.rm_file(tmp)
                except Exception:  # noqa: BLE001 - never there, or sweep_incomplete removes it later
                    pass
                raise

    def _write(self, path: str, data: bytes | bytearray | memoryview | BinaryIO) -> None:
        """Write ``data`` to ``path`` (a temp key), making its directory when the filesystem says it is
        missing (local, sftp): once, not checked on every put. A stream is read only once opened."""
        parent = path.rsplit("/", 1)[0]
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                self.fs.pipe_file(path, bytes(data))
            except FileNotFoundError:
                self.fs.makedirs(parent, exist_ok=True)
                self.fs.pipe_file(path, bytes(data))
            return
        try:
            out = self.fs.open(path, "wb")
        except FileNotFoundError:
            self.fs.makedirs(parent, exist_ok=True)
            out = self.fs.open(path, "wb")
        with out:
            shutil.copyfileobj(data, out, 1 << 22)

    def _move(self, tmp: str, path: str) -> None:
        """Move ``tmp`` onto ``path``, replacing it (removed first where the filesystem's rename will not replace)."""
        try:
            self.fs.mv(tmp, path)
        except OSError:
            if not self.fs.isfile(path) or not self.fs.isfile(tmp):
                raise
            self.fs.rm_file(path)
            self.fs.mv(tmp, path)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors(key):
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass

    def freshen(self, key: str) -> bool:
        """Whether ``key`` exists; a blob older than ``FRESH_FOR`` is rewritten (a copy moved onto itself, or
        put again), fsspec having no portable "touch"."""
        path = self._path(key)
        with self._errors(key):
            try:
                modified = _as_datetime(self.fs.modified(path))
            except FileNotFoundError:
                return False
            except NotImplementedError:
                return self.exists(key)
            if modified is None or modified >= dt.datetime.now(dt.timezone.utc) - FRESH_FOR:
                return True
            try:
                if self.atomic_writes == "put":
                    self.fs.pipe_file(path, self.fs.cat_file(path))
                else:
                    tmp = f"{path.rsplit('/', 1)[0]}/{TMP_PREFIX}{uuid.uuid4().hex}"
                    self.fs.cp_file(path, tmp)
                    self._move(tmp, path)
            except FileNotFoundError:  # deleted meanwhile
                return False
            return True

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors(key):
            return bytes(self.fs.cat_file(path))

    def get_range(self, key: str, start: int, length: int | None = None) -> bytes:
        if start < 0 or (length is not None and length < 0):
            raise InvalidArgumentError(f"get_range needs start >= 0 and length >= 0, got {start}, {length}")
        path = self._path(key)
        with self._errors(key):
            if length == 0:
                if not self.fs.isfile(path):
                    raise FileNotFoundError(path)
                return b""
            return bytes(self.fs.cat_file(path, start=start, end=None if length is None else start + length))

    def open(self, key: str) -> BinaryIO:
        """A seekable reader over the blob (fsspec reads it in blocks)."""
        path = self._path(key)
        with self._errors(key):
            return cast(BinaryIO, self.fs.open(path, "rb"))

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._errors(key):
            return bool(self.fs.isfile(path))

    def store_exists(self) -> bool:
        """Whether anything is under the root (the first put creates it)."""
        with self._errors():
            return bool(self.fs.exists(self.root))

    def _found(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every path under the directory part of ``prefix``, with fsspec's details."""
        if prefix and (prefix.startswith("/") or ".." in prefix.split("/")):
            raise InvalidArgumentError(f"invalid blob prefix {prefix!r}: no leading '/' or '..'")
        base = f"{self.root}/{prefix.rsplit('/', 1)[0]}" if "/" in prefix else self.root
        with self._errors():
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return {}
        return cast(dict[str, dict[str, Any]], found)

    def list(self, prefix: str = "") -> Iterator[str]:
        for path in self._found(prefix):
            key = self._key(path)
            if key is not None and key.startswith(prefix):
                yield key

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime | None]]:
        for path, info in self._found(prefix).items():
            key = self._key(path)
            if key is not None and key.startswith(prefix):
                yield key, self._modified(path, info)

    def _modified(self, path: str, info: dict[str, Any]) -> dt.datetime | None:
        """When ``path`` was last written, from its listing's details (fields differ by implementation)."""
        for field in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
            when = _as_datetime(info.get(field))
            if when is not None:
                return when
        try:
            return _as_datetime(self.fs.modified(path))
        except (NotImplementedError, FileNotFoundError):
            return None

    def sweep_incomplete(self, older_than: dt.timedelta, dry_run: bool = False) -> int:
        """Delete the temp keys of "rename" puts killed before their move (unchanged for ``older_than``)."""
        if self.atomic_writes == "put":  # an unfinished upload is never published: nothing to sweep
            return 0
        cutoff = dt.datetime.now(dt.timezone.utc) - older_than
        swept = 0
        for path, info in self._found("").items():
            if not path.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                continue
            when = self._modified(path, info)
            if when is None or when > cutoff:  # a put may still be writing it
                continue
            if not dry_run:
                with self._errors():
                    try:
                        self.fs.rm_file(path)
                    except FileNotFoundError:
                        continue  # moved into place or removed meanwhile
            swept += 1
        return swept


def _as_datetime(value: Any) -> dt.datetime | None:
    """A listing's time (epoch seconds, datetime or ISO text) as an aware UTC datetime, else None."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str):
        try:
            return _as_datetime(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def open_stores(uri: str, *, index: bool = True, blobs: bool = True) -> Stores:
    """Open an fsspec URI as a blob store; it holds no index (that is refused, saying what to give instead)."""
    protocol, _ = _protocol(uri)
    if index:
        raise _refuse_index(uri, protocol)
    if not blobs:
        return Stores(index=None, blobs=None)
    fs, root, declared = open_filesystem(uri)
    return Stores(index=None, blobs=FsspecBlobStore(fs, root, uri, declared.atomic_writes))


__all__ = ["FSSPEC_PREFIX", "PROTOCOLS", "FsspecBlobStore", "Protocol", "open_filesystem", "open_stores",
           "register_fsspec_protocol"]
