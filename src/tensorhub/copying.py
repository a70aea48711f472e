"""Copy projects from one store to another (``hub.copy_to``, ``tensorhub copy``), records kept as stored.

A copy works at the record layer, not through the public ``save_*`` calls (which refuse the fields
the repository owns): every record arrives with its ``_id``, ``project_name``, ``time``, tags,
lineage (``task_id``/``attempt``/``dataset_id``) and, for tasks, its whole history (``status``,
``attempts``, ``errors``, ``result``, timestamps, lease). What it guarantees:

* **blobs first, record last**: a record is written only once every chunk and blob it names is in
  the destination, so a copy killed at any point leaves chunks without records (which
  ``tensorhub gc`` collects), never a record whose bytes are missing;
* **resumable**: records are matched by ``_id``; one already in the destination and equal is
  skipped, and chunks are content-addressed (``chunks/<BLAKE3>``), so a chunk the destination has is
  not copied again (it is freshened instead, so a garbage collection running meanwhile keeps it).
  A second run after an interruption copies only what is missing;
* **conflicts**: a record the destination has with the same ``_id`` but different content (a task
  that ran on since the last copy, a dataset appended to) is reported and skipped, unless
  ``overwrite`` (``--overwrite``): then its blobs are copied and the destination record is replaced
  by the source's (chunks only the old version used are freed);
* **nothing from the source runs code**: documents are BSON, blobs are copied as bytes (never
  unpickled); chunk keys are only ever ``chunks/<digest>`` of well-formed digests
  (:func:`~tensorhub.records.chunk_digests`), each verified against its bytes on the way; a record's
  own blobs are listed under its computed prefix (:func:`~tensorhub.records.blob_prefix`), never
  under a path read from a field.

Tasks are copied as stored. A ``running`` task keeps its ``owner``, ``claim_id`` and
``lease_expires_at``: no runner of the destination holds it, so once the lease runs out the
destination's next claim treats it as a runner that died (re-queued with an attempt counted, or
``failed`` when none is left), while the source's runner goes on writing to the source only.
Copy a queue once it is idle (or cancel its running tasks first) to avoid that; a later copy
with ``overwrite`` brings the final outcome over.

``since`` selects records by their ``time`` (a dataset's or model's save time, a task's creation,
a log row's time): a task created before it is not copied even if it finished after.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from bson import ObjectId

from tensorhub import datasets as _datasets
from tensorhub import logs as _logs
from tensorhub import study as _study
from tensorhub import tasks as _tasks
from tensorhub.chunks import CHUNK_PREFIX, chunk_key, digest, dtype_from
from tensorhub.errors import (
    CorruptDataError,
    DuplicateKeyError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NotFoundError,
)
from tensorhub.models._repository import COLLECTION as MODELS
from tensorhub.progress import progress_bar
from tensorhub.records import BLOB_PREFIX_FIELD, REF_COLLECTIONS, REFS_FIELD, Records, blob_prefix, chunk_digests

log = logging.getLogger(__name__)

#: record kinds and their collections, in copy order: what lineage points at comes first (a task before
#: the models and logs it made, a dataset before the models trained on it)
KINDS: dict[str, tuple[str, ...]] = {
    "tasks": (_tasks.COLLECTION, _study.COLLECTION),  # a study's record with its trials (tasks)
    "datasets": (_datasets.COLLECTION,),
    "models": (MODELS,),
    "logs": tuple(_logs.COLLECTIONS.values()),
}
#: parallel blob copies (I/O bound: network or disk; BLAKE3 releases the GIL)
DEFAULT_THREADS = 8
#: records looked up in the destination, and written, per batch
BATCH = 500
#: a record's own blob names (under its prefix): what tensorhub writes (``pickle-0.bin``, ``state.safetensors``)
_BLOB_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


@dataclass
class Counts:
    """What a copy did (or, dry, would do) for one project and kind."""

    records: int = 0  #: records copied (dry run: to copy)
    present: int = 0  #: records the destination already had, equal: skipped
    conflicts: int = 0  #: records the destination has with the same ``_id`` and other content: skipped
    overwritten: int = 0  #: of ``records``, those that replaced a different destination record (``overwrite``)
    errors: int = 0  #: records not copied because the source lacks or has damaged bytes of theirs
    chunks: int = 0  #: chunks copied (dry run: to copy)
    chunks_present: int = 0  #: chunks the destination already had
    blobs: int = 0  #: records' own blobs copied (pickles...)
    bytes: int = 0  #: bytes copied (dry run: the array bytes of the chunks to copy, an upper bound)

    def add(self, other: Counts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class CopyReport:
    """The outcome of :func:`copy_store`: counts per ``(project, kind)``, and the records skipped and why."""

    dry_run: bool = False
    counts: dict[tuple[str, str], Counts] = field(default_factory=dict)
    #: ``"<project>/<collection>/<_id>"`` of records skipped because the destination has another version
    conflicts: list[str] = field(default_factory=list)
    #: one line per record not copied because of its source bytes
    errors: list[str] = field(default_factory=list)

    def of(self, project: str, kind: str) -> Counts:
        return self.counts.setdefault((project, kind), Counts())

    def total(self) -> Counts:
        """Every project and kind summed."""
        total = Counts()
        for counts in self.counts.values():
            total.add(counts)
        return total

    def lines(self) -> list[str]:
        """A human-readable summary: one line per project and kind, then the conflicts and errors."""
        verb = "to copy" if self.dry_run else "copied"
        out = []
        for (project, kind), c in sorted(self.counts.items()):
            if not any(asdict(c).values()):
                continue
            line = (f"{project} {kind}: {c.records} record(s) {verb}, {c.present} already there; "
                    f"{c.chunks} chunk(s) + {c.blobs} blob(s) {verb} ({_size(c.bytes)}"
                    f"{', at most' if self.dry_run else ''}), {c.chunks_present} chunk(s) already there")
            if c.overwritten:
                line += f"; {c.overwritten} overwritten"
            if c.conflicts:
                line += f"; {c.conflicts} conflict(s) skipped"
            if c.errors:
                line += f"; {c.errors} not copied (source bytes missing or damaged)"
            out.append(line)
        if not out:
            out.append("nothing to copy: no record of the selected projects and kinds")
        if self.conflicts:
            out.append(f"{len(self.conflicts)} record(s) differ in the destination and were skipped (pass "
                       f"--overwrite / overwrite=True to replace them): {', '.join(self.conflicts[:10])}"
                       + (" ..." if len(self.conflicts) > 10 else ""))
        out += self.errors
        return out

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for JSON)."""
        return {"dry_run": self.dry_run, "conflicts": list(self.conflicts), "errors": list(self.errors),
                "counts": [{"project_name": p, "kind": k, **asdict(c)} for (p, k), c in sorted(self.counts.items())]}


