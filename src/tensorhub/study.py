"""Studies: adaptive hyper-parameter searches whose trials are tasks, their parameters chosen by Optuna.

``hub.create_study(task_name, script, space=..., n_trials=N, parallelism=K)`` records a study
(collection ``studies``: the script's text, the search space as Optuna distributions in JSON, the
sampler's and pruner's names, the budget). A *driver* (``hub.run_study(task_name)``, ``tensorhub
study NAME``) then keeps at most K of its trials queued or running: each trial is a task (its
``task_name`` is the study's), whose hyper-parameters Optuna's sampler chose (``ask``) after it
was told every finished trial's objective (``tell``). Runners (``tensorhub worker``) run the
trials as any other task.

Design choices, and why:

* **A driver process, not the runners.** The sampler lives in one process: a user's own
  sampler object (and its random state) cannot be stored, and rebuilding a study for every claim
  would cost each runner O(trials) reads and sampler work per task. Several drivers of one study
  at once are nevertheless safe (below), so a supervisor may simply restart it.
* **The store is the study's state; Optuna's storage is in memory.** The driver rebuilds an
  in-memory Optuna study from the trial tasks when it starts (``create_trial`` + ``add_trial``,
  the sampler's system attributes stored on each trial), and tells it each trial as it ends.
  No second store (an Optuna RDB storage) can disagree with the queue after a crash, and it
  works on every backend. A SIGKILLed driver, restarted, continues the same study.
* **Trial numbers are unique in the store.** Trial ``n`` is a task whose ``_id`` is derived from
  (study, ``n``) (:func:`trial_id`), and trials are numbered 0, 1, 2... without gaps: a driver
  queues trial ``n`` only after reading trials ``0..n-1``. A driver killed between Optuna's
  ``ask`` and the insert left nothing (a restart asks again for the same number); two drivers
  queuing the same number meet a :class:`~tensorhub.errors.DuplicateKeyError` and the loser
  re-reads. So no trial is lost or doubled and at most ``n_trials`` are ever queued. (On
  ``s3://`` a duplicate ``_id`` written by another process after its last listing is not caught:
  run one driver per study there.)
* **Objective.** ``result[objective_key]`` of a finished trial (the script's global; by default
  ``saved_result_keys=[objective_key]``), else the last value of ``objective_key`` it logged
  (``run.log``/``hub.log``). A finished trial without a number there, a failed or a cancelled
  one is told Optuna as failed.
* **Pruning.** With a pruner, the driver reads each running trial's new log rows holding
  ``objective_key`` (training or validation logs, by ``step``), reports them as Optuna
  intermediate values and asks the pruner; a trial it prunes gets a prune request
  (``TaskQueue.request_prune``: a cancel request marked ``prune_requested``), which its runner
  obeys as it obeys a cancel: the task ends ``pruned``. Rows reach the store in batches
  (every 2 s, :mod:`tensorhub.run_log`), so a prune follows a logged value by a few seconds.

Optuna is an optional dependency (``pip install tensorhub[optuna]``), imported only by the
functions that need it (:func:`optuna_module`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bson import ObjectId

from tensorhub import logs as _logs
from tensorhub import runs
from tensorhub import tasks as _tasks
from tensorhub.errors import (
    BackendNotInstalledError,
    CorruptDataError,
    DuplicateKeyError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    NotFoundError,
    TaskTimeoutError,
)
from tensorhub.documents import normalize_document
from tensorhub.polling import ChangeWait
from tensorhub.records import Records, utcnow
from tensorhub.run_log import metric_key

log = logging.getLogger(__name__)

COLLECTION = "studies"
#: a study by name; a study's trials by number (the driver's reads)
INDEXES = {COLLECTION: [[("project_name", 1), ("study_name", 1), ("_id", 1)]],
           _tasks.COLLECTION: [[("project_name", 1), ("study_id", 1), ("trial", 1)]]}
#: a study record is written by create_study only: every field is the repository's
INTERNAL_FIELDS = frozenset({"study_name", "script", "script_path", "space", "sampler", "pruner", "n_trials",
                             "direction", "objective_key", "parallelism", "saved_result_keys", "task_options"})
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median",)
DIRECTIONS = ("minimize", "maximize")
#: what a study compares, so that ``create_study`` of an existing study resumes it only when it is the same one
DEFINITION = ("script", "space", "sampler", "pruner", "n_trials", "direction", "objective_key", "parallelism",
              "saved_result_keys", "task_options")
#: ``sampler``/``pruner`` name of a user's Optuna object (not storable: pass it to ``run_study`` again)
CUSTOM = "custom"


class OptunaNotInstalledError(BackendNotInstalledError):
    """A study needs Optuna, an optional dependency: ``pip install tensorhub[optuna]``."""


def optuna_module() -> Any:
    """``optuna``, imported now; :class:`OptunaNotInstalledError` naming the extra when it is missing."""
    try:
        import optuna
    except ImportError as exc:
        raise OptunaNotInstalledError("studies need Optuna: pip install tensorhub[optuna]") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial otherwise
    return optuna


# ---------------------------------------------------------------------------- definitions
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def distribution(name: str, spec: Any) -> Any:
    """The Optuna distribution of one hyper-parameter: an Optuna distribution, ``(low, high)`` (a float
    range), ``(low, high, "log")`` (log-scaled), ``(low, high, "int")`` (integers), or a list (choices)."""
    optuna = optuna_module()
    dists = optuna.distributions
    if isinstance(spec, dists.BaseDistribution):
        return spec
    forms = ('(low, high), (low, high, "log"), (low, high, "int"), a list of choices, or an Optuna distribution')
    if isinstance(spec, list):
        if not spec or not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise InvalidArgumentError(f"space[{name!r}]: a choice list holds None, bools, numbers or strings "
                                       f"and is not empty, got {spec!r}")
        return dists.CategoricalDistribution(spec)
    if isinstance(spec, tuple) and len(spec) in (2, 3) and _number(spec[0]) and _number(spec[1]):
        low, high = spec[0], spec[1]
        scale = spec[2] if len(spec) == 3 else None
        if low > high or (low == high and scale != "int"):
            raise InvalidArgumentError(f"space[{name!r}]: low must be below high, got {spec!r}")
        if scale is None:
            return dists.FloatDistribution(float(low), float(high))
        if scale == "log":
            if low <= 0:
                raise InvalidArgumentError(f"space[{name!r}]: a log range needs low > 0, got {spec!r}")
            return dists.FloatDistribution(float(low), float(high), log=True)
        if scale == "int":
            if int(low) != low or int(high) != high:
                raise InvalidArgumentError(f"space[{name!r}]: an int range needs whole bounds, got {spec!r}")
            return dists.IntDistribution(int(low), int(high))
    error = InvalidArgumentError if isinstance(spec, (tuple, list)) else InvalidArgumentTypeError
    raise error(f"space[{name!r}] must be {forms}, got {spec!r}")


def parse_space(space: Any) -> dict[str, Any]:
    """``space`` as ``{name: Optuna distribution}`` (see :func:`distribution`); names are identifiers."""
    if not isinstance(space, Mapping) or not space:
        raise InvalidArgumentTypeError(f"space must be a non-empty dict of hyper-parameter names to ranges, "
                                       f"e.g. {{'lr': (1e-4, 1e-1, 'log')}}, got {space!r}")
    parsed = {}
    for name, spec in space.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidArgumentError(f"hyper-parameter names must be Python identifiers, got {name!r}")
        parsed[name] = distribution(name, spec)
    return parsed


def _grid(distributions: Mapping[str, Any]) -> dict[str, list]:
    """The grid of a ``"grid"`` study: each choice list, each int range expanded."""
    optuna = optuna_module()
    grid: dict[str, list] = {}
    for name, dist in distributions.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise InvalidArgumentError(f"sampler='grid' needs lists or (low, high, 'int') ranges; "
                                       f"space[{name!r}] is a float range")
    return grid


def _sampler_spec(sampler: Any, seed: Any) -> dict[str, Any]:
    optuna = optuna_module()
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgumentTypeError(f"seed must be an int or None, got {seed!r}")
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return {"name": CUSTOM, "class": type(sampler).__name__}
    if sampler not in SAMPLERS:
        raise InvalidArgumentError(f"sampler must be one of {list(SAMPLERS)} or an Optuna sampler, got {sampler!r}")
    return {"name": sampler, "seed": seed}


def _pruner_spec(pruner: Any) -> dict[str, Any] | None:
    if pruner is None:
        return None
    optuna = optuna_module()
    if isinstance(pruner, optuna.pruners.BasePruner):
        return {"name": CUSTOM, "class": type(pruner).__name__}
    if pruner not in PRUNERS:
        raise InvalidArgumentError(f"pruner must be None, one of {list(PRUNERS)} or an Optuna pruner, got {pruner!r}")
    return {"name": pruner}


def _count_arg(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")
    return value


def derived_id(*parts: bytes) -> ObjectId:
    """An ``_id`` that only these parts give: a second insert of the same one is a duplicate on every backend."""
    return ObjectId(hashlib.blake2b(b"\0".join(parts), digest_size=12).digest())


def study_id(project_name: str, study_name: str) -> ObjectId:
    """The ``_id`` of a project's study of that name (one study per name: a second create is refused)."""
    return derived_id(b"study", project_name.encode(), study_name.encode())


