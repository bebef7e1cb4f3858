"""``irpe-bench`` / ``python run.py``: a thin command line over the package.

Each subcommand is a module with ``add_arguments`` and ``run`` named in ``COMMANDS``; the modules that own the
work define them, so this file stays a dispatcher. Nothing imports this module: the ``--set`` option the
subcommands share lives in :mod:`irpe_bench.overrides`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional

from . import allocator

#: subcommand -> module (or ``module:attribute``) defining ``add_arguments(parser)`` and ``run(args) -> exit code``
#: (its docstring is the help)
COMMANDS: Dict[str, str] = {
    "describe": "irpe_bench.describe",
    "train": "irpe_bench.train.cli",
    "bench": "irpe_bench.bench",
    "sweep": "irpe_bench.sweep.cli",
    "leaderboard": "irpe_bench.report.cli",
    "status": "irpe_bench.sweep.cli:Status",
    "studies": "irpe_bench.sweep.cli:Studies",
    "delete": "irpe_bench.sweep.cli:Delete",
    "dashboard": "irpe_bench.sweep.cli:Dashboard",
    "plan": "irpe_bench.sweep.cli:Plan",
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="irpe-bench", description="Benchmark harness for image relative "
                                     "position encoding (iRPE) in timm DeiT.")
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {}
    for name, module in COMMANDS.items():
        path, _, attr = module.partition(":")
        mod = importlib.import_module(path)
        mod = getattr(mod, attr) if attr else mod
        p = sub.add_parser(name, help=(mod.run.__doc__ or "").strip().split("\n")[0] or None)
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
