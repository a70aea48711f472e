"""Log digests: what a run's charts and metric summaries need, kept up to date when its rows are written.

A run with a million log rows cannot be charted by reading its rows in under a second on any
backend, so the work is done at write time (as W&B's sampled history does): every batch of log
rows stamped with a ``task_id`` (``save_*_logs``, ``run.log``'s flushes: :func:`tensorhub.logs.save_logs`)
also folds into the run's *digest*, in collection :data:`COLLECTION`. Per (run, log kind) and per
(attempt, metric), a digest holds:

* exact figures: the number of rows with the metric (NaN included) and per x axis (``step``,
  ``epoch``, ``time``), the number of non-NaN values, their ``min``, ``max`` and the ``final`` one
  (the newest by time), with the stored types (an int stays an int);
* the points of the curve: every row's ``(step, epoch, time, value)`` while there are at most
  :data:`RAW_POINTS`, then at most :data:`BUCKETS` buckets of consecutive rows, each keeping its first,
  last, lowest and highest point (min/max downsampling, the same idea as :func:`tensorhub.plots.downsample`:
  spikes survive); the bucket width doubles and adjacent buckets merge when there would be more.
  So a digest is at most ~80 KB per metric, and a chart of a run of any length reads a few of them.

Storage and concurrency. A digest is *parts*, documents of :data:`COLLECTION` found by the run's
id as text (``run``, which every backend's query can decide without decoding a row) and ``kind``:

* ``shard``: what one writing process added, one document per metric plus one (``metric: None``)
  counting the rows. Its ``_id`` is derived from (project, run, kind, writer, metric), the writer
  being a random token of the process: two processes never write one document, so creating one
  never races (S3 does not refuse a second insert of an ``_id``), and threads of a process share
  a lock. Each change is an optimistic read-modify-write: read, fold, update conditional on the
  ``version`` read, re-read and retry on a mismatch (:data:`RETRIES`); a failed update marks the
  run's digest stale rather than lose rows silently. Readers merge the shards of a run;
* ``base``: a digest rebuilt from the rows (see below), tied together by its ``rebuild`` id;
* ``stale``: written by :func:`mark_stale` before log rows of a run are deleted: the parts no
  longer describe the rows.

Which digests are trusted. Rows written before this module existed have no digest, and a digest
of a run with such rows would miss them. A per-project marker (``since``) is written by the first
digest write of a project: the epoch when no log row existed yet (every row then has a digest),
else the time of that write. A run's digest is used when no part is stale and either the run's
task record was created at or after ``since`` or a ``base`` part exists. Otherwise the readers
fall back to the rows, and when the run has ended (finished, failed, cancelled: no writer left)
the digest is rebuilt from them once and stored as ``base``. Rows saved outside a run (no
``task_id``) have no digest: they are read as before.

What is never done: nothing read from a digest runs code (numbers, strings and float64 arrays in
BSON binary, parsed with ``numpy.frombuffer``; a malformed part is ignored with a warning and the
rows are read instead), and users cannot write this collection through any method of the hub
(no ``find_records``/``rm`` kind names it). Limits: every writer of a store must maintain digests
(a tensorhub older than this module writing to a run created after ``since`` leaves rows out of
its digest; so do rows written through the raw ``hub.index``); each process that writes to a run
adds a shard (a run written by thousands of short processes is read as thousands of small parts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from bson import Binary, ObjectId

from tensorhub.errors import ConflictError, TensorHubError
from tensorhub.records import COMMON_INTERNAL_FIELDS, Records, utcnow
from tensorhub.stamping import RUN_FIELDS

log = logging.getLogger(__name__)

#: the collection of digest parts
COLLECTION = "log_digests"
#: its index: a run's parts of one kind are found by ``run`` (the task id's hex) and ``kind``
INDEXES = {COLLECTION: [[("project_name", 1), ("run", 1), ("kind", 1)]]}
#: every row is kept while a series has at most this many (so a chart of up to this many is exact)
RAW_POINTS = 2048
#: buckets of consecutive rows beyond that (each keeps up to 4 points: first, last, lowest, highest)
BUCKETS = 512
#: optimistic retries of one part's read-modify-write
RETRIES = 8
#: runs per query of their parts (file:// decides an ``$in`` of up to 500 values in SQL)
QUERY_RUNS = 400
#: row fields that are never metrics
NOT_METRICS = COMMON_INTERNAL_FIELDS | RUN_FIELDS | {"step"}
#: the x axes a digest keeps (``time`` is the row's stamped time)
X_AXES = ("step", "epoch", "time")
#: task statuses after which no writer is left, so a digest rebuilt from the rows stays right
ENDED = frozenset({"finished", "failed", "cancelled", "pruned"})

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_COLUMNS = 5  # ord, step, epoch, time (ms), value
_ORD, _STEP, _EPOCH_COL, _TIME, _VALUE = range(_COLUMNS)
_X_COLUMN = {"step": _STEP, "epoch": _EPOCH_COL, "time": _TIME}

_writer_lock = threading.Lock()
_writer: tuple[int, str] = (0, "")
_part_locks: dict[ObjectId, threading.Lock] = {}
_since_cache: dict[tuple[str, str], dt.datetime] = {}


def rows_collection(kind: str) -> str:
    """The collection of ``kind``'s log rows (``logs.COLLECTIONS``' rule; logs.py imports this module)."""
    return f"{kind}_logs"


def _writer_token() -> str:
    """A random token of this process (a forked child gets its own: it writes its own shards)."""
    global _writer
    with _writer_lock:
        if _writer[0] != os.getpid():
            _writer = (os.getpid(), secrets.token_hex(8))
        return _writer[1]


def _derived_id(*parts: Any) -> ObjectId:
    """An ``_id`` derived from ``parts``: the same document for the same parts, in every process."""
    text = "\x00".join("" if p is None else str(p) for p in parts)
    return ObjectId(hashlib.blake2b(text.encode(), digest_size=12).digest())


def _name(metric: str | None) -> str:
    """A part's name in its derived ``_id``: the row counts, or a metric (never the same text)."""
    return "rows" if metric is None else "metric:" + metric


