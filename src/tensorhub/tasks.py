"""Tasks: a queue of scripts with hyper-parameters, claimed atomically under a lease.

A task record holds the script's text, so runners need no copy. Status moves
``pending -> running -> finished``, or ``-> failed`` (error and traceback stored), or
``-> cancelled``. A claim is a lease: the runner records itself as ``owner``, a
``lease_expires_at`` and a fresh ``claim_id``, and a heartbeat thread renews the lease while
the script runs. A task whose lease ran out is claimable again until ``max_attempts`` claims
were used; then it is ``failed``. The final write is conditional on the ``claim_id``, so a
runner that lost its lease can never overwrite the outcome of the runner that took over.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bson import ObjectId

from tensorhub.errors import InvalidArgumentError, InvalidArgumentTypeError, ScriptNotFoundError, ScriptSyntaxError
from tensorhub.records import Records, utcnow

log = logging.getLogger(__name__)

COLLECTION = "tasks"
PENDING, RUNNING, FINISHED, FAILED, CANCELLED = "pending", "running", "finished", "failed", "cancelled"
UNFINISHED = [PENDING, RUNNING]
#: queue order: highest priority first, then oldest first
QUEUE_ORDER = [("priority", -1), ("time", 1), ("_id", 1)]
DEFAULT_LEASE = 60.0
DEFAULT_MAX_ATTEMPTS = 3
#: fields a task record gets from create_task, the runner and cancel_tasks: a user tag of the same name
#: would be replaced (or would change how the task runs)
INTERNAL_FIELDS = frozenset({
    "script", "script_path", "hyper_parameters", "saved_result_keys", "status", "attempts_left", "attempts",
    "errors", "owner", "claim_id", "started_at", "lease_expires_at", "finished_at", "cancel_requested", "result",
    "error", "traceback", "exit_code", "stdout_tail", "stderr_tail",
})


def is_seconds(value: Any, zero: bool = False) -> bool:
    """Whether ``value`` is a finite number of seconds > 0 (>= 0 with ``zero``); a bool is not."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and (value > 0 or (zero and value == 0)))


def read_script(script: str | os.PathLike[str]) -> tuple[str, str]:
    """``(path, text)`` of a task script; a clear :class:`ScriptError` if it cannot be read."""
    if not isinstance(script, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"script must be the path of a Python file, got {type(script).__name__}")
    path = Path(script)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ScriptNotFoundError(f"task script {str(path)!r} does not exist (cwd: {os.getcwd()}); "
                                  "pass the path of a Python file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptNotFoundError(f"cannot read task script {str(path)!r}: {exc}") from exc
    try:
        compile(text, str(path), "exec")
    except SyntaxError as exc:
        raise ScriptSyntaxError(f"task script {str(path)!r} has a syntax error: {exc}") from exc
    return str(path), text


def create_task(records: Records, task_name: str, script: str | os.PathLike[str],
                hyper_parameters: Mapping[str, Any] | None = None, saved_result_keys: list[str] | None = None,
                **options: Any) -> ObjectId:
    """Queue a task; see :meth:`tensorhub.TensorHub.create_task`."""
    return create_tasks(records, task_name, script, [hyper_parameters], saved_result_keys, **options)[0]


def create_tasks(records: Records, task_name: str, script: str | os.PathLike[str],
                 points: list[Mapping[str, Any] | None], saved_result_keys: list[str] | None = None,
                 *, max_attempts: int = DEFAULT_MAX_ATTEMPTS, timeout: float | None = None, priority: int = 0,
                 **fields: Any) -> list[ObjectId]:
    """Queue one task per hyper-parameter dict in ``points``, all in one write (all or none)."""
    if not isinstance(task_name, str) or not task_name:
        raise InvalidArgumentError(f"task_name must be a non-empty string, got {task_name!r}")
    records.refuse_internal(fields, INTERNAL_FIELDS, "task")
    if saved_result_keys is None:
        saved_result_keys = []
    if (isinstance(saved_result_keys, (str, bytes, Mapping)) or not isinstance(saved_result_keys, Iterable)
            or not all(isinstance(k, str) for k in saved_result_keys)):
        raise InvalidArgumentError("saved_result_keys must be a list of variable names, e.g. ['test_accuracy'], "
                                   f"got {saved_result_keys!r}")
    for point in points:
        if point is not None and not isinstance(point, Mapping):
            raise InvalidArgumentError("hyper_parameters must be a dict of global names to values, e.g. "
                                       f"{{'n_units': 800}}, got {point!r}")
    # booleans are ints in Python, but never a count or a duration here (True would mean 1)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts < 2 ** 31:
        raise InvalidArgumentError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    if isinstance(priority, bool) or not isinstance(priority, (int, float)) or priority != priority:
        raise InvalidArgumentError(f"priority must be a number (higher runs first, default 0), got {priority!r}")
    if timeout is not None and not is_seconds(timeout):
        raise InvalidArgumentError(f"timeout must be a positive finite number of seconds (None: no timeout), "
                                   f"got {timeout!r}")
    path, text = read_script(script)
    documents = []
    for point in points:
        hyper_parameters = dict(point or {})
        for key in hyper_parameters:
            if not isinstance(key, str) or not key.isidentifier():
                raise InvalidArgumentError(f"hyper-parameter names must be Python identifiers, got {key!r}")
        documents.append(records.new_record(fields, INTERNAL_FIELDS, "task", {
            "task_name": task_name,
            "script": text,
            "script_path": path,
            "hyper_parameters": hyper_parameters,
            "saved_result_keys": list(saved_result_keys),
            "status": PENDING,
            "priority": priority,
            "max_attempts": max_attempts,
            "attempts_left": max_attempts,
            "attempts": 0,
            "timeout": timeout,
            "errors": [],
        }))
    records.index.insert_many(COLLECTION, documents)
    return [d["_id"] for d in documents]


def sweep_points(grid: Mapping[str, list] | None, points: list[dict] | None) -> list[dict]:
    """Hyper-parameter dicts: every combination of ``grid``'s values, then each of ``points``."""
    if grid is None and points is None:
        raise InvalidArgumentError("a sweep needs grid={'name': [values]} and/or points=[{...}, ...]")
    combos: list[dict] = []
    if grid is not None:
        if not isinstance(grid, Mapping) or not all(isinstance(v, (list, tuple)) and v for v in grid.values()):
            raise InvalidArgumentError("grid must map each hyper-parameter to a non-empty list of values")
        combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if points is not None:
        if not all(isinstance(p, Mapping) for p in points):
            raise InvalidArgumentError("points must be a list of hyper-parameter dicts")
        combos += [dict(p) for p in points]
    return combos


def worker_identity(worker_id: str | None = None) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "worker_id": worker_id or uuid.uuid4().hex[:12]}


