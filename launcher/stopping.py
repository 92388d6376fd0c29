"""A stopped launcher stops everything it started: signals, process discovery, and the stop itself.

What a run starts does not stay in one process group or session: ``flower-superlink``
starts ``flower-superexec`` in a new session (``start_new_session=True``), which starts
``flwr-simulation``, which starts Ray's head (GCS, raylet, dashboard, monitors) whose raylet
starts the ClientApp actors; when one of them dies its children are reparented. So
``os.killpg`` on the processes a launcher started by hand misses most of the run. Two
mechanisms find the rest, and :class:`RunScope` uses both:

* **a marker in the environment** (chosen as the primary mechanism): on entering a scope the
  launcher appends its scope id to ``FAL_RUN_SCOPES`` in its own environment; every process
  started afterwards inherits it (Flower's SuperLink, SuperExec and ``flwr-simulation``, Ray's
  head processes and its workers all pass their environment on; checked by the tests), whatever
  session, process group or parent it ends up with, so a scan of ``/proc/*/environ`` finds the
  whole run, and only it: another run's processes carry another id, and a nested launcher (a
  sweep's ``fal-simulate``) appends its own id, so the outer scope still sees the inner run's
  processes. The marker is also how a test, a benchmark or an operator finds the processes of a
  run (``grep -l <id> /proc/*/environ``). It cannot see a process that rewrites its environment
  from scratch, hence
* **the process tree under a child subreaper** (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux >= 3.4):
  the launcher is made a subreaper, so an orphaned descendant (its parent died, or it
  double-forked to daemonise) is reparented to the launcher instead of to init and stays in the
  launcher's tree; every descendant started after the scope began is a member, marker or not.
  The tree alone would not do: it is lost as soon as the launcher itself dies, and it cannot tell
  a run's process from another child of the same process (pytest running a launcher in-process
  next to a Label Studio server it started), which the marker can.

Neither needs privileges or cgroups (a cgroup per run would be cleaner, but needs a delegated
cgroup v2 subtree, which an unprivileged job on a shared machine or in a container rarely has).

On SIGTERM, SIGINT or SIGHUP the scope raises :class:`Stopped` in the main thread, so the
launcher's own ``finally`` blocks run (Flower processes stopped, logs kept); on leaving the
scope every member still alive gets SIGTERM, ``grace`` seconds to exit, then SIGSTOP + SIGKILL
(stopped first, so a supervisor among them cannot restart what was just killed), repeated until
none is left. The launcher then exits with 128 + the signal number (143 for SIGTERM, 130 for
SIGINT, 129 for SIGHUP), what a shell reports for a process killed by that signal. A second
signal during the stop is ignored (the stop is bounded by ``grace`` anyway).

A launcher started by another one that may die without warning (``fal-sweep``'s Ray worker,
killed by ``ray.cancel(force=True)``) is told so with ``FAL_STOP_WITH_PARENT=<parent pid>``:
it asks the kernel for SIGTERM when that parent dies (``PR_SET_PDEATHSIG``), and stops its run.

SIGKILL of the launcher itself cannot be handled; its run's processes can then still be found
by the marker (:func:`scope_processes`) and stopped with :func:`stop_processes`.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable

__all__ = [
    "SCOPE_VARIABLE", "PARENT_VARIABLE", "RunScope", "Stopped", "scope_processes", "stop_processes",
    "process_start_time", "descendants", "reap_orphans", "reclaim_signals",
    "become_subreaper",
]

SCOPE_VARIABLE = "FAL_RUN_SCOPES"
PARENT_VARIABLE = "FAL_STOP_WITH_PARENT"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: the scopes entered and not yet left, innermost last (see :func:`reclaim_signals`)
_ACTIVE: list["RunScope"] = []


class Stopped(BaseException):
    """The launcher got a stop signal. A BaseException, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _prctl(option: int, arg: int) -> int | None:
    """``prctl(option, arg)``; None where there is no prctl (not Linux) or it failed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        value = ctypes.c_int(0)
        if option == _PR_GET_CHILD_SUBREAPER:
            rc = libc.prctl(option, ctypes.byref(value), 0, 0, 0)
            return None if rc != 0 else value.value
        rc = libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)
        return None if rc != 0 else 0
    except (OSError, AttributeError):
        return None


# ------------------------------------------------------------------ /proc
def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time in clock ticks since boot) of ``pid``, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()  # the command name may contain spaces and parentheses
    return int(rest[1]), rest[0], int(rest[19])


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _scopes_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:  # gone, or another user's process
        return []
    key = SCOPE_VARIABLE.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace").split()
    return []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started, as a ``time.time()`` value (10 ms resolution); None if it is gone."""
    stat = _stat(pid)
    if stat is None:
        return None
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - stat[2] / _CLK_TCK
    return time.time() - since_boot


def scope_processes(scope_id: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment carries ``scope_id`` (zombies excluded)."""
    found = []
    for pid in _pids():
        if scope_id in _scopes_of(pid):
            stat = _stat(pid)
            if stat is not None and stat[1] != "Z":
                found.append((pid, _cmdline(pid)))
    return found


def descendants(root: int) -> set[int]:
    """Every live descendant of ``root`` (whatever its session or process group)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _owned_children() -> set[int]:
    """Pids of children that a live ``Popen`` object (subprocess or multiprocessing) will wait for itself.

    Collecting those would leave their owner a wrong exit status (``Popen.wait`` returns 0 for a
    child collected by someone else), so :func:`reap_orphans` leaves them alone.
    """
    owned = set()
    with warnings.catch_warnings():  # touching every object wakes deprecated aliases (torch's) that warn
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, subprocess.Popen) or str(getattr(type(obj), "__module__", "")).startswith("multiprocessing.popen_"):
                if getattr(obj, "returncode", 0) is None and getattr(obj, "pid", None):
                    owned.add(int(obj.pid))
    return owned


