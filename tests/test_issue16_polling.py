"""Pollers that wake on a change: ``IndexStore.change_token`` and :class:`tensorhub.polling.ChangeWait`.

Runners (``tensorhub worker``) and study drivers wait between two polls of a store. On ``file://``
the store tells, with one ``PRAGMA``, whether anything was written since the last poll (by any
process): the wait then ends at the write instead of after a fixed sleep, and an idle poller
does not query the store. A claim on an empty queue takes no write lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tensorhub import TensorHub
from tensorhub.backends.file import SQLiteIndexStore
from tensorhub.polling import ChangeWait


class Tokens:
    """A change token that the test moves by hand; counts how often it was read."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.value


class NoTokens:
    def __call__(self) -> None:
        return None


def _timed_wait(waiting: ChangeWait, progress: bool, **kwargs: object) -> float:
    start = time.monotonic()
    waiting.wait(progress, **kwargs)  # type: ignore[arg-type]
    return time.monotonic() - start


def test_a_wait_ends_when_the_store_was_written_to() -> None:
    tokens = Tokens()
    waiting = ChangeWait(tokens, poll=30.0, first=0.05)
    waiting.mark()
    threading.Timer(0.2, lambda: setattr(tokens, "value", 1)).start()
    waited = _timed_wait(waiting, progress=True)
    assert 0.2 <= waited < 20  # ended by the write, long before poll (30 s)
    assert tokens.reads > 2  # it looked at the token while it waited


def test_without_a_write_a_wait_lasts_poll_and_without_tokens_it_backs_off() -> None:
    tokens = Tokens()
    waiting = ChangeWait(tokens, poll=0.3, first=0.05)
    waiting.mark()
    assert _timed_wait(waiting, progress=True) >= 0.3  # nothing written: the whole poll
    plain = ChangeWait(NoTokens(), poll=0.4, first=0.05)
    plain.mark()
    plain.wait(progress=True)
    assert plain.delay == 0.05
    delays = []
    for _ in range(5):
        plain.wait(progress=False)
        delays.append(plain.delay)
    assert delays == [0.1, 0.2, 0.4, 0.4, 0.4]  # doubling up to poll
    plain.wait(progress=True)
    assert plain.delay == 0.05


def test_a_wait_stops_on_its_event_and_at_its_deadline() -> None:
    tokens = Tokens()
    waiting = ChangeWait(tokens, poll=60.0, first=0.05)
    waiting.mark()
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert _timed_wait(waiting, progress=False, stop=stop) < 30
    assert _timed_wait(waiting, progress=False, deadline=time.monotonic() + 0.1) < 30


def test_file_store_token_sees_another_connections_commit(tmp_path: Path) -> None:
    store = SQLiteIndexStore(tmp_path / "index.sqlite")
    assert store.change_token() is None  # no store yet: nothing to tell
    store.insert_one("c", {"_id": 1, "i": 1})
    token = store.change_token()
    assert token is not None and store.change_token() == token
    other = SQLiteIndexStore(tmp_path / "index.sqlite")  # another connection, as another process has
    other.insert_one("c", {"_id": 2, "i": 2})
    assert store.change_token() != token
    other.close()
    store.close()


def _claim(store: SQLiteIndexStore) -> Any:
    return store.find_one_and_update("tasks", {"status": "pending"}, {"$set": {"status": "running"}})


def _claim_while_locked(store: SQLiteIndexStore) -> tuple[bool, list]:
    """A claim in a thread while another connection holds the write lock: whether it returned
    within 30 s, and what it returned."""
    holder = sqlite3.connect(store.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result: list = []
        claim = threading.Thread(target=lambda: result.append(_claim(store)))
        claim.start()
        claim.join(timeout=30)
        return not claim.is_alive(), result
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_claim_on_an_empty_queue_takes_no_write_lock(tmp_path: Path) -> None:
    """While another connection holds the write lock, a claim that matches nothing returns None at once
    instead of waiting (up to the 60 s busy timeout) for the lock."""
    store = SQLiteIndexStore(tmp_path / "index.sqlite")
    store.insert_one("tasks", {"_id": 1, "status": "finished"})
    assert _claim_while_locked(store) == (True, [None])
    store.insert_one("tasks", {"_id": 2, "status": "pending"})
    assert _claim(store)["_id"] == 2
    # after a claim that matched, the next one skips the read (a busy queue); one that then finds the
    # queue empty brings the read back, so an idle claimer again never waits for the lock
    assert _claim(store) is None
    assert _claim_while_locked(store) == (True, [None])
    store.close()


@pytest.mark.timeout(120)
def test_an_idle_worker_does_not_poll_and_wakes_on_a_queued_task(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker (``--poll 600``) whose queue is empty claims again only once the store was written to
    (file://): no claim while nothing changes (its backoff alone would claim ~5 times a second at
    first), and a task queued meanwhile runs at once, not ten minutes later."""
    from tensorhub import tasks as _tasks
    from tensorhub.worker import Worker, WorkerOptions

    claims = []
    claim = _tasks.TaskQueue.claim
    monkeypatch.setattr(_tasks.TaskQueue, "claim", lambda *a, **k: claims.append(1) or claim(*a, **k))
    script = tmp_path / "t.py"
    script.write_text("done = 1\n")
    with TensorHub(f"file://{tmp_path / 'store'}", project_name="p") as hub:
        hub.create_task("other", script)  # the store exists; the worker's queue is empty
        worker = Worker(hub, WorkerOptions(task_name="t", poll=600.0, in_process=True))
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            time.sleep(1.0)  # the worker claims, finds nothing and waits
            assert len(claims) == 1
            hub.create_task("t", script, saved_result_keys=["done"])
            deadline = time.monotonic() + 60
            while worker.ran == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert worker.ran == 1
            assert [t["status"] for t in hub.find_tasks("t")] == ["finished"]
        finally:
            worker.stopping.set()
            thread.join(timeout=30)
        assert not thread.is_alive()
