"""The paper's claims checked against committed studies: Δ with its 95 % CI, Holm-adjusted p, n and a verdict.

A claim compares two rows of one committed study, named by variant slug and resolved to the ``config_key`` the
leaderboard groups by (a slug that names several config keys in a study is an error naming them). As on the
leaderboard, a seed trained twice in one row is one sample, the mean of its runs (:func:`.stats.one_per_seed`).
The leaderboard's own baseline rule is not needed, so a claim may compare any two cells, e.g. iRPE without
absolute positions against the baseline with them (the paper's "RPE replaces absolute PE"). Seeds pair the two
rows (:func:`.stats.compare`: paired t on the common seeds, Welch otherwise). A comparison whose pairs ran on
different device strings (CPU model and ISA, GPU, precision) is flagged: the same seed can train to another
accuracy on another machine, so such pairs mix machine with method.

**Families.** Claims marked ``primary: true`` are the confirmatory family; the others the exploratory one.
Holm's adjustment runs inside each family over the claims that have a test; a claim's p is that of its own
test: the two-sided paired t-test for ``greater``, TOST (:mod:`.equivalence`) for ``equal``. Power is planned
at the level of Holm's first step over the family (α = 0.05/m: the smallest p must pass it), so the minimum
detectable difference and the TOST power say what the verdict itself can detect.

Verdicts:

* ``greater`` (a > b): **holds** when Holm's p < 0.05 and Δ > 0; **contradicted** when Holm's p < 0.05 and
  Δ < 0; otherwise **not resolved**, with the minimum detectable difference (80 % power) at the family's α.
* ``equal`` (|a − b| < ``margin`` points): **equivalent within ±m** when TOST's Holm p < 0.05; **not equivalent**
  when the 95 % CI of Δ lies entirely outside [−m, +m] and the two-sided difference test's Holm p < 0.05 (Holm
  over the same family with this claim's TOST p replaced by its difference p); otherwise **not resolved**, with
  TOST's power at this n and the seeds it needs for 80 % (true Δ = 0, the observed paired SD, the family's α).

The claims file (YAML, read with ``yaml.safe_load``) lists ``claims:`` with ``claim`` (text), ``study`` (a folder
holding ``trials.csv``, relative to the file), ``a`` and ``b`` (variant slugs), ``direction``, optional
``margin``, ``paper`` (the paper's number, as text) and ``primary`` (bool, default false). ``metric`` (a
``trials.csv`` column) defaults to ``test_acc1``; ``min_seeds`` (default 5) is what a cell needs before a
``--partial`` run reports on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .equivalence import tost_p, tost_p_welch, tost_power, tost_seeds_needed
from .stats import (
    ALPHA,
    PAIRED,
    Comparison,
    compare,
    complete_runs,
    holm,
    holm_worst_alpha,
    min_detectable_difference,
    one_per_seed,
)

DIRECTIONS = ("greater", "equal")
PRIMARY, EXPLORATORY = "primary", "exploratory"
PENDING = "pending (the study has not finished this cell)"


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
    p_holm: Optional[float]  # Holm over the claim's family, of its own test (TOST for ``equal``)
    mdd: Optional[float]  # ``greater``: minimum detectable difference at ``alpha``
    verdict: str
    family: str = EXPLORATORY  # PRIMARY | EXPLORATORY
    family_size: int = 0  # claims with a test in the family: Holm's m
    alpha: Optional[float] = None  # Holm's first step over the family, 0.05 / family_size
    key_a: Optional[str] = None  # the config keys the slugs resolved to
    key_b: Optional[str] = None
    p_tost: Optional[float] = None  # ``equal``: TOST's unadjusted p
    p_holm_diff: Optional[float] = None  # ``equal``: the difference test's Holm p (for "not equivalent")
    tost_power: Optional[float] = None  # ``equal``: TOST's power at this n, true Δ = 0, the observed paired SD
    tost_seeds: Optional[int] = None  # ``equal``: pairs for 80 % TOST power (None: beyond stats.MAX_SEEDS)
    devices: Optional[str] = None  # the warning when pairs ran on different device strings
    # seeds-until-decided studies only: {status, looks, seeds, alpha, spec} of the row (the CI is its repeated CI)
    sequential: Optional[Dict[str, Any]] = None


Runs = List[Tuple[Optional[int], float, str]]  # (seed, value, device) per COMPLETE trial


@dataclass(frozen=True)
class _Study:
    runs: Dict[str, Runs]  # config key → its runs
    keys_of: Dict[str, List[str]]  # variant slug → the config keys it names


def _load(trials_csv: Path, metric: str) -> _Study:
    runs: Dict[str, Runs] = {}
    keys_of: Dict[str, List[str]] = {}
    for key, row, seed, value in complete_runs(trials_csv, metric):
        runs.setdefault(key, []).append((seed, value, row.get("device") or ""))
        if key not in keys_of.setdefault(row["variant"], []):
            keys_of[row["variant"]].append(key)
    return _Study(runs, {k: sorted(v) for k, v in keys_of.items()})


def _pairs(runs: Runs) -> List[Tuple[Optional[int], float]]:
    return one_per_seed([(s, v) for s, v, _ in runs])


def _device_warning(a: Runs, b: Runs, c: Comparison) -> Optional[str]:
    """"⚠ pairs span devices: …" when a seed's two runs (or, unpaired, the two rows) ran on different devices."""
    dev_a: Dict[Optional[int], set] = {}
    dev_b: Dict[Optional[int], set] = {}
    for runs, out in ((a, dev_a), (b, dev_b)):
        for s, _, d in runs:
            out.setdefault(s, set()).add(d)
    if c.test == PAIRED:
        bad = sorted(s for s in set(dev_a) & set(dev_b) if s is not None and len(dev_a[s] | dev_b[s]) > 1)
        if not bad:
            return None
        seen = sorted(set().union(*(dev_a[s] | dev_b[s] for s in bad)))
        return f"⚠ pairs span devices: seeds {', '.join(map(str, bad))} ({' vs '.join(seen)})"
    seen = sorted(set().union(*dev_a.values(), *dev_b.values()))
    return f"⚠ pairs span devices: {' vs '.join(seen)}" if len(seen) > 1 else None


