"""A fork server for task processes: one preloaded helper per runner, one ``fork()`` per task.

Starting a Python interpreter per task costs ~0.4 s of CPU (importing numpy and pymongo);
forking a process that already imported them costs milliseconds. Forking the runner itself is
unsafe (it has threads: heartbeats, driver monitors), and multiprocessing's fork server re-runs
the user's ``__main__`` script in every child. So the runner starts this small single-threaded
helper once (``python -m tensorhub._zygote_main FD``), and asks it over a socket to fork each task.

Process tree of a task (every process a task starts dies with the task; no task can stop its
runner)::

    runner ── guardian (subreaper) ── helper (subreaper) ── task (own session, subreaper) ── its children...

* The helper forks each task's process *ahead* of the task (a spare, forked after the previous
  task's end was answered, while the runner records it and claims the next): a start only hands
  the waiting process its target, arguments and stdout/stderr. A spare killed from outside is
  replaced.
* A task process leads its own session (its signals to its process group, ``os.killpg(0, ...)``,
  stay inside the task) and is a child subreaper: an orphaned descendant of a running task
  (``fork`` + ``setsid`` daemons included) is re-parented to the task, never to the helper. So
  every child of the helper other than its running tasks and its spare is what a task that
  ended left behind, and the helper kills it (and its descendants) after each task's end.
* The task process reports its exit code on a pipe (``done``) once its outcome is stored; the
  runner then tells the helper to ``end`` it (SIGKILL its process group and the task), without
  waiting for the task to exit. A script that fakes the report only ends its own task early: the
  kill comes with the report.
* Stopping a task (``kill``) kills its whole tree: every descendant (a ``/proc`` walk) and its
  process group, then the orphans swept from the helper.
* ``os.kill(os.getppid(), ...)`` from a task reaches the helper. The *guardian* (the helper's
  parent, a subreaper that does nothing else) covers that: when the helper dies, everything
  below it is re-parented to the guardian, which kills it all, then exits; the runner sees the
  helper gone (the task fails, its attempt counts) and starts a new one. A helper that stops
  answering (SIGSTOP) is SIGKILLed by the runner after :data:`REPLY_SECONDS`, with the same
  outcome.
* Lifetimes: the guardian gets SIGTERM when its runner dies (``PR_SET_PDEATHSIG``) and then
  SIGKILLs the helper and every descendant; the helper stops on EOF of its socket (``close()``,
  an exiting runner) after killing every task tree; a task process is SIGKILLed when the helper
  dies.

Guarantees: on Linux all of the above. Elsewhere (no ``/proc``, subreapers or parent-death
signals) a task's process group is killed, but descendants that started their own session and
processes of a task whose runner was SIGKILLed may survive.

Cost: a no-op task is one fork of the helper and one exit. (A per-task *shepherd* process
between helper and task, the sacrificial parent in an earlier design, cost a second fork, exit
and its copy-on-write faults: a quarter of a no-op task's CPU.)
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: rounds of killing a tree before giving up on processes that keep forking (each round sleeps briefly)
KILL_ROUNDS = 100
#: how long an exiting helper keeps killing what is re-parented to it (a loaded machine is slow to)
DRAIN_SECONDS = 10.0
#: exit statuses the helper keeps for tasks nobody asked about (their runner had their reported end)
FINISHED_KEPT = 1024
#: seconds a runner waits for its helper to answer a request before taking it for stopped or hung
#: (a task can SIGSTOP its parent, the helper): the helper is SIGKILLed and a new one started
REPLY_SECONDS = 60.0
#: seconds a runner waits for a new helper to be ready (it imports tensorhub, numpy, ... first)
READY_SECONDS = 300.0


_libc: Any = None


def _prctl(option: int, value: int) -> bool:
    global _libc
    try:
        if _libc is None:  # loaded once (the helper does before it forks): every task calls prctl twice
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (elsewhere a no-op)."""
    _prctl(_PR_SET_PDEATHSIG, sig)


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux >= 3.4); False elsewhere."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# ---------------------------------------------------------------------------- process trees
def _stat_fields(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, ...); None when
    the process is gone or there is no ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses


