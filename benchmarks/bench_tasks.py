"""Task throughput and claim latency: tensorhub against a raw claim loop on the same store (issue 5).

Measured, each as ``tensorhub / baseline`` of medians over alternating runs, on ``file://``
(against raw sqlite3) and ``mongodb://`` (against raw pymongo on the same SecantusDB server):

* ``throughput``: N no-op tasks (the script is ``pass``, default N=200) run by 1 and by 4 runner
  processes, each looping ``hub.run_task(name)`` until none is left (every task in its own child
  process, tensorhub's default), against the same number of processes looping a raw claim, an
  ``exec`` of the script and a raw "finished" update. Time from "go" to the last runner's "done";
  tasks/s = N / that time. The runner processes are spawned, have opened the store and (for
  tensorhub) started their fork-server helper before the clock starts: this is a steady-state
  runner, not a cold start.
* ``claim``: one ``tensorhub.tasks.claim_task(hub._records, {"task_name": name})`` on a queue of N
  pending tasks, against one raw claim on a table of N pending rows: ``file://``: ``BEGIN IMMEDIATE;
  SELECT ... WHERE status = 'pending' ORDER BY time LIMIT 1; UPDATE ...; COMMIT`` with an index on
  ``(status, time)``; ``mongodb://``: ``find_one_and_update({"status": "pending"}, {"$set": ...},
  sort=[("time", 1)])`` with an index on ``(status, time)``. The claimed task is handed back to
  ``pending`` after each run (untimed), so every claim sees N pending tasks.
* ``isolation``: one ``hub.run_task(name)`` (child process) against one
  ``hub.run_task(name, in_process=True)``: what isolating a task costs.
* ``targets`` (issue 14, ``file://`` only): N no-op tasks (default 300) run by 1 runner in
  child-process mode, by 1 runner in process, and by 4 runners (processes) in child-process mode,
  against Optuna's own ``study.optimize`` (sqlite storage, ``n_jobs=1``, a no-op objective, N
  trials) in the same run; each line runs ``--repeats`` times, the lines interleaved, medians kept.
  Targets: child-process mode with 1 runner >= 2x Optuna's trials/s; 4 runners >= 1.5x 1 runner
  (on a 2-core machine). Optuna is an optional dependency: without it that line is skipped, said so.

    python benchmarks/bench_tasks.py                  # N=200, 1 and 4 runners, both backends
    python benchmarks/bench_tasks.py --quick          # N=60, 3 repeats
    python benchmarks/bench_tasks.py --backends file --runners 1,2,4
    python benchmarks/bench_tasks.py --profile        # also print cProfile of claim_task and run_task
    python benchmarks/bench_tasks.py --targets        # only the issue-14 target lines (file://, Optuna)
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MongoServers, Result, bench_main, compare, fmt_seconds, parse_ints, profile, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402
from tensorhub import tasks as _tasks  # noqa: E402

BENCH = "tasks"
PROJECT = "bench"
TASK = "noop"
SCRIPT_TEXT = "pass\n"
#: the throughput lines run N tasks per run: at most this many runs per side keep the default run short
THROUGHPUT_REPEATS = 3
#: tasks of the in-process/child-process comparison, apart from the N-task queue of the claim lines
ISOLATION_TASK = "noop-isolation"
_unique = itertools.count()


# ---------------------------------------------------------------- raw queues
def _raw_sqlite(path: Path) -> sqlite3.Connection:
    """tensorhub's durability settings (WAL, synchronous=NORMAL); 60 s busy timeout as tensorhub's."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _raw_sqlite_create(path: Path, n: int) -> None:
    conn = _raw_sqlite(path)
    conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, time REAL NOT NULL, status TEXT NOT NULL,"
                 " task_name TEXT, script TEXT, owner TEXT, started_at REAL, finished_at REAL)")
    conn.execute("CREATE INDEX tasks_queue ON tasks (status, time)")
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO tasks (time, status, task_name, script) VALUES (?, 'pending', ?, ?)",
                     [(now + i * 1e-6, TASK, SCRIPT_TEXT) for i in range(n)])
    conn.execute("COMMIT")
    conn.close()


