"""Study throughput (issue 16 item 2): trials/s of a no-op ``hub.run_study`` against Optuna's ``study.optimize``.

Lines, each on a fresh store per repeat, interleaved (``file://``):

* ``study-1-in-process`` / ``study-4-in-process``: a study of N no-op trials (the script sets
  ``val_loss = 0.0``; one float parameter, the random sampler, ``parallelism`` twice the runners)
  driven by ``hub.run_study`` in this process and run by 1 or 4 runner processes, each running
  ``tensorhub worker``'s own loop (:class:`tensorhub.worker.Worker`, ``--poll 0.02``) with trials in
  the runner's process (``--in-process``), as Optuna's ``optimize`` runs its objective. The runners
  are spawned and have opened the store before the clock starts (steady-state runners, as in
  ``bench_tasks.py``); the clock runs from ``run_study``'s call to its return (every trial told).
* ``study-1`` / ``study-4``: the same with each trial in its own child process (tensorhub's
  default): bound by the cost of a child-process task, issue 14's line (``bench_tasks.py --targets``).
* ``optuna-1``: Optuna's own ``study.optimize`` of a no-op objective, N trials, sqlite storage,
  ``n_jobs=1`` (``bench_tasks.py``'s baseline, its runner process reused).

Target (issue 16): a study with 1 runner and with 4 runners >= 2x Optuna's trials/s, trials run as
Optuna runs them (in process). The child-process lines are reported beside them, without a target
of their own here.

    python benchmarks/bench_study.py                 # N=200, 3 repeats
    python benchmarks/bench_study.py --quick         # N=60
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Result, bench_main, repeats_of  # noqa: E402
from bench_tasks import PROJECT, Runners, _optuna_available, optuna_once  # noqa: E402

from tensorhub import TensorHub  # noqa: E402
from tensorhub.worker import Worker, WorkerOptions  # noqa: E402

BENCH = "study"
STUDY_SCRIPT = "val_loss = 0.0\n"
#: (line, what it runs), in the order each repeat runs them
LINES = (("study-1-in-process", "hub.run_study, 1 runner (trials in process)"),
         ("study-4-in-process", "hub.run_study, 4 runners (trials in process)"),
         ("study-1", "hub.run_study, 1 runner (child process per trial)"),
         ("study-4", "hub.run_study, 4 runners (child process per trial)"),
         ("optuna-1", "Optuna study.optimize, sqlite, n_jobs=1"))
TARGETS = (("study, 1 runner (in process, as Optuna runs trials) vs Optuna", "study-1-in-process", "optuna-1", 2.0),
           ("study, 4 runners (in process) vs Optuna", "study-4-in-process", "optuna-1", 2.0),
           ("study, 1 runner, child process per trial vs Optuna (no target here: issue 14's cost)",
            "study-1", "optuna-1", 0.0),
           ("study, 4 runners, child process per trial vs Optuna (no target here: issue 14's cost)",
            "study-4", "optuna-1", 0.0))
_unique = itertools.count()


def _study_runner_main(conn: Any, in_process: bool) -> None:
    """A runner process: ``open`` a store; on ``go NAME`` run that study's trials with ``tensorhub worker``'s
    own loop (:class:`tensorhub.worker.Worker`, ``--task-name NAME --poll 0.02``, ``--in-process`` for the
    in-process lines) until ``stop`` arrives; reply with how many it ran."""
    os.environ.setdefault("TENSORHUB_PROGRESS", "0")
    hub: TensorHub | None = None
    while True:
        message = conn.recv()
        if message[0] == "open":
            from tensorhub.zygote import shared_zygote

            hub = TensorHub(message[1], project_name=PROJECT)
            shared_zygote()
            conn.send("ready")
        elif message[0] == "go":
            assert hub is not None
            worker = Worker(hub, WorkerOptions(task_name=message[1], poll=0.02, in_process=in_process))
            thread = threading.Thread(target=worker.run)
            thread.start()
            conn.recv()  # the stop
            worker.stopping.set()
            thread.join()
            conn.send(worker.ran)
        elif message[0] == "close":
            if hub is not None:
                hub.close()
            hub = None
            conn.send("closed")
        else:
            return


class StudyRunners(Runners):
    """``count`` spawned study runners (the protocol of :class:`bench_tasks.Runners`, plus ``stop``)."""

    def __init__(self, count: int, in_process: bool = False) -> None:  # noqa: D107 - Runners', another target
        super().__init__(in_process, count, main=_study_runner_main)

    def start(self, name: str) -> None:
        for conn in self.conns:
            conn.send(("go", name))

    def finish(self) -> int:
        for conn in self.conns:
            conn.send(("stop",))
        return sum(conn.recv() for conn in self.conns)


def _study_once(group: StudyRunners, count: int, n: int, tmp: Path, script: Path) -> float:
    """Seconds of one study of ``n`` no-op trials run by ``group`` (``count`` runners)."""
    root = tmp / f"hub-{next(_unique)}"
    uri = f"file://{root}"
    hub = TensorHub(uri, project_name=PROJECT)
    name = f"s{next(_unique)}"
    hub.create_study(name, script, space={"x": (0.0, 1.0)}, sampler="random", seed=0, n_trials=n,
                     parallelism=2 * count)
    group.open(uri)
    group.start(name)
    started = time.perf_counter()
    summary = hub.run_study(name, poll=0.05)
    seconds = time.perf_counter() - started
    ran = group.finish()
    group.close_store()
    assert summary["by_status"] == {"finished": n} and ran == n, (summary, ran)
    assert len(hub.find_tasks(name)) == n
    hub.close()
    shutil.rmtree(root, ignore_errors=True)
    return seconds


def bench_study(n: int, repeats: int, tmp: Path, extras: dict[str, Any]) -> list[Result]:
    """Each line of :data:`LINES`, ``repeats`` times, interleaved; medians; the targets' speed-ups."""
    script = tmp / "noop_trial.py"
    script.write_text(STUDY_SCRIPT)
    groups: dict[str, Any] = {"study-1-in-process": StudyRunners(1, in_process=True),
                              "study-4-in-process": StudyRunners(4, in_process=True),
                              "study-1": StudyRunners(1), "study-4": StudyRunners(4)}
    if _optuna_available():
        groups["optuna-1"] = Runners("optuna", 1)
    samples: dict[str, list[float]] = {line: [] for line in groups}
    try:
        for _ in range(repeats):
            for line, group in groups.items():
                if line == "optuna-1":
                    seconds, ran = optuna_once(group, n, tmp)
                    samples[line].append(seconds)
                    assert ran == n
                else:
                    samples[line].append(_study_once(group, len(group.conns), n, tmp, script))
                print(f"  {line}: {n / samples[line][-1]:.1f} trials/s", flush=True)
    finally:
        for group in groups.values():
            group.stop()
    median = {line: statistics.median(s) for line, s in samples.items()}
    per_second = {line: n / seconds for line, seconds in median.items()}
    extras["study"] = {"trials": n, "repeats": repeats, "trials_per_s": per_second, "samples_s": samples,
                       "checks": []}
    lines = dict(LINES)
    results = []
    for what, line, reference, least in TARGETS:
        if reference not in median:
            continue
        speedup = per_second[line] / per_second[reference]
        extras["study"]["checks"].append({"target": what, "speedup": speedup, "least": least,
                                          "pass": speedup >= least})
        results.append(Result(BENCH, "file", f"{n} no-op trials: {lines[line]}", lines[reference],
                              median[line], median[reference], samples[line], samples[reference]))
    return results


