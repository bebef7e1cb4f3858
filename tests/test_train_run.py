"""train(): a real tiny run end to end — summary.json, determinism, W&B offline history, NaN handling, decay groups."""
from __future__ import annotations

import json

import pytest
import torch

from irpe_bench import allocator
from irpe_bench.train import MONITOR, TrainingDiverged, train
from irpe_bench.train.run import build_model, no_decay_names
from irpe_bench.train.wandb_setup import read_offline_history, read_offline_summary

from ._train_helpers import tiny_config


@pytest.mark.slow
def test_train_writes_summary_and_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = tiny_config(tmp_path, log={"wandb": True, "group": "pytest"})
    run_dir = tmp_path / "run"
    summary = train(config, run_dir=run_dir, wandb_id="pytest01")
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["status"] == "finished" and saved["variant"] == "deit_tiny_ctx_product_50_shared_k"
    assert saved[MONITOR] == summary[MONITOR] and 0.0 <= saved[MONITOR] <= 100.0  # percent
    assert saved[f"{MONITOR}_best"] >= saved[MONITOR]
    for key in ("throughput/train_img_s", "throughput/infer_img_s"):
        assert saved[key] > 0
    assert saved["throughput/precision"] == "32-true" and saved["throughput/batch_size"] == 32
    assert saved["params"] > 0 and saved["macs"] > 0 and saved["seed"] == 0
    assert saved["versions"]["torch"] == torch.__version__ and saved["epochs"] == 2
    assert saved["malloc"] == allocator.in_effect()  # which allocator policy the timings ran under
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert saved["wandb_id"] == "pytest01"
    assert saved["selection"] == "best_val" and saved["test/epoch"] in (1, 2)
    assert 0.0 <= saved["test/acc1"] <= saved["test/acc5"] <= 100.0 and saved["test/loss"] > 0
    assert saved["throughput/device"].startswith("cpu: ")

    history = read_offline_history(run_dir)
    assert history, "no offline W&B run found"
    val_rows = [r for r in history if MONITOR in r]
    assert len(val_rows) == 2 and [r["epoch"] for r in val_rows] == [0, 1]
    assert val_rows[-1][MONITOR] == pytest.approx(saved[MONITOR])
    assert val_rows[-1]["val/loss"] == pytest.approx(saved["metrics"]["val/loss"])
    assert max(r[MONITOR] for r in val_rows) == pytest.approx(val_rows[-1][f"{MONITOR}_best"])
    assert any("train/loss" in r for r in history) and any("throughput/train_img_s" in r for r in history)
    assert any(r.get("throughput/infer_img_s") == pytest.approx(saved["throughput/infer_img_s"]) for r in history)
    run = read_offline_summary(run_dir)
    assert run["state"] == "finished" and run["run_id"] == "pytest01"
    assert run["name"] == "deit_tiny_ctx_product_50_shared_k" and run["project"] == "irpe_bench"
    assert {"method:product", "mode:contextual", "on:k", "layers:all", "index:piecewise"} <= set(run["tags"])
    assert run["config"]["model.rpe.method"] == "product" and run["config"]["model.embed_dim"] == 32
    assert run["summary"]["status"] == "finished"
    assert run["summary"]["test/acc1"] == pytest.approx(saved["test/acc1"]) and \
        run["summary"]["selection"] == "best_val"
    assert any(r.get("test/acc1") == pytest.approx(saved["test/acc1"]) for r in history)
    import wandb
    assert wandb.run is None  # finished


