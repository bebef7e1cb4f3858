"""``train(config) -> summary``: the single entry that the CLI and the sweep call, in-process or in a child.

Everything that identifies a run — its directory, its W&B id and the checkpoint to resume from — is an argument,
so a caller (a sweep trial, a retry) can decide them; defaults are invented only when none are given.
Order of work, one function each: :func:`build` (validate data and model, cheap, fails early; run directory and
resolved config) → :func:`fit` (fit, then test) → :func:`summarise` (summary, inference benchmark) →
:func:`finish` (``summary.json``, W&B closed, the outcome returned or raised).

Selection and report are kept apart: the epoch is chosen on validation (the checkpoint ``ModelCheckpoint`` keeps
for the best ``val/acc1``; ``selection: "best_val"``), and the held-out test split is evaluated once, on that
checkpoint (``test/acc1``, ``test/acc5``, ``test/loss``, ``test/epoch``). Without a validation split
(``data.val_fraction: 0``) the final epoch is tested (``selection: "final"``). Nothing that chooses — the
checkpoint, the sweep's objective, the pruner — ever reads a test metric.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import lightning.pytorch as pl
import torch

from .. import allocator
from .. import keys as K
from ..keys import MONITOR, MONITOR_MODE, TEST_KEYS
from ..models import count_params_and_macs, create_model, set_attention_options
from ..redact import redact
from . import ddp_env
from .config import TrainConfig, dump_config
from .data import ImageDataModule, build_datamodule
from .module import ClassificationModule, NonFiniteLossError
from .preemption import PreemptionCheckpoint
from .provenance import git_commit, versions
from .throughput import ComputeTime, TrainThroughput, benchmark_inference, device_description

RUN_META = "run.json"
CKPT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
_RPE_TABLE = re.compile(r"\.rpe_[qkv]\.lookup_table_(weight|bias)$")


class TrainingDiverged(RuntimeError):
    """Raised after ``summary.json`` records the divergence; ``.summary`` holds it for the caller."""

    def __init__(self, message: str, summary: Dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def resolve_precision(config: TrainConfig) -> str:
    p = config.trainer.precision
    if p != "auto":
        return p
    gpu = torch.cuda.is_available() and config.trainer.accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if gpu else "32-true"


def build_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    m = config.model
    model = create_model(m.name, rpe=m.rpe, abs_pos=m.abs_pos, pos=m.pos, **m.timm_kwargs(num_classes))
    return set_attention_options(model, recompute_weights=m.recompute_weights)


def no_decay_names(model: torch.nn.Module, config: TrainConfig):
    """RPE lookup tables when the paper's recipe (no decay) is followed, and what another family's paper leaves
    out of decay (bias tables, RoPE-Mixed's frequencies); timm handles norms, biases, pos/cls."""
    from ..pos.families import no_decay_names as family_no_decay

    if config.optim.decay_rpe_tables:
        return []
    return [n for n, _ in model.named_parameters() if _RPE_TABLE.search(n)] + family_no_decay(model)


def default_run_dir(config: TrainConfig, slug: str) -> Path:
    return Path(config.log.runs_dir) / f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def find_checkpoint(run_dir: Union[str, Path]) -> Path:
    """The checkpoint ``--resume RUN_DIR`` continues from: ``last.ckpt``, or when that does not load the newest
    of the run's checkpoints that does (:func:`.checkpoint_io.loadable_checkpoint`); a clear error when none."""
    from .checkpoint_io import loadable_checkpoint

    ckpt = Path(run_dir) / CKPT_DIR / LAST_CKPT
    if not Path(run_dir).is_dir():
        raise ValueError(f"--resume {str(run_dir)!r}: no such run directory")
    found = loadable_checkpoint(ckpt.parent, LAST_CKPT)
    if found.path is None:
        why = "; ".join(f"{f}: {e}" for f, e in found.skipped)
        raise ValueError(f"--resume {str(run_dir)!r}: holds no checkpoint that loads (expected {str(ckpt)!r}"
                         f"{'; ' + why if why else ''}); start the run again instead")
    return found.path


@dataclass
class Run:
    """What ``build`` made before any training: the data, the network and the run's identity."""

    dm: ImageDataModule
    net: torch.nn.Module
    slug: str
    run_dir: Path
    wandb_id: str
    cost: Dict[str, int]  # params, macs


@dataclass
class Fitted:
    """What ``fit`` left: the trainer and module, the callbacks the summary reads, and how it ended."""

    trainer: pl.Trainer
    module: ClassificationModule
    checkpoint: Optional[pl.Callback]  # ModelCheckpoint on val/acc1; None without validation
    throughput: TrainThroughput
    precision: str
    compute: ComputeTime = field(default_factory=ComputeTime)
    status: str = K.FINISHED  # finished | diverged | stopped
    error: Optional[str] = None
    stopped_by: Optional[BaseException] = None  # re-raised after the summary is written
    wall: float = 0.0
    metrics: Dict[str, float] = field(default_factory=dict)
    tested: Dict[str, Any] = field(default_factory=dict)


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
    run = build(config, run_dir, wandb_id, resume_from)
    fitted = fit(config, run, resume_from, callbacks)
    summary = summarise(config, run, fitted, resume_from)
    return finish(config, run, fitted, summary)


def build(config: TrainConfig, run_dir: Optional[Union[str, Path]], wandb_id: Optional[str],
          resume_from: Optional[Union[str, Path]]) -> Run:
    """Cheap checks that must fail before anything is written, then the network and the run directory."""
    dm = build_datamodule(config.data, config.model.resolved_img_size, config.seed)
    dm.check()
    if resume_from is not None and not Path(resume_from).is_file():
        raise ValueError(f"resume_from={str(resume_from)!r}: no such checkpoint file")
    pl.seed_everything(config.seed, workers=True, verbose=False)
    net = build_model(config, dm.num_classes)
    run_dir, wandb_id = open_run_dir(config, net.variant, run_dir, wandb_id)
    return Run(dm, net, net.variant, run_dir, wandb_id, count_params_and_macs(net))


def open_run_dir(config: TrainConfig, slug: str, run_dir: Optional[Union[str, Path]],
                 wandb_id: Optional[str]) -> Tuple[Path, str]:
    """The run's directory and W&B id: rank 0 decides them (given, stored in ``run.json``, or new) and writes
    the resolved config there; a DDP child rank takes rank 0's (:mod:`.ddp_env`) and writes nothing."""
    child = ddp_env.is_child_rank()
    if child:
        run_dir, wandb_id = ddp_env.inherited_run(run_dir, wandb_id)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config, slug)
    meta_path = run_dir / RUN_META
    if wandb_id is None and meta_path.is_file():
        wandb_id = json.loads(meta_path.read_text()).get("wandb_id")
    wandb_id = wandb_id or secrets.token_hex(4)
    if not child:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(config))
        meta_path.write_text(json.dumps({"slug": slug, "wandb_id": wandb_id}, indent=2))
        ddp_env.publish_run(run_dir, wandb_id)
    return run_dir, wandb_id