def _resolve(where: str, study: str, data: _Study, side: str, slug: str) -> Optional[str]:
    keys = data.keys_of.get(slug, [])
    if len(keys) > 1:
        raise ValueError(f"{where}: {side}={slug!r} names {len(keys)} configurations in {study!r} (config keys "
                         f"{keys}); a claim compares two configurations: give the study one config per slug")
    return keys[0] if keys else None


def _diffs(a: Sequence[Tuple[Optional[int], float]], b: Sequence[Tuple[Optional[int], float]]) -> List[float]:
    sa, sb = dict(a), dict(b)
    return [sa[s] - sb[s] for s in sorted(set(sa) & set(sb), key=lambda x: (x is None, x or 0))]


def _verdict(direction: str, c: Comparison, p_holm: Optional[float], margin: Optional[float],
             f: Finding) -> str:
    if c.delta_ci95 is None or p_holm is None:
        return "not resolved (no test: fewer than 2 runs per row)"
    level = _alpha_text(f)
    if direction == "greater":
        if p_holm < ALPHA:
            return "holds" if c.delta > 0 else "contradicted"
        detect = f"minimum detectable difference {f.mdd:.2f} at {level}" if f.mdd is not None else "no paired spread"
        return f"not resolved ({detect})"
    if p_holm < ALPHA:
        return f"equivalent within ±{margin:g}"
    low, high = c.delta_ci95
    if (low > margin or high < -margin) and f.p_holm_diff is not None and f.p_holm_diff < ALPHA:
        return "not equivalent"
    if f.tost_power is None:
        return f"not resolved (±{margin:g} margin; TOST power not estimated: no paired spread)"
    need = f"{f.tost_seeds} pairs for 80 %" if f.tost_seeds is not None else "80 % needs more than any study runs"
    return (f"not resolved (±{margin:g} margin; TOST power {f.tost_power:.2f} at n = {c.n_pairs}, {need}, "
            f"at {level})")


def _alpha_text(f: Finding) -> str:
    what = "primary claims" if f.family == PRIMARY else "exploratory claims"
    if f.family_size <= 1:
        return f"α = 0.05 (one {what[:-1]})"
    return f"α = 0.05/{f.family_size} (Holm's first step over {f.family_size} {what})"


