"""``irpe-bench`` / ``python run.py``: a thin command line over the package.

Each subcommand is one ``(add_arguments, run)`` pair in ``COMMANDS``; the modules that own the work define
them, so this file stays a dispatcher.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional, Tuple

Command = Tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def parse_overrides(items: List[str]) -> Dict[str, object]:
    """``["rpe.mode=bias", "rpe.layers=[0,1]"]`` → nested dict; values are parsed as YAML scalars/lists."""
    import yaml

    out: Dict[str, object] = {}
    for item in items:
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


def _describe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="deit_tiny_patch16_224_ctx_product_50_shared_k",
                   help="timm DeiT/ViT name or official iRPE name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="rpe.* fields, abs_pos, or timm kwargs (img_size, patch_size, num_classes, ...)")


def _describe(args: argparse.Namespace) -> int:
    """Build a model and print its variant name, buckets, parameters and MACs (no training)."""
    from .models import count_params_and_macs, create_model, parse_official_name, rpe_layers
    from .rpe import RPEConfig

    kwargs = parse_overrides(args.overrides)
    rpe = kwargs.pop("rpe", None)
    abs_pos = bool(kwargs.pop("abs_pos", True))
    name = args.model
    official = parse_official_name(name)
    if official is not None:  # --set rpe.* refines the official model's config
        name, base = official
        rpe = base.with_updates(**(rpe or {}))
    elif rpe is not None:
        rpe = RPEConfig(**rpe)
    model = create_model(name, rpe=rpe, abs_pos=abs_pos, **kwargs)
    cfg = model.rpe_config
    cost = count_params_and_macs(model)
    info = {
        "variant": model.variant,
        "rpe": cfg.model_dump() if cfg is not None else None,
        "rpe_layers": rpe_layers(model),
        "grid": list(model.patch_embed.grid_size),
        "num_prefix_tokens": model.num_prefix_tokens,
        "num_buckets": list(cfg.num_buckets(model.num_prefix_tokens)) if cfg is not None else [],
        "params": cost["params"],
        "macs": cost["macs"],
    }
    print(json.dumps(info, indent=2))
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    from .train.cli import add_arguments

    add_arguments(p)


def _train(args: argparse.Namespace) -> int:
    """Train one variant (config in, summary.json out); --resume RUN_DIR continues a killed run."""
    from .train.cli import run

    return run(args)


def _bench_args(p: argparse.ArgumentParser) -> None:
    from .bench import add_arguments

    add_arguments(p)


def _bench(args: argparse.Namespace) -> int:
    """Measure iRPE's cost against the no-RPE baseline and the reference implementation (ratios, memory)."""
    from .bench import run

    return run(args)


COMMANDS: List[Command] = [
    ("describe", _describe_args, _describe),
    ("bench", _bench_args, _bench),
    ("train", _train_args, _train),
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="irpe-bench", description="Benchmark harness for image relative "
                                     "position encoding (iRPE) in timm DeiT.")
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {}
    for name, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=(run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None)
        add_args(p)
        runners[name] = run
    args = parser.parse_args(argv)
    try:
        return runners[args.command](args)
    except ValueError as e:  # configuration errors: one clear line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
