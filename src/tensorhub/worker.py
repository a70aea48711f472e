"""The long-running task runner behind ``tensorhub worker``.

It claims one task at a time, runs it, and polls when the queue is empty with a backoff that
grows to ``poll`` seconds, so an idle worker never busy-loops against the database; on
``file://`` it waits instead until the store is written to (one cheap ``PRAGMA`` every 2 ms, see
:mod:`tensorhub.polling`), at most ``poll``: a task queued meanwhile starts within milliseconds. Every
``idle_log`` seconds (a minute) it stays idle it logs how many tasks of its name are pending in
its project and in each project of the store, so a wrong ``--project`` or ``--task-name`` shows
(a warning when its project has none and others have some). SIGTERM
and SIGINT stop it cleanly: between tasks it exits at once; during a task the task is handed
back to ``pending`` (never marked finished) and the worker exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from tensorhub import tasks as _tasks
from tensorhub.errors import InvalidArgumentError
from tensorhub.hub import TensorHub
from tensorhub.polling import ChangeWait
from tensorhub.runner import StopRequested, run_claimed

log = logging.getLogger(__name__)


class _Shutdown(KeyboardInterrupt):
    """Raised in the main thread by a signal while a task runs; the runner hands the task back."""


@dataclass
class WorkerOptions:
    """How a :class:`Worker` claims and runs tasks: the options of ``tensorhub worker``.

    Attributes:
        task_name: Only tasks with this ``task_name`` (``--task-name``). Default ``None``: any.
        lease: Seconds a claim lasts without renewal, > 0 (``--lease``). Default 60.
        poll: Longest wait, in seconds, between two polls of an empty queue, > 0 (``--poll``;
            the wait grows to it; on ``file://`` a write to the store ends it). Default 2.
        idle_exit: Exit after this many seconds with no task, >= 0 (``--idle-exit``). Default
            ``None``: never.
        max_tasks: Exit after running this many tasks, >= 1 (``--max-tasks``). Default
            ``None``: no limit.
        sort: PyMongo sort choosing which pending task to claim. Default ``None``: highest
            priority, then oldest.
        in_process: Run scripts in the worker's own process (``--in-process``). Default
            ``False``: a child process per task.
        idle_log: Seconds between two reports of an idle worker (how many tasks are pending, here
            and in other projects), > 0 (``--idle-log``). Default 60.

    Raises:
        InvalidArgumentError: A duration that is not a finite number of seconds in range, or a
            ``max_tasks`` that is not an int >= 1.
    """

    task_name: str | None = None
    lease: float = _tasks.DEFAULT_LEASE
    poll: float = 2.0
    idle_exit: float | None = None
    max_tasks: int | None = None
    sort: Any = None
    in_process: bool = False
    #: seconds between two reports of an idle worker (what is pending, here and in other projects)
    idle_log: float = 60.0

    def __post_init__(self) -> None:
        """Refuse options that are not finite numbers (booleans included: True is not 1 second)."""
        for name, zero, optional in (("lease", False, False), ("poll", False, False), ("idle_exit", True, True),
                                     ("idle_log", False, False)):
            value = getattr(self, name)
            if not (optional and value is None) and not _tasks.is_seconds(value, zero=zero):
                bound = ">= 0" if zero else "> 0"
                raise InvalidArgumentError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
        if self.max_tasks is not None and (isinstance(self.max_tasks, bool) or not isinstance(self.max_tasks, int)
                                           or self.max_tasks < 1):
            raise InvalidArgumentError(f"max_tasks must be an int >= 1 (or None: no limit), got {self.max_tasks!r}")


class Worker:
    """Runs tasks from one hub until told to stop, idle for too long, or ``max_tasks`` ran.

    What ``tensorhub worker`` runs. In a program of your own::

        with TensorHub(uri, project_name="train") as hub:
            worker = Worker(hub, WorkerOptions(task_name="mnist", idle_exit=600))
            worker.install_signal_handlers()   # SIGTERM/SIGINT stop it cleanly (main thread only)
            ran = worker.run()

    Args:
        hub: The hub whose project's queue it claims from.
        options: A :class:`WorkerOptions`.
    """

    def __init__(self, hub: TensorHub, options: WorkerOptions) -> None:
        self.hub = hub
        self.options = options
        self.owner = _tasks.worker_identity()
        self.stopping = threading.Event()
        self._busy = False
        self.ran = 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """Set ``stopping``. A child-process task sees it within 0.1 s (its runner's wait loop looks);
        an in-process script holds the main thread, so there the signal raises :class:`_Shutdown`."""
        log.info("worker %s: received %s, stopping", self.owner["worker_id"], signal.Signals(signum).name)
        self.stopping.set()
        if self._busy and self.options.in_process:
            raise _Shutdown()

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT stop the worker: at once between tasks; during a task the task is
        handed back to ``pending`` (never marked finished). Call it from the main thread."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def run_one(self) -> bool:
        """Claim and run one task; False when none was available."""
        query = {"task_name": self.options.task_name} if self.options.task_name else {}
        queue = self.hub.task_queue
        claimed = queue.claim(query, sort=self.options.sort, lease=self.options.lease, owner=self.owner)
        if claimed is None:
            return False
        self._busy = True
        try:
            if self.stopping.is_set():  # told to stop while claiming: never start it
                raise _Shutdown()
            run_claimed(queue, claimed, self.hub.connection, lease=self.options.lease,
                        isolate=not self.options.in_process, stop=self.stopping)
        except KeyboardInterrupt:  # _Shutdown, StopRequested, a ^C: hand it back (again is a no-op)
            queue.release(claimed)
            raise
        finally:
            self._busy = False
        self.ran += 1
        return True

    def log_idle(self, idle_for: float) -> None:
        """Log what is pending for this worker's task name: in its project, and in every project."""
        query: dict[str, Any] = {"status": _tasks.PENDING}
        if self.options.task_name:
            query["task_name"] = self.options.task_name
        try:
            here = self.hub.task_queue.tasks.count(query)
            counts = self.hub.task_queue.records.count_every_project(_tasks.COLLECTION, query=query)
            everywhere = {str(project): n for (project,), n in counts.items()}
        except Exception:  # noqa: BLE001 - a report must not stop the worker; the claims report store trouble
            log.debug("worker %s: counting pending tasks failed", self.owner["worker_id"], exc_info=True)
            return
        project = self.hub.project_name
        elsewhere = {p: n for p, n in sorted(everywhere.items()) if p != project}
        named = f"named {self.options.task_name!r}" if self.options.task_name else "(any name)"
        level = logging.WARNING if not here and elsewhere else logging.INFO
        log.log(level, "worker %s: idle for %.0fs; pending tasks %s: %d in project %r, %d in the store%s",
                self.owner["worker_id"], idle_for, named, here, project, sum(everywhere.values()),
                f" (other projects: {', '.join(f'{p!r}: {n}' for p, n in elsewhere.items())})" if elsewhere else "")

    def run(self) -> int:
        """Loop until stopped; return the number of tasks run."""
        opts = self.options
        log.info("worker %s on %s: waiting for tasks %r", self.owner["worker_id"], self.hub, opts.task_name)
        idle_since = reported_at = time.monotonic()
        waiting = ChangeWait(self.hub.task_queue.records.change_token, opts.poll, first=0.05)
        ran_one = True
        try:
            while not self.stopping.is_set():
                if opts.max_tasks is not None and self.ran >= opts.max_tasks:
                    log.info("worker %s: ran %d task(s), the maximum", self.owner["worker_id"], self.ran)
                    break
                waiting.mark()
                if self.run_one():
                    idle_since = reported_at = time.monotonic()
                    ran_one = True
                    continue
                now = time.monotonic()
                if opts.idle_exit is not None and now - idle_since >= opts.idle_exit:
                    log.info("worker %s: idle for %.1fs, exiting", self.owner["worker_id"], opts.idle_exit)
                    break
                if now - reported_at >= opts.idle_log:
                    reported_at = now
                    self.log_idle(now - idle_since)
                waiting.wait(ran_one, stop=self.stopping)
                ran_one = False
        except (_Shutdown, StopRequested):
            log.info("worker %s: task handed back, exiting", self.owner["worker_id"])
        return self.ran
