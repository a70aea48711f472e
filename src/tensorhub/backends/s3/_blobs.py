"""The S3 blob store: one object per blob under ``<prefix>/blobs/<key>``.

Small values are one ``PutObject``; large ones and streams go through boto3's
``upload_fileobj`` (multipart, parts uploaded in parallel; S3 publishes the object only
when the upload completes, so a reader never sees half a blob). ``get`` reads the first
chunk with a ranged GET and, for large blobs, the rest in parallel ranged GETs pinned to the
first chunk's ETag (``IfMatch``), so a concurrent replace cannot mix two versions.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from typing import BinaryIO

import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from tensorhub.backends.base import FRESH_FOR, BlobStore
from tensorhub.backends.s3._connection import S3Connection
from tensorhub.backends.s3._errors import error_code, is_conflict, is_missing, translate_errors
from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, NotFoundError

#: blobs above this size are uploaded and downloaded in parallel parts of this size
PART_SIZE = 8 << 20
TRANSFER_CONCURRENCY = 8


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
                raise InvalidArgumentTypeError(
                    f"a blob must be bytes or a readable binary stream, got {type(data).__name__}")
            client.upload_fileobj(data, bucket, s3key, Config=self.transfer)

    def get(self, key: str) -> bytes:
        s3key = self._key(key)
        client, bucket = self._conn.client, self._conn.bucket
        with translate_errors(self.uri, key):
            try:
                first = client.get_object(Bucket=bucket, Key=s3key, Range=f"bytes=0-{PART_SIZE - 1}")
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) == "InvalidRange":  # an empty object has no byte 0
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
                if error_code(exc) == "InvalidRange":  # start at or past the end
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

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, dt.datetime | None]]:
        for obj in self._conn.list(self._root + prefix):
            yield obj["Key"][len(self._root):], obj["LastModified"]

    def freshen(self, key: str) -> bool:
        """One HEAD; an object older than ``FRESH_FOR`` is also copied onto itself (S3's only "touch")."""
        s3key = self._key(key)
        client, bucket = self._conn.client, self._conn.bucket
        with translate_errors(self.uri, key):
            try:
                head = client.head_object(Bucket=bucket, Key=s3key)
            except botocore.exceptions.ClientError as exc:
                if is_missing(exc):
                    return False
                raise
            if head["LastModified"] < dt.datetime.now(dt.timezone.utc) - FRESH_FOR:
                try:
                    client.copy_object(Bucket=bucket, Key=s3key, CopySource={"Bucket": bucket, "Key": s3key},
                                       MetadataDirective="REPLACE")
                except botocore.exceptions.ClientError as exc:
                    if is_missing(exc):
                        return False
                    if head["ContentLength"] <= 5 << 30:  # larger objects cannot be copied in one call
                        raise
        return True

    def delete_prefix(self, prefix: str) -> int:
        return self._conn.delete_keys(self._root + key for key in list(self.list(prefix)))
