"""The S3 index: collections of documents in immutable segments plus CAS-written state objects.

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

Compaction
----------
Single-row inserts (``save_training_log`` per step) make one small segment each, which a fresh
process would GET one by one. :meth:`S3IndexStore.compact` merges up to
:data:`COMPACT_MAX_SOURCES` small live segments (plain or merged, updated or not) into one, and
a query that sees :data:`COMPACT_TRIGGER` small segments starts it in a background thread
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
between the LIST and its GET makes the refresh start over (at most :data:`REFRESH_ATTEMPTS`
times). A compactor that dies at any point leaves a merge that is either committed (leftover
source objects are removed by a later sweep) or pending (ignored by readers, aborted by the
first writer that meets it, or by a compactor once it is :data:`COMPACT_ABANDONED_AFTER` old);
a compactor commits only within :data:`COMPACT_COMMIT_WINDOW` of its start, far inside the
grace period that keeps an aborted merge's tombstone.

Costs and limits: a find is O(collection size) in memory and CPU (no server-side index) and
LISTs the whole collection prefix; single-row inserts make one small segment each until a
compaction merges them: 2,000 one-row segments cost a cold query 2,000 GETs before and 2
after (the merged segment and its state), while merging costs one PUT per source (its mark),
one ``DeleteObjects`` per 1,000 sources, and the sources' tombstone states are LISTed (not
downloaded) until they are swept an hour later; a merge aborts when a writer updates one of
its sources meanwhile, so a collection whose documents are all updated continuously (task
heartbeats) may compact rarely; a store written by a version with compaction must not be
read by an older one (which cannot parse merged segments); deleting documents spread over
many segments costs one PUT per segment; ``insert_many`` does not check ``_id`` uniqueness against stored documents (the repository always uses
fresh ObjectIds); a find reads each document at some moment during the call (as MongoDB
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
import os
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId

from tensorhub.backends.base import Document, IndexStore, SortSpec
from tensorhub.backends.s3._connection import S3Connection
from tensorhub.backends.s3._segments import MERGED_SUFFIX, Entry, Segment, State, idkey, is_merged
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import BackendUnavailableError, InvalidArgumentError
from tensorhub.query import apply_update, matches, regex_budget, sort_documents

log = logging.getLogger(__name__)

#: CAS attempts of one update before giving up (each failure means another writer succeeded)
CAS_ATTEMPTS = 64
#: a dead state (all of its segment deleted) older than this may be swept
DEAD_STATE_GRACE = timedelta(hours=1)
#: a state read longer ago than this is re-read before a CAS write (must stay << DEAD_STATE_GRACE)
MAX_VIEW_AGE = 600.0
#: an ``_id`` filter re-reads the states of at most this many segments instead of LISTing the collection
ID_LOOKUP_SEGMENTS = 8
#: LISTs of one refresh before giving up when segments keep vanishing under it (merged away)
REFRESH_ATTEMPTS = 8
#: times an update looks its documents up again after their segment was merged away
RELOCATE_ROUNDS = 8
#: a query that sees this many small live segments starts a background compaction
#: ($TENSORHUB_S3_COMPACT_TRIGGER overrides; 0 turns automatic compaction off)
COMPACT_TRIGGER = int(os.environ.get("TENSORHUB_S3_COMPACT_TRIGGER", "64"))
#: segments up to this size (their documents' BSON) are merged
COMPACT_SMALL_BYTES = 1 << 20
#: one merge takes at most this many segments and about this many bytes
COMPACT_MAX_SOURCES = 2000
COMPACT_TARGET_BYTES = 16 << 20
#: a query starts a background sweep of leftovers at most this often (seconds)
CLEANUP_INTERVAL = 60.0
#: merges per compact() call
COMPACT_ROUNDS = 16
#: a compactor commits only if it got there this many seconds after it started (<< DEAD_STATE_GRACE)
COMPACT_COMMIT_WINDOW = 120.0
#: a merge left uncommitted this long (seconds, by its LastModified) was abandoned and is aborted
COMPACT_ABANDONED_AFTER = 600.0

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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
    return {idkey(v) for v in values}, {k: v for k, v in filter.items() if k != "_id"}


@dataclass
class _View:
    """What one store instance knows of one collection."""

    lock: threading.RLock = field(default_factory=threading.RLock)  # short in-memory sections only
    refresh_lock: threading.Lock = field(default_factory=threading.Lock)
    segments: dict[str, Segment] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # live segment ids, in listing order
    orphans: dict[str, datetime] = field(default_factory=dict)  # state without segment -> LastModified
    undeleted: list[str] = field(default_factory=list)  # dead/merged-away segments whose object is still there
    pending: dict[str, datetime] = field(default_factory=dict)  # merged segment not committed -> LastModified
    compactor: threading.Thread | None = None  # the background compaction of this collection, if any
    cleaned: float = float("-inf")  # when a background job last started
    seen: dict[str, float] = field(default_factory=dict)  # sid -> when a listing (or our insert) showed it
    entries: list[Entry] = field(default_factory=list)
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
        """Release the connection, after letting a background compaction finish its current merge."""
        if not self._closed:
            self._closed = True
            with self._views_lock:
                compactors = [v.compactor for v in self._views.values() if v.compactor is not None]
            for thread in compactors:
                thread.join(timeout=60)
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

    def _fetch_state(self, collection: str, sid: str) -> State:
        """The current state of a segment from S3 (an empty one, ``etag=None``, if it has none)."""
        key = self._state_key(collection, sid)
        got = self._conn.get(key)
        if got is None:
            return State()
        return State.parse(got[0], got[1], key)

    def _refresh(self, collection: str) -> _View:
        """Bring the cached view of a collection up to date: a LIST, GETs of what changed only.

        ``view.lock`` is only held for short in-memory steps, never while waiting on the thread
        pool (whose threads may be CAS workers needing it); ``refresh_lock`` serialises refreshes.
        A segment that vanishes between the LIST and its GET (merged away or dead) makes the
        refresh start over, a bounded number of times.
        """
        prefix = self._prefix(collection)
        view = self._view(collection)
        with view.refresh_lock:
            for attempt in range(REFRESH_ATTEMPTS):
                if self._refresh_once(collection, prefix, view):
                    return view
                log.debug("s3 index %s/%s: a segment vanished during a refresh (attempt %d)", self.uri,
                          collection, attempt)
        raise BackendUnavailableError(f"{collection} at {self.uri} kept changing while it was read "
                                      f"({REFRESH_ATTEMPTS} attempts); try again")

    def _refresh_once(self, collection: str, prefix: str, view: _View) -> bool:
        # The LIST returns seg/ keys before state/ keys and each in key order, page after page, so
        # a document is always seen in at least one of its segments: a merged segment's id sorts
        # after its sources', it exists before they are removed, and the state that commits it is
        # listed after all of them (see the module doc).
        segments, states = self._listing(prefix)
        now = time.monotonic()

        def stale(sids: Any) -> list[str]:
            with view.lock:
                return [sid for sid in sids if sid in states
                        and (sid not in view.states or view.states[sid].etag != states[sid]["ETag"])]

        def install(fetched: list[tuple[str, State]]) -> None:
            with view.lock:
                for sid, state in fetched:
                    view.states[sid] = state

        fetched = self._conn.map(lambda sid: (sid, self._fetch_state(collection, sid)), stale(segments))
        install(fetched)
        with view.lock:
            fetched_ids = {sid for sid, _ in fetched}
            for sid in segments:
                cached = view.states.get(sid)
                if sid not in states and (cached is None or cached.etag is None):
                    view.states[sid] = State(checked=now)  # no state object: fresh (or a merge not committed)
                elif cached is not None and sid not in fetched_ids:
                    cached.checked = now
            targets = {view.states[sid].merged_into for sid in segments
                       if sid in view.states and view.states[sid].merged_into}

        def state_of(sid: str) -> State:  # (a concurrent writer may have dropped one it found swept)
            return view.states.get(sid) or State()

        # the states of merges that segments point at but whose merged segment is gone (dead, aborted)
        install(self._conn.map(lambda sid: (sid, self._fetch_state(collection, sid)),
                               stale(t for t in targets if t not in segments)))
        with view.lock:
            def committed(sid: str | None) -> bool:
                state = view.states.get(sid) if sid in states else None
                return state is not None and state.etag is not None and not state.aborted

            superseded = {sid for sid in segments if committed(state_of(sid).merged_into)}
            candidates = [sid for sid in segments
                          if sid not in superseded and not state_of(sid).dead and not state_of(sid).aborted
                          and (not is_merged(sid) or committed(sid))]
            missing = [sid for sid in candidates if sid not in view.segments]

        def load(sid: str) -> tuple[str, Segment | None]:
            key = self._seg_key(collection, sid)
            got = self._conn.get(key)
            return sid, None if got is None else Segment.parse(got[0], key, merged=is_merged(sid))

        loaded = self._conn.map(load, missing)
        if any(segment is None for _, segment in loaded):
            return False  # merged away or dead since the LIST: read again
        with view.lock:
            view.segments.update(loaded)
            for sid in candidates:  # a committed merge replaces its sources even if we read them unmarked
                superseded.update(view.segments[sid].sources)
            live = [sid for sid in candidates if sid not in superseded]
            view.order = sorted(live, key=lambda sid: (self._first(view, sid), sid))
            keep = set(view.order)
            view.segments = {sid: seg for sid, seg in view.segments.items() if sid in keep}
            view.states = {sid: st for sid, st in view.states.items() if sid in segments or sid in targets}
            view.orphans = {sid: obj["LastModified"] for sid, obj in states.items()
                            if sid not in segments and sid not in targets}
            view.undeleted = [sid for sid in segments
                              if state_of(sid).dead or state_of(sid).aborted or sid in superseded]
            view.pending = {sid: obj["LastModified"] for sid, obj in segments.items()
                            if is_merged(sid) and sid not in states}
            view.seen = {sid: now for sid in view.order}
            self._rebuild(view)
        return True

    @staticmethod
    def _first(view: _View, sid: str) -> str:
        """A segment's place in the collection's order: a merged one takes its oldest source's."""
        segment = view.segments.get(sid)
        return segment.first if segment is not None and segment.first else sid

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

    def _segment_entries(self, view: _View, sid: str) -> list[Entry]:
        segment, state = view.segments.get(sid), view.states.get(sid) or State()
        if segment is None or state.dead:
            return []
        out = []
        for raw, doc in zip(segment.raws, segment.docs, strict=True):
            key = idkey(doc["_id"])
            if key in state.deleted:
                continue
            if key in state.docs:
                raw, doc = state.docs[key]
            out.append(Entry(sid, key, raw, doc))
        return out

    @staticmethod
    def _select(entries: list[Entry], filter: Mapping[str, Any], sort: SortSpec | None = None) -> list[Entry]:
        keys, rest = _split_id_condition(filter)
        if keys is not None:  # exact pre-filter: the repository deletes and claims by _id / $in
            entries = [e for e in entries if e.key in keys]
        with regex_budget():  # one regex time allowance for the whole collection
            hits = [e for e in entries if matches(e.doc, rest)]
        if sort:
            by_doc = {id(e.doc): e for e in hits}
            docs = sort_documents([e.doc for e in hits], sort)
            hits = [by_doc[id(d)] for d in docs]
        return hits

    # -------------------------------------------------------------- CAS on a segment's state
    def _install(self, collection: str, sid: str, state: State) -> None:
        view = self._view(collection)
        with view.lock:
            old = view.states.get(sid)
            if old is None or old.etag != state.etag or old.rev != state.rev:
                view.states[sid] = state
                if sid in view.order:
                    self._rebuild(view)

    def _reload(self, collection: str, sid: str) -> State:
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

    def _current(self, collection: str, sid: str) -> State:
        view = self._view(collection)
        with view.lock:
            state = view.states.get(sid) or State()
        if time.monotonic() - state.checked > MAX_VIEW_AGE:
            state = self._reload(collection, sid)
        return state

    def _cas(self, collection: str, sid: str, old: State, new: State, install: bool = True) -> bool:
        """Write ``new`` over ``old`` if nobody changed it meanwhile; install it in the cache (if ``install``)."""
        rev = ObjectId()
        key = self._state_key(collection, sid)
        etag = self._conn.put_if(key, new.encode(rev), old.etag)
        if etag is None:
            current = self._reload(collection, sid)
            if current.rev != rev:
                return False
            etag = current.etag  # our write landed; only its reply was lost
        new.etag, new.rev, new.checked = etag, rev, time.monotonic()
        if install:
            self._install(collection, sid, new)
        return True

    def _change_segment(self, collection: str, sid: str, filter: Mapping[str, Any], change: Any,
                        keys: set[Any] | None = None, first_only: bool = False,
                        sort: SortSpec | None = None) -> list[bytes] | None:
        """CAS-apply ``change(state, entries) -> new state`` to the matches of one segment.

        Retries on conflicts (re-reading the state); returns the raw BSON of the changed
        documents, or ``None`` if the segment was merged away or swept: its documents (``keys``,
        when given, limits the change to them) must then be looked up where they are now.
        """
        view = self._view(collection)
        for attempt in range(CAS_ATTEMPTS):
            try:
                state = self._current(collection, sid)
            except _Gone:
                return None
            if state.aborted or (is_merged(sid) and state.etag is None):
                return None  # a merge that never committed: the documents are in its sources
            if state.merged_into and self._merge_committed(collection, state.merged_into):
                return None
            with view.lock:
                if sid not in view.segments:  # dropped by a refresh of another thread: merged away or dead
                    return None
                hits = self._select(self._segment_entries(view, sid), filter, sort)
            if keys is not None:
                hits = [e for e in hits if e.key in keys]
            if first_only:
                hits = hits[:1]
            if not hits:
                return []
            new, raws = change(state, hits)  # a new state has no merged_into: an aborted merge's mark goes
            try:
                if self._cas(collection, sid, state, new):
                    if new.dead:
                        self._drop_segment(collection, sid)
                    return raws
            except _Gone:
                return None
            log.debug("s3 index %s/%s: CAS conflict on segment %s (attempt %d)", self.uri, collection, sid, attempt)
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
        raise BackendUnavailableError(
            f"gave up updating {collection} at {self.uri} after {CAS_ATTEMPTS} conflicting concurrent writes; "
            "too many writers on the same records, try again")

    def _change_keys(self, collection: str, groups: Mapping[str, set[Any]], filter: Mapping[str, Any],
                     make_change: Any) -> list[bytes]:
        """Apply ``make_change(sid)`` to the matches among ``groups`` (sid -> document keys), in parallel.

        The documents of a segment merged away meanwhile are looked up again (a LIST) in the
        segment that holds them now, so an update or delete racing a compaction is never lost.
        """
        out: list[bytes] = []
        for _ in range(RELOCATE_ROUNDS):
            done = self._conn.map(
                lambda item: (item[0], self._change_segment(collection, item[0], filter, make_change(item[0]),
                                                            keys=item[1])), list(groups.items()))
            moved: set[Any] = set()
            for sid, raws in done:
                if raws is None:
                    moved |= groups[sid]
                else:
                    out.extend(raws)
            if not moved:
                return out
            log.debug("s3 index %s/%s: %d documents were merged away under an update; looking them up again",
                      self.uri, collection, len(moved))
            view = self._refresh(collection)
            with view.lock:
                regrouped: dict[str, set[Any]] = {}
                for key in moved:
                    if key in view.key_index:
                        regrouped.setdefault(view.key_index[key], set()).add(key)
            groups = regrouped
        raise BackendUnavailableError(f"gave up updating {collection} at {self.uri}: its segments kept being "
                                      "merged under the update; try again")

    def _merge_committed(self, collection: str, xid: str) -> bool:
        """Whether the merge into ``xid`` committed; one still pending is aborted (writers do not wait)."""
        state = self._fetch_state(collection, xid)
        if state.etag is not None:
            return not state.aborted
        return not self._abort_merge(collection, xid)

    def _abort_merge(self, collection: str, xid: str) -> bool:
        """Abort the merge into ``xid`` unless it committed first; ``True`` if it is (now) aborted.

        Commit and abort both create the merged segment's state with ``IfNoneMatch``: exactly one wins.
        """
        rev = ObjectId()
        if self._conn.put_if(self._state_key(collection, xid), State(aborted=True).encode(rev), None) is None:
            state = self._fetch_state(collection, xid)
            if state.etag is None:
                raise BackendUnavailableError(f"the merge state of {xid} in {collection} at {self.uri} "
                                              "was neither created nor readable; try again")
            if not state.aborted and state.rev != rev:
                return False
        log.debug("s3 index %s/%s: merge %s aborted", self.uri, collection, xid)
        with suppress(BackendUnavailableError):
            self._conn.delete_keys([self._seg_key(collection, xid)])
        return True

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
    def _updated(state: State, hits: list[Entry], update: Mapping[str, Any]) -> tuple[State, list[bytes]]:
        docs = dict(state.docs)
        raws = []
        for e in hits:
            doc = apply_update(decode_document(e.raw), update)
            raw = encode_document(doc)
            docs[e.key] = (raw, decode_document(raw))
            raws.append(raw)
        return State(etag=state.etag, rev=state.rev, docs=docs, deleted=dict(state.deleted)), raws

    def _deleted(self, view: _View, sid: str, state: State, hits: list[Entry]) -> tuple[State, list[bytes]]:
        deleted = dict(state.deleted)
        docs = dict(state.docs)
        for e in hits:
            deleted[e.key] = e.doc["_id"]
            docs.pop(e.key, None)
        segment = view.segments.get(sid)
        dead = segment is not None and len(deleted) >= len(segment.raws)
        if dead:
            deleted, docs = {}, {}
        new = State(etag=state.etag, rev=state.rev, docs=docs, deleted=deleted, dead=dead)
        return new, [e.raw for e in hits]

    # -------------------------------------------------------------- IndexStore
    def insert_many(self, collection: str, documents: Sequence[Document]) -> None:
        if not documents:
            return
        prefix = self._prefix(collection)
        if any("_id" not in d for d in documents):
            raise InvalidArgumentError(f"insert_many into {collection}: every document needs an _id")
        raws = [encode_document(d) for d in documents]
        segment = Segment(raws)
        keys = [idkey(d["_id"]) for d in documents]
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
            view.states.setdefault(sid, State())
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
        states instead of a LIST of the whole collection; anything else refreshes the whole view,
        and so does a segment found merged into another (or gone) meanwhile.
        """
        keys, _ = _split_id_condition(filter)
        view = self._view(collection)
        if keys is not None:
            with view.lock:
                sids = {view.key_index.get(k) for k in keys}
            if None not in sids and len(sids) <= ID_LOOKUP_SEGMENTS:
                def reload(sid: str) -> bool:
                    try:
                        return self._reload(collection, sid).merged_into is None
                    except _Gone:
                        return False

                if all(self._conn.map(reload, sorted(sids))):
                    return view, sorted(sids)
        view = self._refresh(collection)
        self._maybe_compact(collection)
        with view.lock:
            return view, list(view.order)

    def _by_segment(self, collection: str, filter: Mapping[str, Any]) -> dict[str, set[Any]]:
        """The keys of the documents matching ``filter``, grouped by the segment holding them."""
        view, _ = self._targets(collection, filter)
        with view.lock:
            entries = view.entries
        groups: dict[str, set[Any]] = {}
        for e in self._select(entries, filter):
            groups.setdefault(e.sid, set()).add(e.key)
        return groups

    def update_many(self, collection: str, filter: Mapping[str, Any], update: Mapping[str, Any]) -> int:
        self._validate_update(update)
        groups = self._by_segment(collection, filter)
        done = self._change_keys(collection, groups, filter,
                                 lambda sid: lambda state, hits: self._updated(state, hits, update))
        return len(done)

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
                lambda state, found: self._updated(state, found, update), keys={first.key}, first_only=True)
            if raws is None:  # merged away: find it (and the other candidates) where they are now
                log.debug("s3 index %s/%s: a candidate was merged away; looking it up again", self.uri, collection)
                view = self._refresh(collection)
                continue
            if raws:
                return decode_document(raws[0])
            # the first match stopped matching under us (taken by another writer): next candidate
        raise BackendUnavailableError(f"gave up on find_one_and_update in {collection} at {self.uri}: "
                                      "every candidate was taken by concurrent writers; try again")

    def delete_many(self, collection: str, filter: Mapping[str, Any]) -> int:
        groups = self._by_segment(collection, filter)
        view = self._view(collection)
        done = self._change_keys(collection, groups, filter,
                                 lambda sid: lambda state, hits: self._deleted(view, sid, state, hits))
        self._sweep(collection)
        return len(done)

    def _sweep(self, collection: str) -> None:
        """Best effort: remove dead and merged-away segments left behind, then tombstones older than the grace.

        Segment objects go first: a tombstone is only removed once no listed segment can point at it.
        """
        view = self._view(collection)
        cutoff = datetime.now(timezone.utc) - DEAD_STATE_GRACE
        with view.lock:
            old = [sid for sid, modified in view.orphans.items() if modified < cutoff]
            segment_keys = [self._seg_key(collection, sid) for sid in view.undeleted]
            state_keys = [self._state_key(collection, sid) for sid in old]
        try:
            if segment_keys:
                self._conn.delete_keys(segment_keys)
                with view.lock:
                    view.undeleted = []
            if state_keys:
                self._conn.delete_keys(state_keys)
                with view.lock:
                    for sid in old:
                        view.orphans.pop(sid, None)
        except BackendUnavailableError:
            log.warning("could not sweep %d dead objects of %s", len(segment_keys) + len(state_keys), collection,
                        exc_info=True)

    # -------------------------------------------------------------- compaction
    def compact(self, collection: str, *, full: bool = True) -> int:
        """Merge the collection's small segments into few large ones; return how many were merged away.

        Safe while other processes insert, update, delete, query and compact the same collection
        (see "Compaction" in the module doc); a compaction that fails or is killed midway leaves
        the index correct and is cleaned up by a later one. Runs at most :data:`COMPACT_ROUNDS`
        merges of up to :data:`COMPACT_MAX_SOURCES` segments each. ``full=False`` (the automatic
        compaction) merges a merged segment again only with at least as many bytes of others, so
        a document is rewritten O(log) times, not once per compaction.

        Example::

            hub.index.compact("training_logs")   # 10,000 one-row segments -> a few merged ones
        """
        self._prefix(collection)
        merged = 0
        for _ in range(COMPACT_ROUNDS):
            if self._closed:
                break
            done = self._compact_once(collection, full)
            if done == 0:
                break
            merged += done
        return merged

    def _small(self, view: _View, full: bool = True) -> list[str]:
        """The live segments worth merging, oldest first (caller holds the lock).

        Unless ``full``, a merged segment qualifies only if the plain and smaller merged segments
        beside it weigh at least as much (size tiers: each rewrite of a document doubles its segment).
        """
        out = []
        for sid in view.order:
            state = view.states.get(sid) or State()
            if view.segments[sid].nbytes > COMPACT_SMALL_BYTES:
                continue
            if state.merged_into and state.merged_into in view.pending:
                continue  # another compaction is merging it right now
            out.append(sid)
        if full:
            return out
        budget = sum(view.segments[sid].nbytes for sid in out if not is_merged(sid))
        allowed = set()
        for sid in sorted((sid for sid in out if is_merged(sid)), key=lambda sid: view.segments[sid].nbytes):
            if view.segments[sid].nbytes > budget:
                break
            allowed.add(sid)
            budget += view.segments[sid].nbytes
        return [sid for sid in out if not is_merged(sid) or sid in allowed]

    def _compact_once(self, collection: str, full: bool = True) -> int:
        """One merge: write the merged segment, mark its sources (CAS), commit, remove the sources."""
        started = time.monotonic()
        view = self._refresh(collection)
        self._abandon(collection, view)
        self._sweep(collection)
        with view.lock:
            picked: list[tuple[str, State, list[Entry]]] = []
            size = 0
            for sid in self._small(view, full):
                segment = view.segments[sid]
                if len(picked) >= COMPACT_MAX_SOURCES or (picked and size + segment.nbytes > COMPACT_TARGET_BYTES):
                    break
                state = view.states.get(sid) or State()
                picked.append((sid, state, self._segment_entries(view, sid)))
                size += segment.nbytes
            first = min((self._first(view, sid) for sid, _, _ in picked), default="")
        if len(picked) < 2:
            return 0
        sources = [sid for sid, _, _ in picked]
        xid = _merged_id(sources)
        body = Segment.encode_merged([e.raw for _, _, entries in picked for e in entries], sources, first)
        xkey = self._seg_key(collection, xid)
        _compaction_step("write")
        if self._conn.put_if(xkey, body, None) is None:
            return 0  # an id collision: try again another time
        try:
            _compaction_step("mark")

            def mark(item: tuple[str, State, list[Entry]]) -> State | None:
                sid, state, _ = item
                new = State(etag=state.etag, rev=state.rev, docs=dict(state.docs), deleted=dict(state.deleted),
                            merged_into=xid)
                try:  # installed below all at once: the view is rebuilt once, not once per source
                    return new if self._cas(collection, sid, state, new, install=False) else None
                except _Gone:
                    return None

            marks = self._conn.map(mark, picked)
            with view.lock:
                for (sid, old, _), new in zip(picked, marks):
                    current = view.states.get(sid)
                    if new is not None and current is not None and (current.etag, current.rev) == (old.etag, old.rev):
                        view.states[sid] = new  # unless a writer of this instance installed a newer one meanwhile
                self._rebuild(view)
            marked = [new is not None for new in marks]
            _compaction_step("commit")
            if not all(marked) or time.monotonic() - started > COMPACT_COMMIT_WINDOW:
                # a writer changed a source first: give up, try again later
                if self._abort_merge(collection, xid):
                    self._unmark(collection, [sid for (sid, _, _), ok in zip(picked, marked) if ok], xid)
                return 0
            rev = ObjectId()
            if self._conn.put_if(self._state_key(collection, xid), State().encode(rev), None) is None:
                state = self._fetch_state(collection, xid)
                if state.aborted or state.rev != rev:  # a writer aborted the merge before we committed
                    with suppress(BackendUnavailableError):
                        self._conn.delete_keys([xkey])
                    return 0
        except BaseException:
            with suppress(Exception):
                self._abort_merge(collection, xid)
            raise
        _compaction_step("cleanup")
        try:  # committed: the sources are no longer read; their states stay as tombstones
            self._conn.delete_keys([self._seg_key(collection, sid) for sid in sources])
        except BackendUnavailableError:
            log.warning("compaction of %s: could not remove %d merged segments; a later sweep will", collection,
                        len(sources), exc_info=True)
        log.debug("s3 index %s/%s: merged %d segments into %s", self.uri, collection, len(sources), xid)
        return len(sources)

    def _unmark(self, collection: str, sids: list[str], xid: str) -> None:
        """Best effort: clear the marks of an aborted merge (harmless, but they cost ``_id`` lookups a LIST)."""
        view = self._view(collection)

        def unmark(sid: str) -> None:
            with view.lock:
                state = view.states.get(sid)
            if state is None or state.merged_into != xid:
                return
            with suppress(_Gone, BackendUnavailableError):
                self._cas(collection, sid, state, State(etag=state.etag, rev=state.rev, docs=dict(state.docs),
                                                        deleted=dict(state.deleted)))

        self._conn.map(unmark, sids)

    def _abandon(self, collection: str, view: _View) -> None:
        """Abort merges left uncommitted for longer than :data:`COMPACT_ABANDONED_AFTER` (a compactor died)."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=COMPACT_ABANDONED_AFTER)
        with view.lock:
            stale = [xid for xid, modified in view.pending.items() if modified < cutoff]
        for xid in stale:
            try:
                self._abort_merge(collection, xid)
            except BackendUnavailableError:
                log.warning("could not abort the abandoned merge %s of %s", xid, collection, exc_info=True)
                continue
            with view.lock:
                view.pending.pop(xid, None)

    def _maybe_compact(self, collection: str) -> None:
        """Start a background compaction if the view holds :data:`COMPACT_TRIGGER` small segments or more,
        or leftovers to sweep (at most once per :data:`CLEANUP_INTERVAL`): segments merged away or dead
        whose objects remain (a compactor died after its commit), tombstones past the grace period."""
        if COMPACT_TRIGGER <= 0 or self._closed:
            return
        view = self._view(collection)
        cutoff = datetime.now(timezone.utc) - DEAD_STATE_GRACE
        with view.lock:
            if view.compactor is not None and view.compactor.is_alive():
                return
            compact = len(view.order) >= COMPACT_TRIGGER and len(self._small(view, full=False)) >= COMPACT_TRIGGER
            cleanup = (time.monotonic() - view.cleaned > CLEANUP_INTERVAL
                       and (view.undeleted or any(modified < cutoff for modified in view.orphans.values())))
            if not compact and not cleanup:
                return
            view.cleaned = time.monotonic()
            view.compactor = threading.Thread(target=self._compact_quietly, args=(collection,), daemon=True,
                                              name=f"tensorhub-s3-compact-{collection}")
            view.compactor.start()

    def _compact_quietly(self, collection: str) -> None:
        try:
            self.compact(collection, full=False)
        except Exception:  # noqa: BLE001 - a background job: the next trigger tries again
            log.warning("background compaction of %s at %s failed", collection, self.uri, exc_info=True)


def _merged_id(sources: Sequence[str]) -> str:
    """A fresh merged-segment id that sorts after all of its sources' (even across skewed clocks)."""
    oid = ObjectId()
    top = max(sid[:24] for sid in sources)
    if str(oid) <= top:
        seconds = int.from_bytes(bytes.fromhex(top[:8]), "big") + 1
        oid = ObjectId(seconds.to_bytes(4, "big") + ObjectId().binary[4:])
    return f"{oid}{MERGED_SUFFIX}"


def _compaction_step(step: str) -> None:
    """A no-op between a compaction's writes; tests replace it to kill a compactor at each step."""
