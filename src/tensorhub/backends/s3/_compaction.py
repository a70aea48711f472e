"""Compaction of the S3 index, and the sweep of what deletes and merges leave behind.

Job: the index's maintenance (the protocol is "Compaction" in :mod:`tensorhub.backends.s3._index`).
:class:`Compactor` merges a collection's small segments into one (write the merged segment,
CAS-mark its sources, commit by creating its state), aborts merges whose compactor died,
removes dead and merged-away objects once it is safe, and starts all that in a background
thread when a query sees enough small segments or leftovers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime, timedelta, timezone

from bson import ObjectId

from tensorhub.backends.s3._cas import StateWriter
from tensorhub.backends.s3._segments import MERGED_SUFFIX, Entry, Segment, State, is_merged
from tensorhub.backends.s3._view import Gone, View, Views, first, rebuild, segment_entries
from tensorhub.backends.s3._zones import ZONE_KEY_CHARS, ZONE_TAG, build_zone, encode_zone
from tensorhub.errors import BackendUnavailableError

log = logging.getLogger(__name__)

#: a dead state (all of its segment deleted) or a merged-away one older than this may be swept
DEAD_STATE_GRACE = timedelta(hours=1)
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


class Compactor:
    """Merges and sweeps the collections of one store (see the module doc)."""

    def __init__(self, views: Views, writer: StateWriter) -> None:
        self.views = views
        self.writer = writer
        self.conn = views.conn
        self.uri = views.uri
        #: set when the store closes: no new merge or background job starts
        self.closed = False

    def compact(self, collection: str, *, full: bool = True) -> int:
        """Merge the collection's small segments; return how many were merged away.

        At most :data:`COMPACT_ROUNDS` merges of up to :data:`COMPACT_MAX_SOURCES` segments
        each. ``full=False`` (the automatic compaction) merges a merged segment again only with
        at least as many bytes of others, so a document is rewritten O(log) times.
        """
        self.views.prefix(collection)
        merged = 0
        for _ in range(COMPACT_ROUNDS):
            if self.closed:
                break
            done = self._compact_once(collection, full)
            if done == 0:
                break
            merged += done
        return merged

    def small(self, view: View, full: bool = True) -> list[str]:
        """The live segments worth merging, oldest first (caller holds the lock).

        Unless ``full``, a merged segment qualifies only if the plain and smaller merged segments
        beside it weigh at least as much (size tiers: each rewrite of a document doubles its segment).
        """
        out = []

        def size(sid: str, default: int = 0) -> int:
            # the documents' bytes once downloaded (a merged segment's object adds its header), else the listing's
            segment = view.segments.get(sid)
            return segment.nbytes if segment is not None else view.sizes.get(sid, default)

        for sid in view.order:
            state = view.states.get(sid) or State()
            if size(sid, 0) > COMPACT_SMALL_BYTES:
                continue
            if state.merged_into and state.merged_into in view.pending:
                continue  # another compaction is merging it right now
            out.append(sid)
        if full:
            return out
        budget = sum(size(sid, 0) for sid in out if not is_merged(sid))
        allowed = set()
        for sid in sorted((sid for sid in out if is_merged(sid)), key=lambda sid: size(sid, 0)):
            if size(sid, 0) > budget:
                break
            allowed.add(sid)
            budget += size(sid, 0)
        return [sid for sid in out if not is_merged(sid) or sid in allowed]

    def _compact_once(self, collection: str, full: bool = True) -> int:
        """One merge: write the merged segment, mark its sources (CAS), commit, remove the sources."""
        started = time.monotonic()
        view = self.views.refresh(collection, None)  # the listing and states: sources are read once picked
        self._abandon(collection, view)
        self.sweep(collection)
        with view.lock:
            chosen: list[str] = []
            size = 0
            for sid in self.small(view, full):
                segment = view.segments.get(sid)
                nbytes = segment.nbytes if segment is not None else view.sizes.get(sid, 0)
                if len(chosen) >= COMPACT_MAX_SOURCES or (chosen and size + nbytes > COMPACT_TARGET_BYTES):
                    break
                chosen.append(sid)
                size += nbytes
        if len(chosen) < 2 or not self.views.load(collection, chosen):
            return 0  # (a source vanished since the listing: merged or deleted by another; next time)
        with view.lock:
            if any(sid not in view.segments for sid in chosen):
                return 0
            picked = [(sid, view.states.get(sid) or State(), segment_entries(view, sid)) for sid in chosen]
            oldest = min(first(view, sid) for sid in chosen)
        sources = chosen
        docs = [e.doc for _, _, entries in picked for e in entries]
        budget = min(ZONE_KEY_CHARS, 1000 - len(self.views.state_key(collection, "x" * 100)))
        zone = encode_zone(build_zone(docs, self.views.declared(collection), budget=budget)) if budget > 40 else ""
        xid = merged_id(sources, zone, oldest)
        body = Segment.encode_merged([e.raw for _, _, entries in picked for e in entries], sources, oldest)
        xkey = self.views.seg_key(collection, xid)
        # 1. write the merged segment
        if self.conn.put_if(xkey, body, None) is None:
            return 0  # an id collision: try again another time
        try:
            # 2. mark its sources
            def mark(item: tuple[str, State, list[Entry]]) -> State | None:
                sid, state, _ = item
                new = State(etag=state.etag, rev=state.rev, docs=dict(state.docs), deleted=dict(state.deleted),
                            merged_into=xid)
                try:  # installed below all at once: the view is rebuilt once, not once per source
                    return new if self.writer.cas(collection, sid, state, new, install=False) else None
                except Gone:
                    return None

            marks = self.conn.map(mark, picked)
            with view.lock:
                for (sid, old, _), new in zip(picked, marks):
                    current = view.states.get(sid)
                    if new is not None and current is not None and (current.etag, current.rev) == (old.etag, old.rev):
                        view.states[sid] = new  # unless a writer of this instance installed a newer one meanwhile
                rebuild(view)
            marked = [new is not None for new in marks]
            # 3. commit (or abort)
            if not all(marked) or time.monotonic() - started > COMPACT_COMMIT_WINDOW:
                # a writer changed a source first: give up, try again later
                if self.writer.abort_merge(collection, xid):
                    self._unmark(collection, [sid for (sid, _, _), ok in zip(picked, marked) if ok], xid)
                return 0
            rev = ObjectId()
            if self.conn.put_if(self.views.state_key(collection, xid), State().encode(rev), None) is None:
                state = self.views.fetch_state(collection, xid)
                if state.aborted or state.rev != rev:  # a writer aborted the merge before we committed
                    with suppress(BackendUnavailableError):
                        self.conn.delete_keys([xkey])
                    return 0
        except BaseException:
            with suppress(Exception):
                self.writer.abort_merge(collection, xid)
            raise
        # 4. committed: the sources are no longer read; their states stay as tombstones
        try:
            self.conn.delete_keys([self.views.seg_key(collection, sid) for sid in sources])
        except BackendUnavailableError:
            log.warning("compaction of %s: could not remove %d merged segments; a later sweep will", collection,
                        len(sources), exc_info=True)
        log.debug("s3 index %s/%s: merged %d segments into %s", self.uri, collection, len(sources), xid)
        return len(sources)

    def _unmark(self, collection: str, sids: list[str], xid: str) -> None:
        """Best effort: clear the marks of an aborted merge (harmless, but they cost ``_id`` lookups a LIST)."""
        view = self.views.get(collection)

        def unmark(sid: str) -> None:
            with view.lock:
                state = view.states.get(sid)
            if state is None or state.merged_into != xid:
                return
            with suppress(Gone, BackendUnavailableError):
                self.writer.cas(collection, sid, state, State(etag=state.etag, rev=state.rev, docs=dict(state.docs),
                                                              deleted=dict(state.deleted)))

        self.conn.map(unmark, sids)

    def _abandon(self, collection: str, view: View) -> None:
        """Abort merges left uncommitted for longer than :data:`COMPACT_ABANDONED_AFTER` (a compactor died)."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=COMPACT_ABANDONED_AFTER)
        with view.lock:
            stale = [xid for xid, modified in view.pending.items() if modified < cutoff]
        for xid in stale:
            try:
                self.writer.abort_merge(collection, xid)
            except BackendUnavailableError:
                log.warning("could not abort the abandoned merge %s of %s", xid, collection, exc_info=True)
                continue
            with view.lock:
                view.pending.pop(xid, None)

    def sweep(self, collection: str) -> None:
        """Best effort: remove dead and merged-away segments left behind, then tombstones older than the grace.

        Segment objects go first: a tombstone is only removed once no listed segment can point at it.
        """
        view = self.views.get(collection)
        cutoff = datetime.now(timezone.utc) - DEAD_STATE_GRACE
        with view.lock:
            old = [sid for sid, modified in view.orphans.items() if modified < cutoff]
            segment_keys = [self.views.seg_key(collection, sid) for sid in view.undeleted]
            state_keys = [self.views.state_key(collection, sid) for sid in old]
        try:
            if segment_keys:
                self.conn.delete_keys(segment_keys)
                with view.lock:
                    view.undeleted = []
            if state_keys:
                self.conn.delete_keys(state_keys)
                with view.lock:
                    for sid in old:
                        view.orphans.pop(sid, None)
        except BackendUnavailableError:
            log.warning("could not sweep %d dead objects of %s", len(segment_keys) + len(state_keys), collection,
                        exc_info=True)

    def maybe_compact(self, collection: str) -> None:
        """Start a background compaction if the view holds :data:`COMPACT_TRIGGER` small segments or more,
        or leftovers to sweep (at most once per :data:`CLEANUP_INTERVAL`): segments merged away or dead
        whose objects remain (a compactor died after its commit), tombstones past the grace period."""
        if COMPACT_TRIGGER <= 0 or self.closed:
            return
        view = self.views.get(collection)
        cutoff = datetime.now(timezone.utc) - DEAD_STATE_GRACE
        with view.lock:
            if view.compactor is not None and view.compactor.is_alive():
                return
            compact = len(view.order) >= COMPACT_TRIGGER and len(self.small(view, full=False)) >= COMPACT_TRIGGER
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


def merged_id(sources: Sequence[str], zone: str = "", first: str = "") -> str:
    """A fresh merged-segment id that sorts after all of its sources' (even across skewed clocks),
    carrying its zone map and its order key (``first``, its oldest source's) when given."""
    oid = ObjectId()
    top = max(sid[:24] for sid in sources)
    if str(oid) <= top:
        seconds = int.from_bytes(bytes.fromhex(top[:8]), "big") + 1
        oid = ObjectId(seconds.to_bytes(4, "big") + ObjectId().binary[4:])
    tags = (f"{ZONE_TAG}{zone}" if zone else "") + (f".o{first}" if len(first) == 24 else "")
    return f"{oid}{tags}{MERGED_SUFFIX}"