def trial_id(study: ObjectId, number: int) -> ObjectId:
    """The ``_id`` of trial ``number``'s task: unique in the store, so a trial number is never queued twice."""
    return derived_id(b"trial", study.binary, str(number).encode())


def create_study(records: Records, task_name: Any, script: Any, space: Any, sampler: Any = "tpe",
                 n_trials: Any = None, direction: Any = "minimize", objective_key: Any = "val_loss",
                 parallelism: Any = 1, pruner: Any = None, seed: Any = None,
                 saved_result_keys: Any = None, task_options: Mapping[str, Any] | None = None) -> dict:
    """Record a study (see the module docstring) and return its record; an identical study of the same name
    is returned as it is (a driver script rerun after a crash resumes it), a different one is refused."""
    if not isinstance(task_name, str) or not task_name:
        error = InvalidArgumentError if isinstance(task_name, str) else InvalidArgumentTypeError
        raise error(f"task_name (the study's name) must be a non-empty string, got {task_name!r}")
    distributions = parse_space(space)
    optuna = optuna_module()
    sampler_spec, pruner_spec = _sampler_spec(sampler, seed), _pruner_spec(pruner)
    if sampler_spec["name"] == "grid":
        _grid(distributions)
    if n_trials is None:
        raise InvalidArgumentError("n_trials is required: how many trials the study queues in all")
    n_trials, parallelism = _count_arg("n_trials", n_trials), _count_arg("parallelism", parallelism)
    if direction not in DIRECTIONS:
        raise InvalidArgumentError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    if not isinstance(objective_key, str) or not objective_key.isidentifier():
        raise InvalidArgumentError(f"objective_key must be a metric name (an identifier), got {objective_key!r}")
    keys = [objective_key] if saved_result_keys is None else saved_result_keys
    options = dict(task_options or {})
    # every argument of the trials' tasks checked now, by making one (nothing is written)
    path, text = _tasks.read_script(script)
    _tasks._new_tasks(records, task_name, script, [{}], keys, fields={}, read=(path, text),
                      **{"max_attempts": _tasks.DEFAULT_MAX_ATTEMPTS, "timeout": None, "priority": 0,
                         "retry_on_error": 0, **options})
    record = records.new_record({}, INTERNAL_FIELDS, "study", {
        "study_name": task_name, "script": text, "script_path": path,
        "space": {name: optuna.distributions.distribution_to_json(d) for name, d in distributions.items()},
        "sampler": sampler_spec, "pruner": pruner_spec, "n_trials": n_trials, "direction": direction,
        "objective_key": objective_key, "parallelism": parallelism, "saved_result_keys": list(keys),
        "task_options": options})
    record["_id"] = study_id(records.project_name, task_name)
    studies = records.collection(COLLECTION)
    try:
        studies.insert([record])
    except DuplicateKeyError:
        existing = find_study(records, task_name)
        if any(existing.get(k) != record[k] for k in DEFINITION):
            raise InvalidArgumentError(
                f"a study named {task_name!r} already exists in project {records.project_name!r} with another "
                "definition; choose another name, or pass the same arguments to resume it") from None
        return existing
    log.info("study %r created: %d trials, %d at a time", task_name, n_trials, parallelism)
    return record


