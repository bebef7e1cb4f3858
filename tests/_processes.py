"""Commands of the CLI as processes of their own, forked from the preloaded server (:mod:`irpe_bench.preloaded`).

What these tests check is what a sweep or a training run does under signals, kills and faults, so each runs in a
real process — its own pid, session, environment, exit code or killing signal — but starts at the command's
first line instead of paying Python's imports of torch, timm and Lightning again (seconds of CPU each). Where the
start-up itself is what a test checks (``--help`` importing nothing heavy, the time a command takes, Lightning's
DDP ranks, a process limit or ``strace`` set before ``exec``), the test runs ``python run.py`` as a user types it.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

from irpe_bench import preloaded

start = preloaded.start


def run(argv: Sequence[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` for a command of the CLI: waits for it and returns its streams (``PIPE`` by
    default) and exit code; kills it past ``timeout`` seconds."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    proc = start(argv, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def parents() -> Dict[int, int]:
    """Every process's parent, by pid, from ``/proc``."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # the process ended
            continue
    return out


def descendants(root: int) -> List[int]:
    """The process ids under ``root`` (children, grandchildren …), from ``/proc``."""
    of = parents()
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, ppid in of.items() if ppid == pid]
        out += kids
        frontier += kids
    return out


__all__: List[str] = ["start", "run", "parents", "descendants"]