def _raw_sqlite_claim(conn: sqlite3.Connection, owner: str) -> tuple | None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT id, task_name, script FROM tasks WHERE status = 'pending' ORDER BY time LIMIT 1"
                           ).fetchone()
        if row is not None:
            conn.execute("UPDATE tasks SET status = 'running', owner = ?, started_at = ? WHERE id = ?",
                         (owner, time.time(), row[0]))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return row


def _raw_sqlite_finish(conn: sqlite3.Connection, task_id: int) -> None:
    conn.execute("UPDATE tasks SET status = 'finished', finished_at = ? WHERE id = ?", (time.time(), task_id))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _raw_mongo_create(coll: Any, n: int) -> None:
    coll.create_index([("status", 1), ("time", 1)])
    start = _now()
    coll.insert_many([{"time": start + dt.timedelta(microseconds=i), "status": "pending", "task_name": TASK,
                       "script": SCRIPT_TEXT} for i in range(n)])


def _raw_mongo_claim(coll: Any, owner: str) -> dict | None:
    return coll.find_one_and_update({"status": "pending"},
                                    {"$set": {"status": "running", "owner": owner, "started_at": _now()}},
                                    sort=[("time", 1)])


def _raw_mongo_finish(coll: Any, task_id: Any) -> None:
    coll.update_one({"_id": task_id}, {"$set": {"status": "finished", "finished_at": _now()}})


# ---------------------------------------------------------------- runner processes
def _noop_objective(trial: Any) -> float:
    """Optuna's side of a no-op task: a trial that computes nothing."""
    return 0.0


def _runner_main(conn: Any, kind: str) -> None:
    """A runner process: ``open`` a store, then on ``go`` run tasks until none is left; reply with the count.

    ``kind`` is ``tensorhub`` (``hub.run_task`` in a loop), ``tensorhub-in-process``
    (``hub.run_task(in_process=True)``), ``sqlite`` or ``pymongo`` (raw claim, ``exec`` of the
    script, raw finish), or ``optuna`` (``study.optimize`` of a no-op objective: N trials).
    """
    os.environ.setdefault("TENSORHUB_PROGRESS", "0")
    handle: Any = None
    owner = f"{os.getpid()}"
    while True:
        message = conn.recv()
        op = message[0]
        if op == "open":
            where = message[1]
            if kind == "tensorhub":
                from tensorhub.zygote import shared_zygote

                handle = TensorHub(where, project_name=PROJECT)
                shared_zygote()  # a long-running runner has its fork-server helper already
            elif kind == "tensorhub-in-process":
                handle = TensorHub(where, project_name=PROJECT)
            elif kind == "optuna":
                import optuna

                optuna.logging.set_verbosity(optuna.logging.WARNING)
                handle = optuna.create_study(storage=f"sqlite:///{where}", study_name="bench")
            elif kind == "sqlite":
                handle = _raw_sqlite(Path(where))
            else:
                import pymongo

                uri, db = message[1], message[2]
                client = pymongo.MongoClient(uri, tz_aware=True)
                client.admin.command("ping")
                handle = client[db]["tasks"]
            conn.send("ready")
        elif op == "go":
            ran = 0
            if kind == "tensorhub":
                while handle.run_task(TASK):
                    ran += 1
            elif kind == "tensorhub-in-process":
                while handle.run_task(TASK, in_process=True):
                    ran += 1
            elif kind == "optuna":
                handle.optimize(_noop_objective, n_trials=message[1], n_jobs=1)
                ran = message[1]
            elif kind == "sqlite":
                while (row := _raw_sqlite_claim(handle, owner)) is not None:
                    exec(compile(row[2], "<task>", "exec"), {"__name__": "__main__"})  # noqa: S102
                    _raw_sqlite_finish(handle, row[0])
                    ran += 1
            else:
                while (doc := _raw_mongo_claim(handle, owner)) is not None:
                    exec(compile(doc["script"], "<task>", "exec"), {"__name__": "__main__"})  # noqa: S102
                    _raw_mongo_finish(handle, doc["_id"])
                    ran += 1
            conn.send(ran)
        elif op == "close":
            if kind == "pymongo":
                handle.database.client.close()
            elif kind == "optuna":
                pass  # the study holds no more than an SQLAlchemy engine: dropped below
            else:
                handle.close()
            handle = None
            conn.send("closed")
        else:
            return


