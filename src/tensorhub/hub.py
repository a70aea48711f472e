"""``TensorHub``: the public facade. It opens the stores a URI names and delegates each record
kind to its module (:mod:`~tensorhub.datasets`, :mod:`~tensorhub.models`, :mod:`~tensorhub.logs`,
:mod:`~tensorhub.tasks`), which are written once against the storage ABCs.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import warnings
from typing import Any
from urllib.parse import quote

from tensorhub import catalog as _catalog
from tensorhub import datasets as _datasets
from tensorhub import errors as _errors
from tensorhub import hints as _hints
from tensorhub import logs as _logs
from tensorhub import models as _models
from tensorhub import run_log as _run_log
from tensorhub import runner as _runner
from tensorhub import runs as _runs
from tensorhub import tasks as _tasks
from tensorhub.backends.base import BlobStore, IndexStore
from tensorhub.context import ENV_PROJECT, Connection, default_connection, default_project, inside_task
from tensorhub.deferred import Creation, DeferredBlobs, DeferredIndex
from tensorhub.errors import BackendUnavailableError, InvalidArgumentError, InvalidArgumentTypeError
from tensorhub.frames import to_frame
from tensorhub.ownership import claim_blobs
from tensorhub.records import Records
from tensorhub.redaction import redact_uri
from tensorhub.registry import open_stores
from tensorhub.tasks import TaskQueue
from tensorhub.zygote import stop_shared_zygote

log = logging.getLogger(__name__)


#: the (project, why) defaults already logged by this process: the INFO line is said once each
_LOGGED_DEFAULTS: set[tuple[str, str]] = set()


def _log_default_project(project_name: str, why: str) -> None:
    """Say once (INFO) which project a hub opened without ``project_name`` uses and why: a script's
    default (its file name) differs from the CLI's ("default"), and records in the wrong project
    look lost."""
    if (project_name, why) not in _LOGGED_DEFAULTS:
        _LOGGED_DEFAULTS.add((project_name, why))
        log.info("tensorhub: no project_name given; using project %r (%s). Pass project_name= or set "
                 "$%s to choose; `tensorhub ls projects` lists a store's projects", project_name, why, ENV_PROJECT)


def _tensorlayer_uri(ip: str, port: int, dbname: str, username: str | None, password: str | None) -> str:
    try:
        valid = not isinstance(port, (bool, float)) and 0 < int(port) < 65536
    except (TypeError, ValueError):
        valid = False
    if not valid:
        wrong_type = isinstance(port, (bool, float)) or not isinstance(port, (int, str))
        error = InvalidArgumentTypeError if wrong_type else InvalidArgumentError
        raise error(f"port must be a TCP port number (1-65535, MongoDB's is 27017), got {port!r}")
    auth = f"{quote(username, safe='')}:{quote(password or '', safe='')}@" if username else ""
    return f"mongodb://{auth}{ip}:{int(port)}/{dbname}"


def _check_seconds(name: str, value: Any, zero: bool) -> None:
    """Refuse a duration that is not a finite number of seconds (> 0, or >= 0 when ``zero``)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero)):
        bound = ">= 0" if zero else "> 0"
        wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
        error = InvalidArgumentTypeError if wrong_type else InvalidArgumentError
        raise error(f"{name} must be a number of seconds {bound}, got {value!r}")


def _drop_sess(kwargs: dict[str, Any]) -> None:
    """Accept and ignore TensorLayer's ``sess=`` (whatever its value, None included), with a warning."""
    if "sess" in kwargs:
        kwargs.pop("sess")
        warnings.warn("sess= is ignored (TensorFlow 1 leftover)", DeprecationWarning, stacklevel=3)


def _rows(rows: list[dict], as_frame: bool, what: str, columns: list[str] | None = None) -> Any:
    """A ``find_*``'s rows, or with ``as_frame`` a pandas DataFrame of them (pandas: an optional extra)."""
    return to_frame(rows, what, columns) if as_frame else rows


