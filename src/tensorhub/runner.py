"""Running a claimed task: in a child process (the default) or in this process.

In a child process (``isolate=True``), a crash of the script (an exception, ``os._exit``, a
segfault, an OOM kill) ends only the child: the task is marked ``failed`` with its exit code,
error, traceback and the tail of its stdout/stderr, and the runner carries on. Children are
forked by the runner's preloaded helper (:mod:`tensorhub.zygote`: no interpreter start per
task), each in its own session, and every process a task starts dies with the task: its whole
process tree is killed when it ends, times out, is cancelled or its runner exits (see
:mod:`tensorhub.zygote` for what is guaranteed on Linux and elsewhere). A task that kills its
helper or signals its process group ends as ``failed`` (the attempt counts); the runner carries
on. A ``timeout`` on the task kills it, and ``cancel_tasks`` on a running task stops it within
about a second (status ``cancelled``, never ``finished``). A script that fails exits non-zero
(``exit_code``: ``sys.exit(n)``'s ``n``, else 1; in-process runs record the same code).

What is stored is bounded: stdout/stderr keep only their last :data:`TAIL_BYTES` (read from
pipes, nothing is spooled to disk), errors and tracebacks are clipped, and a result whose stored
form exceeds :data:`RESULT_BYTES` (8 MiB: under MongoDB's 16 MB document limit with room for
the task's own fields, and the same on every backend) fails the task with "result too large".

In-process running (``isolate=False``) is TensorLayer's way, for scripts that need it, and the
only way for stores that one process cannot share with another (``mongomock://``).
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import logging
import math
import os
import select
import shutil
import signal
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tensorhub.context import Connection
from tensorhub.documents import decode_document, encode_document
from tensorhub.errors import BackendUnavailableError, SerializationError
from tensorhub.task_script import (
    ERROR_CHARS,
    RESULT_BYTES,
    TRACEBACK_CHARS,
    bounded_failure,
    check_result_size,
    clip,
    collect_results,
    describe,
    execute_script,
    exit_code_of,
)
from tensorhub.tasks import CANCELLED, DEFAULT_LEASE, FAILED, FINISHED, PENDING, Heartbeat, TaskQueue
from tensorhub.zygote import ZygoteLost, group_alive, kill_group, shared_zygote

log = logging.getLogger(__name__)

#: bytes of a task's stdout and of its stderr that are kept (the tail)
TAIL_BYTES = 4096
#: errors kept per task (one per failed attempt), and characters of each
MAX_ERRORS = 100
ERRORS_ENTRY_CHARS = 2000
#: ``_run_isolated``'s status when the lease was lost: nothing is recorded
LOST = "lost"
#: what the helper runs in a task's process (a public function of a module that imports neither this
#: module nor the helper's, so neither depends on the other)
CHILD_MAIN = "tensorhub.task_script:child_main"
#: re-exported: they were defined here before the script side moved to :mod:`tensorhub.task_script`
__all__ = ["CHILD_MAIN", "ERROR_CHARS", "RESULT_BYTES", "TAIL_BYTES", "TRACEBACK_CHARS", "check_result_size",
           "collect_results", "execute_script", "run_claimed"]


class _Tails:
    """A task's stdout and stderr pipes, keeping only the last :data:`TAIL_BYTES` of each (no spool file).

    Drained by whoever waits on the task (:meth:`_TaskProcess.wait`), not by threads of their own:
    starting two threads per task cost more than a no-op task's whole run.
    """

    def __init__(self, fds: dict[str, int]) -> None:
        self.names = {fd: name for name, fd in fds.items()}  # the pipes not at EOF yet
        self.buffers = {name: bytearray() for name in fds}

    def fds(self) -> list[int]:
        return list(self.names)

    def read(self, fd: int) -> None:
        """Read what is in the pipe ``fd`` (ready: this does not block); close it at EOF."""
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self.close(fd)
            return
        buffer = self.buffers[self.names[fd]]
        buffer += chunk
        if len(buffer) > 2 * TAIL_BYTES:  # trim now and then: amortised O(1) per byte
            del buffer[:-TAIL_BYTES]

    def close(self, fd: int | None = None) -> None:
        """Close pipe ``fd`` (default: every one still open)."""
        for each in [fd] if fd is not None else list(self.names):
            if self.names.pop(each, None) is not None:
                os.close(each)

    def drain(self, wait: float) -> None:
        """Read until every writer is gone (EOF) or ``wait`` seconds passed, then close the pipes."""
        deadline = time.monotonic() + wait
        while self.names and (left := deadline - time.monotonic()) > 0:
            poller = select.poll()
            for fd in self.names:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(max(1, int(left * 1000))):
                self.read(fd)
        self.close()

    def read_ready(self) -> None:
        """Read what the pipes hold now, without waiting for more."""
        while self.names:
            poller = select.poll()
            for fd in self.names:
                poller.register(fd, select.POLLIN)
            ready = poller.poll(0)
            if not ready:
                return
            for fd, _ in ready:
                self.read(fd)

    def text(self, name: str) -> str:
        return bytes(self.buffers[name][-TAIL_BYTES:]).decode("utf-8", "replace")


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory, or killed from outside)" if -exitcode == signal.SIGKILL else ""
        return f"the task process was killed by {name}{hint}"
    return f"the task process exited with code {exitcode} before reporting a result"


class _TaskProcess:
    """A task's process tree, forked by this runner's :mod:`~tensorhub.zygote` (see there)."""

    def __init__(self, *args: Any) -> None:
        self.zygote = shared_zygote()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        done_r, done_w = os.pipe()  # the task's process writes its exit code here once its outcome is stored
        self.done: int | None = done_r
        self.output = _Tails({"stdout_tail": out_r, "stderr_tail": err_r})
        try:
            try:
                self.pid, self.pidfd = self.zygote.start(CHILD_MAIN, args, out_w, err_w, done_w)
            except ZygoteLost:  # it died between tasks: start a new one
                self.zygote = shared_zygote()
                self.pid, self.pidfd = self.zygote.start(CHILD_MAIN, args, out_w, err_w, done_w)
        except BaseException:
            self.output.close()
            os.close(done_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
            os.close(done_w)
        self.exitcode: int | None = None
        self.reported = False  # the exit code came from the task's report, not from its reaped process
        self.helper_lost = False
        self._delay = 0.001  # between two asks of the helper where there is no pidfd to wait on

    def poll(self) -> int | None:
        if self.exitcode is None:
            try:
                self.exitcode = self.zygote.exit_code(self.pid)
            except ZygoteLost:
                self._lost()
        return self.exitcode

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the task's end, reading its output meanwhile; its exit
        code, or None while it runs.

        With a pidfd of the task's process (Linux >= 5.3) this sleeps in one ``poll`` on it and the
        pipes, and asks the helper once, when it has ended; elsewhere it asks the helper now and
        then (1 ms, growing to 0.1 s), sleeping on the pipes in between.
        """
        deadline = time.monotonic() + timeout
        while self.exitcode is None:
            if self.pidfd is None and self.poll() is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self.pidfd is None:
                left = min(left, self._delay)
                self._delay = min(self._delay * 1.5, 0.1)
            poller = select.poll()
            for fd in [*self.output.fds(), *([self.pidfd] if self.pidfd is not None else []),
                       *([self.done] if self.done is not None else [])]:
                poller.register(fd, select.POLLIN)
            ready = poller.poll(max(1, math.ceil(left * 1000)))
            # the report first: a task that reported and exited since makes its pidfd readable too,
            # and the report spares asking the helper for the exit code
            for fd, _ in sorted(ready, key=lambda entry: entry[0] != self.done):
                if fd == self.done:
                    self._read_report()
                    if self.exitcode is not None:
                        break
                elif fd != self.pidfd:
                    self.output.read(fd)
                elif self.poll() is None:  # it ended, yet the helper says it runs: ask it from now on
                    log.warning("task process %d: its pidfd says it ended, its helper that it runs", self.pid)
                    self._close_pidfd()
        return self.exitcode

    def _read_report(self) -> None:
        """The task's process reported its exit code (its outcome is stored, its output flushed): end
        its tree now instead of waiting for it to exit. EOF without a report (it died first): wait
        for the process as before."""
        assert self.done is not None
        try:
            data = os.read(self.done, 4)
        except OSError:
            data = b""
        os.close(self.done)
        self.done = None
        if len(data) != 4:
            return
        try:
            self.zygote.end(self.pid)
        except ZygoteLost:
            self._lost()
            return
        self.exitcode = int.from_bytes(data, "little", signed=True)
        self.reported = True

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def close(self) -> None:
        """Close the pipes and the pidfd (the task has ended, or was killed)."""
        self.output.close()
        self._close_pidfd()
        if self.done is not None:
            os.close(self.done)
            self.done = None

    def _lost(self) -> None:
        """The helper died (or stopped answering and was killed) under the task: the task process was
        SIGKILLed with it and the guardian kills the rest of its tree (sessions of its own included);
        give it a moment, then kill what is left of the task's process group."""
        log.warning("the task helper process was lost while task process %d ran; killing its process group", self.pid)
        self.helper_lost = True
        deadline = time.monotonic() + 5
        while group_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        kill_group(self.pid)
        self.exitcode = -signal.SIGKILL

    def kill(self) -> None:
        """Kill the task's whole process tree and wait (bounded) until the helper has reaped it."""
        if self.poll() is not None:
            return
        try:
            self.zygote.kill(self.pid)
        except ZygoteLost:
            self._lost()
            return
        deadline = time.monotonic() + 10
        while self.wait(0.01) is None and time.monotonic() < deadline:
            pass

    def tails(self) -> dict[str, str]:
        """The tails of stdout and stderr, once their writers are gone (or after 5 seconds; what is
        in the pipes now, when the task reported its end: it flushed them first and is killed)."""
        if self.reported:
            self.output.read_ready()
        self.output.drain(0.0 if self.reported else 5.0)
        return {name: self.output.text(name) for name in ("stdout_tail", "stderr_tail")}

    def failure_reason(self) -> str:
        if self.helper_lost:
            return ("the runner's task helper process died or stopped answering while the task ran (killed or "
                    "stopped from outside, or by the task); the task's processes were killed")
        return _exit_reason(self.exitcode)


