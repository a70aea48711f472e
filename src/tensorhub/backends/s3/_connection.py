"""The connection of one ``s3://`` URI: a boto3 client, a thread pool, and conditional writes.

Opening checks the bucket with ``HeadBucket`` through a client that does not retry and has a
short connect timeout (``$TENSORHUB_S3_TIMEOUT``, 3 s), so a missing bucket, refused
credentials or an unreachable endpoint fail at once with
:class:`~tensorhub.errors.ConfigurationError` / :class:`~tensorhub.errors.BackendUnavailableError`.
The index and blob stores of a URI share one connection; the last to close it closes the
client. :meth:`S3Connection.put_if` is the compare-and-swap the index is built on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.session
import botocore.utils
from botocore.config import Config

from tensorhub._compat import botocore as botocore_compat
from tensorhub.backends.s3._errors import error_code, is_conflict, is_missing, translate_errors
from tensorhub.backends.s3._uri import S3Location
from tensorhub.errors import BackendUnavailableError, ConfigurationError

#: seconds to wait for a TCP connection to the endpoint ($TENSORHUB_S3_TIMEOUT overrides)
CONNECT_TIMEOUT = float(os.environ.get("TENSORHUB_S3_TIMEOUT", "3"))
READ_TIMEOUT = 60.0
#: attempts per request (botocore "standard" retries: connection errors, throttling, 5xx)
REQUEST_ATTEMPTS = 3
#: parallel GETs/PUTs of one store (segments, states, blob parts)
IO_THREADS = 16

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
            _loader = botocore_compat.data_loader(session)
        else:
            botocore_compat.share_data_loader(session, _loader)
    botocore_compat.set_timestamp_parser(session, _parse_timestamp)
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

            self._make = make
            self._client = make(REQUEST_ATTEMPTS)
            self._pid = os.getpid()
            probe = make(1)  # the open check must fail fast, not retry with backoff
            try:
                probe.head_bucket(Bucket=self.bucket)
            except BaseException as exc:
                self._client.close()
                if isinstance(exc, botocore.exceptions.ClientError) and error_code(exc) in ("404", "NoSuchBucket"):
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

    def _after_fork(self) -> None:
        """In a forked child (a DataLoader worker, a ``multiprocessing`` fork): a client and a thread
        pool of its own. The parent's pooled sockets must not be shared (two processes on one socket
        read each other's replies), and its pool threads and locks did not survive the fork."""
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._executor = None
            self._client = self._make(REQUEST_ATTEMPTS)
            self._pid = os.getpid()

    @property
    def client(self) -> Any:
        """The boto3 client (this process's own); :class:`BackendUnavailableError` once closed."""
        if self._closed:
            raise BackendUnavailableError(f"the store at {self.uri} is closed")
        self._after_fork()
        return self._client

    @property
    def executor(self) -> ThreadPoolExecutor:
        """A thread pool for parallel requests (created on first use)."""
        self._after_fork()
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
