"""The leaderboard as data: a pure function of an Optuna study's storage (no files, no plotting here).

Why it is built the way it is:

* **Groups, not trials.** A variant's accuracy is only meaningful across seeds, so COMPLETE trials are grouped
  by the ``config_key`` the objective stores (the resolved config minus the seed) and reported with n, mean and
  Student-t 95 % CI (``stats``; the BCa bootstrap where a t interval would leave [0, 100]); none for a single
  seed, where a spread cannot be estimated. Stalled runs (``stalls.py``: best validation top-1 more than 10
  points below the row's median) are counted per row and named, never dropped.
* **An unbiased metric.** Rows rank by ``test/acc1`` (the held-out test split at the epoch chosen on
  validation) when every complete trial has it; otherwise by the trial value, the best-over-epochs validation
  accuracy, and the board says it is optimistic. The order is mean, then config key (never speed); what the
  data support is the rank band, from Holm-adjusted pairwise tests.
* **Δ only against a true baseline.** An iRPE group (or another family's, ``model.pos``) is compared with the
  group without relative encoding whose flattened config equals its own on every key except ``model.rpe*``,
  ``model.pos*`` and ``seed``. Anything else (a different epoch count,
  ``abs_pos``, dataset) would credit iRPE with an effect it did not cause, so then there is no Δ at all.
  The difference is a paired t-test over common seeds (Welch's where seeds do not pair), Holm-adjusted across
  the study's rows; the minimum detectable difference is at Holm's first step over those rows (0.05 / m).
  Speed ratios (medians) further need both groups timed on one and the same device key.
* **Accuracy against cost** (several objectives, constraints, repeated seeds): read by ``objectives.py``; the
  Pareto front is over group means with the ranking metric for accuracy, and each seed of a repeated trial is one
  sample (one ``trials.csv`` row). A study without them gets the board it always got.
* **Storage is the source of truth.** Everything comes from trial states, values, intermediate values and
  attributes; nothing reads the clock, so collecting twice gives the same board (running trials get no
  duration for that reason).
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import keys as K
from ..keys import DISCARDED
from ..redact import redact
from . import objectives as O
from .intervals import ACCURACY_BOUNDS
from .looks import summarise
from .stalls import STALL_MARGIN, stalled
from .stats import GroupStats, one_per_seed, study_stats

IGNORED_FOR_BASELINE = ("model.rpe", "model.pos", "seed")  # keys (and their dotted children) a baseline may differ in

# Per-trial metrics the objective stores in ``user_attrs`` under these names.
M_ACC1, M_ACC1_BEST, M_PARAMS, M_MACS = K.MONITOR, K.MONITOR_BEST, K.PARAMS, K.MACS
M_TEST_ACC1, M_TEST_ACC5, M_TEST_LOSS, M_TEST_EPOCH = K.TEST_ACC1, K.TEST_ACC5, K.TEST_LOSS, K.TEST_EPOCH
M_TRAIN, M_INFER = K.TRAIN_IMG_S, K.INFER_IMG_S
M_DEVICE, M_PRECISION, M_BATCH = K.DEVICE, K.PRECISION, K.BATCH_SIZE

# The ranking metric, as the ``trials.csv`` column it is read from: the held-out test accuracy at the epoch chosen
# on validation; studies made before there was a test split fall back to the trial value (best-over-epochs
# validation accuracy, optimistic: the same images chose the epoch).
METRIC_TEST, METRIC_VAL_BEST = "test_acc1", "value"
METRIC_LABELS = {METRIC_TEST: "test acc1", METRIC_VAL_BEST: "val acc1 best (optimistic)"}


def _pct(x: Any, ua: Mapping[str, Any]) -> Optional[float]:
    """An accuracy as stored (a user attribute, the trial value, an intermediate value) → percent, the unit of
    every table and plot, whatever unit the trial stored it in (:func:`irpe_bench.keys.percent`)."""
    return None if x is None else K.percent(float(x), ua)


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
    test_acc1: Optional[float]  # percent, at the epoch ``selection`` chose on validation
    test_acc5: Optional[float]
    test_loss: Optional[float]
    test_epoch: Optional[int]
    selection: Optional[str]  # "best_val" | "final"
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
    # constrained studies only (left out of trials.csv and the json otherwise): None = not known (not finished)
    feasible: Optional[bool] = None
    violated: Optional[str] = None  # the broken constraints with their relative violation
    # studies with ``eval.img_sizes`` only: test top-1 (percent) at each other image size, on the same checkpoint
    test_acc1_by_size: Optional[Dict[str, float]] = None


@dataclass
class GroupRow:
    """One resolved config (all its seeds): the unit that is ranked and compared with its baseline.

    Metric fields (``mean``, ``ci95``, ``delta`` …) are in percent of the board's ranking ``metric``; the
    statistics are those of ``stats.study_stats``.
    """

    rank: int  # position in the table: mean metric, then config key (determinism only, not a claim)
    rank_band: str  # the ranks the data allow, "1–3" ("2" when resolved): rows not separated share one
    band: List[int]  # [low, high] of rank_band
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
    mean: float  # the ranking metric over seeds
    sd: Optional[float]  # sample SD (n - 1); None when n == 1
    ci95: Optional[List[float]]  # 95 % CI of the mean (ci_method); None when n == 1
    ci_method: Optional[str]  # "Student t", or "BCa bootstrap" where the t interval leaves [0, 100]
    acc1_best_mean: float  # the trial value: best-over-epochs validation acc1 (optimistic)
    acc1_best_std: Optional[float]
    stalled: Optional[int]  # runs whose best val acc1 is > STALL_MARGIN below the row's median; None for n < 3
    stalled_seeds: List[int]  # their seeds
    acc1_final_mean: Optional[float]  # validation acc1 at the final epoch
    test_acc5_mean: Optional[float]
    params: Optional[int]
    macs: Optional[int]
    train_img_s: Optional[float]  # median over the group's trials
    train_img_s_range: Optional[List[float]]  # [min, max] over the group's trials
    infer_img_s: Optional[float]
    infer_img_s_range: Optional[List[float]]
    device: Optional[str]  # "device / precision / batch size" when every seed was timed on the same one
    baseline_key: Optional[str]  # config_key of the baseline group compared against
    test: Optional[str]  # "paired t" | "Welch t" | None (no test possible)
    n_pairs: Optional[int]  # seeds paired with the baseline's (paired test)
    delta: Optional[float]  # metric difference to the baseline (mean of the paired differences)
    delta_ci95: Optional[List[float]]
    p_value: Optional[float]
    p_holm: Optional[float]  # Holm-adjusted over the study's rows that have a p-value
    significant: Optional[bool]  # p_holm < 0.05
    verdict: Optional[str]  # "higher" | "lower" | "not resolved" | "not resolved after Holm"
    sd_diff: Optional[float]  # SD of the paired differences to the baseline
    train_speed: Optional[float]  # median train img/s ÷ the baseline's (same device only)
    infer_speed: Optional[float]
    delta_params: Optional[int]
    trials: List[int]
    run_dirs: List[str]
    feasible: Optional[bool] = None  # constrained studies only: False when any of the group's trials is infeasible
    pareto: Optional[bool] = None  # multi-objective studies only: on the front of the group means (``objectives``)
    # studies with ``eval.img_sizes`` only: {size: {n, mean, ci95, delta, delta_ci95, test, p_holm}} of test top-1
    # at that size, Δ against the row's baseline or reference as at the training size, Holm over rows per size
    by_img_size: Optional[Dict[str, Dict[str, Any]]] = None


@dataclass
class Leaderboard:
    """Everything a report shows, as plain data (``dataclasses.asdict`` gives JSON-ready dicts)."""

    study_name: str
    direction: str
    sweep: Dict[str, Any]
    counts: Dict[str, int]
    metric: str = METRIC_TEST  # the trials.csv column the ranking uses
    metric_label: str = METRIC_LABELS[METRIC_TEST]
    optimistic: bool = False  # True when the metric is the validation accuracy that also chose the epoch
    metric_note: Optional[str] = None  # why the metric fell back
    has_uncertainty: bool = False  # False for a one-seed study: no CI, no test, every band 1–N
    reference: Optional[str] = None  # study.reference: the variant every row is compared with (None: matched)
    mdd: Optional[float] = None  # minimum detectable paired difference at 80 % power, level mdd_alpha (metric units)
    mdd_alpha: Optional[float] = None  # Holm's first step over the rows tested vs baseline: 0.05 / mdd_family
    mdd_family: int = 0  # rows with a p-value vs baseline (the family Holm adjusts over)
    mdd_sd: Optional[float] = None  # root-mean-square of the rows' paired-difference SDs vs baseline
    mdd_n: Optional[int] = None  # pairs assumed (smallest n_pairs of those rows)
    mdd_rows: int = 0  # rows pooled into mdd_sd
    stall_margin: float = STALL_MARGIN  # the stall rule's margin (points of best val acc1 below the row median)
    # multi-objective studies only: [{key: GroupRow field, direction, metric, optimised}] (``objectives.py``)
    objectives: Optional[List[Dict[str, str]]] = None
    constraints: Optional[List[str]] = None  # constrained studies only: the constraint texts
    repeats: Optional[int] = None  # seeds per trial, when more than one (each seed is one sample)
    # seeds-until-decided studies only: the design and each row's last look (``looks.summarise``)
    sequential: Optional[Dict[str, Any]] = None
    img_sizes: Optional[List[int]] = None  # studies with ``eval.img_sizes`` only: the other sizes tested
    img_size_mdd: Optional[Dict[str, Optional[float]]] = None  # and each size's minimum detectable difference
    groups: List[GroupRow] = field(default_factory=list)
    trials: List[TrialRow] = field(default_factory=list)
    failed: List[TrialRow] = field(default_factory=list)  # FAIL trials nobody retried
    retried: List[TrialRow] = field(default_factory=list)  # FAIL trials whose outcome a retry carries
    pruned: List[TrialRow] = field(default_factory=list)
    running: List[TrialRow] = field(default_factory=list)

    @property
    def best(self) -> Optional[GroupRow]:
        return self.groups[0] if self.groups else None

    def omitted(self) -> Dict[str, Tuple[str, ...]]:
        """Fields a study of old lacks, left out of its files (``objectives.omitted_fields``)."""
        return O.omitted_fields(self)


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


def _value(t: FrozenTrial, goals: Optional[O.Goals], entry: Optional[Mapping[str, Any]]) -> Optional[float]:
    """The trial value in percent (best validation accuracy): one seed's own, or the accuracy objective's."""
    if t.state != TrialState.COMPLETE:
        return None
    if entry is not None:
        return _pct(_num(entry.get(M_ACC1_BEST)), t.user_attrs)
    return _pct(t.value if goals is None else O.accuracy_value(t, goals), t.user_attrs)


def trial_row(t: FrozenTrial, goals: Optional[O.Goals] = None, entry: Optional[Mapping[str, Any]] = None) -> TrialRow:
    """A table row for one stored trial, or for one seed (``entry`` of its ``repeats``) of a trial that trained
    several; the reason is the objective's ``error``, else Optuna's own."""
    ua = t.user_attrs if entry is None else O.seed_attrs(t, entry)
    done = t.datetime_start is not None and t.datetime_complete is not None
    steps = sorted(t.intermediate_values)
    return TrialRow(
        number=t.number, state=t.state.name, status=ua.get("status"),
        variant=str(ua.get("variant") or f"trial-{t.number}"), config_key=ua.get("config_key"),
        baseline=_is_baseline(t), seed=_int(ua.get("seed")),
        value=_value(t, goals, entry),
        acc1_final=_pct(_num(ua.get(M_ACC1)), ua), acc1_best=_pct(_num(ua.get(M_ACC1_BEST)), ua),
        test_acc1=_pct(_num(ua.get(M_TEST_ACC1)), ua), test_acc5=_pct(_num(ua.get(M_TEST_ACC5)), ua),
        test_loss=_num(ua.get(M_TEST_LOSS)), test_epoch=_int(ua.get(M_TEST_EPOCH)), selection=ua.get("selection"),
        params=_int(ua.get(M_PARAMS)), macs=_int(ua.get(M_MACS)),
        train_img_s=_num(ua.get(M_TRAIN)), infer_img_s=_num(ua.get(M_INFER)), device=_device(ua),
        epochs=_int(ua.get("epochs")), epochs_reported=len(steps),
        last_acc1=_pct(t.intermediate_values[steps[-1]], ua) if steps else None,
        wall_s=_num(ua.get("wall_s")),
        duration_s=(t.datetime_complete - t.datetime_start).total_seconds() if done else None,
        reason=redact(ua.get("error") or t.system_attrs.get("fail_reason")),  # every format reads it from here
        retry_of=_retry_of(t), run_dir=ua.get("run_dir"), wandb_id=ua.get("wandb_id"),
        feasible=O.feasible(t), violated=O.violated(t), test_acc1_by_size=_by_size(ua),
    )


def _by_size(ua: Mapping[str, Any]) -> Optional[Dict[str, float]]:
    by_size = ua.get(K.TEST_BY_SIZE)
    if not isinstance(by_size, Mapping):
        return None
    return {str(size): _pct(_num(m.get("acc1")), ua) for size, m in sorted(by_size.items(), key=lambda i: int(i[0]))
            if isinstance(m, Mapping) and m.get("acc1") is not None}


class AtSizes(NamedTuple):
    sizes: List[int]
    rows: Dict[str, Dict[str, Dict[str, Any]]]  # config key -> size -> statistics
    mdd: Dict[str, Optional[float]]  # size -> minimum detectable difference (as the ranking's, at that size)


def at_other_sizes(by_key: Mapping[str, Sequence[Tuple[FrozenTrial, TrialRow]]],
                   baseline_of: Mapping[str, Optional[str]]) -> AtSizes:
    """Per size the rows' test top-1 at that size, with the same statistics as the ranking (``study_stats``: mean
    and CI, Δ against the same baseline or reference, paired t over common seeds, Holm over the rows tested at
    that size, the minimum detectable difference at Holm's first step)."""
    sizes = sorted({int(s) for rows in by_key.values() for _, r in rows for s in (r.test_acc1_by_size or {})})
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    mdd: Dict[str, Optional[float]] = {}
    for size in map(str, sizes):
        groups = {k: [(r.seed, r.test_acc1_by_size[size]) for _, r in rows
                      if r.test_acc1_by_size and r.test_acc1_by_size.get(size) is not None]
                  for k, rows in by_key.items()}
        groups = {k: v for k, v in groups.items() if v}
        st = study_stats(groups, {k: b for k, b in baseline_of.items() if b in groups}, ACCURACY_BOUNDS)
        mdd[size] = st.mdd
        for k, g in st.groups.items():
            out.setdefault(k, {})[size] = {"n": g.n, "mean": g.mean, "ci95": g.ci95, "delta": g.delta,
                                           "delta_ci95": g.delta_ci95, "test": g.test, "n_pairs": g.n_pairs,
                                           "p_holm": g.p_holm}
    return AtSizes(sizes, out, mdd)