def find_study(records: Records, study_name: Any) -> dict:
    """The study record named ``study_name``; :class:`NotFoundError` if there is none."""
    if not isinstance(study_name, str) or not study_name:
        error = InvalidArgumentError if isinstance(study_name, str) else InvalidArgumentTypeError
        raise error(f"the study's name must be a non-empty string, got {study_name!r}")
    found = records.collection(COLLECTION).find({"_id": study_id(records.project_name, study_name)}, limit=1)
    if not found:
        raise NotFoundError(f"no study named {study_name!r} in project {records.project_name!r}; "
                            "create it with hub.create_study")
    return found[0]


# ---------------------------------------------------------------------------- the driver
def _objective(value: Any) -> float | None:
    return float(value) if _number(value) else None


class StudyDriver:
    """Drives one study: tells Optuna each ended trial, prunes, and queues trials up to the parallelism.

    Its whole state is rebuilt from the store when it is made (see the module docstring).
    """

    def __init__(self, records: Records, queue: _tasks.TaskQueue, study: Mapping[str, Any],
                 sampler: Any = None, pruner: Any = None) -> None:
        optuna = self.optuna = optuna_module()
        self.records, self.queue, self.study = records, queue, study
        try:
            self.distributions = {name: optuna.distributions.json_to_distribution(text)
                                  for name, text in study["space"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptDataError(f"study {study.get('study_name')!r}: its space cannot be read: {exc}") from exc
        self.objective_key: str = study["objective_key"]
        self.n_trials: int = study["n_trials"]
        self.parallelism: int = study["parallelism"]
        self.pruning = study.get("pruner") is not None
        self.optuna_study = optuna.create_study(direction=study["direction"],
                                                sampler=self._sampler(sampler), pruner=self._pruner(pruner))
        self.trials: dict[int, int] = {}  # our trial number -> Optuna's trial id (in the in-memory study)
        self.ended: dict[int, str] = {}  # trial number -> its status, once told
        self.steps: dict[int, int] = {}  # trial number -> the last step reported to Optuna
        self.next = 0  # the next trial number to queue (trials are numbered without gaps)
        self.low = 0  # every trial below it is told
        self._template: dict | None = None
        self.done = False

    def _sampler(self, given: Any) -> Any:
        spec = self.study["sampler"]
        samplers = self.optuna.samplers
        if given is not None:
            if not isinstance(given, samplers.BaseSampler):
                raise InvalidArgumentTypeError(f"sampler must be an Optuna sampler, got {type(given).__name__}")
            return given
        if spec.get("name") == CUSTOM:
            raise InvalidArgumentError(f"study {self.study['study_name']!r} uses its own sampler "
                                       f"({spec.get('class')}): pass it again, run_study(..., sampler=...)")
        seed = spec.get("seed")
        if spec.get("name") == "random":
            return samplers.RandomSampler(seed=seed)
        if spec.get("name") == "grid":
            class Grid(samplers.GridSampler):  # type: ignore[name-defined]  # optuna is imported lazily (Any)
                """Optuna's grid, without its ``study.stop()`` once the grid is covered: that works only
                inside ``study.optimize``; here ``n_trials`` ends the study."""

                def after_trial(self, *args: Any) -> None:
                    pass

            return Grid(_grid(self.distributions), seed=seed)
        if spec.get("name") == "tpe":
            return samplers.TPESampler(seed=seed)
        raise CorruptDataError(f"study {self.study['study_name']!r}: unknown sampler {spec!r}")

    def _pruner(self, given: Any) -> Any:
        spec = self.study.get("pruner")
        pruners = self.optuna.pruners
        if given is not None:
            if not isinstance(given, pruners.BasePruner):
                raise InvalidArgumentTypeError(f"pruner must be an Optuna pruner, got {type(given).__name__}")
            self.study = {**self.study, "pruner": spec or {"name": CUSTOM}}
            return given
        if spec is None:
            return pruners.NopPruner()
        if spec.get("name") == CUSTOM:
            raise InvalidArgumentError(f"study {self.study['study_name']!r} uses its own pruner "
                                       f"({spec.get('class')}): pass it again, run_study(..., pruner=...)")
        if spec.get("name") == "median":
            return pruners.MedianPruner()
        raise CorruptDataError(f"study {self.study['study_name']!r}: unknown pruner {spec!r}")

    # ------------------------------------------------------------------ reading the trials
    def _read(self) -> list[dict]:
        """The trials not told yet (every trial from the lowest untold number on), by number."""
        found = self.queue.find({"study_id": self.study["_id"], "trial": {"$gte": self.low}},
                                sort=[("trial", 1), ("_id", 1)])
        return [t for t in found if isinstance(t.get("trial"), int) and not isinstance(t.get("trial"), bool)]

    def _intermediate(self, trials: Sequence[Mapping[str, Any]]) -> dict[Any, dict[int, float]]:
        """Per task ``_id``: ``{step: value}`` of ``objective_key`` its current attempt logged after the steps
        already reported (training logs, then validation logs), in one query per log kind."""
        values: dict[Any, dict[int, float]] = {t["_id"]: {} for t in trials}
        if not trials:
            return values
        attempts = {t["_id"]: t.get("attempts") for t in trials}
        after = min(self.steps.get(t["trial"], -1) for t in trials)
        for kind in ("training", "validation"):
            rows = self.records.find(_logs.COLLECTIONS[kind], {
                "task_id": {"$in": list(values)}, self.objective_key: {"$exists": True}, "step": {"$gt": after}})
            for row in rows:
                step, value = row.get("step"), _objective(row.get(self.objective_key))
                if (isinstance(step, int) and not isinstance(step, bool) and value is not None
                        and row.get("attempt") == attempts.get(row.get("task_id"))):
                    values[row["task_id"]].setdefault(step, value)
        return values

    def _final_value(self, task: Mapping[str, Any]) -> float | None:
        """The objective of an ended trial: its result's, else the last value it logged."""
        result = task.get("result") or {}
        if self.objective_key in result:
            return _objective(result[self.objective_key])
        (row,) = runs.find_runs(self.records, self.queue, _id=task["_id"]) or [{"metrics": {}}]
        for name in (self.objective_key, metric_key("validation", self.objective_key)):
            if name in row["metrics"]:
                return _objective(row["metrics"][name].get("final"))
        return None

    # ------------------------------------------------------------------ telling Optuna
    def _add(self, task: Mapping[str, Any]) -> None:
        """Add a trial read from the store to the in-memory study, as running (told below when it ended)."""
        trial = self.optuna.trial
        params = {k: v for k, v in (task.get("hyper_parameters") or {}).items() if k in self.distributions}
        stored = task.get("trial_attrs")
        attrs: dict[str, Any] = dict(stored) if isinstance(stored, Mapping) else {}
        try:
            frozen = trial.create_trial(state=trial.TrialState.RUNNING, params=params,
                                        distributions={k: self.distributions[k] for k in params},
                                        system_attrs=attrs)
            self.optuna_study.add_trial(frozen)
        except (ValueError, TypeError) as exc:  # a hand-edited trial: counted, never told
            log.warning("study %r: trial %d cannot be given to Optuna: %s", self.study["study_name"], task["trial"], exc)
            self.trials[task["trial"]] = -1
            return
        self.trials[task["trial"]] = self.optuna_study.trials[-1]._trial_id

    def _report(self, number: int, values: Mapping[int, float]) -> Any:
        """Report new intermediate values of trial ``number``; its live Optuna trial."""
        live = self.optuna.Trial(self.optuna_study, self.trials[number])
        for step in sorted(values):
            if step > self.steps.get(number, -1):
                live.report(values[step], step)
                self.steps[number] = step
        return live

    def _tell(self, task: Mapping[str, Any], values: Mapping[int, float]) -> None:
        number, status = task["trial"], task["status"]
        self.ended[number] = status
        if self.trials[number] < 0:
            return
        states = self.optuna.trial.TrialState
        live = self._report(number, values)
        value = self._final_value(task) if status == _tasks.FINISHED else None
        if status == _tasks.FINISHED and value is not None:
            self.optuna_study.tell(live, value)
        elif status == _tasks.PRUNED:
            self.optuna_study.tell(live, state=states.PRUNED)
        else:
            self.optuna_study.tell(live, state=states.FAIL)

    def step(self) -> bool:
        """One pass: read the trials not told yet, tell Optuna those that ended, prune, queue new trials.
        Returns whether the study is done (``n_trials`` queued, all ended)."""
        found = self._read()
        values = self._intermediate([t for t in found if t["status"] in (_tasks.RUNNING, *_tasks.ENDED)
                                     and t["trial"] not in self.ended]) if self.pruning else {}
        unfinished = 0
        for task in found:
            number = task["trial"]
            self.next = max(self.next, number + 1)
            if number in self.ended:
                continue
            if number not in self.trials:
                self._add(task)
            if task["status"] in _tasks.ENDED:
                self._tell(task, values.get(task["_id"], {}))
                continue
            unfinished += 1
            if task["status"] == _tasks.RUNNING and self.pruning and self.trials[number] >= 0 \
                    and not task.get("cancel_requested"):
                if self._report(number, values.get(task["_id"], {})).should_prune():
                    if self.queue.request_prune({"_id": task["_id"]}):
                        log.info("study %r: trial %d pruned at step %s", self.study["study_name"], number,
                                 self.steps.get(number))
        while self.low in self.ended:
            self.low += 1
        while self.next < self.n_trials and unfinished < self.parallelism:
            if not self._queue_next():
                break  # another driver queued that number: read again first
            unfinished += 1
        # every trial below ``low`` ended, every one from it on was read: none unfinished means all ended
        self.done = self.next >= self.n_trials and unfinished == 0
        return self.done

    def _queue_next(self) -> bool:
        """Ask Optuna for trial ``next``'s parameters and queue it; False if that number is in the store already."""
        asked = self.optuna_study.ask(self.distributions)
        number = self.next
        task = self._new_task(number, asked)
        try:
            self.queue.tasks.insert([task])
        except DuplicateKeyError:
            log.info("study %r: trial %d was queued by another driver", self.study["study_name"], number)
            self.optuna_study.tell(asked, state=self.optuna.trial.TrialState.FAIL)  # never ran: the sampler ignores it
            return False
        self.trials[number] = asked._trial_id
        self.next = number + 1
        return True

    def _new_task(self, number: int, asked: Any) -> dict:
        if self._template is None:
            options = {"max_attempts": _tasks.DEFAULT_MAX_ATTEMPTS, "timeout": None, "priority": 0,
                       "retry_on_error": 0, **(self.study.get("task_options") or {})}
            (self._template,) = _tasks._new_tasks(
                self.records, self.study["study_name"], self.study.get("script_path") or "study.py", [{}],
                list(self.study.get("saved_result_keys") or []), fields={},
                read=(self.study.get("script_path") or "study.py", self.study["script"]),
                own={"study_id": self.study["_id"]}, **options)
        task = dict(self._template)
        task.update({"_id": trial_id(self.study["_id"], number), "trial": number, "time": utcnow(), "errors": [],
                     "hyper_parameters": normalize_document(dict(asked.params)),
                     "trial_attrs": json.loads(json.dumps(self.optuna_study._storage.get_trial_system_attrs(
                         asked._trial_id), default=str))})
        return task

    def summary(self) -> dict[str, Any]:
        """What the study found so far: the best trial's parameters and value, and counts by status."""
        counts: dict[str, int] = {}
        for status in self.ended.values():
            counts[status] = counts.get(status, 0) + 1
        best: dict[str, Any] = {"best_params": None, "best_value": None, "best_trial": None}
        complete = [t for t in self.optuna_study.trials if t.state == self.optuna.trial.TrialState.COMPLETE]
        if complete:
            top = min(complete, key=lambda t: t.value if self.study["direction"] == "minimize" else -t.value)
            number = next(n for n, i in self.trials.items() if i == top._trial_id)
            best = {"best_params": dict(top.params), "best_value": top.value, "best_trial": number}
        return {"study_name": self.study["study_name"], "queued": self.next, "ended": len(self.ended),
                "n_trials": self.n_trials, "done": self.done,
                "by_status": counts, **best}

    def run(self, timeout: float | None = None, poll: float = 0.5, wait: bool = True) -> dict[str, Any]:
        """Step until the study is done (or once, with ``wait=False``); its :meth:`summary`.
        Between steps it waits as :class:`~tensorhub.polling.ChangeWait` says: 10 ms after a step
        that told or queued a trial, doubling up to ``poll`` while nothing changes; on ``file://``
        until the store was written to (checked every 2 ms), at most ``poll``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = ChangeWait(self.records.change_token, poll, first=0.01)
        while True:
            before = (self.next, len(self.ended))
            waiting.mark()
            if self.step() or not wait:
                return self.summary()
            if deadline is not None and time.monotonic() >= deadline:
                raise TaskTimeoutError(f"study {self.study['study_name']!r}: {self.next} of {self.n_trials} trials "
                                       f"queued, {len(self.ended)} ended after {timeout}s; run it again to continue")
            waiting.wait((self.next, len(self.ended)) != before, deadline=deadline)


def run_study(records: Records, queue: _tasks.TaskQueue, study_name: Any, sampler: Any = None,
              pruner: Any = None, timeout: float | None = None, poll: float = 0.5, wait: bool = True) -> dict[str, Any]:
    """Drive the study named ``study_name`` (see :class:`StudyDriver`) and return its summary."""
    driver = StudyDriver(records, queue, find_study(records, study_name), sampler=sampler, pruner=pruner)
    return driver.run(timeout=timeout, poll=poll, wait=wait)


