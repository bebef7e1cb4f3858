"""``irpe-bench train CONFIG.yaml [--set key=value ...]`` and ``irpe-bench train --resume RUN_DIR``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML file (see configs/); omit with --resume")
    from ..overrides import add_set_argument

    add_set_argument(p, "dotted overrides, e.g. --set model.abs_pos=false optim.lr=1e-3")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from RUN_DIR/checkpoints/last.ckpt")
    p.add_argument("--run-dir", help="run directory (default: results/runs/<variant>-<time>-<id>)")
    p.add_argument("--wandb-id", help="W&B run id (default: new, or the one stored in the run directory)")


def run(args: argparse.Namespace) -> int:
    """Train one variant (config in, summary.json out); --resume RUN_DIR continues a killed run."""
    from ..overrides import parse_overrides
    from .config import load_config
    from .run import TrainingDiverged, find_checkpoint, train

    overrides = parse_overrides(args.overrides)
    resume_from = None
    run_dir = args.run_dir
    if args.resume:
        resume_from = find_checkpoint(args.resume)
        if args.config:
            raise ValueError("give either CONFIG or --resume RUN_DIR (the run directory holds its config)")
        run_dir = args.resume
        config = load_config(Path(args.resume) / "config.yaml", overrides)
    elif args.config:
        config = load_config(args.config, overrides)
    else:
        raise ValueError("train: give a CONFIG.yaml (e.g. configs/digits.yaml) or --resume RUN_DIR")
    try:
        summary = train(config, run_dir=run_dir, wandb_id=args.wandb_id, resume_from=resume_from)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 3
    print(json.dumps(summary, indent=2, default=str))
    return 0
