"""Start commands of this CLI as processes forked from one server that has imported the heavy libraries once.

Why: a fresh interpreter spends seconds of CPU importing torch, timm (which pulls torchvision and, through it,
``torch._dynamo``) and Lightning (which pulls torchmetrics, scipy and matplotlib) before its first batch, and a
launcher of N sweep workers paid that N times. Here one server — :mod:`multiprocessing`'s forkserver, preloading
:data:`PRELOAD` — pays it once, and every process forked from it starts at the command's first line.

Each such process is still a process of its own, as ``python -m irpe_bench.cli ARGS`` would be: its own pid and
session (Ctrl-C in a terminal reaches its starter only, which forwards it), the environment and working directory
it was given, its own ``sys.argv`` and ``__main__`` (``runpy``, as ``-m`` sets them up: Lightning's DDP launcher
re-runs that command for the other ranks), Python's default signal handlers, its exit handlers run at the end,
and its exit code — or minus the signal that ended it — as :attr:`Started.returncode`. What differs: its command
line (``ps``, ``/proc/PID/cmdline``) is the server's, which holds no argument of the command, as does
``/proc/PID/environ`` (the environment a process was exec'd with; the one given is in ``os.environ`` and passes to
what it starts), and what a module reads from the environment when it is imported is the server's environment
(nothing in this package does, except the Triton kernel's ``TRITON_INTERPRET``, which a worker never changes).

The server is started on first use with the caller's environment and ends when the last process that may use it
does (its starter, and every process forked from it). A process forked from a server that starts commands in turn
(a sweep launcher started so, as the tests start one) forks them from that same server instead of paying the
imports for a server of its own — unless its environment differs from the server's in what acts when an
interpreter starts (:data:`AT_START`: ``PYTHONPATH`` and the other ``PYTHON*`` variables, the dynamic loader's
``LD_*``, Triton's ``TRITON_INTERPRET``): then what the server imported is not what a fresh interpreter with that
environment would import, and it starts its own. Nothing here touches CUDA before the fork (torch initialises it
lazily), so each worker may still pick its GPUs through ``CUDA_VISIBLE_DEVICES``.
"""
from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import subprocess
import sys
import threading
import weakref
from multiprocessing import reduction
from typing import IO, Dict, List, Optional, Sequence, Union

#: imported once by the server: what a sweep worker, ``train`` and ``sweep`` need before their first batch
PRELOAD: List[str] = ["torch", "timm", "lightning.pytorch", "optuna", "irpe_bench.sweep.cli",
                      "irpe_bench.sweep.runner", "irpe_bench.train.run", "irpe_bench.train.cli"]

#: the module a started process runs, as ``python -m`` would
MODULE = "irpe_bench.cli"

#: what names of environment variables that act when an interpreter starts or imports begin with: a process whose
#: environment differs from its server's in one of them does not fork from that server
AT_START = ("PYTHON", "LD_", "TRITON_INTERPRET")

Stream = Union[None, int, IO]

_context = None
#: in a process forked from a server: that server's environment (None elsewhere)
_server_environment: Optional[Dict[str, str]] = None


def _detached(duplicate) -> int:
    return duplicate.detach()


