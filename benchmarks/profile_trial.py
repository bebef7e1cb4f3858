"""Where a sweep worker's trial spends its time: one worker of one thread, ``--trials`` seeds, under cProfile.

The worker runs in this process (``run.py sweep`` with ``workers: 1``: the loop runs inline), so the profile
holds all of it: the loop between trials, the objective, the storage's commits, setting up the data and the
model, the Lightning loops, checkpoints, the inference benchmark, W&B. Each phase is the cumulative time of the
functions that do it (``PHASES``), divided by the number of trials; what no phase claims is "other". A phase
of the first trial alone (an import, a file parsed once per process) is spread over all trials: run enough
trials for the steady state to dominate.

    python benchmarks/profile_trial.py [--config configs/mnist.yaml] [--epochs 10] [--trials 4] [--wandb]

It prints the table and writes ``results/bench/trial_profile_<cpu>.json`` (``--out``) with the git revision.
To profile another revision, run this file with that revision's checkout first on ``PYTHONPATH`` (the phases
name functions that exist in both).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: phase → patterns over pstats' ``file:line(function)`` keys (chosen not to nest in one another); a phase's time is
#: the cumulative time of its matches, summed
PHASES = {
    "training steps (forward, backward, optimizer)": [r"optimization/automatic\.py:\d+\(run\)"],
    "evaluation steps (validation, test)": [r"evaluation_loop\.py:\d+\(_evaluation_step\)"],
    "batch fetch (transforms, collation)": [r"torch/utils/data/dataloader\.py:\d+\(__next__\)"],
    "storage commits (Optuna, SQL)": [r"sqlalchemy/engine/default\.py:\d+\(do_commit\)"],
    "data set-up (read, split)": [r"datamodule\.py:\d+\(setup\)"],
    "model build (and the meta-device slug)": [r"irpe_bench/train/run\.py:\d+\(build_model\)"],
    "checkpoint writes": [r"checkpoint_io\.py:\d+\(save_checkpoint\)"],
    "checkpoint restore (the chosen epoch)": [r"checkpoint_connector\.py:\d+\(_restore_modules_and_callbacks\)"],
    "inference benchmark": [r"\(benchmark_inference\)"],
    "W&B init and finish": [r"wandb_init\.py:\d+\(init\)", r"\(finish_wandb\)"],
    "trainer build": [r"\(build_trainer\)"],
}
TRIAL = r"irpe_bench/sweep/objective\.py:\d+\(__call__\)"
LOOP = r"irpe_bench/sweep/runner\.py:\d+\(_loop\)"


def _cum(stats: pstats.Stats, pattern: str) -> float:
    """Cumulative seconds of the functions matching ``pattern`` (recursion counted once by pstats)."""
    rx = re.compile(pattern)
    total = 0.0
    for (file, line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if rx.search(f"{file}:{line}({name})"):
            total += ct
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mnist.yaml")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--wandb", action="store_true", help="W&B offline on (the paper studies run without it)")
    p.add_argument("--label", default="", help="a word saved beside the numbers (before / after …)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    import torch

    torch.set_num_threads(1)
    from bench_trial_cost import cpu_slug, seed_sweep  # its neighbour (this file runs as a script)

    import irpe_bench
    from irpe_bench.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        path = seed_sweep(Path(tmp), "profile", args.config, args.trials,
                          {"trainer": {"max_epochs": args.epochs}, "log": {"wandb": args.wandb}})
        prof = cProfile.Profile()
        prof.enable()
        rc = cli(["sweep", str(path)])
        prof.disable()
        if rc != 0:
            raise SystemExit(f"the sweep exited {rc}")
    stats = pstats.Stats(prof)
    n = args.trials
    trial = _cum(stats, TRIAL) / n
    loop = _cum(stats, LOOP) / n
    rows = {name: sum(_cum(stats, pat) for pat in pats) / n for name, pats in PHASES.items()}
    rows["other, inside the trial"] = trial - sum(rows.values())
    rows["the worker between trials"] = loop - trial
    from irpe_bench.train.throughput import cpu_model

    cpu = cpu_model()
    rev = subprocess.run(["git", "-C", str(Path(irpe_bench.__file__).parents[1]), "describe", "--always",
                          "--dirty"], capture_output=True, text=True).stdout.strip()
    print(f"\nper trial, mean of {n} trials ({args.config}, {args.epochs} epochs, W&B {'on' if args.wandb else 'off'}"
          f", one thread, {cpu}, code {rev}): a worker cycle of {loop:.2f} s")
    print(f"{'phase':<48} {'s/trial':>8} {'% cycle':>8}")
    for name, seconds in rows.items():
        print(f"{name:<48} {seconds:8.2f} {100 * seconds / loop:7.1f} %")
    from irpe_bench.bench.harness import write_json

    label = f"_{args.label}" if args.label else ""
    out = args.out or ROOT / "results" / "bench" / f"trial_profile_{cpu_slug()}{label}.json"
    write_json(out, dict(command="python benchmarks/profile_trial.py " + " ".join(argv or sys.argv[1:]), cpu=cpu,
                         code=rev, label=args.label, config=args.config, epochs=args.epochs, trials=n,
                         wandb=args.wandb, cycle_s=loop, trial_s=trial, phases_s=rows,
                         load_avg=os.getloadavg()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
