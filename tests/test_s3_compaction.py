"""Compaction of the ``s3://`` index (moto's S3 server over HTTP, driven by boto3).

Merging small segments must cut the objects a cold query downloads, change no query's answer,
lose no concurrent update or delete (threads and processes), and leave a correct index when the
compactor fails or is killed between any two of its writes.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import boto3
import pytest
from bson import ObjectId

from tensorhub import TensorHub
from tensorhub.backends.s3 import _cas as s3_cas
from tensorhub.backends.s3 import _compaction as s3_compaction
from tensorhub.errors import BackendUnavailableError
from tensorhub.registry import open_stores

from conftest import S3_BUCKET

BUCKET = S3_BUCKET
C = "logs"


@pytest.fixture
def endpoint(s3_base: str) -> str:
    """The session's moto server (``conftest.s3_base``); each test works under its own prefix."""
    return s3_base


@pytest.fixture
def raw_s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def prefix() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def uri(endpoint: str, prefix: str) -> str:
    return (f"s3://{BUCKET}/{prefix}?endpoint_url={endpoint}&region=us-east-1"
            "&aws_access_key_id=testing&aws_secret_access_key=testing")


@pytest.fixture(autouse=True)
def _no_background_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_compaction, "COMPACT_TRIGGER", 0)  # tests that want it turn it back on


def _index(uri: str) -> Any:
    return open_stores(uri, blobs=False).index


def _keys(raw_s3: Any, prefix: str, kind: str) -> list[str]:
    keys: list[str] = []
    pages = raw_s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/index/{C}/{kind}/")
    for page in pages:
        keys.extend(obj["Key"] for obj in page.get("Contents", ()))
    return keys


class _Calls:
    """Counts the S3 operations a store's client sends."""

    def __init__(self, index: Any) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        index._conn.client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.counts[model.name] += 1


QUERIES: list[tuple[dict[str, Any], Any]] = [
    ({}, None), ({}, [("i", -1)]), ({"i": {"$lt": 50}}, [("i", 1)]), ({"tag": "odd"}, [("n", -1), ("i", 1)]),
    ({"n": {"$gt": 0}}, [("i", 1)]), ({"$or": [{"i": 3}, {"tag": "even", "i": {"$gte": 90}}]}, [("_id", 1)]),
]


def _answers(index: Any) -> list[Any]:
    out = []
    for filter, sort in QUERIES:
        docs = index.find(C, filter, sort=sort)
        out.append(docs if sort else sorted(docs, key=lambda d: d["i"]))
        out.append(index.count(C, filter))
    return out


def _fill(index: Any, n: int) -> list[ObjectId]:
    """``n`` documents, one segment each (as ``save_training_log`` per step writes them)."""
    ids = [ObjectId() for _ in range(n)]
    for i, oid in enumerate(ids):
        index.insert_many(C, [{"_id": oid, "i": i, "n": 0, "tag": "odd" if i % 2 else "even"}])
    return ids


def _check(index: Any, expected: dict[ObjectId, int]) -> None:
    """Exactly the expected documents, once each, with the expected counters."""
    docs = index.find(C, {})
    assert len(docs) == len({d["_id"] for d in docs}), "a document is listed twice"
    assert {d["_id"]: d["n"] for d in docs} == expected


