"""Compare-and-swap writes of segments' states: how updates and deletes land, and how merges end.

Job: the write side of the index (design in :mod:`tensorhub.backends.s3._index`).
:class:`StateWriter` writes a segment's state with a conditional PUT against the ETag it read
(:meth:`StateWriter.cas`), retries a lost race on fresh data (:meth:`StateWriter.change_segment`),
follows documents whose segment was merged away (:meth:`StateWriter.change_keys`), and decides a
merge's fate, commit or abort, by who creates the merged segment's state first
(:meth:`StateWriter.abort_merge`): writers abort pending merges they meet rather than wait.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from bson import ObjectId

from tensorhub.backends.base import SortSpec
from tensorhub.backends.s3._segments import Entry, State, idkey, is_merged
from tensorhub.backends.s3._zones import Zone, build_zone, sid_zone
from tensorhub.backends.s3._view import Gone, View, Views, rebuild, segment_entries, select
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import BackendUnavailableError, ConflictError
from tensorhub.query import apply_update

log = logging.getLogger(__name__)

#: CAS attempts of one update before giving up (each failure means another writer succeeded)
CAS_ATTEMPTS = 64
#: times an update looks its documents up again after their segment was merged away
RELOCATE_ROUNDS = 8

#: ``change(state, hits) -> (new state, raw BSON of the changed documents)``
Change = Callable[[State, list[Entry]], tuple[State, list[bytes]]]


class StateWriter:
    """Conditional writes of the states of one store's segments (the views stay in step with them)."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.conn = views.conn
        self.uri = views.uri

    def cas(self, collection: str, sid: str, old: State, new: State, install: bool = True) -> bool:
        """Write ``new`` over ``old`` if nobody changed it meanwhile; install it in the cache (if ``install``)."""
        if new.zone is None and (new.docs or new.deleted):
            new.zone = self.zone_of(collection, sid, new)
        rev = ObjectId()
        key = self.views.state_key(collection, sid)
        etag = self.conn.put_if(key, new.encode(rev), old.etag)
        if etag is None:
            current = self.views.reload(collection, sid)
            if current.rev != rev:
                return False
            etag = current.etag  # our write landed; only its reply was lost
        new.etag, new.rev, new.checked = etag, rev, time.monotonic()
        if install:
            self.views.install(collection, sid, new)
        return True

    def zone_of(self, collection: str, sid: str, state: State) -> Zone | None:
        """The exact zone map of a segment's documents as ``state`` resolves them, over the fields of
        the segment's own zone (None when the segment is not downloaded or has no zone: then unknown)."""
        base = sid_zone(sid)
        view = self.views.get(collection)
        with view.lock:
            segment = view.segments.get(sid)
        if base is None or segment is None:
            return None
        docs = []
        for doc in segment.docs:
            key = idkey(doc["_id"])
            if key not in state.deleted:
                docs.append(state.docs[key][1] if key in state.docs else doc)
        return build_zone(docs, only=list(base.fields))

    def change_segment(self, collection: str, sid: str, filter: Mapping[str, Any], change: Change,
                       keys: set[Any] | None = None, first_only: bool = False,
                       sort: SortSpec | None = None) -> list[bytes] | None:
        """CAS-apply ``change(state, entries) -> new state`` to the matches of one segment.

        Retries on conflicts (re-reading the state); returns the raw BSON of the changed
        documents, or ``None`` if the segment was merged away or swept: its documents (``keys``,
        when given, limits the change to them) must then be looked up where they are now.
        """
        view = self.views.get(collection)
        for attempt in range(CAS_ATTEMPTS):
            try:
                state = self.views.current(collection, sid)
            except Gone:
                return None
            if state.aborted or (is_merged(sid) and state.etag is None):
                return None  # a merge that never committed: the documents are in its sources
            if state.merged_into and self.merge_committed(collection, state.merged_into):
                return None
            with view.lock:
                if sid not in view.segments:  # dropped by a refresh of another thread: merged away or dead
                    return None
                hits = select(segment_entries(view, sid), filter, sort)
            if keys is not None:
                hits = [e for e in hits if e.key in keys]
            if first_only:
                hits = hits[:1]
            if not hits:
                return []
            new, raws = change(state, hits)  # a new state has no merged_into: an aborted merge's mark goes
            try:
                if self.cas(collection, sid, state, new):
                    if new.dead:
                        self.drop_segment(collection, sid)
                    return raws
            except Gone:
                return None
            log.debug("s3 index %s/%s: CAS conflict on segment %s (attempt %d)", self.uri, collection, sid, attempt)
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** attempt)))
        raise ConflictError(
            f"gave up updating {collection} at {self.uri} after {CAS_ATTEMPTS} conflicting concurrent writes; "
            "too many writers on the same records, try again")

    def change_keys(self, collection: str, groups: Mapping[str, set[Any]], filter: Mapping[str, Any],
                    make_change: Callable[[str], Change]) -> list[bytes]:
        """Apply ``make_change(sid)`` to the matches among ``groups`` (sid -> document keys), in parallel.

        The documents of a segment merged away meanwhile are looked up again (a LIST) in the
        segment that holds them now, so an update or delete racing a compaction is never lost.
        """
        out: list[bytes] = []
        for _ in range(RELOCATE_ROUNDS):
            done = self.conn.map(
                lambda item: (item[0], self.change_segment(collection, item[0], filter, make_change(item[0]),
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
            view = self.views.refresh(collection, filter)
            with view.lock:
                regrouped: dict[str, set[Any]] = {}
                for key in moved:
                    if key in view.key_index:
                        regrouped.setdefault(view.key_index[key], set()).add(key)
            groups = regrouped
        raise ConflictError(f"gave up updating {collection} at {self.uri}: its segments kept being "
                            "merged under the update; try again")

    def merge_committed(self, collection: str, xid: str) -> bool:
        """Whether the merge into ``xid`` committed; one still pending is aborted (writers do not wait)."""
        state = self.views.fetch_state(collection, xid)
        if state.etag is not None:
            return not state.aborted
        return not self.abort_merge(collection, xid)

    def abort_merge(self, collection: str, xid: str) -> bool:
        """Abort the merge into ``xid`` unless it committed first; ``True`` if it is (now) aborted.

        Commit and abort both create the merged segment's state with ``IfNoneMatch``: exactly one wins.
        """
        rev = ObjectId()
        if self.conn.put_if(self.views.state_key(collection, xid), State(aborted=True).encode(rev), None) is None:
            state = self.views.fetch_state(collection, xid)
            if state.etag is None:
                raise BackendUnavailableError(f"the merge state of {xid} in {collection} at {self.uri} "
                                              "was neither created nor readable; try again")
            if not state.aborted and state.rev != rev:
                return False
        log.debug("s3 index %s/%s: merge %s aborted", self.uri, collection, xid)
        with suppress(BackendUnavailableError):
            self.conn.delete_keys([self.views.seg_key(collection, xid)])
        return True

    def drop_segment(self, collection: str, sid: str) -> None:
        """Remove a dead segment's object (its state stays as a tombstone until swept)."""
        view = self.views.get(collection)
        with view.lock:
            view.segments.pop(sid, None)
            if sid in view.order:
                view.order.remove(sid)
                rebuild(view)
        try:
            self.conn.delete_keys([self.views.seg_key(collection, sid)])
        except BackendUnavailableError:
            log.warning("could not remove the dead segment %s of %s; it will be retried", sid, collection,
                        exc_info=True)


def updated(state: State, hits: list[Entry], update: Mapping[str, Any]) -> tuple[State, list[bytes]]:
    """The state with ``update`` applied to ``hits``, and the updated documents' BSON."""
    docs = dict(state.docs)
    raws = []
    for e in hits:
        doc = apply_update(decode_document(e.raw), update)
        raw = encode_document(doc)
        docs[e.key] = (raw, decode_document(raw))
        raws.append(raw)
    return State(etag=state.etag, rev=state.rev, docs=docs, deleted=dict(state.deleted)), raws


def deleted(view: View, sid: str, state: State, hits: list[Entry]) -> tuple[State, list[bytes]]:
    """The state with ``hits`` deleted (``dead`` once nothing of the segment is left), and their BSON."""
    gone = dict(state.deleted)
    docs = dict(state.docs)
    for e in hits:
        gone[e.key] = e.doc["_id"]
        docs.pop(e.key, None)
    segment = view.segments.get(sid)
    dead = segment is not None and len(gone) >= len(segment.raws)
    if dead:
        gone, docs = {}, {}
    new = State(etag=state.etag, rev=state.rev, docs=docs, deleted=gone, dead=dead)
    return new, [e.raw for e in hits]
