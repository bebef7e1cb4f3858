"""The paper's claims checked against committed studies: Δ with its 95 % CI, Holm-adjusted p, n and a verdict.

A claim compares two rows (variants, by their slug) of one committed study — the leaderboard's own baseline
rule is not needed, so a claim may compare any two cells, e.g. iRPE without absolute positions against the
baseline with them (the paper's "RPE replaces absolute PE"). Seeds pair the two rows (:func:`.stats.compare`:
paired t on the common seeds, Welch otherwise). The claims of one file share one Holm adjustment.

Verdicts, for the claim's direction:

* ``greater`` (a > b): **holds** when Holm's p < 0.05 and Δ > 0; **contradicted** when p < 0.05 and Δ < 0;
  otherwise **not resolved**, with the difference this comparison could detect (80 % power).
* ``equal`` (a ≈ b within ``margin`` points): **holds** when the whole 95 % CI lies inside ±margin;
  **contradicted** when Holm's p < 0.05 and the CI lies outside ±margin; otherwise **not resolved**.

The claims file (YAML, read with ``yaml.safe_load``) lists ``claims:`` with ``claim`` (text), ``study`` (a folder
holding ``trials.csv``, relative to the file), ``a`` and ``b`` (variant slugs), ``direction``, optional
``margin`` and ``paper`` (the paper's number, as text). ``metric`` (a ``trials.csv`` column) defaults to
``test_acc1``; ``min_seeds`` (default 5) is what a cell needs before a ``--partial`` run reports on it.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .stats import ALPHA, Comparison, compare, holm, min_detectable_difference

DIRECTIONS = ("greater", "equal")


@dataclass(frozen=True)
class Finding:
    claim: str
    study: str
    a: str
    b: str
    direction: str
    margin: Optional[float]
    paper: Optional[str]
    n_a: int
    n_b: int
    comparison: Comparison
    p_holm: Optional[float]
    mdd: Optional[float]
    verdict: str


def _values(trials_csv: Path, metric: str) -> Dict[str, List[Tuple[Optional[int], float]]]:
    out: Dict[str, List[Tuple[Optional[int], float]]] = {}
    with open(trials_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["state"] == "COMPLETE" and row.get(metric, "") != "":
                seed = int(row["seed"]) if row["seed"] != "" else None
                out.setdefault(row["variant"], []).append((seed, float(row[metric])))
    return out


def _verdict(direction: str, c: Comparison, p_holm: Optional[float], margin: Optional[float],
             mdd: Optional[float]) -> str:
    if c.delta_ci95 is None or p_holm is None:
        return "not resolved (no test: fewer than 2 runs per row)"
    low, high = c.delta_ci95
    significant = p_holm < ALPHA
    detect = f"minimum detectable difference {mdd:.2f}" if mdd is not None else "no paired spread"
    if direction == "greater":
        if significant:
            return "holds" if c.delta > 0 else "contradicted"
        return f"not resolved ({detect})"
    if -margin <= low and high <= margin:
        return "holds"
    if significant and (low > margin or high < -margin):
        return "contradicted"
    return f"not resolved (±{margin:g} margin; {detect})"


PENDING = "pending (the study has not finished this cell)"


def check_claims(spec: Mapping[str, Any], root: Path, partial: bool = False) -> List[Finding]:
    """Every claim of ``spec`` (the parsed claims file) against the studies under ``root``; bad input raises
    ``ValueError`` naming the claim, the field and what is allowed, before anything is computed.

    ``partial``: a study still running — a claim whose rows are missing, or have fewer than the file's
    ``min_seeds`` (default 5) complete runs, is reported as pending (and left out of Holm's adjustment) instead
    of refused."""
    metric = spec.get("metric", "test_acc1")
    min_seeds = int(spec.get("min_seeds", 5))
    claims = spec.get("claims") or []
    if not claims:
        raise ValueError("claims: the file lists no claims")
    loaded: Dict[str, Dict[str, List[Tuple[Optional[int], float]]]] = {}
    rows = []
    for i, c in enumerate(claims):
        where = f"claims[{i}] ({c.get('claim', '?')!r})"
        missing = [k for k in ("claim", "study", "a", "b", "direction") if k not in c]
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        if c["direction"] not in DIRECTIONS:
            raise ValueError(f"{where}: direction={c['direction']!r}; allowed: {list(DIRECTIONS)}")
        if c["direction"] == "equal" and not isinstance(c.get("margin"), (int, float)):
            raise ValueError(f"{where}: direction 'equal' needs margin: <points>")
        trials = root / c["study"] / "trials.csv"
        if not trials.is_file():
            raise ValueError(f"{where}: study={c['study']!r} has no trials.csv at {str(trials)!r}")
        values = loaded.setdefault(c["study"], _values(trials, metric))
        short = [side for side in ("a", "b") if len(values.get(c[side], [])) < (min_seeds if partial else 1)]
        if short and not partial:
            raise ValueError(f"{where}: {short[0]}={c[short[0]]!r} is not a complete variant of {c['study']!r}; "
                             f"variants there: {sorted(values)}")
        rows.append((c, None if short else values[c["a"]], None if short else values[c["b"]]))
    comparisons = [None if a is None else compare(a, b) for _, a, b in rows]
    tested = [i for i, cmp in enumerate(comparisons) if cmp is not None and cmp.p_value is not None]
    adjusted = dict(zip(tested, holm([comparisons[i].p_value for i in tested])))
    out = []
    for i, ((c, a, b), cmp) in enumerate(zip(rows, comparisons)):
        margin = float(c["margin"]) if c.get("margin") is not None else None
        paper = None if c.get("paper") is None else str(c["paper"])
        if cmp is None:
            out.append(Finding(c["claim"], c["study"], c["a"], c["b"], c["direction"], margin, paper, 0, 0,
                               Comparison(None, None, float("nan"), None, None, None), None, None, PENDING))
            continue
        mdd = min_detectable_difference(cmp.sd_diff, cmp.n_pairs) if cmp.sd_diff is not None else None
        out.append(Finding(
            claim=c["claim"], study=c["study"], a=c["a"], b=c["b"], direction=c["direction"], margin=margin,
            paper=paper, n_a=len(a), n_b=len(b), comparison=cmp,
            p_holm=adjusted.get(i), mdd=mdd, verdict=_verdict(c["direction"], cmp, adjusted.get(i), margin, mdd)))
    return out


def _num(x: Optional[float], fmt: str = "{:+.2f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def to_markdown(findings: List[Finding], metric: str = "test_acc1") -> str:
    """The findings table: claim, paper, ours (Δ [95 % CI], Holm p, n), verdict."""
    lines = [f"| claim | study | a − b | paper (ImageNet) | Δ {metric} [95 % CI] | p (Holm) | test, n | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for f in findings:
        c = f.comparison
        ci = "" if c.delta_ci95 is None else f" [{c.delta_ci95[0]:+.2f}, {c.delta_ci95[1]:+.2f}]"
        n = f"{c.test or 'no test'}, n = {c.n_pairs} pairs" if c.n_pairs else f"{c.test or 'no test'}, " \
            f"n = {f.n_a} / {f.n_b}"
        if f.verdict == PENDING:
            n = "—"
        lines.append(f"| {f.claim} | {f.study} | `{f.a}` − `{f.b}` | {f.paper or '—'} | {_num(c.delta)}{ci} | "
                     f"{_num(f.p_holm, '{:.3g}')} | {n} | **{f.verdict}** |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m irpe_bench.report.findings CLAIMS.yaml [OUT.md]``: print (and write) the findings table."""
    import argparse

    import yaml

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("claims", type=Path)
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--partial", action="store_true",
                   help="studies still running: claims on unfinished cells are listed as pending")
    args = p.parse_args(argv)
    spec = yaml.safe_load(args.claims.read_text(encoding="utf-8")) or {}
    table = to_markdown(check_claims(spec, args.claims.parent, partial=args.partial), spec.get("metric", "test_acc1"))
    print(table, end="")
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