class _Passed:
    """A file descriptor of this process that the forked one receives as its own (multiprocessing sends it over
    the server's socket when the process object is pickled: :func:`multiprocessing.reduction.DupFd`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return _detached, (reduction.DupFd(self.fd),)


def _at_start(env: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(AT_START)}


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        if _server_environment is not None and _at_start(_server_environment) == _at_start(dict(os.environ)):
            _adopt_inherited_server()
    return _context


def _adopt_inherited_server() -> None:
    """Fork from the server this process was forked from. It knows that server's address and holds a write end of
    its "alive" pipe (:mod:`multiprocessing.forkserver` hands both to every process it forks, so the server lives
    while any of them does), but not its pid: ``ensure_running`` would start a server of its own. The server
    is not this process's child, so whether it runs cannot be asked of ``waitpid``; it runs while this process
    holds that pipe, and a server that ended anyway shows as a refused connection on the next start."""
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_address is None or server._forkserver_alive_fd is None:
        return
    from multiprocessing import resource_tracker

    server.ensure_running = resource_tracker.ensure_running


def _child(argv: List[str], env: Dict[str, str], cwd: Optional[str], fds: Dict[int, int]) -> None:
    """In the forked process: become what ``python -m irpe_bench.cli ARGV`` in ``cwd`` with ``env`` would be."""
    global _server_environment, _context
    # NOTE: what the server imported stays out of this process's collections: none visits (and so copies, writing
    # to each object's header) the pages it shares with the server, as gc.freeze's documentation advises for fork
    gc.freeze()
    _server_environment, _context = dict(os.environ), None
    os.setsid()
    for target, fd in fds.items():
        os.dup2(fd, target)
    for fd in set(fds.values()) - {0, 1, 2}:
        os.close(fd)
    if cwd is not None:
        os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [MODULE, *argv]
    # NOTE: multiprocessing has re-run the starter's main script here as __mp_main__ (``run.py`` imports the CLI);
    # ``python -m`` finds the module not yet imported, and so does runpy (else it warns of a second copy)
    sys.modules.pop(MODULE, None)
    _threads_from_environment()
    _own_exit_handlers()
    try:
        runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
    finally:
        # NOTE: multiprocessing ends its children with os._exit (after flushing stdout and stderr), past every exit
        # handler
        atexit._run_exitfuncs()


def _threads_from_environment() -> None:
    """torch sized its thread pool from ``OMP_NUM_THREADS`` when the server imported it, with the server's
    environment; size it from this process's (a launcher gives each worker its share of the cores there), or to
    the CPUs this process may run on where it is unset, as a fresh interpreter's torch would."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    affinity = getattr(os, "sched_getaffinity", None)  # NOTE: Linux; elsewhere every CPU
    threads = int(given) if given.isdigit() and int(given) > 0 else \
        len(affinity(0)) if affinity else (os.cpu_count() or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _own_exit_handlers() -> None:
    """Leave the server's exit handlers to the server: what its imports registered (W&B's media directory, a
    temporary directory every process forked from it shares, is one) must not be undone when one of them exits.
    The process runs its own at its end, with logging's shutdown, as a fresh interpreter's would be."""
    atexit._clear()
    for inherited in list(weakref.finalize._registry):
        inherited.atexit = False
    weakref.finalize._registered_with_atexit = False
    atexit.register(logging.shutdown)


class Started:
    """A started command, with the part of :class:`subprocess.Popen`'s interface that its starters use."""

    def __init__(self, process, args: Sequence[str], pipes: Dict[str, IO]) -> None:
        self._process, self.args = process, list(args)
        self.pid: int = process.pid
        self.stdout: Optional[IO] = pipes.get("stdout")
        self.stderr: Optional[IO] = pipes.get("stderr")

    @property
    def returncode(self) -> Optional[int]:
        return self._process.exitcode

    def poll(self) -> Optional[int]:
        return self._process.exitcode

    def wait(self, timeout: Optional[float] = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def communicate(self, timeout: Optional[float] = None):
        """What the piped streams held once the process ended; both are read at once (threads), so a full pipe
        cannot block the process. Past ``timeout`` seconds: :class:`subprocess.TimeoutExpired`."""
        got: Dict[str, object] = {}
        readers = [threading.Thread(target=lambda n=n, f=f: got.__setitem__(n, f.read()), daemon=True)
                   for n, f in (("stdout", self.stdout), ("stderr", self.stderr)) if f is not None]
        for r in readers:
            r.start()
        self.wait(timeout)
        for r in readers:
            r.join(timeout)
        if any(r.is_alive() for r in readers):  # a process of its own still holds the pipe open
            raise subprocess.TimeoutExpired(self.args, timeout)
        return got.get("stdout"), got.get("stderr")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(argv: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Union[str, os.PathLike]] = None,
          stdout: Stream = None, stderr: Stream = None, text: bool = False) -> Started:
    """Start ``python -m irpe_bench.cli ARGV`` forked from the preloaded server. ``stdout``/``stderr``: None
    (this process's), ``subprocess.DEVNULL``, ``subprocess.PIPE`` (read from :attr:`Started.stdout` /
    ``.stderr``), ``subprocess.STDOUT`` (stderr only), an open file or a file descriptor."""
    fds: Dict[int, _Passed] = {}
    pipes: Dict[str, IO] = {}
    close: List[int] = []
    for target, name, given in ((1, "stdout", stdout), (2, "stderr", stderr)):
        if given is None:
            given = target  # this process's own
        elif given == subprocess.STDOUT and target == 2:
            fds[2] = fds[1]
            continue
        if given == subprocess.DEVNULL:
            given = os.open(os.devnull, os.O_WRONLY)
            close.append(given)
        elif given == subprocess.PIPE:
            read, given = os.pipe()
            close.append(given)
            pipes[name] = os.fdopen(read, "r" if text else "rb")
        elif not isinstance(given, int):
            given = given.fileno()
        fds[target] = _Passed(given)
    ctx = _server()
    process = ctx.Process(target=_child, args=(list(argv), dict(os.environ if env is None else env),
                                               None if cwd is None else os.fspath(cwd), fds),
                          name=f"irpe-bench {' '.join(argv[:1])}")
    try:
        process.start()
    finally:
        for fd in close:
            os.close(fd)
    # NOTE: its end is the caller's to wait for or bring about, as with subprocess.Popen; multiprocessing would
    # otherwise join it when this process exits
    multiprocessing.process._children.discard(process)
    return Started(process, [MODULE, *argv], pipes)


__all__ = ["start", "Started", "PRELOAD", "MODULE"]
