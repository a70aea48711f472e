"""Tasks: a queue of scripts with hyper-parameters, claimed atomically under a lease.

A task record holds the script's text, so runners need no copy. Status moves
``pending -> running -> finished``, or ``-> failed`` (error and traceback stored), or
``-> cancelled``, or ``-> pruned`` (a study's trial stopped early by its pruner, :mod:`tensorhub.study`); a failed attempt with ``retry_on_error`` retries left goes back to ``pending``
(``retry``), and :meth:`TaskQueue.requeue` puts failed and cancelled tasks back there. A claim
is a lease: the runner records itself as ``owner``, a ``lease_expires_at`` and a fresh
``claim_id``, and a heartbeat thread renews the lease while the script runs. A task whose lease
ran out is claimable again until ``max_attempts`` claims were used; then it is ``failed``.

:class:`TaskQueue` owns every change of a task's state. The changes allowed are the rows of
:data:`TRANSITIONS` and nothing else: each is one method whose write is a single conditional
update whose filter holds the from-state (so an illegal change matches nothing and is a no-op),
and the changes only the runner holding a claim may make (:data:`CLAIM_HOLDER_EVENTS`: renew,
finish, fail, retry, stop, release) also hold its ``claim_id``, so a runner that lost its lease
can never overwrite the outcome of the runner that took over. Every write goes through
:class:`~tensorhub.records.Records`, so it is scoped to the hub's project.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bson import ObjectId

from tensorhub.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ScriptNotFoundError,
    ScriptSyntaxError,
    TaskTimeoutError,
)
from tensorhub.documents import check_depth, normalize_document
from tensorhub.progress import progress_bar
from tensorhub.records import Records, utcnow

log = logging.getLogger(__name__)

COLLECTION = "tasks"
PENDING, RUNNING, FINISHED, FAILED, CANCELLED = "pending", "running", "finished", "failed", "cancelled"
#: a study's trial its pruner stopped early (:mod:`tensorhub.study`): cancelled by the study, not by a person
PRUNED = "pruned"
UNFINISHED = [PENDING, RUNNING]
#: every status a task can end with
ENDED = [FINISHED, FAILED, CANCELLED, PRUNED]
#: the indexes of the tasks collection: listings by name, and the queue order of claims (QUEUE_ORDER, _id
#: included: a sort the index does not hold whole is a sort of every pending task), by name and without one
INDEXES = {COLLECTION: [[("project_name", 1), ("task_name", 1), ("time", -1), ("_id", -1)],
                        [("project_name", 1), ("task_name", 1), ("status", 1), ("priority", -1), ("time", 1), ("_id", 1)],
                        [("project_name", 1), ("status", 1), ("priority", -1), ("time", 1), ("_id", 1)]]}
#: the state of a task before its record exists
NEW = "new"
#: every change a task's state can make: (from-state, event) -> to-state. Nothing else is allowed:
#: each event's write is conditional on one of its from-states, so a task in any other state is left alone.
TRANSITIONS: dict[tuple[str, str], str] = {
    (NEW, "create"): PENDING,                # create_task / create_sweep
    (NEW, "start"): RUNNING,                 # start_run: an interactive run, held by its own process from the start
    (PENDING, "claim"): RUNNING,             # a runner takes it: owner, fresh claim_id, lease; an attempt counts
    (RUNNING, "reclaim"): RUNNING,           # its lease ran out (runner died or stalled): requeued and taken by
                                             # the next runner in the same write, under a new claim_id
    (RUNNING, "renew"): RUNNING,             # heartbeat of the claim holder: the lease is extended
    (RUNNING, "finish"): FINISHED,           # the claim holder records the result
    (RUNNING, "fail"): FAILED,               # the claim holder records the error (pushed onto errors)
    (RUNNING, "retry"): PENDING,             # the claim holder: the script failed and retry_on_error retries are
                                             # left: re-queued (error pushed onto errors), the attempt given back
    (RUNNING, "stop"): CANCELLED,            # the claim holder obeyed a cancel request
    (RUNNING, "prune"): PRUNED,              # the claim holder obeyed a prune request (a cancel request too)
    (RUNNING, "release"): PENDING,           # the claim holder shuts down: handed back, the attempt not counted
    (PENDING, "cancel"): CANCELLED,          # cancel_tasks: a pending task never starts
    (RUNNING, "request_cancel"): RUNNING,    # cancel_tasks: the runner's heartbeat sees it within a second or so
    (RUNNING, "request_prune"): RUNNING,     # a study's pruner: a cancel request marked prune_requested, so the
                                             # runner's stop records ``pruned`` (same path as a cancel)
    (RUNNING, "expire"): FAILED,             # its lease ran out and no attempts are left
    (RUNNING, "expire_cancelled"): CANCELLED,  # asked to stop, and its runner died (lease ran out)
    (PENDING, "expire_cancelled"): CANCELLED,  # asked to stop, and its runner handed it back
    (RUNNING, "expire_pruned"): PRUNED,      # asked to stop by a pruner, and its runner died (lease ran out)
    (PENDING, "expire_pruned"): PRUNED,      # asked to stop by a pruner, and its runner handed it back
    (FAILED, "requeue"): PENDING,            # requeue_tasks: history (errors, attempts) kept, attempts_left and
    (CANCELLED, "requeue"): PENDING,         # retries_left reset, the last outcome and any cancel request cleared
}
#: events only the runner holding the claim may cause: their filter holds its ``claim_id``
CLAIM_HOLDER_EVENTS = frozenset({"renew", "finish", "fail", "retry", "stop", "prune", "release"})
#: outcomes a task asked to stop (``cancel_requested``) never gets: their filter excludes it, so a
#: script that ends just as it is cancelled is recorded ``cancelled`` (``stop``), never ``finished``
NOT_AFTER_CANCEL = frozenset({"finish", "fail", "retry"})
#: the event by which a runner records each final status
OUTCOME_EVENTS = {FINISHED: "finish", FAILED: "fail", CANCELLED: "stop"}
#: queue order: highest priority first, then oldest first
QUEUE_ORDER = [("priority", -1), ("time", 1), ("_id", 1)]
DEFAULT_LEASE = 60.0
DEFAULT_MAX_ATTEMPTS = 3
#: fields a task record gets from create_task, the runner and cancel_tasks: a user tag of the same name
#: would be replaced (or would change how the task runs)
INTERNAL_FIELDS = frozenset({
    "script", "script_path", "hyper_parameters", "saved_result_keys", "status", "attempts_left", "attempts",
    "errors", "owner", "claim_id", "started_at", "lease_expires_at", "finished_at", "cancel_requested", "result",
    "error", "traceback", "exit_code", "stdout_tail", "stderr_tail", "retry_on_error", "retries_left",
    "run_type", "prune_requested", "study_id", "trial",
})
#: fields of a task's last outcome: cleared when it is re-queued (its history stays in ``errors``)
OUTCOME_FIELDS = ("result", "error", "traceback", "exit_code", "stdout_tail", "stderr_tail", "finished_at",
                  "started_at", "owner", "claim_id", "lease_expires_at", "cancel_requested", "prune_requested")
#: ``run_type`` of a queued task and of an interactive run (``hub.start_run``)
TASK_RUN, INTERACTIVE_RUN = "task", "interactive"


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



#: seconds between two expiry sweeps (:meth:`TaskQueue.expire`) made by the claims of one queue
EXPIRY_INTERVAL = 5.0


def _count(value: Any, least: int) -> bool:
    """Whether ``value`` is an int (not a bool) >= ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _sources(event: str) -> list[str]:
    return [source for source, name in TRANSITIONS if name == event]


