"""``train(config) -> summary``: the single entry that the CLI and the sweep call, in-process or in a child.

Everything that identifies a run — its directory, its W&B id and the checkpoint to resume from — is an argument,
so a caller (a sweep trial, a retry) can decide them; defaults are invented only when none are given.
Order of work: validate data and model (cheap, fails early) → run directory and resolved config → fit →
test → inference benchmark → ``summary.json``.

Selection and report are kept apart: the epoch is chosen on validation (the checkpoint ``ModelCheckpoint`` keeps
for the best ``val/acc1``; ``selection: "best_val"``), and the held-out test split is evaluated once, on that
checkpoint (``test/acc1``, ``test/acc5``, ``test/loss``, ``test/epoch``). Without a validation split
(``data.val_fraction: 0``) the final epoch is tested (``selection: "final"``). Nothing that chooses — the
checkpoint, the sweep's objective, the pruner — ever reads a test metric.
"""
from __future__ import annotations

import json
import os
import platform
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import lightning.pytorch as pl
import torch

from .. import allocator
from ..models import count_params_and_macs, create_model, set_attention_options
from .config import MONITOR, MONITOR_MODE, TEST_KEYS, TrainConfig, dump_config
from .data import build_datamodule
from .module import ClassificationModule, NonFiniteLossError
from .throughput import TrainThroughput, benchmark_inference, device_description

RUN_META = "run.json"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
_ENV_RUN_DIR, _ENV_WANDB_ID = "IRPE_BENCH_RUN_DIR", "IRPE_BENCH_WANDB_ID"
_RPE_TABLE = re.compile(r"\.rpe_[qkv]\.lookup_table_(weight|bias)$")