def expire_exhausted(records: Records, query: Mapping[str, Any]) -> int:
    """Mark running tasks whose lease ran out with no attempts left as ``failed`` for good, and tasks
    cancelled while running whose runner died (lease run out) or handed them back as ``cancelled``."""
    now = utcnow()
    ended = 0
    for abandoned in ({"status": RUNNING, "lease_expires_at": {"$lt": now}}, {"status": PENDING}):
        ended += records.index.update_many(COLLECTION, records.scope({**query, **abandoned, "cancel_requested": True}),
                                           {"$set": {"status": CANCELLED, "finished_at": now,
                                                     "error": "cancelled while running; the runner stopped"}})
    return ended + records.index.update_many(COLLECTION, records.scope({
        **query, "status": RUNNING, "lease_expires_at": {"$lt": now}, "attempts_left": {"$lte": 0},
    }), {"$set": {"status": FAILED, "finished_at": now,
                  "error": "the runner stopped renewing its lease and no attempts are left"}})


_last_expiry: dict[int, float] = {}
EXPIRY_INTERVAL = 5.0


def _expire_now_and_then(records: Records, query: Mapping[str, Any]) -> None:
    """Run :func:`expire_exhausted` at most every few seconds per store (it scans running tasks)."""
    now = time.monotonic()
    if now - _last_expiry.get(id(records.index), -EXPIRY_INTERVAL) >= EXPIRY_INTERVAL:
        _last_expiry[id(records.index)] = now
        expire_exhausted(records, query)


def claim_task(records: Records, query: Mapping[str, Any], sort: Any = None, lease: float = DEFAULT_LEASE,
               owner: dict | None = None) -> dict | None:
    """Atomically take the first claimable task (pending, or running with an expired lease)."""
    if not is_seconds(lease):
        raise InvalidArgumentError(f"lease must be a finite number of seconds > 0, got {lease!r}")
    _expire_now_and_then(records, query)
    now = utcnow()
    update = {"$set": {"status": RUNNING, "owner": owner or worker_identity(), "claim_id": ObjectId(),
                       "started_at": now, "lease_expires_at": now + dt.timedelta(seconds=lease)},
              "$inc": {"attempts": 1, "attempts_left": -1}}
    base = {**query, "attempts_left": {"$gt": 0}, "cancel_requested": {"$ne": True}}
    # two simple filters rather than one $or: each is served by the (status, priority, time)
    # index on MongoDB. Abandoned tasks (few: at most one per dead runner) go first.
    claimed = None
    for claimable in ({"status": RUNNING, "lease_expires_at": {"$lt": now}}, {"status": PENDING}):
        claimed = records.index.find_one_and_update(COLLECTION, records.scope({**base, **claimable}), update,
                                                    sort=sort or QUEUE_ORDER)
        if claimed is not None:
            break
    if claimed is not None and claimed["attempts"] > 1 and len(claimed.get("errors", [])) < claimed["attempts"] - 1:
        note = {"attempt": claimed["attempts"] - 1, "error": "lease expired: the runner died or stalled"}
        records.index.update_many(COLLECTION, {"_id": claimed["_id"]}, {"$push": {"errors": note}})
    return claimed


