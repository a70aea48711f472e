"""A fork server for task processes: one preloaded helper per runner, one ``fork()`` per task.

Starting a Python interpreter per task costs ~0.4 s of CPU (importing numpy and pymongo);
forking a process that already imported them costs milliseconds. Forking the runner itself is
unsafe (it has threads: heartbeats, driver monitors), and multiprocessing's fork server re-runs
the user's ``__main__`` script in every child. So the runner starts this small single-threaded
helper once (``python -m tensorhub._zygote_main FD``), and asks it over a socket to fork each task.

Lifetimes: the helper is killed when its runner dies (``PR_SET_PDEATHSIG``, and it exits on
EOF of its socket), and each task process is killed when the helper dies, so no task outlives
its runner. The helper ignores SIGINT: a Ctrl-C is the runner's to handle.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Zygote:
    """The runner's handle on its fork-server helper; thread-safe."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorhub._zygote_main", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._lock = threading.Lock()

    def _ask(self, *request: Any) -> Any:
        with self._lock:
            self._conn.send(request)
            return self._conn.recv()

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, target: str, *args: Any) -> int:
        """Fork a process that runs ``target`` (``"module:function"``) with ``args``; return its pid."""
        return self._ask("start", target, args)

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a started process (negative: killed by that signal), None while it runs."""
        return self._ask("status", pid)

    def close(self) -> None:
        self._conn.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def shared_zygote() -> Zygote:
    """This process's helper, started on first use (and again if it died)."""
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            _zygote = Zygote()
        return _zygote


def _resolve(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(fd: int) -> None:
    """The helper's loop: fork on ``start``, reap children, answer ``status``; exit on EOF."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import tensorhub.runner  # noqa: F401 - preload what every task needs before forking

    conn = Connection(fd)
    finished: dict[int, int] = {}
    running: set[int] = set()

    def reap() -> None:
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                finished[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            break
        if request[0] == "start":
            _, target, args = request
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    conn.close()
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    die_with_parent()
                    _resolve(target)(*args)
                    code = 0
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            running.add(pid)
            conn.send(pid)
        elif request[0] == "status":
            reap()
            pid = request[1]
            conn.send(finished.pop(pid, None) if pid not in running else None)
    for pid in running:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
