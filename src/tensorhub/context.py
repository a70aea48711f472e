"""Where a ``TensorHub()`` with no arguments connects.

Inside a running task, the store and project the task came from (set by the runner, for
in-process scripts in a context variable and for child processes in the environment);
otherwise ``$TENSORHUB_URI`` (and ``$TENSORHUB_BLOBS_URI``), else the embedded default
``file://./tensorhub-data``. The default project, with or without a URI: :func:`default_project`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tensorhub.redaction import redact_uri
from tensorhub.registry import DEFAULT_URI

ENV_URI = "TENSORHUB_URI"
ENV_BLOBS = "TENSORHUB_BLOBS_URI"
ENV_PROJECT = "TENSORHUB_PROJECT"
#: set in a task's child process: the id of the task it runs
ENV_TASK_ID = "TENSORHUB_TASK_ID"
#: set in a task's child process: which attempt (1, 2, ...) of the task this run is
ENV_TASK_ATTEMPT = "TENSORHUB_TASK_ATTEMPT"


@dataclass(frozen=True)
class Connection:
    """Everything needed to open the same hub elsewhere (another thread or process).

    ``uri`` and ``blobs`` are the real URIs (a task's process opens the store with them);
    ``repr`` shows them redacted, as everything that displays a URI does.
    """

    uri: str = field(repr=False)
    blobs: str | None = field(repr=False)
    project_name: str

    def __repr__(self) -> str:
        blobs = redact_uri(self.blobs) if self.blobs else None
        return f"Connection(uri={redact_uri(self.uri)!r}, blobs={blobs!r}, project_name={self.project_name!r})"

    def environ(self) -> dict[str, str]:
        env = {ENV_URI: self.uri, ENV_PROJECT: self.project_name}
        if self.blobs:
            env[ENV_BLOBS] = self.blobs
        return env


_current: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("tensorhub_task", default=None)
_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tensorhub_task_id", default=None)
_attempt: contextvars.ContextVar[int | None] = contextvars.ContextVar("tensorhub_task_attempt", default=None)


@contextlib.contextmanager
def task_connection(connection: Connection, task_id: str | None = None, attempt: int | None = None) -> Iterator[None]:
    """Make ``TensorHub()`` inside this block connect where ``connection`` says (running task ``task_id``,
    its ``attempt``-th run)."""
    token, id_token, attempt_token = _current.set(connection), _task_id.set(task_id), _attempt.set(attempt)
    try:
        yield
    finally:
        _attempt.reset(attempt_token)
        _task_id.reset(id_token)
        _current.reset(token)


def inside_task() -> bool:
    """Whether this code runs as a task (in-process or in a task's child process)."""
    return _current.get() is not None or ENV_TASK_ID in os.environ


def current_task_id() -> str | None:
    """The id of the task this code runs as (in-process or in its child process), else None."""
    return _task_id.get() or os.environ.get(ENV_TASK_ID) or None


def current_attempt() -> int | None:
    """Which attempt (1, 2, ...) of its task this run is, else None.

    A task runs at least once: a runner that stalls past its lease may see its task run again
    by another runner. A script that must not repeat a side effect can check this (or look for
    what an earlier attempt left, e.g. by ``current_task_id()``).
    """
    attempt = _attempt.get()
    if attempt is None:
        try:
            attempt = int(os.environ.get(ENV_TASK_ATTEMPT, ""))
        except ValueError:
            return None
    return attempt


def default_project() -> tuple[str, str]:
    """``(project_name, why)`` for a ``TensorHub`` opened without ``project_name``: the one rule.

    The project of the task this code runs in, else ``$TENSORHUB_PROJECT`` (with or without a
    URI), else the running script's file stem (as TensorLayer did), else ``"default"`` (an
    interactive session, ``python -c``, a notebook, pytest). The CLI's rule is the same without the
    script stem: ``--project``, else ``$TENSORHUB_PROJECT``, else ``"default"``.
    """
    current = _current.get()
    if current is not None:
        return current.project_name, "the project of the running task"
    env = os.environ.get(ENV_PROJECT)
    if env:
        return env, f"${ENV_PROJECT}"
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    stem = Path(path).stem if path else ""
    if stem and stem not in ("-c", "__main__", "ipykernel_launcher", "pytest"):
        return stem, f"the file name of the running script {path}"
    return "default", "no script file: an interactive session"


def default_connection() -> tuple[str, str | None, str | None]:
    """``(uri, blobs_uri, project_name)`` for a ``TensorHub()`` called without a URI."""
    current = _current.get()
    if current is not None:
        return current.uri, current.blobs, current.project_name
    return os.environ.get(ENV_URI) or DEFAULT_URI, os.environ.get(ENV_BLOBS) or None, os.environ.get(ENV_PROJECT)
