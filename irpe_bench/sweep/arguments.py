"""``--storage``: the option the ``sweep`` and ``leaderboard`` commands share, and how its URL is kept secret."""
from __future__ import annotations

import argparse
import os
import sys

from .config import STORAGE_ENV, redact


def add_storage_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help=f"storage URL (overrides study.storage; or set {STORAGE_ENV})")


def take_storage(args: argparse.Namespace) -> None:
    """Move ``--storage`` into the environment and out of ``sys.argv``.

    NOTE: W&B records the command line of every run (and Lightning's DDP launcher re-runs it), so a password in
    ``--storage`` would end up in each trial's W&B files. The URL goes to ``IRPE_BENCH_STORAGE``, which workers
    and DDP ranks inherit, and ``sys.argv`` keeps only the redacted form (which is then never used)."""
    if args.storage and "***" not in args.storage:  # a relaunched DDP rank sees the redacted form: keep the env's
        os.environ[STORAGE_ENV] = args.storage
    sys.argv[:] = [redact(a) for a in sys.argv]