class Runners:
    """``count`` spawned runner processes of one kind, kept for every run of a comparison."""

    def __init__(self, kind: Any, count: int, main: Any = None) -> None:
        """``main(conn, kind)`` runs in each process (default: this module's runner)."""
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.processes = [], []
        for _ in range(count):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=main or _runner_main, args=(child, kind), daemon=True)
            process.start()
            self.conns.append(parent)
            self.processes.append(process)

    def _all(self, *message: Any) -> list[Any]:
        for conn in self.conns:
            conn.send(message)
        return [conn.recv() for conn in self.conns]

    def open(self, *where: Any) -> None:
        self._all("open", *where)

    def go(self, *args: Any) -> int:
        return sum(self._all("go", *args))

    def close_store(self) -> None:
        self._all("close")

    def stop(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("exit",))
            except OSError:
                pass
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join(5)


def optuna_once(group: "Runners", n: int, tmp: Path) -> tuple[float, int]:
    """Seconds and trials of one Optuna ``study.optimize`` of ``n`` no-op trials by ``group`` (an
    ``optuna`` runner), on a fresh sqlite storage in ``tmp``."""
    where = tmp / f"optuna-{next(_unique)}.sqlite"
    group.open(str(where))
    started = time.perf_counter()
    ran = group.go(n)
    seconds = time.perf_counter() - started
    group.close_store()
    where.unlink(missing_ok=True)
    return seconds, ran


def _script(tmp: Path) -> Path:
    path = tmp / "noop_task.py"
    path.write_text(SCRIPT_TEXT)
    return path


def _create_tasks(hub: TensorHub, script: Path, n: int, name: str = TASK) -> None:
    for _ in range(n):
        hub.create_task(name, script)


def _check_finished(hub: TensorHub, n: int) -> None:
    statuses = [t["status"] for t in hub.find_tasks(TASK)]
    assert len(statuses) == n and statuses.count("finished") == n, \
        f"{statuses.count('finished')} of {len(statuses)} tasks finished ({n} created)"


def _throughput(backend: str, n: int, count: int, repeats: int, raw_kind: str, raw_label: str,
                new_hub_store: Any, new_raw_store: Any) -> Result:
    """N tasks run by ``count`` runner processes: tensorhub against the raw claim loop.

    ``new_hub_store()`` returns ``(runner open args, hub holding N pending tasks, cleanup)``;
    ``new_raw_store()`` returns ``(runner open args, finished-count function, cleanup)``.
    """
    hub_runners, raw_runners = Runners("tensorhub", count), Runners(raw_kind, count)
    try:
        def setup_hub() -> tuple[TensorHub, Any]:
            where, hub, cleanup = new_hub_store()
            hub_runners.open(*where)
            return hub, cleanup

        def teardown_hub(state: tuple[TensorHub, Any]) -> None:
            hub, cleanup = state
            hub_runners.close_store()
            _check_finished(hub, n)
            cleanup()

        def setup_raw() -> tuple[Any, Any]:
            where, finished, cleanup = new_raw_store()
            raw_runners.open(*where)
            return finished, cleanup

        def teardown_raw(state: tuple[Any, Any]) -> None:
            finished, cleanup = state
            raw_runners.close_store()
            done = finished()
            assert done == n, f"raw: {done} of {n} tasks finished"
            cleanup()

        def go(runners: Runners) -> None:
            ran = runners.go()
            assert ran == n, f"the runners ran {ran} tasks, not {n}"

        label = f"{count} runner{'s' if count > 1 else ''}"
        result = compare(BENCH, backend, f"{n} no-op tasks, {label}", f"{raw_label}, {count} proc.",
                         repeats=min(repeats, THROUGHPUT_REPEATS), tensorhub=lambda _: go(hub_runners),
                         raw=lambda _: go(raw_runners), setup_tensorhub=setup_hub, setup_raw=setup_raw,
                         teardown_tensorhub=teardown_hub, teardown_raw=teardown_raw, warmup=0)
    finally:
        hub_runners.stop()
        raw_runners.stop()
    print(f"  {'':8} {'':42} {n / result.tensorhub_s:6.1f} vs {n / result.baseline_s:6.1f} tasks/s", flush=True)
    return result