# ------------------------------------------------------------------------------ cost and answers
def test_compaction_cuts_objects_and_cold_gets_and_changes_no_answer(uri: str, raw_s3: Any, prefix: str) -> None:
    index, stale = _index(uri), _index(uri)
    try:
        ids = _fill(index, 120)  # 120 one-document segments (300 took 46 s of the suite)
        assert index.update_many(C, {"i": {"$in": [1, 2, 3, 100]}}, {"$inc": {"n": 5}}) == 4
        assert index.delete_many(C, {"i": {"$in": [4, 5, 119]}}) == 3  # segments 4, 5, 119 die
        assert index.update_many(C, {"i": {"$in": [10, 11]}}, {"$set": {"tag": "x"}}) == 2
        before = _answers(stale)  # stale now caches the 117 one-document segments
        cold = _index(uri)
        calls = _Calls(cold)
        assert _answers(cold) == before
        gets_before = calls.counts["GetObject"]
        cold.close()
        assert len(_keys(raw_s3, prefix, "seg")) == 117 and gets_before >= 117

        start = time.monotonic()
        assert index.compact(C) == 117
        took = time.monotonic() - start
        segs = _keys(raw_s3, prefix, "seg")
        assert len(segs) == 1 and segs[0].endswith(".merged.bson")

        cold = _index(uri)
        calls = _Calls(cold)
        assert _answers(cold) == before
        assert calls.counts["GetObject"] == 2  # the merged segment and its state
        assert _answers(stale) == before  # an instance that read the old segments catches up
        assert _answers(index) == before
        cold.close()

        # writes through a view older than the compaction land in the merged segment
        assert stale.find_one(C, {"_id": ids[7]})["n"] == 0
        assert stale.update_many(C, {"_id": ids[7]}, {"$inc": {"n": 1}}) == 1
        assert stale.find_one_and_update(C, {"i": 8}, {"$inc": {"n": 2}})["n"] == 2
        assert stale.delete_many(C, {"i": {"$in": [20, 21]}}) == 2
        expected = {d["_id"]: d["n"] for d in before[0]}
        expected[ids[7]] += 1
        expected[ids[8]] += 2
        del expected[ids[20]], expected[ids[21]]
        for reader in (index, stale, _index(uri)):
            _check(reader, expected)
        assert index.compact(C) == 0  # one segment: nothing to merge
        assert took < 30, took
        # the merged-away sources' states stay as tombstones for the grace period, then are swept
        keys = _keys(raw_s3, prefix, "seg") + _keys(raw_s3, prefix, "state")
        assert len(keys) == 1 + 1 + 117 + 3  # merged segment + its state + tombstones (merged, dead)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(s3_compaction, "DEAD_STATE_GRACE", timedelta(seconds=-60))
            index.compact(C)
        assert len(_keys(raw_s3, prefix, "seg") + _keys(raw_s3, prefix, "state")) == 2
        for reader in (index, stale, _index(uri)):
            _check(reader, expected)
    finally:
        index.close()
        stale.close()


def test_merged_segments_are_merged_again_and_deleted_in_full(uri: str, raw_s3: Any, prefix: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_compaction, "COMPACT_MAX_SOURCES", 10)
    monkeypatch.setattr(s3_compaction, "COMPACT_ROUNDS", 1)
    index = _index(uri)
    try:
        _fill(index, 25)
        before = _answers(index)
        assert index.compact(C) == 10
        assert _answers(_index(uri)) == before
        assert index.compact(C) == 10  # the merged one (oldest first) and 9 plain ones
        assert index.compact(C) == 7  # that merged one and the last 6 plain ones
        assert index.compact(C) == 0
        assert len(_keys(raw_s3, prefix, "seg")) == 1
        assert _answers(_index(uri)) == before
        assert index.delete_many(C, {}) == 25
        assert _keys(raw_s3, prefix, "seg") == [] and _index(uri).find(C, {}) == []
        index.insert_many(C, [{"_id": ObjectId(), "i": 1, "n": 0}])
        assert [d["i"] for d in _index(uri).find(C, {})] == [1]
    finally:
        index.close()


def test_automatic_compaction_is_size_tiered(uri: str, raw_s3: Any, prefix: str) -> None:
    index = _index(uri)
    try:
        _fill(index, 10)
        assert index.compact(C, full=False) == 10
        index.insert_many(C, [{"_id": ObjectId(), "i": 100 + k, "n": 0, "tag": "odd"} for k in range(1)])
        for k in range(3):
            index.insert_many(C, [{"_id": ObjectId(), "i": 200 + k, "n": 0, "tag": "odd"}])
        before = _answers(index)
        assert index.compact(C, full=False) == 4  # the 10-document merged segment waits for more
        assert len(_keys(raw_s3, prefix, "seg")) == 2
        for k in range(20):
            index.insert_many(C, [{"_id": ObjectId(), "i": 300 + k, "n": 0, "tag": "odd"}])
        assert index.compact(C, full=False) == 22  # now both merged ones are outweighed: one segment
        assert len(_keys(raw_s3, prefix, "seg")) == 1
        assert len(_index(uri).find(C, {})) == 34
        assert _answers(_index(uri))[:4] != before[:4]  # (20 more documents)
    finally:
        index.close()