def _size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``3.4 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def check_kinds(kinds: str | Iterable[str] | None) -> list[str]:
    """The kinds to copy, in copy order: every kind by default; ``"datasets,models"`` or a list."""
    if kinds is None:
        return list(KINDS)
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    wanted = list(kinds)
    if not all(isinstance(k, str) for k in wanted):
        raise InvalidArgumentTypeError(f"kinds must be names among {list(KINDS)}, got {wanted!r}")
    unknown = [k for k in wanted if k not in KINDS]
    if unknown or not wanted:
        raise InvalidArgumentError(f"unknown record kind(s) {unknown or wanted!r}: kinds are {', '.join(KINDS)} "
                                   "(comma-separated on the command line)")
    return [k for k in KINDS if k in wanted]


def check_since(since: dt.datetime | str | None) -> dt.datetime | None:
    """``since`` as a timezone-aware UTC datetime (a naive one, or ISO 8601 text without offset, is UTC)."""
    if since is None:
        return None
    if isinstance(since, str):
        try:
            since = dt.datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgumentError(f"since must be an ISO 8601 date or time, e.g. 2024-05-01 or "
                                       f"2024-05-01T12:00:00+00:00, got {since!r}") from None
    if not isinstance(since, dt.datetime):
        raise InvalidArgumentTypeError(f"since must be a datetime or ISO 8601 text, got {type(since).__name__}")
    return since.replace(tzinfo=dt.timezone.utc) if since.tzinfo is None else since.astimezone(dt.timezone.utc)


def check_projects(projects: str | Iterable[str] | None) -> list[str] | None:
    if projects is None:
        return None
    names = [projects] if isinstance(projects, str) else list(projects)
    if not all(isinstance(p, str) and p for p in names):
        raise InvalidArgumentTypeError(f"projects must be project names (non-empty strings), got {names!r}")
    return list(dict.fromkeys(names))


