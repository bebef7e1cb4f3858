"""The leaderboard as data: a pure function of an Optuna study's storage (no files, no plotting here).

Why it is built the way it is:

* **Groups, not trials.** A variant's accuracy is only meaningful across seeds, so COMPLETE trials are grouped
  by the ``config_key`` the objective stores (the resolved config minus the seed) and reported as mean and
  *sample* standard deviation (n - 1; none for a single seed, where a spread cannot be estimated).
* **Δ only against a true baseline.** An iRPE group is compared with the no-RPE group whose flattened config
  equals its own on every key except ``model.rpe*`` and ``seed``. Anything else (a different epoch count,
  ``abs_pos``, dataset) would credit iRPE with an effect it did not cause, so then there is no Δ at all.
  Speed ratios further need both groups timed on one and the same device / precision / batch size.
* **Storage is the source of truth.** Everything comes from trial states, values, intermediate values and
  attributes; nothing reads the clock, so collecting twice gives the same board (running trials get no
  duration for that reason).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..sweep.budget import DISCARDED

IGNORED_FOR_BASELINE = ("model.rpe", "seed")  # keys (and their dotted children) a baseline may differ in

# Per-trial metrics the objective stores in ``user_attrs`` under these names.
M_ACC1, M_ACC1_BEST, M_PARAMS, M_MACS = "val/acc1", "val/acc1_best", "params", "macs"


def _pct(x: Any) -> Optional[float]:
    """Accuracy as stored (torchmetrics' fraction, also the trial value and the pruner's intermediate values)
    → percent, the unit of every table and plot. Rounded at 1e-9 so that 0.745 shows as 74.5, not 74.499…"""
    return None if x is None else round(100.0 * float(x), 9)
M_TRAIN, M_INFER = "throughput/train_img_s", "throughput/infer_img_s"
M_DEVICE, M_PRECISION, M_BATCH = "throughput/device", "throughput/precision", "throughput/batch_size"


@dataclass
class TrialRow:
    """One trial in any state, flattened for tables; metrics are ``None`` where the trial did not get there."""

    number: int
    state: str  # Optuna's TrialState name: COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    status: Optional[str]  # the objective's own word: finished, diverged, pruned, failed, invalid, running
    variant: str
    config_key: Optional[str]
    baseline: bool
    seed: Optional[int]
    value: Optional[float]
    acc1_final: Optional[float]
    acc1_best: Optional[float]
    params: Optional[int]
    macs: Optional[int]
    train_img_s: Optional[float]
    infer_img_s: Optional[float]
    device: Optional[str]
    epochs: Optional[int]
    epochs_reported: int  # number of intermediate values = the epoch a pruned trial reached
    last_acc1: Optional[float]  # the last intermediate value
    wall_s: Optional[float]
    duration_s: Optional[float]
    reason: Optional[str]
    retry_of: Optional[int]
    run_dir: Optional[str]
    wandb_id: Optional[str]


@dataclass
class GroupRow:
    """One resolved config (all its seeds): the unit that is ranked and compared with its baseline."""

    rank: int
    variant: str
    config_key: str
    baseline: bool
    method: Optional[str]  # RPE columns are None for the no-RPE baseline
    mode: Optional[str]
    on: Optional[str]
    index: Optional[str]
    coefficients: Optional[str]  # α:β:γ, e.g. "1.9:3.8:15.2"
    shared: Optional[bool]
    layers: Optional[str]  # "all" or "0,1,2"
    abs_pos: Optional[bool]
    n: int
    seeds: List[int]
    acc1_best_mean: float
    acc1_best_std: Optional[float]  # sample std (n - 1); None when n == 1
    acc1_final_mean: Optional[float]
    params: Optional[int]
    macs: Optional[int]
    train_img_s: Optional[float]
    infer_img_s: Optional[float]
    device: Optional[str]  # "device / precision / batch size" when every seed was timed on the same one
    baseline_key: Optional[str]  # config_key of the baseline group compared against
    delta_acc1: Optional[float]
    train_speed: Optional[float]  # train img/s ÷ the baseline's
    infer_speed: Optional[float]
    delta_params: Optional[int]
    trials: List[int]
    run_dirs: List[str]


@dataclass
class Leaderboard:
    """Everything a report shows, as plain data (``dataclasses.asdict`` gives JSON-ready dicts)."""

    study_name: str
    direction: str
    sweep: Dict[str, Any]
    counts: Dict[str, int]
    groups: List[GroupRow] = field(default_factory=list)
    trials: List[TrialRow] = field(default_factory=list)
    failed: List[TrialRow] = field(default_factory=list)  # FAIL trials nobody retried
    retried: List[TrialRow] = field(default_factory=list)  # FAIL trials whose outcome a retry carries
    pruned: List[TrialRow] = field(default_factory=list)
    running: List[TrialRow] = field(default_factory=list)

    @property
    def best(self) -> Optional[GroupRow]:
        return self.groups[0] if self.groups else None


# ------------------------------------------------------------------------------------------------ trials
def _num(x: Any) -> Optional[float]:
    return None if x is None or isinstance(x, bool) else float(x)


def _int(x: Any) -> Optional[int]:
    return None if x is None or isinstance(x, bool) else int(x)


def _retry_of(t: FrozenTrial) -> Optional[int]:
    """The trial this one retried: the last entry of the retry callback's ``retry_history`` (a system attribute,
    correct even before the objective runs — a waiting retry carries a *copy* of the killed trial's user
    attributes, ``retry_of`` included), else the objective's ``retry_of``."""
    history = t.system_attrs.get("retry_history")
    return _int(history[-1]) if history else _int(t.user_attrs.get("retry_of"))