def _claims(backend: str, n: int, repeats: int, hub: TensorHub, raw_label: str, raw_claim: Any,
            raw_release: Any) -> Result:
    """One claim on a queue of N pending tasks; each claimed task is handed back (untimed) after its run.

    compare() hands each run's setup state to its teardown, not the run's return value: the run
    puts what it claimed into a list made by the setup.
    """
    query = {"task_name": TASK}

    def hub_claim(box: list) -> None:
        box.append(_tasks.claim_task(hub._records, query))

    def hub_release(box: list) -> None:
        _tasks.release(hub._records, box[0])

    def raw(box: list) -> None:
        box.append(raw_claim())

    box: list = []
    hub_claim(box)
    raw(box)
    assert box[0] is not None and box[0]["task_name"] == TASK and box[1] is not None
    hub_release(box)
    raw_release(box[1:])
    return compare(BENCH, backend, f"claim_task, {n} pending", raw_label, repeats=max(repeats, 30),
                   tensorhub=hub_claim, raw=raw, setup_tensorhub=list, setup_raw=list,
                   teardown_tensorhub=hub_release, teardown_raw=raw_release)


def _isolation(backend: str, repeats: int, hub: TensorHub, script: Path) -> Result:
    """One ``run_task`` in a child process against one in this process, on the same store.

    The tasks have a name of their own, so the claims do not wade through the N-task queue.
    """
    runs = max(repeats, 20)
    _create_tasks(hub, script, 2 * (runs + 1), ISOLATION_TASK)  # one for every run of both sides, warm-up included

    def run_one(in_process: bool) -> None:
        assert hub.run_task(ISOLATION_TASK, in_process=in_process)

    result = compare(BENCH, backend, "run_task() (child process)", "run_task(in_process=True)", repeats=runs,
                     tensorhub=lambda _: run_one(False), raw=lambda _: run_one(True))
    statuses = [t["status"] for t in hub.find_tasks(ISOLATION_TASK)]
    assert statuses.count("finished") == len(statuses), f"isolation tasks did not all finish: {statuses}"
    return result


def _print_profiles(backend: str, hub: TensorHub, script: Path) -> None:
    query = {"task_name": TASK}
    _create_tasks(hub, script, 20)

    def claims() -> None:
        for _ in range(20):
            _tasks.release(hub._records, _tasks.claim_task(hub._records, query))

    print(profile(f"{backend}: 20 x (claim_task + release)", claims))
    print(profile(f"{backend}: 10 x run_task()", lambda: [hub.run_task(TASK) for _ in range(10)]))
    print(profile(f"{backend}: 10 x run_task(in_process=True)",
                  lambda: [hub.run_task(TASK, in_process=True) for _ in range(10)]))


