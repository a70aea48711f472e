"""A fork server for task processes: one preloaded helper per runner, one ``fork()`` per task.

Starting a Python interpreter per task costs ~0.4 s of CPU (importing numpy and pymongo);
forking a process that already imported them costs milliseconds. Forking the runner itself is
unsafe (it has threads: heartbeats, driver monitors), and multiprocessing's fork server re-runs
the user's ``__main__`` script in every child. So the runner starts this small single-threaded
helper once (``python -m tensorhub._zygote_main FD``), and asks it over a socket to fork each task.

Process tree of a task (every process a task starts dies with the task; no task can stop its
runner)::

    runner ── helper (subreaper) ── shepherd (own session, subreaper) ── task ── its children...

* The helper forks each task's shepherd and task process *ahead* of the task (a spare pair,
  forked after the previous start was answered, while the runner records and claims): a start
  only hands the waiting task process its target, arguments and stdout/stderr. Two forks on the
  start path were most of a no-op task's cost. A spare killed from outside is replaced.
* The task process reports its exit code on a pipe (``done``) once its outcome is stored; the
  runner then asks the helper to ``end`` it (SIGKILL its process group and shepherd, reaped and
  swept later) instead of waiting ~9 ms for the task and its shepherd to exit. A script that fakes
  the report only ends its own task early: the kill comes with the report.
* The *shepherd* is forked per task: it calls ``setsid()`` (the task's signals to its process
  group, ``os.killpg(0, ...)``, stay inside the task) and becomes a child subreaper, so every
  orphaned descendant of the task (``fork`` + ``setsid`` daemons included) is re-parented to it.
  It forks the *task* process, waits for it, then kills whatever the task left behind and exits
  with the task's status. ``os.kill(os.getppid(), ...)`` from the task hits the shepherd, not the
  helper: the task ends (its attempt counts), the runner carries on.
* The *helper* is a subreaper too: descendants of a shepherd that was SIGKILLed (timeout, cancel,
  a runner shutting down) land on it, and it kills every child it did not start itself.
* Stopping a task (``kill``) kills its whole tree: every descendant of its shepherd (a ``/proc``
  walk) and its process group, then the orphans swept from the helper.
* Lifetimes: the helper gets SIGTERM when its runner dies (``PR_SET_PDEATHSIG``) and stops on
  EOF of its socket (``close()``, an exiting runner); either way it kills every task tree first.
  A shepherd gets SIGTERM when the helper dies and kills its tree; a task process is SIGKILLed
  when its shepherd dies.

Guarantees: on Linux all of the above. Elsewhere (no ``/proc``, subreapers or parent-death
signals) a task's process group is killed, but descendants that started their own session and
processes of a task whose runner was SIGKILLed may survive. A task that deliberately hunts down
and SIGKILLs the helper itself (its grandparent) ends with its tree killed by the runner's
fallback (its process group), and the runner starts a new helper.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import os
import resource
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
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
        if len(fields) > 1:
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
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
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
    """The runner's handle on its fork-server helper; thread-safe."""

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

    def _ask(self, *request: Any, fds: list[int] | None = None, receive_fd: bool = False) -> Any:
        """Send ``request`` (and ``fds``), return the reply; with ``receive_fd``, ``(reply, fd or None)``:
        a reply ``(value, True)`` is followed by one file descriptor."""
        with self._lock:
            if self._broken:
                raise ZygoteLost("the task helper process is gone")
            try:
                self._conn.send(request)
                if fds is not None:
                    socket.send_fds(self._sock, [b"F"], fds)
                reply = self._conn.recv()
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
        keyword ``done_fd``); return the pid of its shepherd (the task's handle) and a pidfd of
        the shepherd (readable once it has exited; None where Linux has no ``pidfd_open``), which
        the caller closes. The task exits with the int ``target`` returns (0 if it returns
        anything else, 1 if it raises).

        The pidfd is opened by the helper before it can reap the shepherd, so it cannot name a
        reused pid: waiting on it replaces polling :meth:`exit_code` (one round trip per task
        instead of one per poll, and no sleep between the task's end and the runner seeing it).
        """
        fds = [stdout, stderr] if done is None else [stdout, stderr, done]
        pid, pidfd = self._ask("start", target, args, fds=fds, receive_fd=True)
        self.active.add(pid)
        return pid, pidfd

    def end(self, pid: int) -> None:
        """End a task whose process reported its outcome: SIGKILL its process group and shepherd now
        (nothing of it outlives the report, whatever the script did) without waiting for them to be
        reaped; the helper reaps them and sweeps strays later, and keeps only the last
        :data:`FINISHED_KEPT` statuses nobody asked for."""
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
    """A pre-forked shepherd (its pid and pidfd) and the socket to its waiting task process."""

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
            raise OSError("the spare shepherd has exited")  # killed from outside while it waited
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


def _shepherd(task_sock: socket.socket) -> int:
    """A task's shepherd (forked by the helper ahead of its task): own session, subreaper; fork the
    task process, which waits on ``task_sock`` for what to run; kill what the task leaves behind,
    return its wait status as an exit code (or die by its signal)."""
    os.setsid()
    become_subreaper()

    def stop(signum: int, _frame: Any) -> None:  # the helper died, or the task signalled its own group
        kill_descendants(os.getpid())
        _die_like(-signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    die_with_parent(signal.SIGTERM)
    if os.getppid() == 1:  # the helper died before the line above
        _die_like(-signal.SIGTERM)
    code: int | None = None
    task = os.fork()
    if task == 0:
        code = 1
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            die_with_parent(signal.SIGKILL)
            code = _task_main(task_sock)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    task_sock.close()
    while code is None:  # reap the task, and orphans re-parented to us meanwhile
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == task:
            code = _status(status)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # No child left (ECHILD) means no living descendant: we are their subreaper, so an orphan would
    # be our child. Only then is the /proc walk of kill_descendants skipped (it costs ~ms a task).
    if _reap_any():
        kill_descendants(os.getpid(), reap=_reap_any)  # the helper kills the process group once we are gone
    return 1 if code is None else code


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


def _die_like(code: int) -> None:
    """Exit with ``code``, or be killed by the signal ``-code`` (so the helper sees the task's end)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code >= 0:
        os._exit(code)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        signal.signal(-code, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL and SIGSTOP cannot be caught anyway
    os.kill(os.getpid(), -code)
    os._exit(128 - code)  # a signal that does not terminate (never sent to a task process by us)


def _pidfd(pid: int) -> int | None:
    """A pidfd of our child ``pid`` (Linux >= 5.3), None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def serve(fd: int) -> None:
    """The helper's loop: fork a shepherd on ``start``, kill trees on ``kill``, reap and answer
    ``status``; on EOF (or SIGTERM: the runner died) kill every task tree and exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import tensorhub.task_script  # noqa: F401 - preload what every task needs before forking

    # what was preloaded is never collected: a task's garbage collections then leave its pages
    # shared with the helper instead of touching (copying) every one of them
    gc.freeze()

    conn = Connection(fd)
    sock = socket.socket(fileno=os.dup(fd))
    finished: dict[int, int] = {}
    running: set[int] = set()
    subreaper = become_subreaper()
    dirty = [False]  # a shepherd ended since the last sweep: strays may have been re-parented to us
    # the next task's shepherd and task process, forked ahead (after a start is answered, while the
    # runner records and claims): a start then costs no fork (two forks were ~2/3 of a no-op task)
    spare: list[_Spare] = []

    def prefork() -> None:
        """Fork the spare shepherd (which forks its task process, waiting for what to run)."""
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                conn.close()
                sock.close()
                ours.close()
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = _shepherd(theirs)
            finally:
                _die_like(code)
        theirs.close()
        spare.append(_Spare(pid, _pidfd(pid), ours))  # the pidfd before any reap: pid is our child

    def drop_spare() -> None:
        while spare:
            unused = spare.pop()
            unused.close()
            kill_group(unused.pid)
            _kill(unused.pid)

    def reap() -> None:
        """Reap every exited child: shepherds (their status is kept) and swept orphans."""
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
        """Kill children we did not start: what a killed shepherd's tree left re-parented to us.

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
        kill_group(pid)  # the shepherd leads the task's session and process group
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
    if os.getppid() == 1:
        shutdown()
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
            prefork()
        elif request[0] == "status":
            reap()
            pid = request[1]
            status_code: int | None = finished.pop(pid, None) if pid not in running else None
            if status_code is not None:
                sweep()
            conn.send(status_code)
        elif request[0] == "kill":
            kill_tree(request[1])
            conn.send(None)
        elif request[0] == "end":  # the task reported its end: kill what is left, reap it later
            if request[1] in running:
                kill_group(request[1])
                _kill(request[1])
            conn.send(None)
            reap()
            if dirty[0]:
                sweep()
    shutdown()