def _target(event: str) -> str:
    (target,) = {TRANSITIONS[(source, event)] for source in _sources(event)}
    return target


def _and(query: Mapping[str, Any], condition: Mapping[str, Any]) -> dict[str, Any]:
    """``query`` AND ``condition``: one flat filter when they share no key (served by indexes as
    it is), else ``$and`` (a user's ``status=`` must not widen a transition's from-state)."""
    if not query:
        return dict(condition)
    if set(query) & set(condition) or any(k.startswith("$") for k in query):
        return {"$and": [dict(query), dict(condition)]}
    return {**query, **condition}


class TaskQueue:
    """The task state machine of one project: every transition of :data:`TRANSITIONS`, one method each.

    A method's write is a single conditional update: its filter holds the from-state(s) of the
    event (from the table), plus the claim's ``_id`` and ``claim_id`` for the events of the
    claim holder (:data:`CLAIM_HOLDER_EVENTS`); an illegal change matches nothing and returns
    None / False / 0, changing nothing. One queue per hub (so per store): the expiry sweep that
    claims run now and then is throttled on the instance, not in a global.
    """

    def __init__(self, records: Records) -> None:
        self.records = records
        self.tasks = records.collection(COLLECTION)
        self.expiry_interval = EXPIRY_INTERVAL
        self._expired_at: float | None = None  # monotonic time of the last expiry sweep

    # ------------------------------------------------------------------ the transitions
    def _transition(self, event: str, query: Mapping[str, Any], update: Mapping[str, Any] | None = None,
                    claimed: Mapping[str, Any] | None = None, one: bool = False, sort: Any = None) -> Any:
        """Apply ``event`` to the tasks matching ``query`` that are in one of its from-states (and held
        by ``claimed``'s claim for the claim holder's events), in one conditional write."""
        sources = _sources(event)
        condition: dict[str, Any] = {"status": sources[0] if len(sources) == 1 else {"$in": sources}}
        if event in CLAIM_HOLDER_EVENTS:
            if claimed is None:
                raise InvalidArgumentError(f"{event!r} is the claim holder's: pass the claimed task")
            condition.update({"_id": claimed["_id"], "claim_id": claimed["claim_id"]})
        if event in NOT_AFTER_CANCEL:
            condition["cancel_requested"] = {"$ne": True}
        change: dict[str, Any] = {key: dict(value) for key, value in (update or {}).items()}
        change.setdefault("$set", {})["status"] = _target(event)
        if one:
            return self.tasks.find_one_and_update(_and(query, condition), change, sort=sort)
        return self.tasks.update_many(_and(query, condition), change)

    def create(self, task_name: str | None, script: str | os.PathLike[str], points: Sequence[Mapping[str, Any] | None],
               saved_result_keys: list[str] | None = None, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               timeout: float | None = None, priority: int = 0, retry_on_error: int = 0,
               **fields: Any) -> list[ObjectId]:
        """Queue one task per hyper-parameter dict in ``points``, all in one write (all or none).

        ``retry_on_error``: how many times a failed attempt (the script raised, exited non-zero,
        crashed or timed out) is re-queued (``retry``) before the task is ``failed``. A retry
        gives its claim back, so ``max_attempts`` keeps bounding only the claims lost to runners
        that died or stalled: a task runs at most ``max_attempts + retry_on_error`` times.
        """
        documents = _new_tasks(self.records, task_name, script, points, saved_result_keys,
                               max_attempts=max_attempts, timeout=timeout, priority=priority,
                               retry_on_error=retry_on_error, fields=fields)
        self.tasks.insert(documents)
        return [d["_id"] for d in documents]

    def start(self, task_name: str, hyper_parameters: Mapping[str, Any], lease: float = DEFAULT_LEASE,
              fields: Mapping[str, Any] | None = None) -> dict:
        """``start``: record an interactive run, ``running`` and claimed by this process from the start.

        No runner ever claims it (no attempts left); it renews its lease like a runner
        (:class:`Heartbeat`) and ends through :meth:`end`; if its process dies, :meth:`expire`
        ends it ``failed`` once the lease runs out. Returns the record (the claim).
        """
        if not is_seconds(lease):
            error = InvalidArgumentTypeError if isinstance(lease, bool) or not isinstance(
                lease, (int, float)) else InvalidArgumentError
            raise error(f"lease must be a finite number of seconds > 0, got {lease!r}")
        if not isinstance(task_name, str) or not task_name:
            error = InvalidArgumentError if isinstance(task_name, str) else InvalidArgumentTypeError
            raise error(f"run_name must be a non-empty string, got {task_name!r}")
        now = utcnow()
        record = self.records.new_record(fields or {}, INTERNAL_FIELDS, "task", {
            "task_name": task_name, "run_type": INTERACTIVE_RUN, "hyper_parameters": dict(hyper_parameters),
            "saved_result_keys": [], "status": TRANSITIONS[(NEW, "start")], "priority": 0, "max_attempts": 1,
            "attempts_left": 0, "attempts": 1, "timeout": None, "errors": [], "owner": worker_identity(),
            "claim_id": ObjectId(), "started_at": now, "lease_expires_at": now + dt.timedelta(seconds=lease)})
        self.tasks.insert([record])
        return record

    def claim(self, query: Mapping[str, Any], sort: Any = None, lease: float = DEFAULT_LEASE,
              owner: dict | None = None) -> dict | None:
        """Atomically take the first claimable task: running with an expired lease (``reclaim``), else
        pending (``claim``); None when there is none. Runs the expiry sweep now and then first."""
        if not is_seconds(lease):
            error = InvalidArgumentTypeError if isinstance(lease, bool) or not isinstance(
                lease, (int, float)) else InvalidArgumentError
            raise error(f"lease must be a finite number of seconds > 0, got {lease!r}")
        self._expire_now_and_then(query)
        now = utcnow()
        update = {"$set": {"owner": owner or worker_identity(), "claim_id": ObjectId(), "started_at": now,
                           "lease_expires_at": now + dt.timedelta(seconds=lease)},
                  "$inc": {"attempts": 1, "attempts_left": -1}}
        base = _and(query, {"attempts_left": {"$gt": 0}, "cancel_requested": {"$ne": True}})
        # two simple filters rather than one $or: each is served by the (status, priority, time)
        # index on MongoDB. Abandoned tasks (few: at most one per dead runner) go first. Whether
        # there is one is asked with a read first: almost always there is none, and a read takes
        # no write lock (file://) nor compare-and-swap (s3://), so it costs a claim far less than
        # a conditional write that matches nothing. The write stays the atomic step: a lease that
        # runs out just after the read is reclaimed by the next claim.
        claimed = None
        if self._abandoned(query, now):
            claimed = self._transition("reclaim", _and(base, {"lease_expires_at": {"$lt": now}}), update,
                                       one=True, sort=sort or QUEUE_ORDER)
        reclaimed = claimed is not None
        if claimed is None:
            claimed = self._transition("claim", base, update, one=True, sort=sort or QUEUE_ORDER)
        if reclaimed and claimed is not None:  # the attempt before ended with no outcome: say so in its history
            note = {"attempt": claimed["attempts"] - 1, "error": "lease expired: the runner died or stalled"}
            self.tasks.update_many({"_id": claimed["_id"], "claim_id": claimed["claim_id"], "status": RUNNING},
                                   {"$push": {"errors": note}})
        return claimed

    def _abandoned(self, query: Mapping[str, Any], now: dt.datetime) -> bool:
        """Whether a running task matching ``query`` may be reclaimable (its lease ran out): a read of the
        running tasks (few: one per runner) by an equality the claim index serves on every backend,
        the lease and attempts checked here. Only a hint: the reclaim's conditional write decides."""
        for task in self.tasks.find(_and(query, {"status": RUNNING}), sort=QUEUE_ORDER):  # the claim index's order
            expires = task.get("lease_expires_at")
            if not isinstance(expires, dt.datetime) or task.get("cancel_requested") is True:
                continue
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.timezone.utc)
            left = task.get("attempts_left")
            if expires < now and (not isinstance(left, (int, float)) or left > 0):
                return True
        return False

    def renew(self, claimed: Mapping[str, Any], lease: float) -> dict | None:
        """Extend the lease of a task this runner holds; the task after the write (its
        ``cancel_requested`` says whether to stop), or None if the claim is no longer ours."""
        return self._transition("renew", {}, {"$set": {"lease_expires_at": utcnow() + dt.timedelta(seconds=lease)}},
                                claimed=claimed, one=True)

    def still_mine(self, claimed: Mapping[str, Any]) -> bool:
        """Whether the task is still held under ``claimed``'s claim (a read: tells "lost" from a glitch)."""
        found = self.tasks.find_one({"_id": claimed["_id"]})
        return found is not None and found.get("claim_id") == claimed["claim_id"]

    def read_claim(self, claimed: Mapping[str, Any]) -> dict | None:
        """The task as stored now if ``claimed``'s claim still holds it, else None: a read by ``_id``
        (the heartbeat's cheap look at ``cancel_requested`` between two renewals)."""
        found = self.tasks.find_one({"_id": claimed["_id"]})
        return found if found is not None and found.get("claim_id") == claimed["claim_id"] else None

    def record(self, claimed: Mapping[str, Any], status: str, fields: Mapping[str, Any],
               push: Mapping[str, Any] | None = None) -> str | None:
        """Record a claimed task's outcome and return the status it now has, or None (nothing
        written) if this runner no longer holds the claim or the task is no longer running.

        ``finished`` (finish), ``failed`` (fail) or ``cancelled`` (stop), with ``fields`` set and
        ``push`` pushed onto its lists. A failure with ``retries_left`` is re-queued instead
        (``retry``: the status returned is ``pending``). A task asked to stop meanwhile never
        finishes, fails or retries (:data:`NOT_AFTER_CANCEL`): it is recorded ``cancelled``.
        """
        if status not in OUTCOME_EVENTS:
            raise InvalidArgumentError(f"a task ends {sorted(OUTCOME_EVENTS)}, not {status!r}")
        change: dict[str, Any] = {"$set": {**fields, "finished_at": utcnow()}, "$unset": {"lease_expires_at": ""}}
        change["$set"].pop("status", None)
        if push:
            change["$push"] = dict(push)
        if status == FAILED and _count(claimed.get("retries_left"), 1) and self._transition(
                "retry", {"retries_left": {"$gt": 0}}, {
                    "$unset": {"owner": "", "claim_id": "", "lease_expires_at": "", "started_at": ""},
                    "$inc": {"retries_left": -1, "attempts_left": 1}, **({"$push": dict(push)} if push else {})},
                claimed=claimed):
            return PENDING
        if status == CANCELLED and self._prune(claimed, change):
            return PRUNED
        if self._transition(OUTCOME_EVENTS[status], {}, change, claimed=claimed):
            return status
        if status != CANCELLED:  # not ours any more, or asked to stop: only ``stop`` (``prune``) can still match
            change["$set"].pop("result", None)
            change["$set"].setdefault("error", f"cancelled while running (the script had just {status})")
            if self._prune(claimed, change):
                return PRUNED
            if self._transition("stop", {}, change, claimed=claimed):
                return CANCELLED
        log.warning("task %s: lease lost before it ended; its outcome was not recorded", claimed["_id"])
        return None

    def _prune(self, claimed: Mapping[str, Any], change: Mapping[str, Any]) -> bool:
        """``prune``: a stop of a task whose cancel request came from a study's pruner (``prune_requested``)."""
        pruned = {**change, "$set": {**change["$set"], "error": "pruned by its study's pruner"}}
        return bool(self._transition("prune", {"prune_requested": True}, pruned, claimed=claimed))

    def end(self, claimed: Mapping[str, Any], status: str, fields: Mapping[str, Any],
            push: Mapping[str, Any] | None = None) -> bool:
        """:meth:`record`, saying only whether an outcome was written."""
        return self.record(claimed, status, fields, push) is not None

    def finish(self, claimed: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
        """``finish``: see :meth:`end`."""
        return self.end(claimed, FINISHED, fields)

    def fail(self, claimed: Mapping[str, Any], fields: Mapping[str, Any], push: Mapping[str, Any] | None = None) -> bool:
        """``fail``: see :meth:`end`."""
        return self.end(claimed, FAILED, fields, push)

    def stop(self, claimed: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
        """``stop`` (the runner obeyed a cancel request): see :meth:`end`."""
        return self.end(claimed, CANCELLED, fields)

    def release(self, claimed: Mapping[str, Any]) -> bool:
        """Hand a claimed task back to ``pending`` (runner shutting down); the attempt is not counted."""
        return bool(self._transition("release", {}, {
            "$unset": {"owner": "", "claim_id": "", "lease_expires_at": ""},
            "$inc": {"attempts": -1, "attempts_left": 1}}, claimed=claimed))

    def cancel(self, query: Mapping[str, Any]) -> int:
        """Cancel matching tasks: pending ones never start (``cancel``), running ones are asked to stop
        (``request_cancel``; one already asked is not counted again). Returns how many were affected."""
        pending = self._transition("cancel", query, {"$set": {"finished_at": utcnow()}})
        running = self._transition("request_cancel", _and(query, {"cancel_requested": {"$ne": True}}),
                                   {"$set": {"cancel_requested": True}})
        return int(pending) + int(running)

    def request_prune(self, query: Mapping[str, Any]) -> int:
        """Ask matching running tasks to stop as ``pruned`` (``request_prune``: a cancel request marked
        ``prune_requested``; the runner stops it as it stops a cancelled task). Returns how many."""
        return int(self._transition("request_prune", _and(query, {"cancel_requested": {"$ne": True}}),
                                    {"$set": {"cancel_requested": True, "prune_requested": True}}))

    def requeue(self, query: Mapping[str, Any]) -> int:
        """Put matching ``failed`` and ``cancelled`` tasks back to ``pending`` (``requeue``); return how many.

        Their history stays (``errors``, ``attempts``); ``attempts_left`` and ``retries_left`` are
        reset to ``max_attempts`` and ``retry_on_error`` so they can run again, and the last
        outcome (result, error, owner, claim, cancel request...) is cleared. Tasks in other states
        are left alone. One conditional write per distinct (max_attempts, retry_on_error) of the
        matches (usually one), since an update cannot copy one field into another.
        """
        sources = {"status": {"$in": _sources("requeue")}}
        budgets = {repr(pair): pair for pair in ((t.get("max_attempts"), t.get("retry_on_error"))
                                                 for t in self.tasks.find(_and(query, sources)))}
        unset = {field: "" for field in OUTCOME_FIELDS}
        count = 0
        for _, (max_attempts, retries) in sorted(budgets.items()):
            # a missing or odd stored value (an older or hand-written record) gets the defaults
            attempts_left = max_attempts if _count(max_attempts, 1) else DEFAULT_MAX_ATTEMPTS
            count += int(self._transition("requeue", _and(query, {"max_attempts": max_attempts,
                                                                   "retry_on_error": retries}),
                                          {"$set": {"attempts_left": attempts_left,
                                                    "retries_left": retries if _count(retries, 0) else 0},
                                           "$unset": unset}))
        return count

    def expire(self, query: Mapping[str, Any] | None = None) -> int:
        """End what no runner will: tasks asked to stop whose runner died or handed them back
        (``expire_cancelled``), and running tasks whose lease ran out with no attempts left (``expire``)."""
        query = query or {}
        now = utcnow()
        stopped = {"cancel_requested": True, "$or": [{"status": PENDING}, {"lease_expires_at": {"$lt": now}}]}
        ended = self._transition("expire_pruned", _and(query, {**stopped, "prune_requested": True}),
                                 {"$set": {"finished_at": now, "error": "pruned while running; the runner stopped"}})
        ended += self._transition("expire_cancelled", _and(query, stopped),
                                  {"$set": {"finished_at": now, "error": "cancelled while running; the runner stopped"}})
        return int(ended) + int(self._transition(
            "expire", _and(query, {"lease_expires_at": {"$lt": now}, "attempts_left": {"$lte": 0}}),
            {"$set": {"finished_at": now, "error": "the runner stopped renewing its lease and no attempts are left"}}))

    def _expire_now_and_then(self, query: Mapping[str, Any]) -> None:
        """:meth:`expire` at most every :attr:`expiry_interval` seconds (it scans running tasks)."""
        now = time.monotonic()
        if self._expired_at is None or now - self._expired_at >= self.expiry_interval:
            self._expired_at = now
            self.expire(query)

    # ------------------------------------------------------------------ reads
    def find(self, query: Mapping[str, Any] | None = None, sort: Any = None, limit: int | None = None) -> list[dict]:
        """Matching task records, newest first unless ``sort``."""
        return self.tasks.find(query, sort=sort, limit=limit)

    def has_unfinished(self, query: Mapping[str, Any]) -> bool:
        """Whether any matching task is ``pending`` or ``running``."""
        return bool(self.tasks.find(_and(query, {"status": {"$in": UNFINISHED}}), limit=1))

    def wait(self, query: Mapping[str, Any], timeout: float | None = None, poll: float = 0.5) -> list[dict]:
        """Poll until no matching task is unfinished; return the matching tasks. A progress bar shows
        when a person watches; :class:`TaskTimeoutError` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with progress_bar(total=len(self.tasks.find(query)), desc="tasks", unit="task") as bar:
            while True:
                tasks = self.tasks.find(query)
                done = sum(t["status"] not in UNFINISHED for t in tasks)
                bar.total, bar.n = len(tasks), done
                bar.refresh()
                if done == len(tasks):
                    return tasks
                if deadline is not None and time.monotonic() >= deadline:
                    raise TaskTimeoutError(f"{len(tasks) - done} task(s) still unfinished after {timeout}s")
                time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def delete(self, query: Mapping[str, Any] | None = None) -> int:
        """Delete matching task records (whatever their state); return how many."""
        return self.tasks.delete(query)


def _new_tasks(records: Records, task_name: str | None, script: str | os.PathLike[str],
               points: Sequence[Mapping[str, Any] | None], saved_result_keys: list[str] | None, *,
               max_attempts: int, timeout: float | None, priority: int, retry_on_error: int,
               fields: Mapping[str, Any], read: tuple[str, str] | None = None,
               own: Mapping[str, Any] | None = None) -> list[dict]:
    """The records of new tasks (state ``create`` leads to), every argument checked before any write.

    ``read``: the script's ``(path, text)`` when already read (a study's trials reuse its stored
    script); ``own``: more fields the repository owns (a study's ``study_id``, ``trial``...)."""
    if not isinstance(task_name, str) or not task_name:
        error = InvalidArgumentError if isinstance(task_name, str) else InvalidArgumentTypeError
        raise error(f"task_name must be a non-empty string, got {task_name!r}")
    records.refuse_internal(fields, INTERNAL_FIELDS, "task")
    if saved_result_keys is None:
        saved_result_keys = []
    if (isinstance(saved_result_keys, (str, bytes, Mapping)) or not isinstance(saved_result_keys, Iterable)
            or not all(isinstance(k, str) for k in saved_result_keys)):
        raise InvalidArgumentTypeError("saved_result_keys must be a list of variable names, e.g. "
                                       f"['test_accuracy'], got {saved_result_keys!r}")
    for point in points:
        if point is not None and not isinstance(point, Mapping):
            raise InvalidArgumentTypeError("hyper_parameters must be a dict of global names to values, e.g. "
                                           f"{{'n_units': 800}}, got {point!r}")
    # booleans are ints in Python, but never a count or a duration here (True would mean 1)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts < 2 ** 31:
        raise InvalidArgumentError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    if isinstance(retry_on_error, bool) or not isinstance(retry_on_error, int) or not 0 <= retry_on_error < 2 ** 31:
        raise InvalidArgumentError(f"retry_on_error must be an int >= 0 (re-runs of a failed script), "
                                   f"got {retry_on_error!r}")
    if isinstance(priority, bool) or not isinstance(priority, (int, float)) or priority != priority:
        raise InvalidArgumentError(f"priority must be a number (higher runs first, default 0), got {priority!r}")
    if timeout is not None and not is_seconds(timeout):
        raise InvalidArgumentError(f"timeout must be a positive finite number of seconds (None: no timeout), "
                                   f"got {timeout!r}")
    path, text = read if read is not None else read_script(script)
    for point in points:
        for key in point or {}:
            if not isinstance(key, str) or not key.isidentifier():
                raise InvalidArgumentError(f"hyper-parameter names must be Python identifiers, got {key!r}")
    # one record made (checked, normalised) for the whole sweep, then one copy per point with its own
    # _id and hyper-parameters (normalised alone): a sweep of 10^5 points costs a copy per point,
    # not a full record check. The points share the sweep's creation time; the queue order among
    # them is their _id's, i.e. the order of ``points``.
    template = records.new_record(fields, INTERNAL_FIELDS, "task", {
        "task_name": task_name,
        "run_type": TASK_RUN,
        "script": text,
        "script_path": path,
        "hyper_parameters": {},
        "saved_result_keys": list(saved_result_keys),
        "status": TRANSITIONS[(NEW, "create")],
        "priority": priority,
        "max_attempts": max_attempts,
        "attempts_left": max_attempts,
        "attempts": 0,
        "retry_on_error": retry_on_error,
        "retries_left": retry_on_error,
        "timeout": timeout,
        "errors": [],
        **(own or {}),
    })
    containers = [key for key, value in template.items() if isinstance(value, (dict, list)) and key != "hyper_parameters"]
    documents = []
    for point in points:
        # a point of plain values normalises without a BSON round trip; the depth counts as inside the record
        hyper_parameters = normalize_document(dict(point or {}))
        if any(isinstance(value, (dict, list)) for value in hyper_parameters.values()):
            check_depth({"hyper_parameters": hyper_parameters}, "a task's hyper-parameters")
        document = dict(template)
        for key in containers:  # no list or dict shared between two records
            document[key] = copy.deepcopy(template[key])
        document["_id"] = ObjectId()
        document["hyper_parameters"] = hyper_parameters
        documents.append(document)
    return documents


class _Threads:
    """Daemon threads kept for reuse by heartbeats (and a runner's other per-task helpers).

    A claim runs its heartbeat on an idle thread of this pool rather than a new one: starting a
    thread waits until the new thread has been scheduled, which on a loaded machine cost more
    than a no-op task's whole run. A thread is started only when none is idle, and stays for the
    next task. Threads do not survive a ``fork()``: the child starts with an empty pool.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job: Any, name: str) -> None:
        """Run ``job()`` on an idle thread (a new one if none is idle); exceptions are logged."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:  # noqa: BLE001 - a job's failure must not cost the pool its thread
                log.exception("a tensorhub background job failed")
            with self._lock:
                self._idle += 1

    def _after_fork(self) -> None:
        self.__init__()  # type: ignore[misc]


_threads = _Threads()
os.register_at_fork(after_in_child=_threads._after_fork)


class Heartbeat:
    """Renews a claim's lease until stopped: every third of the lease, and sooner after a failure.

    Between renewals it reads the task by ``_id`` every :data:`CANCEL_POLL` seconds, so a
    ``cancel_tasks`` is seen within about a second (not at the next renewal, up to lease/3 =
    20 s later) and :attr:`cancel_requested` is set. A read rather than more frequent renewals:
    a renewal is a conditional write (on ``s3://`` a compare-and-swap PUT of the task's segment),
    while a read by ``_id`` is a primary-key lookup on MongoDB and, on ``s3://``, one conditional
    GET of a small segment state (ETag-cached): about two cheap requests a second per running
    task. A failed read is ignored (the renewals deal with an unavailable store).

    A renewal that fails (store unavailable, compare-and-swap conflicts it gave up on) is retried
    within a second or two rather than at the next beat, so a lease survives several failures in
    a row. A renewal that matches nothing is checked by reading the task back: only a task whose
    ``claim_id`` is no longer ours (another runner took it over after the lease ran out, or it
    was deleted) sets :attr:`lost`; the runner then stops its copy. Deadlines are measured on the
    monotonic clock from the moment each renewal was sent, so a slow reply can only make the
    runner renew earlier, never later.
    """

    def __init__(self, queue: TaskQueue, claimed: dict, lease: float,
                 on_cancel: Callable[[], None] | None = None) -> None:
        self.queue, self.claimed, self.lease = queue, claimed, lease
        self.stopped = threading.Event()
        self.cancel_poll = CANCEL_POLL
        self.cancel_requested = threading.Event()
        #: called (in the heartbeat's thread) once, when a cancel request is first seen
        self.on_cancel = on_cancel
        self.lost = threading.Event()
        #: held by the heartbeat's thread around each store call; see :meth:`stop`
        self._busy = threading.Lock()
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

    def _poll_cancel(self) -> bool:
        """Read the task between renewals; True when it is ours no more (the caller stops)."""
        try:
            found = self.queue.read_claim(self.claimed)
        except Exception:  # noqa: BLE001 - the renewals retry and report an unavailable store
            log.debug("task %s: reading its cancel request failed", self.claimed["_id"], exc_info=True)
            return False
        if found is None:
            log.warning("task %s: lease lost (another runner took the task, or it was deleted)", self.claimed["_id"])
            self.lost.set()
            return True
        if found.get("cancel_requested"):
            self._cancel()
        return False

    def _cancel(self) -> None:
        if not self.cancel_requested.is_set():
            self.cancel_requested.set()
            if self.on_cancel is not None:
                self.on_cancel()

    def start(self) -> None:
        """Start renewing, on a pooled thread (see :class:`_Threads`)."""
        _threads.submit(self.run, name="tensorhub-heartbeat")

    def run(self) -> None:
        failures = 0
        renew_at = time.monotonic() + self._next_wait(0)
        while not self.stopped.wait(max(0.0, min(self.cancel_poll, renew_at - time.monotonic()))):
            with self._busy:  # stop() waits for a store call in flight, never for a sleep
                if self.stopped.is_set():
                    return
                if time.monotonic() < renew_at:
                    if self._poll_cancel():
                        return
                    continue
                sent = time.monotonic()
                try:
                    renewed = self.queue.renew(self.claimed, self.lease)
                    if renewed is None and self.queue.still_mine(self.claimed):
                        raise RuntimeError("the renewal matched nothing, but the claim is still ours")
                except Exception:  # noqa: BLE001 - a transient failure must not cost the lease: retry soon
                    failures += 1
                    late = " (its lease may have run out)" if time.monotonic() > self.deadline else ""
                    log.warning("task %s: lease renewal failed (%d in a row)%s; retrying", self.claimed["_id"],
                                failures, late, exc_info=failures == 1)
                    renew_at = time.monotonic() + self._next_wait(failures)
                    continue
                if renewed is None:
                    log.warning("task %s: lease lost (another runner took the task, or it was deleted)",
                                self.claimed["_id"])
                    self.lost.set()
                    return
                failures = 0
                self.deadline = sent + self.lease
                renew_at = time.monotonic() + self._next_wait(0)
                if renewed.get("cancel_requested"):
                    self._cancel()

    def stop(self) -> None:
        """Stop renewing; wait for a renewal or read in flight to return (none starts after this).

        Only a store call in flight is waited for: a heartbeat asleep between beats is not woken
        and joined (a thread switch on the path of every task's end)."""
        self.stopped.set()
        with self._busy:
            pass


#: longest wait between retries of a failed lease renewal (seconds)
RETRY_MAX_WAIT = 2.0
#: seconds between two reads of a running task's ``cancel_requested`` by its heartbeat (see :class:`Heartbeat`)
CANCEL_POLL = 0.5