#: seconds between two looks of a runner at its running task's cancel request, lost lease and timeout
WAIT_SLICE = 0.1


class _ResultFiles:
    """Where this runner's task processes write their outcome: one directory per runner process,
    made on first use and removed at exit, one file per task (read and removed by the runner).

    Rather than a temporary directory per task: making and removing one cost a no-op task ~5 ms
    on a loaded machine.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: str | None = None
        self._pid = 0
        self._names = itertools.count()

    def new_path(self) -> Path:
        with self._lock:
            if self._dir is None or self._pid != os.getpid() or not os.path.isdir(self._dir):
                self._dir, self._pid = tempfile.mkdtemp(prefix="tensorhub-results-"), os.getpid()
                atexit.register(shutil.rmtree, self._dir, True)
            return Path(self._dir, f"{next(self._names)}.bson")


_result_files = _ResultFiles()


def _run_isolated(claimed: dict, connection: Connection, heartbeat: Heartbeat,
                  stop: threading.Event | None = None) -> tuple[str, dict[str, Any]]:
    """Run the script in a child process; return ``(status, fields to record)``. ``stop`` set (the
    runner shutting down) kills the task and raises :class:`StopRequested` within :data:`WAIT_SLICE`."""
    timeout = claimed.get("timeout")
    result_path = _result_files.new_path()
    try:
        process = _TaskProcess(encode_document(claimed), connection, str(result_path), dict(os.environ))
        try:
            started = time.monotonic()
            try:
                while process.wait(WAIT_SLICE) is None:
                    if stop is not None and stop.is_set():
                        raise StopRequested()  # the finally below kills the tree; run_claimed hands it back
                    if heartbeat.cancel_requested.is_set():
                        process.kill()
                        return CANCELLED, {"error": "cancelled while running", **process.tails()}
                    if heartbeat.lost.is_set():  # another runner may have it now: stop our copy
                        process.kill()
                        return LOST, {}
                    if timeout is not None and time.monotonic() - started > timeout:
                        process.kill()
                        return FAILED, {"error": f"TimeoutError: the task ran longer than its timeout of {timeout}s",
                                        "exit_code": process.exitcode, **process.tails()}
            finally:
                process.kill()  # on every way out, including a runner shutting down
            fields: dict[str, Any] = {"exit_code": process.exitcode, **process.tails()}
        finally:
            process.close()
        try:
            data = None if process.helper_lost else result_path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is None:
            return FAILED, {"error": process.failure_reason(), "traceback": "", **fields}
        outcome = decode_document(data)
        if outcome["ok"]:
            return FINISHED, {"result": outcome["result"], **fields}
        return FAILED, {"error": outcome["error"], "traceback": outcome.get("traceback", ""), **fields}
    finally:
        result_path.unlink(missing_ok=True)
        Path(f"{result_path}.tmp").unlink(missing_ok=True)


class StopRequested(KeyboardInterrupt):
    """Raised by :func:`run_claimed` when its ``stop`` event is set while a task runs (the runner is
    shutting down): the task's process tree was killed and the task handed back to ``pending``."""


