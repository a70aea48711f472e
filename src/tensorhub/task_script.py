"""Running a task's script, in whichever process runs it, and bounding what it reports.

The runner (:mod:`tensorhub.runner`) calls :func:`execute_script` in its own process
(``in_process=True``), or has its helper (:mod:`tensorhub.zygote`) fork a task process that runs
:func:`child_main`, named to the helper as ``"tensorhub.task_script:child_main"``. This module
imports neither of them, so the runner and the helper do not depend on each other.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import bson

from tensorhub.context import ENV_TASK_ATTEMPT, ENV_TASK_ID, Connection, task_connection
from tensorhub.documents import decode_document, encode_document, normalize_document
from tensorhub.errors import SerializationError
from tensorhub.run_log import end_task_runs

#: the largest result (its BSON) a task may store: fits every backend (MongoDB's limit is 16 MB a document)
RESULT_BYTES = 8 << 20
#: characters of an error message and of a traceback that are stored
ERROR_CHARS = 16 << 10
TRACEBACK_CHARS = 64 << 10


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
    task_id = str(claimed["_id"])
    with task_connection(connection, task_id, claimed.get("attempts")):
        try:
            exec(code, namespace)  # noqa: S102 - running the user's task is the point
        except BaseException:
            end_task_runs(task_id, quiet=True)
            raise
        end_task_runs(task_id)  # rows the script's hub.log calls buffered are written before its result
    return collect_results(namespace, claimed.get("saved_result_keys") or [])


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, as stored in a task's ``error``."""
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- bounds on what is stored
def clip(text: str, limit: int, keep: str = "end") -> str:
    """``text`` cut to about ``limit`` characters (keeping its end, or its start), saying so."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep == "end":
        return f"[... {cut} characters cut ...]\n" + text[-limit:]
    return text[:limit] + f" [... {cut} characters cut]"


def bounded_failure(error: str, trace: str = "") -> dict[str, str]:
    """A failure's ``error`` and ``traceback`` fields, each clipped to what is stored."""
    return {"error": clip(error, ERROR_CHARS, keep="start"), "traceback": clip(trace, TRACEBACK_CHARS)}


def check_result_size(result: dict[str, Any]) -> None:
    """Refuse a result whose stored form exceeds :data:`RESULT_BYTES` (it could not be recorded everywhere)."""
    size = len(encode_document({"result": result}))
    if size > RESULT_BYTES:
        raise SerializationError(f"result too large: {size} bytes (the limit is {RESULT_BYTES} bytes); save big "
                                 "outputs with save_dataset/save_model and keep their names or ids as results")


def exit_code_of(exc: BaseException) -> int:
    """The exit status a script's process ends with when ``exc`` ends it: ``sys.exit(n)``'s ``n``
    (as the OS keeps it: ``n & 0xFF``, 1 where that is 0), 0 for ``sys.exit()``/``sys.exit(0)``,
    else 1 (an exception, ``sys.exit("message")``), as the ``python`` command would exit."""
    if isinstance(exc, SystemExit):
        if exc.code is None or (isinstance(exc.code, int) and not isinstance(exc.code, bool) and exc.code == 0):
            return 0
        if isinstance(exc.code, int) and not isinstance(exc.code, bool):
            return exc.code & 0xFF or 1
    return 1


def _set_environ(environ: dict[str, str]) -> None:
    """Make ``os.environ`` equal ``environ``, changing only what differs (usually nothing: the helper
    started with the runner's environment), rather than clearing and refilling it."""
    for key in [key for key in os.environ if key not in environ]:
        del os.environ[key]
    for key, value in environ.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def child_main(claimed_bson: bytes, connection: Connection, result_path: str, environ: dict[str, str],
               done_fd: int | None = None) -> int:
    """Entry point of a task's process: run the script, write its outcome (BSON) to ``result_path``
    (whole or not at all: written beside it, then renamed); return the exit code.

    ``environ`` is the runner's environment now (the helper that forked us has the one of its start).
    Its stdout and stderr are pipes the runner reads (it keeps only their tails). The exit code
    (the helper exits with it) is 0 when the script succeeded, else :func:`exit_code_of` its
    exception (1 for an exception or a result that could not be stored). With ``done_fd`` (a pipe
    to the runner) the exit code is also written there once the outcome is stored, so the runner
    records it without waiting for this process to exit.
    """
    _set_environ(environ)
    claimed = decode_document(claimed_bson)
    os.environ.update(connection.environ())
    os.environ[ENV_TASK_ID] = str(claimed["_id"])
    os.environ[ENV_TASK_ATTEMPT] = str(claimed.get("attempts", 1))
    code = 0
    try:
        result = execute_script(claimed, connection)
        check_result_size(result)
        outcome: dict[str, Any] = {"ok": True, "result": result}
    except SystemExit as exc:
        code = exit_code_of(exc)
        if code == 0:
            outcome = {"ok": True, "result": {}}
        else:
            outcome = {"ok": False, **bounded_failure(f"SystemExit: {exc.code}", traceback.format_exc())}
    except BaseException as exc:  # noqa: BLE001 - every failure of the script is reported
        traceback.print_exc()
        code = exit_code_of(exc)
        outcome = {"ok": False, **bounded_failure(describe(exc), traceback.format_exc())}
    try:
        data = encode_document(outcome)
    except SerializationError as exc:
        code = 1
        data = bson.encode({"ok": False, **bounded_failure(str(exc))})
    Path(f"{result_path}.tmp").write_bytes(data)
    os.replace(f"{result_path}.tmp", result_path)
    if done_fd is not None:  # the outcome is stored and the output flushed: the runner need not wait for our exit
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(done_fd, code.to_bytes(4, "little", signed=True))
        os.close(done_fd)
    return code