def _lock(part_id: ObjectId) -> threading.Lock:
    with _writer_lock:
        lock = _part_locks.get(part_id)
        if lock is None:
            if len(_part_locks) > 4096:  # runs long gone: a fresh lock per part is as good
                _part_locks.clear()
            lock = _part_locks[part_id] = threading.Lock()
        return lock


def _ms(value: Any) -> float:
    """A datetime as ms since the epoch (exact: stored times have ms precision), else NaN."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return float(round(value.timestamp() * 1000))
    return math.nan


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- one series
class Series:
    """The digest of one metric of one attempt of one run (one writer's share, or several merged)."""

    def __init__(self, attempt: Any, metric: str) -> None:
        self.attempt, self.metric = attempt, metric
        self.count = 0                        # rows with a numeric value of the metric (NaN included)
        self.n = dict.fromkeys(X_AXES, 0)     # of those, rows with each x present (not None)
        self.odd: set[str] = set()            # x axes with a value that is not a plain number
        self.ints = {"step": True, "epoch": True}  # whether every x value seen is an int
        self.m_count = 0                      # non-NaN values
        self.min: Any = None
        self.max: Any = None
        self.final: Any = None
        self.final_key: tuple[float, str] = (-math.inf, "")  # (time, _id) of the newest row, as the store sorts
        #: (time, position in its row) of the first row: the order metrics were first seen in
        self.first_key: tuple[float, float] = (math.inf, math.inf)
        self.width = 0                        # 0: every point kept; else rows per bucket
        self.next_ord = 0
        self.points = np.empty((_COLUMNS, 0))
        self.bucketed = False                 # some merged share was bucketed

    # -------------------------------------------------------------- writing
    def add(self, batch: _Batch, rows: np.ndarray, values: list[Any], reduce: bool = True, position: int = 0) -> None:
        """Fold the rows ``rows`` (indices into ``batch``, in their order of writing) whose values of this
        metric are ``values`` (``reduce=False``: keep every point for now, e.g. a batch about to be
        appended to a stored digest)."""
        k = len(values)
        if not k:
            return
        self.count += k
        for axis in ("step", "epoch"):
            present = batch.present[axis][rows]
            self.n[axis] += int(present.sum())
            if batch.odd[axis][rows].any():
                self.odd.add(axis)
            if self.ints[axis] and not batch.ints[axis][rows][present].all():
                self.ints[axis] = False
        times = batch.time[rows]
        self.n["time"] += int(batch.present["time"][rows].sum())
        if batch.odd["time"][rows].any():
            self.odd.add("time")
        first = times[0]
        self.first_key = min(self.first_key, (first if not math.isnan(first) else -math.inf, float(position)))
        numbers = np.asarray(values, dtype=float)
        nan = np.isnan(numbers)
        kept = [v for v, bad in zip(values, nan.tolist()) if not bad] if nan.any() else values
        if kept:
            self.m_count += len(kept)
            low, high = min(kept), max(kept)
            if self.min is None or low < self.min:
                self.min = low
            if self.max is None or high > self.max:
                self.max = high
            # the newest row by (time, _id), as the store sorts: a batch's ids grow in its order
            order_times = np.where(nan | np.isnan(times), -np.inf, times)
            last = k - 1 - int(np.argmax(order_times[::-1]))
            key = (float(order_times[last]), str(batch.ids[rows[last]]))
            if key >= self.final_key:
                self.final, self.final_key = values[last], key
        block = np.empty((_COLUMNS, k))
        block[_ORD] = np.arange(self.next_ord, self.next_ord + k)
        block[_STEP] = batch.x["step"][rows]
        block[_EPOCH_COL] = batch.x["epoch"][rows]
        block[_TIME] = times
        block[_VALUE] = numbers
        self.next_ord += k
        self.points = np.concatenate([self.points, block], axis=1)
        if reduce:
            self.compact()

    def compact(self) -> None:
        """Bucket the points once there are more than :data:`RAW_POINTS` (then for good)."""
        if self.width or self.points.shape[1] > RAW_POINTS:
            self.points, self.width = _reduce(self.points, max(self.width, 1))

    def append(self, batch: Series) -> None:
        """Fold a batch's series (rows written after every row of this one, every point kept) into this one."""
        points = batch.points.copy()
        points[_ORD] += self.next_ord
        final_key = batch.final_key
        self.count += batch.count
        self.first_key = min(self.first_key, batch.first_key)
        for axis in X_AXES:
            self.n[axis] += batch.n[axis]
        self.odd |= batch.odd
        for axis in self.ints:
            self.ints[axis] = self.ints[axis] and batch.ints[axis]
        self.m_count += batch.m_count
        if batch.min is not None and (self.min is None or batch.min < self.min):
            self.min = batch.min
        if batch.max is not None and (self.max is None or batch.max > self.max):
            self.max = batch.max
        if batch.final is not None and final_key >= self.final_key:
            self.final, self.final_key = batch.final, final_key
        self.next_ord += batch.next_ord
        self.points = np.concatenate([self.points, points], axis=1)
        self.compact()

    # -------------------------------------------------------------- reading
    def merge(self, other: Series) -> None:
        """Add another writer's share of the same (attempt, metric)."""
        self.count += other.count
        self.first_key = min(self.first_key, other.first_key)
        for axis in X_AXES:
            self.n[axis] += other.n[axis]
        self.odd |= other.odd
        for axis in self.ints:
            self.ints[axis] = self.ints[axis] and other.ints[axis]
        self.m_count += other.m_count
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        if other.final is not None and other.final_key >= self.final_key:
            self.final, self.final_key = other.final, other.final_key
        self.bucketed = self.bucketed or bool(self.width) or bool(other.width) or other.bucketed
        self.points = np.concatenate([self.points, other.points], axis=1)

    def curve(self, x: str, max_points: int) -> tuple[list[Any], list[float]] | None:
        """The points to draw against ``x``, sorted by it as the store sorts rows (ties: newest row
        first, oldest first for time), or None when only the rows can answer exactly: an x value that
        is not a number, or a bucketed digest of a series short enough to be drawn whole."""
        n = self.n[x]
        if x in self.odd or (self.bucketed or self.width) and (n <= max_points or n != self.count):
            return None
        column = self.points[_X_COLUMN[x]]
        present = ~np.isnan(column)
        chosen = self.points[:, present]
        if not (self.bucketed or self.width) and chosen.shape[1] != n:
            return None  # e.g. a NaN step: only the rows know where the store sorts it
        ordinals = chosen[_ORD] if x == "time" else -chosen[_ORD]
        order = np.lexsort((ordinals, chosen[_X_COLUMN[x]]))
        chosen = chosen[:, order]
        if x == "time":
            xs: list[Any] = [_EPOCH + dt.timedelta(milliseconds=int(v)) for v in chosen[_TIME]]
        elif self.ints[x]:
            xs = [int(v) for v in chosen[_X_COLUMN[x]]]
        else:
            xs = chosen[_X_COLUMN[x]].tolist()
        return xs, chosen[_VALUE].tolist()

    # -------------------------------------------------------------- storage
    def to_doc(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "count": self.count, "n": dict(self.n), "odd": sorted(self.odd),
                "ints": dict(self.ints), "m_count": self.m_count, "min": self.min, "max": self.max,
                "final": self.final, "final_key": list(self.final_key), "first_key": list(self.first_key), "width": self.width,
                "next_ord": self.next_ord,
                "points": Binary(np.ascontiguousarray(self.points, dtype="<f8").tobytes())}

    @classmethod
    def from_doc(cls, metric: str, doc: Mapping[str, Any]) -> Series:
        """A series from its stored form; :class:`ValueError` when it is not one of ours."""
        s = cls(doc.get("attempt"), metric)
        s.count, s.m_count = _int(doc["count"]), _int(doc["m_count"])
        n, ints = doc["n"], doc["ints"]
        s.n = {axis: _int(n[axis]) for axis in X_AXES}
        s.ints = {axis: bool(ints[axis]) for axis in s.ints}
        s.odd = {str(a) for a in doc["odd"] if a in X_AXES}
        for name in ("min", "max", "final"):
            value = doc.get(name)
            if value is not None and not _number(value):
                raise ValueError(f"{name} is not a number")
            setattr(s, name, value)
        key = doc["final_key"]
        s.final_key = (float(key[0]), str(key[1]))
        key = doc["first_key"]
        s.first_key = (float(key[0]), float(key[1]))
        s.width, s.next_ord = _int(doc["width"]), _int(doc["next_ord"])
        raw = doc["points"]
        if not isinstance(raw, bytes) or len(raw) % (8 * _COLUMNS):
            raise ValueError("points are not float64 columns")
        s.points = np.frombuffer(raw, dtype="<f8").reshape(_COLUMNS, -1).copy()
        return s


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a count, got {value!r}")
    return value


def _reduce(points: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """Keep, per bucket of ``width`` consecutive rows (by ordinal), its first, last, lowest and highest
    point; double the width until there are at most :data:`BUCKETS` buckets."""
    ordinal = points[_ORD]
    while True:
        bucket = np.floor_divide(ordinal, width)
        if np.unique(bucket).size <= BUCKETS:
            break
        width *= 2
    value = points[_VALUE]
    low = np.where(np.isnan(value), np.inf, value)
    high = np.where(np.isnan(value), -np.inf, -value)
    keep = []
    for key in (ordinal, -ordinal, low, high):  # first, last, lowest, highest of each bucket
        order = np.lexsort((key, bucket))
        sorted_buckets = bucket[order]
        starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
        keep.append(order[starts])
    chosen = np.unique(np.concatenate(keep))
    chosen = chosen[np.argsort(ordinal[chosen], kind="stable")]
    return points[:, chosen], width


class _Batch:
    """The x axes of a batch of rows, as arrays: values (NaN where absent or not a number), which are
    present, which are not numbers, which are ints; the rows' times (ms) and ids."""

    def __init__(self, documents: Sequence[Mapping[str, Any]]) -> None:
        n = len(documents)
        self.x: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}
        self.odd: dict[str, np.ndarray] = {}
        self.ints: dict[str, np.ndarray] = {}
        for axis in ("step", "epoch"):
            values: list[Any] = [d.get(axis) for d in documents]
            kinds = [type(v) for v in values]
            if all(k is int for k in kinds):  # the common case, fast
                self.x[axis] = np.asarray(values, dtype=float) if n else np.empty(0)
                self.present[axis] = np.ones(n, dtype=bool)
                self.odd[axis] = np.zeros(n, dtype=bool)
                self.ints[axis] = np.ones(n, dtype=bool)
                continue
            self.present[axis] = np.array([v is not None for v in values], dtype=bool)
            number = np.array([_number(v) for v in values], dtype=bool)
            self.odd[axis] = self.present[axis] & ~number
            self.ints[axis] = np.array([k is int or (k is not bool and isinstance(v, int))
                                        for k, v in zip(kinds, values)], dtype=bool)
            self.x[axis] = np.array([float(v) if ok else math.nan for v, ok in zip(values, number.tolist())],
                                    dtype=float)
        times: list[Any] = [d.get("time") for d in documents]
        self.time: np.ndarray
        if n and all(type(t) is dt.datetime and t.tzinfo is not None for t in times):  # the common case, fast
            self.present["time"] = np.ones(n, dtype=bool)
            self.time = np.round(np.array([t.timestamp() for t in times], dtype=np.float64) * 1000)
        else:
            self.present["time"] = np.array([t is not None for t in times], dtype=bool)
            self.time = np.array([_ms(t) for t in times], dtype=float)
        self.odd["time"] = self.present["time"] & np.isnan(self.time)
        self.ids = [d.get("_id") for d in documents]


# ---------------------------------------------------------------------------- a run's digest of one kind
class Digest:
    """Every (attempt, metric) series of one run and log kind, and its row count per attempt."""

    def __init__(self, reduce: bool = True) -> None:
        self.rows: dict[Any, int] = {}
        self.series: dict[tuple[Any, str], Series] = {}
        self.reduce = reduce  # False: a batch, every point kept until appended to a stored digest

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def metrics(self) -> list[str]:
        """The metrics logged (numeric fields, NaN included), sorted."""
        return sorted({m for (_, m), s in self.series.items() if s.count})

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric, over every attempt: ``final`` (newest by time), ``min``, ``max``, ``count`` of
        non-NaN values (what :func:`tensorhub.runs.find_runs` reports), in the order first logged."""
        merged: dict[str, Series] = {}
        for (_, metric), s in sorted(self.series.items(), key=lambda item: item[1].first_key):
            if s.m_count:
                if metric not in merged:
                    merged[metric] = Series(None, metric)
                merged[metric].merge(s)
        ordered = sorted(merged.items(), key=lambda item: item[1].first_key)
        return {m: {"final": s.final, "min": s.min, "max": s.max, "count": s.m_count} for m, s in ordered}

    def add_rows(self, documents: Sequence[Mapping[str, Any]]) -> None:
        """Fold stored log rows (of this run and kind, in their order of writing)."""
        batch = _Batch(documents)
        # rows with the same attempt and fields (a batch's usual shape) are read column by column
        shapes: dict[tuple[Any, tuple[str, ...]], list[int]] = {}
        for i, doc in enumerate(documents):
            shapes.setdefault((doc.get("attempt"), tuple(doc)), []).append(i)
        grouped: dict[tuple[Any, str], tuple[list[int], list[Any]]] = {}
        firsts: dict[tuple[Any, str], tuple[int, int]] = {}  # (first row, position in it)
        for (attempt, fields), rows in shapes.items():
            self.rows[attempt] = self.rows.get(attempt, 0) + len(rows)
            for position, name in enumerate(fields):
                if name in NOT_METRICS:
                    continue
                column = [documents[i][name] for i in rows]
                kinds = set(map(type, column))
                if kinds <= {int, float}:
                    chosen, values = rows, column
                else:
                    pairs = [(i, v) for i, v in zip(rows, column) if _number(v)]
                    if not pairs:
                        continue
                    chosen, values = [i for i, _ in pairs], [v for _, v in pairs]
                key = (attempt, name)
                if key not in grouped:
                    grouped[key] = ([], [])
                    firsts[key] = (chosen[0], position)
                else:
                    firsts[key] = min(firsts[key], (chosen[0], position))
                grouped[key][0].extend(chosen)
                grouped[key][1].extend(values)
        for key, (rows, values) in grouped.items():
            if len(shapes) > 1:  # rows of several shapes: back in the order of writing
                order = sorted(range(len(rows)), key=rows.__getitem__)
                rows, values = [rows[j] for j in order], [values[j] for j in order]
            if key not in self.series:
                self.series[key] = Series(*key)
            self.series[key].add(batch, np.asarray(rows, dtype=np.int64), values, reduce=self.reduce,
                                 position=firsts[key][1])

    def merge(self, other: Digest) -> None:
        for attempt, n in other.rows.items():
            self.rows[attempt] = self.rows.get(attempt, 0) + n
        for key, s in other.series.items():
            if key in self.series:
                self.series[key].merge(s)
            else:
                mine = self.series[key] = Series(*key)
                mine.merge(s)


# ---------------------------------------------------------------------------- parts in the store
def _part_docs(metric: str | None, series: Iterable[Series] = (), rows: Mapping[Any, int] | None = None
               ) -> dict[str, Any]:
    if metric is None:
        return {"rows": [{"attempt": a, "rows": n} for a, n in (rows or {}).items()]}
    return {"series": [s.to_doc() for s in series]}


def _read_part(doc: Mapping[str, Any], into: Digest) -> None:
    """Add one stored part to ``into``; :class:`ValueError` (and friends) when it is not one of ours."""
    metric = doc.get("metric")
    if metric is None:
        for entry in doc["rows"]:
            into.rows[entry.get("attempt")] = into.rows.get(entry.get("attempt"), 0) + _int(entry["rows"])
        return
    if not isinstance(metric, str):
        raise ValueError("metric is not a name")
    for entry in doc["series"]:
        s = Series.from_doc(metric, entry)
        key = (s.attempt, metric)
        if key in into.series:
            into.series[key].merge(s)
        else:
            mine = into.series[key] = Series(*key)
            mine.merge(s)


def _since(records: Records) -> dt.datetime | None:
    """The project's marker: runs created at or after it have every row in their digest (None: no marker)."""
    key = (records.store_key, records.project_name)
    cached = _since_cache.get(key)
    if cached is not None:
        return cached
    found = records.find(COLLECTION, {"_id": _derived_id(records.project_name, "since")})
    values = [d["since"] for d in found if isinstance(d.get("since"), dt.datetime)]
    if not values:
        return None
    since = max(values)  # two first writers at once (S3 keeps both): the later is the safe one
    _since_cache[key] = since
    return since


def before_write(records: Records, collections: Sequence[str]) -> None:
    """Called before log rows of a run are inserted: write the project's ``since`` marker if it has none
    (the epoch when the project has no log row yet, else now)."""
    if _since(records) is not None:
        return
    counts = 0
    for collection in collections:  # grouped counts: in SQL on file://, a $group on MongoDB
        counts += sum(n for (project, *_), n in records.count_every_project(collection).items()
                      if project == records.project_name)
    since = _EPOCH if counts == 0 else utcnow()
    record = records.new_record({}, (), "log digest", own={"_id": _derived_id(records.project_name, "since"),
                                                           "since": since})
    try:
        records.insert_many(COLLECTION, [record])
    except ConflictError:  # another process wrote it first (a duplicate _id)
        pass
    _since_cache.pop((records.store_key, records.project_name), None)


def record_batch(records: Records, kind: str, documents: Sequence[Mapping[str, Any]]) -> None:
    """Fold a batch of log rows just written into the digests of their runs (rows without a run are skipped).

    Never raises for the digest's sake: the rows are written; a digest that could not be updated
    is marked stale (then read from the rows), and a warning says so.
    """
    by_run: dict[ObjectId, list[Mapping[str, Any]]] = {}
    for doc in documents:
        task_id = doc.get("task_id")
        if isinstance(task_id, ObjectId):
            by_run.setdefault(task_id, []).append(doc)
    for task_id, rows in by_run.items():
        batch = Digest(reduce=False)
        batch.add_rows(rows)
        try:
            _fold(records, kind, task_id, batch)
        except (TensorHubError, OSError) as exc:
            log.warning("the log digest of run %s (%s) could not be updated (%s: %s); it is marked stale and "
                        "its charts read the rows", task_id, kind, type(exc).__name__, exc)
            try:
                mark_stale(records, kind, [task_id])
            except (TensorHubError, OSError):
                log.error("run %s: its log digest (%s) is behind its rows and could not be marked stale",
                          task_id, kind, exc_info=True)


def _fold(records: Records, kind: str, task_id: ObjectId, batch: Digest) -> None:
    writer = _writer_token()
    metrics: dict[str | None, list[Series]] = {None: []}
    for (_, name), s in batch.series.items():
        metrics.setdefault(name, []).append(s)
    for metric, added in metrics.items():
        part_id = _derived_id(records.project_name, task_id, kind, "shard", writer, _name(metric))
        with _lock(part_id):
            _fold_part(records, kind, task_id, part_id, writer, metric, added, batch.rows)


def _fold_part(records: Records, kind: str, task_id: ObjectId, part_id: ObjectId, writer: str,
               metric: str | None, added: Sequence[Series], rows: Mapping[Any, int]) -> None:
    """One part's optimistic read-modify-write (or its creation)."""
    for _ in range(RETRIES):
        found = records.find(COLLECTION, {"_id": part_id})
        if not found:
            created = []
            for s in added:
                mine = Series(s.attempt, s.metric)
                mine.append(s)
                created.append(mine)
            fields = {"_id": part_id, "run": str(task_id), "task_id": task_id, "kind": kind, "part": "shard",
                      "writer": writer,
                      "metric": metric, "version": 1, **_part_docs(metric, created, rows)}
            try:
                records.insert_many(COLLECTION, [records.new_record({}, (), "log digest", own=fields)])
            except ConflictError:  # created meanwhile (another hub of this process): read it and fold
                continue
            return
        doc = found[0]
        try:
            if metric is None:
                counts: dict[Any, int] = {}
                for entry in doc["rows"]:
                    counts[entry.get("attempt")] = counts.get(entry.get("attempt"), 0) + _int(entry["rows"])
                for attempt, n in rows.items():
                    counts[attempt] = counts.get(attempt, 0) + n
                change = _part_docs(None, rows=counts)
            else:
                stored = {}
                for entry in doc["series"]:
                    one = Series.from_doc(metric, entry)
                    stored[one.attempt] = one
                for s in added:
                    if s.attempt not in stored:
                        stored[s.attempt] = Series(s.attempt, metric)
                    stored[s.attempt].append(s)
                change = _part_docs(metric, stored.values())
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConflictError(f"log digest part {part_id} is not readable ({exc})") from exc
        version = doc.get("version")
        if records.update_many(COLLECTION, {"_id": part_id, "version": version},
                               {"$set": {**change, "time": utcnow()}, "$inc": {"version": 1}}):
            return
    raise ConflictError(f"log digest part {part_id}: {RETRIES} concurrent updates in a row")


def mark_stale(records: Records, kind: str, task_ids: Iterable[ObjectId]) -> None:
    """The digests of these runs (of ``kind``) no longer describe their rows (rows are being deleted)."""
    documents = [records.new_record({}, (), "log digest", own={"run": str(t), "task_id": t, "kind": kind,
                                                                "part": "stale"})
                 for t in dict.fromkeys(task_ids) if isinstance(t, ObjectId)]
    if documents:
        records.insert_many(COLLECTION, documents)


# ---------------------------------------------------------------------------- reading
def read(records: Records, kind: str, tasks: Sequence[Mapping[str, Any]], metric: str | None = None
         ) -> dict[ObjectId, tuple[Digest, bool]]:
    """Per task record, its run's digest of ``kind`` and whether it was stored (else it was just computed
    from the rows: a run created before the project's marker, a stale digest). An ended run's digest
    computed from its rows is stored (``base``), so the rows are read once. ``metric``: only that
    metric's series are needed."""
    out: dict[ObjectId, tuple[Digest, bool]] = {}
    if not tasks:
        return out
    since = _since(records)
    by_run: dict[str, list[Mapping[str, Any]]] = {str(t["_id"]): [] for t in tasks}
    runs = list(by_run)
    for start in range(0, len(runs), QUERY_RUNS):
        query: dict[str, Any] = {"run": {"$in": runs[start:start + QUERY_RUNS]}, "kind": kind}
        if metric is not None:  # that metric's parts, the row counts and the stale marks (which have no metric)
            query["metric"] = {"$in": [metric, None]}
        for doc in records.find(COLLECTION, query):
            if doc.get("run") in by_run:
                by_run[doc["run"]].append(doc)
    missing = []
    for task in tasks:
        digest = _assemble(by_run[str(task["_id"])], task, since)
        if digest is None:
            missing.append(task)
        else:
            out[task["_id"]] = (digest, True)
    if missing:
        out.update({t: (d, False) for t, d in from_rows(records, kind, missing).items()})
    return out


def from_rows(records: Records, kind: str, tasks: Sequence[Mapping[str, Any]]) -> dict[ObjectId, Digest]:
    """The digests of these runs computed from their rows (one query); those of ended runs are stored."""
    digests = {t["_id"]: Digest() for t in tasks}
    grouped: dict[ObjectId, list[Mapping[str, Any]]] = {t: [] for t in digests}
    for row in records.find(rows_collection(kind), {"task_id": {"$in": list(digests)}}, sort=[("time", 1)]):
        if row.get("task_id") in grouped:
            grouped[row["task_id"]].append(row)
    for task in tasks:
        digests[task["_id"]].add_rows(grouped[task["_id"]])
        if task.get("status") in ENDED:  # no writer left: what the rows say stays true
            _store_base(records, kind, task["_id"], digests[task["_id"]])
    return digests


def _assemble(parts: Sequence[Mapping[str, Any]], task: Mapping[str, Any], since: dt.datetime | None
              ) -> Digest | None:
    if any(p.get("part") == "stale" for p in parts):
        return None
    bases = [p for p in parts if p.get("part") == "base" and p.get("metric") is None]
    rebuild_id = min((str(p.get("rebuild")) for p in bases), default=None)
    created = task.get("time")
    trusted = rebuild_id is not None or (
        since is not None and isinstance(created, dt.datetime) and created >= since)
    if not trusted:
        return None
    digest = Digest()
    seen_base_rows = False
    for part in parts:
        kind = part.get("part")
        if kind == "base":
            if str(part.get("rebuild")) != rebuild_id:
                continue  # a rebuild that lost to another, or left half-written
            if part.get("metric") is None:
                if seen_base_rows:
                    continue  # the same base twice (S3 keeps a repeated insert)
                seen_base_rows = True
        elif kind != "shard":
            continue
        try:
            _read_part(part, digest)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("ignoring the log digest of run %s: part %s is not readable (%s); reading its rows",
                        task.get("_id"), part.get("_id"), exc)
            return None
    return digest


def _store_base(records: Records, kind: str, task_id: ObjectId, digest: Digest) -> None:
    """Store an ended run's digest computed from its rows as its ``base``, replacing its parts."""
    rebuild = secrets.token_hex(8)
    try:
        records.delete(COLLECTION, {"run": str(task_id), "kind": kind})
        metrics: dict[str, list[Series]] = {}
        for (_, metric), s in digest.series.items():
            metrics.setdefault(metric, []).append(s)
        common = {"run": str(task_id), "task_id": task_id, "kind": kind, "part": "base", "rebuild": rebuild,
                  "version": 1}
        documents = [records.new_record({}, (), "log digest", own={
            **common, "_id": _derived_id(records.project_name, task_id, kind, "base", rebuild, _name(metric)),
            "metric": metric, **_part_docs(metric, series)}) for metric, series in metrics.items()]
        if documents:
            records.insert_many(COLLECTION, documents)
        # the row counts last: a base is used only once they are there
        records.insert_many(COLLECTION, [records.new_record({}, (), "log digest", own={
            **common, "_id": _derived_id(records.project_name, task_id, kind, "base", rebuild, _name(None)),
            "metric": None, **_part_docs(None, rows=digest.rows)})])
        log.info("stored the log digest of run %s (%s), computed from %d rows", task_id, kind, digest.total_rows)
    except (TensorHubError, OSError) as exc:  # a reader still gets its answer
        log.warning("could not store the log digest of run %s (%s) computed from its rows: %s", task_id, kind, exc)
