"""Many runner processes against one store: every task runs exactly once (each in its own child process)."""

from __future__ import annotations

import multiprocessing as mp
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tensorhub import TensorHub

from conftest import TASK_BACKENDS, fresh_uri

N_TASKS = 500
N_RUNNERS = 4


def _runner(uri: str, project: str, deadline_s: float, counts: Any) -> None:
    """Run tasks until none is left (bounded by count and time); report how many ran."""
    import time

    ran = 0
    start = time.monotonic()
    with TensorHub(uri, project_name=project) as hub:
        while ran <= N_TASKS and time.monotonic() - start < deadline_s:
            if not hub.run_task("conc"):
                break
            ran += 1
    counts.put(ran)


@pytest.mark.slow
@pytest.mark.parametrize("backend", TASK_BACKENDS)
def test_four_processes_run_each_task_exactly_once(backend: str, request: pytest.FixtureRequest,
                                                   tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    uri = fresh_uri(backend, request, tmp_path_factory)
    script = tmp_path / "task.py"
    script.write_text(textwrap.dedent("""
        from tensorhub import TensorHub
        TensorHub().save_training_log(task_index=index)
        doubled = index * 2
    """))
    with TensorHub(uri, project_name="conc") as hub:
        hub.delete_tasks()
        hub.delete_training_log()
        hub.create_sweep("conc", script, points=[{"index": i} for i in range(N_TASKS)], saved_result_keys=["doubled"])
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        runners = [ctx.Process(target=_runner, args=(uri, "conc", 240.0, queue)) for _ in range(N_RUNNERS)]
        for runner in runners:
            runner.start()
        counts = [queue.get(timeout=300) for _ in runners]
        for runner in runners:
            runner.join(timeout=60)
        assert sum(counts) == N_TASKS
        tasks = hub.find_tasks("conc")
        assert len(tasks) == N_TASKS
        assert all(t["status"] == "finished" and t["attempts"] == 1 for t in tasks)
        assert all(t["result"]["doubled"] == 2 * t["hyper_parameters"]["index"] for t in tasks)
        runs = Counter(row["task_index"] for row in hub.find_training_logs())
        assert runs == Counter(range(N_TASKS))  # each script body ran once, no more, no less
        assert len({t["owner"]["pid"] for t in tasks}) > 1  # the work really was shared
