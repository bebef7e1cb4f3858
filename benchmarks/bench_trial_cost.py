"""What a whole trial costs beyond its computation: ``run.py train`` against a bare PyTorch loop doing the same work.

Both sides are fresh processes of one thread (``OMP_NUM_THREADS``), timed from start to exit, so imports, set-up
and teardown count. The harness side is ``python run.py train CONFIG`` as a user runs it (W&B offline by default,
checkpoints, CSV log, validation every epoch, one test pass at the epoch chosen on validation). The bare side
(``bare`` below, run in its own process) does the same computation with nothing around it: the model built by
``irpe_bench.train.run.build_model`` from the same config, the same DataModule splits and loaders, timm AdamW and
the cosine schedule with the config's warm-up stepped per update, label smoothing and gradient clipping as
configured, validation top-1 every epoch, one test pass. The rounds alternate bare / harness, so a load that
comes and goes hits both; the ratio is the median of the per-round ratios.

Then a sweep worker's per-trial overhead: one worker of one thread runs ``--sweep-trials`` seeds of the same
config (SQLite storage, W&B as the harness side). For the second and later trials the worker's cycle — from the
previous trial's end to this one's, claiming and recording included — is compared with the seconds the run spent
inside training, validation and test batches (``time/compute_s``, :class:`irpe_bench.train.throughput.ComputeTime`);
overhead = 1 − compute / cycle, the median over those trials.

    python benchmarks/bench_trial_cost.py [--config configs/mnist.yaml] [--epochs 10] [--rounds 3] [--sweep-trials 4]

It writes ``results/bench/trial_cost_<cpu>.json`` (``--out``), the environment and the command beside the numbers.
Goals (issue "Trials that cost what they compute"): whole trial, harness / bare ≤ 1.30; per-trial overhead in a
sweep worker ≤ 5 %; the harness's training images/s (``throughput/train_img_s``, the median over epochs from step
``trainer.throughput_skip_steps`` on) ≥ 0.85 × the bare loop's, timed the same way.
"""
from __future__ import annotations