class TrainingDiverged(RuntimeError):
    """Raised after ``summary.json`` records the divergence; ``.summary`` holds it for the caller."""

    def __init__(self, message: str, summary: Dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def _is_child_rank() -> bool:
    """A DDP process started by Lightning's launcher (it re-runs the command with LOCAL_RANK set)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def _git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) or None


def _versions() -> Dict[str, str]:
    import lightning
    import timm
    import torchmetrics

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__}


def resolve_precision(config: TrainConfig) -> str:
    p = config.trainer.precision
    if p != "auto":
        return p
    gpu = torch.cuda.is_available() and config.trainer.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


def build_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    m = config.model
    model = create_model(m.name, rpe=m.rpe, abs_pos=m.abs_pos, **m.timm_kwargs(num_classes))
    return set_attention_options(model, recompute_weights=m.recompute_weights)


def no_decay_names(model: torch.nn.Module, config: TrainConfig):
    """RPE lookup tables when the paper's recipe (no decay) is followed; timm handles norms, biases, pos/cls."""
    if config.optim.decay_rpe_tables:
        return []
    return [n for n, _ in model.named_parameters() if _RPE_TABLE.search(n)]


def default_run_dir(config: TrainConfig, slug: str) -> Path:
    return Path(config.log.runs_dir) / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def find_checkpoint(run_dir: Union[str, Path]) -> Path:
    """The checkpoint ``--resume RUN_DIR`` continues from; a clear error when there is none."""
    ckpt = Path(run_dir) / CKPT_DIR / LAST_CKPT
    if not Path(run_dir).is_dir():
        raise ValueError(f"--resume {str(run_dir)!r}: no such run directory")
    if not ckpt.is_file():
        raise ValueError(f"--resume {str(run_dir)!r}: holds no checkpoint (expected {str(ckpt)!r}); the run was "
                         "killed before its first epoch ended — start it again instead")
    return ckpt


def train(config: TrainConfig, run_dir: Optional[Union[str, Path]] = None, wandb_id: Optional[str] = None,
          resume_from: Optional[Union[str, Path]] = None,
          callbacks: Sequence[pl.Callback] = ()) -> Dict[str, Any]:
    """Train one variant and return its summary (also written to ``run_dir/summary.json``).

    Args:
        config: the validated run configuration.
        run_dir: where config, checkpoints, logs and summary go; default ``log.runs_dir/<slug>-<time>-<id>``.
        wandb_id: the W&B run id (pass the stored one to continue a run's W&B history); default: new.
        resume_from: a Lightning checkpoint (``run_dir/checkpoints/last.ckpt``) to continue from exactly.
        callbacks: extra Lightning callbacks (the sweep's pruning callback).
    Raises:
        ValueError: bad data location or model before any training work.
        TrainingDiverged: the loss became NaN/inf (``summary.json`` says so first).
        Exception: whatever stopped ``fit`` (a pruning decision, an error) after ``summary.json`` records it
            as ``"status": "stopped"`` with the reason and the W&B run is closed.
    """
    # ---- 1. cheap checks that must fail before anything is written
    dm = build_datamodule(config.data, config.model.resolved_img_size, config.seed)
    dm.check()
    if resume_from is not None and not Path(resume_from).is_file():
        raise ValueError(f"resume_from={str(resume_from)!r}: no such checkpoint file")
    pl.seed_everything(config.seed, workers=True, verbose=False)
    net = build_model(config, dm.num_classes)
    slug = net.variant
    child = _is_child_rank()
    if child:
        run_dir, wandb_id = os.environ.get(_ENV_RUN_DIR, run_dir), os.environ.get(_ENV_WANDB_ID, wandb_id)

    # ---- 2. the run directory: resolved config, identity
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config, slug)
    meta_path = run_dir / RUN_META
    if wandb_id is None and meta_path.is_file():
        wandb_id = json.loads(meta_path.read_text()).get("wandb_id")
    wandb_id = wandb_id or secrets.token_hex(4)
    if not child:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(config))
        meta_path.write_text(json.dumps({"slug": slug, "wandb_id": wandb_id}, indent=2))
        os.environ[_ENV_RUN_DIR], os.environ[_ENV_WANDB_ID] = str(run_dir), wandb_id
    cost = count_params_and_macs(net)

    # ---- 3. fit
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .wandb_setup import finish_wandb, make_wandb_logger

    module = ClassificationModule(net, dm.num_classes, config.optim, config.data, no_decay_names(net, config))
    throughput = TrainThroughput(config.trainer.throughput_skip_steps)
    validated = config.data.has_validation
    # NOTE: at least the best checkpoint is kept when there is validation: the test split is evaluated on it.
    # last.ckpt comes from a callback of its own that writes every epoch: Lightning's ``save_last`` rewrites it
    # only when a top-k checkpoint is written, so a resume (and the final-epoch test) would start from the last
    # improvement instead of the last epoch. It runs after the best one, so its file holds the best's state.
    checkpoint = ModelCheckpoint(dirpath=run_dir / CKPT_DIR, monitor=MONITOR, mode=MONITOR_MODE,
                                 save_top_k=max(1, config.log.save_top_k), auto_insert_metric_name=False,
                                 filename="epoch{epoch:03d}-acc1{val/acc1:.4f}") if validated else None
    last = ModelCheckpoint(dirpath=run_dir / CKPT_DIR, filename=Path(LAST_CKPT).stem, monitor=None, save_top_k=1,
                           enable_version_counter=False)
    all_callbacks = [*([checkpoint] if checkpoint else []), last, throughput, *callbacks]
    if config.optim.ema_decay is not None:
        all_callbacks.append(EMAWeightAveraging(decay=config.optim.ema_decay))
    loggers = [CSVLogger(str(run_dir), name="", version="csv")]
    if config.log.wandb:
        loggers.append(make_wandb_logger(config, slug, run_dir, wandb_id))
    t = config.trainer
    precision = resolve_precision(config)
    deterministic = (not torch.cuda.is_available() or t.accelerator == "cpu") if t.deterministic == "auto" \
        else t.deterministic
    trainer = pl.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        num_nodes=t.num_nodes, precision=precision, accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches if validated else 0,
        limit_test_batches=t.limit_test_batches,
        gradient_clip_val=config.optim.clip_grad, deterministic=deterministic, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, num_sanity_val_steps=0, use_distributed_sampler=False,
        callbacks=all_callbacks, logger=loggers, default_root_dir=str(run_dir), enable_model_summary=False,
    )
    started, status, error, stopped_by = time.time(), "finished", None, None
    metrics: Dict[str, float] = {}
    tested: Dict[str, Any] = {}
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
        wall = time.time() - started
        metrics = _metrics(trainer)
        tested = test_selected(trainer, module, dm, checkpoint.best_model_path if checkpoint else None,
                               Path(last.dirpath) / LAST_CKPT)
    except NonFiniteLossError as e:
        status, error = "diverged", str(e)
    except Exception as e:  # noqa: BLE001 - recorded, the W&B run closed, then raised again below
        status, error, stopped_by = "stopped", f"{type(e).__name__}: {e}", e
    if status != "finished":
        wall, metrics = time.time() - started, _metrics(trainer)
    device = trainer.strategy.root_device  # NOTE: not module.device: Lightning's teardown moved it to the CPU

    # ---- 4. benchmark and summary (rank zero)
    summary: Dict[str, Any] = {
        "status": status, "error": error, "variant": slug, "run_dir": str(run_dir), "wandb_id": wandb_id,
        "seed": config.seed, "monitor": MONITOR, MONITOR: metrics.get(MONITOR),
        f"{MONITOR}_best": module.best_acc1 if status == "finished" and validated else None,
        **{k: tested.get(k) for k in TEST_KEYS},
        "metrics": metrics, "epochs": trainer.current_epoch, "global_step": trainer.global_step,
        "best_checkpoint": (checkpoint.best_model_path or None) if checkpoint else None, "wall_s": wall, **cost,
        "throughput/train_img_s": throughput.median, "throughput/train_img_s_epochs": list(throughput.epochs),
        "throughput/batch_size": config.data.batch_size,
        "throughput/precision": precision, "throughput/device": device_description(device),
        "world_size": trainer.world_size, "versions": _versions(), "git_commit": _git_commit(),
        "malloc": allocator.in_effect(),
        "resumed_from": str(resume_from) if resume_from else None,
    }
    if trainer.is_global_zero and status == "finished" and t.benchmark_batches > 0:
        bench = benchmark_inference(module.net, config.data.eval_batch_size or config.data.batch_size,
                                    config.model.resolved_img_size, precision, device,
                                    batches=t.benchmark_batches)
        summary.update(bench)
        for lg in trainer.loggers:
            lg.log_metrics(bench, step=trainer.global_step)
            lg.save()
    if trainer.is_global_zero:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if config.log.wandb:
        if trainer.is_global_zero:
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        finish_wandb(exit_code=0 if status == "finished" else 1)
    if stopped_by is not None:
        raise stopped_by
    if status == "diverged":
        raise TrainingDiverged(f"{error} (recorded in {run_dir / 'summary.json'})", summary)
    return summary