def fit(config: TrainConfig, run: Run, resume_from: Optional[Union[str, Path]],
        callbacks: Sequence[pl.Callback]) -> Fitted:
    """Fit, then test the checkpoint chosen on validation. A divergence or any other exception is recorded in
    the result (``status``), not raised, so that the summary is written first."""
    module = ClassificationModule(run.net, run.dm.num_classes, config.optim, config.data,
                                  no_decay_names(run.net, config))
    throughput, memory = TrainThroughput(config.trainer.throughput_skip_steps), EpochMetrics()
    checkpoint, last = checkpoint_callbacks(config, run.run_dir)
    compute = ComputeTime()
    all_callbacks: List[pl.Callback] = [*([checkpoint] if checkpoint else []), last, throughput, compute, *callbacks,
                                        PreemptionCheckpoint(run.run_dir / CKPT_DIR / LAST_CKPT)]  # SIGTERM
    all_callbacks.append(memory)
    if config.optim.ema_decay is not None:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        all_callbacks.append(EMAWeightAveraging(decay=config.optim.ema_decay))
    precision = resolve_precision(config)
    trainer = build_trainer(config, run, precision, all_callbacks)
    out = Fitted(trainer, module, checkpoint, throughput, precision, compute)
    started = time.time()
    try:
        trainer.fit(module, datamodule=run.dm, ckpt_path=str(resume_from) if resume_from else None)
        out.wall = time.time() - started
        out.metrics = _metrics(trainer) or memory.metrics  # resumed at its last epoch: nothing trained now
        out.tested = test_selected(trainer, module, run.dm, checkpoint.best_model_path if checkpoint else None,
                                   Path(last.dirpath) / LAST_CKPT)
        if config.eval.img_sizes and trainer.is_global_zero:
            out.tested[K.TEST_BY_SIZE] = test_sizes(config, trainer, module, precision)
    except NonFiniteLossError as e:
        out.status, out.error = K.DIVERGED, redact(str(e))
    except Exception as e:  # noqa: BLE001 - recorded, the W&B run closed, then raised again by ``finish``
        out.status, out.error, out.stopped_by = K.STOPPED, redact(f"{type(e).__name__}: {e}"), e
    if out.status != K.FINISHED:
        out.wall, out.metrics = time.time() - started, _metrics(trainer)
    return out


