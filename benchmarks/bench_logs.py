"""Log writes and a log query: tensorhub against raw sqlite3 (file://) and raw pymongo (mongodb://).

Measured, each as ``tensorhub / baseline`` of medians over ``--repeats`` alternating runs:

* ``single``: ``hub.save_training_log(step=i, loss=...)`` called N times, each durable on return,
  against N raw inserts committed one by one;
* ``batch``: one ``hub.save_training_logs(rows)`` of N rows, against one raw transaction
  (``executemany``) or one ``insert_many``;
* ``query``: ``hub.find_training_logs(step={"$gt": N // 2})`` over N stored rows (newest first),
  against the same filter and order written by hand.

Baselines. ``file://``: sqlite3 on the same disk with the durability tensorhub uses (WAL,
``synchronous=NORMAL``), a plain table ``(id INTEGER PRIMARY KEY, time REAL, step INTEGER, loss REAL)``,
no index on ``step`` (tensorhub has none either). ``mongodb://``: pymongo on the same SecantusDB
server (``tensorhub.testing.servers.mongodb_server``, run in a child process, a fresh one for each
timed write run), default write concern, documents ``{time, step, loss}`` and no secondary index.
Every run starts on an empty store.

    python benchmarks/bench_logs.py              # N=2000, both backends
    python benchmarks/bench_logs.py --quick      # N=300, 3 repeats
    python benchmarks/bench_logs.py --profile    # also print cProfile of the tensorhub side
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import MongoServers, Result, bench_main, compare, profile, repeats_of  # noqa: E402

from tensorhub import TensorHub  # noqa: E402

BENCH = "logs"
PROJECT = "bench"
_unique = itertools.count()


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"step": i, "loss": 1.0 / (i + 1)} for i in range(n)]


# ---------------------------------------------------------------- file:// against raw sqlite3
def _raw_sqlite(root: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(root / f"raw-{next(_unique)}.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE training_logs (id INTEGER PRIMARY KEY, time REAL NOT NULL, step INTEGER, loss REAL)")
    return conn


def _raw_insert_one(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    # autocommit mode: each statement is its own transaction, one commit per row
    conn.execute("INSERT INTO training_logs (time, step, loss) VALUES (?, ?, ?)",
                 (time.time(), row["step"], row["loss"]))


def _raw_insert_batch(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO training_logs (time, step, loss) VALUES (?, ?, ?)",
                     [(now, r["step"], r["loss"]) for r in rows])
    conn.execute("COMMIT")


def _raw_sqlite_query(conn: sqlite3.Connection, threshold: int) -> list[tuple]:
    return conn.execute("SELECT id, time, step, loss FROM training_logs WHERE step > ? ORDER BY id DESC",
                        (threshold,)).fetchall()


def bench_file(n: int, repeats: int, tmp: Path, show_profile: bool = False) -> list[Result]:
    rows = _rows(n)
    results = []

    def new_hub() -> TensorHub:
        return TensorHub(f"file://{tmp / f'hub-{next(_unique)}'}", project_name=PROJECT)

    def close(obj: Any) -> None:
        obj.close()

    def raw_single(conn: sqlite3.Connection) -> None:
        for row in rows:
            _raw_insert_one(conn, row)

    def hub_single(hub: TensorHub) -> None:
        for row in rows:
            hub.save_training_log(step=row["step"], loss=row["loss"])

    results.append(compare(BENCH, "file", f"save_training_log x{n}", "sqlite3 INSERT, 1 commit/row",
                           repeats=repeats, tensorhub=hub_single, raw=raw_single,
                           setup_tensorhub=new_hub, setup_raw=lambda: _raw_sqlite(tmp),
                           teardown_tensorhub=close, teardown_raw=close))
    results.append(compare(BENCH, "file", f"save_training_logs({n} rows)", "sqlite3 executemany, 1 txn",
                           repeats=repeats, tensorhub=lambda hub: hub.save_training_logs(rows),
                           raw=lambda conn: _raw_insert_batch(conn, rows),
                           setup_tensorhub=new_hub, setup_raw=lambda: _raw_sqlite(tmp),
                           teardown_tensorhub=close, teardown_raw=close))

    hub, conn = new_hub(), _raw_sqlite(tmp)
    hub.save_training_logs(rows)
    _raw_insert_batch(conn, rows)
    threshold = n // 2
    got, want = hub.find_training_logs(step={"$gt": threshold}), _raw_sqlite_query(conn, threshold)
    assert [d["step"] for d in got] == [r[2] for r in want], "tensorhub and sqlite3 disagree on the query"
    results.append(compare(BENCH, "file", f"find_training_logs(step>$gt N/2), N={n}", "sqlite3 SELECT WHERE",
                           repeats=repeats, tensorhub=lambda _: hub.find_training_logs(step={"$gt": threshold}),
                           raw=lambda _: _raw_sqlite_query(conn, threshold)))
    if show_profile:  # the query first, while the store holds N rows
        print(profile("file: find_training_logs", lambda: hub.find_training_logs(step={"$gt": threshold})))
        print(profile(f"file: save_training_logs({n} rows)", lambda: hub.save_training_logs(rows)))
        print(profile(f"file: {n} x save_training_log", lambda: hub_single(hub)))
    hub.close()
    conn.close()
    return results


# ---------------------------------------------------------------- mongodb:// against raw pymongo
def bench_mongodb(n: int, repeats: int, show_profile: bool = False) -> list[Result]:
    import pymongo

    rows = _rows(n)
    results = []
    servers = MongoServers()

    # the write benchmarks start every timed run on a fresh server (see MongoServers)
    def new_hub() -> tuple[int, TensorHub]:
        handle, uri = servers.start()
        return handle, TensorHub(f"{uri}/bench_hub_{next(_unique)}", project_name=PROJECT)

    def new_coll() -> tuple[int, Any]:
        handle, uri = servers.start()
        client = pymongo.MongoClient(uri, tz_aware=True)
        client.admin.command("ping")
        return handle, client[f"bench_raw_{next(_unique)}"]["training_logs"]

    def stop_hub(state: tuple[int, TensorHub]) -> None:
        handle, hub = state
        hub.index.client.drop_database(hub.index.db.name)  # matters only on an external server
        hub.close()
        servers.stop(handle)

    def stop_coll(state: tuple[int, Any]) -> None:
        handle, coll = state
        coll.database.client.drop_database(coll.database.name)
        coll.database.client.close()
        servers.stop(handle)

    def now() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def raw_single(coll: Any) -> None:
        for row in rows:
            coll.insert_one({"time": now(), "step": row["step"], "loss": row["loss"]})

    def hub_single(hub: TensorHub) -> None:
        for row in rows:
            hub.save_training_log(step=row["step"], loss=row["loss"])

    def raw_batch(coll: Any) -> None:
        t = now()
        coll.insert_many([{"time": t, **row} for row in rows])

    try:
        results.append(compare(BENCH, "mongodb", f"save_training_log x{n}", "pymongo insert_one",
                               repeats=repeats, tensorhub=lambda s: hub_single(s[1]), raw=lambda s: raw_single(s[1]),
                               setup_tensorhub=new_hub, setup_raw=new_coll,
                               teardown_tensorhub=stop_hub, teardown_raw=stop_coll, warmup=0))
        results.append(compare(BENCH, "mongodb", f"save_training_logs({n} rows)", "pymongo insert_many",
                               repeats=repeats, tensorhub=lambda s: s[1].save_training_logs(rows),
                               raw=lambda s: raw_batch(s[1]),
                               setup_tensorhub=new_hub, setup_raw=new_coll,
                               teardown_tensorhub=stop_hub, teardown_raw=stop_coll, warmup=0))

        # reads do not grow the oplog: one server, populated once, serves every query run
        hub_state, raw_state = new_hub(), new_coll()
        hub, coll = hub_state[1], raw_state[1]
        hub.save_training_logs(rows)
        raw_batch(coll)
        threshold = n // 2

        def raw_query(_: Any) -> list[dict]:
            return list(coll.find({"step": {"$gt": threshold}}).sort("_id", -1))

        got, want = hub.find_training_logs(step={"$gt": threshold}), raw_query(None)
        assert [d["step"] for d in got] == [d["step"] for d in want], "tensorhub and pymongo disagree"
        results.append(compare(BENCH, "mongodb", f"find_training_logs(step>$gt N/2), N={n}",
                               "pymongo find().sort()", repeats=repeats,
                               tensorhub=lambda _: hub.find_training_logs(step={"$gt": threshold}), raw=raw_query))
        if show_profile:
            print(profile("mongodb: find_training_logs", lambda: hub.find_training_logs(step={"$gt": threshold})))
            print(profile(f"mongodb: save_training_logs({n} rows)", lambda: hub.save_training_logs(rows)))
            print(profile(f"mongodb: {n} x save_training_log", lambda: hub_single(hub)))
        stop_hub(hub_state)
        stop_coll(raw_state)
    finally:
        servers.close()
    return results


def run(n: int = 2000, repeats: int = 5, backends: tuple[str, ...] = ("file", "mongodb"),
        tmpdir: str | None = None, show_profile: bool = False) -> list[Result]:
    """Run the log benchmarks; stores live in a temporary directory that is removed afterwards."""
    print(f"[logs] N={n}, repeats={repeats}", flush=True)
    results: list[Result] = []
    tmp = Path(tempfile.mkdtemp(prefix="tensorhub-bench-logs-", dir=tmpdir))
    try:
        if "file" in backends:
            results += bench_file(n, repeats, tmp, show_profile)
        if "mongodb" in backends:
            results += bench_mongodb(n, repeats, show_profile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=None, help="rows per run (default 2000, 300 with --quick)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    n = args.n or (300 if args.quick else 2000)
    return run(n, repeats_of(args), tuple(args.backends.split(",")), args.tmpdir, args.profile)


def main(argv: list[str] | None = None) -> int:
    return bench_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
