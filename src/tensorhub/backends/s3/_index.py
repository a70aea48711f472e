"""The S3 index: collections of documents in immutable segments plus CAS-written state objects.

Job: :class:`S3IndexStore`, the :class:`~tensorhub.backends.base.IndexStore` operations
(insert, find, count, update, find-and-update, delete, compact), and the index's design, below.
The other jobs are one module each: :mod:`~tensorhub.backends.s3._view` (what a store knows of
a collection, and its refresh), :mod:`~tensorhub.backends.s3._cas` (conditional writes of
states, merge commit/abort), :mod:`~tensorhub.backends.s3._compaction` (merging and sweeping),
:mod:`~tensorhub.backends.s3._segments` (the objects' formats).

Key layout under the store's prefix::

    <prefix>/index/<collection>/seg/<sid>.bson         immutable segment: the documents of one insert_many
    <prefix>/index/<collection>/seg/<oid>.merged.bson  immutable merged segment, written by compaction
    <prefix>/index/<collection>/state/<sid>.bson       mutable state of a segment's documents

(the objects' formats are in :mod:`tensorhub.backends.s3._segments`).

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
  older than :data:`~tensorhub.backends.s3._compaction.DEAD_STATE_GRACE`; writers re-check any state older than
  :data:`~tensorhub.backends.s3._view.MAX_VIEW_AGE` (well under the grace) before a CAS, so the sweep can never race one.
* Queries run in Python with :mod:`tensorhub.query` (same semantics as MongoDB). Each store
  instance caches segments (immutable) and states by ETag: a query costs one LIST request per
  1,000 objects of the collection plus a GET of each state that is new or changed since this
  instance last looked and of each segment not downloaded yet *that can hold a match*; nothing
  is downloaded twice.
* Zone maps (:mod:`~tensorhub.backends.s3._zones`) decide which segments can hold a match.
  A segment's key carries a summary of its documents' top-level fields (``_id`` and the fields
  of :meth:`S3IndexStore.create_index` first, then the others while the key has room): all
  distinct values of a field when few, else its min and max in MongoDB's order, and whether
  some document lacks it; a field holding an array or a document anywhere in the segment is
  not summarised. A state that changes documents carries the exact summary of the segment as it
  resolves it, so a segment whose tasks were all finished through its state says so, and a claim
  (``status: pending``) reads neither it nor its documents. Equality, ``$in`` and ranges on a
  summarised field (anything, with a distinct-value summary) rule segments out; ``$and``/``$or``
  combine; anything else reads every segment. A LIST is enough to decide: a run's log rows out of
  100,000 cost the GETs of that run's segments only (``benchmarks/bench_scale_s3.py``). A filter on ``_id`` (the
  repository's finish, heartbeat and delete paths) for documents this instance already knows
  re-reads just their segments' states (one GET each) instead of listing the collection, and
  matches ``{"_id": {"$in": [...]}}`` by set lookup instead of document by document.
* If the PUT of a segment fails in a way that leaves its outcome unknown (the request may have
  landed, only the reply been lost), the segment is deleted again before the error is raised,
  so a failed insert is not left visible (and a save whose blobs are cleaned up after the
  error does not leave a record pointing at them).

Compaction
----------
Single-row inserts (``save_training_log`` per step) make one small segment each, which a fresh
process would GET one by one. :meth:`S3IndexStore.compact` merges up to
:data:`~tensorhub.backends.s3._compaction.COMPACT_MAX_SOURCES` small live segments (plain or merged, updated or not) into one, and
a query that sees :data:`~tensorhub.backends.s3._compaction.COMPACT_TRIGGER` small segments starts it in a background thread
(size-tiered there: a merged segment is merged again only with at least its own weight of
others, so a document is rewritten O(log) times, and a few merged segments may remain).
Readers, writers and compactors agree through the same conditional writes:

1. The compactor reads the sources and their states, and writes the merged segment ``X``
   (``IfNoneMatch``): a header listing the sources, then their current documents. Its id sorts
   after every source's.
2. It *marks* each source: a CAS of the source's state to the same content plus
   ``merged_into=X``, against the ETag it read; so ``X`` holds exactly what each source held
   when it was marked. A lost CAS (a writer got there first) aborts the merge.
3. It *commits* by creating ``X``'s state (``IfNoneMatch``). Aborting also creates that state,
   with ``aborted``; exactly one of the two wins. Only then are the sources' objects deleted;
   their states stay as tombstones and are swept like dead ones.

``X`` is authoritative exactly when its state exists and is not aborted; its sources are
then ignored (by its header, and by their marks if ``X`` itself is gone). Before that ``X`` is
ignored and the sources, marked or not, are read as usual. A writer that meets a source
marked into ``X`` reads ``X``'s state: committed, it looks the documents up again (a LIST) and
writes where they are now (``X``'s state); pending, it aborts the merge and writes the source
(clearing the mark). Marked states are frozen while ``X`` is pending, so no update made
through a source can be lost by the commit. A query never sees a document twice (one of
``X`` or its sources is used, per merge) nor misses one: a LIST returns ``seg/`` keys before
``state/`` keys and each in key order, page after page, ``X`` exists before its sources are
deleted and sorts after them, and the commit precedes the deletion; a segment that vanishes
between the LIST and its GET makes the refresh start over (at most :data:`~tensorhub.backends.s3._view.REFRESH_ATTEMPTS`
times). A compactor that dies at any point leaves a merge that is either committed (leftover
source objects are removed by a later sweep) or pending (ignored by readers, aborted by the
first writer that meets it, or by a compactor once it is :data:`~tensorhub.backends.s3._compaction.COMPACT_ABANDONED_AFTER` old);
a compactor commits only within :data:`~tensorhub.backends.s3._compaction.COMPACT_COMMIT_WINDOW` of its start, far inside the
grace period that keeps an aborted merge's tombstone.

Costs and limits: a find is O(size of the segments its zone maps cannot rule out) in memory
and CPU (no server-side index) and LISTs the whole collection prefix; single-row inserts make
one small segment each until a
compaction merges them: 2,000 one-row segments cost a cold query 2,000 GETs before and 2
after (the merged segment and its state), while merging costs one PUT per source (its mark),
one ``DeleteObjects`` per 1,000 sources, and the sources' tombstone states are LISTed (not
downloaded) until they are swept an hour later; a merge aborts when a writer updates one of
its sources meanwhile, so a collection whose documents are all updated continuously (task
heartbeats) may compact rarely; a store written by a version with compaction must not be
read by an older one (which cannot parse merged segments); deleting documents spread over
many segments costs one PUT per segment; ``insert_many`` refuses an ``_id`` that is stored
(:class:`~tensorhub.errors.DuplicateKeyError`) as far as this store knows the collection: as
it last listed it (its first insert lists it, so does every query) plus its own inserts since,
with GETs only of segments whose ``_id`` zone could hold it (a fresh ObjectId sorts after the
stored ones); an ``_id`` another process inserted after that listing, or two processes
inserting the same new ``_id`` at once, are not caught (S3 has no unique index); zone
maps only help when segments differ in the queried field (rows of one run flushed together, a
sweep's tasks): a merged segment mixing every run is read for any run; a find reads each
document at some moment during the call (as MongoDB
does without a snapshot), not the whole collection at one instant; ``find_one_and_update``
with a ``sort`` takes the first match of the view it read (the CAS guarantees it still
matched when it was taken, not that nothing sorting before it appeared meanwhile). Dead-state
and merged-away tombstones make a bucket's key count grow with deleted and merged segments
until they are swept (a query starts that sweep in the background, and so do delete_many
and compact).
Conditional writes need an S3 that implements them (AWS since 2024, MinIO, R2, moto >= 5).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId

from tensorhub.backends.base import Document, IndexStore, SortSpec
from tensorhub.backends.s3 import _cas
from tensorhub.backends.s3._cas import StateWriter, deleted, updated
from tensorhub.backends.s3._compaction import Compactor
from tensorhub.backends.s3._connection import S3Connection
from tensorhub.backends.s3._segments import Segment, idkey
from tensorhub.backends.s3._view import (Gone, View, Views, add_inserted, candidates, effective_zone, entries_of,
                                         select, split_id_condition)
from tensorhub.backends.s3._zones import ZONE_KEY_CHARS, ZONE_TAG, build_zone, encode_zone, may_match
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import BackendUnavailableError, ConflictError, DuplicateKeyError, InvalidArgumentError
from tensorhub.query import apply_update, validate_filter

log = logging.getLogger(__name__)

#: an ``_id`` filter re-reads the states of at most this many segments instead of LISTing the collection
ID_LOOKUP_SEGMENTS = 8


class S3IndexStore(IndexStore):
    """Collections of documents in immutable segments plus CAS-written state objects (see module doc)."""

    supports_compaction = True
    # count() matches over the cached documents without decoding them, but still LISTs and reads
    # the collection as find() does: not a server-side count
    supports_cheap_count = False
    supports_server_side_indexes = False

    def __init__(self, connection: S3Connection) -> None:
        self._conn = connection
        self._conn.acquire()
        self._views = Views(connection)
        self._writer = StateWriter(self._views)
        self._compactor = Compactor(self._views, self._writer)
        self._closed = False
        self.uri = connection.uri

    def close(self) -> None:
        """Release the connection, after letting a background compaction finish its current merge."""
        if not self._closed:
            self._closed = self._compactor.closed = True
            compactors = [v.compactor for v in self._views.all() if v.compactor is not None]
            for thread in compactors:
                thread.join(timeout=60)
            self._conn.release()

    # -------------------------------------------------------------- IndexStore
    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        if not documents:
            return
        prefix = self._views.prefix(collection)
        if any("_id" not in d for d in documents):
            raise InvalidArgumentError(f"insert_many into {collection}: every document needs an _id")
        raws = [encode_document(d) for d in documents]
        segment = Segment(raws)
        keys = [idkey(d["_id"]) for d in documents]
        if len(set(keys)) != len(keys):
            raise DuplicateKeyError(f"insert_many into {collection}: the batch repeats an _id")
        self._refuse_existing_ids(collection, [d["_id"] for d in documents])
        body = b"".join(raws)
        # the zone map goes into the key (a reader's LIST then tells which segments to GET), built
        # from the documents as stored (datetimes cut to milliseconds), within what the key allows
        budget = min(ZONE_KEY_CHARS, 1000 - len(self._views.state_key(collection, "x" * 60)))
        zone = encode_zone(build_zone(segment.docs, self._views.declared(collection), budget=budget)) \
            if budget > 40 else ""
        for _ in range(3):
            sid = f"{ObjectId()}{ZONE_TAG}{zone}" if zone else str(ObjectId())
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
            raise ConflictError(f"could not create a new segment in {collection} at {self.uri}: its key was "
                                "taken every time; try again")
        view = self._views.get(collection)
        with view.lock:
            add_inserted(view, sid, segment, len(body))

    def _refuse_existing_ids(self, collection: str, ids: list[Any]) -> None:
        """Raise :class:`DuplicateKeyError` if a document with one of ``ids`` is stored.

        Checked against the collection as this store last listed it (its first insert lists it,
        and so does every query) plus what it inserted since, with GETs of the segments whose
        ``_id`` zone could hold one of ``ids`` (a fresh ObjectId sorts after every stored one, so
        usually none): a LIST per insert would double the cost of logging row by row. So an
        ``_id`` another process inserted after this store's last listing, and two processes
        inserting the same new ``_id`` at once, are not caught: S3 has no unique index.
        """
        filter = {"_id": {"$in": ids}}
        view = self._views.get(collection)
        with view.lock:
            listed = view.listed
            memo: dict[int, Any] = {}
            wanted = [sid for sid in view.order
                      if may_match(effective_zone(sid, view.states.get(sid)), filter, memo)]
        fresh = not listed or not self._views.load(collection, wanted)
        for _ in range(2):
            if fresh:  # (no background compaction from here: a writer's process, e.g. a task's, may be short-lived)
                view, _ = self._targets(collection, filter, compact=False)
            with view.lock:
                clash = select(entries_of(view, candidates(view, filter)), filter)
            if not clash or fresh:
                break
            fresh = True  # found in what we knew: make sure it was not deleted meanwhile
        if clash:
            raise DuplicateKeyError(f"insert_many into {collection} at {self.uri}: a document with _id "
                                    f"{clash[0].doc['_id']!r} already exists; nothing was inserted")

    def create_index(self, collection: str, keys: SortSpec) -> None:
        """Remember the indexed fields: new segments' zone maps summarise them first (see the module doc)."""
        self._views.declare(collection, [name for name, _ in keys])

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
        view, sids = self._targets(collection, filter)
        with view.lock:
            entries = entries_of(view, sids)
        hits = select(entries, filter, sort)
        if limit:
            hits = hits[:limit]
        return [decode_document(e.raw) for e in hits]

    def count(self, collection: str, filter: Mapping[str, Any]) -> int:
        view, sids = self._targets(collection, filter)
        with view.lock:
            entries = entries_of(view, sids)
        return len(select(entries, filter))

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        self._validate_update(update)
        groups = self._by_segment(collection, filter)
        done = self._writer.change_keys(collection, groups, filter,
                                        lambda sid: lambda state, hits: updated(state, hits, update))
        return len(done)

    def find_one_and_update(
        self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any], sort: SortSpec | None = None
    ) -> Document | None:
        self._validate_update(update)
        view, sids = self._targets(collection, filter)
        for _ in range(_cas.CAS_ATTEMPTS):  # each failure means another writer took a candidate
            with view.lock:  # (segments whose zone maps rule the filter out are not read: a claim skips
                # segments whose tasks are all finished, since their states' zones say so)
                hits = select(entries_of(view, candidates(view, filter)), filter, sort)
            if not hits:
                return None
            first = hits[0]
            raws = self._writer.change_segment(
                collection, first.sid, {"_id": first.doc["_id"], "$and": [filter]},
                lambda state, found: updated(state, found, update), keys={first.key}, first_only=True)
            if raws is None:  # merged away: find it (and the other candidates) where they are now
                log.debug("s3 index %s/%s: a candidate was merged away; looking it up again", self.uri, collection)
                view = self._views.refresh(collection, filter)
                continue
            if raws:
                return decode_document(raws[0])
            # the first match stopped matching under us (taken by another writer): next candidate
        raise ConflictError(f"gave up on find_one_and_update in {collection} at {self.uri}: "
                            "every candidate was taken by concurrent writers; try again")

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        groups = self._by_segment(collection, filter)
        view = self._views.get(collection)
        done = self._writer.change_keys(collection, groups, filter,
                                        lambda sid: lambda state, hits: deleted(view, sid, state, hits))
        self._compactor.sweep(collection)
        return len(done)

    def compact(self, collection: str, *, full: bool = True) -> int:
        """Merge the collection's small segments into few large ones; return how many were merged away.

        Safe while other processes insert, update, delete, query and compact the same collection
        (see "Compaction" in the module doc); a compaction that fails or is killed midway leaves
        the index correct and is cleaned up by a later one. Runs at most
        :data:`~tensorhub.backends.s3._compaction.COMPACT_ROUNDS` merges of up to
        :data:`~tensorhub.backends.s3._compaction.COMPACT_MAX_SOURCES` segments each. ``full=False``
        (the automatic compaction) merges a merged segment again only with at least as many bytes
        of others, so a document is rewritten O(log) times, not once per compaction.

        Example::

            if hub.index.supports_compaction:
                hub.index.compact("training_logs")   # 10,000 one-row segments -> a few merged ones
        """
        return self._compactor.compact(collection, full=full)

    # -------------------------------------------------------------- reading for an operation
    @staticmethod
    def _validate_update(update: Mapping[str, Any]) -> None:
        apply_update({}, update)  # raises InvalidQueryError before anything is read or written

    def _targets(self, collection: str, filter: Mapping[str, Any], compact: bool = True) -> tuple[View, list[str]]:
        """The collection's view, up to date for the segments that can hold matches of ``filter``.

        A filter on ``_id`` whose documents this instance already knows, in a few segments (the
        repository's finish, heartbeat and delete paths) costs one GET of each of those segments'
        states instead of a LIST of the whole collection; anything else refreshes the whole view
        (downloading only the segments whose zone maps admit a match), and so does a segment found
        merged into another (or gone) meanwhile. Returns the view and, in order, the downloaded
        segments that can hold matches.
        """
        validate_filter(filter)  # malformed filters fail on every collection, even one never written
        keys, _ = split_id_condition(filter)
        view = self._views.get(collection)
        if keys is not None:
            with view.lock:
                found = {view.key_index.get(k) for k in keys}
            sids = {sid for sid in found if sid is not None}
            if None not in found and len(sids) <= ID_LOOKUP_SEGMENTS:
                def reload(sid: str) -> bool:
                    try:
                        return self._views.reload(collection, sid).merged_into is None
                    except Gone:
                        return False

                if all(self._conn.map(reload, sorted(sids))):
                    with view.lock:
                        if sids <= view.resolved.keys():
                            return view, [sid for sid in view.order if sid in sids]
        view = self._views.refresh(collection, filter)
        if compact:
            self._compactor.maybe_compact(collection)
        with view.lock:
            return view, candidates(view, filter)

    def _by_segment(self, collection: str, filter: Mapping[str, Any]) -> dict[str, set[Any]]:
        """The keys of the documents matching ``filter``, grouped by the segment holding them."""
        view, sids = self._targets(collection, filter)
        with view.lock:
            entries = entries_of(view, sids)
        groups: dict[str, set[Any]] = {}
        for e in select(entries, filter):
            groups.setdefault(e.sid, set()).add(e.key)
        return groups