def _validate(i: int, c: Mapping[str, Any]) -> str:
    where = f"claims[{i}] ({c.get('claim', '?')!r})"
    missing = [k for k in ("claim", "study", "a", "b", "direction") if k not in c]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    if c["direction"] not in DIRECTIONS:
        raise ValueError(f"{where}: direction={c['direction']!r}; allowed: {list(DIRECTIONS)}")
    if c["direction"] == "equal" and not (isinstance(c.get("margin"), (int, float)) and c["margin"] > 0):
        raise ValueError(f"{where}: direction 'equal' needs margin: <points > 0>, got {c.get('margin')!r}")
    if not isinstance(c.get("primary", False), bool):
        raise ValueError(f"{where}: primary={c['primary']!r}; allowed: true or false")
    return where


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
    loaded: Dict[str, _Study] = {}
    designs: Dict[str, Optional[Dict[str, Any]]] = {}
    rows = []
    for i, c in enumerate(claims):
        where = _validate(i, c)
        trials = root / c["study"] / "trials.csv"
        if not trials.is_file() and partial:  # a study that has not run yet: its claims are pending
            rows.append((c, {"a": None, "b": None}, None, _Study({}, {})))
            designs.setdefault(c["study"], None)
            continue
        if not trials.is_file():
            raise ValueError(f"{where}: study={c['study']!r} has no trials.csv at {str(trials)!r}")
        data = loaded.setdefault(c["study"], _load(trials, metric))
        if c["study"] not in designs:
            designs[c["study"]] = _design(root / c["study"] / "leaderboard.json")
        keys = {side: _resolve(where, c["study"], data, side, c[side]) for side in ("a", "b")}
        pairs = {side: _pairs(data.runs[k]) if k else [] for side, k in keys.items()}
        short = [side for side in ("a", "b") if len(pairs[side]) < (min_seeds if partial else 1)]
        if short and not partial:
            raise ValueError(f"{where}: {short[0]}={c[short[0]]!r} is not a complete variant of {c['study']!r}; "
                             f"variants there: {sorted(data.keys_of)}")
        rows.append((c, keys, None if short else pairs, data))
    findings = [_sequential(c, keys, pairs, data, designs[c["study"]], partial) if designs[c["study"]] else
                _finding(c, keys, pairs, data) for c, keys, pairs, data in rows]
    return _adjust(findings)


def _design(board_json: Path) -> Optional[Dict[str, Any]]:
    """The ``sequential`` section of a study's ``leaderboard.json`` (None: a fixed-n study)."""
    import json

    if not board_json.is_file():
        return None
    return json.loads(board_json.read_text(encoding="utf-8")).get("sequential")


SEQUENTIAL = "group-sequential paired t"