def reap_orphans() -> int:
    """Collect exited children nobody waits for: orphans of the run reparented to this subreaper. How many."""
    me, owned, count = os.getpid(), None, 0
    for pid in _pids():
        stat = _stat(pid)
        if stat is None or stat[0] != me or stat[1] != "Z":
            continue
        owned = _owned_children() if owned is None else owned
        if pid in owned:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                count += 1
        except ChildProcessError:
            pass
    return count


def stop_processes(find, grace: float = 10.0, poll: float = 0.05) -> list[int]:
    """Stop the processes ``find()`` returns until it returns none: SIGTERM, ``grace`` s, then SIGSTOP+SIGKILL.

    ``find`` is called again and again, so processes started meanwhile (a supervisor
    restarting a worker) are stopped too. Returns every pid that was signalled.
    """
    signalled: set[int] = set()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        live = [p for p in find() if _alive(p)]
        if not live:
            return sorted(signalled)
        _signal_all([p for p in live if p not in signalled], signal.SIGTERM)
        signalled.update(live)
        time.sleep(poll)
    for _ in range(100):  # grace is over: freeze, then kill, whatever is left
        live = [p for p in find() if _alive(p)]
        if not live:
            break
        _signal_all(live, signal.SIGSTOP)
        _signal_all(live, signal.SIGKILL)
        signalled.update(live)
        time.sleep(poll)
    return sorted(signalled)


def become_subreaper() -> bool:
    """Make this process a child subreaper for good (orphaned descendants come to it); False where impossible."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1) is not None


def reclaim_signals() -> None:
    """Give the stop signals back to the innermost scope, after a library took them.

    ``ray.init`` sets its own SIGTERM handler (``sys.exit(15)``), which would bypass the
    scope's (no :class:`Stopped`, no cancelled tasks, a Ray driver torn down while its raylet
    is being stopped); a launcher calls this right after such a call.
    """
    scope = _ACTIVE[-1] if _ACTIVE else None
    if scope is not None and scope.handle_signals and threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, scope._on_signal)


# ------------------------------------------------------------------ the scope
class RunScope:
    """Everything started inside ``with RunScope():`` is stopped on leaving it (see the module docstring).

    ``handle_signals`` (main thread only): SIGTERM, SIGINT and SIGHUP raise :class:`Stopped`.
    """

    def __init__(self, name: str = "fal", *, grace: float = 10.0, handle_signals: bool = True) -> None:
        self.id = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.grace = grace
        self.handle_signals = handle_signals and threading.current_thread() is threading.main_thread()
        self.stopped: Stopped | None = None
        self.signalled: list[int] = []
        self._saved_handlers: dict[int, object] = {}
        self._saved_env: str | None = None
        self._saved_subreaper: int | None = None
        self._start_ticks = 0
        self._before: set[int] = set()

    # members of the run
    def members(self) -> set[int]:
        """Live processes of the run: the marker's, and descendants started inside the scope (not the launcher)."""
        me = os.getpid()
        found = {pid for pid, _ in scope_processes(self.id)}
        for pid in descendants(me):
            stat = _stat(pid)
            if stat is not None and stat[2] >= self._start_ticks and not self._under_older(pid):
                found.add(pid)
        found.discard(me)
        return {p for p in found if _alive(p)}

    def _under_older(self, pid: int) -> bool:
        """True if ``pid`` descends from a process that was already our descendant when the scope began."""
        seen = 0
        while pid > 1 and seen < 64:
            if pid in self._before:
                return True
            stat = _stat(pid)
            if stat is None or stat[0] == os.getpid():
                return False
            pid, seen = stat[0], seen + 1
        return False

    def stop_all(self) -> list[int]:
        """Stop every member of the run; the pids signalled."""
        pids = stop_processes(self.members, grace=self.grace)
        if self._saved_subreaper is not None:
            reap_orphans()
        self.signalled = pids
        return pids

    # signals
    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stopped is not None:  # already stopping: the stop is bounded, let it finish
            return
        self.stopped = Stopped(signum)
        raise self.stopped

    def __enter__(self) -> "RunScope":
        stat = _stat(os.getpid())
        self._start_ticks = stat[2] if stat else 0
        self._before = descendants(os.getpid())
        self._saved_env = os.environ.get(SCOPE_VARIABLE)
        os.environ[SCOPE_VARIABLE] = f"{self._saved_env or ''} {self.id}".strip()
        previous = _prctl(_PR_GET_CHILD_SUBREAPER, 0)
        if previous is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1) is not None:
            self._saved_subreaper = previous
        parent = os.environ.pop(PARENT_VARIABLE, None)
        if parent:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if self.handle_signals:
            for sig in STOP_SIGNALS:
                self._saved_handlers[sig] = signal.signal(sig, self._on_signal)
        _ACTIVE.append(self)
        if parent and os.getppid() != int(parent):  # the parent died before PDEATHSIG was armed
            self.stopped = Stopped(signal.SIGTERM)
            self.__exit__(Stopped, self.stopped, None)
            raise self.stopped
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self.handle_signals:  # a signal during the stop only notes itself (see _on_signal)
            for sig in STOP_SIGNALS:
                signal.signal(sig, lambda s, f: None)
        try:
            self.stop_all()
        finally:
            if self._saved_env is None:
                os.environ.pop(SCOPE_VARIABLE, None)
            else:
                os.environ[SCOPE_VARIABLE] = self._saved_env
            if self._saved_subreaper is not None:
                _prctl(_PR_SET_CHILD_SUBREAPER, self._saved_subreaper)
            for sig, handler in self._saved_handlers.items():
                signal.signal(sig, handler)
            self._saved_handlers.clear()