def _task_query(task_name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    if task_name is not None:
        kwargs["task_name"] = task_name
    return kwargs


def _records_of(hub: TensorHub) -> Records:
    return hub._records


def _explains(kind: str, collection: str, name_field: str | None = None, options: tuple[str, ...] = ()) -> Any:
    """A find/delete that returns nothing logs why it may have (hints.py): once per call site."""
    return _hints.explains_empty(_records_of, kind, collection, name_field, options)


_DATASET = ("dataset", _datasets.COLLECTION, "dataset_name")
_MODEL = ("model", _models.COLLECTION, "model_name")
_TASK = ("task", _tasks.COLLECTION, "task_name")
#: the options find_*_models take out of their keywords (the rest is the query)
_MODEL_LOAD_OPTIONS = ("allow_pickle", "into", "trusted", "sess")
#: create_task's options beyond its signature (TaskQueue.create's), near misses of which are refused
_TASK_OPTIONS = ("max_attempts", "timeout", "priority", "retry_on_error")
#: stream_dataset's options beyond its signature
_STREAM_OPTIONS = ("buffer_chunks", "prefetch", "drop_last", "sort")


class TensorHub:
    """One project's view of a tensorhub store: datasets, models, logs and tasks.

    Example::

        hub = TensorHub("file:///data/hub", project_name="tutorial")
        hub.save_dataset([X_train, y_train], "mnist", version="1.0")
        X, y = hub.find_dataset("mnist", version="1.0")

    ``uri`` picks the backend (``file://``, ``mongodb://``, ``s3://``, ``mongomock://``);
    ``blobs`` optionally puts the large bytes elsewhere (``blobs="s3://bucket/prefix"``). With no
    URI, ``$TENSORHUB_URI`` or ``file://./tensorhub-data`` is used, or, inside a task, the store
    the task came from. ``ip``/``port``/``dbname``/``username``/``password`` is TensorLayer's
    signature and means MongoDB. Without ``project_name``: the running task's project, else
    ``$TENSORHUB_PROJECT``, else the running script's file stem, else ``"default"`` (logged once
    at INFO); :meth:`list_projects` lists a store's projects.

    Opening creates nothing: a store that does not exist yet (a ``file://`` path never written)
    answers reads with nothing and is created by the hub's first write. ``create=False`` (for
    read-only use: ``tensorhub ls``) makes a store that does not exist an error instead:
    :class:`~tensorhub.errors.NotFoundError` naming the path.
    """

    def __init__(self, uri: str | None = None, project_name: str | None = None, *, blobs: str | None = None,
                 ip: str | None = None, port: int | None = None, dbname: str | None = None,
                 username: str | None = None, password: str | None = None, studyID: Any = None,
                 create: bool = True) -> None:
        if uri is None and ip is None and port is None and dbname is None:
            uri, env_blobs, _ = default_connection()
            blobs = blobs or env_blobs
        elif uri is None:
            uri = _tensorlayer_uri(ip or "localhost", port or 27017, dbname or "tensorhub", username, password)
        elif ip is not None or port is not None or dbname is not None:
            raise InvalidArgumentError("pass either a URI or TensorLayer's ip/port/dbname, not both")
        if project_name is None:  # the one rule (context.default_project), with or without a URI
            project_name, why = default_project()
            _log_default_project(project_name, why)
        if not isinstance(project_name, str) or not project_name:
            error = InvalidArgumentError if isinstance(project_name, str) else InvalidArgumentTypeError
            raise error(f"project_name must be a non-empty string, got {project_name!r}")
        self.uri, self.blobs_uri, self.project_name = uri, blobs, project_name
        stores = open_stores(uri, index=True, blobs=blobs is None, create=create)
        index, blob_store = stores.index, stores.blobs
        if index is None:  # a backend's open_stores returns what was asked for
            raise BackendUnavailableError(f"{redact_uri(uri)} opened no index store")
        try:
            if blobs is not None:
                blob_store = open_stores(blobs, index=False, blobs=True, create=create).blobs
            if blob_store is None:
                raise BackendUnavailableError(f"{redact_uri(blobs or uri)} opened no blob store")
        except BaseException:
            index.close()
            raise
        # a store that does not exist yet is created by its first write, not by opening it: what opening
        # writes (the owner marker, the declared indexes) waits for that write (deferred.py)
        try:  # one blob store serves one index, or a delete in one would free the other's chunks
            exists = index.store_exists() and blob_store.store_exists()
            claim_blobs(index, blob_store, write=exists)  # without writing, it still refuses another index's blobs
        except BaseException:
            index.close()
            blob_store.close()
            raise
        if not exists:
            creation = Creation(functools.partial(claim_blobs, index, blob_store))
            index, blob_store = DeferredIndex(index, creation), DeferredBlobs(blob_store, creation)
        # the only way below to the index: scoped to the project (records.py); tasks change state
        # only through the queue (tasks.py)
        self._records = Records(index, blob_store, project_name)
        self._queue = TaskQueue(self._records)
        if not inside_task():  # the hub that created the task already declared the indexes
            self._declare_indexes()

    def _declare_indexes(self) -> None:
        """Each record kind declares its collections' indexes (its module's ``INDEXES``)."""
        for kind in (_datasets, _models, _logs, _tasks):
            for collection, indexes in kind.INDEXES.items():
                for keys in indexes:
                    self._records.create_index(collection, keys)

    # ------------------------------------------------------------------ connection
    @property
    def connection(self) -> Connection:
        """What another process needs to open this same hub."""
        return Connection(self.uri, self.blobs_uri, self.project_name)

    @property
    def index(self) -> IndexStore:
        """The :class:`~tensorhub.backends.base.IndexStore` behind this hub, unscoped (every project):
        for inspecting the store directly; the hub's own methods are scoped to ``project_name``."""
        return self._records.store_index()

    @property
    def blobs(self) -> BlobStore:
        """The :class:`~tensorhub.backends.base.BlobStore` behind this hub."""
        return self._records.blobs

    @property
    def task_queue(self) -> TaskQueue:
        """This project's :class:`~tensorhub.tasks.TaskQueue`: every task state change (claim, renew,
        finish, release...) goes through it; ``tensorhub worker`` claims from it. Most code wants
        :meth:`run_task` instead."""
        return self._queue

    def collect_garbage(self, older_than: float = 24 * 3600, dry_run: bool = False) -> dict[str, int]:
        """Delete blobs no record refers to (what crashed saves leave), if older than ``older_than`` seconds.

        Store-wide, every project: chunks no dataset or model lists, record blobs whose record
        is gone, and what killed writes left inside the backend (``.tmp-*`` files of
        ``file://``, GridFS chunks of uploads that never finished). Younger ones are kept because
        a save running meanwhile has written its chunks but not yet its record; keep the default
        (a day) unless no one is saving. With ``dry_run`` nothing is deleted. Returns
        ``{"chunks", "record_blobs", "incomplete", "kept_young"}``.
        Also ``tensorhub gc`` on the command line.
        """
        _check_seconds("older_than", older_than, zero=True)
        return self._records.collect_garbage(dt.timedelta(seconds=older_than), dry_run=dry_run)

    # ------------------------------------------------------------------ any kind (catalog.py)
    def list_projects(self) -> list[dict[str, Any]]:
        """Every project of this store (not only this hub's), sorted by name, with record counts.

        Each row: ``project_name``, ``datasets``, ``models``, ``training_logs``, ``validation_logs``,
        ``testing_logs``, ``tasks`` (queued tasks and runs) and ``tasks_by_status``
        (``{"finished": 3, "failed": 1}``). Reads counts only. Also ``tensorhub ls projects``.
        """
        return _catalog.list_projects(self._records)

    def find_records(self, kind: str, sort: Any = None, limit: int | None = None, **kwargs: Any) -> list[dict]:
        """This project's records of ``kind`` (``datasets``, ``models``, ``tasks``, ``runs``,
        ``training_logs``, ``validation_logs``, ``testing_logs``) matching the query (kwargs), newest
        first unless ``sort``; records only, no blob is read (a model is not loaded)."""
        return _catalog.find_records(self._records, kind, kwargs, sort=sort, limit=limit)

    def describe_record(self, kind: str, record_id: Any) -> dict[str, Any] | None:
        """One record of this project, whole, with its lineage; None if no record of ``kind`` has the id.

        Returns ``{"kind", "record", "lineage"}``. Lineage: a model's ``dataset`` and ``task``; a
        task's (or run's) ``logs`` (row counts per log kind), ``models`` and ``datasets`` saved by it;
        a dataset's ``models``; a log row's ``task``. Also ``tensorhub show KIND ID``.
        """
        return _catalog.describe(self._records, kind, record_id)

    def close(self) -> None:
        """Release connections and files, and stop the task helper process if no task runs.

        Log rows that ``log`` calls buffered for this hub are written first.
        """
        _run_log.flush_records(self._records)
        self._records.close()
        stop_shared_zygote(only_if_idle=True)

    def __enter__(self) -> TensorHub:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __str__(self) -> str:
        blobs = f", blobs={redact_uri(self.blobs_uri)!r}" if self.blobs_uri else ""
        return f"TensorHub({redact_uri(self.uri)!r}{blobs}, project_name={self.project_name!r})"

    __repr__ = __str__

    # ------------------------------------------------------------------ datasets
    @_hints.refuses_near_options("allow_pickle", "chunk_bytes")
    def save_dataset(self, dataset: Any = None, dataset_name: str | None = None, **kwargs: Any) -> Any:
        """Store ``dataset`` (arrays in lists/tuples/dicts) under ``dataset_name``; extra kwargs are tags.

        Example: ``hub.save_dataset([X, y], "mnist", version="1.0")``. Returns the record id.
        """
        return _datasets.save_dataset(self._records, dataset, dataset_name, **kwargs)

    @_explains(*_DATASET, options=("allow_pickle",))
    def find_dataset(self, dataset_name: str | None = None, sort: Any = None, lazy: bool = False,
                     **kwargs: Any) -> Any:
        """The newest (or first by ``sort``) dataset matching the query, or ``None``."""
        found = self.find_all_datasets(dataset_name, sort=sort, lazy=lazy, limit=1, **kwargs)
        return found[0] if found else None

    @_explains(*_DATASET, options=("allow_pickle", "limit"))
    def find_all_datasets(self, dataset_name: str | None = None, sort: Any = None, lazy: bool = False,
                          **kwargs: Any) -> list:
        """Every dataset matching the query (newest first)."""
        return _datasets.find_all_datasets(self._records, dataset_name, sort=sort, lazy=lazy, **kwargs)

    @_explains(*_DATASET)
    def find_dataset_records(self, dataset_name: str | None = None, sort: Any = None, limit: int | None = None,
                             as_frame: bool = False, **kwargs: Any) -> Any:
        """The records (schema, tags) of matching datasets, without reading any blob (a pandas
        DataFrame with ``as_frame=True``)."""
        return _rows(_datasets.find_dataset_records(self._records, dataset_name, kwargs, sort=sort, limit=limit),
                     as_frame, "find_dataset_records")

    def append_dataset(self, dataset_name: str, rows: Any, **kwargs: Any) -> int:
        """Grow the newest matching dataset along axis 0 by ``rows`` (same structure); return the new length.

        Example: ``hub.append_dataset("events", [X_new, y_new])``. Readers see the old or the new
        length, never a torn one; only new chunks are written.
        """
        return _datasets.append_dataset(self._records, dataset_name, rows, **kwargs)

    def stream_dataset(self, dataset_name: str, batch_size: int, shuffle: bool = True, seed: int | None = None,
                       epochs: int = 1, **kwargs: Any) -> Any:
        """Batches of a dataset (the saved structure, each array cut to ``batch_size`` rows), in bounded memory.

        Example::

            for X, y in hub.stream_dataset("mnist", batch_size=256, seed=0, epochs=2):
                train_step(X, y)

        Every row comes once per epoch; the same ``seed`` gives the same order. The result is
        also a PyTorch ``IterableDataset`` when torch is imported (``DataLoader(stream,
        batch_size=None, num_workers=4)``: each worker reads its own share).
        """
        from tensorhub.streaming import make_stream

        options = {k: kwargs.pop(k) for k in ("buffer_chunks", "prefetch", "drop_last") if k in kwargs}
        record = self.find_dataset_records(dataset_name, sort=kwargs.pop("sort", None), limit=1, **kwargs)
        if not record:
            query = {"dataset_name": dataset_name, **kwargs}
            hint = _hints.explain(self._records, "dataset", _datasets.COLLECTION, query, "dataset_name",
                                  ("batch_size", "shuffle", "seed", "epochs", *_STREAM_OPTIONS))
            raise _errors.NotFoundError(hint or f"no dataset {dataset_name!r} matches {kwargs or 'the query'}")
        return make_stream(self.connection, record[0], batch_size, shuffle=shuffle, seed=seed, epochs=epochs,
                           blobs=self._records.blobs, **options)

    @_explains(*_DATASET)
    def delete_datasets(self, **kwargs: Any) -> int:
        """Delete matching datasets and their blobs; return how many records were deleted."""
        return _datasets.delete_datasets(self._records, kwargs)

    find_top_dataset = find_dataset
    find_datasets = find_all_datasets

    # ------------------------------------------------------------------ models
    @_hints.refuses_near_options("example_inputs", "dynamic_shapes", "allow_pickle", "dataset", "task", "dataset_id",
                                 "task_id", "sess")
    def save_model(self, network: Any = None, model_name: str = "model", **kwargs: Any) -> Any:
        """Store a model (``torch.nn.Module``, list/dict of arrays, or an adapter's type); kwargs are tags.

        Example: ``hub.save_model(net, "mlp", test_accuracy=0.97, dataset=mnist_record)``.
        Options: ``example_inputs=`` (PyTorch: also store a ``torch.export`` program, loadable
        without the class) and ``dynamic_shapes=``; ``dataset=``/``task=`` (a record or its
        id) record lineage as ``dataset_id``/``task_id`` (inside a task, the task is recorded
        by itself); ``allow_pickle=True`` for what only pickle can store. Unchanged tensors
        of an earlier save are not stored again. Returns the record id.
        """
        _drop_sess(kwargs)
        allow_pickle = bool(kwargs.pop("allow_pickle", False))
        return _models.save_model(self._records, network, model_name, allow_pickle=allow_pickle, **kwargs)

    @_explains(*_MODEL, options=(*_MODEL_LOAD_OPTIONS, "limit"))
    def find_all_models(self, sort: Any = None, model_name: str | None = None, **kwargs: Any) -> list:
        """Every model matching the query (newest first), each carrying ``tensorhub_record``.

        ``dataset=``/``task=`` (a record or id) find the models trained on a dataset or by a
        task. Options: ``into=module`` (PyTorch: load the parameters into this built module),
        ``allow_pickle=True``, and ``trusted=``: what a record may make this process import. By
        default a PyTorch class path resolves only in modules this process has already imported
        (and only to a ``torch.nn.Module`` subclass), and scikit-learn models hold only the types
        skops trusts by default; ``trusted=True`` trusts whoever saved the models, and
        ``trusted=["mypkg.models"]`` trusts those module prefixes (``mypkg`` covers
        ``mypkg.sub``, not ``mypkgevil``; for skops also exact type names).
        """
        _drop_sess(kwargs)
        return _models.find_all_models(self._records, model_name, sort=sort, **kwargs)

    @_explains(*_MODEL, options=_MODEL_LOAD_OPTIONS)
    def find_model(self, sort: Any = None, model_name: str | None = None, **kwargs: Any) -> Any:
        """The newest (or first by ``sort``) model matching the query, or ``None``.

        Example: ``net = hub.find_model(sort=[("test_accuracy", -1)])``. Options ``into=``,
        ``trusted=`` and ``allow_pickle=`` as in :meth:`find_all_models`.
        """
        found = self.find_all_models(sort=sort, model_name=model_name, limit=1, **kwargs)
        return found[0] if found else None

    @_explains(*_MODEL)
    def delete_model(self, **kwargs: Any) -> int:
        """Delete matching models; free the chunks no other record uses; return how many were deleted."""
        return _models.delete_models(self._records, kwargs)

    @_explains(*_MODEL)
    def compare_models(self, model_name: str | None = None, keys: Any = None, sort: Any = None,
                       as_frame: bool = False, limit: int | None = None, **kwargs: Any) -> Any:
        """One row per matching model (``model_name``, ``time``, ``id``, ``adapter``, metrics), best first.

        Example: ``hub.compare_models("mlp", keys=["test_accuracy", "loss"])`` sorts by
        ``test_accuracy`` descending; with no ``keys``, every numeric field saved with the
        models is a column and the newest comes first. A list of dicts, or a pandas DataFrame
        with ``as_frame=True``. Reads records only.
        """
        return _models.compare_models(self._records, model_name, keys=keys, sort=sort, as_frame=as_frame,
                                      limit=limit, **kwargs)

    find_top_model = find_model
    delete_models = delete_model

    # ------------------------------------------------------------------ logs
    # one line each, over the table logs.COLLECTIONS: the names, signatures and docstrings stay
    # visible to help() and to type checkers
    def save_training_log(self, **kwargs: Any) -> Any:
        """Record one training log row, e.g. ``hub.save_training_log(epoch=3, loss=0.2)``; return its id."""
        return _logs.save_logs(self._records, "training", [kwargs])[0]

    def save_validation_log(self, **kwargs: Any) -> Any:
        """Record one validation log row, e.g. ``hub.save_validation_log(epoch=3, acc=0.9)``; return its id."""
        return _logs.save_logs(self._records, "validation", [kwargs])[0]

    def save_testing_log(self, **kwargs: Any) -> Any:
        """Record one testing log row, e.g. ``hub.save_testing_log(acc=0.97)``; return its id."""
        return _logs.save_logs(self._records, "testing", [kwargs])[0]

    def save_training_logs(self, rows: Any) -> list:
        """Record many training log rows (an iterable of dicts) in one batch (one durable write)."""
        return _logs.save_logs(self._records, "training", rows)

    def save_validation_logs(self, rows: Any) -> list:
        """Record many validation log rows (an iterable of dicts) in one batch (one durable write)."""
        return _logs.save_logs(self._records, "validation", rows)

    def save_testing_logs(self, rows: Any) -> list:
        """Record many testing log rows (an iterable of dicts) in one batch (one durable write)."""
        return _logs.save_logs(self._records, "testing", rows)

    @_explains("training log", _logs.COLLECTIONS["training"])
    def find_training_logs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                           **kwargs: Any) -> Any:
        """Training log rows matching the query (kwargs), newest first unless ``sort``; a pandas DataFrame
        with ``as_frame=True``. ``task_id=`` (a task or run, or its id) and ``attempt=`` pick a run's rows."""
        return _rows(_logs.find_logs(self._records, "training", kwargs, sort=sort, limit=limit), as_frame,
                     "find_training_logs")

    @_explains("validation log", _logs.COLLECTIONS["validation"])
    def find_validation_logs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                             **kwargs: Any) -> Any:
        """Validation log rows matching the query (kwargs), newest first unless ``sort``; a pandas DataFrame
        with ``as_frame=True``. ``task_id=`` (a task or run, or its id) and ``attempt=`` pick a run's rows."""
        return _rows(_logs.find_logs(self._records, "validation", kwargs, sort=sort, limit=limit), as_frame,
                     "find_validation_logs")

    @_explains("testing log", _logs.COLLECTIONS["testing"])
    def find_testing_logs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                          **kwargs: Any) -> Any:
        """Testing log rows matching the query (kwargs), newest first unless ``sort``; a pandas DataFrame
        with ``as_frame=True``. ``task_id=`` (a task or run, or its id) and ``attempt=`` pick a run's rows."""
        return _rows(_logs.find_logs(self._records, "testing", kwargs, sort=sort, limit=limit), as_frame,
                     "find_testing_logs")

    @_explains("training log", _logs.COLLECTIONS["training"])
    def delete_training_log(self, **kwargs: Any) -> int:
        """Delete matching training logs (all of this project's when no kwargs); return how many."""
        return _logs.delete_logs(self._records, "training", kwargs)

    @_explains("validation log", _logs.COLLECTIONS["validation"])
    def delete_validation_log(self, **kwargs: Any) -> int:
        """Delete matching validation logs (all of this project's when no kwargs); return how many."""
        return _logs.delete_logs(self._records, "validation", kwargs)

    @_explains("testing log", _logs.COLLECTIONS["testing"])
    def delete_testing_log(self, **kwargs: Any) -> int:
        """Delete matching testing logs (all of this project's when no kwargs); return how many."""
        return _logs.delete_logs(self._records, "testing", kwargs)

    # ------------------------------------------------------------------ tasks
    @_hints.refuses_near_options(*_TASK_OPTIONS)
    def create_task(self, task_name: str | None = None, script: Any = None, hyper_parameters: dict | None = None,
                    saved_result_keys: list[str] | None = None, **kwargs: Any) -> Any:
        """Queue a run of ``script`` (a Python file; its text is stored) with ``hyper_parameters`` as globals.

        Options: ``max_attempts`` (default 3: claims, bounding runners that die), ``timeout``
        (seconds), ``priority`` (higher first), ``retry_on_error`` (default 0: how many times a
        failed attempt is re-queued before the task is ``failed``; retries do not use
        ``max_attempts``); other kwargs are tags. Example::

            hub.create_task("mnist", "task_script.py", dict(n_units=800), saved_result_keys=["test_accuracy"])
        """
        return self._queue.create(task_name, script, [hyper_parameters], saved_result_keys, **kwargs)[0]

    @_hints.refuses_near_options(*_TASK_OPTIONS, "hyper_parameters")
    def create_sweep(self, task_name: str, script: Any, grid: dict[str, list] | None = None,
                     points: list[dict] | None = None, saved_result_keys: list[str] | None = None,
                     **kwargs: Any) -> list:
        """Create one task per hyper-parameter point: the product of ``grid`` and/or each dict of ``points``.

        Example: ``hub.create_sweep("mnist", "train.py", grid={"lr": [0.1, 0.01], "units": [400, 800]})``
        creates 4 tasks, in one write (all or none). Returns their ids.
        """
        return self._queue.create(task_name, script, _tasks.sweep_points(grid, points), saved_result_keys, **kwargs)

    @_explains(*_TASK)
    def run_task(self, task_name: str | None = None, sort: Any = None, lease: float = _tasks.DEFAULT_LEASE,
                 in_process: bool = False, **kwargs: Any) -> bool:
        """Claim one pending task (highest priority, oldest first unless ``sort``) and run it.

        The script runs in a child process unless ``in_process=True`` (TensorLayer's way).
        Returns False when no task was available; the task ends ``finished``, ``failed`` or
        ``cancelled``.
        """
        _check_seconds("lease", lease, zero=False)
        claimed = self._queue.claim(_task_query(task_name, kwargs), sort=sort, lease=lease)
        if claimed is None:
            return False
        _runner.run_claimed(self._queue, claimed, self.connection, lease=lease, isolate=not in_process)
        return True

    run_top_task = run_task

    @_explains(*_TASK)
    def check_unfinished_task(self, task_name: str | None = None, **kwargs: Any) -> bool:
        """Whether any matching task is still ``pending`` or ``running``."""
        return self._queue.has_unfinished(_task_query(task_name, kwargs))

    @_explains(*_TASK, options=("limit",))
    def find_tasks(self, task_name: str | None = None, sort: Any = None, as_frame: bool = False,
                   **kwargs: Any) -> Any:
        """Task records matching the query (newest first unless ``sort``); interactive runs are tasks too
        (``run_type="interactive"``). A pandas DataFrame with ``as_frame=True``."""
        limit = kwargs.pop("limit", None)
        return _rows(self._queue.find(_task_query(task_name, kwargs), sort=sort, limit=limit), as_frame, "find_tasks")

    @_explains(*_TASK)
    def wait_for_tasks(self, task_name: str | None = None, timeout: float | None = None, poll: float = 0.5,
                       **kwargs: Any) -> list[dict]:
        """Block until no matching task is unfinished; return the matching task records.

        Raises :class:`~tensorhub.errors.TaskTimeoutError` after ``timeout`` seconds.
        """
        if timeout is not None:
            _check_seconds("timeout", timeout, zero=True)
        _check_seconds("poll", poll, zero=False)
        return self._queue.wait(_task_query(task_name, kwargs), timeout=timeout, poll=poll)

    @_explains(*_TASK)
    def cancel_tasks(self, **kwargs: Any) -> int:
        """Cancel matching tasks: pending ones never start, running ones are asked to stop.

        A running task's runner sees the request within about a second, kills the script and
        records ``cancelled`` (never ``finished``, even if the script was just ending). Returns
        the number of tasks affected: pending ones cancelled plus running ones newly asked to stop.
        """
        return self._queue.cancel(kwargs)

    def requeue_tasks(self, **kwargs: Any) -> int:
        """Put matching ``failed`` and ``cancelled`` tasks back to ``pending``, so runners run them again.

        Their history is kept (``errors``, ``attempts``); ``attempts_left`` and the retries of
        ``retry_on_error`` start over, and the last outcome (result, error, owner) is cleared.
        Pending, running and finished tasks are left alone. Returns how many were re-queued.
        **With no arguments, every failed or cancelled task of the project.**
        """
        return self._queue.requeue(kwargs)

    @_explains(*_TASK)
    def delete_tasks(self, **kwargs: Any) -> int:
        """Delete matching task records; return how many were deleted."""
        return self._queue.delete(kwargs)

    # ------------------------------------------------------------------ runs
    def start_run(self, run_name: str | None = None, *, lease: float = _tasks.DEFAULT_LEASE,
                  **params: Any) -> _runs.Run:
        """Start an interactive run (a notebook, a script run by hand) with ``params`` as its parameters.

        Example::

            with hub.start_run("mlp", lr=0.1, units=800) as run:
                for step in range(1000):
                    run.log(step=step, loss=loss)         # or hub.log(...); kind="validation" for those rows
                hub.save_model(net, "mlp")               # stamped with the run's task_id and attempt

        The run is a task record (``run_type="interactive"``, ``task_name`` = ``run_name`` or
        ``"interactive"``), ``running`` and renewed every ``lease``/3 seconds while this process
        lives; it ends ``finished`` (result: the last value of each logged metric, plus
        ``run.end(result={...})``), ``failed`` with the traceback if the block raised, or, if this
        process dies, ``failed`` once its ``lease`` (seconds) runs out. Without ``with``: ``run =
        hub.start_run(...)`` then ``run.end()`` (at exit it ends by itself). While it is open,
        everything saved to this store from this process carries its ``task_id`` and ``attempt`` (1).
        """
        _check_seconds("lease", lease, zero=False)
        return _runs.start_run(self._records, self._queue, run_name, lease=lease, params=params)

    def log(self, step: int | None = None, kind: str = "training", **metrics: Any) -> None:
        """Log ``metrics`` at ``step`` to the current run: the newest interactive run of this process on
        this store, else the task this code runs as (``TensorHub().log(...)`` in a task's script).

        ``kind`` is ``"training"`` (default), ``"validation"`` or ``"testing"``; ``step`` defaults to
        the previous step + 1. Values: Python, numpy or 0-d torch scalars. Rows are buffered and
        written in batches (1000 rows, 2 s, the run's end, exit). Outside any run:
        :class:`~tensorhub.errors.NoActiveRunError`.
        """
        _run_log.current_run(self._records).log(step, kind, **metrics)

    @_explains(*_TASK)
    def find_runs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                  **kwargs: Any) -> Any:
        """Runs (tasks and interactive runs) matching the query, newest first: one row each with ``id``,
        ``run_name``, ``run_type``, ``status``, ``attempt``, ``host``, ``pid``, ``started_at``,
        ``finished_at``, ``duration_s``, ``params``, ``result``, ``error`` and ``metrics`` (per metric
        logged in the run: ``final``, ``min``, ``max``, ``count``). Query by task fields
        (``run_name=``/``task_name=``, ``status=``, ``run_type="interactive"``...).
        """
        return _rows(_runs.find_runs(self._records, self._queue, sort=sort, limit=limit, **kwargs), as_frame,
                     "find_runs", _runs.RUN_COLUMNS)

    def compare_runs(self, run_name: str | None = None, keys: Any = None, sort: Any = None,
                     as_frame: bool = False, limit: int | None = None, **kwargs: Any) -> Any:
        """One row per run, best first: ``run_name``, ``id``, ``status``, ``attempt``, ``duration_s``,
        ``params.<name>`` per parameter, and per key its final value (from the result, else the last
        logged) and ``best_<key>`` (over the run's logs, for logged metrics).

        Example: ``hub.compare_runs("mlp", keys=["val_accuracy", "loss"])`` sorts by ``val_accuracy``
        descending; ``sort=[("loss", 1)]`` sorts ascending, and makes ``best_loss`` the minimum
        (otherwise the maximum). With no ``keys``, every numeric result and logged metric.
        """
        return _rows(_runs.compare_runs(self._records, self._queue, run_name, keys=keys, sort=sort, limit=limit,
                                        **kwargs), as_frame, "compare_runs")

    def find_run_records(self, run: Any) -> dict[str, Any]:
        """What a run (a task or interactive run, or its id) saved: ``{"training_logs": n,
        "validation_logs": n, "testing_logs": n, "models": [ids], "datasets": [ids]}``."""
        return _runs.find_run_records(self._records, run)
