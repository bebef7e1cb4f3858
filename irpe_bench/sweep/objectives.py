"""What a study optimises: its objectives (one or several) and its constraints, in a small vocabulary of metrics.

A metric name stands for one trial user attribute the objective records (:data:`irpe_bench.keys.RECORDED`, the keys
of :mod:`irpe_bench.keys`) and for the ``trials.csv`` column the leaderboard writes from it:

==============  =========================  ==============  ========  ==================
metric          user attribute             trials.csv      natural   unit
==============  =========================  ==============  ========  ==================
``val_acc1``    ``val/acc1_best``          ``acc1_best``   maximize  percent
``train_img_s`` ``throughput/train_img_s`` ``train_img_s`` maximize  images/s
``infer_img_s`` ``throughput/infer_img_s`` ``infer_img_s`` maximize  images/s
``params``      ``params``                 ``params``      minimize  count
``macs``        ``macs``                   ``macs``        minimize  count
==============  =========================  ==============  ========  ==================

The accuracy objective is always the monitored validation accuracy (best over epochs): no test metric is in the
vocabulary, because the sampler must never see the test split (it is reported, never chosen on).

``study.objectives`` defaults to ``[{metric: val_acc1, direction: maximize}]``, the single objective every study
had before, so old studies keep their identity. Several objectives make a multi-objective study
(``optuna.create_study(directions=[...])``; ``trial.values`` in the listed order).

``study.constraints`` are strings ``"<metric> <= <number>"`` / ``"<metric> >= <number>"``. A trial's constraint
value is its *relative* violation — ``(value - bound) / |bound|`` for ``<=``, ``(bound - value) / |bound|`` for
``>=`` (the absolute difference for a bound of 0) — so ≤ 0 is feasible (Optuna's convention) and violations of
metrics with different scales (params, img/s) add up comparably in the samplers' total violation.

What is stored (the leaderboard reads it): study user attributes ``objectives`` (:func:`objectives_attr`) and
``constraints`` (:func:`constraints_attr`); per trial, in a constrained study, ``constraints`` (text →
violation) and ``feasible`` (bool) user attributes beside Optuna's own ``trial.set_constraint`` values.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .. import keys as K

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Metric:
    attr: str  # the trial user attribute (a summary key)
    key: str  # the trials.csv / TrialRow field the leaderboard writes from it
    direction: Direction  # the natural direction (the default of an objective)
    unit: str


METRICS: Dict[str, Metric] = {
    "val_acc1": Metric(K.MONITOR_BEST, "acc1_best", "maximize", "percent"),
    "train_img_s": Metric(K.TRAIN_IMG_S, "train_img_s", "maximize", "images/s"),
    "infer_img_s": Metric(K.INFER_IMG_S, "infer_img_s", "maximize", "images/s"),
    "params": Metric(K.PARAMS, "params", "minimize", "count"),
    "macs": Metric(K.MACS, "macs", "minimize", "count"),
}
#: the metric that needs inference timing after training (``trainer.benchmark_batches > 0``)
NEEDS_BENCHMARK = ("infer_img_s",)


def check_metric(name: Any) -> str:
    if name in METRICS:
        return name
    why = " (the sampler must never see the test split: accuracy objectives read validation)" \
        if str(name).startswith("test") else ""
    raise ValueError(f"unknown metric {name!r}{why}; choices: {list(METRICS)}")


class ObjectiveSpec(BaseModel):
    """One objective: a metric of :data:`METRICS` and its direction (default: the metric's natural one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    metric: str
    direction: Optional[Direction] = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return check_metric(v)

    @model_validator(mode="after")
    def _direction(self) -> "ObjectiveSpec":
        if self.direction is None:
            object.__setattr__(self, "direction", METRICS[self.metric].direction)
        return self


DEFAULT_OBJECTIVES = (ObjectiveSpec(metric="val_acc1", direction="maximize"),)


@dataclass(frozen=True)
class Constraint:
    text: str  # canonical "<metric> <op> <number>", the key of the trial's constraint value
    metric: str
    op: Literal["<=", ">="]
    bound: float

    def violation(self, value: float) -> float:
        """≤ 0 feasible; relative to the bound (module docstring)."""
        diff = value - self.bound if self.op == "<=" else self.bound - value
        return diff / abs(self.bound) if self.bound != 0 else diff


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_constraint(text: Any, field: str = "study.constraints") -> Constraint:
    """``"params <= 150000"`` → :class:`Constraint`; anything else is a clear error naming the field and value."""
    m = _CONSTRAINT.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{field}={text!r}: expected '<metric> <= <number>' or '<metric> >= <number>', "
                         f"e.g. 'params <= 150000'; metrics: {list(METRICS)}")
    metric, op, number = m.groups()
    try:
        check_metric(metric)
    except ValueError as e:
        raise ValueError(f"{field}={text!r}: {e}") from None
    bound = float(number)
    if not math.isfinite(bound):
        raise ValueError(f"{field}={text!r}: the bound must be a finite number")
    if metric == "val_acc1" and not (bound == 0 or 1 < bound <= 100):
        # NOTE: a bound in (0, 1] is refused, not read as a tiny percentage: it is a fraction written before
        # accuracies were percent, and would silently admit every trial
        raise ValueError(f"{field}={text!r}: val_acc1 is in percent, in (1, 100] (e.g. 'val_acc1 >= 90')")
    return Constraint(f"{metric} {op} {number}", metric, op, bound)  # type: ignore[arg-type]


