"""Commands of the CLI as processes of their own, forked from the preloaded server (:mod:`irpe_bench.preloaded`).

What these tests check is what a sweep or a training run does under signals, kills and faults, so each runs in a
real process — its own pid, session, environment, exit code or killing signal — but starts at the command's
first line instead of paying Python's imports of torch, timm and Lightning again (seconds of CPU each). Where the
start-up itself is what a test checks (``--help`` importing nothing heavy, the time a command takes, Lightning's
DDP ranks, a process limit or ``strace`` set before ``exec``), the test runs ``python run.py`` as a user types it.
"""
from __future__ import annotations

import subprocess
from typing import List, Sequence

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


__all__: List[str] = ["start", "run"]