def same(a: Any, b: Any) -> bool:
    """Whether two stored values are equal, NaN equal to NaN (log rows hold NaN losses)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):  # True == 1 in Python, not in a store
        return type(a) is type(b) and a == b
    return bool(a == b)


def _manifests(collection: str, record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = record.get("schema" if collection == _datasets.COLLECTION else "arrays") or []
    return [e for e in entries if isinstance(e, Mapping)] if isinstance(entries, list) else []


#: the most a Blosc frame adds to its input (BLOSC_MAX_OVERHEAD)
_FRAME_OVERHEAD = 16


def _chunk_sizes(collection: str, record: Mapping[str, Any]) -> dict[str, int]:
    """An upper bound of each stored chunk's size: its rows' array bytes (a whole chunk's for a padded
    last chunk, format 2) plus Blosc's frame overhead (a frame is at most its input plus 16 bytes, an
    old raw chunk its input); what a dry run reports."""
    sizes: dict[str, int] = {}
    for entry in _manifests(collection, record):
        try:
            itemsize = dtype_from(entry["dtype"], entry.get("descr")).itemsize
            shape = [int(n) for n in entry["shape"]]
            step = int(entry["chunk_rows"])
            chunks = list(entry["chunks"])
        except (KeyError, TypeError, ValueError):
            continue  # a damaged manifest: its chunks are copied (if well-formed), only not sized
        row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize if shape else itemsize
        for i, name in enumerate(chunks):
            rows = step if shape else 1  # format 2 pads the last chunk to a whole one
            if isinstance(name, str):
                sizes[name] = max(sizes.get(name, 0), max(rows, 0) * row + _FRAME_OVERHEAD)
    return sizes


def _record_chunks(collection: str, record: Mapping[str, Any]) -> list[str]:
    """Every chunk a record names, in ``blob_refs`` or its manifests, keeping only well-formed digests
    (the repository's own check): the only keys a copy derives from a record."""
    named = list(record.get(REFS_FIELD) or ()) if isinstance(record.get(REFS_FIELD), list) else []
    for entry in _manifests(collection, record):
        if isinstance(entry.get("chunks"), list):
            named += entry["chunks"]
    return chunk_digests({"_id": record.get("_id"), REFS_FIELD: list(dict.fromkeys(named))})


class _Copier:
    """Copies blobs in parallel, each key at most once per copy (chunks are shared store-wide)."""

    def __init__(self, source: Records, destination: Records, threads: int, dry_run: bool, bar: Any) -> None:
        self.src, self.dst = source.blobs, destination.blobs
        self.dry_run, self.bar = dry_run, bar
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="tensorhub-copy")
        self.jobs: dict[str, Future[tuple[bool, int]]] = {}  # key -> (copied, bytes)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, key: str, size: int = 0) -> tuple[Future[tuple[bool, int]], bool]:
        """The job that puts ``key`` in the destination, and whether this call started it."""
        job = self.jobs.get(key)
        if job is not None:
            return job, False
        job = self.pool.submit(self._copy, key, size)
        self.jobs[key] = job
        return job, True

    def _copy(self, key: str, size: int) -> tuple[bool, int]:
        chunk = key.startswith(CHUNK_PREFIX)
        if self.dry_run:
            return (False, 0) if self.dst.exists(key) else (True, size)
        # a chunk the destination has is kept young for a garbage collection running there meanwhile
        if self.dst.freshen(key) if chunk else self.dst.exists(key):
            return False, 0
        data = self.src.get(key)  # bytes, never decoded: nothing in them runs
        if chunk and digest(data) != key[len(CHUNK_PREFIX):]:
            raise CorruptDataError(f"chunk {key[len(CHUNK_PREFIX):][:12]}... of the source is altered (its bytes "
                                   "do not match its digest)")
        self.dst.put(key, data)
        self.bar.update(len(data))
        return True, len(data)


def list_projects(source: Records, kinds: Sequence[str], query: Mapping[str, Any]) -> list[str]:
    """Every project of the source store with records of ``kinds`` (matching ``query``)."""
    names: set[str] = set()
    for kind in kinds:
        for collection in KINDS[kind]:
            names.update(str(key[0]) for key in source.count_every_project(collection, query=query))
    return sorted(names)


def copy_store(source: Records, destination: Records, projects: str | Iterable[str] | None = None,
               kinds: str | Iterable[str] | None = None, since: dt.datetime | str | None = None,
               dry_run: bool = False, overwrite: bool = False, threads: int = DEFAULT_THREADS) -> CopyReport:
    """Copy ``projects`` (default: every project of the source store) from ``source``'s stores to
    ``destination``'s, records kept as stored; see the module docstring for the guarantees."""
    kinds = check_kinds(kinds)
    when = check_since(since)
    names = check_projects(projects)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"threads must be a positive int, got {threads!r}")
    query: dict[str, Any] = {"time": {"$gte": when}} if when is not None else {}
    if names is None:
        names = list_projects(source, kinds, query)
    report = CopyReport(dry_run=dry_run)
    with progress_bar(desc="copying", unit="B", unit_scale=True, unit_divisor=1024) as bar:
        copier = _Copier(source, destination, threads, dry_run, bar)
        try:
            for project in names:
                src, dst = source.for_project(project), destination.for_project(project)
                for kind in kinds:
                    counts = report.of(project, kind)
                    for collection in KINDS[kind]:
                        _copy_collection(src, dst, collection, query, copier, counts, report, overwrite)
        finally:
            copier.close()
    log.info("copy %s -> %s: %s", source.store_key, destination.store_key, "; ".join(report.lines()))
    return report


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _copy_collection(src: Records, dst: Records, collection: str, query: Mapping[str, Any], copier: _Copier,
                     counts: Counts, report: CopyReport, overwrite: bool) -> None:
    project = src.project_name
    for batch in _batches(src.find(collection, query, sort=[("_id", 1)]), BATCH):
        ids = [r["_id"] for r in batch if isinstance(r.get("_id"), ObjectId)]
        existing = {r["_id"]: r for r in dst.find(collection, {"_id": {"$in": ids}})} if ids else {}
        todo: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for record in batch:
            if not isinstance(record.get("_id"), ObjectId):
                counts.errors += 1
                report.errors.append(f"{project}/{collection}: a record with the id {record.get('_id')!r} (not an "
                                     "ObjectId, so not written by tensorhub) was not copied")
                continue
            old = existing.get(record["_id"])
            if old is None:
                todo.append((record, None))
            elif same(old, record):
                counts.present += 1
            elif overwrite:
                todo.append((record, old))
            else:
                counts.conflicts += 1
                report.conflicts.append(f"{project}/{collection}/{record['_id']}")
        if collection not in REF_COLLECTIONS:  # no blobs: the batch in one write
            _write_records(dst, collection, todo, counts, report, copier.dry_run)
            continue
        # each record as soon as its own blobs are in place: an interruption loses at most the records in flight
        for ready in _copy_blobs(src, collection, todo, copier, counts, report):
            _write_records(dst, collection, [ready], counts, report, copier.dry_run)


