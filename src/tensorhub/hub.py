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
from tensorhub import checkpoints as _checkpoints
from tensorhub import copying as _copying
from tensorhub import datasets as _datasets
from tensorhub import errors as _errors
from tensorhub import hints as _hints
from tensorhub import logs as _logs
from tensorhub import models as _models
from tensorhub import run_log as _run_log
from tensorhub import runner as _runner
from tensorhub import runs as _runs
from tensorhub import study as _study
from tensorhub import tasks as _tasks
from tensorhub.backends.base import BlobStore, IndexStore
from tensorhub.context import ENV_PROJECT, Connection, default_connection, default_project, inside_task
from tensorhub.deferred import Creation, DeferredBlobs, DeferredIndex, unwrap
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
_STREAM_OPTIONS = ("buffer_chunks", "prefetch", "drop_last", "rank", "world_size", "sort")


class TensorHub:
    """One project's view of a tensorhub store: datasets, models, logs, tasks and runs.

    A store is an index (documents, queried with MongoDB's language) plus a blob store (bytes);
    the URI's scheme picks the backend. Every record this hub saves carries ``project_name`` and
    every call is scoped to that project (:meth:`list_projects` sees them all). Opening creates
    nothing: a store that does not exist yet (a ``file://`` path never written) answers reads with
    nothing and is created by the hub's first write. Use it as a context manager, or call
    :meth:`close`. The full reference, with the CLI and environment variables, is ``docs/API.md``.

    Args:
        uri: The store: ``file://PATH`` (or a bare path), ``mongodb://[user:pw@]host[:port]/db``,
            ``s3://bucket/prefix[?option=value]`` or ``mongomock://[name]``. Default ``None``:
            inside a task, the store the task came from; else ``$TENSORHUB_URI``; else
            ``file://./tensorhub-data``.
        project_name: The project every record is stamped with and every call is scoped to.
            Default ``None``: the running task's project, else ``$TENSORHUB_PROJECT``, else the
            running script's file stem, else ``"default"`` (logged once at INFO). The CLI's
            default is ``--project``, else ``$TENSORHUB_PROJECT``, else ``"default"``.
        blobs: Keyword-only. A second URI for the large bytes (arrays, parameters), e.g.
            ``"s3://bucket/prefix"``; the first URI then holds only the index. Default ``None``:
            the same store (or ``$TENSORHUB_BLOBS_URI`` when no URI is given).
        ip: Keyword-only, TensorLayer's signature: the MongoDB host (default ``"localhost"``
            when one of ``ip``/``port``/``dbname`` is given). Not together with ``uri``.
        port: Keyword-only, TensorLayer: the MongoDB port, 1-65535 (default 27017).
        dbname: Keyword-only, TensorLayer: the MongoDB database (default ``"tensorhub"``).
        username: Keyword-only, TensorLayer: the MongoDB user (default ``None``: no auth).
        password: Keyword-only, TensorLayer: the MongoDB password (default ``None``).
        studyID: Keyword-only, TensorLayer: accepted and ignored.
        create: Keyword-only. Default ``True``: a store that does not exist yet is created by the
            first write. ``False`` (read-only use, as ``tensorhub ls``): a store that does not
            exist raises :class:`~tensorhub.errors.NotFoundError` naming the path.

    Raises:
        InvalidArgumentError: Both a URI and ``ip``/``port``/``dbname``, an empty ``project_name``,
            a port outside 1-65535 (:class:`~tensorhub.errors.InvalidArgumentTypeError` for a
            wrong type).
        UnknownSchemeError: No backend is registered for the URI's scheme.
        BackendNotInstalledError: The backend's optional package is missing (the message names
            the pip extra).
        ConfigurationError: A malformed URI, an unknown ``s3://`` option, a missing bucket, or a
            blob store owned by another index.
        BackendUnavailableError: The server or endpoint cannot be reached.
        NotFoundError: ``create=False`` and the store does not exist.

    Example::

        with TensorHub("file://./hub", project_name="tutorial") as hub:
            hub.save_dataset([X_train, y_train], "mnist", version="1.0")
            X, y = hub.find_dataset("mnist", version="1.0")
        TensorHub(ip="localhost", port=27017, dbname="temp", project_name="tutorial")  # TensorLayer
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
        for kind in (_datasets, _models, _logs, _tasks, _study):
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
        return unwrap(self._records.blobs)

    @property
    def task_queue(self) -> TaskQueue:
        """This project's :class:`~tensorhub.tasks.TaskQueue`: every task state change (claim, renew,
        finish, release...) goes through it; ``tensorhub worker`` claims from it. Most code wants
        :meth:`run_task` instead."""
        return self._queue

    def collect_garbage(self, older_than: float = 24 * 3600, dry_run: bool = False) -> dict[str, int]:
        """Delete blobs no record refers to (what crashed saves leave), if older than ``older_than``.

        Store-wide, every project: chunks no dataset or model lists, record blobs whose record is
        gone, and what killed writes left inside the backend (``.tmp-*`` files of ``file://``, GridFS
        chunks of uploads that never finished). Younger blobs are kept because a save running
        meanwhile has written its chunks but not yet its record. Also ``tensorhub gc``.

        Args:
            older_than: Seconds; only blobs last written longer ago are deleted. Default 86400 (a
                day): keep it unless no one is saving.
            dry_run: Default ``False``. ``True`` deletes nothing and only counts.

        Returns:
            ``{"chunks": n, "record_blobs": n, "incomplete": n, "kept_young": n}``: what was (or, with
            ``dry_run``, would be) deleted, and the blobs kept for being too young.

        Raises:
            InvalidArgumentError: ``older_than`` is negative or not finite
                (:class:`~tensorhub.errors.InvalidArgumentTypeError` if not a number).
        """
        _check_seconds("older_than", older_than, zero=True)
        return self._records.collect_garbage(dt.timedelta(seconds=older_than), dry_run=dry_run)

    def copy_to(self, other: TensorHub, projects: Any = None, kinds: Any = None, since: Any = None,
                dry_run: bool = False, overwrite: bool = False) -> _copying.CopyReport:
        """Copy projects of this store into ``other``'s store, every record kept as stored.

        Each record keeps its ``_id``, ``project_name``, ``time``, tags, lineage and (tasks) history;
        blobs go first and the record last, so an interrupted copy never leaves a record whose
        bytes are missing, and a second run copies only what is missing (chunks the destination
        has are not copied again). Store-wide: by default every project of this store, whatever
        this hub's and ``other``'s ``project_name``. Also ``tensorhub copy SRC DST``. A running
        task arrives running, with a lease no destination runner holds (see :mod:`tensorhub.copying`).

        Args:
            other: The destination hub (any backend, or an index and blobs in two stores).
            projects: A project name or a list of them. Default ``None``: every project of this store.
            kinds: ``"datasets"``, ``"models"``, ``"logs"``, ``"tasks"``, a comma-separated string or a
                list of them. Default ``None``: every kind.
            since: Only records whose ``time`` (save time; a task's creation) is at or after this
                ``datetime`` (naive is UTC) or ISO 8601 text. Default ``None``: all.
            dry_run: Default ``False``. ``True`` writes nothing and only counts what would be copied.
            overwrite: Default ``False``: a record the destination has with the same ``_id`` and
                other content is reported in ``conflicts`` and left alone. ``True`` replaces it.

        Returns:
            A :class:`~tensorhub.copying.CopyReport`: ``counts[(project, kind)]`` (records copied or
            already there, conflicts, chunks, blobs, bytes), ``conflicts``, ``errors`` and ``lines()``.

        Raises:
            InvalidArgumentError: An unknown kind or an unreadable ``since``
                (:class:`~tensorhub.errors.InvalidArgumentTypeError` for wrong types).
        """
        if not isinstance(other, TensorHub):
            raise InvalidArgumentTypeError(f"copy_to needs the destination TensorHub, got {type(other).__name__}")
        _run_log.flush_records(self._records)  # rows hub.log buffered belong in the copy
        return _copying.copy_store(self._records, other._records, projects=projects, kinds=kinds, since=since,
                                   dry_run=dry_run, overwrite=overwrite)

    # ------------------------------------------------------------------ any kind (catalog.py)
    def list_projects(self) -> list[dict[str, Any]]:
        """Every project of this store (not only this hub's), sorted by name, with record counts.

        Reads counts only (one grouped count per collection). Also ``tensorhub ls projects``.

        Args:
            None.

        Returns:
            One dict per project: ``project_name``, ``datasets``, ``models``, ``training_logs``,
            ``validation_logs``, ``testing_logs``, ``tasks`` (queued tasks and runs) and
            ``tasks_by_status`` (e.g. ``{"finished": 3, "failed": 1}``).
        """
        return _catalog.list_projects(self._records)

    def find_records(self, kind: str, sort: Any = None, limit: int | None = None, **kwargs: Any) -> list[dict]:
        """This project's records of one kind, as documents: no blob is read (a model is not loaded).

        What ``tensorhub ls --json`` prints; use the kind's own ``find_*`` to load datasets or models.

        Args:
            kind: ``"datasets"``, ``"models"``, ``"tasks"``, ``"runs"`` (task records),
                ``"training_logs"``, ``"validation_logs"`` or ``"testing_logs"``; singular and
                hyphenated spellings, and ``"logs"`` (training logs), work too.
            sort: PyMongo sort (``[("field", -1)]``, a field name, ...). Default ``None``: newest first.
            limit: At most this many records. Default ``None`` (or 0): all.
            **kwargs: The query: a MongoDB filter over the records' fields.

        Returns:
            A list of record dicts (``_id``, ``project_name``, ``time``, the kind's fields, tags).

        Raises:
            InvalidArgumentError: An unknown ``kind``.
            InvalidQueryError: A filter or sort tensorhub does not support.
        """
        return _catalog.find_records(self._records, kind, kwargs, sort=sort, limit=limit)

    def describe_record(self, kind: str, record_id: Any) -> dict[str, Any] | None:
        """One record of this project, whole, with its lineage. Also ``tensorhub show KIND ID``.

        Lineage: a model's ``dataset`` and ``task``; a task's (or run's) ``logs`` (row counts per log
        kind), and the ``models`` and ``datasets`` saved by it; a dataset's ``models``; a log row's
        ``task``. Reads records only.

        Args:
            kind: The record's kind, as for :meth:`find_records` (``"model"``, ``"task"``, ``"run"``...).
            record_id: The record's ``_id``: an ``ObjectId`` or its 24-hex-digit string.

        Returns:
            ``{"kind": ..., "record": {...}, "lineage": {...}}``, or ``None`` when this project has no
            record of ``kind`` with that id.

        Raises:
            InvalidArgumentError: An unknown ``kind`` or a malformed id.
        """
        return _catalog.describe(self._records, kind, record_id)

    def close(self) -> None:
        """Release connections and files, and stop the task helper process if no task runs.

        Log rows that :meth:`log` buffered for this hub are written first. ``with TensorHub(...) as
        hub:`` closes it at the end of the block. A closed hub's calls raise
        :class:`~tensorhub.errors.BackendUnavailableError`.

        Args:
            None.
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
        """Store ``dataset`` under ``dataset_name``; extra keywords are queryable tags.

        Arrays are cut into chunks along their first axis, compressed when that pays, and stored by
        content hash, so saving the same bytes twice stores them once. Nothing is half-saved: the
        record appears only once every chunk is stored. Inside a run or task the record also gets
        ``task_id`` and ``attempt``.

        Args:
            dataset: A numpy array, or a (nested) list, tuple or dict of numpy arrays and JSON values.
                Required (``None`` is refused).
            dataset_name: A non-empty string. Required.
            **kwargs: Tags (``version="1.0"``), plus two options: ``allow_pickle`` (default
                ``False``: Python objects, object and masked arrays are refused) and ``chunk_bytes``
                (default 8 MiB: the size of a chunk). A tag that is a near miss of an option is refused.

        Returns:
            The new record's ``_id`` (an ``ObjectId``).

        Raises:
            SerializationError: Contents that cannot be stored without ``allow_pickle=True``.
            InvalidArgumentError: An empty name, a reserved tag name (``_id``, ``time``, ``schema``...).

        Example::

            hub.save_dataset([X, y], "mnist", version="1.0")
        """
        return _datasets.save_dataset(self._records, dataset, dataset_name, **kwargs)

    @_explains(*_DATASET, options=("allow_pickle",))
    def find_dataset(self, dataset_name: str | None = None, sort: Any = None, lazy: bool = False,
                     **kwargs: Any) -> Any:
        """The newest (or first by ``sort``) dataset matching the query, loaded, or ``None``.

        Args:
            dataset_name: The dataset's name. Default ``None``: any name.
            sort: PyMongo sort, e.g. ``[("version", -1)]``. Default ``None``: newest first.
            lazy: Default ``False``. ``True`` returns each array as a ``ChunkedArray`` that reads only
                the chunks a selection needs (``X[1000:2000]``, ``np.asarray(X)``).
            **kwargs: The query (tags, MongoDB filter, ``task_id=``/``attempt=``), plus the option
                ``allow_pickle`` (default ``False``; needed for a dataset saved with it).

        Returns:
            The dataset in its saved structure (arrays, lists, dicts), or ``None`` if nothing matches
            (a warning names a near-miss field or name, once per call site).

        Example::

            X, y = hub.find_dataset("mnist", version="1.0")
        """
        found = self.find_all_datasets(dataset_name, sort=sort, lazy=lazy, limit=1, **kwargs)
        return found[0] if found else None

    @_explains(*_DATASET, options=("allow_pickle", "limit"))
    def find_all_datasets(self, dataset_name: str | None = None, sort: Any = None, lazy: bool = False,
                          **kwargs: Any) -> list:
        """Every dataset matching the query, loaded, newest first unless ``sort``.

        Args:
            dataset_name: The datasets' name. Default ``None``: any name.
            sort: PyMongo sort. Default ``None``: newest first.
            lazy: Default ``False``. ``True``: arrays come back as ``ChunkedArray`` (read on access).
            **kwargs: The query, plus the options ``allow_pickle`` (default ``False``) and ``limit``
                (default ``None``: all).

        Returns:
            A list of datasets (empty if nothing matches).
        """
        return _datasets.find_all_datasets(self._records, dataset_name, sort=sort, lazy=lazy, **kwargs)

    @_explains(*_DATASET)
    def find_dataset_records(self, dataset_name: str | None = None, sort: Any = None, limit: int | None = None,
                             as_frame: bool = False, **kwargs: Any) -> Any:
        """The records of matching datasets (tags, ``schema``, ``rows``, ``nbytes``), reading no blob.

        Args:
            dataset_name: A name, or a filter such as ``{"$in": [...]}``. Default ``None``: any.
            sort: PyMongo sort. Default ``None``: newest first.
            limit: At most this many. Default ``None``: all.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame (pandas needed).
            **kwargs: The query (MongoDB filter over the records' fields).

        Returns:
            A list of record dicts, or a DataFrame with ``as_frame=True``.
        """
        return _rows(_datasets.find_dataset_records(self._records, dataset_name, kwargs, sort=sort, limit=limit),
                     as_frame, "find_dataset_records")

    def append_dataset(self, dataset_name: str, rows: Any, **kwargs: Any) -> int:
        """Grow the newest matching dataset along axis 0 by ``rows``; return its new length.

        Only new chunks are written and the record is swapped atomically: readers see the old or the
        new length, never a torn one, and concurrent appends both land.

        Args:
            dataset_name: The dataset to grow.
            rows: New rows in the dataset's structure: each array with the same trailing shape and a
                dtype of the same kind (values are cast to the stored dtype; overflow is refused).
            **kwargs: The query picking the dataset (tags), plus the option ``sort`` (which match is
                grown; default newest).

        Returns:
            The dataset's new number of rows.

        Raises:
            NotFoundError: No dataset matches.
            InvalidArgumentError: ``rows`` do not fit the dataset.
            ConflictError: Concurrent appends won every retry; nothing was appended.

        Example::

            hub.append_dataset("events", [X_new, y_new])
        """
        return _datasets.append_dataset(self._records, dataset_name, rows, **kwargs)

    def open_zarr(self, dataset_name: str | None = None, sort: Any = None, **kwargs: Any) -> Any:
        """The newest (or first by ``sort``) matching dataset as a read-only ``zarr.Group`` (zarr v3).

        Its arrays are the dataset's arrays (``[X, y]`` -> ``"0"``, ``"1"``; dicts and nested lists
        become groups; a bare array is ``"data"``), served straight from the stored chunks: nothing
        is copied, chunks are read (and verified) when zarr asks for them. ``group.store`` opens with
        ``zarr.open_group(store, mode="r")``, ``xarray.open_zarr(store)`` (axis 0 is the dimension
        ``rows`` when the arrays share it) and ``dask.array.from_zarr(store, component="0")``.
        Writes through it are refused. Datasets saved before chunk format 2 are served too, each
        chunk re-encoded as it is read (``tensorhub upgrade`` rewrites them once). Needs zarr 3
        (``pip install 'tensorhub[zarr]'``).

        Args:
            dataset_name: The dataset's name. Default ``None``: any name.
            sort: PyMongo sort. Default ``None``: newest first.
            **kwargs: The query (tags, MongoDB filter).

        Returns:
            A read-only ``zarr.Group``.

        Raises:
            NotFoundError: No dataset matches.
            BackendNotInstalledError: zarr 3 is not installed.

        Example::

            group = hub.open_zarr("mnist")
            ds = xarray.open_zarr(group.store)
        """
        return _datasets.open_zarr(self._records, dataset_name, sort=sort, **kwargs)

    def upgrade_datasets(self, dataset_name: Any = None, dry_run: bool = False, **kwargs: Any) -> dict[str, int]:
        """Rewrite matching datasets saved in an older chunk format in the current one (zarr-readable).

        Old datasets load as they are; this makes their chunks zarr-decodable (every chunk a Blosc
        frame, the last one padded) so :meth:`open_zarr` serves them without re-encoding. Each
        record is swapped atomically after its new chunks are written; old chunks no record uses
        are then deleted. Also ``tensorhub upgrade``.

        Args:
            dataset_name: A name or a filter such as ``{"$in": [...]}``. Default ``None``: every dataset.
            dry_run: Default ``False``. ``True`` counts what would be rewritten and writes nothing.
            **kwargs: The query (tags, MongoDB filter).

        Returns:
            ``{"datasets": rewritten (or to rewrite), "arrays": ..., "current": already current}``.
        """
        return _datasets.upgrade_datasets(self._records, dataset_name, dry_run=dry_run, **kwargs)

    def stream_dataset(self, dataset_name: str, batch_size: int, shuffle: bool = True, seed: int | None = None,
                       epochs: int = 1, **kwargs: Any) -> Any:
        """Batches of a dataset (the saved structure, each array cut to ``batch_size`` rows), in bounded memory.

        Every row comes once per epoch; the same ``seed`` gives the same order. Memory stays bounded
        by ``2 * buffer_chunks`` chunks however large the dataset. The stream is picklable and, when
        torch is imported, a ``torch.utils.data.IterableDataset`` (``DataLoader(stream,
        batch_size=None, num_workers=4)``: each worker reads its own share). ``len(stream)`` is the
        number of batches this rank yields (its DataLoader workers together) over all epochs.

        Under DDP (``torch.distributed``) each rank reads its own share of every epoch and every rank
        yields the same number of batches, ``ceil(ceil(rows / world_size) / batch_size)`` per epoch
        (``drop_last=True``: ``rows // (world_size * batch_size)``), whatever its DataLoader workers.
        With ``drop_last=False`` the short ranks are padded with rows from the start of the epoch's
        order, so when ``rows`` does not divide by ``world_size`` fewer than ``world_size`` rows come
        twice; with ``drop_last=True`` no row comes twice and fewer than ``world_size * batch_size``
        are left out. The epoch's order depends on ``(seed, epoch)`` only; with ``seed=None`` rank 0's
        random seed is broadcast over the process group (so make the stream on every rank; for the
        whole dataset on one rank only, pass ``rank=0, world_size=1``).

        Args:
            dataset_name: The dataset (the newest match of the query).
            batch_size: Rows per batch, > 0.
            shuffle: Default ``True``: rows in an order shuffled by ``seed``; ``False`` keeps the
                stored order.
            seed: The shuffle's seed (>= 0). Default ``None``: a random one (rank 0's under DDP).
            epochs: Passes over the data, > 0. Default 1.
            **kwargs: The query picking the dataset, plus the options ``buffer_chunks`` (default 2),
                ``prefetch`` (reader threads, default 2), ``drop_last`` (default ``False``: keep a short
                final batch, and pad the short ranks under DDP), ``rank`` and ``world_size`` (given
                together; default: from the initialised ``torch.distributed`` process group, else the
                ``RANK``/``WORLD_SIZE`` environment variables, else a single process) and ``sort``.

        Returns:
            A ``DatasetStream`` (iterable of batches).

        Raises:
            NotFoundError: No dataset matches (the message names near misses).
            InvalidArgumentError: A non-positive ``batch_size``/``epochs``, a negative ``seed``, a
                ``rank`` outside ``[0, world_size)``, or a shuffled stream over several ranks without
                ``seed`` and without a process group to agree on one.
            ConfigurationError: ``RANK``/``WORLD_SIZE`` in the environment are not ints with
                ``0 <= RANK < WORLD_SIZE``.
            SerializationError: The arrays do not share their first-axis length.

        Example::

            for X, y in hub.stream_dataset("mnist", batch_size=256, seed=0, epochs=2):
                train_step(X, y)
        """
        from tensorhub.streaming import make_stream

        options = {k: kwargs.pop(k) for k in ("buffer_chunks", "prefetch", "drop_last", "rank", "world_size")
                   if k in kwargs}
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
        """Delete matching datasets and the chunks no other record uses; return how many were deleted.

        Args:
            **kwargs: The query (``dataset_name=``, tags, MongoDB filter). **With none, every dataset
                of the project is deleted.**

        Returns:
            The number of dataset records deleted.
        """
        return _datasets.delete_datasets(self._records, kwargs)

    find_top_dataset = find_dataset
    find_datasets = find_all_datasets

    # ------------------------------------------------------------------ models
    @_hints.refuses_near_options("example_inputs", "dynamic_shapes", "allow_pickle", "dataset", "task", "dataset_id",
                                 "task_id", "sess")
    def save_model(self, network: Any = None, model_name: str = "model", **kwargs: Any) -> Any:
        """Store a model; extra keywords are queryable tags (metrics such as ``test_accuracy``).

        Parameters are stored as chunked arrays, never pickled; tensors unchanged since an earlier save
        are not stored again. Inside a run or task the record gets ``task_id`` and ``attempt``.

        Args:
            network: A ``torch.nn.Module`` (``tensorhub[torch]``), a scikit-learn estimator
                (``tensorhub[sklearn]``), a (nested) list/tuple/dict of numpy arrays, or a type a
                registered :class:`~tensorhub.ModelAdapter` handles. Required.
            model_name: A non-empty string. Default ``"model"``.
            **kwargs: Tags, plus the options ``example_inputs`` (PyTorch: a tuple of inputs; also stores
                a ``torch.export`` program loadable without the class), ``dynamic_shapes`` (passed to
                ``torch.export``), ``dataset``/``task`` (a record or its id: lineage stored as
                ``dataset_id``/``task_id``; the record must exist) and ``allow_pickle`` (default
                ``False``). ``sess`` is ignored with a warning. A near miss of an option is refused.

        Returns:
            The new record's ``_id``.

        Raises:
            SerializationError: No adapter handles ``network``, or it needs ``allow_pickle=True``.
            NotFoundError: ``dataset=``/``task=`` names a record that does not exist.

        Example::

            hub.save_model(net, "mlp", test_accuracy=0.97, dataset=mnist_record, example_inputs=(x,))
        """
        _drop_sess(kwargs)
        allow_pickle = bool(kwargs.pop("allow_pickle", False))
        return _models.save_model(self._records, network, model_name, allow_pickle=allow_pickle, **kwargs)

    @_explains(*_MODEL, options=(*_MODEL_LOAD_OPTIONS, "limit"))
    def find_all_models(self, sort: Any = None, model_name: str | None = None, **kwargs: Any) -> list:
        """Every model matching the query, loaded, newest first; each carries ``tensorhub_record``.

        A loaded model also exposes each record field as ``model._<field>`` (``net._test_accuracy``).
        A shared store is untrusted input: by default a PyTorch class path resolves only to a
        ``torch.nn.Module`` subclass in a module this process has already imported, and scikit-learn
        models hold only the types skops trusts by default.

        Args:
            sort: PyMongo sort, e.g. ``[("test_accuracy", -1)]``. Default ``None``: newest first.
            model_name: The models' name. Default ``None``: any name.
            **kwargs: The query (tags, MongoDB filter; ``dataset=``/``task=`` a record or id: the
                models trained on a dataset or by a task), plus the options ``into`` (PyTorch: load the
                parameters into this built module, names and shapes checked), ``trusted`` (``True``:
                trust whoever saved the models; a list of module prefixes such as ``["mypkg.models"]``,
                for skops also exact type names), ``allow_pickle`` (default ``False``) and ``limit``.
                ``sess`` is ignored.

        Returns:
            A list of models (empty if nothing matches).

        Raises:
            SerializationError: A record names a class or type that is not trusted (see ``into=``
                and ``trusted=``), or needs ``allow_pickle=True``.
        """
        _drop_sess(kwargs)
        return _models.find_all_models(self._records, model_name, sort=sort, **kwargs)

    @_explains(*_MODEL, options=_MODEL_LOAD_OPTIONS)
    def find_model(self, sort: Any = None, model_name: str | None = None, **kwargs: Any) -> Any:
        """The newest (or first by ``sort``) model matching the query, loaded, or ``None``.

        Args:
            sort: PyMongo sort, e.g. ``[("test_accuracy", -1)]`` for the best. Default ``None``: newest.
            model_name: The model's name. Default ``None``: any name.
            **kwargs: The query, plus the options ``into``, ``trusted`` and ``allow_pickle`` as in
                :meth:`find_all_models`.

        Returns:
            The model (with ``tensorhub_record`` and ``_<field>`` attributes), or ``None``.

        Example::

            net = hub.find_model(sort=[("test_accuracy", -1)])
            same = hub.find_model(model_name="mlp", into=MLP())
        """
        found = self.find_all_models(sort=sort, model_name=model_name, limit=1, **kwargs)
        return found[0] if found else None

    @_explains(*_MODEL)
    def delete_model(self, **kwargs: Any) -> int:
        """Delete matching models and the chunks no other record uses; return how many were deleted.

        Args:
            **kwargs: The query (``model_name=``, tags, ``dataset=``/``task=``, MongoDB filter).
                **With none, every model of the project is deleted.**

        Returns:
            The number of model records deleted.
        """
        return _models.delete_models(self._records, kwargs)

    def export_model(self, query: Any, path: Any, sort: Any = None, example_inputs: Any = None,
                     trusted: Any = None, allow_pickle: bool = False, **kwargs: Any) -> Any:
        """Write the newest (or first by ``sort``) matching model to a file other tools read; return its path.

        ``*.safetensors``: the parameters of any ``params`` or ``torch`` model, read from their
        chunks (no model is rebuilt, nothing of the record is imported): torch models under their
        state-dict keys, parameter sets under their structure's path (``"0"``, ``"dense.w"``).
        ``*.onnx``: a torch model, rebuilt as :meth:`find_model` does and written by
        ``torch.onnx.export`` (needs ``onnx`` and ``onnxscript``: ``pip install 'tensorhub[onnx]'``).
        The file is written whole or not at all.

        Args:
            query: A model name, a filter dict (``{"model_name": "mlp", "step": 10}``), or ``None``: any model.
            path: The file to write: ``*.safetensors`` or ``*.onnx`` (the suffix picks the format).
            sort: PyMongo sort. Default ``None``: newest first.
            example_inputs: ONNX only: the inputs to trace with (a tensor or a tuple of them). Default
                ``None``: zeros shaped as the inputs the model was saved with (``example_inputs=`` of
                :meth:`save_model`); a model saved without them needs this.
            trusted: ONNX only, as in :meth:`find_all_models`: which modules a class path may import.
            allow_pickle: As in :meth:`find_all_models`. Default ``False``.
            **kwargs: More of the query (tags, MongoDB filter, ``dataset=``/``task=``).

        Returns:
            The path written (a ``pathlib.Path``).

        Raises:
            NotFoundError: No model matches.
            InvalidArgumentError: The suffix is neither ``.safetensors`` nor ``.onnx``.
            SerializationError: The model is not a parameter set (scikit-learn), an array's dtype has no
                safetensors type, or torch.onnx cannot export the model.

        Example::

            hub.export_model("mlp", "mlp.safetensors")
            hub.export_model({"model_name": "cnn"}, "cnn.onnx", sort=[("accuracy", -1)])
        """
        from tensorhub.models._export import export_model

        return export_model(self._records, query, path, sort=sort, example_inputs=example_inputs, trusted=trusted,
                            allow_pickle=allow_pickle, **kwargs)

    @_explains(*_MODEL)
    def compare_models(self, model_name: str | None = None, keys: Any = None, sort: Any = None,
                       as_frame: bool = False, limit: int | None = None, **kwargs: Any) -> Any:
        """One row per matching model (``model_name``, ``time``, ``id``, ``adapter``, metrics), best first.

        Reads records only (no model is loaded).

        Args:
            model_name: A name or a filter such as ``{"$in": [...]}``. Default ``None``: any.
            keys: Field names (dotted paths allowed) to show and rank by. Default ``None``: every
                numeric field saved with the models.
            sort: PyMongo sort over the row's columns. Default ``None``: the first of ``keys``
                descending (models without it last), else newest first.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame.
            limit: At most this many models. Default ``None``: all.
            **kwargs: The query over the models' fields.

        Returns:
            A list of row dicts, or a DataFrame with ``as_frame=True``.

        Example::

            hub.compare_models("mlp", keys=["test_accuracy", "loss"])   # best test_accuracy first
        """
        return _models.compare_models(self._records, model_name, keys=keys, sort=sort, as_frame=as_frame,
                                      limit=limit, **kwargs)

    find_top_model = find_model
    delete_models = delete_model

    # ------------------------------------------------------------------ logs
    # one line each, over the table logs.COLLECTIONS: the names, signatures and docstrings stay
    # visible to help() and to type checkers
    def save_training_log(self, **kwargs: Any) -> Any:
        """Record one training log row whose fields are the keywords; return its ``_id``.

        The call returns once the row is durable. Inside a run or task the row also gets ``task_id``
        and ``attempt``. For a training loop, :meth:`log` (buffered, batched) is cheaper per row.

        Args:
            **kwargs: The row's fields (``epoch=3, loss=0.2``); values as for tags.

        Returns:
            The row's ``_id``.

        Example::

            hub.save_training_log(epoch=3, loss=0.2)
        """
        return _logs.save_logs(self._records, "training", [kwargs])[0]

    def save_validation_log(self, **kwargs: Any) -> Any:
        """Record one validation log row whose fields are the keywords; return its ``_id``.

        The call returns once the row is durable. Inside a run or task the row also gets ``task_id``
        and ``attempt``. For a training loop, :meth:`log` (buffered, batched) is cheaper per row.

        Args:
            **kwargs: The row's fields (``epoch=3, acc=0.9``); values as for tags.

        Returns:
            The row's ``_id``.

        Example::

            hub.save_validation_log(epoch=3, acc=0.9)
        """
        return _logs.save_logs(self._records, "validation", [kwargs])[0]

    def save_testing_log(self, **kwargs: Any) -> Any:
        """Record one testing log row whose fields are the keywords; return its ``_id``.

        The call returns once the row is durable. Inside a run or task the row also gets ``task_id``
        and ``attempt``. For a training loop, :meth:`log` (buffered, batched) is cheaper per row.

        Args:
            **kwargs: The row's fields (``acc=0.97``); values as for tags.

        Returns:
            The row's ``_id``.

        Example::

            hub.save_testing_log(acc=0.97)
        """
        return _logs.save_logs(self._records, "testing", [kwargs])[0]

    def save_training_logs(self, rows: Any) -> list:
        """Record many training log rows in one batch (one durable write); return their ids in order.

        Args:
            rows: An iterable of dicts, one per row (a dict or a string is refused).

        Returns:
            The rows' ``_id`` values, in order.

        Raises:
            InvalidArgumentTypeError: ``rows`` is not an iterable of dicts.
        """
        return _logs.save_logs(self._records, "training", rows)

    def save_validation_logs(self, rows: Any) -> list:
        """Record many validation log rows in one batch (one durable write); return their ids in order.

        Args:
            rows: An iterable of dicts, one per row (a dict or a string is refused).

        Returns:
            The rows' ``_id`` values, in order.

        Raises:
            InvalidArgumentTypeError: ``rows`` is not an iterable of dicts.
        """
        return _logs.save_logs(self._records, "validation", rows)

    def save_testing_logs(self, rows: Any) -> list:
        """Record many testing log rows in one batch (one durable write); return their ids in order.

        Args:
            rows: An iterable of dicts, one per row (a dict or a string is refused).

        Returns:
            The rows' ``_id`` values, in order.

        Raises:
            InvalidArgumentTypeError: ``rows`` is not an iterable of dicts.
        """
        return _logs.save_logs(self._records, "testing", rows)

    @_explains("training log", _logs.COLLECTIONS["training"])
    def find_training_logs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                           **kwargs: Any) -> Any:
        """Training log rows matching the query, newest first unless ``sort``.

        Args:
            sort: PyMongo sort, e.g. ``[("step", 1)]``. Default ``None``: newest first.
            limit: At most this many rows. Default ``None``: all.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame (pandas needed).
            **kwargs: The query: fields and MongoDB filter; ``task_id=`` (a task or run, or its id)
                and ``attempt=`` pick one run's rows.

        Returns:
            A list of row dicts, or a DataFrame with ``as_frame=True``.

        Example::

            hub.find_training_logs(task_id=run.id, attempt=1, sort=[("step", 1)])
        """
        return _rows(_logs.find_logs(self._records, "training", kwargs, sort=sort, limit=limit), as_frame,
                     "find_training_logs")

    @_explains("validation log", _logs.COLLECTIONS["validation"])
    def find_validation_logs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                             **kwargs: Any) -> Any:
        """Validation log rows matching the query, newest first unless ``sort``.

        Args:
            sort: PyMongo sort, e.g. ``[("step", 1)]``. Default ``None``: newest first.
            limit: At most this many rows. Default ``None``: all.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame (pandas needed).
            **kwargs: The query: fields and MongoDB filter; ``task_id=`` (a task or run, or its id)
                and ``attempt=`` pick one run's rows.

        Returns:
            A list of row dicts, or a DataFrame with ``as_frame=True``.

        Example::

            hub.find_validation_logs(task_id=run.id, attempt=1, sort=[("step", 1)])
        """
        return _rows(_logs.find_logs(self._records, "validation", kwargs, sort=sort, limit=limit), as_frame,
                     "find_validation_logs")

    @_explains("testing log", _logs.COLLECTIONS["testing"])
    def find_testing_logs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                          **kwargs: Any) -> Any:
        """Testing log rows matching the query, newest first unless ``sort``.

        Args:
            sort: PyMongo sort, e.g. ``[("step", 1)]``. Default ``None``: newest first.
            limit: At most this many rows. Default ``None``: all.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame (pandas needed).
            **kwargs: The query: fields and MongoDB filter; ``task_id=`` (a task or run, or its id)
                and ``attempt=`` pick one run's rows.

        Returns:
            A list of row dicts, or a DataFrame with ``as_frame=True``.

        Example::

            hub.find_testing_logs(task_id=run.id, attempt=1, sort=[("step", 1)])
        """
        return _rows(_logs.find_logs(self._records, "testing", kwargs, sort=sort, limit=limit), as_frame,
                     "find_testing_logs")

    @_explains("training log", _logs.COLLECTIONS["training"])
    def delete_training_log(self, **kwargs: Any) -> int:
        """Delete matching training log rows; return how many were deleted.

        Args:
            **kwargs: The query. **With none, every training log row of the project is deleted.**

        Returns:
            The number of rows deleted.
        """
        return _logs.delete_logs(self._records, "training", kwargs)

    @_explains("validation log", _logs.COLLECTIONS["validation"])
    def delete_validation_log(self, **kwargs: Any) -> int:
        """Delete matching validation log rows; return how many were deleted.

        Args:
            **kwargs: The query. **With none, every validation log row of the project is deleted.**

        Returns:
            The number of rows deleted.
        """
        return _logs.delete_logs(self._records, "validation", kwargs)

    @_explains("testing log", _logs.COLLECTIONS["testing"])
    def delete_testing_log(self, **kwargs: Any) -> int:
        """Delete matching testing log rows; return how many were deleted.

        Args:
            **kwargs: The query. **With none, every testing log row of the project is deleted.**

        Returns:
            The number of rows deleted.
        """
        return _logs.delete_logs(self._records, "testing", kwargs)

    # ------------------------------------------------------------------ tasks
    @_hints.refuses_near_options(*_TASK_OPTIONS)
    def create_task(self, task_name: str | None = None, script: Any = None, hyper_parameters: dict | None = None,
                    saved_result_keys: list[str] | None = None, **kwargs: Any) -> Any:
        """Queue a run of ``script`` with ``hyper_parameters`` as its globals; return the task's ``_id``.

        The script's text is read and compiled now and stored in the record, so runners need no
        copy. A runner (:meth:`run_task`, ``tensorhub worker``) claims it, runs it in a child process
        and records ``result`` (the ``saved_result_keys`` globals) and the status: ``finished``,
        ``failed`` (error, traceback, ``exit_code``) or ``cancelled``.

        Args:
            task_name: The queue's name, a non-empty string. Required.
            script: The path of a Python file. Required.
            hyper_parameters: A dict whose entries become the script's global variables (names must
                be identifiers). Default ``None``: none.
            saved_result_keys: Names of the script's globals stored as the task's ``result`` when it
                ends (one never set fails the task). Default ``None``: none.
            **kwargs: Tags, plus the options ``max_attempts`` (default 3: claims, which bound the
                runners that die or stall), ``timeout`` (seconds, default ``None``: no limit; a child
                process past it is killed and the task fails), ``priority`` (default 0: higher first)
                and ``retry_on_error`` (default 0: how many times a failed attempt is re-queued before
                the task is ``failed``; retries do not use ``max_attempts``). A near miss of a
                parameter or option (``hyperparams=``, ``max_attempt=``) is refused.

        Returns:
            The task record's ``_id``.

        Raises:
            ScriptNotFoundError: The script is missing or unreadable.
            ScriptSyntaxError: The script does not compile.
            InvalidArgumentTypeError: A wrong type, or a near-miss keyword (``did you mean ...?``).
            InvalidArgumentError: A bad option value or a reserved tag name.

        Example::

            hub.create_task("mnist", "train.py", dict(n_units=800), saved_result_keys=["test_accuracy"])
        """
        return self._queue.create(task_name, script, [hyper_parameters], saved_result_keys, **kwargs)[0]

    @_hints.refuses_near_options(*_TASK_OPTIONS, "hyper_parameters")
    def create_sweep(self, task_name: str, script: Any, grid: dict[str, list] | None = None,
                     points: list[dict] | None = None, saved_result_keys: list[str] | None = None,
                     **kwargs: Any) -> list:
        """Create one task per hyper-parameter point, in one write (all or none); return their ids.

        The points are every combination of ``grid``'s value lists, then each dict of ``points``.

        Args:
            task_name: The queue's name.
            script: The path of a Python file (as :meth:`create_task`).
            grid: ``{"name": [values], ...}``: every combination is a task. Default ``None``.
            points: A list of hyper-parameter dicts, one task each. Default ``None``. At least one of
                ``grid``/``points`` is required.
            saved_result_keys: As :meth:`create_task`. Default ``None``.
            **kwargs: Tags, plus the options of :meth:`create_task` (``max_attempts``, ``timeout``,
                ``priority``, ``retry_on_error``).

        Returns:
            The tasks' ``_id`` values, in point order.

        Raises:
            InvalidArgumentError: No ``grid``/``points``, or a grid value list that is empty.

        Example::

            hub.create_sweep("mnist", "train.py", grid={"lr": [0.1, 0.01], "units": [400, 800]})  # 4 tasks
        """
        return self._queue.create(task_name, script, _tasks.sweep_points(grid, points), saved_result_keys, **kwargs)

    def create_study(self, task_name: str, script: Any, space: dict[str, Any], sampler: Any = "tpe",
                     n_trials: int | None = None, direction: str = "minimize", objective_key: str = "val_loss",
                     parallelism: int = 1, pruner: Any = None, seed: int | None = None,
                     saved_result_keys: list[str] | None = None, **kwargs: Any) -> dict:
        """Record an adaptive hyper-parameter search whose trials are tasks; return the study record.

        Nothing is queued yet: a driver (:meth:`run_study`, ``tensorhub study NAME``) keeps at most
        ``parallelism`` trials queued or running, each one's parameters chosen by Optuna's sampler
        told every ended trial's objective, until ``n_trials`` were queued and all ended; runners
        (``tensorhub worker``) run them as any task (``task_name`` is the study's name). The state
        is in the store: a driver restarted after a crash continues the study, and no trial number
        is ever queued twice. A trial's objective is ``result[objective_key]``, else the last value
        of ``objective_key`` it logged (``hub.log``); a pruned trial ends ``pruned``. Needs Optuna
        (``pip install tensorhub[optuna]``). Calling it again with the same arguments returns the
        existing study (a driver script rerun resumes it).

        Args:
            task_name: The study's name, also its trials' ``task_name``. Required.
            script: The path of a Python file (as :meth:`create_task`); each trial runs it with its
                parameters as globals. Required.
            space: ``{name: range}``, each range an Optuna distribution, ``(low, high)`` (floats),
                ``(low, high, "log")`` (log-scaled floats), ``(low, high, "int")`` (integers) or a
                list (a categorical choice). Required.
            sampler: ``"tpe"`` (default), ``"random"``, ``"grid"`` (lists and int ranges only), or
                an Optuna sampler object (not storable: pass it to :meth:`run_study` too).
            n_trials: How many trials the study queues in all, >= 1. Required.
            direction: ``"minimize"`` (default) or ``"maximize"`` the objective.
            objective_key: The metric to optimise. Default ``"val_loss"``.
            parallelism: How many trials may be queued or running at once, >= 1. Default 1.
            pruner: ``None`` (default: no pruning), ``"median"`` (Optuna's MedianPruner), or an Optuna
                pruner object (pass it to :meth:`run_study` too). It reads the values of
                ``objective_key`` a running trial logs by ``step``.
            seed: The built-in sampler's seed. Default ``None``: random.
            saved_result_keys: The script globals stored as each trial's result. Default ``None``:
                ``[objective_key]`` (pass ``[]`` for a script that only logs its objective).
            **kwargs: The task options of :meth:`create_task` for every trial (``max_attempts``,
                ``timeout``, ``priority``, ``retry_on_error``).

        Returns:
            The study record (``_id``, ``study_name``, ``space``, ``n_trials``...).

        Raises:
            OptunaNotInstalledError: Optuna is missing (an ``ImportError``).
            InvalidArgumentError: A bad range, sampler, pruner, count or option, or a study of that
                name with another definition.
            InvalidArgumentTypeError: An argument of a wrong type.
            ScriptNotFoundError: The script is missing or unreadable.

        Example::

            hub.create_study("quad", "train.py", space={"x": (-5.0, 5.0), "lr": (1e-4, 1e-1, "log")},
                             n_trials=30, parallelism=3, seed=0)
            hub.run_study("quad")   # while `tensorhub worker URI --task-name quad` runners run the trials
        """
        unknown = sorted(set(kwargs) - set(_TASK_OPTIONS))
        if unknown:
            raise InvalidArgumentError(f"create_study got unknown option(s) {unknown}; its task options are "
                                       f"{list(_TASK_OPTIONS)}")
        return _study.create_study(self._records, task_name, script, space, sampler=sampler, n_trials=n_trials,
                                   direction=direction, objective_key=objective_key, parallelism=parallelism,
                                   pruner=pruner, seed=seed, saved_result_keys=saved_result_keys, task_options=kwargs)

    def run_study(self, task_name: str, sampler: Any = None, pruner: Any = None, timeout: float | None = None,
                  poll: float = 0.5, wait: bool = True) -> dict[str, Any]:
        """Drive a study (:meth:`create_study`) until all its trials ended; return what it found.

        Reads the study's trials from the store (so a driver restarted after a crash continues
        where the last one stopped), tells Optuna each ended trial, asks the pruner about running
        ones (a pruned trial's runner stops it: status ``pruned``), and queues new trials while
        fewer than ``parallelism`` are queued or running. Runners run the trials. Two drivers of
        one study at once queue no trial twice. Also ``tensorhub study NAME``.

        Args:
            task_name: The study's name. Required.
            sampler: The Optuna sampler object of a study created with one. Default ``None``: the
                study's own (``"tpe"``, ``"random"`` or ``"grid"``, with its seed).
            pruner: The Optuna pruner object of a study created with one. Default ``None``: the
                study's own.
            timeout: Seconds to drive at most (>= 0). Default ``None``: until the study is done.
            poll: Longest wait, in seconds, between two looks at the store (> 0; it starts at 10 ms
                and grows while nothing changes). Default 0.5.
            wait: Default ``True``. ``False`` makes one pass (tell, prune, queue) and returns.

        Returns:
            ``{"study_name", "queued", "ended", "n_trials", "done", "by_status": {status: n},
            "best_params", "best_value", "best_trial"}`` (the best among finished trials).

        Raises:
            NotFoundError: No study of that name in this project.
            TaskTimeoutError: The study was not done after ``timeout`` seconds (run it again to go on).
            OptunaNotInstalledError: Optuna is missing.
        """
        if timeout is not None:
            _check_seconds("timeout", timeout, zero=True)
        _check_seconds("poll", poll, zero=False)
        return _study.run_study(self._records, self._queue, task_name, sampler=sampler, pruner=pruner,
                                timeout=timeout, poll=poll, wait=wait)

    @_explains(*_TASK)
    def run_task(self, task_name: str | None = None, sort: Any = None, lease: float = _tasks.DEFAULT_LEASE,
                 in_process: bool = False, **kwargs: Any) -> bool:
        """Claim one pending task (highest priority, oldest first unless ``sort``) and run it to its end.

        The claim is a lease renewed every ``lease``/3 seconds; a runner stalled for a whole lease
        loses the task to another runner (at least once, recorded exactly once).

        Args:
            task_name: Only tasks of this name. Default ``None``: any.
            sort: PyMongo sort choosing which pending task. Default ``None``: priority, then oldest.
            lease: Seconds a claim lasts without renewal, > 0. Default 60.
            in_process: Default ``False``: the script runs in a child process (killed with every
                process it started when the task ends). ``True`` runs it in this process
                (TensorLayer's way; ``timeout`` is not enforced then).
            **kwargs: The query over task fields (tags).

        Returns:
            ``True`` if a task was claimed and run (whatever its outcome), ``False`` if none was
            available.

        Raises:
            InvalidArgumentError: ``lease`` is not a positive number of seconds.
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
        """Whether any matching task is still ``pending`` or ``running``.

        Args:
            task_name: Only tasks of this name. Default ``None``: any.
            **kwargs: The query over task fields.

        Returns:
            ``True`` if at least one matching task is unfinished.
        """
        return self._queue.has_unfinished(_task_query(task_name, kwargs))

    @_explains(*_TASK, options=("limit",))
    def find_tasks(self, task_name: str | None = None, sort: Any = None, as_frame: bool = False,
                   **kwargs: Any) -> Any:
        """Task records matching the query, newest first unless ``sort``.

        Interactive runs (:meth:`start_run`) are tasks too, with ``run_type="interactive"``.

        Args:
            task_name: Only tasks of this name. Default ``None``: any.
            sort: PyMongo sort. Default ``None``: newest first.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame.
            **kwargs: The query (``status="failed"``, tags, MongoDB filter), plus the option ``limit``
                (default ``None``: all).

        Returns:
            A list of task records (``status``, ``hyper_parameters``, ``result``, ``error``,
            ``attempts``, ``owner``...), or a DataFrame with ``as_frame=True``.
        """
        limit = kwargs.pop("limit", None)
        return _rows(self._queue.find(_task_query(task_name, kwargs), sort=sort, limit=limit), as_frame, "find_tasks")

    @_explains(*_TASK)
    def wait_for_tasks(self, task_name: str | None = None, timeout: float | None = None, poll: float = 0.5,
                       **kwargs: Any) -> list[dict]:
        """Block until no matching task is ``pending`` or ``running``; return the matching tasks.

        Shows a progress bar when a terminal watches (``$TENSORHUB_PROGRESS``).

        Args:
            task_name: Only tasks of this name. Default ``None``: any.
            timeout: Seconds to wait at most (>= 0). Default ``None``: no limit.
            poll: Seconds between two looks at the store, > 0. Default 0.5.
            **kwargs: The query over task fields.

        Returns:
            The matching task records, once none is unfinished.

        Raises:
            TaskTimeoutError: Tasks were still unfinished after ``timeout`` seconds.
        """
        if timeout is not None:
            _check_seconds("timeout", timeout, zero=True)
        _check_seconds("poll", poll, zero=False)
        return self._queue.wait(_task_query(task_name, kwargs), timeout=timeout, poll=poll)

    @_explains(*_TASK)
    def cancel_tasks(self, **kwargs: Any) -> int:
        """Cancel matching tasks: pending ones never start, running ones are stopped.

        A running task's runner sees the request within about a second, kills the script and records
        ``cancelled`` (never ``finished``, even if the script was just ending). An interactive run
        sets ``run.cancel_requested`` within about a second and ends ``cancelled`` when it ends. Also
        ``tensorhub cancel``.

        Args:
            **kwargs: The query over task fields (``task_name=``, ``_id=``...). **With none, every
                pending or running task of the project.**

        Returns:
            How many tasks were affected: pending ones cancelled plus running ones newly asked to stop.
        """
        return self._queue.cancel(kwargs)

    def requeue_tasks(self, **kwargs: Any) -> int:
        """Put matching ``failed`` and ``cancelled`` tasks back to ``pending``, so runners run them again.

        Their history is kept (``errors``, ``attempts``); ``attempts_left`` and the retries of
        ``retry_on_error`` start over, and the last outcome (result, error, owner) is cleared.
        Pending, running and finished tasks are left alone. Also ``tensorhub requeue``.

        Args:
            **kwargs: The query over task fields. **With none, every failed or cancelled task of the
                project.**

        Returns:
            How many tasks were re-queued.
        """
        return self._queue.requeue(kwargs)

    @_explains(*_TASK)
    def delete_tasks(self, **kwargs: Any) -> int:
        """Delete matching task records, in any state; return how many were deleted.

        Args:
            **kwargs: The query over task fields. **With none, every task (and run) of the project.**

        Returns:
            The number of task records deleted.
        """
        return self._queue.delete(kwargs)

    # ------------------------------------------------------------------ runs
    def start_run(self, run_name: str | None = None, *, lease: float = _tasks.DEFAULT_LEASE,
                  **params: Any) -> _runs.Run:
        """Start an interactive run (a notebook, a script run by hand) with ``params`` as its parameters.

        The run is a task record (``run_type="interactive"``), ``running`` and owned by this process,
        its lease renewed every ``lease``/3 seconds while the process lives. It ends ``finished``
        (result: the last value of each logged metric, updated by ``run.end(result={...})``),
        ``failed`` with the traceback if the ``with`` block raised, ``cancelled`` if
        :meth:`cancel_tasks` stopped it, or, if this process dies, ``failed`` once its lease runs out.
        While it is open, every log row, model and dataset saved to this store from this process
        carries its ``task_id`` and ``attempt`` (1). No runner ever claims it.

        Args:
            run_name: The run's name (its ``task_name``). Default ``None``: ``"interactive"``.
            lease: Keyword-only. Seconds after which a dead process's run ends ``failed``, > 0.
                Default 60.
            **params: The run's parameters (stored as ``hyper_parameters``; numpy/torch scalars are
                converted).

        Returns:
            A :class:`~tensorhub.runs.Run`: ``run.log(...)``, ``run.end(result=None)``, ``run.id``; a
            context manager. Without ``with``, call ``run.end()`` (at exit it ends by itself).

        Example::

            with hub.start_run("mlp", lr=0.1, units=800) as run:
                for step in range(1000):
                    run.log(step=step, loss=loss)          # or hub.log(...)
                run.log(kind="validation", acc=0.93)
                hub.save_model(net, "mlp")                # stamped with the run's task_id and attempt
        """
        _check_seconds("lease", lease, zero=False)
        return _runs.start_run(self._records, self._queue, run_name, lease=lease, params=params)

    def log(self, step: int | None = None, kind: str = "training", **metrics: Any) -> None:
        """Log one row of ``metrics`` to the current run, buffered: the logging call of training loops.

        The current run is the newest interactive run of this process on this store, else the task
        this code runs as (``TensorHub().log(...)`` in a task's script). Rows are written in batches
        (every 1000 rows, after 2 s, at the run's end, when the hub closes, at exit), each with the
        ``time`` it was logged at, ``step``, ``task_id`` and ``attempt``.

        Args:
            step: The row's step. Default ``None``: the previous step of this ``kind`` + 1 (0 first).
            kind: ``"training"`` (default), ``"validation"`` or ``"testing"``: which logs.
            **metrics: The values: Python numbers/strings, numpy scalars, 0-d torch tensors (at
                least one).

        Raises:
            NoActiveRunError: No run is current (start one with :meth:`start_run`).
            InvalidArgumentError: An unknown ``kind``, no metric, or a metric named as a field
                tensorhub sets (``task_id``, ``time``...).

        Example::

            hub.log(step=10, loss=0.25, acc=0.91)
        """
        _run_log.current_run(self._records).log(step, kind, **metrics)

    def checkpoint(self, network: Any, step: Any, model_name: str | None = None, **kwargs: Any) -> Any:
        """Save ``network`` as a checkpoint of the current run at ``step`` (``run.checkpoint``, as ``hub.log`` is ``run.log``).

        The current run is the one :meth:`log` writes to: in a task's script, the task attempt. A
        checkpoint is a model record (chunked and deduplicated as ``save_model``'s) with the run's
        ``task_id``, ``attempt`` and ``checkpoint_step``; :meth:`latest_checkpoint` finds it.

        Args:
            network: What :meth:`save_model` stores (a ``torch.nn.Module``, a list/dict of arrays...).
            step: The step (or epoch) it is taken at, an int: the highest is the latest.
            model_name: Default ``None``: ``"<run name>/checkpoint"``.
            **kwargs: Tags and ``save_model``'s options (``dataset=``, ``allow_pickle=``...), not ``task=``.

        Returns:
            The checkpoint's model record ``_id``.

        Raises:
            NoActiveRunError: No run is current.

        Example::

            hub.checkpoint(net, step=epoch, val_loss=val_loss)
        """
        return _run_log.current_run(self._records).checkpoint(network, step, model_name, **kwargs)

    def latest_checkpoint(self, run: Any = None, **kwargs: Any) -> Any:
        """The newest checkpoint (highest ``checkpoint_step``) of a run over all its attempts, loaded, or ``None``.

        A task retried (``retry_on_error``) or run again after its runner died runs as attempt 2,
        3...: its script resumes from what an earlier attempt checkpointed instead of from scratch.

        Args:
            run: A :class:`~tensorhub.runs.Run`, a row of :meth:`find_runs`, a task record, or an id.
                Default ``None``: the current run (in a task's script: the task).
            **kwargs: The load options ``into`` (PyTorch: load into this built module), ``trusted``
                and ``allow_pickle``, as in :meth:`find_all_models`.

        Returns:
            The model (with ``tensorhub_record``; its ``checkpoint_step`` also as
            ``model._checkpoint_step``), or ``None`` when the run has no checkpoint.

        Raises:
            NoActiveRunError: ``run`` is ``None`` and no run is current.

        Example::

            net = Net()
            found = hub.latest_checkpoint(into=net)          # in a task's script
            start = 0 if found is None else found._checkpoint_step + 1
        """
        if run is None:
            run = _run_log.current_run(self._records)
        return _checkpoints.latest_checkpoint(self._records, run, **kwargs)

    @_explains(*_TASK)
    def find_runs(self, sort: Any = None, limit: int | None = None, as_frame: bool = False,
                  metrics: bool = True, **kwargs: Any) -> Any:
        """Runs (tasks and interactive runs) matching the query, newest first, with their metrics.

        Ends, first, the interactive runs whose process died (lease expired) as ``failed``.

        Args:
            sort: PyMongo sort over task fields. Default ``None``: newest first.
            limit: At most this many runs. Default ``None``: all.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame.
            metrics: Default ``True``: summarize each run's logged metrics (from the runs' log digests, kept as rows are written: no row is read).
                ``False``: ``metrics`` is ``{}`` and no log row is read (a listing of runs with
                many rows, or one refreshed every second).
            **kwargs: The query over task fields: ``run_name=`` (= ``task_name=``), ``status=``,
                ``run_type="interactive"`` or ``"task"``, ``_id=``...

        Returns:
            One row per run: ``id``, ``run_name``, ``run_type``, ``status``, ``attempt``, ``host``,
            ``pid``, ``started_at``, ``finished_at``, ``duration_s``, ``params``, ``result``,
            ``error`` and ``metrics`` (per metric logged in the run: ``final``, ``min``, ``max``,
            ``count``; validation/testing ones as ``validation_<name>``/``testing_<name>``).
        """
        return _rows(_runs.find_runs(self._records, self._queue, sort=sort, limit=limit, metrics=metrics, **kwargs),
                     as_frame, "find_runs", _runs.RUN_COLUMNS)

    def compare_runs(self, run_name: str | None = None, keys: Any = None, sort: Any = None,
                     as_frame: bool = False, limit: int | None = None, **kwargs: Any) -> Any:
        """One flat row per run, best first: parameters, final and best metrics side by side.

        Args:
            run_name: Only runs of this name. Default ``None``: any.
            keys: Metric names to show and rank by (result fields or logged metrics, validation ones
                as ``validation_<name>``). Default ``None``: every numeric result and logged metric.
            sort: A column name (descending) or ``[(column, 1 | -1), ...]``. Default ``None``: the
                first key, descending. A key sorted ascending has its minimum as ``best_<key>``.
            as_frame: Default ``False``. ``True`` returns a pandas DataFrame.
            limit: At most this many runs (the newest). Default ``None``: all.
            **kwargs: The query over task fields, as :meth:`find_runs`.

        Returns:
            Rows with ``run_name``, ``id``, ``status``, ``attempt``, ``duration_s``,
            ``params.<name>`` per parameter, and per key its final value (from the result, else the
            last logged) and ``best_<key>`` (over the run's logs, for logged metrics).

        Example::

            hub.compare_runs("mlp", keys=["validation_acc", "loss"])
            hub.compare_runs("mlp", keys=["loss"], sort=[("loss", 1)])   # lowest loss first
        """
        return _rows(_runs.compare_runs(self._records, self._queue, run_name, keys=keys, sort=sort, limit=limit,
                                        **kwargs), as_frame, "compare_runs")

    def find_run_records(self, run: Any) -> dict[str, Any]:
        """What a run saved: its log row counts and the ids of its models and datasets.

        Args:
            run: A task or run record, or its id (``run.id``, an ``ObjectId`` or its hex string).

        Returns:
            ``{"training_logs": n, "validation_logs": n, "testing_logs": n, "models": [ids],
            "datasets": [ids]}``.
        """
        return _runs.find_run_records(self._records, run)

    # ------------------------------------------------------------------ plots
    def plot_logs(self, metric: str, runs: Any = None, x: str = "step", kind: str = "training",
                  max_points: int = 2000, **kwargs: Any) -> Any:
        """A plotly figure of ``metric``'s curve, one line per run and attempt (the dashboard's chart).

        Each line is downsampled to at most ``max_points`` points (the lowest and highest value of
        each bucket of steps are kept), so a run with a million rows draws quickly and correctly.
        Needs plotly (``pip install 'tensorhub[ui]'``).

        Args:
            metric: The logged metric, e.g. ``"loss"``.
            runs: Run ids, run/task records or Run objects (one or a list). Default ``None``: the
                runs the query selects; with no query, every run that logged ``metric``.
            x: The x axis: ``"step"`` (default), ``"epoch"`` (a logged field) or ``"time"``.
            kind: ``"training"`` (default), ``"validation"`` or ``"testing"`` logs.
            max_points: At most this many points per line. Default 2000.
            **kwargs: With ``runs=None``, a query over runs (``run_name=``, ``status=``...), as
                :meth:`find_runs`.

        Returns:
            A ``plotly.graph_objects.Figure`` (``fig.show()``, ``fig.write_html("f.html")``).

        Example::

            hub.plot_logs("loss", run_name="mlp").show()
            hub.plot_logs("acc", runs=[run_a.id, run_b.id], kind="validation")
        """
        from tensorhub import plots as _plots

        series = _plots.log_series(self, metric, runs, x=x, kind=kind, max_points=max_points, **kwargs)
        return _plots.figure_logs(series, metric, x)

    def plot_runs(self, objective: str | None = None, params: Any = None, run_name: str | None = None,
                  **kwargs: Any) -> Any:
        """A plotly parallel-coordinates figure of the runs' parameters against a result.

        One line per run (the rows of :meth:`compare_runs`), coloured by ``objective``. Needs
        plotly (``pip install 'tensorhub[ui]'``).

        Args:
            objective: The result or logged metric to compare by (e.g. ``"validation_acc"``).
                Default ``None``: the first numeric result column.
            params: The parameter names to show. Default ``None``: every parameter.
            run_name: Only runs of this name. Default ``None``: any.
            **kwargs: The query over runs, as :meth:`find_runs` (``status="finished"``...).

        Returns:
            A ``plotly.graph_objects.Figure``.

        Example::

            hub.plot_runs("validation_acc", run_name="mlp", status="finished").show()
        """
        from tensorhub import plots as _plots

        keys = [objective] if objective is not None else None
        rows = self.compare_runs(run_name, keys=keys, **kwargs)
        return _plots.figure_runs(rows, params, objective)