class TaskCancelled(BaseException):
    """Raised inside an in-process script whose task was cancelled (a ``BaseException``, so a
    script's ``except Exception`` does not swallow it)."""


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    """Make the thread raise ``exc`` at its next Python instruction (None: withdraw one not raised yet).

    CPython's ``PyThreadState_SetAsyncExc``: it reaches the thread running the script whichever
    thread that is, and, unlike ``_thread.interrupt_main`` (a simulated SIGINT), it never calls
    the process's SIGINT handler: a ``tensorhub worker``'s handler would take a cancel for a
    request to shut the worker down.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


def _run_in_process(claimed: dict, connection: Connection, heartbeat: Heartbeat) -> tuple[str, dict[str, Any]]:
    """Run the script here (TensorLayer's way), in this thread. A cancel raises :class:`TaskCancelled`
    in the script at its next Python instruction (a blocking call in C, a long ``time.sleep``, ends
    first): the heartbeat's thread raises it as soon as it sees the request."""
    thread_id = threading.get_ident()
    lock = threading.Lock()
    done = threading.Event()
    raised: list[bool] = []

    def on_cancel() -> None:
        with lock:  # never after ``done``: the exception could land in the runner's own code
            if not done.is_set() and not raised:
                raised.append(True)
                _raise_in_thread(thread_id, TaskCancelled)

    heartbeat.on_cancel = on_cancel
    if heartbeat.cancel_requested.is_set():  # seen before the hook was set
        on_cancel()
    # exit_code as a child process would have exited: 0, sys.exit(n)'s n, else 1
    try:
        try:
            result = execute_script(claimed, connection)
            check_result_size(result)
            outcome: tuple[str, dict[str, Any]] = (FINISHED, {"result": result, "exit_code": 0})
        except SystemExit as exc:
            code = exit_code_of(exc)
            outcome = (FINISHED, {"result": {}, "exit_code": 0}) if code == 0 else (FAILED, {
                **bounded_failure(f"SystemExit: {exc.code}", traceback.format_exc()), "exit_code": code})
        except Exception as exc:  # noqa: BLE001 - any failure of the user's script is recorded
            outcome = (FAILED, {**bounded_failure(describe(exc), traceback.format_exc()),
                                "exit_code": exit_code_of(exc)})
        finally:
            with lock:
                done.set()
            _raise_in_thread(thread_id, None)  # one sent but not raised yet is withdrawn
    except TaskCancelled:  # raised in the script, or in the lines above before it was withdrawn
        return CANCELLED, {"error": "cancelled while running"}
    return outcome


def _record(queue: TaskQueue, claimed: dict, status: str, fields: dict[str, Any]) -> str | None:
    """Write the outcome (conditional on the claim), retrying a store that is briefly unavailable;
    return the status recorded (see :meth:`TaskQueue.record`: ``pending`` for a failure re-queued by
    ``retry_on_error``, ``cancelled`` for a task asked to stop meanwhile), None if the claim was lost.

    An outcome the store refuses (too large for a record, say) fails the task with that error
    instead, so a task is never left ``running`` for the next runner to trip over.
    """
    update = dict(fields)
    push = None
    if status == FAILED:
        update["error"] = clip(str(fields.get("error", "")), ERROR_CHARS, keep="start")
        if len(claimed.get("errors") or []) < MAX_ERRORS:
            push = {"errors": {"attempt": claimed["attempts"], "exit_code": fields.get("exit_code"),
                               "error": clip(update["error"], ERRORS_ENTRY_CHARS, keep="start")}}
    for attempt in range(RECORD_ATTEMPTS):
        try:
            return queue.record(claimed, status, update, push=push)  # conditional on the claim_id
        except SerializationError as exc:
            log.warning("task %s: its outcome cannot be stored: %s", claimed["_id"], exc)
            status, update = FAILED, dict(bounded_failure(f"its outcome could not be stored: {exc}"))
            push = {"errors": {"attempt": claimed["attempts"], "error": clip(update["error"], ERRORS_ENTRY_CHARS)}}
        except BackendUnavailableError:
            if attempt == RECORD_ATTEMPTS - 1:
                raise
            log.warning("task %s: recording its outcome failed; retrying", claimed["_id"], exc_info=True)
            time.sleep(min(5.0, 0.1 * 2 ** attempt))
    return None


#: tries of writing a task's outcome when the store is unavailable or refuses it
RECORD_ATTEMPTS = 6


def run_claimed(queue: TaskQueue, claimed: dict, connection: Connection, lease: float = DEFAULT_LEASE,
                isolate: bool = True, stop: threading.Event | None = None) -> str:
    """Run a claimed task under a heartbeat, record its outcome and return the status recorded
    (``pending`` when a failure was re-queued by ``retry_on_error``; ``cancelled`` when a cancel
    was requested, even if the script had just ended).

    The heartbeat reads the task about every :data:`~tensorhub.tasks.CANCEL_POLL` seconds, so a
    cancelled task is stopped within about a second. A ``KeyboardInterrupt`` (a runner told to stop) hands the task back to ``pending`` and
    propagates; so does ``stop`` (an event) set while a child-process task runs: its tree is killed
    within :data:`WAIT_SLICE` and :class:`StopRequested` (a ``KeyboardInterrupt``) is raised. ``isolate`` is ignored (in-process) for stores other processes cannot open.
    A task whose lease was lost (another runner may run it now) is stopped and nothing is
    recorded; the status returned is then ``"lost"``.
    """
    isolate = isolate and queue.records.shared_across_processes
    log.info("task %s (%s): attempt %d%s", claimed["_id"], claimed["task_name"], claimed["attempts"],
             "" if isolate else " (in-process)")
    heartbeat = Heartbeat(queue, claimed, lease)
    heartbeat.start()
    try:
        if isolate:
            status, fields = _run_isolated(claimed, connection, heartbeat, stop)
        else:
            status, fields = _run_in_process(claimed, connection, heartbeat)
    except BaseException:
        heartbeat.stop()
        queue.release(claimed)
        log.info("task %s handed back to pending", claimed["_id"])
        raise
    heartbeat.stop()
    if status == LOST:
        log.warning("task %s: lease lost; its process was stopped and its outcome not recorded", claimed["_id"])
        return status
    recorded = _record(queue, claimed, status, fields)
    if recorded is None:
        return LOST
    if recorded == PENDING:
        log.info("task %s failed (%s); re-queued (retry_on_error)", claimed["_id"], fields.get("error"))
    else:
        log.info("task %s %s%s", claimed["_id"], recorded, f": {fields.get('error')}" if recorded != FINISHED else "")
    return recorded
