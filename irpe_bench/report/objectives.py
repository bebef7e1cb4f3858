"""What a study optimised, as the report reads it from the storage: objectives, constraints and repeated seeds.

The sweep records it (``irpe_bench/sweep/objectives.py`` and ``repeats.py`` write; this module only reads, so
``report`` never imports ``sweep``):

* study user attributes ``objectives`` (``[{metric, attr, key, direction}]`` in ``trial.values`` order),
  ``constraints`` (``[{text, metric, …}]``) and ``repeats`` (seeds per trial);
* per trial, in a constrained study, ``feasible`` (bool) and ``constraints`` (``{text: violation}``, ≤ 0
  feasible), with Optuna's own copy in ``FrozenTrial.constraints``; with repeats, ``repeats``: one entry per
  seed (its own metrics, run directory and W&B id).

Why the board reads them this way:

* **The front uses the headline metric.** The sampler optimised validation accuracy (it must never see the test
  split); the leaderboard's Pareto front is over group means, and for accuracy it takes the board's ranking
  metric (test acc1 at the epoch chosen on validation), the number every other column reports. The cost
  objectives are the group's own columns: ``params`` / ``macs`` (one per configuration) and the median speeds.
* **Infeasible groups are never on the front**, as Optuna leaves infeasible trials out of ``best_trials``.
  A group is infeasible as soon as one of its trials is.
* **A seed is a sample.** A trial that trained k seeds contributes k values to its group (``n`` counts seeds), so
  CIs and paired tests are those of a study that searched the seed.

Everything is absent for a study of old (one objective, no constraints, one seed): its report stays as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import optuna
from optuna.trial import FrozenTrial

from .. import keys as K
from .stats import pareto_front

OBJECTIVES_ATTR, CONSTRAINTS_ATTR, REPEATS_ATTR = "objectives", "constraints", "repeats"
MEAN = "mean"  # the GroupRow field of the ranking metric: the front's accuracy
#: the objective metrics that are accuracy (whatever the sweep called them): the front reads the headline mean
ACCURACY_ATTRS = (K.MONITOR_BEST, K.MONITOR)
#: the cost objectives' GroupRow fields (the ``key`` the sweep gives them) → how tables and axes name them
COST_LABELS = {"params": "params", "macs": "MACs", "train_img_s": "train img/s (median)",
               "infer_img_s": "infer img/s (median)"}


def objective_label(key: str, metric_label: str) -> str:
    """``mean`` → the board's metric label (e.g. "test acc1"); a cost field → its label."""
    return metric_label if key == MEAN else COST_LABELS.get(key, key)


@dataclass(frozen=True)
class Objective:
    """One objective as the board shows it: ``key`` is the GroupRow field (json/csv) the front compares."""

    key: str
    direction: str  # "maximize" | "minimize"
    metric: str  # the sweep's metric name, e.g. "val_acc1", "params"
    optimised: str  # the trial user attribute the sampler saw, e.g. "val/acc1_best"


@dataclass(frozen=True)
class Goals:
    objectives: List[Objective] = field(default_factory=list)  # only for a multi-objective study
    constraints: List[str] = field(default_factory=list)  # the constraint texts; empty when unconstrained
    repeats: int = 1
    accuracy_index: Optional[int] = None  # the position of the accuracy objective in ``trial.values``
    declared: bool = False  # the study stores its objectives (else: a study of old, its value is the accuracy)

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1


def _is_accuracy(o: Mapping[str, Any]) -> bool:
    return o.get("attr") in ACCURACY_ATTRS or o.get("metric") == "val_acc1"


def study_goals(study: optuna.Study) -> Goals:
    """The study's objectives (several only), constraints and repeats; a study without the attributes (made
    before they existed) is the single-objective, unconstrained, one-seed study it was."""
    ua = study.user_attrs
    stored = list(ua.get(OBJECTIVES_ATTR) or [])
    directions = [d.name.lower() for d in study.directions]
    objectives: List[Objective] = []
    if len(directions) > 1:
        if len(stored) != len(directions):
            stored = [{"metric": f"objective {i}", "key": f"objective_{i}"} for i in range(len(directions))]
        for o, d in zip(stored, directions):
            key = MEAN if _is_accuracy(o) else str(o.get("key"))
            objectives.append(Objective(key, d, str(o.get("metric")), str(o.get("attr", o.get("metric")))))
    acc = next((i for i, o in enumerate(stored) if _is_accuracy(o)), None)
    constraints = [str(c.get("text")) for c in ua.get(CONSTRAINTS_ATTR) or []]
    if not constraints:  # constraints set by hand (or by an older sweep): Optuna's own record of them
        constraints = sorted({k for t in study.get_trials(deepcopy=False) for k in constraint_values(t)})
    repeats = ua.get(REPEATS_ATTR)
    return Goals(objectives, constraints, int(repeats) if isinstance(repeats, int) and repeats > 1 else 1, acc,
                 bool(ua.get(OBJECTIVES_ATTR)))


