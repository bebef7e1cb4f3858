"""``irpe-bench`` / ``python run.py``: a thin command line over the package.

Each subcommand is a module with ``add_arguments`` and ``run`` named in ``COMMANDS``; the modules that own the
work define them, so this file stays a dispatcher. Nothing imports this module: the ``--set`` option the
subcommands share lives in :mod:`irpe_bench.overrides`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Dict, List, Optional

from . import allocator

#: subcommand -> module (or ``module:attribute``) defining ``add_arguments(parser)`` and ``run(args) -> exit code``
#: (its docstring is the help)
COMMANDS: Dict[str, str] = {
    "describe": "irpe_bench.describe",
    "train": "irpe_bench.train.cli",
    "bench": "irpe_bench.bench",
    "sweep": "irpe_bench.sweep.cli",
    "leaderboard": "irpe_bench.sweep.cli:Leaderboard",
    "status": "irpe_bench.sweep.cli:Status",
    "studies": "irpe_bench.sweep.cli:Studies",
    "delete": "irpe_bench.sweep.cli:Delete",
    "dashboard": "irpe_bench.sweep.cli:Dashboard",
    "plan": "irpe_bench.sweep.cli:Plan",
}


#: subcommand -> its help (the first paragraph of its ``run`` docstring; ``tests/test_cli_fast.py`` keeps them
#: equal), so that ``--help`` lists every command without importing any of them
HELP: Dict[str, str] = {
    "describe": "Build a model and print its variant name, buckets, parameters and MACs (no training).",
    "train": "Train one variant (config in, summary.json out); --resume RUN_DIR continues a killed run.",
    "bench": "Benchmark iRPE against the no-RPE baseline and the reference implementation; print ratios.",
    "sweep": "Run (or resume, or join) an Optuna sweep over iRPE variants, then write its leaderboard.",
    "leaderboard": "Write a sweep's leaderboard (markdown, CSV, HTML, plots, W&B table) from its Optuna storage.",
    "status": (
        "How far a study has got: trials done of the budget, what runs where, an ETA, the best so far; the "
        "study's disk use and the free space where its runs are written."),
    "studies": "List the studies of a storage: name, trials, when it started, its best value.",
    "delete": "Delete a study from its storage after confirmation (its run directories and reports stay).",
    "dashboard": "A live view of a running study: optuna-dashboard on the study's storage (Ctrl-C stops it).",
    "plan": "Seeds (and compute) each row needs to detect a given difference, from a pilot study.",
}


def load(command: str) -> Any:
    """The object (module or class) with ``add_arguments`` and ``run`` for ``command``."""
    path, _, attr = COMMANDS[command].partition(":")
    mod = importlib.import_module(path)
    return getattr(mod, attr) if attr else mod


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="irpe-bench", description="Benchmark harness for image relative "
                                     "position encoding (iRPE) in timm DeiT.")
    sub = parser.add_subparsers(dest="command", required=True)
    # NOTE: only the command being run is imported (its module reads torch, Lightning, Optuna …): --help and a
    # mistyped command answer at once
    chosen = next((a for a in argv if not a.startswith("-")), None)
    runners = {}
    for name in COMMANDS:
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        if name == chosen:
            mod = load(name)
            mod.add_arguments(p)
            runners[name] = mod.run
    args = parser.parse_args(argv)
    try:
        allocator.configure()  # NOTE: before any work; IRPE_BENCH_MALLOC=system opts out (irpe_bench/allocator.py)
        return runners[args.command](args)
    except ValueError as e:  # configuration errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