def _sequential(c: Mapping[str, Any], keys: Mapping[str, Optional[str]], pairs, data: _Study,
                design: Mapping[str, Any], partial: bool) -> Finding:
    """A claim on a seeds-until-decided study: the test metric's repeated CI (level 1 − α) at the row's last look,
    recomputed from ``trials.csv`` with the study's design (``report.sequential.analyse``), and the pre-registered
    verdict read from it (``docs/paper_claims.md``). One of a and b must be the study's reference: the design
    compares every row with it, and no other pair has a valid sequential test."""
    from . import sequential as Q

    where = f"claim {c['claim']!r}"
    margin = float(c["margin"]) if c.get("margin") is not None else None
    family = PRIMARY if c.get("primary", False) else EXPLORATORY
    base = dict(claim=c["claim"], study=c["study"], a=c["a"], b=c["b"], direction=c["direction"], margin=margin,
                paper=None if c.get("paper") is None else str(c["paper"]), family=family, key_a=keys["a"],
                key_b=keys["b"], alpha=design.get("alpha_row"))
    rows = {r["config_key"]: r for r in design.get("rows", []) if r.get("config_key")}
    ra, rb = rows.get(keys["a"] or ""), rows.get(keys["b"] or "")
    if pairs is None or ra is None or rb is None:
        if not partial:
            raise ValueError(f"{where}: {c['a']!r} or {c['b']!r} has no row in {c['study']!r}'s seeds-until-decided "
                             "record yet")
        return Finding(**base, n_a=0, n_b=0, comparison=Comparison(None, None, float("nan"), None, None, None),
                       p_holm=None, mdd=None, verdict=PENDING)
    bases = {r["config_key"] for r in design.get("rows", []) if r.get("status") == "baseline" and r.get("config_key")}
    if keys["a"] in bases and rb.get("vs_key") in (None, keys["a"]):
        row, sign = rb, -1.0  # b is compared with a (the reference): Δ = a − b = −(b − a)
    elif keys["b"] in bases and ra.get("vs_key") in (None, keys["b"]):
        row, sign = ra, 1.0
    else:
        raise ValueError(f"{where}: neither {c['a']!r} nor {c['b']!r} is the other's reference in {c['study']!r} "
                         "(a seeds-until-decided study tests each row against its reference only)")
    spec = design.get("spec") or {}
    ref_side, row_side = ("a", "b") if sign < 0 else ("b", "a")
    ns = [int(n) for n in row.get("looks") or []]
    diffs = Q.paired_at_looks(dict(pairs[row_side]), dict(pairs[ref_side]), ns)
    look = None
    if ns:
        final = ns[-1] >= int(spec["max"])
        looks = Q.analyse(diffs, int(spec["max"]), float(design["alpha_row"]), spec.get("margin"), final,
                          spec.get("spending", "obrien_fleming"))
        look = looks[-1] if looks else None
    info = {"status": row.get("status"), "looks": ns, "seeds": row.get("seeds"), "spec": spec,
            "method": design.get("method"), "validation_decision": (row.get("val") or {}).get("decision")}
    if look is None or look.ci is None:
        cmp = Comparison(SEQUENTIAL, len(diffs[-1]) if ns else 0, float("nan"), None, None, None)
        return Finding(**base, n_a=len(pairs["a"]), n_b=len(pairs["b"]), comparison=cmp, p_holm=None, mdd=None,
                       verdict=PENDING if partial else "not resolved (no look yet)", sequential=info)
    ci = sorted([sign * look.ci[0], sign * look.ci[1]])
    cmp = Comparison(SEQUENTIAL, look.n, sign * look.delta, ci, None, look.sd)
    verdict = _sequential_verdict(c["direction"], ci, margin if margin is not None else spec.get("margin"))
    if row.get("status") == Q.CONTINUE:
        verdict = f"pending (still adding seeds; at {ns[-1]}: {verdict})"
    paired = Comparison(PAIRED, look.n, cmp.delta, ci, None, look.sd)
    return Finding(**base, n_a=len(pairs["a"]), n_b=len(pairs["b"]), comparison=cmp, p_holm=None, mdd=None,
                   verdict=verdict, sequential=info,
                   devices=_device_warning(data.runs[keys["a"]], data.runs[keys["b"]], paired))


def _sequential_verdict(direction: str, ci: Sequence[float], margin: Optional[float]) -> str:
    """The pre-registered reading of a repeated CI of a − b (``docs/paper_claims.md``)."""
    low, high = ci
    inside = margin is not None and -margin < low and high < margin
    if direction == "greater":
        if low > 0:
            return "holds" + (f" (and within ±{margin:g})" if inside else "")
        if high < 0:
            return "contradicted" + (f" (and within ±{margin:g})" if inside else "")
        if inside:
            return f"equivalent within ±{margin:g}"
        return f"not resolved (repeated CI half-width {(high - low) / 2:.2f})"
    if inside:
        return f"equivalent within ±{margin:g}"
    if low >= margin or high <= -margin:
        return "not equivalent"
    return f"not resolved (±{margin:g} margin; repeated CI half-width {(high - low) / 2:.2f})"


def _finding(c: Mapping[str, Any], keys: Mapping[str, Optional[str]], pairs, data: _Study) -> Finding:
    margin = float(c["margin"]) if c.get("margin") is not None else None
    paper = None if c.get("paper") is None else str(c["paper"])
    family = PRIMARY if c.get("primary", False) else EXPLORATORY
    base = dict(claim=c["claim"], study=c["study"], a=c["a"], b=c["b"], direction=c["direction"], margin=margin,
                paper=paper, family=family, key_a=keys["a"], key_b=keys["b"])
    if pairs is None:
        return Finding(**base, n_a=0, n_b=0, comparison=Comparison(None, None, float("nan"), None, None, None),
                       p_holm=None, mdd=None, verdict=PENDING)
    cmp = compare(pairs["a"], pairs["b"])
    p_tost = None
    if c["direction"] == "equal" and cmp.test == PAIRED:
        p_tost = tost_p(_diffs(pairs["a"], pairs["b"]), margin)
    elif c["direction"] == "equal" and cmp.test is not None:
        p_tost = tost_p_welch([v for _, v in pairs["a"]], [v for _, v in pairs["b"]], margin)
    return Finding(**base, n_a=len(pairs["a"]), n_b=len(pairs["b"]), comparison=cmp, p_holm=None, mdd=None,
                   verdict="", p_tost=p_tost,
                   devices=_device_warning(data.runs[keys["a"]], data.runs[keys["b"]], cmp))


