"""Does the Lightning harness cost anything? Training images/s of ``irpe_bench.train`` against a bare loop.

Both sides train the same model (built from the config, same initial weights), on the same DataModule's train
loader, with the same batch size, loss (label smoothing as configured), timm AdamW + cosine schedule stepped
per update. Each round runs one epoch of the bare loop, then one epoch of ``Trainer.fit`` (a fresh Trainer,
no loggers, checkpoints or validation: the harness's per-step work only). Images/s are counted from step
``--skip`` to the end of the epoch on both sides; the ratio is the median of per-round ratios.

    python benchmarks/bench_harness.py [--config configs/digits.yaml] [--rounds 3] [--threads 1 --clock cpu]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from irpe_bench import allocator
from irpe_bench.bench.harness import CLOCKS, environment, write_json

ROOT = Path(__file__).resolve().parents[1]


class _EpochTimer(pl.Callback):
    def __init__(self, skip: int, clock):
        self.skip, self.clock, self.images, self.t0, self.seconds = skip, clock, 0, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            self.t0 = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.skip:
            self.images += batch[0].shape[0]

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = self.clock() - self.t0


def bare_epoch(net, loader, criterion, optimizer, scheduler, skip, clock, step0):
    """One epoch of the plainest correct loop; returns (images/s after ``skip`` steps, steps)."""
    net.train()
    images, t0, step = 0, None, step0
    for i, (x, y) in enumerate(loader):
        if i == skip:
            t0 = clock()
        loss = criterion(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        scheduler.step_update(num_updates=step)
        if i >= skip:
            images += x.shape[0]
    return images / (clock() - t0), step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip", type=int, default=3, help="steps left out at the start of every epoch")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "harness_cpu.json")
    args = p.parse_args(argv)
    allocator.configure()  # as the command line does (irpe_bench/allocator.py)

    from timm.optim import create_optimizer_v2, param_groups_weight_decay
    from timm.scheduler import create_scheduler_v2

    from irpe_bench.train.config import load_config
    from irpe_bench.train.data import build_datamodule
    from irpe_bench.train.module import ClassificationModule
    from irpe_bench.train.run import build_model, no_decay_names

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    clock = CLOCKS[args.clock]
    config = load_config(args.config, {"log": {"wandb": False}})
    if config.data.mixing:
        raise ValueError("mixup/cutmix configs: the bare loop here does not mix; use a config without them")
    dm = build_datamodule(config.data, config.model.resolved_img_size, config.seed)
    dm.setup("fit")
    pl.seed_everything(config.seed, verbose=False)
    net = build_model(config, dm.num_classes)
    net_bare, net_light = copy.deepcopy(net), copy.deepcopy(net)
    module = ClassificationModule(net_light, dm.num_classes, config.optim, config.data, no_decay_names(net, config))

    o = config.optim
    groups = param_groups_weight_decay(net_bare, o.weight_decay,
                                       no_weight_decay_list=list(net_bare.no_weight_decay()) +
                                       no_decay_names(net_bare, config))
    optimizer = create_optimizer_v2(groups, opt=o.opt, lr=o.lr, weight_decay=o.weight_decay, eps=o.opt_eps)
    loader = dm.train_dataloader()
    scheduler, _ = create_scheduler_v2(optimizer, sched=o.sched, num_epochs=args.rounds, warmup_epochs=0,
                                       min_lr=o.min_lr, cooldown_epochs=0, step_on_epochs=False,
                                       updates_per_epoch=len(loader))
    criterion = module.train_criterion

    bare, light, step = [], [], 0
    for r in range(args.rounds):
        ips, step = bare_epoch(net_bare, loader, criterion, optimizer, scheduler, args.skip, clock, step)
        bare.append(ips)
        timer = _EpochTimer(args.skip, clock)
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[timer])
        trainer.fit(module, datamodule=dm)
        light.append(timer.images / timer.seconds)
        print(f"round {r}: bare {bare[-1]:.1f} img/s, lightning {light[-1]:.1f} img/s", flush=True)
    ratio = statistics.median(a / b for a, b in zip(light, bare))
    print(f"\nharness: {config.model.name} ({net.variant}), batch {config.data.batch_size}, {threads} thread(s), "
          f"{args.clock} clock\n  bare loop  {statistics.median(bare):8.1f} img/s\n"
          f"  lightning  {statistics.median(light):8.1f} img/s\n  ratio      {ratio:8.3f}  (goal ≥ 0.95: "
          f"{'met' if ratio >= 0.95 else 'NOT MET'})")
    env = environment(threads, torch.device("cpu"))
    env["clock"] = args.clock
    write_json(args.out, dict(command="python benchmarks/bench_harness.py " + " ".join(argv or sys.argv[1:]),
                              environment=env, config=args.config, batch_size=config.data.batch_size,
                              variant=net.variant, bare_img_s=bare, lightning_img_s=light, ratio=ratio,
                              goal_met=ratio >= 0.95))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
