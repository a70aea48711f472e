"""The S3 index: collections of documents in immutable segments plus CAS-written state objects.

Key layout under the store's prefix::

    <prefix>/index/<collection>/seg/<sid>.bson    immutable segment: the documents of one insert_many
    <prefix>/index/<collection>/state/<sid>.bson  mutable state of that segment's documents

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
"""

from __future__ import annotations

import logging
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
from tensorhub.backends.s3._segments import Entry, Segment, State, idkey
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import BackendUnavailableError, InvalidArgumentError
from tensorhub.query import apply_update, matches, sort_documents

log = logging.getLogger(__name__)

#: CAS attempts of one update before giving up (each failure means another writer succeeded)
CAS_ATTEMPTS = 64
#: a dead state (all of its segment deleted) older than this may be swept
DEAD_STATE_GRACE = timedelta(hours=1)
#: a state read longer ago than this is re-read before a CAS write (must stay << DEAD_STATE_GRACE)
MAX_VIEW_AGE = 600.0
#: an ``_id`` filter re-reads the states of at most this many segments instead of LISTing the collection
ID_LOOKUP_SEGMENTS = 8

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
    undeleted: list[str] = field(default_factory=list)  # dead segments whose object is still there
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
                        view.states[sid] = State(checked=now)  # no state object: fresh
                    elif cached is not None and sid not in fetched_ids:
                        cached.checked = now
                live = [sid for sid in sorted(segments) if sid in view.states and not view.states[sid].dead]
                missing = [sid for sid in live if sid not in view.segments]

            def load(sid: str) -> tuple[str, Segment | None]:
                key = self._seg_key(collection, sid)
                got = self._conn.get(key)
                return sid, None if got is None else Segment.parse(got[0], key)

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

    def _cas(self, collection: str, sid: str, old: State, new: State) -> bool:
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
