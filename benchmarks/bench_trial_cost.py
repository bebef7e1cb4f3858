"""What a whole trial costs beyond its computation: ``run.py train`` against a bare PyTorch loop doing the same work.

Both sides are fresh processes of one thread (``OMP_NUM_THREADS``), timed from start to exit, so imports, set-up
and teardown count. The harness side is ``python run.py train CONFIG`` as a user runs it (W&B offline by default,
checkpoints, CSV log, validation every epoch, one test pass at the epoch chosen on validation). The bare side
(``bare`` below, run in its own process) does the same computation with nothing around it: the model built by
``irpe_bench.train.run.build_model`` from the same config, the same DataModule splits and loaders, timm AdamW and
the cosine schedule with the config's warm-up stepped per update, label smoothing and gradient clipping as
configured, validation top-1 every epoch, one test pass. The rounds alternate bare / harness, so a load that
comes and goes hits both; the ratio is the median of the per-round ratios.

    python benchmarks/bench_trial_cost.py [--config configs/mnist.yaml] [--epochs 10] [--rounds 3]

It writes ``results/bench/trial_cost_<cpu>.json`` (``--out``), the environment and the command beside the numbers.
Goal (issue "Trials that cost what they compute"): harness / bare ≤ 1.30.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.30


def bare(config_path: str, epochs: int, sets: list) -> None:
    """The bare loop (this process): train ``epochs`` epochs, validate each, test once; prints the accuracies."""
    import torch

    from irpe_bench.overrides import parse_overrides
    from irpe_bench.train.config import load_config, merge
    from irpe_bench.train.data import build_datamodule
    from irpe_bench.train.module import ClassificationModule
    from irpe_bench.train.run import build_model, no_decay_names

    config = load_config(config_path, merge(parse_overrides(sets), {"trainer": {"max_epochs": epochs},
                                                                    "log": {"wandb": False}}))
    torch.manual_seed(config.seed)
    dm = build_datamodule(config.data, config.model.resolved_img_size, config.seed)
    dm.setup("fit")
    dm.setup("test")
    net = build_model(config, dm.num_classes)
    module = ClassificationModule(net, dm.num_classes, config.optim, config.data, no_decay_names(net, config))
    criterion, o = module.train_criterion, config.optim

    from timm.optim import create_optimizer_v2, param_groups_weight_decay
    from timm.scheduler import create_scheduler_v2

    skip = set(net.no_weight_decay()) | set(no_decay_names(net, config))
    optimizer = create_optimizer_v2(param_groups_weight_decay(net, o.weight_decay, no_weight_decay_list=list(skip)),
                                    opt=o.opt, lr=o.lr, weight_decay=o.weight_decay, eps=o.opt_eps)
    loader = dm.train_dataloader()
    scheduler, _ = create_scheduler_v2(optimizer, sched=o.sched, num_epochs=epochs, warmup_epochs=o.warmup_epochs,
                                       min_lr=o.min_lr, warmup_lr=o.warmup_lr, cooldown_epochs=0,
                                       step_on_epochs=False, updates_per_epoch=len(loader))

    def accuracy(batches) -> float:
        net.eval()
        right = total = 0
        with torch.no_grad():
            for x, y in batches:
                right += int((net(x).argmax(1) == y).sum())
                total += len(y)
        net.train()
        return 100.0 * right / total

    step = 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            loss = criterion(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip_grad:
                torch.nn.utils.clip_grad_norm_(net.parameters(), o.clip_grad)
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
        val = accuracy(dm.val_dataloader())
    print(f"bare: val acc1 {val:.2f}, test acc1 {accuracy(dm.test_dataloader()):.2f}", flush=True)


def _timed(cmd, env) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bare"]:
        p = argparse.ArgumentParser()
        p.add_argument("config")
        p.add_argument("--epochs", type=int, required=True)
        p.add_argument("--set", nargs="*", default=[])
        a = p.parse_args(argv[1:])
        bare(a.config, a.epochs, a.set)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/mnist.yaml")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wandb", choices=["offline", "off"], default="offline", help="the harness side's W&B")
    p.add_argument("--set", nargs="*", default=[], help="more --set pairs for both sides' config (key=value)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from irpe_bench.bench.harness import environment, write_json
    from irpe_bench.train.throughput import cpu_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    sets = [f"trainer.max_epochs={args.epochs}", f"log.wandb={'true' if args.wandb == 'offline' else 'false'}",
            *args.set]
    bare_s, harness_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare_s.append(_timed([sys.executable, str(Path(__file__).resolve()), "bare", args.config, "--epochs",
                                  str(args.epochs), "--set", *args.set], env))
            harness_s.append(_timed([sys.executable, "run.py", "train", args.config, "--run-dir",
                                     str(Path(tmp) / f"run{r}"), "--set", *sets], env))
            print(f"round {r}: bare {bare_s[-1]:.1f} s, run.py train {harness_s[-1]:.1f} s, ratio "
                  f"{harness_s[-1] / bare_s[-1]:.3f}", flush=True)
    ratio = statistics.median(h / b for h, b in zip(harness_s, bare_s))
    print(f"\nwhole trial, {args.config}, {args.epochs} epochs, one thread: bare {statistics.median(bare_s):.1f} s, "
          f"run.py train {statistics.median(harness_s):.1f} s, ratio {ratio:.3f} (goal ≤ {GOAL}: "
          f"{'met' if ratio <= GOAL else 'NOT MET'})")
    import torch

    info = environment(1, torch.device("cpu"))
    cpu = re.sub(r"[^a-z0-9]+", "_", cpu_model().lower()).strip("_") or "cpu"
    out = args.out or ROOT / "results" / "bench" / f"trial_cost_{cpu}.json"
    write_json(out, dict(command="python benchmarks/bench_trial_cost.py " + " ".join(argv), environment=info,
                         config=args.config, epochs=args.epochs, wandb=args.wandb, bare_s=bare_s,
                         harness_s=harness_s, ratio=ratio, goal=GOAL, goal_met=ratio <= GOAL,
                         load_avg=os.getloadavg()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