def test_an_update_whose_segment_another_thread_saw_merged_away_is_not_lost(uri: str) -> None:
    a, b = _index(uri), _index(uri)
    try:
        ids = _fill(a, 3)
        groups = a._by_segment(C, {"i": 1})  # what update_many targets: the one-document segment of i=1
        assert b.compact(C) == 3
        a.find(C, {})  # meanwhile another thread of `a` refreshes the shared view: that segment leaves it
        inc = {"$inc": {"n": 1}}
        done = a._writer.change_keys(C, groups, {"i": 1}, lambda sid: lambda state, hits: s3_cas.updated(state, hits, inc))
        assert len(done) == 1
        _check(_index(uri), {ids[0]: 0, ids[1]: 1, ids[2]: 0})
    finally:
        a.close()
        b.close()


def test_a_query_starts_a_background_compaction(uri: str, raw_s3: Any, prefix: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_compaction, "COMPACT_TRIGGER", 20)
    with TensorHub(uri, project_name="p") as hub:
        for step in range(30):
            hub.save_training_log(step=step)
        assert len(hub.find_training_logs()) == 30  # sees 30 small segments: compacts in the background
        thread = hub.index._views.get("training_logs").compactor
        assert thread is not None
        thread.join(timeout=60)
        assert not thread.is_alive()
    with TensorHub(uri, project_name="p") as cold:
        calls = _Calls(cold.index)
        assert [r["step"] for r in cold.find_training_logs(sort=[("step", 1)])] == list(range(30))
        assert calls.counts["GetObject"] == 2


# ------------------------------------------------------------------------------ concurrency
def test_threads_update_delete_insert_while_others_compact(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_compaction, "COMPACT_MAX_SOURCES", 12)
    monkeypatch.setattr(s3_compaction, "COMPACT_ROUNDS", 2)
    setup = _index(uri)
    ids = _fill(setup, 48)  # sizes cut 2026-12-01: the test took 150 s of the suite's 900 s budget
    doomed = set(ids[::12])
    applied: Counter[ObjectId] = Counter()
    inserted: list[ObjectId] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    writers_done = threading.Event()
    deadline = time.monotonic() + 150

    shared = _index(uri)  # two incrementers and a compactor share one instance (and its cached view)

    def incrementer(seed: int) -> None:
        rng, index = random.Random(seed), shared if seed < 2 else _index(uri)
        try:
            for k in range(12):
                if time.monotonic() > deadline:
                    break
                oid = rng.choice(ids)
                if k % 2:
                    hit = index.update_many(C, {"_id": oid}, {"$inc": {"n": 1}}) == 1
                else:
                    hit = index.find_one_and_update(C, {"_id": oid, "i": {"$gte": 0}}, {"$inc": {"n": 1}}) is not None
                if hit:
                    with lock:
                        applied[oid] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            if index is not shared:
                index.close()

    def deleter() -> None:
        index = _index(uri)
        try:
            for oid in sorted(doomed):
                if time.monotonic() > deadline:
                    break
                index.delete_many(C, {"_id": oid})
                new = ObjectId()
                index.insert_many(C, [{"_id": new, "i": 1000, "n": 0, "tag": "new"}])
                with lock:
                    inserted.append(new)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            index.close()

    def compactor(index: Any) -> None:
        try:
            for _ in range(40):
                if writers_done.is_set() or time.monotonic() > deadline:
                    break
                index.compact(C)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    stable = set(ids) - doomed
    reads = Counter()

    def reader(cold: bool) -> None:
        """Every read sees each document once, and every document that is never deleted."""
        index = _index(uri)
        try:
            for _ in range(60):
                if writers_done.is_set() or time.monotonic() > deadline:
                    break
                if cold:
                    index.close()
                    index = _index(uri)
                found = [d["_id"] for d in index.find(C, {})]
                assert len(found) == len(set(found)), "a document was read twice"
                assert stable <= set(found), f"{len(stable - set(found))} documents were missed"
                for oid in rng_ids.sample(sorted(stable), 3):  # the _id lookup path
                    assert index.find_one(C, {"_id": oid}) is not None
                with lock:
                    reads[cold] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            index.close()

    rng_ids = random.Random(7)
    writers = [threading.Thread(target=incrementer, args=(s,)) for s in range(4)] + [threading.Thread(target=deleter)]
    own = _index(uri)
    compactors = [threading.Thread(target=compactor, args=(index,)) for index in (shared, own)]
    compactors += [threading.Thread(target=reader, args=(cold,)) for cold in (False, True)]
    for t in writers + compactors:
        t.start()
    for t in writers:
        t.join(timeout=180)
    writers_done.set()
    for t in compactors:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in writers + compactors)
    shared.close()
    own.close()
    assert not errors, errors
    assert reads[False] >= 2 and reads[True] >= 1, reads
    expected = {oid: applied[oid] for oid in ids if oid not in doomed}
    expected.update((oid, 0) for oid in inserted)
    assert len(inserted) == len(doomed)
    try:
        _check(setup, expected)
        _check(_index(uri), expected)
        setup.compact(C)
        _check(_index(uri), expected)
    finally:
        setup.close()