def accuracy_value(t: FrozenTrial, goals: Goals) -> Optional[float]:
    """The trial's validation accuracy as the sampler saw it (in the trial's unit, :func:`irpe_bench.keys.percent`
    reads it in percent): the single value of an old study, the
    accuracy objective's entry of ``trial.values`` in a multi-objective one, else the recorded best."""
    values = t.values
    if values is None:
        return None
    if goals.accuracy_index is not None and goals.accuracy_index < len(values):
        return float(values[goals.accuracy_index])
    if not goals.declared:
        return float(values[0])
    v = t.user_attrs.get(K.MONITOR_BEST)
    return None if v is None else float(v)


def constraint_values(t: FrozenTrial) -> Dict[str, float]:
    """Optuna's constraint values of a trial (``FrozenTrial.constraints`` from Optuna 5 on; before, the list in
    the ``constraints`` system attribute), ``{}`` when it has none."""
    con = getattr(t, "constraints", None)
    if isinstance(con, Mapping):
        return dict(con)
    old = t.system_attrs.get("constraints")
    return {str(i): float(v) for i, v in enumerate(old)} if isinstance(old, (list, tuple)) else {}


def feasible(t: FrozenTrial) -> Optional[bool]:
    """The objective's ``feasible`` attribute, else Optuna's constraint values (all ≤ 0); None: not known (not
    constrained, or the trial did not finish training)."""
    if isinstance(t.user_attrs.get("feasible"), bool):
        return t.user_attrs["feasible"]
    con = constraint_values(t)
    return all(v <= 0.0 for v in con.values()) if con else None


def violated(t: FrozenTrial) -> Optional[str]:
    """The constraints the trial broke, with the relative violation: ``"params <= 150000 (+12.0 %)"``."""
    con = t.user_attrs.get("constraints") or constraint_values(t)
    if not con:
        return None
    bad = [f"{k} ({100.0 * float(v):+.1f} %)" for k, v in sorted(con.items()) if float(v) > 0.0]
    return "; ".join(bad) if bad else None


def seed_entries(t: FrozenTrial) -> List[Dict[str, Any]]:
    """The per-seed results of a trial that trained several seeds (empty for a one-seed trial)."""
    entries = t.user_attrs.get(REPEATS_ATTR)
    return [e for e in entries if isinstance(e, Mapping)] if isinstance(entries, list) else []


#: what a seed's entry holds for itself: taken from the entry only, never from the trial's means
SEED_KEYS = (*K.RECORDED, "seed", "status", "error", "run_dir", "wandb_id")


def seed_attrs(t: FrozenTrial, entry: Mapping[str, Any]) -> Dict[str, Any]:
    """The trial's user attributes as one seed's run has them: the trial's (variant, config, …) with every
    per-run key replaced by the entry's (absent there: absent, not the trial's mean over the seeds)."""
    ua = {k: v for k, v in t.user_attrs.items() if k not in SEED_KEYS}
    ua.update(entry)
    return ua


def group_feasible(flags: Sequence[Optional[bool]]) -> Optional[bool]:
    """False when any trial of the group is infeasible, True when every one is known feasible, else None."""
    if any(f is False for f in flags):
        return False
    return True if flags and all(f is True for f in flags) else None


def mark_pareto(groups: Sequence[Any], objectives: Sequence[Objective]) -> None:
    """Set ``pareto`` on each group (GroupRow): True when no other group is at least as good in every objective
    (group values: ``getattr(group, o.key)``) and strictly better in one. A group lacking a value, or infeasible,
    is compared with nobody and gets None / False."""
    cand = [g for g in groups
            if g.feasible is not False and all(getattr(g, o.key, None) is not None for o in objectives)]
    flags = pareto_front([[getattr(g, o.key) for o in objectives] for g in cand], [o.direction for o in objectives])
    on = {id(g): f for g, f in zip(cand, flags)}
    for g in groups:
        g.pareto = on.get(id(g), False if g.feasible is False else None)


def omitted_fields(board: Any) -> Dict[str, Tuple[str, ...]]:
    """Fields (of the board, its groups, its trials) a study of old does not have: left out of its files, so
    that a single-objective, unconstrained, one-seed study's report stays byte for byte what it was."""
    top, group, trial = [], [], []
    if board.objectives is None:
        top.append("objectives")
        group.append("pareto")
    if board.constraints is None:
        top.append("constraints")
        group.append("feasible")
        trial += ["feasible", "violated"]
    if board.repeats is None:
        top.append("repeats")
    if getattr(board, "reference", None) is None:
        top.append("reference")
    if getattr(board, "sequential", None) is None:
        top.append("sequential")
    if getattr(board, "img_sizes", None) is None:
        top += ["img_sizes", "img_size_mdd"]
        group.append("by_img_size")
        trial.append("test_acc1_by_size")
    return {"board": tuple(top), "group": tuple(group), "trial": tuple(trial)}


__all__ = ["Goals", "Objective", "accuracy_value", "constraint_values", "feasible", "group_feasible", "mark_pareto",
           "objective_label", "omitted_fields", "seed_attrs", "seed_entries", "study_goals", "violated"]