def checkpoint_callbacks(config: TrainConfig, run_dir: Path) -> Tuple[Optional[pl.Callback], pl.Callback]:
    """(the best checkpoint on ``val/acc1`` or None without validation, ``last.ckpt`` written every epoch).

    NOTE: at least the best checkpoint is kept when there is validation: the test split is evaluated on it.
    last.ckpt comes from a callback of its own that writes every epoch: Lightning's ``save_last`` rewrites it
    only when a top-k checkpoint is written, so a resume (and the final-epoch test) would start from the last
    improvement instead of the last epoch. It runs after the best one, so its file holds the best's state.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=run_dir / CKPT_DIR, monitor=MONITOR, mode=MONITOR_MODE,
                                 save_top_k=max(1, config.log.save_top_k), auto_insert_metric_name=False,
                                 filename="epoch{epoch:03d}-val_acc1_{val/acc1:.2f}") \
        if config.data.has_validation else None
    last = ModelCheckpoint(dirpath=run_dir / CKPT_DIR, filename=Path(LAST_CKPT).stem, monitor=None, save_top_k=1,
                           enable_version_counter=False)
    return checkpoint, last


def build_trainer(config: TrainConfig, run: Run, precision: str, callbacks: List[pl.Callback]) -> pl.Trainer:
    """The Lightning ``Trainer`` of ``config.trainer``, logging to CSV (and W&B when ``log.wandb``).

    NOTE: ``strategy`` is passed as configured (a string): with DDP, Lightning's default broadcasts buffers
    every step, the bucket-id buffers included, although they never change.
    """
    from lightning.pytorch.loggers import CSVLogger

    from .checkpoint_io import AtomicCheckpointIO
    from .wandb_setup import make_wandb_logger

    loggers = [CSVLogger(str(run.run_dir), name="", version="csv")]
    if config.log.wandb:
        loggers.append(make_wandb_logger(config, run.slug, run.run_dir, run.wandb_id))
    t = config.trainer
    validated = config.data.has_validation
    deterministic = (not torch.cuda.is_available() or t.accelerator == "cpu") if t.deterministic == "auto" \
        else t.deterministic
    return pl.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        num_nodes=t.num_nodes, precision=precision, accumulate_grad_batches=t.accumulate_grad_batches,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches if validated else 0,
        limit_test_batches=t.limit_test_batches,
        gradient_clip_val=config.optim.clip_grad, deterministic=deterministic, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, num_sanity_val_steps=0, use_distributed_sampler=False,
        callbacks=callbacks, logger=loggers, default_root_dir=str(run.run_dir), enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],  # NOTE: every checkpoint written atomically (checkpoint_io.py says why)
    )


def summarise(config: TrainConfig, run: Run, fitted: Fitted, resume_from: Optional[Union[str, Path]]) -> Dict[str, Any]:
    """The run's summary: identity, outcome, metrics, cost, speeds, provenance, and (rank zero, finished runs)
    the inference benchmark, also sent to the loggers."""
    trainer, checkpoint = fitted.trainer, fitted.checkpoint
    device = trainer.strategy.root_device  # NOTE: not module.device: Lightning's teardown moved it to the CPU
    finished = fitted.status == K.FINISHED
    summary: Dict[str, Any] = {
        "status": fitted.status, "error": fitted.error, "variant": run.slug, "run_dir": str(run.run_dir),
        "wandb_id": run.wandb_id, "seed": config.seed, "monitor": MONITOR, MONITOR: fitted.metrics.get(MONITOR),
        K.MONITOR_BEST: fitted.module.best_acc1 if finished and config.data.has_validation else None,
        **{k: fitted.tested.get(k) for k in TEST_KEYS}, K.TEST_BY_SIZE: fitted.tested.get(K.TEST_BY_SIZE),
        "metrics": fitted.metrics, "epochs": trainer.current_epoch, "global_step": trainer.global_step,
        "best_checkpoint": (checkpoint.best_model_path or None) if checkpoint else None, "wall_s": fitted.wall,
        **run.cost,
        K.COMPUTE_S: fitted.compute.total, K.COMPUTE_S_LOOPS: dict(fitted.compute.seconds),
        K.TRAIN_IMG_S: fitted.throughput.median, K.TRAIN_IMG_S_EPOCHS: list(fitted.throughput.epochs),
        K.BATCH_SIZE: config.data.batch_size,
        K.PRECISION: fitted.precision, K.DEVICE: device_description(device),
        "world_size": trainer.world_size, "versions": versions(), "git_commit": git_commit(),
        "malloc": allocator.in_effect(),
        "resumed_from": str(resume_from) if resume_from else None,
    }
    if trainer.is_global_zero and finished and config.trainer.benchmark_batches > 0:
        bench = benchmark_inference(fitted.module.net, config.data.eval_batch_size or config.data.batch_size,
                                    config.model.resolved_img_size, fitted.precision, device,
                                    batches=config.trainer.benchmark_batches)
        summary.update(bench)
        for lg in trainer.loggers:
            lg.log_metrics(bench, step=trainer.global_step)
            lg.save()
    return summary


def finish(config: TrainConfig, run: Run, fitted: Fitted, summary: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``summary.json`` (rank zero), close the W&B run, then return the summary or raise what stopped it."""
    from .wandb_setup import finish_wandb

    trainer = fitted.trainer
    if trainer.is_global_zero:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if config.log.wandb:
        if trainer.is_global_zero:
            import wandb

            if wandb.run is not None:
                wandb.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        finish_wandb(exit_code=0 if fitted.status == K.FINISHED else 1)
    if fitted.stopped_by is not None:
        raise fitted.stopped_by
    if fitted.status == K.DIVERGED:
        raise TrainingDiverged(f"{fitted.error} (recorded in {run.run_dir / 'summary.json'})", summary)
    return summary