def report(results: list[Result], extras: dict[str, Any]) -> list[str]:
    found = extras.get("study")
    if not found:
        return []
    lines = dict(LINES)
    out = [f"issue-16 study throughput (file://, {found['trials']} no-op trials, median of {found['repeats']} runs)",
           "", "| line | trials/s |", "| --- | ---: |"]
    out += [f"| {lines[line]} | {rate:.1f} |" for line, rate in found["trials_per_s"].items()]
    if "optuna-1" not in found["trials_per_s"]:
        out.append("| Optuna study.optimize | skipped: optuna is not installed |")
    out += ["", "| target | speed-up | needed | verdict |", "| --- | ---: | ---: | --- |"]
    out += [f"| {c['target']} | {c['speedup']:.2f}x | " + (f">= {c['least']:.1f}x | {'PASS' if c['pass'] else 'FAIL'} |"
                                                         if c["least"] else "none | reported |")
            for c in found["checks"]]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default 200; --quick 60)")


def from_args(args: argparse.Namespace, extras: dict[str, Any]) -> list[Result]:
    n = args.trials or (60 if args.quick else 200)
    repeats = args.repeats or 3 if not args.quick else repeats_of(args)
    print(f"[study] N={n}, repeats={repeats}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-study-", dir=args.tmpdir) as tmp:
        return bench_study(n, repeats, Path(tmp), extras)


if __name__ == "__main__":
    sys.exit(bench_main(sys.modules[__name__]))