# ---------------------------------------------------------------- file:// against raw sqlite3
def bench_file(n: int, repeats: int, runner_counts: tuple[int, ...], tmp: Path,
               show_profile: bool = False) -> list[Result]:
    script = _script(tmp)
    results = []

    def new_hub_store() -> tuple[tuple, TensorHub, Any]:
        root = tmp / f"hub-{next(_unique)}"
        hub = TensorHub(f"file://{root}", project_name=PROJECT)
        _create_tasks(hub, script, n)

        def cleanup() -> None:
            hub.close()
            shutil.rmtree(root, ignore_errors=True)
        return (f"file://{root}",), hub, cleanup

    def new_raw_store() -> tuple[tuple, Any, Any]:
        path = tmp / f"raw-{next(_unique)}.sqlite"
        _raw_sqlite_create(path, n)

        def finished() -> int:
            conn = _raw_sqlite(path)
            try:
                return conn.execute("SELECT COUNT(*) FROM tasks WHERE status = 'finished'").fetchone()[0]
            finally:
                conn.close()

        def cleanup() -> None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return (str(path),), finished, cleanup

    for count in runner_counts:
        results.append(_throughput("file", n, count, repeats, "sqlite", "sqlite3 claim loop",
                                   new_hub_store, new_raw_store))

    # claim latency: a queue of n pending tasks on each side
    hub = TensorHub(f"file://{tmp / 'hub-claims'}", project_name=PROJECT)
    _create_tasks(hub, script, n)
    raw_path = tmp / "raw-claims.sqlite"
    _raw_sqlite_create(raw_path, n)
    conn = _raw_sqlite(raw_path)

    def raw_release(box: list) -> None:
        conn.execute("UPDATE tasks SET status = 'pending', owner = NULL, started_at = NULL WHERE id = ?",
                     (box[0][0],))

    try:
        results.append(_claims("file", n, repeats, hub, "sqlite3 BEGIN IMMEDIATE/SELECT/UPDATE",
                               lambda: _raw_sqlite_claim(conn, "bench"), raw_release))
        results.append(_isolation("file", repeats, hub, script))
        if show_profile:
            _print_profiles("file", hub, script)
    finally:
        hub.close()
        conn.close()
    return results


# ---------------------------------------------------------------- mongodb:// against raw pymongo
def bench_mongodb(n: int, repeats: int, runner_counts: tuple[int, ...], tmp: Path,
                  show_profile: bool = False) -> list[Result]:
    import pymongo

    script = _script(tmp)
    results = []
    servers = MongoServers()

    # every throughput run gets a fresh server: its oplog grows with every write (see MongoServers)
    def new_hub_store() -> tuple[tuple, TensorHub, Any]:
        handle, uri = servers.start()
        where = f"{uri}/bench_tasks_{next(_unique)}"
        hub = TensorHub(where, project_name=PROJECT)
        _create_tasks(hub, script, n)

        def cleanup() -> None:
            hub.index.client.drop_database(hub.index.db.name)  # matters only on an external server
            hub.close()
            servers.stop(handle)
        return (where,), hub, cleanup

    def new_raw_store() -> tuple[tuple, Any, Any]:
        handle, uri = servers.start()
        client = pymongo.MongoClient(uri, tz_aware=True)
        db = f"bench_raw_{next(_unique)}"
        coll = client[db]["tasks"]
        _raw_mongo_create(coll, n)

        def cleanup() -> None:
            client.drop_database(db)
            client.close()
            servers.stop(handle)
        return (uri, db), lambda: coll.count_documents({"status": "finished"}), cleanup

    try:
        for count in runner_counts:
            results.append(_throughput("mongodb", n, count, repeats, "pymongo", "pymongo claim loop",
                                       new_hub_store, new_raw_store))

        # claims and isolation: one server; a few hundred writes do not grow its oplog much
        _, hub, cleanup_hub = new_hub_store()
        handle, uri = servers.start()
        client = pymongo.MongoClient(uri, tz_aware=True)
        coll = client["bench_raw_claims"]["tasks"]
        _raw_mongo_create(coll, n)

        def raw_release(box: list) -> None:
            coll.update_one({"_id": box[0]["_id"]}, {"$set": {"status": "pending"},
                                                     "$unset": {"owner": "", "started_at": ""}})

        try:
            results.append(_claims("mongodb", n, repeats, hub, "pymongo find_one_and_update",
                                   lambda: _raw_mongo_claim(coll, "bench"), raw_release))
            results.append(_isolation("mongodb", repeats, hub, script))
            if show_profile:
                _print_profiles("mongodb", hub, script)
        finally:
            cleanup_hub()
            client.drop_database("bench_raw_claims")
            client.close()
            servers.stop(handle)
    finally:
        servers.close()
    return results

