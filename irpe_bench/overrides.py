"""``--set KEY=VALUE ...``: the dotted overrides every subcommand takes (``rpe.mode=bias``, ``rpe.layers=[0,1]``).

A neutral module (it imports nothing of the package) so that each subcommand module reads it without importing
the top-level dispatcher (``irpe_bench/cli.py``), which imports the subcommands.
"""
from __future__ import annotations

import argparse
from typing import Dict, List


def parse_overrides(items: List[str]) -> Dict[str, object]:
    """``["rpe.mode=bias", "rpe.layers=[0,1]"]`` (or the ``--set`` option's list of lists) → nested dict; values
    are parsed as YAML scalars/lists. A malformed pair is a ``ValueError`` naming it (one line from the CLI)."""
    import yaml

    out: Dict[str, object] = {}
    for item in (i for group in items for i in ([group] if isinstance(group, str) else group)):
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. rpe.mode=bias")
        key, raw = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is both a value and a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            where = getattr(e, "problem", None) or type(e).__name__
            raise ValueError(f"--set {item!r}: the value {raw!r} of {key.strip()!r} is not valid YAML ({where}); "
                             "allowed: a YAML scalar or list, e.g. 3, bias, [0, 1], '{a: 1}'") from None
    return out


def add_set_argument(p: argparse.ArgumentParser, help_text: str) -> None:
    """The ``--set KEY=VALUE ...`` option every command shares (repeatable, several pairs each)."""
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help=help_text)