def _own_p(f: Finding) -> Optional[float]:
    return f.p_tost if f.direction == "equal" else f.comparison.p_value


def _adjust(findings: List[Finding]) -> List[Finding]:
    """Holm inside each family; power at the family's first step; then the verdicts."""
    out = list(findings)
    for family in (PRIMARY, EXPLORATORY):
        idx = [i for i, f in enumerate(out) if f.family == family and f.verdict != PENDING and _own_p(f) is not None]
        if not idx:
            continue
        own = holm([_own_p(out[i]) for i in idx])
        diff = holm([out[i].comparison.p_value for i in idx])  # every slot holding the difference test's p
        alpha = holm_worst_alpha(len(idx))
        for i, p, pd in zip(idx, own, diff):
            f, c = out[i], out[i].comparison
            f = replace(f, p_holm=p, family_size=len(idx), alpha=alpha)
            if f.direction == "greater":
                f = replace(f, mdd=min_detectable_difference(c.sd_diff, c.n_pairs, alpha=alpha))
            else:
                f = replace(f, p_holm_diff=pd, tost_power=tost_power(c.sd_diff, c.n_pairs, f.margin, alpha),
                            tost_seeds=tost_seeds_needed(c.sd_diff, f.margin, alpha) if c.sd_diff is not None
                            else None)
            out[i] = replace(f, verdict=_verdict(f.direction, c, p, f.margin, f))
    for i, f in enumerate(out):
        if not f.verdict:
            out[i] = replace(f, verdict=_verdict(f.direction, f.comparison, None, f.margin, f))
    return out


