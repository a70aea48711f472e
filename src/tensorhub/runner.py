"""Running a claimed task: in a child process (the default) or in this process.

In a child process (``isolate=True``), a crash of the script (an exception, ``os._exit``, a
segfault, an OOM kill) ends only the child: the task is marked ``failed`` with its exit code,
error, traceback and the tail of its stdout/stderr, and the runner carries on. Children are
forked by the runner's preloaded helper (:mod:`tensorhub.zygote`: no interpreter start per
task) and die with their runner (an explicit kill on every exit path, and ``PR_SET_PDEATHSIG``). A ``timeout``
on the task kills it, and ``cancel_tasks`` on a running task stops it (status ``cancelled``).

In-process running (``isolate=False``) is TensorLayer's way, for scripts that need it, and the
only way for stores that one process cannot share with another (``mongomock://``).
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bson

from tensorhub.context import ENV_TASK_ID, Connection, task_connection
from tensorhub.documents import decode_document, encode_document, normalize_document
from tensorhub.errors import SerializationError
from tensorhub.records import Records
from tensorhub.zygote import shared_zygote
from tensorhub.tasks import (
    CANCELLED,
    COLLECTION,
    DEFAULT_LEASE,
    FAILED,
    FINISHED,
    Heartbeat,
    finish,
    release,
)

log = logging.getLogger(__name__)

TAIL_BYTES = 4096


def _plain(value: Any) -> Any:
    """numpy scalars and arrays -> Python values, so results store as ordinary record fields."""
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def collect_results(namespace: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """The globals named in ``saved_result_keys``; a clear error if one is missing or unstorable."""
    missing = [k for k in keys if k not in namespace]
    if missing:
        raise SerializationError(f"the script never set the result variable(s) {missing}; "
                                 "assign them at the top level of the script")
    return normalize_document({k: _plain(namespace[k]) for k in keys})


def execute_script(claimed: dict, connection: Connection) -> dict[str, Any]:
    """Run a task's script in this process with its hyper-parameters as globals; return its results."""
    path = claimed.get("script_path", "<task>")
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": path}
    namespace.update(claimed.get("hyper_parameters") or {})
    code = compile(claimed["script"], path, "exec")
    with task_connection(connection, str(claimed["_id"])):
        exec(code, namespace)  # noqa: S102 - running the user's task is the point
    return collect_results(namespace, claimed.get("saved_result_keys") or [])


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- child process side
def _child_main(claimed_bson: bytes, connection: Connection, workdir: str, environ: dict[str, str]) -> None:
    """Entry point of a task's child process: run the script, write ``result.bson``.

    ``environ`` is the runner's environment now (the helper that forked us has the one of its start).
    """
    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(os.path.join(workdir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    claimed = decode_document(claimed_bson)
    os.environ.update(connection.environ())
    os.environ[ENV_TASK_ID] = str(claimed["_id"])
    try:
        outcome = {"ok": True, "result": execute_script(claimed, connection)}
    except SystemExit as exc:
        if exc.code in (None, 0):
            outcome = {"ok": True, "result": {}}
        else:
            outcome = {"ok": False, "error": f"SystemExit: {exc.code}", "traceback": traceback.format_exc()}
    except BaseException as exc:  # noqa: BLE001 - every failure of the script is reported
        traceback.print_exc()
        outcome = {"ok": False, "error": _describe(exc), "traceback": traceback.format_exc()}
    try:
        data = encode_document(outcome)
    except SerializationError as exc:
        data = bson.encode({"ok": False, "error": str(exc), "traceback": ""})
    Path(workdir, "result.bson.tmp").write_bytes(data)
    os.replace(Path(workdir, "result.bson.tmp"), Path(workdir, "result.bson"))


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = " (out of memory, or killed from outside)" if -exitcode == signal.SIGKILL else ""
        return f"the task process was killed by {name}{hint}"
    return f"the task process exited with code {exitcode} before reporting a result"


class _TaskProcess:
    """A task's child process, forked by this runner's :mod:`~tensorhub.zygote`."""

    def __init__(self, *args: Any) -> None:
        self.zygote = shared_zygote()
        self.pid = self.zygote.start("tensorhub.runner:_child_main", *args)
        self.exitcode: int | None = None

    def poll(self) -> int | None:
        if self.exitcode is None:
            self.exitcode = self.zygote.exit_code(self.pid)
        return self.exitcode

    def kill(self) -> None:
        """SIGKILL the process and wait (bounded) until the helper has reaped it."""
        if self.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)


def _run_isolated(claimed: dict, connection: Connection, heartbeat: Heartbeat) -> tuple[str, dict[str, Any]]:
    """Run the script in a child process; return ``(status, fields to record)``."""
    timeout = claimed.get("timeout")
    with tempfile.TemporaryDirectory(prefix="tensorhub-task-") as workdir:
        process = _TaskProcess(encode_document(claimed), connection, workdir, dict(os.environ))
        started = time.monotonic()
        delay = 0.001
        try:
            while process.poll() is None:
                time.sleep(delay)
                delay = min(delay * 1.5, 0.1)
                if heartbeat.cancel_requested.is_set():
                    process.kill()
                    return CANCELLED, {"error": "cancelled while running"}
                if timeout is not None and time.monotonic() - started > timeout:
                    process.kill()
                    return FAILED, {"error": f"TimeoutError: the task ran longer than its timeout of {timeout}s",
                                    "exit_code": process.exitcode, **_tails(workdir)}
        finally:
            process.kill()  # on every way out, including a runner shutting down
        fields: dict[str, Any] = {"exit_code": process.exitcode, **_tails(workdir)}
        result_path = Path(workdir, "result.bson")
        if not result_path.exists():
            return FAILED, {"error": _exit_reason(process.exitcode), "traceback": "", **fields}
        outcome = decode_document(result_path.read_bytes())
        if outcome["ok"]:
            return FINISHED, {"result": outcome["result"], **fields}
        return FAILED, {"error": outcome["error"], "traceback": outcome.get("traceback", ""), **fields}


def _tails(workdir: str) -> dict[str, str]:
    return {"stdout_tail": _tail(Path(workdir, "stdout")), "stderr_tail": _tail(Path(workdir, "stderr"))}


def _run_in_process(claimed: dict, connection: Connection, heartbeat: Heartbeat) -> tuple[str, dict[str, Any]]:
    """Run the script here (TensorLayer's way). A cancel interrupts it when it runs in the main thread."""
    main = threading.current_thread() is threading.main_thread()
    watcher_done = threading.Event()

    def watch_cancel() -> None:
        while not watcher_done.wait(0.1):
            if heartbeat.cancel_requested.is_set():
                _thread.interrupt_main()
                return

    watcher = threading.Thread(target=watch_cancel, daemon=True) if main else None
    if watcher:
        watcher.start()
    try:
        return FINISHED, {"result": execute_script(claimed, connection)}
    except KeyboardInterrupt:
        if heartbeat.cancel_requested.is_set():
            return CANCELLED, {"error": "cancelled while running"}
        raise
    except SystemExit as exc:
        if exc.code in (None, 0):
            return FINISHED, {"result": {}}
        return FAILED, {"error": f"SystemExit: {exc.code}", "traceback": traceback.format_exc()}
    except Exception as exc:  # noqa: BLE001 - any failure of the user's script is recorded
        return FAILED, {"error": _describe(exc), "traceback": traceback.format_exc()}
    finally:
        watcher_done.set()


def run_claimed(records: Records, claimed: dict, connection: Connection, lease: float = DEFAULT_LEASE,
                isolate: bool = True) -> str:
    """Run a claimed task under a heartbeat, record its outcome and return its final status.

    A ``KeyboardInterrupt`` (a runner told to stop) hands the task back to ``pending`` and
    propagates. ``isolate`` is ignored (in-process) for stores other processes cannot open.
    """
    isolate = isolate and records.index.shared_across_processes and records.blobs.shared_across_processes
    log.info("task %s (%s): attempt %d%s", claimed["_id"], claimed["task_name"], claimed["attempts"],
             "" if isolate else " (in-process)")
    heartbeat = Heartbeat(records, claimed, lease)
    heartbeat.start()
    try:
        status, fields = (_run_isolated if isolate else _run_in_process)(claimed, connection, heartbeat)
    except BaseException:
        heartbeat.stop()
        release(records, claimed)
        log.info("task %s handed back to pending", claimed["_id"])
        raise
    heartbeat.stop()
    finish(records, claimed, {"status": status, **fields})
    if status == FAILED:
        records.index.update_many(COLLECTION, {"_id": claimed["_id"]},
                                  {"$push": {"errors": {"attempt": claimed["attempts"], "error": fields["error"],
                                                        "exit_code": fields.get("exit_code")}}})
    log.info("task %s %s%s", claimed["_id"], status, f": {fields.get('error')}" if status != FINISHED else "")
    return status
