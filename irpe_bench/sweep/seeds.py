"""``study.seeds``: the seed axis of a grid study generated, not listed — seeds until decided.

::

    study: {name: t4, sampler: grid, pruner: none,
            seeds: {min: 5, max: 60, step: 5, until: decided, margin: 1.0}}

Every row (a grid point without its seed) starts with seeds ``0 … min − 1``; at each look (the row's and its
baseline's current seeds all finished) the rows whose comparison with their config-matched baseline is decided
stop, the others get the next ``step`` seeds, up to ``max``. The statistics are :mod:`irpe_bench.report.sequential`
(a group-sequential design whose looks are these: min, min + step, …, max); the looks and decisions live in the
study's storage (:mod:`.decided`). Why the settings are checked as they are:

* ``sampler: grid`` — the rows must be known in advance (they form the multiplicity family, α / rows);
* ``pruner: none`` — a pruned seed has no value and would leave a hole in every look;
* ``repeats: 1`` and no ``seed`` in the space — the seed axis is this one.
"""
from __future__ import annotations

from typing import List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SeedsSpec(BaseModel):
    """The seeds-until-decided design, declared before the first look (its identity: a study refuses a change)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min: int = Field(..., ge=2, description="seeds every row trains before the first look (≥ 2: a paired SD)")
    max: int = Field(..., ge=2, le=10_000, description="the most seeds a row receives (the last look)")
    step: int = Field(..., ge=1, description="seeds added to an undecided row at each look")
    until: Literal["decided"] = Field(..., description="the stopping rule: a row stops when its comparison with "
                                      "its baseline is decided (higher, lower, or equivalent within ±margin)")
    margin: Optional[float] = Field(None, gt=0, description="equivalence margin in accuracy points: a row whose "
                                    "repeated CI lies inside ±margin stops as 'equivalent'; none: only differences "
                                    "stop a row")
    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise error over the study's comparisons "
                         "(Bonferroni: each row at alpha / rows)")
    spending: Literal["obrien_fleming", "pocock"] = Field("obrien_fleming", description="α-spending function")

    @model_validator(mode="after")
    def _order(self) -> "SeedsSpec":
        if self.min > self.max:
            raise ValueError(f"study.seeds: min={self.min} > max={self.max}; need min <= max")
        return self

    def looks(self) -> List[int]:
        """The declared looks (seeds per row): min, min + step, …, max."""
        from ..report.sequential import looks

        return looks(self.min, self.max, self.step)

    def next_look(self, n: int) -> Optional[int]:
        return next((k for k in self.looks() if k > n), None)

    def seed_choices(self) -> List[int]:
        """The generated seed axis: 0 … max − 1 (the same seeds for every row, so rows pair)."""
        return list(range(self.max))


__all__ = ["SeedsSpec"]
