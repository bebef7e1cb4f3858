"""The options the ``sweep`` and ``leaderboard`` commands share: ``--storage`` (and how its URL is kept secret)
and ``--markdown``."""
from __future__ import annotations

import argparse
import os
import sys

from ..keys import STORAGE_ENV
from ..redact import redact

STORAGE_SET = "study.storage="  # the --set route to the storage URL


def add_storage_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help=f"storage URL (overrides study.storage; or set {STORAGE_ENV})")


def add_markdown_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--markdown", action="store_true",
                   help="print the whole Markdown report (default: a short verdict and the report's path)")


def take_storage(args: argparse.Namespace) -> None:
    """Move the storage URL into the environment and out of ``sys.argv`` and ``--set``, whichever route it came by.

    NOTE: W&B records the command line of every run, Lightning's DDP launcher re-runs it, workers are started
    with the sweep's ``--set`` pairs and the study stores its command, so a password in ``--storage`` or in
    ``--set study.storage=URL`` would reach all of them. The URL goes to ``IRPE_BENCH_STORAGE``, which workers and
    DDP ranks inherit; ``--set study.storage=`` leaves the overrides; ``sys.argv`` keeps only the redacted form
    (which is then never used). ``--storage`` wins over ``--set study.storage=``, as over the sweep file."""
    if getattr(args, "overrides", None) is not None:
        kept = []
        for group in args.overrides:
            pairs = [group] if isinstance(group, str) else list(group)
            for pair in pairs:
                if pair.startswith(STORAGE_SET) and "***" not in pair:
                    os.environ[STORAGE_ENV] = pair[len(STORAGE_SET):]
            rest = [pair for pair in pairs if not pair.startswith(STORAGE_SET)]
            if rest:
                kept.append(rest)
        args.overrides = kept
    if args.storage and "***" not in args.storage:  # a relaunched DDP rank sees the redacted form: keep the env's
        os.environ[STORAGE_ENV] = args.storage
    sys.argv[:] = [redact(a) for a in sys.argv]