def _children_map() -> dict[int, list[int]]:
    """parent pid -> child pids, from ``/proc`` (empty where there is no ``/proc``)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)  # None: exited meanwhile
        if fields is not None and len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """Every living descendant of ``root`` (Linux; empty elsewhere), parents before children."""
    tree = _children_map()
    found, todo = [], list(tree.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def group_alive(pgid: int) -> bool:
    """Whether a living (not zombie) process is in process group ``pgid``."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(entry)
            if fields is not None and len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
                return True
    return False


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_descendants(root: int, reap: Any = None) -> None:
    """SIGKILL every descendant of ``root`` until none is left (bounded), reaping with ``reap()``."""
    for _ in range(KILL_ROUNDS):
        pids = descendants(root)
        if not pids:
            return
        for pid in pids:
            _kill(pid)
        if reap is not None:
            reap()
        time.sleep(0.002)


# ---------------------------------------------------------------------------- runner side
class ZygoteLost(RuntimeError):
    """The helper process died (killed from outside, or by a task that hunted it down)."""


class Zygote:
    """The runner's handle on its fork-server helper; thread-safe. ``process`` is the guardian (the
    process started), ``helper_pid`` the helper's pid (known once it is ready)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorhub._zygote_main", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            preexec_fn=lambda: die_with_parent(signal.SIGTERM),
        )
        theirs.close()
        self._sock = ours
        self._conn = Connection(os.dup(ours.fileno()))
        self._lock = threading.Lock()
        self._broken = False
        self.active: set[int] = set()  # started, not yet seen ended
        self.helper_pid: int | None = None

    def _reply(self, seconds: float) -> Any:
        """The helper's next message (lock held). None within ``seconds``: the helper is stopped
        or hung (a task can SIGSTOP its parent); it is SIGKILLed (the guardian then kills every
        task tree) and :class:`ZygoteLost` raised, so the runner carries on with a new helper."""
        if self._conn.poll(seconds):
            return self._conn.recv()
        self._broken = True
        self._kill_helper()
        raise ZygoteLost(f"the task helper process did not answer within {seconds:g}s (stopped by a task?); "
                         "it was killed")

    def _kill_helper(self) -> None:
        """SIGKILL a stopped or hung helper (the guardian then kills every task tree and exits): by
        pid while ``/proc`` says it is still the guardian's child, else by SIGTERM to the guardian."""
        pid = self.helper_pid
        fields = _stat_fields(pid) if pid is not None else None
        if pid is not None and fields is not None and len(fields) > 1 and int(fields[1]) == self.process.pid:
            _kill(pid)
        elif self.process.poll() is None:
            self.process.terminate()  # the guardian SIGKILLs the helper

    def _ready(self) -> None:
        """Read the helper's first message, its pid, once it has imported what tasks need (lock held)."""
        if self.helper_pid is None:
            _, self.helper_pid = self._reply(READY_SECONDS)

    def _ask(self, *request: Any, fds: list[int] | None = None, receive_fd: bool = False) -> Any:
        """Send ``request`` (and ``fds``), return the reply; with ``receive_fd``, ``(reply, fd or None)``:
        a reply ``(value, True)`` is followed by one file descriptor."""
        with self._lock:
            if self._broken:
                raise ZygoteLost("the task helper process is gone")
            try:
                self._ready()
                self._conn.send(request)
                if fds is not None:
                    socket.send_fds(self._sock, [b"F"], fds)
                reply = self._reply(REPLY_SECONDS)
                if not receive_fd:
                    return reply
                value, has_fd = reply
                if not has_fd:
                    return value, None
                _, received, _, _ = socket.recv_fds(self._sock, 1, 1)
                if len(received) != 1:
                    for fd in received:
                        os.close(fd)
                    raise OSError("the task helper sent no process handle")
                return value, received[0]
            except (EOFError, OSError) as exc:
                self._broken = True
                raise ZygoteLost("the task helper process died") from exc

    def alive(self) -> bool:
        return not self._broken and self.process.poll() is None

    def start(self, target: str, args: tuple, stdout: int, stderr: int,
              done: int | None = None) -> tuple[int, int | None]:
        """Fork a task that runs ``target`` (``"module:function"``) with ``args``, its stdout and
        stderr on the given fds (and ``done``, a pipe's write end, handed to ``target`` as the
        keyword ``done_fd``); return the pid of its process (the leader of its process group) and
        a pidfd of it (readable once it has exited; None where Linux has no ``pidfd_open``), which
        the caller closes. The task exits with the int ``target`` returns (0 if it returns
        anything else, 1 if it raises).

        The pidfd is opened by the helper before it can reap the process, so it cannot name a
        reused pid: waiting on it replaces polling :meth:`exit_code` (one round trip per task
        instead of one per poll, and no sleep between the task's end and the runner seeing it).
        """
        fds = [stdout, stderr] if done is None else [stdout, stderr, done]
        pid, pidfd = self._ask("start", target, args, fds=fds, receive_fd=True)
        self.active.add(pid)
        return pid, pidfd

    def end(self, pid: int) -> None:
        """End a task whose process reported its outcome: SIGKILL its process group and process now
        (nothing of it outlives the report, whatever the script did) without waiting for them to be
        reaped; the helper reaps them and sweeps strays later, and keeps only the last
        :data:`FINISHED_KEPT` statuses nobody asked for. A round trip, not a one-way message: a
        helper that a task stopped (SIGSTOP) is found out here, and killed with what the task left."""
        self._ask("end", pid)
        self.active.discard(pid)

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a started task (negative: killed by that signal), None while it runs."""
        code = self._ask("status", pid)
        if code is not None:
            self.active.discard(pid)
        return code

    def kill(self, pid: int) -> None:
        """Kill a task's whole process tree (the helper reaps it; ``exit_code`` then reports it)."""
        self._ask("kill", pid)

    def close(self) -> None:
        """Stop the helper (it kills every task tree on EOF) and reap it."""
        with self._lock:
            self._broken = True
            self._conn.close()
            self._sock.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # the helper is stopped or hung: kill it, the guardian drains
            self._kill_helper()
            try:
                self.process.wait(DRAIN_SECONDS + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def shared_zygote() -> Zygote:
    """This process's helper, started on first use (and again if it died)."""
    global _zygote
    with _zygote_lock:
        if _zygote is None or not _zygote.alive():
            if _zygote is not None:
                _zygote.close()  # reap the dead one
            else:
                atexit.register(stop_shared_zygote)
            _zygote = Zygote()
        return _zygote


def stop_shared_zygote(only_if_idle: bool = False) -> None:
    """Stop and reap this process's helper (``TensorHub.close`` and interpreter exit).

    ``only_if_idle``: keep it while a task of this process runs (another hub may be running one).
    """
    global _zygote
    with _zygote_lock:
        if _zygote is None or (only_if_idle and _zygote.active and _zygote.alive()):
            return
        zygote, _zygote = _zygote, None
    zygote.close()


# ---------------------------------------------------------------------------- helper side
class _Spare:
    """A pre-forked task process (its pid and pidfd) and the socket it waits on for what to run."""

    def __init__(self, pid: int, pidfd: int | None, sock: socket.socket) -> None:
        self.pid, self.pidfd, self.sock = pid, pidfd, sock

    def close(self) -> None:
        self.sock.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def hand(self, target: str, args: tuple, fds: list[int]) -> None:
        """Give the waiting task process what to run (OSError: it is gone)."""
        if self.pidfd is not None and select.select([self.pidfd], [], [], 0)[0]:
            raise OSError("the spare task process has exited")  # killed from outside while it waited
        conn = Connection(os.dup(self.sock.fileno()))
        try:
            conn.send((target, args))
        finally:
            conn.close()
        socket.send_fds(self.sock, [b"F"], fds)


def _start_spare(spare: list[_Spare], prefork: Any, target: str, args: tuple, fds: list[int]) -> _Spare:
    """Hand a task to the spare (forking one if there is none, or again if it died unused)."""
    for attempt in range(2):
        if not spare:
            prefork()
        chosen = spare.pop()
        try:
            chosen.hand(target, args, fds)
            return chosen
        except OSError:
            if attempt:
                raise
            chosen.close()
            kill_group(chosen.pid)
            _kill(chosen.pid)
    raise AssertionError("unreachable")


def _resolve(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _status(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _task_main(task_sock: socket.socket) -> int:
    """A pre-forked task process: wait for ``(target, args)`` and the stdout/stderr fds, then run
    ``target(*args)``; its exit code. Exits 0 at once when the helper drops it unused (EOF)."""
    conn = Connection(os.dup(task_sock.fileno()))
    try:
        target, args = conn.recv()
        _, fds, _, _ = socket.recv_fds(task_sock, 1, 3)
    except (EOFError, OSError, ValueError):
        return 0
    finally:
        conn.close()
    task_sock.close()
    for fd, target_fd in zip(fds, (1, 2)):
        os.dup2(fd, target_fd)
        os.close(fd)
    options = {"done_fd": fds[2]} if len(fds) > 2 else {}
    returned = _resolve(target)(*args, **options)
    return returned if isinstance(returned, int) and not isinstance(returned, bool) else 0


def _reap_any() -> bool:
    """Reap every exited child; whether a child (living) is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _children_of_self() -> list[int] | None:
    """This process's children, from ``/proc/self/task/*/children`` (one small read per thread,
    instead of reading every process's ``stat``); None where the kernel has no such file."""
    children: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                children += [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
        return None
    return children


def _pidfd(pid: int) -> int | None:
    """A pidfd of our child ``pid`` (Linux >= 5.3), None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _become_task_process(helper: int) -> None:
    """Set up a freshly forked task process: default signal handlers, its own session and process
    group, subreaper of its descendants, SIGKILLed when the helper dies."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    become_subreaper()
    die_with_parent(signal.SIGKILL)
    if os.getppid() != helper:  # the helper died before the line above
        os._exit(0)


def serve(fd: int, parent: int | None = None) -> None:
    """The helper's loop: hand a pre-forked task process its work on ``start``, kill trees on
    ``kill``, reap and answer ``status``; on EOF (or SIGTERM) kill every task tree and exit.

    ``parent`` is the guardian's pid: the helper shuts down at once if it is not its parent any
    more (the guardian died before the helper asked for a parent-death signal)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import tensorhub.task_script  # noqa: F401 - preload what every task needs before forking

    # what was preloaded is never collected: a task's garbage collections then leave its pages
    # shared with the helper instead of touching (copying) every one of them
    gc.freeze()

    conn = Connection(fd)
    sock = socket.socket(fileno=os.dup(fd))
    me = os.getpid()
    finished: dict[int, int] = {}
    running: set[int] = set()
    subreaper = become_subreaper()
    dirty = [False]  # a task ended since the last sweep: what it left was re-parented to us
    # the next task's process, forked ahead (after a task's end is answered, while the runner
    # records it and claims the next; not after a start, where a short task's end would wait for
    # the fork): a start then costs no fork
    spare: list[_Spare] = []

    def prefork() -> None:
        """Fork the spare task process (it waits on a socket for what to run)."""
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                conn.close()
                sock.close()
                ours.close()
                _become_task_process(me)
                code = _task_main(theirs)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        spare.append(_Spare(pid, _pidfd(pid), ours))  # the pidfd before any reap: pid is our child

    def refill() -> None:
        """Fork the next spare if there is none (after a task ended: while the runner records it)."""
        if not spare:
            prefork()

    def drop_spare() -> None:
        while spare:
            unused = spare.pop()
            unused.close()
            kill_group(unused.pid)
            _kill(unused.pid)

    def reap() -> None:
        """Reap every exited child: task processes (their status is kept) and swept orphans."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if spare and pid == spare[0].pid:  # killed from outside before use: fork another when asked
                spare.pop().close()
            elif pid in running:
                running.discard(pid)
                finished[pid] = _status(status)
                if len(finished) > FINISHED_KEPT:  # statuses of tasks whose process reported its end
                    finished.pop(next(iter(finished)))
                dirty[0] = True
                # what is left in the task's process group (everywhere; /proc walks are Linux only).
                # Safe from pid reuse: a pid is not reused while a process group of that id exists.
                kill_group(pid)

    def sweep(seconds: float = 0.0) -> None:
        """Kill children we did not start: what an ended task's tree left re-parented to us.

        Up to KILL_ROUNDS rounds, and for at least ``seconds`` while strays keep appearing (an
        exiting helper drains: once it is gone, orphans of task trees go to init instead)."""
        if not subreaper:
            return
        dirty[0] = False
        deadline = time.monotonic() + seconds
        rounds = 0
        while True:
            reap()
            children = _children_of_self()
            if children is None:
                children = _children_map().get(os.getpid(), [])
            spares = {each.pid for each in spare}
            strays = [pid for pid in children if pid not in running and pid not in spares]
            if not strays:
                return
            for pid in strays:
                for child in descendants(pid):
                    _kill(child)
                _kill(pid)
            rounds += 1
            if rounds >= KILL_ROUNDS and time.monotonic() >= deadline:
                return
            time.sleep(0.002)

    def kill_tree(pid: int) -> None:
        if pid not in running:
            return
        kill_group(pid)  # the task process leads its session and process group
        kill_descendants(pid, reap=reap)
        _kill(pid)
        deadline = time.monotonic() + 10
        while pid in running and time.monotonic() < deadline:
            reap()
            time.sleep(0.002)
        sweep()

    def shutdown(*_: Any) -> None:
        drop_spare()
        for pid in list(running):
            kill_tree(pid)
        running.clear()  # every task tree was killed: any child left is a stray
        sweep(DRAIN_SECONDS)
        os._exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    die_with_parent(signal.SIGTERM)
    if os.getppid() == 1 or (parent is not None and os.getppid() != parent):
        shutdown()
    conn.send(("ready", me))
    prefork()
    while True:
        try:
            if not conn.poll(1.0):  # idle: a backstop sweep, only after a task ended (a /proc scan costs ~ms)
                reap()
                if dirty[0]:
                    sweep()
                continue
            request = conn.recv()
        except (EOFError, OSError):
            break
        if request[0] == "start":
            _, target, args = request
            _, fds, _, _ = socket.recv_fds(sock, 1, 3)
            started = _start_spare(spare, prefork, target, args, fds)
            for received in fds:
                os.close(received)  # before the next prefork: a spare must not hold this task's pipes
            running.add(started.pid)
            conn.send((started.pid, started.pidfd is not None))
            if started.pidfd is not None:
                socket.send_fds(sock, [b"P"], [started.pidfd])
            started.close()
        elif request[0] == "status":
            reap()
            pid = request[1]
            status_code: int | None = finished.pop(pid, None) if pid not in running else None
            conn.send(status_code)
            if status_code is not None:
                sweep()
                refill()
        elif request[0] == "kill":
            kill_tree(request[1])
            conn.send(None)
            refill()
        elif request[0] == "end":  # the task reported its end: kill what is left, reap it later
            if request[1] in running:
                kill_group(request[1])
                _kill(request[1])
            conn.send(None)
            refill()
            reap()
            if dirty[0]:
                sweep()
    shutdown()


def guard(fd: int) -> None:
    """The guardian (the process a runner starts): fork the helper, which serves on ``fd``, then
    wait for it to exit and kill every process left below (re-parented to us: we are a subreaper).

    A task can kill its parent, the helper; its tree then lands here rather than on init. On
    SIGTERM (the runner died: parent-death signal) or SIGHUP the helper is SIGKILLed first. Exits
    with the helper's exit code (128 + the signal that killed it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    become_subreaper()
    me = os.getpid()
    helper = os.fork()
    if helper == 0:
        try:
            serve(fd, parent=me)
        finally:
            os._exit(1)
    os.close(fd)  # the runner must see EOF on its socket when the helper dies
    handle = _pidfd(helper)  # names this helper even once it is reaped and its pid reused

    def stop(_signum: int, _frame: Any) -> None:  # SIGKILL: works on a stopped helper too
        if handle is None:
            _kill(helper)
            return
        try:
            signal.pidfd_send_signal(handle, signal.SIGKILL)
        except OSError:
            pass  # it has exited already

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    code = 1
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == helper:
            code = _status(status)
            break
    deadline = time.monotonic() + DRAIN_SECONDS
    while _reap_any() and time.monotonic() < deadline:  # no child left means no descendant left
        for pid in descendants(me):
            _kill(pid)
        time.sleep(0.002)
    os._exit(code if code >= 0 else 128 - code)
