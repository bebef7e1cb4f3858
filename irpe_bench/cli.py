"""``irpe-bench`` / ``python run.py``: a thin command line over the package.

Each subcommand is a module with ``add_arguments`` and ``run`` named in ``COMMANDS``; the modules that own the
work define them, so this file stays a dispatcher.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional

from . import allocator


def parse_overrides(items: List[str]) -> Dict[str, object]:
    """``["rpe.mode=bias", "rpe.layers=[0,1]"]`` (or the ``--set`` option's list of lists) → nested dict; values
    are parsed as YAML scalars/lists."""
    import yaml

    out: Dict[str, object] = {}
    for item in (i for group in items for i in ([group] if isinstance(group, str) else group)):
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. rpe.mode=bias")
        key, raw = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
            if not isinstance(node, dict):
                raise SystemExit(f"--set {item!r}: {p!r} is both a value and a section")
        node[leaf] = yaml.safe_load(raw)
    return out


def add_set_argument(p: argparse.ArgumentParser, help_text: str) -> None:
    """The ``--set KEY=VALUE ...`` option every command shares (repeatable, several pairs each)."""
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help=help_text)


#: subcommand -> module (or ``module:attribute``) defining ``add_arguments(parser)`` and ``run(args) -> exit code``
#: (its docstring is the help)
COMMANDS: Dict[str, str] = {
    "describe": "irpe_bench.describe",
    "train": "irpe_bench.train.cli",
    "bench": "irpe_bench.bench",
    "sweep": "irpe_bench.sweep.cli",
    "leaderboard": "irpe_bench.sweep.cli:Leaderboard",
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