def _copy_blobs(src: Records, collection: str, todo: list[tuple[dict[str, Any], dict[str, Any] | None]],
                copier: _Copier, counts: Counts, report: CopyReport) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Put every blob of the records in ``todo`` in the destination (all in parallel); yield, in order,
    each record whose blobs are all there as soon as they are, and report the others."""
    plans: list[tuple[dict[str, Any], dict[str, Any] | None, list[tuple[str, Future[tuple[bool, int]], bool]]]] = []
    for record, old in todo:
        sizes = _chunk_sizes(collection, record)
        keys = [(chunk_key(d), sizes.get(d, 0)) for d in _record_chunks(collection, record)]
        if record.get(BLOB_PREFIX_FIELD):  # only a "has blobs" flag: where they are is computed from the id
            prefix = blob_prefix(collection, record["_id"])
            for key in sorted(src.blobs.list(prefix)):
                name = key[len(prefix):]
                if not key.startswith(prefix) or not _BLOB_NAME.fullmatch(name) or ".." in name.split("/"):
                    log.warning("blob %r of record %s is not a name tensorhub writes; not copied", key, record["_id"])
                    continue
                keys.append((key, 0))
        jobs = [(key, *copier.submit(key, size)) for key, size in keys]
        plans.append((record, old, jobs))
    for record, old, jobs in plans:
        failed = None
        for key, job, first in jobs:
            try:
                copied, nbytes = job.result()
            except (NotFoundError, CorruptDataError) as exc:
                failed = failed or f"{key}: {exc}"
                continue
            if not first:
                continue  # counted for the record that asked first
            if key.startswith(CHUNK_PREFIX):
                counts.chunks += copied
                counts.chunks_present += not copied
            else:
                counts.blobs += copied
            counts.bytes += nbytes
        if failed:
            counts.errors += 1
            report.errors.append(f"{src.project_name}/{collection}/{record['_id']} not copied: the source lacks or "
                                 f"has damaged bytes of it ({failed}); it would not load there either")
        else:
            yield record, old


def _write_records(dst: Records, collection: str, ready: list[tuple[dict[str, Any], dict[str, Any] | None]],
                   counts: Counts, report: CopyReport, dry_run: bool) -> None:
    """Write records whose blobs are in place: new ones in one batch, replaced ones one by one."""
    counts.records += len(ready)
    counts.overwritten += sum(1 for _, old in ready if old is not None)
    if dry_run:
        return
    new = [record for record, old in ready if old is None]
    try:
        if new:
            dst.insert_many(collection, new)
    except DuplicateKeyError:  # the id exists in another project of the destination: find which, keep the rest
        for record in new:
            try:
                dst.insert_many(collection, [record])
            except DuplicateKeyError:
                counts.records -= 1
                counts.conflicts += 1
                report.conflicts.append(f"{dst.project_name}/{collection}/{record['_id']} (this id is taken in "
                                        "another project of the destination)")
    for record, old in ready:
        if old is None:
            continue
        fields = {k: v for k, v in record.items() if k not in ("_id", "project_name")}
        update: dict[str, Any] = {"$set": fields}
        gone = {k: "" for k in old if k not in record}
        if gone:
            update["$unset"] = gone
        dst.update_many(collection, {"_id": record["_id"]}, update)
        if collection in REF_COLLECTIONS:  # chunks only the replaced version used
            dst.release_chunks(set(chunk_digests(old)) - set(chunk_digests(record)))