def _increment_in_process(uri: str, ids: list[str], seed: int, results: Any) -> None:
    """Increment random documents (bounded count and time); report how often each increment applied."""
    s3_compaction.COMPACT_TRIGGER = 0
    rng, index, done = random.Random(seed), _index(uri), Counter()
    deadline = time.monotonic() + 120
    try:
        for _ in range(30):
            if time.monotonic() > deadline:
                break
            oid = rng.choice(ids)
            if index.update_many(C, {"_id": ObjectId(oid)}, {"$inc": {"n": 1}}) == 1:
                done[oid] += 1
    finally:
        index.close()
        results.put(dict(done))


@pytest.mark.slow
def test_processes_update_while_another_compacts(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_compaction, "COMPACT_MAX_SOURCES", 10)
    monkeypatch.setattr(s3_compaction, "COMPACT_ROUNDS", 1)
    index = _index(uri)
    try:
        ids = _fill(index, 60)
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        procs = [ctx.Process(target=_increment_in_process, args=(uri, [str(i) for i in ids], s, results))
                 for s in range(2)]
        for p in procs:
            p.start()
        try:
            deadline = time.monotonic() + 120
            for _ in range(60):  # compact, bounded, while the processes write
                if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                    break
                index.compact(C)
            counts = [results.get(timeout=180) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=60)
                if p.is_alive():
                    p.terminate()
        total: Counter[str] = Counter()
        for c in counts:
            total.update(c)
        assert sum(total.values()) > 0
        expected = {oid: total[str(oid)] for oid in ids}
        _check(_index(uri), expected)
        index.compact(C)
        _check(_index(uri), expected)
        assert _index(uri).compact(C) == 0
    finally:
        index.close()


# ------------------------------------------------------------------------------ failures
class _Killed(BaseException):
    """The compactor's process dies here: nothing after this point runs, not even its cleanup."""


def _plain(key: str) -> bool:
    return ".merged" not in key


#: step -> (the S3 primitive the compactor calls there, which of its keys, which of those calls fail:
#: n counts the calls on such keys). A compaction writes the merged segment, marks each source
#: (a CAS of its state), commits (creates the merged segment's state), then removes the sources.
_STEPS: dict[str, tuple[str, Any, Any]] = {
    "write": ("put_if", lambda key: "/seg/" in key and not _plain(key), lambda n: True),
    "mark": ("put_if", lambda key: "/state/" in key and _plain(key), lambda n: True),
    "some-marks": ("put_if", lambda key: "/state/" in key and _plain(key), lambda n: n > 5),
    "commit": ("put_if", lambda key: "/state/" in key and not _plain(key), lambda n: n == 1),  # not the abort
    "cleanup": ("delete_keys", lambda key: "/seg/" in key and _plain(key), lambda n: True),
}