def coerce_objectives(v: Any) -> Any:
    """YAML shorthand: ``objectives: [val_acc1, params]`` means each metric in its natural direction."""
    if isinstance(v, (list, tuple)):
        return [{"metric": o} if isinstance(o, str) else o for o in v]
    return v


def check_objectives(objectives: Sequence[ObjectiveSpec]) -> None:
    names = [o.metric for o in objectives]
    if not names:
        raise ValueError("study.objectives=[]: give at least one objective, e.g. [{metric: val_acc1}]")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"study.objectives={names}: {dup} listed more than once")


def values_of(objectives: Sequence[ObjectiveSpec], metrics: Mapping[str, Any]) -> Tuple[float, ...]:
    """The objective values from a run's (or a trial's averaged) summary; a missing one is an error."""
    out = []
    for o in objectives:
        v = metrics.get(METRICS[o.metric].attr)
        if v is None:
            raise RuntimeError(f"the run finished without {METRICS[o.metric].attr} (objective {o.metric})")
        out.append(float(v))
    return tuple(out)


def violations(constraints: Sequence[Constraint], metrics: Mapping[str, Any]) -> Dict[str, float]:
    """``{constraint text: violation}`` (≤ 0 feasible); a missing metric is an error."""
    out = {}
    for c in constraints:
        v = metrics.get(METRICS[c.metric].attr)
        if v is None:
            raise RuntimeError(f"the run finished without {METRICS[c.metric].attr} (constraint {c.text!r})")
        out[c.text] = c.violation(float(v))
    return out


def objectives_attr(objectives: Sequence[ObjectiveSpec]) -> List[Dict[str, str]]:
    """The study user attribute ``objectives``: one entry per objective, in the order of ``trial.values``."""
    return [{"metric": o.metric, "attr": METRICS[o.metric].attr, "key": METRICS[o.metric].key,
             "direction": str(o.direction)} for o in objectives]


def constraints_attr(constraints: Sequence[Constraint]) -> List[Dict[str, Any]]:
    """The study user attribute ``constraints``."""
    return [{"text": c.text, "metric": c.metric, "attr": METRICS[c.metric].attr, "key": METRICS[c.metric].key,
             "op": c.op, "bound": c.bound} for c in constraints]


__all__ = ["METRICS", "Metric", "ObjectiveSpec", "Constraint", "DEFAULT_OBJECTIVES", "parse_constraint",
           "values_of", "violations", "objectives_attr", "constraints_attr", "check_metric"]