def test_logged_training_metrics_every_n_steps_and_per_epoch(tmp_path):
    """train/lr is logged only on the steps Lightning writes, yet every written step row has it; train/loss_epoch
    is the mean of the epoch's step losses, once per epoch; the summary's training images/s is the median of the
    epochs' (the CSV logger's file, as the W&B run gets it)."""
    import csv
    import statistics

    config = tiny_config(tmp_path, trainer={"log_every_n_steps": 3, "limit_train_batches": 5, "max_epochs": 3})
    summary = train(config, run_dir=tmp_path / "run", wandb_id=None)
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    steps = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in steps] == [2, 5, 8, 11, 14]  # every 3rd of 15 optimiser steps (0-based)
    assert all(r.get("train/lr") for r in steps)
    epochs = [r for r in rows if r.get("train/loss_epoch")]
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2] and all(float(r["train/loss_epoch"]) > 0 for r in epochs)
    speeds = [float(r["throughput/train_img_s"]) for r in rows if r.get("throughput/train_img_s")]
    assert len(speeds) == 3 and summary["throughput/train_img_s"] == pytest.approx(statistics.median(speeds))

    config = tiny_config(tmp_path, trainer={"log_every_n_steps": 1, "limit_train_batches": 4, "max_epochs": 1})
    train(config, run_dir=tmp_path / "every", wandb_id=None)
    rows = list(csv.DictReader((tmp_path / "every" / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    (epoch_mean,) = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) == 4 and all(r.get("train/lr") for r in rows if r.get("train/loss"))
    assert epoch_mean == pytest.approx(sum(losses) / 4, rel=1e-5)


def _evaluate(net, loader):
    """Top-1, top-5 and mean cross-entropy of ``net`` on ``loader``, computed here without Lightning."""
    net.eval()
    correct1 = correct5 = n = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in loader:
            logits = net(x)
            top5 = logits.topk(5, dim=1).indices
            correct1 += int((top5[:, 0] == y).sum())
            correct5 += int((top5 == y[:, None]).any(1).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    return correct1 / n, correct5 / n, loss / n


@pytest.mark.parametrize("ema", [None, 0.9])
@pytest.mark.slow
def test_test_metrics_are_the_checkpoint_chosen_on_validation(tmp_path, ema):
    """test/* is the test split evaluated on the epoch with the best val/acc1 (the first of equals), not the last
    epoch's weights, and with EMA on the averaged weights that validation saw: recomputed here from the chosen
    checkpoint's weights on the real test loader (all 450 test images)."""
    import csv

    from irpe_bench.train.data import build_datamodule

    config = tiny_config(tmp_path, optim={"ema_decay": ema, "lr": 3e-3},
                         trainer={"max_epochs": 4, "limit_train_batches": 6, "limit_val_batches": None,
                                  "limit_test_batches": None, "benchmark_batches": 0})
    summary = train(config, run_dir=tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    val = [float(r[MONITOR]) for r in rows if r.get(MONITOR)]
    assert len(val) == 4 and summary[f"{MONITOR}_best"] == pytest.approx(max(val))
    assert summary["test/epoch"] == val.index(max(val)) + 1 and summary["selection"] == "best_val"
    assert summary[MONITOR] == pytest.approx(val[-1])
    ckpt = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["epoch"] + 1 == summary["test/epoch"] < 4  # NOTE: not the final epoch, so the test can tell
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not torch.equal(last["state_dict"]["net.head.weight"], ckpt["state_dict"]["net.head.weight"])
    net = build_model(config, 10)
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()})
    dm = build_datamodule(config.data, 16, config.seed)
    dm.setup()
    acc1, acc5, loss = _evaluate(net, dm.test_dataloader())
    assert len(dm.test_set) == 450
    assert summary["test/acc1"] == pytest.approx(100 * acc1, abs=1e-4)  # percent
    assert summary["test/acc5"] == pytest.approx(100 * acc5, abs=1e-4)
    assert summary["test/loss"] == pytest.approx(loss, rel=1e-4)
    if ema is not None:  # the raw weights (current_model_state) score differently: the test used the average
        raw = build_model(config, 10)
        raw.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["current_model_state"].items()})
        assert _evaluate(raw, dm.test_dataloader())[2] != pytest.approx(loss, rel=1e-4)


def test_device_description_names_the_machine():
    import os

    from irpe_bench.train.throughput import device_description

    text = device_description(torch.device("cpu"))
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                     None)
    isa = torch.backends.cpu.get_cpu_capability()
    assert text == (f"cpu: {' '.join(cpu_model.split())} ({os.cpu_count()} cores, {torch.get_num_threads()} threads, "
                    f"{isa})") and isa
    if torch.cuda.is_available():
        gpu = device_description(torch.device("cuda", 0))
        assert gpu.startswith(f"cuda: {torch.cuda.get_device_name(0)} (") and f"CUDA {torch.version.cuda}" in gpu


def test_same_seed_same_metrics(tmp_path):
    a = train(tiny_config(tmp_path, trainer={"max_epochs": 1, "benchmark_batches": 0}), run_dir=tmp_path / "a")
    b = train(tiny_config(tmp_path, trainer={"max_epochs": 1, "benchmark_batches": 0}), run_dir=tmp_path / "b")
    assert a["metrics"] == b["metrics"]
    assert a["metrics"]["train/loss_epoch"] > 0


def test_nan_loss_stops_with_recorded_error(tmp_path):
    config = tiny_config(tmp_path, optim={"lr": 1e30, "warmup_epochs": 0},
                         trainer={"max_epochs": 2, "limit_train_batches": 6})
    with pytest.raises(TrainingDiverged) as e:
        train(config, run_dir=tmp_path / "nan")
    saved = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert saved["status"] == "diverged" and "train/loss became" in saved["error"]
    assert "nan" in saved["error"].lower() or "inf" in saved["error"].lower()
    assert e.value.summary["status"] == "diverged"


def test_rpe_tables_excluded_from_weight_decay_by_default(tmp_path):
    config = tiny_config(tmp_path)
    names = no_decay_names(build_model(config, 10), config)
    assert names and all(".rpe_k.lookup_table_weight" in n for n in names) and len(names) == 2  # depth 2
    decayed = tiny_config(tmp_path, optim={"decay_rpe_tables": True})
    assert no_decay_names(build_model(decayed, 10), decayed) == []