def _metrics(trainer: pl.Trainer) -> Dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}


def test_selected(trainer: pl.Trainer, module: pl.LightningModule, dm: pl.LightningDataModule,
                  best: Optional[str], final: Path) -> Dict[str, Any]:
    """Evaluate the test split on the checkpoint chosen on validation (``best``: ``best_val``), or on the final
    epoch's (``final``) when there is no validation split, with the trainer that fitted (DDP ranks all take part).

    Returns ``test/acc1``, ``test/acc5`` (fractions in [0, 1]), ``test/loss`` (mean cross-entropy), ``test/epoch``
    (1-based: the number of epochs trained when the checkpoint was taken) and ``selection``.
    NOTE: weight-averaging callbacks leave the trainer first: their ``on_load_checkpoint`` would put the raw
    weights back, while the checkpoint's ``state_dict`` holds the averaged ones that validation saw.
    """
    from lightning.pytorch.callbacks import WeightAveraging

    path = Path(best) if best else final
    if not path.is_file():
        raise RuntimeError(f"no checkpoint to test: {str(path)!r} is missing")
    # NOTE: a checkpoint taken at validation end stores the 0-based epoch it ran in; the final epoch is the
    # number of epochs trained (``last.ckpt`` saved at a training epoch's end already holds the next index)
    epoch = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1 if best \
        else trainer.current_epoch
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, WeightAveraging)]
    (result,) = trainer.test(module, datamodule=dm, ckpt_path=str(path), verbose=False)
    out: Dict[str, Any] = {k: float(result[k]) for k in ("test/acc1", "test/acc5", "test/loss")}
    out.update({"test/epoch": epoch, "selection": "best_val" if best else "final"})
    for lg in trainer.loggers:
        lg.log_metrics({"test/epoch": epoch}, step=trainer.global_step)
    return out