def _num(x: Optional[float], fmt: str = "{:+.2f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


METHOD_NOTE = (
    "a − b of {metric} (%), paired over seeds (paired t; Welch where seeds do not pair), rows resolved from their "
    "variant slugs to config keys, a seed trained twice averaged. Claims marked primary (the paper's headline "
    "claims) form the confirmatory family; the others are exploratory and adjusted in their own family. Holm's "
    "adjustment runs inside each family, over each claim's own test: the two-sided paired t-test for a > b, "
    "TOST (two one-sided paired t-tests against ±margin, p = the larger) for a ≈ b. a > b holds when Holm's "
    "p < 0.05 and Δ > 0; a ≈ b is equivalent within ±m when TOST's Holm p < 0.05, not equivalent when the 95 % CI "
    "lies outside ±m and the difference test's Holm p < 0.05. Power is at Holm's first step over the family "
    "(α = 0.05/m): the minimum detectable difference (80 % power) for a > b, and for a ≈ b TOST's power at this n "
    "and the pairs it needs for 80 % (true Δ = 0, the observed paired SD; exact noncentral computation, "
    "irpe_bench/report/equivalence.py). ⚠ marks pairs whose two runs ran on different devices."
)


SEQUENTIAL_NOTE = (
    "Claims on a seeds-until-decided study (`study.seeds`): Δ and its repeated CI (simultaneous level 1 − α over "
    "the looks; group-sequential paired t, Lan–DeMets O'Brien–Fleming spending, irpe_bench/report/sequential.py) "
    "are of the test metric at the look where validation stopped the row, recomputed from trials.csv with the "
    "study's design; α is per comparison (Bonferroni over the pre-registered family), not Holm, whose step-down "
    "needs every p-value at one time. a > b holds when the CI excludes 0 above, is contradicted when it excludes 0 "
    "below, and is equivalent within ±m when it lies inside ±m; a ≈ b is equivalent within ±m when the CI lies "
    "inside ±m and not equivalent when it lies outside; otherwise not resolved. A row still receiving seeds is "
    "pending (its CI is valid now, the verdict may still change)."
)


def _sequential_only(findings: Sequence[Finding]) -> bool:
    """Whether the claims that have a result are all read from seeds-until-decided studies (pending ones aside)."""
    done = [f for f in findings if f.verdict != PENDING]
    return bool(done) and all(f.sequential is not None for f in done)


def _table(findings: Sequence[Finding], metric: str) -> List[str]:
    ci = "repeated CI, 1 − α" if _sequential_only(findings) else "95 % CI"
    lines = [f"| claim | study | a − b | paper (ImageNet) | Δ {metric} [{ci}] | p (Holm; TOST for ≈) | test, n | "
             "verdict |", "|---|---|---|---|---|---|---|---|"]
    for f in findings:
        c = f.comparison
        ci = "" if c.delta_ci95 is None else f" [{c.delta_ci95[0]:+.2f}, {c.delta_ci95[1]:+.2f}]"
        n = f"{c.test or 'no test'}, n = {c.n_pairs} pairs" if c.n_pairs else f"{c.test or 'no test'}, " \
            f"n = {f.n_a} / {f.n_b}"
        if f.sequential is not None:
            n += f"; looks at {', '.join(map(str, f.sequential['looks'])) or '—'} seeds, validation: " \
                 f"{f.sequential.get('validation_decision') or '—'}"
        if f.devices:
            n += f"; {f.devices}"
        if f.verdict == PENDING:
            n = "—"
        p = _num(f.p_holm, "{:.3g}")
        if f.direction == "equal" and f.p_holm is not None:
            p = f"TOST {p}"
        if f.sequential is not None:
            p = f"α {f.alpha:.3g} (repeated CI at 1 − α)" if f.alpha is not None else "—"
        lines.append(f"| {f.claim} | {f.study} | `{f.a}` − `{f.b}` | {f.paper or '—'} | {_num(c.delta)}{ci} | "
                     f"{p} | {n} | **{f.verdict}** |")
    return lines


def _family_head(findings: Sequence[Finding], family: str) -> str:
    members = [f for f in findings if f.family == family]
    if _sequential_only(members):
        alphas = ", ".join(sorted({f"{f.alpha:.4g}" for f in members if f.alpha is not None}))
        what = "Primary claims (confirmatory" if family == PRIMARY else "Secondary claims (exploratory"
        return f"## {what}; seeds until decided, each comparison at α = {alphas}, Bonferroni)"
    m = max((f.family_size for f in members), default=0)
    if family == PRIMARY:
        return f"## Primary claims (confirmatory; Holm over {m}, α = 0.05/{m} at its first step)"
    return f"## Secondary claims (exploratory; Holm over {m} in their own family, α = 0.05/{m} at its first step)"


def to_markdown(findings: List[Finding], metric: str = "test_acc1") -> str:
    """The findings: the method note, then one table per family (primary first): claim, paper, ours
    (Δ [95 % CI], Holm p, n), verdict."""
    out = ["# The paper's claims against the committed studies", "", METHOD_NOTE.format(metric=metric)]
    if any(f.sequential is not None for f in findings):
        out += ["", SEQUENTIAL_NOTE]
    for family in (PRIMARY, EXPLORATORY):
        members = [f for f in findings if f.family == family]
        if members:
            out += ["", _family_head(findings, family), ""] + _table(members, metric)
    return "\n".join(out) + "\n"


def to_json(findings: List[Finding], metric: str = "test_acc1") -> str:
    """Every finding as data (``findings.json`` beside the table): what tests and READMEs check numbers against."""
    import json
    from dataclasses import asdict

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    rows = [clean(asdict(f)) for f in findings]
    for r in rows:  # a fixed-n claim's record stays what it was
        if r.get("sequential") is None:
            r.pop("sequential", None)
    data = {"metric": metric, "alpha": ALPHA, "findings": rows}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m irpe_bench.report.findings CLAIMS.yaml [OUT.md]``: print (and write, with ``OUT.json`` beside
    it) the findings."""
    import argparse

    import yaml

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("claims", type=Path)
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("--partial", action="store_true",
                   help="studies still running: claims on unfinished cells are listed as pending")
    args = p.parse_args(argv)
    spec = yaml.safe_load(args.claims.read_text(encoding="utf-8")) or {}
    metric = spec.get("metric", "test_acc1")
    findings = check_claims(spec, args.claims.parent, partial=args.partial)
    table = to_markdown(findings, metric)
    print(table, end="")
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
        args.out.with_suffix(".json").write_text(to_json(findings, metric), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