def _metrics(trainer: pl.Trainer) -> Dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}


class EpochMetrics(pl.Callback):
    """The ``val/*`` and ``train/*`` values when a checkpoint is taken, kept in it (callback state).

    NOTE: a run killed after its last epoch's checkpoint (while testing or benchmarking) resumes with nothing
    left to train, so Lightning's ``callback_metrics`` stay empty; :attr:`metrics` (restored) then gives the
    summary its final ``val/acc1`` instead of none.
    """

    def __init__(self) -> None:
        self.metrics: Dict[str, float] = {}
        self._trainer: Optional[pl.Trainer] = None
        self._fitting = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._fitting = trainer, stage == "fit"  # (before Lightning restores a checkpoint)

    def state_dict(self) -> Dict[str, Any]:
        return {"metrics": _metrics(self._trainer) if self._trainer is not None else dict(self.metrics)}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if self._fitting:  # NOTE: testing a chosen checkpoint restores callbacks too; the fit's record stays
            self.metrics = {k: float(v) for k, v in state_dict.get("metrics", {}).items()}


def test_sizes(config: TrainConfig, trainer: pl.Trainer, module: ClassificationModule, precision: str
               ) -> Dict[str, Dict[str, float]]:
    """The test split at each of ``eval.img_sizes``, on the weights :func:`test_selected` just loaded (the
    checkpoint chosen on validation), also sent to the loggers as ``test/acc1@SIZE`` …"""
    from .resolution import evaluate_sizes, flat_metrics

    by_size = evaluate_sizes(config, module.net, trainer.strategy.root_device, precision)
    for lg in trainer.loggers:
        lg.log_metrics(flat_metrics(by_size), step=trainer.global_step)
    return by_size


def test_selected(trainer: pl.Trainer, module: pl.LightningModule, dm: pl.LightningDataModule,
                  best: Optional[str], final: Path) -> Dict[str, Any]:
    """Evaluate the test split on the checkpoint chosen on validation (``best``: ``best_val``), or on the final
    epoch's (``final``) when there is no validation split, with the trainer that fitted (DDP ranks all take part).

    Returns ``test/acc1``, ``test/acc5`` (percent), ``test/loss`` (mean cross-entropy), ``test/epoch``
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

