"""Issue 14, task throughput and claims at scale: exactly-once claims by many runners, and a claim
among 100,000 pending tasks on ``file://`` that returns the first task in queue order.

The 4 processes x 500 tasks test of ``file://``, ``mongodb://`` and ``s3://`` is
``test_tasks_concurrency.py``; ``mongomock://`` is in-process only, so its runners are threads.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tensorhub import TensorHub
from tensorhub import tasks as _tasks

from conftest import fresh_uri
from test_tasks_concurrency import N_RUNNERS, RUNNER_SECONDS, check_each_ran_once, counting_script, run_until_empty, task_count

#: pending tasks of the claim-at-scale test, created in sweeps of BATCH
N_PENDING = 100_000
BATCH = 20_000
#: claims each of the claiming processes makes at once, after the two checked one by one
CLAIMS_PER_PROCESS = 5
N_CLAIMERS = 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_item_four_threads_run_each_of_500_tasks_exactly_once_on_mongomock(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """mongomock:// stores live in one process: 4 runner threads, each with its own hub on the store."""
    uri = fresh_uri("mongomock", request, tmp_path_factory)
    n_tasks = task_count("mongomock")
    runs_file = tmp_path / "runs.txt"
    script = counting_script(tmp_path, runs_file)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            results.append(run_until_empty(uri, "conc", n_tasks, RUNNER_SECONDS))
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)

    with TensorHub(uri, project_name="conc") as hub:
        hub.create_sweep("conc", script, points=[{"index": i} for i in range(n_tasks)], saved_result_keys=["doubled"])
        threads = [threading.Thread(target=runner, name=f"runner-{i}") for i in range(N_RUNNERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RUNNER_SECONDS + 60)
        assert not any(thread.is_alive() for thread in threads), "a runner thread did not stop in time"
        assert not errors, errors
        check_each_ran_once(hub, n_tasks, [ran for ran, _ in results], runs_file)


def _claim(uri: str, n: int, out: Any) -> None:
    """A claiming process: ``n`` claims in a row; reports ``(task _id, claim_id)`` of each as text."""
    with TensorHub(uri, project_name="scale") as hub:
        claimed = [hub.task_queue.claim({"task_name": "big"}) for _ in range(n)]
    out.put([(str(c["_id"]), str(c["claim_id"])) if c else None for c in claimed])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_item_claim_among_100k_pending_tasks_takes_queue_order_first_exactly_once(tmp_path: Path) -> None:
    """100,000 pending tasks on file://: a claim takes the highest priority, then the oldest; claims made
    at once by 4 processes take distinct tasks, exactly the next ones in queue order."""
    uri = f"file://{tmp_path / 'store'}"
    script = tmp_path / "noop.py"
    script.write_text("pass\n")
    with TensorHub(uri, project_name="scale") as hub:
        for start in range(0, N_PENDING, BATCH):
            hub.create_sweep("big", script, points=[{"index": i} for i in range(start, start + BATCH)])
            if start == BATCH:  # created in the middle of the queue, but it outranks every other task
                hub.create_task("big", script, hyper_parameters={"index": -1}, priority=5)
        queue = hub.task_queue
        started = time.monotonic()
        first = queue.claim({"task_name": "big"})
        second = queue.claim({"task_name": "big"})
        two_claims = time.monotonic() - started
        assert first is not None and first["hyper_parameters"] == {"index": -1} and first["priority"] == 5
        assert second is not None and second["hyper_parameters"] == {"index": 0}  # the oldest of priority 0
        assert first["status"] == second["status"] == _tasks.RUNNING

        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        claimers = [ctx.Process(target=_claim, args=(uri, CLAIMS_PER_PROCESS, out)) for _ in range(N_CLAIMERS)]
        try:
            for claimer in claimers:
                claimer.start()
            reports = [out.get(timeout=300) for _ in claimers]
            for claimer in claimers:
                claimer.join(60)
        finally:
            for claimer in claimers:
                if claimer.is_alive():
                    claimer.kill()
        claims = [claim for report in reports for claim in report]
        assert None not in claims
        ids = [task_id for task_id, _ in claims]
        assert len(set(ids)) == len(ids) == N_CLAIMERS * CLAIMS_PER_PROCESS  # no task claimed twice
        running = {str(t["_id"]): t for t in queue.find({"task_name": "big", "status": _tasks.RUNNING})}
        assert set(running) == set(ids) | {str(first["_id"]), str(second["_id"])}
        for task_id, claim_id in claims:  # each held under the claim its claimer was given, on its first attempt
            assert str(running[task_id]["claim_id"]) == claim_id and running[task_id]["attempts"] == 1
        # the claims at once took exactly the next tasks in queue order
        assert sorted(running[task_id]["hyper_parameters"]["index"] for task_id in ids) == list(
            range(1, 1 + N_CLAIMERS * CLAIMS_PER_PROCESS))
        assert queue.tasks.count({"task_name": "big", "status": _tasks.PENDING}) == (
            N_PENDING + 1 - 2 - N_CLAIMERS * CLAIMS_PER_PROCESS)
        print(f"two claims among {N_PENDING} pending: {two_claims:.3f} s")