@pytest.mark.slow
def test_recompute_weights_trains_the_same_model(tmp_path):
    """``model.recompute_weights`` reaches every iRPE layer and changes memory, not maths: two seeded runs with
    it off and on end with the same validation loss (up to float rounding over the steps)."""
    from irpe_bench.models import RPEAttention

    config = tiny_config(tmp_path, model={"recompute_weights": True, "rpe": {"on": "qkv"}})
    layers = [m for m in build_model(config, 10).modules() if isinstance(m, RPEAttention)]
    assert len(layers) == 2 and all(m.recompute_weights for m in layers)
    losses = [train(tiny_config(tmp_path, model={"recompute_weights": r, "rpe": {"on": "qkv"}}),
                    run_dir=tmp_path / f"r{r}")["metrics"]["val/loss"] for r in (False, True)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_optimizer_groups_follow_deit_recipe(tmp_path):
    import lightning.pytorch as pl

    from irpe_bench.train.data import build_datamodule
    from irpe_bench.train.module import ClassificationModule

    config = tiny_config(tmp_path, optim={"scale_lr": True, "lr": 5e-4})
    net = build_model(config, 10)
    module = ClassificationModule(net, 10, config.optim, config.data, no_decay_names(net, config))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.fit(module, datamodule=build_datamodule(config.data, 16, 0))
    groups = trainer.optimizers[0].param_groups
    by_id = {id(p): n for n, p in net.named_parameters()}
    no_decay = {by_id[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {by_id[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias",
            "blocks.1.attn.rpe_k.lookup_table_weight"} <= no_decay
    assert "blocks.0.attn.qkv.weight" in decay and "head.weight" in decay
    assert module.lr == pytest.approx(5e-4 * 32 / 512)


def test_inference_benchmark_runs_without_autograd_and_returns_the_model(tmp_path):
    from irpe_bench.train.throughput import benchmark_inference

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), self.training))
            return self.lin(x.flatten(1))

    model = Probe().train()
    out = benchmark_inference(model, batch_size=2, img_size=4, precision="32-true", device=torch.device("cpu"),
                              warmup=1, batches=2, repeats=2)
    assert out["throughput/infer_img_s"] > 0 and out["throughput/infer_batch_size"] == 2
    assert seen == [(True, False)] * 5  # inference mode, eval mode, every forward (1 warm-up, 2 × 2 timed)
    assert model.training and next(model.parameters()).device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_run_reports_the_gpu_it_trained_and_benchmarked_on(tmp_path):
    """Lightning moves the module back to the CPU after fit: the summary must still name the GPU, and the
    inference benchmark must run there (it once measured the CPU and called it ``cpu``)."""
    config = tiny_config(tmp_path, trainer={"accelerator": "gpu", "precision": "bf16-mixed"})
    summary = train(config, run_dir=tmp_path / "run")
    assert summary["status"] == "finished" and summary["throughput/precision"] == "bf16-mixed"
    assert summary["throughput/device"].startswith(f"cuda: {torch.cuda.get_device_name(0)} (")
    assert summary["selection"] == "best_val" and 0 <= summary["test/acc1"] <= 100
    assert summary["throughput/infer_img_s"] > 0


@pytest.mark.slow
def test_compute_time_counts_the_loops_batches_and_nothing_around_them(tmp_path):
    """``time/compute_s``: a pause inside a training batch counts, pauses at fit start and at epoch ends (where
    checkpoints and loggers work) do not; every loop is timed, validation not twice; the trial records it."""
    import time

    import lightning.pytorch as pl

    from irpe_bench.keys import COMPUTE_S, COMPUTE_S_LOOPS, RECORDED

    class Pauses(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            time.sleep(0.5)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            time.sleep(0.05)

        def on_train_epoch_end(self, trainer, pl_module):
            time.sleep(0.5)

    config = tiny_config(tmp_path, trainer={"limit_train_batches": 4, "limit_val_batches": 2, "max_epochs": 2,
                                            "benchmark_batches": 0})
    t0 = time.perf_counter()
    summary = train(config, run_dir=tmp_path / "run", wandb_id=None, callbacks=[Pauses()])
    wall = time.perf_counter() - t0
    loops = summary[COMPUTE_S_LOOPS]
    assert set(loops) == {"train", "validation", "test"} and all(v > 0 for v in loops.values())
    assert loops["train"] >= 8 * 0.05  # the pauses inside the eight training batches
    assert summary[COMPUTE_S] == pytest.approx(sum(loops.values()))
    assert summary[COMPUTE_S] <= wall - 3 * 0.5  # the pauses outside batches are overhead
    assert COMPUTE_S in RECORDED  # a sweep trial keeps it (bench_trial_cost.py reads it from the storage)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved[COMPUTE_S] == pytest.approx(summary[COMPUTE_S])
