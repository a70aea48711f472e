"""``s3://bucket/prefix`` backend: index and blobs on S3 (or MinIO, moto, R2...), no database.

``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1``: credentials,
region and endpoint come from the standard AWS chain, and query parameters override them
(the options are listed in :mod:`~tensorhub.backends.s3._uri`; secrets are shown as ``***``).
Opening fails at once on a missing bucket, refused credentials or an unreachable endpoint.

Key layout under the prefix::

    <prefix>/blobs/<key>                          one object per blob
    <prefix>/index/<collection>/seg/<sid>.bson         immutable segment: the documents of one insert_many
    <prefix>/index/<collection>/seg/<oid>.merged.bson  immutable merged segment (compaction)
    <prefix>/index/<collection>/state/<sid>.bson       mutable state of a segment's documents

The index needs no database: it is built on S3's per-object compare-and-swap (conditional
``PutObject`` with ``IfNoneMatch``/``IfMatch``), so it is correct across processes and machines
with nothing but the bucket. One module per job:

* ``_uri``: :func:`parse_uri` and :func:`redact_uri` (the URI's options, secrets hidden).
* ``_errors``: :func:`translate_errors`, where every botocore error is translated, and
  nowhere else; :func:`is_conflict` / :func:`is_missing` classify the ones handled in place.
* ``_connection``: :class:`S3Connection`, the client and thread pool the stores of one URI
  share, the open check, and the conditional PUT (``put_if``).
* ``_segments``: the index's objects (segments, their states) and their BSON encoding.
* ``_view``: what a store knows of a collection (segments, states, resolved documents) and
  its refresh (a LIST, GETs of what changed).
* ``_cas``: compare-and-swap writes of segments' states (updates, deletes), and how a merge
  ends (commit or abort).
* ``_compaction``: merging small segments, aborting abandoned merges, sweeping leftovers.
* ``_index``: :class:`S3IndexStore`, the index operations, and the index design: segments,
  states, compaction, its costs and limits.
* ``_blobs``: :class:`S3BlobStore`: multipart uploads and parallel, ETag-pinned ranged reads.

Tunables (timeouts, attempts, thread and part sizes) are module constants of the module that
uses them, e.g. ``tensorhub.backends.s3._compaction.DEAD_STATE_GRACE``.
"""

from __future__ import annotations

from tensorhub.backends.base import Stores
from tensorhub.backends.s3._blobs import S3BlobStore
from tensorhub.backends.s3._connection import S3Connection
from tensorhub.backends.s3._errors import is_conflict, is_missing, translate_errors
from tensorhub.backends.s3._index import S3IndexStore
from tensorhub.backends.s3._uri import S3Location, parse_uri, redact_uri


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


__all__ = ["S3BlobStore", "S3Connection", "S3IndexStore", "S3Location", "is_conflict", "is_missing",
           "open_stores", "parse_uri", "redact_uri", "translate_errors"]
