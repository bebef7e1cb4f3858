"""Which grid points a study should hold now: every point, or with ``study.seeds`` (seeds until decided) each
row's seeds allotted so far.

The allotment lives in the study's user attribute :data:`ATTR`, written by :mod:`.decided` when it takes a look;
the budget (:mod:`.budget`), the creation of a grid study (:mod:`.storage`) and its extension (:mod:`.extend`) read
it here, below all of them, so that none of them imports the module that takes the looks.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import optuna

from ..keys import SEQUENTIAL_ATTR as ATTR
from ..keys import row_key
from . import space as S
from .config import Sweep


def grid(sweep: Sweep) -> List[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(point, Optuna parameters) of every point of the whole grid (all seeds up to ``max``)."""
    space, base = sweep.config.space, sweep.base_flat
    return [(p, S.optuna_params(space, p, base)) for p in S.points(space, base)]


def record_of(study: Optional[optuna.Study]) -> Dict[str, Any]:
    """The study's seeds-until-decided record ({} before the first look, or without a study)."""
    return dict((study.user_attrs.get(ATTR) or {}) if study is not None else {})


def grid_params(sweep: Sweep, study: Optional[optuna.Study] = None) -> List[Dict[str, Any]]:
    """The grid points that should exist now, as Optuna parameters: all of them, or with ``study.seeds`` each
    row's allotted seeds (``min`` before the first look)."""
    spec = sweep.config.study.seeds
    points = [params for _, params in grid(sweep)]
    if spec is None:
        return points
    rows = record_of(study).get("rows", {})
    return [p for p in points if int(p["seed"]) < int(rows.get(row_key(p), {}).get("allotted", spec.min))]


__all__ = ["ATTR", "grid", "grid_params", "record_of", "row_key"]
