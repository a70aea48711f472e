"""``Heartbeat.stop``: it waits for a store call in flight, never for a sleeping heartbeat, and no
store call starts after it returns (the runner records the outcome right after)."""

from __future__ import annotations

import threading
import time
from typing import Any

from tensorhub.tasks import Heartbeat


class _Queue:
    """A task queue whose calls are counted, and whose renewal can be held until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.in_renew = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def renew(self, claimed: dict, lease: float) -> dict:
        self.calls.append(("renew", time.monotonic()))
        self.in_renew.set()
        assert self.release.wait(30)
        return {"_id": claimed["_id"]}

    def read_claim(self, claimed: dict) -> dict:
        self.calls.append(("read", time.monotonic()))
        return {"_id": claimed["_id"]}

    def still_mine(self, claimed: dict) -> bool:
        return True


def _heartbeat(queue: Any, lease: float) -> Heartbeat:
    beat = Heartbeat(queue, {"_id": 1, "claim_id": 2}, lease)
    beat.cancel_poll = 0.01
    return beat


def test_stop_returns_at_once_while_the_heartbeat_sleeps_and_nothing_runs_after_it() -> None:
    queue = _Queue()
    beat = _heartbeat(queue, lease=3600.0)  # renewals 20 min away: only cancel reads meanwhile
    beat.start()
    deadline = time.monotonic() + 10
    while not queue.calls and time.monotonic() < deadline:
        time.sleep(0.005)
    assert queue.calls, "the heartbeat never read its task"
    beat.stop()
    stopped = time.monotonic()
    time.sleep(0.1)  # ten cancel polls' worth
    assert all(at <= stopped for _, at in queue.calls), queue.calls


def test_stop_waits_for_a_renewal_in_flight() -> None:
    queue = _Queue()
    queue.release.clear()
    beat = _heartbeat(queue, lease=0.03)  # renews at once (a third of the lease)
    beat.start()
    assert queue.in_renew.wait(10), "the heartbeat never renewed"
    stopper = threading.Thread(target=beat.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive(), "stop returned while a renewal was still in flight"
    queue.release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    count = len(queue.calls)
    time.sleep(0.1)
    assert len(queue.calls) == count, "a store call started after stop returned"