def _is_baseline(t: FrozenTrial) -> bool:
    if "baseline" in t.user_attrs:
        return bool(t.user_attrs["baseline"])
    config = t.user_attrs.get("config") or {}
    return "model.rpe" in config and config["model.rpe"] is None


def _device(ua: Mapping[str, Any]) -> Optional[str]:
    parts = [ua.get(M_DEVICE), ua.get(M_PRECISION), ua.get(M_BATCH)]
    return None if parts[0] is None else " / ".join(str(p) for p in parts if p is not None)


def trial_row(t: FrozenTrial) -> TrialRow:
    """A table row for one stored trial; the reason is the objective's ``error``, else Optuna's own."""
    ua = t.user_attrs
    done = t.datetime_start is not None and t.datetime_complete is not None
    steps = sorted(t.intermediate_values)
    return TrialRow(
        number=t.number, state=t.state.name, status=ua.get("status"),
        variant=str(ua.get("variant") or f"trial-{t.number}"), config_key=ua.get("config_key"),
        baseline=_is_baseline(t), seed=_int(ua.get("seed")),
        value=_pct(t.value) if t.state == TrialState.COMPLETE else None,
        acc1_final=_pct(_num(ua.get(M_ACC1))), acc1_best=_pct(_num(ua.get(M_ACC1_BEST))),
        params=_int(ua.get(M_PARAMS)), macs=_int(ua.get(M_MACS)),
        train_img_s=_num(ua.get(M_TRAIN)), infer_img_s=_num(ua.get(M_INFER)), device=_device(ua),
        epochs=_int(ua.get("epochs")), epochs_reported=len(steps),
        last_acc1=_pct(t.intermediate_values[steps[-1]]) if steps else None,
        wall_s=_num(ua.get("wall_s")),
        duration_s=(t.datetime_complete - t.datetime_start).total_seconds() if done else None,
        reason=ua.get("error") or t.system_attrs.get("fail_reason"),
        retry_of=_retry_of(t), run_dir=ua.get("run_dir"), wandb_id=ua.get("wandb_id"),
    )


