"""Seeds until decided in a running study: the looks, their decisions, and the seeds each row is allotted.

The design is :mod:`.seeds` (the YAML) and :mod:`irpe_bench.report.sequential` (the statistics). Here:

* **A look** at a row happens when every seed it is allotted (``0 … n − 1``) and the same seeds of its baseline
  have a finished trial (complete, or failed for good: a failed seed is a missing pair, never re-run). The row's
  comparison — validation accuracy (the trial value the objective returns; the test split never decides
  anything) minus its baseline's (the ``study.reference`` row, else its config-matched no-RPE row; the
  leaderboard's own pairing, :func:`irpe_bench.report.leaderboard.collect`), paired by seed — is analysed at
  all its looks so far at level α / m (m = the grid's rows that are not a baseline). Decided (higher, lower,
  equivalent within ±margin) or not resolved at ``max``: the row stops; else it is allotted the next ``step``
  seeds. A baseline is allotted as many seeds as its furthest row.
* **The test metric** is analysed at the same looks with the same boundaries and recorded beside (its repeated CI
  at the look where the row stopped is valid whatever stopped it: the CIs cover at all looks at once).
* **Storage as the source of truth**: the looks live in the study's user attribute :data:`ATTR`
  (``{method, spec, family, alpha_row, rows: {row: {status, allotted, baseline_row, looks: [...]}}}``). A look is
  recorded once and never revised; a new look is a pure function of finished trials, so workers on several
  machines that take the same look at once write the same thing, and a killed sweep resumes from the record.
  The next seeds are enqueued with ``skip_if_exists``; a rare duplicate from two workers enqueuing at the same
  instant is normally discarded before training by the budget's own check (:mod:`.budget`; the runner keeps its
  target at the allotted count), and where it is not, that seed trains twice and counts once (its mean).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import optuna

from .allotted import ATTR, grid, grid_params, record_of, row_key
from .budget import kinds, point_of
from .config import Sweep
from .extend import missing_points

log = logging.getLogger(__name__)
BASELINE, NO_BASELINE = "baseline", "no baseline"


def _rows(sweep: Sweep) -> Dict[str, bool]:
    """row → whether it is a baseline: the ``study.reference`` row when the study names one (every other row is
    compared with it, as the leaderboard compares them), else each no-RPE row (its training config has no
    ``model.rpe``; an iRPE row is compared with its config-matched one). A reference that names no row of the grid
    is refused here, before the first look, naming the rows."""
    from .objective import variant_of

    reference = sweep.config.study.reference
    out: Dict[str, bool] = {}
    names: Dict[str, str] = {}
    for point, params in grid(sweep):
        key = row_key(params)
        if key not in out:
            config = sweep.trial_config(point)
            if reference:
                names[key] = variant_of(config)
                out[key] = names[key] == reference
            else:
                out[key] = config.model.rpe is None
    if reference and sum(out.values()) != 1:
        raise ValueError(f"study.reference={reference!r}: {sum(out.values())} rows of the grid have that variant; "
                         f"allowed: one of {sorted(set(names.values()))}")
    return out


def _finished(study: optuna.Study) -> Tuple[Dict[str, set], Dict[str, str]]:
    """row → seeds with a finished trial (complete, pruned, failed for good); row → its config key."""
    kind = dict(kinds(study))  # NOTE: the budget's own notion of which trials count
    done: Dict[str, set] = {}
    keys: Dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        params = point_of(t)
        if "seed" not in params:
            continue
        row = row_key(params)
        if t.user_attrs.get("config_key"):
            keys.setdefault(row, t.user_attrs["config_key"])
        if kind[t.number] in ("complete", "pruned", "failed"):
            done.setdefault(row, set()).add(int(params["seed"]))
    return done, keys


def _values(board) -> Dict[str, Dict[int, Tuple[float, Optional[float]]]]:
    """config key → seed → (validation value, test acc1), percent; a seed trained twice is its mean."""
    import statistics

    acc: Dict[str, Dict[int, List[Tuple[float, Optional[float]]]]] = {}
    for r in board.trials:
        if r.state == "COMPLETE" and r.value is not None and r.config_key and r.seed is not None:
            acc.setdefault(r.config_key, {}).setdefault(int(r.seed), []).append((r.value, r.test_acc1))
    out: Dict[str, Dict[int, Tuple[float, Optional[float]]]] = {}
    for key, seeds in acc.items():
        out[key] = {}
        for s, vs in seeds.items():
            tests = [t for _, t in vs if t is not None]
            out[key][s] = (statistics.fmean(v for v, _ in vs), statistics.fmean(tests) if len(tests) == len(vs)
                           else None)
    return out


def _analyse(row_vals, base_vals, ns: List[int], which: int, spec, alpha: float, final: bool):
    from ..report import sequential as Q

    diffs = Q.paired_at_looks({s: v[which] for s, v in row_vals.items()},
                              {s: v[which] for s, v in base_vals.items()}, ns)
    looks = Q.analyse(diffs, spec.max, alpha, spec.margin, final, spec.spending)
    return looks[-1] if looks and looks[-1].n == len(diffs[-1]) else None


def _entry(look, n_pairs_when_none: int = 0) -> Dict[str, Any]:
    from ..report import sequential as Q

    if look is None:
        return {"n_pairs": n_pairs_when_none, "delta": None, "ci": None, "decision": Q.CONTINUE}
    return {"n_pairs": look.n, "delta": look.delta, "sd": look.sd, "ci": look.ci, "t_bound": look.t_bound,
            "fraction": look.fraction, "decision": look.decision}


def step(sweep: Sweep, study: optuna.Study) -> Dict[str, Any]:
    """Take every look that is due, record it, enqueue the seeds it allots; returns the record. Idempotent."""
    from ..report import sequential as Q

    spec = sweep.config.study.seeds
    if spec is None:
        return {}
    record = record_of(study)
    reference = sweep.config.study.reference
    if "reference" in record and record["reference"] != reference:
        raise ValueError(f"study.reference={reference!r}: this study's looks were taken against "
                         f"{record['reference']!r}; a seeds-until-decided study keeps the reference it started with "
                         "(start a new study to compare with another row)")
    rows = {k: dict(v) for k, v in (record.get("rows") or {}).items()}
    is_base = _rows(sweep)
    family = max(1, sum(1 for b in is_base.values() if not b))
    alpha_row = Q.family_alpha(spec.alpha, family)
    for r, b in is_base.items():
        rows.setdefault(r, {"status": BASELINE if b else Q.CONTINUE, "allotted": spec.min, "looks": []})
    done, keys = _finished(study)

    def ready(r: Optional[str], n: int) -> bool:
        return r is not None and all(s in done.get(r, ()) for s in range(n))

    due = [r for r, rec in rows.items() if rec["status"] == Q.CONTINUE and ready(r, rec["allotted"])
           and (not rec["looks"] or rec["looks"][-1]["n_seeds"] < rec["allotted"])]
    if sweep.config.study.reference:  # the one baseline: look only once it has the row's seeds (collect needs it)
        ref = next(r for r, b in is_base.items() if b)
        due = [r for r in due if ready(ref, rows[r]["allotted"])]
    changed = False
    if due:
        from ..report.leaderboard import collect

        board = collect(study)
        row_of_key = {k: r for r, k in keys.items()}
        base_key = {g.config_key: g.baseline_key for g in board.groups}
        vals = _values(board)
        bases = [r for r, b in is_base.items() if b]
        for r in due:
            rec, n = rows[r], rows[r]["allotted"]
            br = rec.get("baseline_row") or row_of_key.get(base_key.get(keys.get(r)))
            if br is None:
                if all(ready(b, n) for b in bases) and keys.get(r) in base_key:
                    rec["status"], changed = NO_BASELINE, True  # nothing to compare with: it stops at min
                continue
            if not ready(br, n):
                continue
            ns = [lk["n_seeds"] for lk in rec["looks"]] + [n]
            final = n >= spec.max
            rv, bv = vals.get(keys[r], {}), vals.get(keys[br], {})
            val = _analyse(rv, bv, ns, 0, spec, alpha_row, final)
            test = _analyse(rv, bv, ns, 1, spec, alpha_row, final)
            entry = {"n_seeds": n, **_entry(val), "test": _entry(test), "family": family, "alpha": alpha_row,
                     "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            if val is None and final:
                entry["decision"] = Q.NOT_RESOLVED
            rec["looks"].append(entry)
            rec["baseline_row"] = br
            decision = entry["decision"]
            if decision == Q.CONTINUE:
                rec["allotted"] = spec.next_look(n) or n
            else:
                rec["status"] = decision
            changed = True
            log.info("seeds until decided: %s at %d seeds: %s (Δ %s, CI %s)", r, n, decision, entry["delta"],
                     entry["ci"])
    for b in (r for r, flag in is_base.items() if flag):
        want = max([spec.min] + [rec["allotted"] for rec in rows.values() if rec.get("baseline_row") == b])
        if rows[b]["allotted"] != want:
            rows[b]["allotted"], changed = want, True
    if changed or ATTR not in study.user_attrs:
        rows = _merge(record_of(study).get("rows") or {}, rows)  # what another worker wrote meanwhile
        record = {"method": Q.METHOD, "spec": spec.model_dump(), "family": family, "alpha_row": alpha_row,
                  "reference": reference, "metric": "validation (the trial value); test recorded beside",
                  "rows": rows}
        study.set_user_attr(ATTR, record)
    if changed:
        # NOTE: not Optuna's skip_if_exists, which also matches a discarded or retried trial of the point, so that
        # a seed discarded while its look was being written would never be queued again
        for params in missing_points(sweep, study):
            study.enqueue_trial(params)
    return record


def _merge(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> Dict[str, Any]:
    """Our rows, with any row another worker has taken further since we read the record.

    A row only grows (looks are appended, never revised; its allotment follows its last look; a baseline's
    allotment only rises), so the row with more looks — for a baseline the larger allotment — is the newer one.
    Without this, two workers that took looks on different rows at the same time would each write back the other's
    row as it was before, and a look (with the seeds it allotted) would be lost until taken again."""
    out = {k: dict(v) for k, v in ours.items()}
    for r, rec in theirs.items():
        mine = out.get(r)
        if mine is None or len(rec.get("looks") or []) > len(mine.get("looks") or []):
            out[r] = dict(rec)
        elif mine.get("status") == BASELINE and rec.get("allotted", 0) > mine.get("allotted", 0):
            mine["allotted"] = rec["allotted"]
    return out


def summary(record: Mapping[str, Any]) -> List[str]:
    """One line per row: its status, seeds and the last look's Δ and repeated CI (validation; test beside)."""
    out = []
    for r, rec in sorted((record.get("rows") or {}).items()):
        last = (rec.get("looks") or [None])[-1]
        what = ""
        if last:
            ci = last.get("ci")
            t = last.get("test") or {}
            tci = t.get("ci")
            what = (f": val Δ {last['delta']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ": no CI yet") + \
                   (f", test Δ {t['delta']:+.2f} [{tci[0]:+.2f}, {tci[1]:+.2f}] ({t['decision']})" if tci else "")
        out.append(f"{r} — {rec['status']}, {rec['allotted']} seeds{what}")
    return out


__all__ = ["ATTR", "grid_params", "row_key", "step", "summary", "record_of"]