# ---------------------------------------------------------------- issue 14 targets: against Optuna
#: (line, what the line runs) of the target comparison, in the order each repeat runs them
TARGET_LINES = (("child-1", "1 runner, child process per task"), ("in-process-1", "1 runner, in process"),
                ("child-4", "4 runners (processes), child process per task"),
                ("optuna-1", "Optuna study.optimize, sqlite, n_jobs=1"))
#: (what, numerator line, denominator line, least speed-up) of each target
TARGETS = (("child process, 1 runner vs Optuna", "child-1", "optuna-1", 2.0),
           ("child process, 4 runners vs 1 runner", "child-4", "child-1", 1.5))


def _optuna_available() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


def bench_targets(n: int, repeats: int, tmp: Path, extras: dict[str, Any]) -> list[Result]:
    """The issue-14 throughput targets on ``file://``: tasks/s of each line of :data:`TARGET_LINES`.

    Every line's processes are spawned once and kept; each repeat gives every line a fresh store
    holding N pending tasks (or a fresh Optuna study), then times "go" to the last "done". The
    lines run interleaved, so a change of the machine's load spreads over all of them: the
    ratios of one run are what to compare, not the absolute figures.
    """
    script = _script(tmp)
    lines = dict(TARGET_LINES)
    kinds = {"child-1": ("tensorhub", 1), "in-process-1": ("tensorhub-in-process", 1),
             "child-4": ("tensorhub", 4), "optuna-1": ("optuna", 1)}
    if not _optuna_available():
        print("  optuna is not installed (pip install optuna, or the test extra): its line is skipped", flush=True)
        del kinds["optuna-1"]
    runners = {line: Runners(*kind) for line, kind in kinds.items()}
    samples: dict[str, list[float]] = {line: [] for line in runners}
    try:
        for _ in range(repeats):
            for line, group in runners.items():
                if line == "optuna-1":
                    seconds, ran = optuna_once(group, n, tmp)
                    samples[line].append(seconds)
                else:
                    root = tmp / f"hub-{next(_unique)}"
                    hub = TensorHub(f"file://{root}", project_name=PROJECT)
                    hub.create_sweep(TASK, script, points=[{} for _ in range(n)])
                    group.open(f"file://{root}")
                    started = time.perf_counter()
                    ran = group.go()
                    samples[line].append(time.perf_counter() - started)
                    group.close_store()
                    _check_finished(hub, n)
                    hub.close()
                    shutil.rmtree(root, ignore_errors=True)
                assert ran == n, f"{line}: {ran} of {n} tasks ran"
    finally:
        for group in runners.values():
            group.stop()
    median = {line: statistics.median(s) for line, s in samples.items()}
    per_second = {line: n / seconds for line, seconds in median.items()}
    extras["targets"] = {"tasks": n, "repeats": repeats, "tasks_per_s": per_second,
                         "samples_s": samples, "checks": []}
    results = []
    for what, line, reference, least in TARGETS:
        if line not in median or reference not in median:
            continue
        speedup = per_second[line] / per_second[reference]
        extras["targets"]["checks"].append({"target": what, "speedup": speedup, "least": least,
                                            "pass": speedup >= least})
        results.append(Result(BENCH, "file", f"{n} no-op tasks: {lines[line]}", lines[reference],
                              median[line], median[reference], samples[line], samples[reference]))
    return results


