"""Queries, claims and deletes at scale (issue 14): their cost should grow with the answer, not the store.

For each N (default 10^4, 10^5, 10^6; ``--quick``: 10^4, 10^5) a store gets N training-log rows
written in runs of 1,000 rows (``hub.start_run`` + ``save_training_logs``; ``step`` numbered across
runs, so ``step >= N - 50`` is 50 rows) and N/10 pending tasks of one name. Measured, each as
``tensorhub / baseline`` of medians over ``--repeats`` alternating runs:

* ``run query``: ``find_training_logs(task_id=<run 7>, sort=[("step", -1)], limit=100)``;
* ``step range``: ``find_training_logs(step={"$gte": N - 50})`` (newest first);
* ``claim``: ``hub.task_queue.claim({"task_name": ...})`` among N/10 pending tasks (handed back,
  untimed, after each run), and ``run_task(in_process=True)`` of a no-op script (consumes a task);
* ``delete run``: ``delete_training_log(task_id=<a run>)`` (1,000 rows; the run is written again,
  untimed, before each timed delete).

Baseline (``file://``): raw sqlite3 on the same disk with tensorhub's durability (WAL,
``synchronous=NORMAL``), plain tables ``logs(id, project, task_id, time, step, loss)`` and
``tasks(id, project, task_name, status, priority, time, attempts_left)`` with an index on the
same fields tensorhub indexes: ``(project, task_id, step)``, ``(project, time)``, ``(project, step)`` and
``(project, task_name, status, priority DESC, time)``. tensorhub's indexes are the ones the
repository declares, plus ``(project_name, step)`` declared by this script (``create_index``):
no declared index covers ``step``.

Targets (issue 14, file://): at the largest N each query and the claim <= 5 ms, each query within
5x raw SQLite; from the smallest to the largest N each line grows less than 3x. PASS/FAIL below
the table. Other backends plug in through :data:`BACKENDS` (``bench_scale_s3.py`` adds s3).

    python benchmarks/bench_scale.py              # N = 10^4, 10^5, 10^6
    python benchmarks/bench_scale.py --quick      # N = 10^4, 10^5, 3 repeats
    python benchmarks/bench_scale.py --sizes 10000,30000
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import logging
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Result, bench_main, compare, fmt_seconds, parse_ints, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402

log = logging.getLogger(__name__)
BENCH = "scale"
PROJECT = "bench"
TASK = "noop"
RUN_ROWS = 1000
QUERY_LIMIT, STEP_SPAN = 100, 50
#: the lines and their targets: (line, absolute limit in seconds at the largest N or None, max ratio or None)
TARGETS = {"run query": (5e-3, 5.0), "step range": (5e-3, 5.0), "claim": (5e-3, None),
           "run_task in-process": (None, None), "delete run": (None, None)}
MAX_GROWTH = 3.0
_unique = itertools.count()


@dataclass
class Backend:
    """How to open a tensorhub store of one backend for a size (``uri(tmp)``), and its raw baseline."""

    name: str
    uri: Callable[[Path], str]
    baseline: str
    raw: Callable[[Path, int], Any]  # (tmp, n) -> a RawStore


def _stamp(i: int) -> float:
    return 1.7e9 + i * 1e-3


# ---------------------------------------------------------------- the raw SQLite baseline
class RawSQLite:
    """The same rows in plain SQLite tables, indexed on the same fields as tensorhub."""

    def __init__(self, tmp: Path, n: int) -> None:
        self.conn = sqlite3.connect(tmp / f"raw-{next(_unique)}.sqlite", timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE logs (id INTEGER PRIMARY KEY, project TEXT, task_id TEXT, time REAL,"
                          " step INTEGER, loss REAL)")
        self.conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, project TEXT, task_name TEXT, status TEXT,"
                          " priority INTEGER, time REAL, attempts_left INTEGER, owner TEXT)")
        for sql in ("CREATE INDEX logs_run ON logs (project, task_id, step)", "CREATE INDEX logs_time ON logs (project, time)",
                    "CREATE INDEX logs_step ON logs (project, step)",
                    "CREATE INDEX tasks_queue ON tasks (project, task_name, status, priority DESC, time)"):
            self.conn.execute(sql)
        self.conn.execute("BEGIN")
        for run in range(max(1, n // RUN_ROWS)):
            self.insert_run(f"run-{run}", run * RUN_ROWS, commit=False)
        self.conn.executemany("INSERT INTO tasks (project, task_name, status, priority, time, attempts_left)"
                              " VALUES (?, ?, 'pending', 0, ?, 3)", [(PROJECT, TASK, _stamp(i)) for i in range(n // 10)])
        self.conn.execute("COMMIT")
        self.n = n

    def insert_run(self, run: str, first_step: int, commit: bool = True) -> None:
        if commit:
            self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO logs (project, task_id, time, step, loss) VALUES (?, ?, ?, ?, ?)",
                              [(PROJECT, run, _stamp(first_step + i), first_step + i, 1 / (i + 1))
                               for i in range(RUN_ROWS)])
        if commit:
            self.conn.execute("COMMIT")

    def run_query(self) -> list[tuple]:
        return self.conn.execute("SELECT * FROM logs WHERE project = ? AND task_id = ? ORDER BY step DESC, id DESC"
                                 f" LIMIT {QUERY_LIMIT}", (PROJECT, "run-7")).fetchall()

    def step_range(self) -> list[tuple]:
        return self.conn.execute("SELECT * FROM logs WHERE project = ? AND step >= ? ORDER BY time DESC, id DESC",
                                 (PROJECT, self.n - STEP_SPAN)).fetchall()

    def claim(self) -> int:
        self.conn.execute("BEGIN IMMEDIATE")
        row = self.conn.execute("SELECT id FROM tasks WHERE project = ? AND task_name = ? AND status = 'pending'"
                                " AND attempts_left > 0 ORDER BY priority DESC, time, id LIMIT 1",
                                (PROJECT, TASK)).fetchone()
        self.conn.execute("UPDATE tasks SET status = 'running', owner = 'me', attempts_left = attempts_left - 1"
                          " WHERE id = ?", (row[0],))
        self.conn.execute("COMMIT")
        return int(row[0])

    def release(self, task: int) -> None:
        self.conn.execute("UPDATE tasks SET status = 'pending', owner = NULL, attempts_left = attempts_left + 1"
                          " WHERE id = ?", (task,))

    def delete_run(self, run: str) -> int:
        self.conn.execute("BEGIN IMMEDIATE")
        count = self.conn.execute("DELETE FROM logs WHERE project = ? AND task_id = ?", (PROJECT, run)).rowcount
        self.conn.execute("COMMIT")
        return count

    def close(self) -> None:
        self.conn.close()


BACKENDS: dict[str, Backend] = {
    "file": Backend("file", lambda tmp: f"file://{tmp / f'hub-{next(_unique)}'}",
                    "sqlite3, same fields indexed", RawSQLite),
}


# ---------------------------------------------------------------- the tensorhub side
def populate(hub: TensorHub, n: int) -> list[Any]:
    """N log rows in runs of RUN_ROWS (each a run: its rows carry its task_id) and N/10 pending tasks; the run ids."""
    runs = []
    for run in range(max(1, n // RUN_ROWS)):
        with hub.start_run("logs") as current:
            hub.save_training_logs([{"step": run * RUN_ROWS + i, "loss": 1 / (i + 1)} for i in range(RUN_ROWS)])
            runs.append(current.id)
    script = Path(tempfile.mkdtemp(prefix="tensorhub-bench-scale-")) / "noop.py"
    script.write_text("pass\n")
    for start in range(0, n // 10, 50_000):
        hub.create_sweep(TASK, str(script), points=[{"i": i} for i in range(start, min(n // 10, start + 50_000))])
    return runs


def bench_size(backend: Backend, n: int, repeats: int, tmp: Path) -> list[Result]:
    """The five lines for one backend at one size."""
    started = time.perf_counter()
    hub = TensorHub(backend.uri(tmp), project_name=PROJECT)
    hub.index.create_index("training_logs", [("project_name", 1), ("step", 1)])
    runs = populate(hub, n)
    raw = backend.raw(tmp, n)
    print(f"  [{backend.name} N={n:,}: populated both stores in {time.perf_counter() - started:.0f} s]", flush=True)
    results = []
    label = f"N={n:,}"

    def hub_run_query(_: Any) -> list[dict]:
        return hub.find_training_logs(task_id=runs[min(7, len(runs) - 1)], sort=[("step", -1)], limit=QUERY_LIMIT)

    assert [r["step"] for r in hub_run_query(None)] == [r[4] for r in raw.run_query()] or len(runs) <= 7
    results.append(compare(BENCH, backend.name, f"run query, {label}", backend.baseline, repeats=repeats,
                           tensorhub=hub_run_query, raw=lambda _: raw.run_query()))

    def hub_step_range(_: Any) -> list[dict]:
        return hub.find_training_logs(step={"$gte": n - STEP_SPAN})

    assert [r["step"] for r in hub_step_range(None)] == [r[4] for r in raw.step_range()]
    results.append(compare(BENCH, backend.name, f"step range, {label}", backend.baseline, repeats=repeats,
                           tensorhub=hub_step_range, raw=lambda _: raw.step_range()))

    queue = hub.task_queue
    results.append(compare(BENCH, backend.name, f"claim, {label}", backend.baseline, repeats=repeats,
                           tensorhub=lambda _: queue.claim({"task_name": TASK}), raw=lambda _: raw.claim(),
                           teardown_tensorhub=lambda _: _release_all(hub),
                           teardown_raw=lambda _: raw.conn.execute("UPDATE tasks SET status = 'pending', owner = NULL,"
                                                                   " attempts_left = 3 WHERE status = 'running'")))
    _release_all(hub)
    results.append(compare(BENCH, backend.name, f"run_task in-process, {label}", backend.baseline, repeats=repeats,
                           tensorhub=lambda _: hub.run_task(TASK, in_process=True), raw=lambda _: raw.claim()))

    def hub_new_run() -> Any:
        with hub.start_run("deleted") as current:
            hub.save_training_logs([{"step": -1 - i, "loss": 0.0} for i in range(RUN_ROWS)])
        return current.id

    def raw_new_run() -> str:
        run = f"deleted-{next(_unique)}"
        raw.insert_run(run, -RUN_ROWS)
        return run

    results.append(compare(BENCH, backend.name, f"delete run, {label}", backend.baseline, repeats=repeats,
                           tensorhub=lambda run: _expect(hub.delete_training_log(task_id=run), RUN_ROWS),
                           raw=lambda run: _expect(raw.delete_run(run), RUN_ROWS),
                           setup_tensorhub=hub_new_run, setup_raw=raw_new_run))
    hub.close()
    raw.close()
    return results


def _release_all(hub: TensorHub) -> None:
    """Hand every claimed task back (untimed), so each claim sees N/10 pending tasks."""
    queue = hub.task_queue
    for task in queue.find({"task_name": TASK, "status": "running"}):
        queue.release(task)


def _expect(count: int, wanted: int) -> None:
    assert count == wanted, f"deleted {count} rows, expected {wanted}"


# ---------------------------------------------------------------- the verdicts
def _line(result: Result) -> tuple[str, int]:
    what, size = result.what.rsplit(", N=", 1)
    return what, int(size.replace(",", ""))


def verdicts(results: list[Result]) -> list[str]:
    """PASS/FAIL per target: absolute time and ratio at the largest N, growth smallest -> largest N."""
    lines = []
    by_backend: dict[str, dict[str, dict[int, Result]]] = {}
    for result in results:
        if result.bench != BENCH:
            continue
        what, size = _line(result)
        by_backend.setdefault(result.backend, {}).setdefault(what, {})[size] = result
    for backend, whats in by_backend.items():
        for what, sizes in whats.items():
            limit, max_ratio = TARGETS.get(what, (None, None))
            smallest, largest = sizes[min(sizes)], sizes[max(sizes)]
            checks = []
            if limit is not None:
                checks.append((f"<= {fmt_seconds(limit)} at N={max(sizes):,}", largest.tensorhub_s <= limit,
                               fmt_seconds(largest.tensorhub_s)))
            if max_ratio is not None:
                checks.append((f"<= {max_ratio:g}x raw at N={max(sizes):,}", largest.ratio <= max_ratio,
                               f"{largest.ratio:.2f}x"))
            if len(sizes) > 1:
                growth = largest.tensorhub_s / smallest.tensorhub_s
                checks.append((f"growth N={min(sizes):,} -> {max(sizes):,} < {MAX_GROWTH:g}x", growth < MAX_GROWTH,
                               f"{growth:.2f}x"))
            for target, ok, measured in checks:
                lines.append(f"{'PASS' if ok else 'FAIL'}  {backend:6} {what:22} {target:38} measured {measured}")
    return lines


def report(results: list[Result], extras: dict[str, Any]) -> list[str]:
    return ["Targets (issue 14):", *verdicts(results)]


def run(sizes: tuple[int, ...], repeats: int, backends: tuple[str, ...], tmpdir: str | None) -> list[Result]:
    results = []
    for name in backends:
        if name == "s3":  # moto, up to 10^5 rows: bench_scale_s3.py counts requests as well as time
            _run_s3([n for n in sizes if n <= S3_MAX_ROWS] or [min(sizes)])
            continue
        if name not in BACKENDS:
            print(f"  ({name}: no scale bench here; file is in bench_scale.py, s3 in bench_scale_s3.py)")
            continue
        for n in sizes:
            tmp = Path(tempfile.mkdtemp(prefix=f"tensorhub-bench-{BENCH}-", dir=tmpdir))
            try:
                results += bench_size(BACKENDS[name], n, repeats, tmp)
            finally:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
    return results


#: the largest s3 store measured (moto serves 10^6 rows too slowly for a benchmark run)
S3_MAX_ROWS = 100_000
#: issue 14's s3 target: a run's rows out of 10^5 in at most this many GETs
S3_MAX_GETS = 10


def _run_s3(sizes: list[int]) -> None:
    """The s3 lines (``bench_scale_s3.run_s3_scale``: seconds and requests per query), and the GET target."""
    from bench_scale_s3 import run_s3_scale

    rows = run_s3_scale(sizes)
    print("  s3 (moto): seconds, GETs, LISTs per operation")
    for row in rows:
        print(f"  s3  N={row['n']:>7,}  {row['what']:64} {row['seconds'] * 1000:9.1f} ms  "
              f"{row['gets']:4} GET  {row['lists']:3} LIST")
    for row in rows:
        if row["what"].startswith("find_training_logs(task_id=run, sort") and row["what"].endswith("cold"):
            ok = row["gets"] <= S3_MAX_GETS
            print(f"{'PASS' if ok else 'FAIL'}  s3     a run's rows, N={row['n']:,}: <= {S3_MAX_GETS} GETs"
                  f"                      measured {row['gets']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=parse_ints, default=None,
                        help="log rows per store, comma-separated (default 10000,100000,1000000; --quick: 10000,100000)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    sizes = args.sizes or ((10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000))
    backends = tuple(b for b in args.backends.split(",") if b != "mongodb") or ("file",)  # --backends file,s3
    return run(sizes, repeats_of(args), backends, args.tmpdir)


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
