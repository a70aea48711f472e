"""Import a database written by TensorLayer's ``tl.db.TensorHub`` (``tensorlayer/db.py``).

TensorLayer keeps, per project (``project_name``), the collections ``Dataset`` (``dataset_name``,
the user's fields, ``time``, ``dataset_id``: a GridFS file of bucket ``datasetFilesystem``),
``Model`` (``model_name``, ``architecture``: its own graph description, ``params_id``: a GridFS
file of bucket ``modelfs``), ``TrainLog``/``ValidLog``/``TestLog`` (the user's fields and
``time``) and ``Task`` (``task_name``, ``script`` bytes, ``hyper_parameters``,
``saved_result_keys``, ``status``, ``result``). Datasets and parameters are pickles
(``_serialization``: ``pickle.dumps(..., HIGHEST_PROTOCOL)``, protocol 2 in older versions).

Everything goes through the public :class:`~tensorhub.TensorHub` API into the tensorhub project
of the same name: datasets with ``save_dataset``, parameter lists with ``save_model`` (the
``params`` adapter: TensorLayer's graph architecture cannot be rebuilt here, so it is kept as
JSON text in ``tensorlayer_architecture`` with a ``tensorlayer_note``), logs with
``save_*_logs``, tasks with ``create_task`` (a finished one is then claimed and finished with its
result through :attr:`TensorHub.task_queue`; a ``running`` one, whose outcome is unknown, is
recorded ``failed``; a pending one stays pending). Original save times are kept (the internal
:func:`tensorhub.records.keeping_time`), and so are the user's fields; a field whose name
tensorhub owns or takes as an option is stored as ``tensorlayer_<name>``, and the TensorLayer
``_id`` as ``tensorlayer_id``, which also makes a second run skip what the first imported.

Unpickling runs code named by the pickle, so nothing is unpickled unless the caller passes
``trust_pickle=True``; even then only numpy arrays and Python containers/scalars are rebuilt
(:mod:`tensorhub.importers.restricted_pickle`): any other item is reported and skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import Decimal128, ObjectId, json_util

from tensorhub.errors import ConfigurationError, SerializationError, TensorHubError
from tensorhub.hints import close_to
from tensorhub.hub import TensorHub
from tensorhub.importers.restricted_pickle import restricted_loads
from tensorhub.progress import progress_bar
from tensorhub.records import COMMON_INTERNAL_FIELDS, keeping_time
from tensorhub.redaction import redact_uri

log = logging.getLogger(__name__)

#: TensorLayer's GridFS buckets: collection -> (bucket, the record field holding the file id)
BUCKETS = {"Dataset": ("datasetFilesystem", "dataset_id"), "Model": ("modelfs", "params_id")}
#: TensorLayer's log collections -> tensorhub's log kinds
LOG_KINDS = {"TrainLog": "training", "ValidLog": "validation", "TestLog": "testing"}
COLLECTIONS = ("Dataset", "Model", "Task", *LOG_KINDS)
#: fields TensorLayer itself writes, per collection (the rest are the user's)
_TL_FIELDS = {"Dataset": {"dataset_name", "dataset_id"}, "Model": {"model_name", "params_id", "architecture"},
              "Task": {"task_name", "script", "hyper_parameters", "saved_result_keys", "status", "result"}}
#: fields this importer writes
OWN_FIELDS = frozenset({"tensorlayer_id", "tensorlayer_note", "tensorlayer_architecture", "tensorlayer_status"})
#: per collection: names a user's field may not keep (tensorhub owns them, or the save call takes them as options)
_RESERVED = {
    "Dataset": {"dataset_name", "nbytes", "pickled", "revision", "rows", "schema", "spec", "task_id", "attempt",
                "dataset", "allow_pickle", "chunk_bytes"},
    "Model": {"network", "model_name", "example_inputs", "dynamic_shapes", "allow_pickle", "dataset", "task",
              "dataset_id", "task_id", "attempt", "sess", "into", "trusted"},
    "Task": {"task_name", "script", "script_path", "hyper_parameters", "saved_result_keys", "max_attempts",
             "timeout", "priority", "retry_on_error", "status", "attempts_left", "attempts", "errors", "owner",
             "claim_id", "started_at", "lease_expires_at", "finished_at", "cancel_requested", "result", "error",
             "traceback", "exit_code", "stdout_tail", "stderr_tail", "retries_left", "run_type"},
    **{name: {"task_id", "attempt"} for name in LOG_KINDS},
}
#: the options near which a tag is refused (``hints.refuses_near_options``) per save call
_OPTIONS = {"Dataset": ("dataset", "dataset_name", "allow_pickle", "chunk_bytes"),
            "Model": ("network", "model_name", "example_inputs", "dynamic_shapes", "allow_pickle", "dataset", "task",
                      "dataset_id", "task_id"),
            "Task": ("task_name", "script", "hyper_parameters", "saved_result_keys", "max_attempts", "timeout",
                     "priority", "retry_on_error")}
ARCHITECTURE_NOTE = ("imported from TensorLayer as parameters only (a list of arrays): TensorLayer's graph "
                     "architecture cannot be rebuilt by tensorhub; it is kept as JSON text in tensorlayer_architecture")
#: log rows written per batch
LOG_BATCH = 1000
#: the longest architecture kept as JSON text in a tag (a record must stay small)
MAX_ARCHITECTURE_CHARS = 1 << 20
WHY_PICKLE = ("TensorLayer stored datasets and parameters as pickles, and unpickling runs code named by the "
              "database: pass trust_pickle=True (--trust-pickle) if you trust whoever wrote it (even then only "
              "numpy arrays and Python containers/scalars are rebuilt; anything else is skipped)")


@dataclass
class ImportReport:
    """What an import found in the TensorLayer database and what it did.

    Attributes:
        source: the TensorLayer database's URI (redacted).
        found: records per TensorLayer collection (of the selected projects).
        bucket_bytes: bytes of the GridFS files those records refer to, per bucket.
        projects: the TensorLayer projects selected (each imported into the tensorhub project of that name).
        imported: records written, per tensorhub kind (``datasets``, ``models``, ``tasks``, ``training_logs``...).
        already: records skipped because an earlier run imported them (same ``tensorlayer_id``).
        skipped: one entry per record not imported: ``collection``, ``id``, ``reason``.
        notes: what was changed on the way (renamed or dropped fields, architectures, task states).
        trusted: whether pickles were read (False: a survey only, nothing written).
    """

    source: str
    found: dict[str, int] = field(default_factory=dict)
    bucket_bytes: dict[str, int] = field(default_factory=dict)
    projects: list[str] = field(default_factory=list)
    imported: dict[str, int] = field(default_factory=dict)
    already: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trusted: bool = False

    def lines(self) -> list[str]:
        """The report as text lines (what ``tensorhub import-tensorlayer`` prints)."""
        found = ", ".join(f"{name} {count}" for name, count in self.found.items()) or "nothing"
        sizes = ", ".join(f"{name} {_size(n)}" for name, n in self.bucket_bytes.items()) or "none"
        out = [f"TensorLayer database {self.source}: projects {', '.join(self.projects) or '(none)'}",
               f"  records: {found}", f"  GridFS files: {sizes}"]
        if self.trusted:
            done = ", ".join(f"{kind} {n}" for kind, n in self.imported.items() if n) or "nothing"
            out.append(f"  imported: {done}")
            if any(self.already.values()):
                out.append("  already imported (skipped): "
                           + ", ".join(f"{kind} {n}" for kind, n in self.already.items() if n))
            out += [f"  skipped {s['collection']} {s['id']}: {s['reason']}" for s in self.skipped]
            out += [f"  note: {note}" for note in self.notes]
        return out


class ImportRefusedError(SerializationError):
    """An import that would unpickle without ``trust_pickle=True``; ``report`` lists what was found."""

    def __init__(self, message: str, report: ImportReport) -> None:
        super().__init__(message)
        self.report = report


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _connect(source_uri: str) -> tuple[Any, Any]:
    """The client and database of ``source_uri`` (a ``mongodb://`` URI naming the database)."""
    from tensorhub.backends.mongo import connect

    if not isinstance(source_uri, str) or not source_uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigurationError(f"a TensorLayer database is a mongodb:// URI (mongodb://host:port/dbname), got "
                                 f"{redact_uri(str(source_uri))}")
    client = connect(source_uri)
    database = client.get_default_database(default=None)
    if database is None:
        client.close()
        raise ConfigurationError(f"{redact_uri(source_uri)} names no database: TensorLayer's is its dbname, "
                                 "e.g. mongodb://localhost:27017/dbname")
    return client, database


def _project_filter(projects: list[str] | None) -> dict[str, Any]:
    return {"project_name": {"$in": projects}} if projects else {}


def _survey(database: Any, projects: list[str] | None, report: ImportReport) -> None:
    """Fill ``report``'s counts, bytes and projects (reads no pickle)."""
    query = _project_filter(projects)
    names: set[str] = set()
    for collection in COLLECTIONS:
        report.found[collection] = database[collection].count_documents(query)
        if report.found[collection]:
            names.update(p for p in database[collection].distinct("project_name", query) if isinstance(p, str))
    for collection, (bucket, id_field) in BUCKETS.items():
        ids = [i for i in database[collection].distinct(id_field, query) if i is not None]
        total = 0
        for start in range(0, len(ids), 1000):
            for doc in database[f"{bucket}.files"].find({"_id": {"$in": ids[start:start + 1000]}}, {"length": 1}):
                total += int(doc.get("length") or 0)
        report.bucket_bytes[bucket] = total
    report.projects = sorted(names)


def survey_tensorlayer(source_uri: str, project: str | Iterable[str] | None = None) -> ImportReport:
    """List what a TensorLayer database holds (records per collection, GridFS bytes), unpickling nothing.

    Args:
        source_uri: the TensorLayer database, ``mongodb://host:port/dbname``.
        project: a TensorLayer project name (or several); None: every project.
    """
    client, database = _connect(source_uri)
    try:
        report = ImportReport(source=redact_uri(source_uri))
        _survey(database, _projects(project), report)
        return report
    finally:
        client.close()


def _projects(project: str | Iterable[str] | None) -> list[str] | None:
    if project is None:
        return None
    chosen = [project] if isinstance(project, str) else list(project)
    return chosen or None


def import_tensorlayer(source_uri: str, hub: TensorHub | str, project: str | Iterable[str] | None = None,
                       trust_pickle: bool = False) -> ImportReport:
    """Import a TensorLayer database (datasets, model parameters, logs, tasks) into ``hub``'s store.

    Each TensorLayer project goes into the tensorhub project of the same name, on ``hub``'s
    store (records without a ``project_name`` into ``hub``'s project). Times and the user's
    fields are kept; a second run skips what an earlier one imported.

    Args:
        source_uri: the TensorLayer database, ``mongodb://host:port/dbname``.
        hub: the destination: a :class:`~tensorhub.TensorHub` or a store URI.
        project: a TensorLayer project name (or several); None: every project.
        trust_pickle: read the pickled datasets and parameters (restricted to numpy arrays and
            Python containers/scalars). Without it nothing is written and
            :class:`ImportRefusedError` (a ``SerializationError``) says what was found and why.

    Returns:
        An :class:`ImportReport`.
    """
    owned = isinstance(hub, str)
    target = TensorHub(hub) if isinstance(hub, str) else hub
    client, database = _connect(source_uri)
    try:
        report = ImportReport(source=redact_uri(source_uri), trusted=bool(trust_pickle))
        _survey(database, _projects(project), report)
        if not trust_pickle:
            raise ImportRefusedError("nothing imported: " + WHY_PICKLE + "\n" + "\n".join(report.lines()), report)
        report.imported = {"datasets": 0, "models": 0, "tasks": 0,
                           **{f"{kind}_logs": 0 for kind in LOG_KINDS.values()}}
        report.already = dict.fromkeys(report.imported, 0)
        with _Importer(database, target, report) as importer:
            importer.run(_projects(project))
        return report
    finally:
        client.close()
        if owned:
            target.close()


def _storable(value: Any) -> tuple[bool, Any]:
    """``(True, value as a tag can hold it)`` or ``(False, None)`` for a value no tag can hold."""
    if value is None or isinstance(value, (bool, int, float, str, ObjectId)):
        return True, value
    if isinstance(value, dt.datetime):
        return True, value
    if isinstance(value, Decimal128):
        return True, float(value.to_decimal())
    if isinstance(value, (list, tuple)):
        items = [_storable(v) for v in value]
        return (True, [v for _, v in items]) if all(ok for ok, _ in items) else (False, None)
    if isinstance(value, Mapping):
        pairs = {k: _storable(v) for k, v in value.items()}
        if all(isinstance(k, str) and not k.startswith("$") and ok for k, (ok, _) in pairs.items()):
            return True, {k: v for k, (_, v) in pairs.items()}
    return False, None


class _Importer:
    """One import run: target hubs per project, the ids already imported, the report."""

    def __init__(self, database: Any, hub: TensorHub, report: ImportReport) -> None:
        import gridfs

        self.database, self.hub, self.report = database, hub, report
        self.buckets = {name: gridfs.GridFS(database, collection=bucket) for name, (bucket, _) in BUCKETS.items()}
        self.hubs: dict[str, TensorHub] = {hub.project_name: hub}
        self.scripts = tempfile.TemporaryDirectory(prefix="tensorhub-tl-")

    def __enter__(self) -> _Importer:
        return self

    def __exit__(self, *exc: Any) -> None:
        for name, hub in self.hubs.items():
            if hub is not self.hub:
                hub.close()
        self.scripts.cleanup()

    def target(self, doc: Mapping[str, Any]) -> TensorHub:
        name = doc.get("project_name")
        name = name if isinstance(name, str) and name else self.hub.project_name
        if name not in self.hubs:
            connection = self.hub.connection
            self.hubs[name] = TensorHub(connection.uri, project_name=name, blobs=connection.blobs)
        return self.hubs[name]

    def skip(self, collection: str, doc: Mapping[str, Any], reason: str) -> None:
        log.warning("TensorLayer %s %s not imported: %s", collection, doc.get("_id"), reason)
        self.report.skipped.append({"collection": collection, "id": str(doc.get("_id")), "reason": reason})

    def note(self, text: str) -> None:
        if text not in self.report.notes:
            self.report.notes.append(text)

    def imported_ids(self, hub: TensorHub, kind: str, cache: dict[tuple[str, str], set[Any]]) -> set[Any]:
        key = (hub.project_name, kind)
        if key not in cache:
            cache[key] = {r.get("tensorlayer_id") for r in hub.find_records(kind, tensorlayer_id={"$exists": True})}
        return cache[key]

    def fields(self, collection: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The user's fields of a TensorLayer record as tags, with its time and id."""
        tl_owned = COMMON_INTERNAL_FIELDS | _TL_FIELDS.get(collection, set())
        reserved = COMMON_INTERNAL_FIELDS | _RESERVED[collection] | OWN_FIELDS
        options = _OPTIONS.get(collection, ())
        out: dict[str, Any] = {}
        for key, value in doc.items():
            if key in tl_owned or not isinstance(key, str):
                continue
            name = key
            if name in reserved or name.startswith("$") or close_to(name, options):
                name = f"tensorlayer_{key}"
                self.note(f"{collection} field {key!r} is tensorhub's own or an option name: stored as {name!r}")
            ok, kept = _storable(value)
            if not ok or name in out or close_to(name, options):
                self.note(f"{collection} field {key!r} ({type(value).__name__}) cannot be a tensorhub tag: dropped")
                continue
            out[name] = kept
        out["tensorlayer_id"] = doc.get("_id")
        if isinstance(doc.get("time"), dt.datetime):
            out["time"] = doc["time"]
        return out

    def unpickle(self, collection: str, doc: Mapping[str, Any]) -> tuple[bool, Any]:
        _, id_field = BUCKETS[collection]
        file_id = doc.get(id_field)
        if file_id is None:
            self.skip(collection, doc, f"no {id_field}: the record has no GridFS file")
            return False, None
        try:
            data = self.buckets[collection].get(file_id).read()
        except Exception as exc:  # noqa: BLE001 - gridfs.NoFile, a damaged file: this item only
            self.skip(collection, doc, f"GridFS file {file_id} unreadable: {type(exc).__name__}: {exc}")
            return False, None
        try:
            return True, restricted_loads(data)
        except SerializationError as exc:
            self.skip(collection, doc, str(exc))
            return False, None

    def documents(self, collection: str, projects: list[str] | None) -> Iterator[dict[str, Any]]:
        cursor = self.database[collection].find(_project_filter(projects), sort=[("time", 1), ("_id", 1)])
        bar = progress_bar(total=self.report.found.get(collection), desc=f"importing {collection}", unit="record")
        try:
            for doc in cursor:
                yield doc
                bar.update(1)
        finally:
            bar.close()

    def run(self, projects: list[str] | None) -> None:
        seen: dict[tuple[str, str], set[Any]] = {}
        with keeping_time():
            for doc in self.documents("Dataset", projects):
                self.dataset(doc, seen)
            for doc in self.documents("Model", projects):
                self.model(doc, seen)
            for doc in self.documents("Task", projects):
                self.task(doc, seen)
            for collection, kind in LOG_KINDS.items():
                self.logs(collection, kind, self.documents(collection, projects), seen)

    def _fresh(self, hub: TensorHub, kind: str, doc: Mapping[str, Any], seen: dict[tuple[str, str], set[Any]]) -> bool:
        if doc.get("_id") in self.imported_ids(hub, kind, seen):
            self.report.already[kind] += 1
            return False
        return True

    def dataset(self, doc: dict[str, Any], seen: dict[tuple[str, str], set[Any]]) -> None:
        hub = self.target(doc)
        name = doc.get("dataset_name")
        if not isinstance(name, str) or not name:
            return self.skip("Dataset", doc, f"dataset_name {name!r} is not a non-empty string")
        if not self._fresh(hub, "datasets", doc, seen):
            return None
        ok, data = self.unpickle("Dataset", doc)
        if ok:
            try:
                hub.save_dataset(data, name, **self.fields("Dataset", doc))
            except TensorHubError as exc:
                return self.skip("Dataset", doc, f"{type(exc).__name__}: {exc}")
            self.report.imported["datasets"] += 1
        return None

    def model(self, doc: dict[str, Any], seen: dict[tuple[str, str], set[Any]]) -> None:
        hub = self.target(doc)
        name = doc.get("model_name")
        if not isinstance(name, str) or not name:
            return self.skip("Model", doc, f"model_name {name!r} is not a non-empty string")
        if not self._fresh(hub, "models", doc, seen):
            return None
        ok, params = self.unpickle("Model", doc)
        if not ok:
            return None
        tags = self.fields("Model", doc)
        if doc.get("architecture") is not None:
            text = json_util.dumps(doc["architecture"])
            tags["tensorlayer_note"] = ARCHITECTURE_NOTE
            if len(text) <= MAX_ARCHITECTURE_CHARS:
                tags["tensorlayer_architecture"] = text
            else:
                tags["tensorlayer_note"] += f" (not kept: {len(text)} characters of JSON)"
            self.note(f"models: {ARCHITECTURE_NOTE}")
        try:
            hub.save_model(params, name, **tags)
        except TensorHubError as exc:
            return self.skip("Model", doc, f"parameters not storable ({type(exc).__name__}: {exc}); tensorhub "
                             "imports a list/tuple/dict of numpy arrays")
        self.report.imported["models"] += 1
        return None

    def task(self, doc: dict[str, Any], seen: dict[tuple[str, str], set[Any]]) -> None:
        hub = self.target(doc)
        name, script, status = doc.get("task_name"), doc.get("script"), doc.get("status")
        if not isinstance(name, str) or not name:
            return self.skip("Task", doc, f"task_name {name!r} is not a non-empty string")
        if not self._fresh(hub, "tasks", doc, seen):
            return None
        try:
            text = script.decode("utf-8") if isinstance(script, bytes) else script
        except UnicodeDecodeError:
            return self.skip("Task", doc, "its script is not UTF-8 text")
        if not isinstance(text, str):
            return self.skip("Task", doc, f"its script is {type(script).__name__}, not text")
        path = Path(self.scripts.name) / f"tensorlayer_task_{doc.get('_id')}.py"
        path.write_text(text, encoding="utf-8")
        tags = self.fields("Task", doc)
        tags["tensorlayer_status"] = status
        hyper_parameters = doc.get("hyper_parameters") or {}
        ok, result = _storable(doc.get("result") or {})
        try:
            task_id = hub.create_task(name, str(path), hyper_parameters, doc.get("saved_result_keys") or [], **tags)
        except TensorHubError as exc:
            return self.skip("Task", doc, f"{type(exc).__name__}: {exc}")
        self.report.imported["tasks"] += 1
        if status in ("finished", "running"):
            self._end(hub, task_id, status, result if ok else {})
            if not ok:
                self.note("Task results that are not storable as tags were dropped")
        elif status != "pending":
            self.note(f"Task status {status!r} is unknown to TensorLayer's db.py: imported as pending")
        return None

    def _end(self, hub: TensorHub, task_id: Any, status: str, result: Any) -> None:
        """Give an imported task TensorLayer's outcome, through the queue's own transitions."""
        claimed = hub.task_queue.claim({"_id": task_id})
        if claimed is None:  # a runner of the destination took it first: it runs there, as a new task would
            self.note(f"task {task_id} was claimed by a runner of the destination before its outcome was recorded")
            return
        if status == "finished":
            hub.task_queue.finish(claimed, {"result": result})
        else:
            hub.task_queue.fail(claimed, {"error": "imported from TensorLayer while 'running': its outcome is unknown "
                                                   "(requeue_tasks runs it again)"})
            self.note("TensorLayer tasks that were 'running' are imported as failed (outcome unknown; requeue_tasks "
                      "runs them again)")

    def logs(self, collection: str, kind: str, docs: Iterable[dict[str, Any]],
             seen: dict[tuple[str, str], set[Any]]) -> None:
        batches: dict[str, list[dict[str, Any]]] = {}
        for doc in docs:
            hub = self.target(doc)
            if not self._fresh(hub, f"{kind}_logs", doc, seen):
                continue
            batch = batches.setdefault(hub.project_name, [])
            batch.append(doc)
            if len(batch) >= LOG_BATCH:
                self._write_logs(collection, kind, hub, batches.pop(hub.project_name))
        for project, batch in batches.items():
            self._write_logs(collection, kind, self.hubs[project], batch)

    def _write_logs(self, collection: str, kind: str, hub: TensorHub, docs: list[dict[str, Any]]) -> None:
        save = getattr(hub, f"save_{kind}_logs")
        rows = [self.fields(collection, doc) for doc in docs]
        try:
            save(rows)
            self.report.imported[f"{kind}_logs"] += len(rows)
            return
        except TensorHubError:
            pass  # one bad row fails its batch: write them one by one to name it
        for doc, row in zip(docs, rows):
            try:
                save([row])
                self.report.imported[f"{kind}_logs"] += 1
            except TensorHubError as exc:
                self.skip(collection, doc, f"{type(exc).__name__}: {exc}")