import argparse
import json
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
OVERHEAD_GOAL = 0.05
SPEED_GOAL = 0.85  # the harness's training img/s (TrainThroughput) within 15 % of the bare loop's


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

    step, rates, skip = 0, [], config.trainer.throughput_skip_steps
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        images, t0 = 0, None
        for i, (x, y) in enumerate(loader):
            if i == skip:  # timed as TrainThroughput times the harness: from step ``skip`` to the epoch's last
                t0 = time.perf_counter()
            loss = criterion(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o.clip_grad:
                torch.nn.utils.clip_grad_norm_(net.parameters(), o.clip_grad)
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            images += len(y) if t0 is not None else 0
        if t0 is not None:
            rates.append(images / (time.perf_counter() - t0))
        val = accuracy(dm.val_dataloader())
    print(f"bare: val acc1 {val:.2f}, test acc1 {accuracy(dm.test_dataloader()):.2f}", flush=True)
    print(f"bare train img/s {statistics.median(rates):.1f}", flush=True)


def _timed(cmd, env) -> float:
    return _run(cmd, env)[0]


def _run(cmd, env) -> tuple:
    """(seconds from start to exit, stdout) of a fresh process."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def cpu_slug() -> str:
    """The CPU model as a file-name part (``amd_epyc``): results/bench files name the machine they come from."""
    from irpe_bench.train.throughput import cpu_model

    return re.sub(r"[^a-z0-9]+", "_", cpu_model().lower()).strip("_") or "cpu"


def seed_sweep(tmp: Path, name: str, config: str, trials: int, overrides: dict) -> Path:
    """A sweep file of one worker running ``trials`` seeds of ``config`` (its study and outputs under ``tmp``)."""
    import yaml

    sweep = {"study": {"name": name, "sampler": "grid", "pruner": "none"}, "workers": 1,
             "out_dir": str(tmp / "sweep"), "base": str((ROOT / config).resolve()), "overrides": overrides,
             "space": {"seed": {"choices": list(range(trials))}}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def sweep_overhead(config: str, epochs: int, trials: int, sets: list, env: dict, tmp: Path) -> dict:
    """One worker's per-trial overhead over ``trials`` seeds of ``config`` (module docstring)."""
    import optuna

    from irpe_bench.overrides import parse_overrides

    # the same key=value pairs the harness side trains with, as the sweep file's overrides
    path = seed_sweep(tmp, "trial_cost", config, trials, parse_overrides(sets))
    seconds = _timed([sys.executable, "run.py", "sweep", str(path)], env)
    study = optuna.load_study(study_name="trial_cost", storage=f"sqlite:///{tmp / 'sweep' / 'optuna.db'}")
    done = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: t.datetime_complete)
    if len(done) < 2 or any(t.user_attrs.get("time/compute_s") is None for t in done):
        raise RuntimeError(f"the sweep finished {len(done)} trial(s) with compute time; need at least 2")
    rows = []
    for prev, t in zip(done, done[1:]):
        cycle = (t.datetime_complete - prev.datetime_complete).total_seconds()
        compute = float(t.user_attrs["time/compute_s"])
        rows.append({"trial": t.number, "cycle_s": cycle, "trial_s": (t.datetime_complete - t.datetime_start)
                     .total_seconds(), "compute_s": compute, "overhead": 1.0 - compute / cycle})
    for r in rows:
        print(f"trial {r['trial']}: cycle {r['cycle_s']:.1f} s (trial {r['trial_s']:.1f} s), compute "
              f"{r['compute_s']:.1f} s, overhead {100 * r['overhead']:.1f} %", flush=True)
    overhead = statistics.median(r["overhead"] for r in rows)
    print(f"per-trial overhead in a sweep worker (median of trials 2..{len(done)}): {100 * overhead:.1f} % "
          f"(goal ≤ {100 * OVERHEAD_GOAL:.0f} %: {'met' if overhead <= OVERHEAD_GOAL else 'NOT MET'}); "
          f"the whole sweep {seconds:.1f} s", flush=True)
    return {"trials": rows, "overhead": overhead, "goal": OVERHEAD_GOAL, "goal_met": overhead <= OVERHEAD_GOAL,
            "sweep_s": seconds}


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
    p.add_argument("--sweep-trials", type=int, default=4, help="trials of one sweep worker (0: skip that part)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from irpe_bench.bench.harness import environment, write_json
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    sets = [f"trainer.max_epochs={args.epochs}", f"log.wandb={'true' if args.wandb == 'offline' else 'false'}",
            *args.set]
    bare_s, harness_s, bare_img_s, harness_img_s = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            seconds, out = _run([sys.executable, str(Path(__file__).resolve()), "bare", args.config, "--epochs",
                                 str(args.epochs), "--set", *args.set], env)
            bare_s.append(seconds)
            bare_img_s.append(float(re.search(r"bare train img/s ([0-9.]+)", out).group(1)))
            run_dir = Path(tmp) / f"run{r}"
            harness_s.append(_timed([sys.executable, "run.py", "train", args.config, "--run-dir", str(run_dir),
                                     "--set", *sets], env))
            harness_img_s.append(json.loads((run_dir / "summary.json").read_text())["throughput/train_img_s"])
            print(f"round {r}: bare {bare_s[-1]:.1f} s, run.py train {harness_s[-1]:.1f} s, ratio "
                  f"{harness_s[-1] / bare_s[-1]:.3f}; train img/s bare {bare_img_s[-1]:.0f}, harness "
                  f"{harness_img_s[-1]:.0f}", flush=True)
        worker = sweep_overhead(args.config, args.epochs, args.sweep_trials, sets, env, Path(tmp)) \
            if args.sweep_trials else None
    ratio = statistics.median(h / b for h, b in zip(harness_s, bare_s))
    speed = statistics.median(h / b for h, b in zip(harness_img_s, bare_img_s))
    print(f"training img/s, harness / bare: {speed:.3f} (median of rounds; goal ≥ {SPEED_GOAL}: "
          f"{'met' if speed >= SPEED_GOAL else 'NOT MET'})")
    print(f"\nwhole trial, {args.config}, {args.epochs} epochs, one thread: bare {statistics.median(bare_s):.1f} s, "
          f"run.py train {statistics.median(harness_s):.1f} s, ratio {ratio:.3f} (goal ≤ {GOAL}: "
          f"{'met' if ratio <= GOAL else 'NOT MET'})")
    import torch

    info = environment(1, torch.device("cpu"))
    out = args.out or ROOT / "results" / "bench" / f"trial_cost_{cpu_slug()}.json"
    write_json(out, dict(command="python benchmarks/bench_trial_cost.py " + " ".join(argv), environment=info,
                         config=args.config, epochs=args.epochs, wandb=args.wandb, bare_s=bare_s,
                         harness_s=harness_s, ratio=ratio, goal=GOAL, goal_met=ratio <= GOAL, sweep_worker=worker,
                         bare_train_img_s=bare_img_s, harness_train_img_s=harness_img_s, speed_ratio=speed,
                         speed_goal=SPEED_GOAL, speed_goal_met=speed >= SPEED_GOAL,
                         load_avg=os.getloadavg()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
