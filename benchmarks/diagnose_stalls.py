"""Why digits seeds stall: per-epoch curves of the committed studies and per-step curves of fresh runs.

Some seeds of the digits recipe (``configs/digits_study.yaml`` with the paper studies' 5 warm-up epochs and the
gradient norm clipped at 1.0, no absolute positions) sit at 10-25 % validation top-1 for 12-14 epochs before they
learn. The committed storages only hold one validation value per epoch, which says *that* a seed stalls, not
*why*; this script records what the per-epoch value cannot: per optimiser step the training loss, the total
gradient norm before clipping, per-block gradient norms, the entropy of the class token's attention over the
tokens in every layer (divided by log L: 1 = uniform), the norm of the class token at the last block, how much
the logits depend on the image, and how alike the tokens of the last block are.

The runs go through the harness's own :func:`irpe_bench.train.run.train` with two extra Lightning callbacks, so
that data (``build_datamodule``), model (``create_model``), seeding, optimiser, scheduler (the
``ClassificationModule``'s ``configure_optimizers``) and clipping (the ``Trainer``'s ``gradient_clip_val``) are
the recipe's by construction, not a re-implementation. ``on_before_optimizer_step`` runs before Lightning
clips, so the gradient norms are the raw ones. Training stops after ``--epochs`` epochs of the configured
``trainer.max_epochs`` schedule (the warm-up and cosine are those of the full 30-epoch run): the stall shows in
the first 10 epochs.

Usage (CPU, one thread, low priority; each seed ~9 CPU-s per epoch on a 2-core AMD EPYC)::

    # 1. the committed studies' epoch curves: stalled runs against healthy ones of the same row (no training)
    python benchmarks/diagnose_stalls.py epochs --out docs/img/stall_curves_epochs.png
    # 2. per-step records of fresh runs (one JSON per seed under --dir, outside the repository)
    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/diagnose_stalls.py steps --dir /tmp/stalls \
        --seeds 0 1 2 3 4 5 6 7 8 9 --epochs 10
    # 3. their plot
    python benchmarks/diagnose_stalls.py plot --dir /tmp/stalls --out docs/img/stall_curves_steps.png

The stall rule of the committed studies is the leaderboard's: best validation top-1 more than 10 points below
the median of its row (same study, same ``config_key``). Fresh runs stop early, so they use a rule fixed before
they ran: stalled when the best validation top-1 over the first 10 epochs is below 30 % (committed no-RPE runs
without absolute positions: 13-28 % when they stalled, 38-49 % when they did not).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from irpe_bench.report.stalls import STALL_MARGIN, STALL_MIN_RUNS
from irpe_bench.report.stalls import stalled as stalled_seeds

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["paper_table1", "paper_table2", "paper_table3", "paper_fig3", "paper_layers", "paper_shapes"]
EARLY_STALL = 30.0  # fresh runs: best validation top-1 over the first 10 epochs below this (%)


# ---- 1. committed epoch curves
def committed_curves(studies: List[str]) -> List[Dict]:
    """Every complete trial of ``studies`` with its per-epoch validation top-1 (%) and whether it stalled."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs: List[Dict] = []
    for name in studies:
        db = ROOT / "results" / "studies" / name / "optuna.db"
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        done = [t for t in study.trials if t.state.name == "COMPLETE" and t.intermediate_values]
        rows: Dict[str, List] = {}
        for t in done:
            rows.setdefault(t.user_attrs["config_key"], []).append(t)
        for key, trials in rows.items():
            best = [100 * max(t.intermediate_values.values()) for t in trials]
            median = float(np.median(best)) if len(trials) >= STALL_MIN_RUNS else math.nan
            flagged = set(stalled_seeds(list(enumerate(best))) or ())  # the leaderboard's own rule, by run index
            for i, (t, b) in enumerate(zip(trials, best)):
                iv = t.intermediate_values
                runs.append({"study": name, "row": key, "variant": t.user_attrs["variant"],
                             "seed": t.user_attrs["seed"], "best": b, "median": median, "stalled": i in flagged,
                             "curve": [100 * iv[e] for e in sorted(iv)]})
    unique: Dict = {}  # a run that several studies share (the same cached trial) is shown once
    for r in runs:
        key = (r["row"], r["seed"], tuple(r["curve"]))
        if key in unique:
            unique[key]["study"] += f", {r['study']}"
        else:
            unique[key] = r
    return list(unique.values())