class _Fault:
    """Fails one step of a victim store's compactions through the S3 primitives it calls there.

    ``killed``: from the first failing call on, every S3 call of the victim raises :class:`_Killed`
    (its process is gone: no abort, no cleanup). ``error``: the step's calls raise
    :class:`BackendUnavailableError` (S3 refused them) and everything else goes through.
    """

    def __init__(self, victim: Any, step: str, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.primitive, self.on_key, self.fails = _STEPS[step]
        self.how, self.armed, self.dead, self.calls = how, True, False, 0
        self._lock = threading.Lock()
        conn = victim._conn
        for name in ("put_if", "delete_keys", "get", "exists", "list"):
            monkeypatch.setattr(conn, name, self._wrap(name, getattr(conn, name)))

    def _wrap(self, name: str, real: Any) -> Any:
        def call(key: Any, *args: Any, **kwargs: Any) -> Any:
            keys = [key] if isinstance(key, str) else list(key)
            self._check(name, keys)
            return real(keys if name == "delete_keys" else key, *args, **kwargs)

        return call

    def _check(self, name: str, keys: list[str]) -> None:
        with self._lock:
            if not self.armed:
                return
            if self.dead:
                raise _Killed()
            if name != self.primitive or not keys or not all(self.on_key(k) for k in keys):
                return
            self.calls += 1
            if not self.fails(self.calls):
                return
            if self.how == "killed":
                self.dead = True
                raise _Killed()
        raise BackendUnavailableError("injected")


@pytest.mark.parametrize("step", list(_STEPS))
@pytest.mark.parametrize("how", ["killed", "error"])
def test_a_compactor_dying_at_any_step_leaves_a_correct_index(uri: str, raw_s3: Any, prefix: str, step: str,
                                                              how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    index = _index(uri)
    try:
        ids = _fill(index, 12)
        index.update_many(C, {"i": 3}, {"$inc": {"n": 1}})
        before = _answers(index)
        victim = _index(uri)
        fault = _Fault(victim, step, how, monkeypatch)
        if step == "cleanup" and how == "error":  # committed; the failed removal is logged for a later sweep
            assert victim.compact(C) == 12
        else:
            with pytest.raises((_Killed, BackendUnavailableError)):
                victim.compact(C)
        assert fault.calls >= 1  # the step was reached
        fault.armed = False

        expected = {d["_id"]: d["n"] for d in before[0]}
        for reader in (_index(uri), index):
            assert _answers(reader) == before
        if step == "cleanup":  # committed, but the sources' objects are still there: a query sweeps them
            monkeypatch.setattr(s3_compaction, "COMPACT_TRIGGER", 1000)
            assert len(_keys(raw_s3, prefix, "seg")) == 13
            reader = _index(uri)
            assert _answers(reader) == before
            thread = reader._views.get(C).compactor
            assert thread is not None
            thread.join(timeout=60)
            assert len(_keys(raw_s3, prefix, "seg")) == 1
            reader.close()
            monkeypatch.setattr(s3_compaction, "COMPACT_TRIGGER", 0)
        if step == "commit" and how == "killed":  # every source is marked into a merge that never committed
            assert len(_keys(raw_s3, prefix, "seg")) == 13
            # a writer that meets the pending merge aborts it (it does not wait) and goes through
            assert _index(uri).update_many(C, {"_id": ids[5]}, {"$inc": {"n": 1}}) == 1
            expected[ids[5]] += 1
            assert not any(".merged" in k for k in _keys(raw_s3, prefix, "seg"))
            assert any(k.endswith(".merged.bson") for k in _keys(raw_s3, prefix, "state"))  # its tombstone
            _check(_index(uri), expected)
            before = _answers(_index(uri))
        # a compaction that does not yet think a pending merge abandoned leaves its sources alone
        other = _index(uri)
        other.compact(C)
        assert _answers(_index(uri)) == before
        # one that does aborts it, and completes
        monkeypatch.setattr(s3_compaction, "COMPACT_ABANDONED_AFTER", -60.0)
        other.compact(C)
        other.close()
        segs = _keys(raw_s3, prefix, "seg")
        assert len(segs) == 1 and segs[0].endswith(".merged.bson"), segs
        assert _answers(_index(uri)) == before
        assert _answers(index) == before
        # writers get through, also from an instance that read the index before all this
        assert index.update_many(C, {}, {"$inc": {"n": 1}}) == 12
        expected = {k: v + 1 for k, v in expected.items()}
        _check(_index(uri), expected)
        assert _index(uri).delete_many(C, {"_id": ids[0]}) == 1
        del expected[ids[0]]
        _check(_index(uri), expected)
        _check(index, expected)
        victim.close()
    finally:
        index.close()
