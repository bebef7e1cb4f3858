"""Seeds under a sampler: ``study.repeats: k`` trains each suggested point with k seeds and tells the sampler
their mean.

A sampler that learns (TPE, GP, CMA-ES, NSGA-II) is misled by one seed's noise; searching ``seed`` as a
parameter would make it chase lucky seeds. So the seed is not a parameter: every trial trains the base
config's seed ``s``, then ``s + 1``, … ``s + k - 1`` — the same seeds for every point, so points pair — each in
its own run directory ``<trial dir>/seed-<s>/`` and its own W&B run, and the objective's values are the means.

What is recorded (:mod:`.objective`): the trial's metric attributes are :func:`mean_summary` of the seeds'
summaries (the numbers the sampler saw), and the user attribute ``repeats`` lists each seed's own
(:func:`seed_entry`) so that the leaderboard can treat every seed as a sample. ``k = 1`` is the trial of old:
its run directory is the trial's, and no ``repeats`` attribute is written.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

#: the trial user attribute holding one entry per seed (only when ``repeats > 1``)
REPEATS_ATTR = "repeats"


def seeds(first: int, k: int) -> List[int]:
    return [first + i for i in range(k)]


def seed_dir(trial_dir: Path, seed: int, k: int) -> Path:
    """A seed's run directory: the trial's own for one seed, ``seed-<s>/`` inside it for several."""
    return trial_dir if k == 1 else trial_dir / f"seed-{seed}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mean_summary(summaries: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Dict[str, Any]:
    """``keys`` over the seeds' summaries: the mean of numbers (over the seeds that have the key; an int kept
    when every seed agrees, e.g. params), mappings key by key (``test/by_img_size``), else the value if all agree,
    else the first seed's."""
    out: Dict[str, Any] = {}
    for k in keys:
        vals = [s[k] for s in summaries if s.get(k) is not None]
        if not vals:
            continue
        if all(v == vals[0] for v in vals):
            out[k] = vals[0]
        elif all(_is_number(v) for v in vals):
            out[k] = statistics.fmean(vals)
        elif all(isinstance(v, Mapping) for v in vals):
            out[k] = mean_summary(vals, sorted({key for v in vals for key in v}))
        else:
            out[k] = vals[0]
    return out


def seed_entry(seed: int, status: str, run_dir: Path, summary: Mapping[str, Any], keys: Sequence[str],
               error: str | None = None) -> Dict[str, Any]:
    """One element of the ``repeats`` attribute: the seed, its status, run directory, W&B id and metrics."""
    entry: Dict[str, Any] = {"seed": seed, "status": status, "run_dir": str(run_dir),
                             "wandb_id": summary.get("wandb_id")}
    if error is not None:
        entry["error"] = error
    entry.update({k: summary[k] for k in keys if summary.get(k) is not None})
    return entry


__all__ = ["REPEATS_ATTR", "seeds", "seed_dir", "mean_summary", "seed_entry"]