def plot_epochs(out: Path, studies: List[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = committed_curves(studies)
    stalled = [r for r in runs if r["stalled"]]
    panels = sorted({(r["study"].split(",")[0], r["row"]) for r in stalled})  # one per row with a stalled run
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(panels) / cols)),
                             sharex=True, sharey=True, squeeze=False)
    for ax, (study, row) in zip(axes.flat, panels):
        for r in (r for r in runs if r["row"] == row and study in r["study"]):
            ax.plot(range(1, len(r["curve"]) + 1), r["curve"], color="C3" if r["stalled"] else "0.6",
                    lw=2 if r["stalled"] else 1, label=f"seed {r['seed']}" if r["stalled"] else None)
        v = next(r["variant"] for r in runs if r["row"] == row)
        ax.set_title(f"{study}\n{v.replace('deit_tiny_', '')}", fontsize=7)
        ax.axhline(10, color="k", ls=":", lw=0.8)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("val top-1 (%)")
    fig.suptitle(f"Committed digits studies (5 warm-up epochs, clip 1.0, no absolute positions): {len(stalled)} "
                 f"stalled runs (red; > {STALL_MARGIN:g} points below the row median) against the row's other seeds "
                 "(grey); dotted: chance", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    for r in stalled:
        print(f"{r['study']:13s} {r['variant']:48s} seed {r['seed']}: best {r['best']:.1f} (row median "
              f"{r['median']:.1f}); epochs 1-15: {[round(c) for c in r['curve'][:15]]}")
    for what, group in (("stalled", stalled), ("healthy", [r for r in runs if not r["stalled"] and r["row"] in
                                                        {s["row"] for s in stalled}])):
        at = {e: round(float(np.median([r["curve"][e - 1] for r in group])), 1) for e in (5, 10, 15, 20, 30)}
        rise = np.median([r["curve"][-1] - r["curve"][-6] for r in group])
        print(f"{what} (n={len(group)}): median val top-1 at epochs {at}; last 5 epochs: {rise:+.1f} points")
    print(f"{len(stalled)} stalled of {len(runs)} distinct runs; wrote {out}")


# ---- 2. per-step probes
def make_probe(net, records: List[Dict]):
    """A Lightning callback that appends one dict per optimiser step to ``records``."""
    import lightning.pytorch as pl
    import torch

    blocks = list(net.blocks)
    for b in blocks:
        if not hasattr(b.attn, "qkv") or type(b.attn).__name__ != "Attention":
            raise ValueError("diagnose_stalls probes timm's plain Attention only: use model.rpe=null "
                             f"(got {type(b.attn).__name__})")

    class StepProbe(pl.Callback):
        def __init__(self) -> None:
            self.step: Dict = {}
            self.handles = []
            for i, b in enumerate(blocks):
                self.handles.append(b.attn.register_forward_pre_hook(self._attn_hook(i)))
            self.handles.append(blocks[-1].register_forward_hook(self._last_block))
            self.handles.append(net.register_forward_hook(self._logits))

        def _attn_hook(self, i: int):
            def hook(attn, args):
                if not attn.training:
                    return
                with torch.no_grad():
                    x = args[0]
                    B, L, _ = x.shape
                    qkv = attn.qkv(x).reshape(B, L, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
                    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
                    p = (q[:, :, :1] * attn.scale @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]  # (B, H, L)
                    ent = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(L)
                    self.step[f"entropy/{i}"] = float(ent.mean())
                    self.step[f"attn_max/{i}"] = float(p.max(-1).values.mean())
                    self.step[f"attn_self/{i}"] = float(p[..., 0].mean())  # the class token on itself
            return hook

        def _last_block(self, block, args, out):
            if block.training:
                with torch.no_grad():
                    c = out[:, 0]
                    self.step["cls_norm"] = float(c.norm(dim=-1).mean())
                    # share of the class token that all images of the batch have in common (1: input-independent)
                    self.step["cls_common"] = float(c.mean(0).pow(2).sum() / c.pow(2).sum(-1).mean())
                    t = torch.nn.functional.normalize(out[:, 1:], dim=-1)  # patch tokens
                    self.step["token_cos"] = float((t @ t.transpose(1, 2)).mean())

        def _logits(self, module, args, out):
            if module.training:
                with torch.no_grad():
                    self.step["logit_std_images"] = float(out.std(0).mean())  # does the output depend on x?
                    self.step["logit_std_classes"] = float(out.std(1).mean())

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            groups: Dict[str, float] = {}
            for n, prm in pl_module.net.named_parameters():
                if prm.grad is not None:
                    parts = n.split(".")
                    g = ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]
                    groups[g] = groups.get(g, 0.0) + float(prm.grad.detach().pow(2).sum())
            self.step["grad_norm"] = math.sqrt(sum(groups.values()))
            self.step.update({f"grad/{g}": math.sqrt(v) for g, v in groups.items()})
            self.step["lr"] = optimizer.param_groups[0]["lr"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.step.update(loss=float(outputs["loss"]), epoch=trainer.current_epoch, step=trainer.global_step)
            records.append(self.step)
            self.step = {}

    return StepProbe()


def run_seed(base: Path, seed: int, epochs: int, overrides: Dict, out_dir: Path) -> Dict:
    import lightning.pytorch as pl

    from irpe_bench.train import run as harness
    from irpe_bench.train.config import load_config

    config = load_config(base, {"seed": seed, **overrides})
    records: List[Dict] = []
    val: List[float] = []

    class Stop(pl.Callback):  # the schedule stays max_epochs long; training stops after ``epochs``
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                val.append(100 * float(pl_module.val_acc1.compute()))  # (callback_metrics: not yet)
                if trainer.current_epoch + 1 >= epochs:
                    trainer.should_stop = True

    callbacks: List = [Stop()]
    started = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        run = harness.build(config, Path(tmp) / "run", None, None)  # the harness's data, seeding and model
        fitted = harness.fit(config, run, None, [make_probe(run.net, records), *callbacks])
        if fitted.status != "finished":
            raise RuntimeError(f"seed {seed}: {fitted.status}: {fitted.error}")
    result = {"seed": seed, "overrides": overrides, "epochs": epochs, "val_acc1": val,
              "best_val": max(val), "stalled": max(val[:10]) < EARLY_STALL, "cpu_s": time.process_time() - started,
              "steps": records}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"seed{seed}.json").write_text(json.dumps(result))
    print(f"seed {seed}: val {[round(v) for v in val]} best {max(val):.1f} stalled={result['stalled']} "
          f"({result['cpu_s']:.0f} CPU-s)", flush=True)
    return result


# ---- 3. per-step plot
def plot_steps(d: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in sorted(d.glob("seed*.json"))]
    keys = [("loss", "training loss"), ("grad_norm", "gradient norm (before clipping)"),
            ("entropy/0", "class-token attention entropy / log L, layer 0"),
            ("entropy/3", "… layer 3"), ("logit_std_images", "logit SD over the batch's images"),
            ("cls_norm", "class-token norm after the last block")]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7))
    per_step = 34  # 1,077 training images / batch 32, rounded up
    for ax, (k, title) in zip(axes.flat, keys):
        for r in runs:
            y = np.array([s[k] for s in r["steps"]])
            w = 9 if k in ("loss", "grad_norm") else 1
            ys = np.convolve(y, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(ys)) / per_step, ys, color="C3" if r["stalled"] else "0.55",
                    lw=1.6 if r["stalled"] else 0.8, label=f"seed {r['seed']}" if r["stalled"] else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if k == "loss":
            ax.axhline(math.log(10), color="k", ls=":", lw=0.8)
    ax = axes.flat[len(keys)]
    for r in runs:
        ax.plot(range(1, len(r["val_acc1"]) + 1), r["val_acc1"], "-o", ms=2,
                color="C3" if r["stalled"] else "0.55", lw=1.6 if r["stalled"] else 0.8)
    ax.set_title("validation top-1 (%)", fontsize=9)
    ax.set_xlabel("epoch")
    ax = axes.flat[len(keys) + 1]
    for r in runs:
        for i in range(4):
            y = [s[f"grad/blocks.{i}"] for s in r["steps"]]
            ax.plot(np.arange(len(y)) / per_step, np.convolve(y, np.ones(9) / 9, mode="same"),
                    color=f"C{i}", lw=1.4 if r["stalled"] else 0.5, alpha=1 if r["stalled"] else 0.4)
    ax.set_yscale("log")
    ax.set_title("grad norm per block 0-3 (C0-C3; thick: stalled)", fontsize=9)
    ax.set_xlabel("epoch")
    n_st = sum(r["stalled"] for r in runs)
    axes.flat[0].legend(fontsize=7)
    o = runs[0]["overrides"].get("optim", {})
    recipe = f"warm-up {o['warmup_epochs']}, clip {o['clip_grad']}" if o else "digits_study.yaml's optimiser"
    fig.suptitle(f"Digits, no RPE, no absolute positions, {recipe}: {len(runs)} seeds, {n_st} stalled "
                 f"(red: best val top-1 < {EARLY_STALL:g} % in 10 epochs); loss and grad norm: 9-step means",
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def summarise(d: Path) -> None:
    """Numbers for docs/recipe.md: epoch means of each probe, stalled against healthy seeds."""
    runs = [json.loads(p.read_text()) for p in sorted(d.glob("seed*.json"))]
    keys = ["loss", "grad_norm", "entropy/0", "entropy/1", "entropy/2", "entropy/3", "attn_max/3", "cls_norm",
            "logit_std_images", "logit_std_classes", "token_cos", "grad/blocks.0", "grad/blocks.3", "grad/head"]
    for r in runs:
        print(f"seed {r['seed']} stalled={r['stalled']} val={[round(v) for v in r['val_acc1']]} "
              f"cpu {r['cpu_s']:.0f} s")
        for k in keys:
            by_epoch = [np.mean([s[k] for s in r["steps"] if s["epoch"] == e]) for e in range(r["epochs"])]
            print(f"   {k:18s} " + " ".join(f"{v:7.3f}" for v in by_epoch))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("epochs", help="plot the committed studies' per-epoch curves")
    e.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "stall_curves_epochs.png")
    e.add_argument("--studies", nargs="+", default=STUDIES)
    s = sub.add_parser("steps", help="train seeds with per-step probes")
    s.add_argument("--dir", type=Path, required=True, help="where the per-seed JSON go (not the repository)")
    s.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    s.add_argument("--epochs", type=int, default=10, help="epochs trained of the 30-epoch schedule")
    s.add_argument("--base", type=Path, default=ROOT / "configs" / "digits_study.yaml")
    s.add_argument("--recipe", choices=["paper", "study"], default="paper",
                   help="paper: 5 warm-up epochs and clip 1.0 (the paper studies); study: the config's own "
                        "(2 warm-up epochs, no clipping)")
    q = sub.add_parser("plot", help="plot the per-step records")
    q.add_argument("--dir", type=Path, required=True)
    q.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "stall_curves_steps.png")
    m = sub.add_parser("summary", help="print epoch means of the per-step records")
    m.add_argument("--dir", type=Path, required=True)
    a = p.parse_args()
    if a.cmd == "epochs":
        plot_epochs(a.out, a.studies)
    elif a.cmd == "steps":
        overrides = {"model": {"abs_pos": False, "rpe": None}, "log": {"wandb": False},
                     "trainer": {"benchmark_batches": 0}}
        if a.recipe == "paper":
            overrides["optim"] = {"warmup_epochs": 5, "clip_grad": 1.0}
        for seed in a.seeds:
            run_seed(a.base, seed, a.epochs, overrides, a.dir)
    elif a.cmd == "plot":
        plot_steps(a.dir, a.out)
    else:
        summarise(a.dir)


if __name__ == "__main__":
    main()