def _is_mine(claimed: dict) -> dict:
    return {"_id": claimed["_id"], "claim_id": claimed["claim_id"]}


def finish(records: Records, claimed: dict, update: Mapping[str, Any],
           push: Mapping[str, Any] | None = None) -> bool:
    """Write a task's outcome (and ``push`` onto its lists) if this runner still holds the claim;
    False if the lease was lost."""
    change: dict[str, Any] = {"$set": {**update, "finished_at": utcnow()}, "$unset": {"lease_expires_at": ""}}
    if push:
        change["$push"] = dict(push)
    done = records.index.update_many(COLLECTION, _is_mine(claimed), change)
    if not done:
        log.warning("task %s: lease lost before it ended; its outcome was not recorded", claimed["_id"])
    return bool(done)


def release(records: Records, claimed: dict) -> None:
    """Hand a claimed task back to ``pending`` (runner shutting down); the attempt is not counted."""
    records.index.update_many(COLLECTION, _is_mine(claimed), {
        "$set": {"status": PENDING}, "$unset": {"owner": "", "claim_id": "", "lease_expires_at": ""},
        "$inc": {"attempts": -1, "attempts_left": 1}})


class Heartbeat(threading.Thread):
    """Renews a claim's lease until stopped: every third of the lease, and sooner after a failure.

    A renewal that fails (store unavailable, compare-and-swap conflicts it gave up on) is retried
    within a second or two rather than at the next beat, so a lease survives several failures in
    a row. A renewal that matches nothing is checked by reading the task back: only a task whose
    ``claim_id`` is no longer ours (another runner took it over after the lease ran out, or it
    was deleted) sets :attr:`lost`; the runner then stops its copy. Deadlines are measured on the
    monotonic clock from the moment each renewal was sent, so a slow reply can only make the
    runner renew earlier, never later.
    """

    def __init__(self, records: Records, claimed: dict, lease: float) -> None:
        super().__init__(name=f"tensorhub-heartbeat-{claimed['_id']}", daemon=True)
        self.records, self.claimed, self.lease = records, claimed, lease
        self.stopped = threading.Event()
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        expires = claimed.get("lease_expires_at")
        remaining = lease
        if isinstance(expires, dt.datetime):  # the claim may have taken a while: count from its expiry
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.timezone.utc)
            remaining = min(lease, max(0.0, (expires - utcnow()).total_seconds()))
        #: monotonic time by which the lease we hold runs out
        self.deadline = time.monotonic() + remaining

    def _next_wait(self, failures: int) -> float:
        if failures:
            return min(RETRY_MAX_WAIT, 0.2 * 2 ** (failures - 1), self.lease / 10)
        return max(0.0, min(self.lease / 3, (self.deadline - time.monotonic()) / 3))

    def run(self) -> None:
        failures = 0
        while not self.stopped.wait(self._next_wait(failures)):
            sent = time.monotonic()
            try:
                renewed = self.records.index.find_one_and_update(
                    COLLECTION, _is_mine(self.claimed),
                    {"$set": {"lease_expires_at": utcnow() + dt.timedelta(seconds=self.lease)}})
                if renewed is None and self._still_mine():
                    raise RuntimeError("the renewal matched nothing, but the claim is still ours")
            except Exception:  # noqa: BLE001 - a transient failure must not cost the lease: retry soon
                failures += 1
                late = " (its lease may have run out)" if time.monotonic() > self.deadline else ""
                log.warning("task %s: lease renewal failed (%d in a row)%s; retrying", self.claimed["_id"],
                            failures, late, exc_info=failures == 1)
                continue
            if renewed is None:
                log.warning("task %s: lease lost (another runner took the task, or it was deleted)",
                            self.claimed["_id"])
                self.lost.set()
                return
            failures = 0
            self.deadline = sent + self.lease
            if renewed.get("cancel_requested"):
                self.cancel_requested.set()

    def _still_mine(self) -> bool:
        found = self.records.index.find(COLLECTION, {"_id": self.claimed["_id"]}, limit=1)
        return bool(found) and found[0].get("claim_id") == self.claimed["claim_id"]

    def stop(self) -> None:
        self.stopped.set()
        self.join()


#: longest wait between retries of a failed lease renewal (seconds)
RETRY_MAX_WAIT = 2.0
