"""Honest speed numbers: training images/s over an epoch and a timm-style inference benchmark.

Training throughput leaves out the first steps of every epoch (allocator warm-up, lazy kernel selection, the
data loader's first batches) and synchronises the GPU around the timed window, so the number is steady-state
speed rather than wall time. The inference benchmark follows timm's ``benchmark.py`` / nanoGPT's ``bench.py``:
warm-up batches, then timed batches with a synchronisation before reading the clock.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional

import lightning.pytorch as pl
import torch
from torch import nn


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels (CUDA) before reading a clock; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainThroughput(pl.Callback):
    """Logs ``throughput/train_img_s`` (all devices) at each epoch end; :attr:`median` is the run's number.

    NOTE: the median over epochs, not the last epoch: one epoch of a small dataset is a second or two, and a
    single burst of load from another process moved the last-epoch number by up to ±30 % between otherwise
    identical sweeps (README, quick sweep); the median ignores such an epoch.

    The clock runs from the start of step ``skip_steps`` to the end of the epoch's last step, so data loading
    between steps counts (it is part of training speed) but the warm-up steps do not. NOTE: the GPU is
    synchronised only where the window opens and at the epoch's last step, never per step (a per-step sync
    would stall the asynchronous queue and lower the very number being measured).

    The per-epoch numbers are kept in the checkpoint (Lightning callback state), so a run resumed after a kill —
    even at its last epoch, with nothing left to time — reports the speed measured before the interruption.
    NOTE: only a fit restores them: ``trainer.test(ckpt_path=…)`` restores every callback's state too, which would
    rewind the record to the tested (validation-chosen) epoch.
    """

    def __init__(self, skip_steps: int = 5) -> None:
        self.skip_steps = skip_steps
        self.epochs: List[float] = []  # images/s of each epoch trained, before a resume included
        self._images = 0
        self._t0: Optional[float] = None
        self._t1: Optional[float] = None
        self._fitting = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"  # Lightning calls setup before it restores a checkpoint

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._images, self._t0, self._t1 = 0, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.skip_steps:
            synchronize(pl_module.device)
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._t0 is None:
            return
        self._images += len(batch[0])
        if batch_idx + 1 >= trainer.num_training_batches:
            synchronize(pl_module.device)
        self._t1 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._images and self._t0 is not None and self._t1 is not None and self._t1 > self._t0:
            self.epochs.append(self._images * trainer.world_size / (self._t1 - self._t0))
            pl_module.log("throughput/train_img_s", self.epochs[-1], on_epoch=True, rank_zero_only=True)

    def state_dict(self) -> Dict[str, List[float]]:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state_dict: Dict[str, List[float]]) -> None:
        if self._fitting:
            self.epochs = [float(x) for x in state_dict.get("epochs", [])]

    @property
    def median(self) -> Optional[float]:
        """Median images/s over the epochs timed (None before the first)."""
        return statistics.median(self.epochs) if self.epochs else None


class ComputeTime(pl.Callback):
    """Seconds the run spent in its training, validation and test loops' batches (:attr:`seconds`, by loop).

    What a bare PyTorch loop does — fetch a batch, forward, loss, backward, the optimizer step; forward and the
    metric update when evaluating — is computation; everything else a run does (imports, building the model and
    the data, loggers, checkpoints, the inference benchmark, teardown) is the harness's overhead, so a sweep
    worker's per-trial overhead is the trial's wall time minus :attr:`total` (``benchmarks/bench_trial_cost.py``).
    Each batch counts from the end of the one before it (or its loop's epoch start) to its own end hook, so the
    fetch is inside. NOTE: what Lightning does between two batches of one loop (logging every
    ``log_every_n_steps``, the progress bar) also falls inside: per-step costs are the whole-trial ratio's to
    show; this clock isolates the per-trial ones. A validation run in the middle of a training epoch restarts
    the training clock when it ends, so nothing counts twice.
    NOTE: measured on the CPU only: CUDA kernels run asynchronously, and a synchronisation per batch would slow
    the training it measures; on another device :attr:`seconds` stays empty.
    """

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}
        self._mark: Dict[str, Optional[float]] = {}
        self._on = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._on = trainer.strategy.root_device.type == "cpu"

    def _open(self, loop: str) -> None:
        if self._on:
            self._mark[loop] = time.perf_counter()

    def _batch(self, loop: str) -> None:
        start = self._mark.get(loop)  # None: not opened (another device) or closed
        if start is not None:
            now = time.perf_counter()
            self.seconds[loop] = self.seconds.get(loop, 0.0) + now - start
            self._mark[loop] = now

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._open("train")

    def on_train_batch_end(self, *args) -> None:
        self._batch("train")

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._open("validation")

    def on_validation_batch_end(self, *args) -> None:
        self._batch("validation")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._mark["validation"] = None
        if "train" in self._mark:  # mid-epoch validation: the next training batch starts its clock now
            self._open("train")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._mark.pop("train", None)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._open("test")

    def on_test_batch_end(self, *args) -> None:
        self._batch("test")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._mark["test"] = None

    @property
    def total(self) -> Optional[float]:
        """Seconds in batches of every loop, None where nothing was timed (another device, nothing run)."""
        return sum(self.seconds.values()) if self.seconds else None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` "model name"; elsewhere ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version from ``/proc/driver/nvidia/version`` (no nvidia-smi), or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None


def device_description(device: torch.device) -> str:
    """The machine a speed was measured on, specific enough that speeds from different hardware never mix:
    ``cpu: AMD EPYC 7B13 (2 cores, 2 threads, AVX512)`` (cores: ``os.cpu_count()``, threads:
    ``torch.get_num_threads()``, then the vector ISA PyTorch dispatches to, ``torch.backends.cpu.get_cpu_capability()``:
    virtual machines often name every AMD generation "AMD EPYC", and two such hosts trained the same seed to
    different accuracies, docs/reproducibility.md) or ``cuda: NVIDIA H200 (driver 550.54.15, CUDA
    12.4)`` (the driver is omitted where it cannot be read)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        driver, cuda = _nvidia_driver(), torch.version.cuda
        extra = ([f"driver {driver}"] if driver else []) + ([f"CUDA {cuda}"] if cuda else [])
        name = torch.cuda.get_device_name(index)
        return f"cuda: {name} ({', '.join(extra)})" if extra else f"cuda: {name}"
    if device.type == "cpu":
        isa = torch.backends.cpu.get_cpu_capability()
        return f"cpu: {cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads, {isa})"
    return str(device)


def autocast_for(precision: str, device: torch.device):
    """The autocast context that matches a Lightning precision string (``bf16-mixed`` / ``16-mixed``)."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


@torch.no_grad()
def benchmark_inference(model: nn.Module, batch_size: int, img_size: int, precision: str,
                        device: Optional[torch.device] = None, warmup: int = 3, batches: int = 10,
                        repeats: int = 3) -> Dict[str, float]:
    """Images/s of ``model`` in eval mode, under ``inference_mode``, on random input, on ``device``.

    NOTE: after ``fit`` Lightning has moved the module back to the CPU, so the caller passes the device it
    trained on (``trainer.strategy.root_device``); the model visits it for the measurement and goes home
    afterwards, with its training flag restored.
    """
    home = next(model.parameters()).device
    device = device or home
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.inference_mode(), autocast_for(precision, device):
            for _ in range(warmup):
                model(x)
            rates = []
            for _ in range(repeats):  # NOTE: the median of a few timed loops, as for training (TrainThroughput)
                synchronize(device)
                t0 = time.perf_counter()
                for _ in range(batches):
                    model(x)
                synchronize(device)
                rates.append(batch_size * batches / (time.perf_counter() - t0))
    finally:
        model.train(was_training).to(home)
    return {"throughput/infer_img_s": statistics.median(rates), "throughput/infer_batch_size": batch_size}