def targets_report(extras: dict[str, Any]) -> list[str]:
    """The target table: tasks/s of each line, then each target's speed-up and PASS/FAIL."""
    found = extras.get("targets")
    if not found:
        return []
    lines = dict(TARGET_LINES)
    out = [f"issue-14 task throughput targets (file://, {found['tasks']} no-op tasks, median of "
           f"{found['repeats']} runs; the machine's other load makes absolute figures noisy: compare the ratios)",
           "", "| line | tasks/s |", "| --- | ---: |"]
    out += [f"| {lines[line]} | {rate:.1f} |" for line, rate in found["tasks_per_s"].items()]
    if "optuna-1" not in found["tasks_per_s"]:
        out.append("| Optuna study.optimize | skipped: optuna is not installed |")
    out += ["", "| target | speed-up | needed | verdict |", "| --- | ---: | ---: | --- |"]
    out += [f"| {c['target']} | {c['speedup']:.2f}x | >= {c['least']:.1f}x | {'PASS' if c['pass'] else 'FAIL'} |"
            for c in found["checks"]]
    return out


def run(n: int = 200, repeats: int = 5, runner_counts: tuple[int, ...] = (1, 4),
        backends: tuple[str, ...] = ("file", "mongodb"), tmpdir: str | None = None,
        show_profile: bool = False) -> list[Result]:
    """Run the task benchmarks; stores live in a temporary directory that is removed afterwards."""
    print(f"[tasks] N={n}, runners={list(runner_counts)}, repeats={repeats} "
          f"(throughput: {min(repeats, THROUGHPUT_REPEATS)}, claims: {max(repeats, 30)}, "
          f"isolation: {max(repeats, 20)})", flush=True)
    results: list[Result] = []
    tmp = Path(tempfile.mkdtemp(prefix="tensorhub-bench-tasks-", dir=tmpdir))
    try:
        if "file" in backends:
            results += bench_file(n, repeats, runner_counts, tmp, show_profile)
        if "mongodb" in backends:
            results += bench_mongodb(n, repeats, runner_counts, tmp, show_profile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def tasks_per_second(results: list[Result]) -> list[str]:
    """``backend, line: tensorhub tasks/s against raw tasks/s`` for the throughput lines."""
    lines = []
    for r in results:
        if r.bench == BENCH and "no-op tasks," in r.what:
            n = int(r.what.split()[0])
            lines.append(f"{r.backend:8} {r.what:28} {n / r.tensorhub_s:7.1f} tasks/s "
                         f"({fmt_seconds(r.tensorhub_s / n)} a task) against {n / r.baseline_s:7.1f} raw")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=None, help="no-op tasks per run (default 200, 60 with --quick)")
    parser.add_argument("--runners", type=parse_ints, default=(1, 4),
                        help="comma-separated numbers of runner processes (default 1,4)")
    parser.add_argument("--targets", action="store_true",
                        help="only the issue-14 target lines: file://, 1 and 4 runners against Optuna")
    parser.add_argument("--target-tasks", type=int, default=None,
                        help="no-op tasks per run of the target lines (default 300, 100 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    results: list[Result] = []
    if not args.targets:
        n = args.tasks or (60 if args.quick else 200)
        results += run(n, repeats_of(args), args.runners, tuple(args.backends.split(",")), args.tmpdir, args.profile)
    if args.targets or "file" in args.backends.split(","):
        n = args.target_tasks or (100 if args.quick else 300)
        print(f"[tasks] issue-14 targets: N={n}, repeats={repeats_of(args)}", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="tensorhub-bench-targets-", dir=args.tmpdir))
        try:
            results += bench_targets(n, repeats_of(args), tmp, extras)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def report(results: list[Result], extras: dict[str, Any]) -> list[str]:
    lines = tasks_per_second(results)
    targets = targets_report(extras)
    return lines + ([""] if lines and targets else []) + targets


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