# ------------------------------------------------------------------------------------------------ groups
def _mean(xs: Iterable[Optional[float]]) -> Optional[float]:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def _sample_std(xs: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (Bessel, n - 1): seeds are a sample of the training noise, not all of it."""
    return statistics.stdev(xs) if len(xs) >= 2 else None


def _first(xs: Iterable[Optional[Any]]) -> Optional[Any]:
    return next((x for x in xs if x is not None), None)


def comparable(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config without the keys a baseline may differ in (``model.rpe`` and its children, ``seed``)."""
    def ignored(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in IGNORED_FOR_BASELINE)

    return {k: v for k, v in config.items() if not ignored(k)}


def _rpe_columns(config: Mapping[str, Any]) -> Dict[str, Any]:
    get = config.get
    if get("model.rpe.method") is None:
        return dict(method=None, mode=None, on=None, index=None, coefficients=None, shared=None, layers=None)
    coeffs = [get(f"model.rpe.{k}") for k in ("alpha", "beta", "gamma")]
    layers = get("model.rpe.layers")
    return dict(
        method=get("model.rpe.method"), mode=get("model.rpe.mode"), on=get("model.rpe.on"),
        index=get("model.rpe.index"),
        coefficients=None if None in coeffs else ":".join(f"{float(c):g}" for c in coeffs),
        shared=get("model.rpe.shared_head"),
        layers=None if layers is None else layers if isinstance(layers, str) else ",".join(map(str, layers)),
    )


def _group(key: str, trials: List[Tuple[FrozenTrial, TrialRow]]) -> Tuple[GroupRow, Dict[str, Any]]:
    trials = sorted(trials, key=lambda tr: tr[0].number)
    rows = [r for _, r in trials]
    config = dict(trials[0][0].user_attrs.get("config") or {})
    best = [_pct(t.value) for t, _ in trials]
    devices = {r.device for r in rows}
    row = GroupRow(
        rank=0, variant=rows[0].variant, config_key=key, baseline=rows[0].baseline, **_rpe_columns(config),
        abs_pos=config.get("model.abs_pos"), n=len(rows), seeds=[r.seed for r in rows if r.seed is not None],
        acc1_best_mean=statistics.fmean(best), acc1_best_std=_sample_std(best),
        acc1_final_mean=_mean(r.acc1_final for r in rows),
        params=_first(r.params for r in rows), macs=_first(r.macs for r in rows),
        train_img_s=_mean(r.train_img_s for r in rows), infer_img_s=_mean(r.infer_img_s for r in rows),
        device=devices.pop() if len(devices) == 1 else None,
        baseline_key=None, delta_acc1=None, train_speed=None, infer_speed=None, delta_params=None,
        trials=[r.number for r in rows], run_dirs=[r.run_dir for r in rows if r.run_dir],
    )
    return row, comparable(config)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _compare(row: GroupRow, base: GroupRow) -> None:
    row.baseline_key = base.config_key
    row.delta_acc1 = row.acc1_best_mean - base.acc1_best_mean
    if row.params is not None and base.params is not None:
        row.delta_params = row.params - base.params
    if row.device is not None and row.device == base.device:  # speeds from different machines do not divide
        row.train_speed = _ratio(row.train_img_s, base.train_img_s)
        row.infer_speed = _ratio(row.infer_img_s, base.infer_img_s)


def _rank_key(g: GroupRow) -> Tuple[float, float, str]:
    infer = g.infer_img_s if g.infer_img_s is not None else float("-inf")
    return (-g.acc1_best_mean, -infer, g.config_key)


def collect(study: optuna.Study) -> Leaderboard:
    """Read every trial of ``study`` and build the ranked, baseline-compared board."""
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    pairs = [(t, trial_row(t)) for t in frozen]
    rows = [r for _, r in pairs]

    by_key: Dict[str, List[Tuple[FrozenTrial, TrialRow]]] = {}
    for t, r in pairs:
        if t.state == TrialState.COMPLETE and t.value is not None:
            by_key.setdefault(r.config_key or f"trial-{t.number}", []).append((t, r))
    built = [_group(k, v) for k, v in sorted(by_key.items())]

    baselines = sorted((b for b in built if b[0].baseline), key=lambda b: (-b[0].n, b[0].config_key))
    for row, cfg in built:
        base = next((b for b, bcfg in baselines if bcfg == cfg), None)
        if base is not None:
            _compare(row, base)

    groups = sorted((g for g, _ in built), key=_rank_key)
    for i, g in enumerate(groups, 1):
        g.rank = i

    retried_numbers = {r.retry_of for r in rows if r.retry_of is not None}
    discarded = [r for r in rows if r.state == TrialState.FAIL.name and r.status == DISCARDED]
    rows = [r for r in rows if r not in discarded]  # over-budget duplicates of a worker race: never trained
    fail = [r for r in rows if r.state == TrialState.FAIL.name]
    failed = [r for r in fail if r.number not in retried_numbers]
    retried = [r for r in fail if r.number in retried_numbers]
    pruned = [r for r in rows if r.state == TrialState.PRUNED.name]
    running = [r for r in rows if r.state == TrialState.RUNNING.name]
    counts = {
        "total": len(rows), "complete": sum(r.state == TrialState.COMPLETE.name for r in rows),
        "pruned": len(pruned), "failed": len(failed), "retried": len(retried), "running": len(running),
        "discarded": len(discarded),
        "waiting": sum(r.state == TrialState.WAITING.name for r in rows), "groups": len(groups),
    }
    return Leaderboard(
        study_name=study.study_name, direction=study.direction.name.lower(),
        sweep=dict(study.user_attrs.get("sweep") or {}), counts=counts, groups=groups, trials=rows,
        failed=failed, retried=retried, pruned=pruned, running=running,
    )
