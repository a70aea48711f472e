"""One blob store belongs to one index: the owner marker that keeps two indexes from sharing blobs.

Chunks are shared by every record that has the same bytes, and a chunk is freed (by a delete
or by :meth:`~tensorhub.records.Records.collect_garbage`) when no record *of the index* lists
it. Two index stores writing to the same blob store (two MongoDB databases, or two ``file://``
stores, with the same ``blobs=``) would each free the chunks the other's records use. So a
blob store is marked with the identity of the index that owns it, and another index is refused:

* the index's identity is a random id kept in the index itself (collection
  :data:`META_COLLECTION`; when two processes create it at once, the oldest document wins, so
  both agree without a unique index, which not every backend has);
* the blob store holds the blob :data:`OWNER_KEY` naming that identity. Opening a hub reads
  it: absent (a new store, or one written before markers existed) it is written, the same
  identity is fine, another identity raises :class:`~tensorhub.errors.ConfigurationError`.

Limits: an old store that two indexes already shared cannot be told apart (the first to open
it adopts it); two *new* indexes opening one new blob store at the same instant can both pass
(the marker is written, then read back, not compare-and-set). A client that cannot write
(read-only credentials) keeps working on an unmarked store, with a warning.

Nothing here knows a backend: only the :class:`IndexStore` and :class:`BlobStore` ABCs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

from bson import ObjectId

from tensorhub.backends.base import BlobStore, IndexStore
from tensorhub.errors import ConfigurationError, NotFoundError, TensorHubError

log = logging.getLogger(__name__)

#: the index collection that holds the index's identity (outside every project)
META_COLLECTION = "tensorhub_meta"
#: the blob naming the index that owns a blob store (not a chunk nor a record blob: never collected)
OWNER_KEY = "tensorhub-owner.json"
_IDENTITY_FIELD = "index_id"
#: a marker is a few hundred bytes; a larger one is not ours (read no more than this)
_MAX_MARKER = 64 << 10


def index_identity(index: IndexStore, create: bool = True) -> str | None:
    """The identity of ``index`` (created on first use when ``create``), or None if it has none."""
    query = {_IDENTITY_FIELD: {"$type": "string"}}
    found = index.find(META_COLLECTION, query, sort=[("_id", 1)], limit=1)
    if found or not create:
        return found[0][_IDENTITY_FIELD] if found else None
    index.insert_one(META_COLLECTION, {"_id": ObjectId(), _IDENTITY_FIELD: uuid.uuid4().hex,
                                       "time": dt.datetime.now(dt.timezone.utc).replace(microsecond=0)})
    # two processes creating it at once both read the oldest back, and agree
    return index.find(META_COLLECTION, query, sort=[("_id", 1)], limit=1)[0][_IDENTITY_FIELD]


def _read_marker(blobs: BlobStore) -> dict | None:
    try:
        data = blobs.get_range(OWNER_KEY, 0, _MAX_MARKER)
    except NotFoundError:
        return None
    try:
        marker = json.loads(data)
    except ValueError:
        marker = None
    if not isinstance(marker, dict) or not isinstance(marker.get(_IDENTITY_FIELD), str):
        raise ConfigurationError(f"the blob store {blobs.uri} holds a {OWNER_KEY} that is not tensorhub's owner "
                                 "marker; give tensorhub a blob store (directory, bucket prefix, database) of its own")
    return marker


def claim_blobs(index: IndexStore, blobs: BlobStore, write: bool = True) -> None:
    """Check that ``blobs`` belongs to ``index``, marking it if unmarked; refuse a blob store of another index.

    With ``write=False`` nothing is written (a hub opened on a store that does not exist yet
    checks at open and claims at its first write): a blob store marked by another index is
    still refused, an unmarked one is left for the claim. Raises
    :class:`~tensorhub.errors.ConfigurationError` naming both stores and what to do.
    """
    try:
        identity = index_identity(index, create=write)
    except (TensorHubError, OSError) as exc:  # e.g. read-only credentials on a store written before markers
        log.warning("could not record the identity of the index %s (%s)", index.uri, exc)
        identity = None
    marker = _read_marker(blobs)
    if marker is None and not write:
        return
    if marker is None and identity is not None:
        text = json.dumps({_IDENTITY_FIELD: identity, "index_uri": index.uri,
                           "marked": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        try:
            blobs.put(OWNER_KEY, text.encode())
        except (TensorHubError, OSError) as exc:
            log.warning("could not mark the blob store %s as owned by the index %s (%s); another index sharing "
                        "it could free chunks this one uses", blobs.uri, index.uri, exc)
            return
        marker = _read_marker(blobs)  # another index marking it at the same moment: the last writer owns it
    if marker is None:  # neither could be written: a read-only client of an unmarked store
        log.warning("the blob store %s is not marked with its owning index; open it once with write access to "
                    "mark it", blobs.uri)
        return
    if marker[_IDENTITY_FIELD] != identity:
        raise ConfigurationError(
            f"the blob store {blobs.uri} belongs to another index (its {OWNER_KEY} names index "
            f"{marker[_IDENTITY_FIELD]} at {marker.get('index_uri', '?')}), not to {index.uri}"
            f"{f' ({identity})' if identity else ''}. Two indexes must not share blobs: a delete or a "
            "collect_garbage in one would free chunks the other's records use. Give this index a blob store of "
            "its own (another blobs= directory, bucket prefix or database), or open the index that owns these "
            f"blobs. If that index is gone for good, delete the blob {OWNER_KEY} from the blob store to hand "
            "it over."
        )
