"""The words the training, sweep and report layers share: metric keys, the monitored metric, trial statuses.

One neutral module (it imports nothing of the package), so that ``train`` writes, ``sweep`` records and
``report`` reads the same names without importing one another (``docs/architecture.md``: dependencies point one way).

Metric keys follow ``split/metric``; accuracies are in percent (0–100) in every file and log — ``summary.json``,
the CSV and W&B logs, checkpoint names, the storage, the reports — and speeds in images/s. (Trials stored
before accuracies were percent hold fractions; :func:`percent` reads both.)
"""
from __future__ import annotations

import json
from typing import Any, Mapping

#: the metric that chooses: ``self.log``, checkpointing, pruning and the objective's value all read it
MONITOR = "val/acc1"
MONITOR_MODE = "max"
#: the best ``MONITOR`` over epochs (optimistic: the same images chose the epoch)
MONITOR_BEST = f"{MONITOR}_best"
VAL_ACC5, VAL_LOSS = "val/acc5", "val/loss"

#: the held-out test split at the epoch chosen on validation (never read by anything that chooses)
TEST_ACC1, TEST_ACC5, TEST_LOSS, TEST_EPOCH = "test/acc1", "test/acc5", "test/loss", "test/epoch"
#: how the tested checkpoint was chosen: ``"best_val"`` | ``"final"``
SELECTION = "selection"
TEST_KEYS = (TEST_ACC1, TEST_ACC5, TEST_LOSS, TEST_EPOCH, SELECTION)

PARAMS, MACS = "params", "macs"
TRAIN_IMG_S, TRAIN_IMG_S_EPOCHS = "throughput/train_img_s", "throughput/train_img_s_epochs"
INFER_IMG_S = "throughput/infer_img_s"
DEVICE, PRECISION, BATCH_SIZE = "throughput/device", "throughput/precision", "throughput/batch_size"
#: seconds inside training, validation and test batches (CPU runs; ``train/throughput.py`` ComputeTime): a
#: trial's time beyond it is the harness's overhead
COMPUTE_S, COMPUTE_S_LOOPS = "time/compute_s", "time/compute_s_loops"

#: the test split at other image sizes (``eval.img_sizes``), on the checkpoint ``test/*`` used:
#: ``{"48": {"acc1": …, "acc5": …, "loss": …}}`` (percent); loggers get ``test/acc1@48`` (:func:`at_size`)
TEST_BY_SIZE = "test/by_img_size"


def at_size(key: str, size: Any) -> str:
    """A metric key at an image size: ``test/acc1@48``."""
    return f"{key}@{size}"


#: a run's summary keys that a sweep copies into its trial's user attributes (when the run produced them):
#: ``val/acc1`` final epoch, ``val/acc1_best`` best over epochs (optimistic: it chose the epoch), ``test/acc1``,
#: ``test/acc5``, ``test/loss`` on the held-out test split at the chosen epoch, ``test/epoch`` (1-based) and
#: ``selection`` ("best_val" | "final"); speeds in images/s, ``throughput/train_img_s_epochs`` one per epoch
RECORDED = (MONITOR, MONITOR_BEST, VAL_ACC5, VAL_LOSS, *TEST_KEYS, PARAMS, MACS, TRAIN_IMG_S, TRAIN_IMG_S_EPOCHS,
            INFER_IMG_S, DEVICE, PRECISION, BATCH_SIZE, "epochs", "wall_s", COMPUTE_S, TEST_BY_SIZE)

#: a trial's user attribute naming the unit of its accuracies (values, intermediate values, user attributes):
#: ``"percent"``; absent on trials stored before, whose accuracies are fractions in [0, 1]
ACC_UNIT, PERCENT = "accuracy_unit", "percent"


def percent(value: Any, attrs: Mapping[str, Any]) -> Any:
    """An accuracy of a stored trial (its value, an intermediate value or a user attribute) in percent, whatever
    unit it was stored in (``attrs``: the trial's user attributes, or a seed's entry that carries them)."""
    if value is None or attrs.get(ACC_UNIT) == PERCENT:
        return value
    return round(100.0 * float(value), 9)  # NOTE: rounded at 1e-9 so that 0.745 reads 74.5, not 74.499…


# A run's ``status`` (``summary.json``) and a trial's (its ``status`` user attribute).
FINISHED, DIVERGED, STOPPED = "finished", "diverged", "stopped"  # a run (``train``)
RUNNING, PRUNED, FAILED, INVALID = "running", "pruned", "failed", "invalid"  # a trial (the objective) adds these
#: a trial created over the budget by a worker race: never trained, not counted, left out of the leaderboard
DISCARDED = "discarded"

#: the study's user attribute naming the reference row (``study.reference``, a variant slug); None: each iRPE row
#: against its config-matched no-RPE row
REFERENCE_ATTR = "reference"

#: the study's user attribute holding the seeds-until-decided design and every look (``study.seeds``; written by
#: ``sweep/decided.py``, shown by the leaderboard)
SEQUENTIAL_ATTR = "seeds_until_decided"


def row_key(params: Mapping[str, Any]) -> str:
    """A row of a grid study: a point's Optuna parameters without its seed (the looks of seeds until decided are
    recorded per row under this key)."""
    return json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True, default=str)

#: environment variable that overrides ``study.storage`` (keeps a password out of the sweep file, the workers'
#: command lines and W&B)
STORAGE_ENV = "IRPE_BENCH_STORAGE"

#: config fields added after studies were committed, with the default that reproduces what was trained before
#: them: a config key leaves them out at that default (a study resumed with newer code keeps its rows), and so
#: does the baseline match (old trials do not have them at all)
LATER_FIELDS = {"model.pos": None, "eval.img_sizes": []}


def without_later_defaults(flat: Mapping[str, Any]) -> dict:
    """``flat`` without the :data:`LATER_FIELDS` that hold their default."""
    return {k: v for k, v in flat.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