# ------------------------------------------------------------------------------------------------ groups
def _mean(xs: Iterable[Optional[float]]) -> Optional[float]:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def _sample_std(xs: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (Bessel, n - 1): seeds are a sample of the training noise, not all of it."""
    return statistics.stdev(xs) if len(xs) >= 2 else None


def _median_range(xs: Iterable[Optional[float]]) -> Tuple[Optional[float], Optional[List[float]]]:
    """Median and [min, max] over the trials that measured it: one slow trial does not move a median."""
    vals = [x for x in xs if x is not None]
    return (statistics.median(vals), [min(vals), max(vals)]) if vals else (None, None)


def _first(xs: Iterable[Optional[Any]]) -> Optional[Any]:
    return next((x for x in xs if x is not None), None)


def comparable(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config without the keys a baseline may differ in (``model.rpe``, ``model.pos`` and their children,
    ``seed``) and without fields added later at their default (``keys.LATER_FIELDS``)."""
    def ignored(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in IGNORED_FOR_BASELINE)

    return {k: v for k, v in K.without_later_defaults(config).items() if not ignored(k)}


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


def metric_value(row: TrialRow, metric: str) -> Optional[float]:
    """The ranking metric of one trial (the ``trials.csv`` column of that name)."""
    return getattr(row, metric)


def choose_metric(rows: Sequence[TrialRow]) -> Tuple[str, Optional[str]]:
    """``test_acc1`` when every ranked trial has it, else the trial value (and why, to print)."""
    missing = sum(r.test_acc1 is None for r in rows)
    if not missing:
        return METRIC_TEST, None
    why = ("no trial has a test accuracy (made before the test split)" if missing == len(rows) else
           f"{missing} of {len(rows)} complete trials have no test accuracy")
    return METRIC_VAL_BEST, why


def _verdict(s: GroupStats) -> Optional[str]:
    if s.delta_ci95 is None:
        return None
    if s.delta_ci95[0] <= 0.0 <= s.delta_ci95[1]:
        return "not resolved"
    if not s.significant:
        return "not resolved after Holm"
    return "higher" if s.delta > 0 else "lower"


def _stalls(rows: Sequence[TrialRow]) -> Tuple[Optional[int], List[int]]:
    """Stalled runs of a row by the ``stalls`` rule, on best validation top-1, one sample per seed."""
    runs = one_per_seed([(r.seed, r.acc1_best if r.acc1_best is not None else r.value) for r in rows
                         if (r.acc1_best if r.acc1_best is not None else r.value) is not None])
    seeds = stalled(runs)
    return (None, []) if seeds is None else (len(seeds), [x for x in seeds if x is not None])


def _group(key: str, trials: List[Tuple[FrozenTrial, TrialRow]], s: GroupStats) -> GroupRow:
    rows = [r for _, r in trials]
    n_stalled, stalled_seeds = _stalls(rows)
    config = dict(trials[0][0].user_attrs.get("config") or {})
    best = [r.value for r in rows]
    devices = {r.device for r in rows}
    train, train_range = _median_range(r.train_img_s for r in rows)
    infer, infer_range = _median_range(r.infer_img_s for r in rows)
    return GroupRow(
        rank=s.rank, rank_band=s.rank_band, band=list(s.band), variant=rows[0].variant, config_key=key,
        baseline=rows[0].baseline, **_rpe_columns(config), abs_pos=config.get("model.abs_pos"), n=s.n,
        seeds=list(dict.fromkeys(r.seed for r in rows if r.seed is not None)), mean=s.mean, sd=s.sd, ci95=s.ci95,
        ci_method=s.ci_method, acc1_best_mean=statistics.fmean(best), acc1_best_std=_sample_std(best),
        stalled=n_stalled, stalled_seeds=stalled_seeds,
        acc1_final_mean=_mean(r.acc1_final for r in rows), test_acc5_mean=_mean(r.test_acc5 for r in rows),
        params=_first(r.params for r in rows), macs=_first(r.macs for r in rows),
        train_img_s=train, train_img_s_range=train_range, infer_img_s=infer, infer_img_s_range=infer_range,
        device=devices.pop() if len(devices) == 1 else None, baseline_key=s.baseline_key, test=s.test,
        n_pairs=s.n_pairs, delta=s.delta, delta_ci95=s.delta_ci95, p_value=s.p_value, p_holm=s.p_holm,
        significant=s.significant, verdict=_verdict(s), sd_diff=s.sd_diff, train_speed=None, infer_speed=None,
        delta_params=None, trials=list(dict.fromkeys(r.number for r in rows)),
        run_dirs=[r.run_dir for r in rows if r.run_dir],
    )


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _costs(row: GroupRow, base: GroupRow) -> None:
    """Parameter and speed differences to the baseline; speeds only when timed on the very same device key."""
    if row.params is not None and base.params is not None:
        row.delta_params = row.params - base.params
    if row.device is not None and row.device == base.device:  # speeds from different machines do not divide
        row.train_speed = _ratio(row.train_img_s, base.train_img_s)
        row.infer_speed = _ratio(row.infer_img_s, base.infer_img_s)


def _baselines(built: Dict[str, List[Tuple[FrozenTrial, TrialRow]]]) -> Dict[str, Optional[str]]:
    """config key → the key of the no-RPE group with the same config apart from ``model.rpe*`` and seed (the
    one with most trials, then the smallest key, if several)."""
    cfg = {k: comparable(v[0][0].user_attrs.get("config") or {}) for k, v in built.items()}
    bases = sorted((k for k, v in built.items() if v[0][1].baseline), key=lambda k: (-len(built[k]), k))
    return {k: next((b for b in bases if cfg[b] == cfg[k]), None) for k in built}


def _reference(built: Dict[str, List[Tuple[FrozenTrial, TrialRow]]], variant: str) -> Dict[str, Optional[str]]:
    """``study.reference``: config key → the reference row's key for every other row (the reference: None).
    A study with no complete trial yet has nothing to compare (its board says so); one whose complete rows do not
    include the reference is refused, naming them."""
    if not built:
        return {}
    keys = sorted(k for k, v in built.items() if v[0][1].variant == variant)
    if len(keys) != 1:
        found = "no complete row" if not keys else f"{len(keys)} rows ({keys})"
        raise ValueError(f"study.reference={variant!r}: {found} of this study has that variant; rows: "
                         f"{sorted({v[0][1].variant for v in built.values()})}")
    return {k: None if k == keys[0] else keys[0] for k in built}


def collect(study: optuna.Study) -> Leaderboard:
    """Read every trial of ``study`` and build the ranked, baseline-compared board."""
    goals = O.study_goals(study)
    frozen = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    pairs = [(t, trial_row(t, goals)) for t in frozen]
    rows = [r for _, r in pairs]
    # a trial that trained several seeds (``study.repeats``) gives one row, and one sample, per seed
    samples = [(t, s) for t, r in pairs for s in ([trial_row(t, goals, e) for e in O.seed_entries(t)] or [r])]

    done = [(t, r) for t, r in samples if t.state == TrialState.COMPLETE and t.values is not None
            and r.value is not None]
    metric, why = choose_metric([r for _, r in done])
    by_key: Dict[str, List[Tuple[FrozenTrial, TrialRow]]] = {}
    for t, r in done:
        by_key.setdefault(r.config_key or f"trial-{t.number}", []).append((t, r))
    reference = study.user_attrs.get(K.REFERENCE_ATTR)
    baseline_of = _reference(by_key, reference) if reference else _baselines(by_key)
    st = study_stats({k: [(r.seed, metric_value(r, metric)) for _, r in v] for k, v in by_key.items()},
                     baseline_of, ACCURACY_BOUNDS)
    groups = [_group(k, by_key[k], s) for k, s in st.groups.items()]  # rank order
    by_config = {g.config_key: g for g in groups}
    for g in groups:
        base = baseline_of.get(g.config_key)
        if base is not None:
            _costs(g, by_config[base])
        if goals.constraints:
            g.feasible = O.group_feasible([r.feasible for _, r in by_key[g.config_key]])
    if goals.multi:
        O.mark_pareto(groups, goals.objectives)
    at_sizes = at_other_sizes(by_key, baseline_of)
    for g in groups if at_sizes.sizes else ():
        g.by_img_size = at_sizes.rows.get(g.config_key, {})

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
        study_name=study.study_name, direction=", ".join(d.name.lower() for d in study.directions),
        sweep=dict(study.user_attrs.get("sweep") or {}), counts=counts, metric=metric,
        metric_label=METRIC_LABELS[metric], optimistic=metric == METRIC_VAL_BEST, metric_note=why,
        has_uncertainty=st.has_uncertainty, mdd=st.mdd, mdd_sd=st.mdd_sd, mdd_n=st.mdd_n, mdd_rows=st.mdd_rows,
        mdd_alpha=st.mdd_alpha, mdd_family=st.mdd_family, reference=reference or None,
        objectives=[asdict(o) for o in goals.objectives] if goals.multi else None,
        constraints=list(goals.constraints) or None, repeats=goals.repeats if goals.repeats > 1 else None,
        sequential=summarise(study.user_attrs.get(K.SEQUENTIAL_ATTR) or {}, frozen),
        img_sizes=at_sizes.sizes or None, img_size_mdd=at_sizes.mdd or None,
        groups=groups, trials=[r for _, r in samples if r.number not in {d.number for d in discarded}],
        failed=failed, retried=retried, pruned=pruned, running=running,
    )
