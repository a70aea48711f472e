"""What one S3 index store knows of each collection, and how it brings that up to date.

Job: the read side of the index (design in :mod:`tensorhub.backends.s3._index`). A
:class:`View` caches a collection's segments (immutable) and states (by ETag) and the
documents they resolve to; :class:`Views` keeps the views of one store, refreshes a view
with one LIST and GETs of what changed only, and re-reads single states after a lost race.
Nothing here writes to S3.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId

from tensorhub.backends.base import SortSpec
from tensorhub.backends.s3._connection import S3Connection
from tensorhub.backends.s3._segments import Entry, Segment, State, idkey, is_merged
from tensorhub.backends.s3._zones import Zone, may_match, sid_order, sid_zone
from tensorhub.errors import ConflictError, InvalidArgumentError, InvalidArgumentTypeError
from tensorhub.query import matches, regex_budget, sort_documents

log = logging.getLogger(__name__)

#: a state read longer ago than this is re-read before a CAS write (must stay << DEAD_STATE_GRACE
#: of :mod:`tensorhub.backends.s3._compaction`)
MAX_VIEW_AGE = 600.0
#: LISTs of one refresh before giving up when segments keep vanishing under it (merged away)
REFRESH_ATTEMPTS = 8

#: ``refresh(filter=EVERYTHING)`` downloads every live segment
EVERYTHING: Mapping[str, Any] = {}

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def split_id_condition(filter: Mapping[str, Any]) -> tuple[set[Any] | None, Mapping[str, Any]]:
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


def select(entries: list[Entry], filter: Mapping[str, Any], sort: SortSpec | None = None) -> list[Entry]:
    """The entries matching ``filter``, ordered by ``sort``."""
    keys, rest = split_id_condition(filter)
    if keys is not None:  # exact pre-filter: the repository deletes and claims by _id / $in
        entries = [e for e in entries if e.key in keys]
    with regex_budget():  # one regex time allowance for the whole collection
        hits = [e for e in entries if matches(e.doc, rest)]
    if sort:
        by_doc = {id(e.doc): e for e in hits}
        docs = sort_documents([e.doc for e in hits], sort)
        hits = [by_doc[id(d)] for d in docs]
    return hits


@dataclass
class View:
    """What one store instance knows of one collection.

    ``order`` lists every live segment; only those a query could not rule out by their zone maps
    are downloaded (``segments``), and only their documents are resolved (``resolved``).
    """

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
    sizes: dict[str, int] = field(default_factory=dict)  # sid -> bytes of its object (from the listing)
    # per loaded live segment: ((state etag, rev), its resolved documents)
    resolved: dict[str, tuple[Any, list[Entry]]] = field(default_factory=dict)
    key_index: dict[Any, str] = field(default_factory=dict)  # _id key -> sid, of the loaded live documents
    listed: bool = False  # whether a refresh (a LIST) has completed


class Gone(Exception):
    """A segment vanished (it was dead and got swept) while we worked on it."""


class Views:
    """The views of one store's collections, their keys on S3, and their refresh."""

    def __init__(self, connection: S3Connection) -> None:
        self.conn = connection
        self.uri = connection.uri
        self._root = f"{connection.location.prefix}index/"
        self._views: dict[str, View] = {}
        self._declared: dict[str, list[str]] = {}  # collection -> indexed fields (create_index), in order
        self._lock = threading.Lock()

    def declare(self, collection: str, fields: list[str]) -> None:
        """Remember indexed fields of a collection (zone maps summarise them first)."""
        self.prefix(collection)
        with self._lock:
            known = self._declared.setdefault(collection, [])
            known.extend(f for f in fields if isinstance(f, str) and f not in known)

    def declared(self, collection: str) -> list[str]:
        with self._lock:
            return list(self._declared.get(collection, ()))

    # -------------------------------------------------------------- keys and cache
    def prefix(self, collection: str) -> str:
        """The key prefix of a collection (checks the name: it becomes part of S3 keys)."""
        if not isinstance(collection, str) or not _COLLECTION_NAME.match(collection):
            raise (InvalidArgumentError if isinstance(collection, str) else InvalidArgumentTypeError)(
                f"collection names are letters, digits, '_', '.', '-'; got {collection!r}")
        return f"{self._root}{collection}/"

    def seg_key(self, collection: str, sid: str) -> str:
        return f"{self.prefix(collection)}seg/{sid}.bson"

    def state_key(self, collection: str, sid: str) -> str:
        return f"{self.prefix(collection)}state/{sid}.bson"

    def get(self, collection: str) -> View:
        """The view of ``collection`` (empty until refreshed)."""
        with self._lock:
            return self._views.setdefault(collection, View())

    def all(self) -> list[View]:
        with self._lock:
            return list(self._views.values())

    def listing(self, prefix: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """``(segments, states)`` of a collection, from one LIST of its prefix: sid -> object."""
        segments: dict[str, dict[str, Any]] = {}
        states: dict[str, dict[str, Any]] = {}
        for obj in self.conn.list(prefix):
            kind, _, name = obj["Key"][len(prefix):].partition("/")
            if name.endswith(".bson") and "/" not in name:
                {"seg": segments, "state": states}.get(kind, {})[name[:-5]] = obj
        return segments, states

    def fetch_state(self, collection: str, sid: str) -> State:
        """The current state of a segment from S3 (an empty one, ``etag=None``, if it has none)."""
        key = self.state_key(collection, sid)
        got = self.conn.get(key)
        if got is None:
            return State()
        return State.parse(got[0], got[1], key)

    # -------------------------------------------------------------- refresh
    def refresh(self, collection: str, filter: Mapping[str, Any] | None = EVERYTHING) -> View:
        """Bring the cached view of a collection up to date: a LIST, GETs of what changed only.

        Of the segments not downloaded yet, only those whose zone maps say they can hold a match of
        ``filter`` are fetched (all of them for ``{}``, none for ``None``: listing and states only).

        ``view.lock`` is only held for short in-memory steps, never while waiting on the thread
        pool (whose threads may be CAS workers needing it); ``refresh_lock`` serialises refreshes.
        A segment that vanishes between the LIST and its GET (merged away or dead) makes the
        refresh start over, a bounded number of times.
        """
        prefix = self.prefix(collection)
        view = self.get(collection)
        with view.refresh_lock:
            for attempt in range(REFRESH_ATTEMPTS):
                if self._refresh_once(collection, prefix, view, filter):
                    return view
                log.debug("s3 index %s/%s: a segment vanished during a refresh (attempt %d)", self.uri,
                          collection, attempt)
        raise ConflictError(f"{collection} at {self.uri} kept changing while it was read "
                            f"({REFRESH_ATTEMPTS} attempts); try again")

    def _refresh_once(self, collection: str, prefix: str, view: View, filter: Mapping[str, Any] | None) -> bool:
        # The LIST returns seg/ keys before state/ keys and each in key order, page after page, so
        # a document is always seen in at least one of its segments: a merged segment's id sorts
        # after its sources', it exists before they are removed, and the state that commits it is
        # listed after all of them (see the design in _index).
        segments, states = self.listing(prefix)
        now = time.monotonic()

        def stale(sids: Any) -> list[str]:
            with view.lock:
                return [sid for sid in sids if sid in states
                        and (sid not in view.states or view.states[sid].etag != states[sid]["ETag"])]

        def install(fetched: list[tuple[str, State]]) -> None:
            with view.lock:
                for sid, state in fetched:
                    view.states[sid] = state

        fetched = self.conn.map(lambda sid: (sid, self.fetch_state(collection, sid)), stale(segments))
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
        install(self.conn.map(lambda sid: (sid, self.fetch_state(collection, sid)),
                              stale(t for t in targets if t not in segments)))
        with view.lock:
            def committed(sid: str | None) -> bool:
                state = view.states.get(sid) if sid in states else None
                return state is not None and state.etag is not None and not state.aborted

            superseded = {sid for sid in segments if committed(state_of(sid).merged_into)}
            candidates = [sid for sid in segments
                          if sid not in superseded and not state_of(sid).dead and not state_of(sid).aborted
                          and (not is_merged(sid) or committed(sid))]
            # a merged segment written before zone maps carries its order key in its header: always read
            memo: dict[int, Any] = {}
            missing = [sid for sid in candidates if sid not in view.segments and (
                (filter is not None and may_match(effective_zone(sid, state_of(sid)), filter, memo))
                or (is_merged(sid) and sid_order(sid) is None))]

        def load(sid: str) -> tuple[str, Segment | None]:
            key = self.seg_key(collection, sid)
            got = self.conn.get(key)
            return sid, None if got is None else Segment.parse(got[0], key, merged=is_merged(sid))

        loaded = self.conn.map(load, missing)
        if any(segment is None for _, segment in loaded):
            return False  # merged away or dead since the LIST: read again
        with view.lock:
            view.segments.update(loaded)
            # a committed merge replaces its sources even if we read them unmarked (a merged segment
            # not downloaded supersedes by its sources' marks only: its sources, read unmarked in a
            # LIST that raced the merge, hold the documents as they were at that moment)
            for sid in candidates:
                if sid in view.segments:
                    superseded.update(view.segments[sid].sources)
            live = [sid for sid in candidates if sid not in superseded]
            view.order = sorted(live, key=lambda sid: (first(view, sid), sid))
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
            view.sizes = {sid: int(segments[sid].get("Size", 0)) for sid in view.order}
            view.listed = True
            rebuild(view)
        return True

    def load(self, collection: str, sids: list[str]) -> bool:
        """Download the listed live segments not downloaded yet; False if one vanished (merged away, dead)."""
        view = self.get(collection)
        with view.lock:
            missing = [sid for sid in sids if sid not in view.segments]

        def load(sid: str) -> tuple[str, Segment | None]:
            key = self.seg_key(collection, sid)
            got = self.conn.get(key)
            return sid, None if got is None else Segment.parse(got[0], key, merged=is_merged(sid))

        loaded = self.conn.map(load, missing)
        with view.lock:
            view.segments.update((sid, segment) for sid, segment in loaded if segment is not None)
            rebuild(view)
        return all(segment is not None for _, segment in loaded)

    # -------------------------------------------------------------- single states
    def install(self, collection: str, sid: str, state: State) -> None:
        """Put a state we read or wrote into the view (unless it already holds that version)."""
        view = self.get(collection)
        with view.lock:
            old = view.states.get(sid)
            if old is None or old.etag != state.etag or old.rev != state.rev:
                view.states[sid] = state
                if sid in view.order:
                    rebuild(view)

    def reload(self, collection: str, sid: str) -> State:
        """Re-read one segment's state after a lost race (raises :class:`Gone` if it was swept)."""
        state = self.fetch_state(collection, sid)
        view = self.get(collection)
        with view.lock:
            recently_seen = time.monotonic() - view.seen.get(sid, float("-inf")) < MAX_VIEW_AGE
        # no state object: a fresh segment, unless it died and was swept (which takes DEAD_STATE_GRACE)
        if state.etag is None and not recently_seen and not self.conn.exists(self.seg_key(collection, sid)):
            with view.lock:
                view.segments.pop(sid, None)
                view.states.pop(sid, None)
                if sid in view.order:
                    view.order.remove(sid)
                    rebuild(view)
            raise Gone(sid)
        self.install(collection, sid, state)
        return state

    def current(self, collection: str, sid: str) -> State:
        """A segment's state as cached, re-read first if it is older than :data:`MAX_VIEW_AGE`."""
        view = self.get(collection)
        with view.lock:
            state = view.states.get(sid) or State()
        if time.monotonic() - state.checked > MAX_VIEW_AGE:
            state = self.reload(collection, sid)
        return state


def first(view: View, sid: str) -> str:
    """A segment's place in the collection's order: a merged one takes its oldest source's."""
    order = sid_order(sid)
    if order is not None:
        return order
    segment = view.segments.get(sid)
    return segment.first if segment is not None and segment.first else sid[:24]


def add_inserted(view: View, sid: str, segment: Segment, size: int) -> None:
    """Make a segment this store just wrote live in its view at once (the next LIST confirms it),
    so its documents count for the ``_id`` checks of later inserts (caller holds the lock)."""
    view.segments[sid] = segment
    view.states.setdefault(sid, State())
    view.seen[sid] = time.monotonic()
    view.sizes[sid] = size
    if sid not in view.order:
        view.order.append(sid)
    state = view.states[sid]
    entries = segment_entries(view, sid)
    view.resolved[sid] = ((state.etag, state.rev, state.dead), entries)
    for e in entries:
        view.key_index[e.key] = sid


def effective_zone(sid: str, state: State | None) -> Zone | None:
    """The zone map of a segment's documents as ``state`` resolves them (None: unknown, read it)."""
    zone = sid_zone(sid)
    if zone is None or state is None or not (state.docs or state.deleted):
        return zone
    return state.zone  # written by whoever changed the segment; absent: an older writer, unknown


def candidates(view: View, filter: Mapping[str, Any]) -> list[str]:
    """The downloaded live segments, in order, that can hold a match of ``filter`` (caller holds the lock)."""
    memo: dict[int, Any] = {}
    return [sid for sid in view.order if sid in view.resolved
            and may_match(effective_zone(sid, view.states.get(sid)), filter, memo)]


def entries_of(view: View, sids: list[str]) -> list[Entry]:
    """The resolved documents of the given segments, in their order (caller holds the lock)."""
    out: list[Entry] = []
    for sid in sids:
        out.extend(view.resolved[sid][1])
    return out


def rebuild(view: View) -> None:
    """Re-resolve the documents of the segments whose state changed (caller holds the lock)."""
    live = {sid for sid in view.order if sid in view.segments}
    for sid in [sid for sid in view.resolved if sid not in live]:
        _unindex(view, sid)
        del view.resolved[sid]
    for sid in view.order:
        if sid not in live:
            continue
        state = view.states.get(sid)
        signature = None if state is None else (state.etag, state.rev, state.dead)
        cached = view.resolved.get(sid)
        if cached is not None and cached[0] == signature:
            continue
        if cached is not None:
            _unindex(view, sid)
        entries = segment_entries(view, sid)
        view.resolved[sid] = (signature, entries)
        for e in entries:
            view.key_index[e.key] = sid


def _unindex(view: View, sid: str) -> None:
    for e in view.resolved[sid][1]:
        if view.key_index.get(e.key) == sid:
            del view.key_index[e.key]


def segment_entries(view: View, sid: str) -> list[Entry]:
    """The live documents of one segment, as its state resolves them (caller holds the lock)."""
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
