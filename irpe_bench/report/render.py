"""The board as text: Markdown (README/PR-ready) and CSV (spreadsheets, plain values); the tables and header
that ``page.py`` renders as self-contained HTML.

Each table is built once as header + rows of display strings and then rendered to Markdown or HTML, so both
show the same numbers. CSV holds raw values (full precision, empty for missing) because it is for machines.
Nothing here reads a clock or the storage: the same board and meta give the same bytes.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from ..redact import redact
from .intervals import N_RESAMPLES, SEED, T_CI
from .leaderboard import GroupRow, Leaderboard, TrialRow
from .objectives import objective_label
from .stalls import STALL_MIN_RUNS, stall_text

DASH = "—"
REASON_CHARS = 160  # Markdown/HTML show the head of a traceback; CSV and JSON keep all of it
Table = Tuple[List[str], List[List[str]]]

REFERENCE_NOTE = (
    " Here Δ, p (Holm) and the minimum detectable difference compare each row with the reference row `{ref}` "
    "(study.reference), over the seeds both ran, instead of a config-matched no-RPE baseline."
)
RANKING_NOTE = (
    "Rows are ordered by mean {label}, then config key; the band is what the data support: rows that no "
    "Holm-adjusted pairwise t-test (paired over common seeds, Welch where seeds do not pair; p < 0.05) separates "
    "share a band, and their order inside it means nothing. Δ compares each row with the no-RPE baseline trained "
    "with exactly the same configuration apart from iRPE and the seed (same epochs, data, abs_pos, optimiser …), "
    "over the seeds both ran; p (Holm) is adjusted over this study's rows. “—” means no such baseline was run or "
    "no test is possible (n = 1). Speeds are the median (min–max) over a row's trials; ×base divides medians and "
    "needs the very same device, precision and batch size."
)


# ------------------------------------------------------------------------------------------------ formats
def _f(x: Optional[float], digits: int = 2) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def _signed(x: Optional[float], digits: int = 2) -> str:
    return DASH if x is None else f"{x:+.{digits}f}"


def _ratio(x: Optional[float]) -> str:
    return DASH if x is None else f"{x:.2f}×"


def _si(x: Optional[float], signed: bool = False) -> str:
    """5717416 → ``5.72M``: parameter and MAC counts are read by magnitude, not by digit."""
    if x is None:
        return DASH
    sign = ("+" if x >= 0 else "-") if signed else ("-" if x < 0 else "")
    a = abs(x)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if a >= scale:
            return f"{sign}{a / scale:.2f}{unit}"
    return f"{sign}{a:g}"


def _speed(x: Optional[float]) -> str:
    return DASH if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _acc(mean: Optional[float], std: Optional[float]) -> str:
    return _f(mean) if std is None else f"{mean:.2f} ± {std:.2f}"


def _bool(x: Optional[bool]) -> str:
    return DASH if x is None else "yes" if x else "no"


def _text(x: Any) -> str:
    return DASH if x is None or x == "" else str(x)


def _reason(x: Optional[str]) -> str:
    if not x:
        return DASH
    one_line = " ".join(str(x).split())
    return one_line if len(one_line) <= REASON_CHARS else one_line[:REASON_CHARS - 1] + "…"


def redact_data(obj: Any) -> Any:
    """``redact`` applied to every string inside nested dicts/lists (for the JSON copy of ``meta``)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {k: redact_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_data(v) for v in obj]
    return obj


def _meta_value(v: Any) -> str:
    return redact(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))


def header_items(board: Leaderboard, meta: Optional[Mapping[str, Any]]) -> List[Tuple[str, str]]:
    """Sweep attributes stored in the study, then the caller's meta (e.g. when/where the report was made)."""
    items = [(f"sweep.{k}", _meta_value(v)) for k, v in sorted(board.sweep.items())]
    return items + [(str(k), _meta_value(v)) for k, v in (meta or {}).items()]


def counts_line(board: Leaderboard) -> str:
    c = board.counts
    retried = f" (+{c['retried']} retried)" if c["retried"] else ""
    discarded = (f" ({c['discarded']} over-budget trial(s) of a worker race discarded untrained)"
                 if c.get("discarded") else "")
    return (f"{c['complete']} complete · {c['pruned']} pruned · {c['failed']} failed{retried} · "
            f"{c['running']} running · {c['total']} trials in {c['groups']} groups{discarded}")


# ------------------------------------------------------------------------------------------------ tables
def _ci(ci: Optional[Sequence[float]], signed: bool = False) -> str:
    fmt = _signed if signed else _f
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _p(p: Optional[float]) -> str:
    return DASH if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def _spread(median: Optional[float], span: Optional[Sequence[float]]) -> str:
    if median is None or span is None:
        return DASH
    return _speed(median) if span[0] == span[1] else f"{_speed(median)} ({_speed(span[0])}–{_speed(span[1])})"


def _test(g: GroupRow) -> str:
    if g.test is None:
        return DASH
    return f"{g.test} (n={g.n_pairs})" if g.n_pairs is not None and g.n_pairs != g.n else g.test


def _extra_costs(board: Leaderboard) -> List[str]:
    """Cost objectives the ranking table does not show anyway (params and train speed it always shows)."""
    return [o["key"] for o in board.objectives or [] if o["key"] in ("macs", "infer_img_s")]


def _goal_cells(board: Leaderboard, g: GroupRow) -> List[str]:
    """Pareto (several objectives) and feasible (constraints) cells; none for a study of old."""
    return ([_bool(g.pareto)] if board.objectives else []) + ([_bool(g.feasible)] if board.constraints else [])


def ranking_table(board: Leaderboard) -> Table:
    show_val = not board.optimistic  # otherwise the metric column already is the optimistic number
    head = ["band", "variant", "n"] + (["Pareto"] if board.objectives else []) + (
        ["feasible"] if board.constraints else [])
    head += [f"{board.metric_label} mean [95 % CI]", "stalled (val)", "Δ vs baseline [95 % CI]", "p (Holm)", "test",
             "vs baseline"]
    head += ["val acc1 best (optimistic)"] if show_val else []
    head += ["params", "train img/s median (min–max)", "×base train"]
    extra = _extra_costs(board)
    head += [{"macs": "MACs", "infer_img_s": "infer img/s median (min–max)"}[k] for k in extra] + ["trials"]
    refs = {g.baseline_key for g in board.groups}
    rows = []
    for g in board.groups:
        delta = "reference" if g.config_key in refs else _signed(g.delta) + _ci(g.delta_ci95, signed=True)
        row = [g.rank_band, g.variant, str(g.n), *_goal_cells(board, g), _mean_cell(g), _stall_cell(g), delta,
               _p(g.p_holm), _test(g), _text(g.verdict)]
        row += [_f(g.acc1_best_mean)] if show_val else []
        row += [_si(g.params), _spread(g.train_img_s, g.train_img_s_range), _ratio(g.train_speed)]
        row += [_si(g.macs) if k == "macs" else _spread(g.infer_img_s, g.infer_img_s_range) for k in extra]
        row.append(" ".join(map(str, g.trials)))
        rows.append(row)
    return head, rows


BOOT_MARK = "‡"  # a row whose CI is the bootstrap's (its t interval would leave [0, 100])


def _mean_cell(g: GroupRow) -> str:
    mark = BOOT_MARK if g.ci_method not in (None, T_CI) else ""
    return _f(g.mean) + _ci(g.ci95) + mark


def _stall_cell(g: GroupRow) -> str:
    return _text(stall_text(g.stalled, g.n, g.stalled_seeds))


def interval_text(board: Leaderboard) -> str:
    """How the per-row and the difference intervals were made (named in the header)."""
    boot = [g.variant for g in board.groups if g.ci_method not in (None, T_CI)]
    text = ("per row, the Student-t 95 % CI of the mean where it lies inside [0, 100]; where it does not, the BCa "
            f"bootstrap 95 % CI of the mean (scipy.stats.bootstrap, {N_RESAMPLES:,} resamples, seed {SEED}), "
            f"marked {BOOT_MARK}: ")
    text += (", ".join(boot) + " (at small n it under-covers: read it as descriptive)") if boot else "no row here"
    return text + ". Δ: the paired t 95 % CI of the mean paired difference."


def mdd_text(board: Leaderboard) -> str:
    m = board.mdd_family
    level = (f"α = 0.05/{m} = {board.mdd_alpha:.4g}, Holm's first step over the {m} rows tested vs baseline"
             if m > 1 else "α = 0.05, one row tested vs baseline")
    return (f"{board.mdd:.2f} points at 80 % power (paired t, two-sided, {level}; n = {board.mdd_n} pairs), from "
            f"the root-mean-square ({board.mdd_sd:.2f}) of the paired-difference SDs of {board.mdd_rows} row(s) vs "
            "baseline.")


def stalls_item(board: Leaderboard) -> str:
    rows = [g for g in board.groups if g.stalled is not None]
    n_runs, n_stalled = sum(g.n for g in rows), sum(g.stalled for g in rows)
    return (f"a run is stalled when its best validation top-1 (`acc1_best`) is more than {board.stall_margin:g} "
            f"points below the median of its row's runs (rows of ≥ {STALL_MIN_RUNS} runs); stalled runs are "
            f"counted and kept, never dropped: {n_stalled} of {n_runs} runs in {len(rows)} row(s).")


def _n_text(board: Leaderboard) -> str:
    ns: dict = {}
    for g in board.groups:
        ns.setdefault(g.n, []).append(g)
    if len(ns) == 1:
        return f"{next(iter(ns))} per group ({len(board.groups)} groups)"
    return ", ".join(f"{n} for {len(gs)} group{'s' * (len(gs) > 1)}" for n, gs in sorted(ns.items(), reverse=True))


def summary_items(board: Leaderboard) -> List[Tuple[str, str]]:
    """The statistics header: what is ranked, with how many seeds, and what the study can resolve."""
    if not board.groups:
        return []
    if board.optimistic:
        metric = (f"{board.metric_label} (`{board.metric}` in trials.csv): the best validation top-1 (%) over "
                  f"epochs — optimistic, the same images chose the epoch; {board.metric_note}.")
    else:
        metric = (f"{board.metric_label} (`{board.metric}` in trials.csv): top-1 (%) on the held-out test split "
                  "at the epoch chosen on validation; val acc1 best (optimistic) is the trial's best validation "
                  "top-1 over epochs.")
    items = [("metric", metric), ("n", _n_text(board))]
    n_rows = len(board.groups)
    if not board.has_uncertainty:
        items.append(("uncertainty", f"none — this study has no uncertainty estimate (n = 1 per group): no "
                                     f"confidence interval, no test, every rank band is 1–{n_rows}."))
    else:
        items.append(("intervals", interval_text(board)))
        if any(g.stalled is not None for g in board.groups):
            items.append(("stalls", stalls_item(board)))
    if board.has_uncertainty and board.mdd is not None:
        items.append(("minimum detectable difference", mdd_text(board)))
    elif board.has_uncertainty:
        items.append(("minimum detectable difference", "not estimated: no row pairs with its baseline on ≥ 2 seeds "
                      "(add a no-RPE row, model.rpe.method: none, trained with the same config, or compare with "
                      "any row: study.reference: <variant>)."))
    resolved = [g for g in board.groups if g.verdict in ("higher", "lower")]
    unresolved = [g for g in board.groups if g.verdict and g.verdict.startswith("not resolved")]
    if resolved:
        items.append(("resolved vs baseline", "; ".join(
            f"{g.variant} {g.verdict} ({_signed(g.delta)}{_ci(g.delta_ci95, signed=True)}, p (Holm) "
            f"{_p(g.p_holm)})" for g in resolved)))
    if unresolved:
        mdd = f"; minimum detectable difference {board.mdd:.2f}" if board.mdd is not None else ""
        items.append(("not resolved", ", ".join(g.variant for g in unresolved) +
                      f" (95 % CI of Δ includes 0, or not significant after Holm{mdd})"))
    if board.sequential:
        items.append(("seeds until decided", sequential_text(board.sequential)))
    return items + goal_items(board)


def sequential_text(seq: Mapping[str, Any]) -> str:
    """The design of a seeds-until-decided study, and why its ranking's p-values are descriptive."""
    spec = seq.get("spec") or {}
    margin = f", or its CI inside ±{spec['margin']:g}" if spec.get("margin") else ""
    return (f"{seq.get('method')}; looks at {spec.get('min')}, {spec.get('min', 0) + spec.get('step', 0)}, … "
            f"{spec.get('max')} seeds; each row at α = {seq.get('alpha_row', float('nan')):.4g} (its family of "
            f"{seq.get('family')} rows, study alpha {spec.get('alpha', 0.05):g}), so its repeated CIs have the "
            f"simultaneous level 1 − α. A row stops when its repeated CI on validation excludes 0{margin}; the "
            "test Δ and its repeated CI at that look are the reported result (section 'Seeds until decided'). "
            "The ranking's paired t, Holm p and verdicts ignore the looks: for this study they are descriptive, "
            "not decisions.")


def sequential_table(board: Leaderboard) -> Table:
    """Each compared row of a seeds-until-decided study: where it stopped, why, and its repeated CIs."""
    head = ["variant", "vs", "status", "seeds", "looks", "val Δ [repeated CI] (decides)",
            "test Δ [repeated CI] (reported)", "test decision"]
    rows = []
    for r in (board.sequential or {}).get("rows", []):
        if r["status"] == "baseline":
            continue
        val, test = r["val"], r["test"]
        rows.append([r["variant"], _text(r["vs"]), _text(r["status"]), _text(r["seeds"]),
                     ", ".join(map(str, r["looks"])) or DASH, _signed(val["delta"]) + _ci(val["ci"], signed=True),
                     _signed(test["delta"]) + _ci(test["ci"], signed=True), _text(test["decision"])])
    return head, rows


def sizes_table(board: Leaderboard) -> Table:
    """Test top-1 at each other image size (``eval.img_sizes``), per row, with Δ against the row's baseline or
    reference at that size (paired t over common seeds, Holm over the rows at that size)."""
    head = ["variant", "img size", "n", "test acc1 mean [95 % CI]", "Δ vs baseline [95 % CI]", "test", "p (Holm)"]
    rows = []
    for g in board.groups:
        for size, st in (g.by_img_size or {}).items():
            rows.append([g.variant, size, str(st["n"]), _f(st["mean"]) + _ci(st["ci95"]),
                         (_signed(st["delta"]) + _ci(st["delta_ci95"], signed=True)) if st["delta"] is not None
                         else DASH, _text(st["test"]), _p(st["p_holm"])])
    return head, rows


SIZES_NOTE = ("The checkpoint each run was tested with at its training size, tested again at each size after the "
              "model was made to take it (absolute embeddings resampled as timm does, iRPE buckets and RoPE angles "
              "for the new grid, bias tables as each method's paper transfers them); the same held-out images. "
              "Δ and p (Holm) compare each row with the same baseline or reference as the ranking, at that size.")


def sizes_note(board: Leaderboard) -> str:
    mdd = "; ".join(f"{size}: {_f(v)}" if v is not None else f"{size}: not estimated"
                    for size, v in (board.img_size_mdd or {}).items())
    return SIZES_NOTE + (f" Minimum detectable difference at 80 % power (paired t, Holm's first step over the rows "
                         f"at each size), by size: {mdd}." if mdd else "")


def goal_items(board: Leaderboard) -> List[Tuple[str, str]]:
    """What a multi-objective, constrained or repeated-seed study adds to the header (nothing for one of old)."""
    items = []
    if board.objectives:
        names = ", ".join(f"{o['metric']} ({o['direction']})" for o in board.objectives)
        keys = ", ".join(f"{objective_label(o['key'], board.metric_label)} (`{o['key']}`)" for o in board.objectives)
        slugs = [g.variant for g in board.groups]  # a slug names a method, not e.g. a searched lr: add the trials
        front = [g.variant + (f" (trials {' '.join(map(str, g.trials))})" if slugs.count(g.variant) > 1 else "")
                 for g in board.groups if g.pareto]
        items.append(("objectives", f"{names}, optimised by the sampler on validation. The Pareto column is over "
                      f"group means: {keys}; for accuracy the headline {board.metric_label}, not the validation "
                      "accuracy the sampler saw; params / MACs are per configuration, speeds the group's median. "
                      "A group is on the front when no other group is at least as good in every objective and "
                      "strictly better in one" + ("; infeasible groups never are" if board.constraints else "") +
                      f". On the front: {', '.join(front) or 'none'}."))
    if board.constraints:
        bad = sorted({t.number for t in board.trials if t.feasible is False})
        done = {t.number for t in board.trials if t.state == "COMPLETE"}
        items.append(("constraints", f"{'; '.join(board.constraints)}: {len(bad)} of {len(done)} complete trials "
                      "infeasible (listed under Infeasible); a group with an infeasible trial has feasible = no."))
    if board.repeats:
        items.append(("repeats", f"{board.repeats} seeds per trial (the same seeds for every configuration, so "
                      "they pair); each seed is one sample: n counts seeds, trials.csv has one row per seed."))
    return items


def infeasible_table(board: Leaderboard) -> Table:
    """The trials that broke a constraint (one row per trial, its seeds together)."""
    seeds: dict = {}
    rows = {}
    for t in board.trials:
        if t.feasible is False:
            rows.setdefault(t.number, t)
            seeds.setdefault(t.number, []).append(_text(t.seed))
    head = ["trial", "variant", "seed", "violated (relative to the bound)"]
    return head, [[str(n), t.variant, " ".join(seeds[n]), _text(t.violated)] for n, t in rows.items()]


def failed_table(board: Leaderboard) -> Table:
    head = ["trial", "variant", "seed", "status", "epochs", "reason"]
    return head, [[str(t.number), t.variant, _text(t.seed), _text(t.status), str(t.epochs_reported),
                   _reason(t.reason)] for t in board.failed]


def pruned_table(board: Leaderboard) -> Table:
    head = ["trial", "variant", "seed", "epochs reached", "last val acc1", "reason"]
    return head, [[str(t.number), t.variant, _text(t.seed), str(t.epochs_reported), _f(t.last_acc1),
                   _reason(t.reason)] for t in board.pruned]


def running_table(board: Leaderboard) -> Table:
    head = ["trial", "variant", "seed", "epochs so far", "last val acc1"]
    return head, [[str(t.number), t.variant, _text(t.seed), str(t.epochs_reported), _f(t.last_acc1)]
                  for t in board.running]


def sections(board: Leaderboard) -> List[Tuple[str, Table, str, str]]:
    """(title, table, text when empty, note below) in report order; shared by Markdown and HTML."""
    retried = ""
    if board.retried:
        nums = ", ".join(str(t.number) for t in board.retried)
        retried = (f"Not listed: trial(s) {nums}, which failed and were retried; the retry's own row carries "
                   "the outcome.")
    infeasible = [("Infeasible", infeasible_table(board), "No infeasible trials.", "")] if board.constraints else []
    sequential = [("Seeds until decided", sequential_table(board), "No look taken yet.",
                   "Each row against its reference, paired by seed, at its last look; the repeated CIs cover at "
                   "every look at once, so they stay valid where the row stopped.")] if board.sequential else []
    sizes = [("At other image sizes", sizes_table(board), "No row was tested at another size.", sizes_note(board))] \
        if board.img_sizes else []
    return [
        ("Ranking", ranking_table(board), "No trial has completed yet.", ranking_note(board)),
        *sequential,
        *sizes,
        *infeasible,
        ("Failed", failed_table(board), "No failed trials.", retried),
        ("Pruned", pruned_table(board), "No pruned trials.", ""),
        ("Running", running_table(board), "No running trials.", ""),
    ]


# ------------------------------------------------------------------------------------------------ markdown
def _md_cell(s: str) -> str:
    """Escape what would end a cell or be read as an HTML tag (GitHub drops unknown tags like ``<noabs>``)."""
    for ch in "\\|<>":
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", " ")


def _md_text(s: str) -> str:
    """Prose in a list item: keep ``code`` spans, escape tags and pipes outside them."""
    parts = s.split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<").replace(">", "\\>") for i, p in enumerate(parts))


def _md_table(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(board: Leaderboard, meta: Optional[Mapping[str, Any]] = None,
                plots: Optional[Mapping[str, Optional[Path]]] = None) -> str:
    """The report for a README or PR; ``plots`` (name → PNG path beside the file) are linked by file name."""
    out = [f"# Leaderboard: {_md_cell(board.study_name)}", "", counts_line(board), ""]
    out += [f"- **{_md_cell(k)}**: `{' '.join(v.split())}`" for k, v in header_items(board, meta)]
    stats = summary_items(board)
    if stats:
        out += ["", "## Statistics", ""] + [f"- **{k}**: {_md_text(v)}" for k, v in stats]
    for title, table, empty, note in sections(board):
        out += ["", f"## {title}", "", _md_table(table) if table[1] else f"_{empty}_"]
        if note:
            out += ["", f"> {note}"]
    made = [(n, p) for n, p in (plots or {}).items() if p is not None]
    if made:
        out += ["", "## Plots", ""] + [f"![{n}]({Path(p).name})" for n, p in made]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ csv
def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return repr(v) if isinstance(v, float) else v


def _write_rows(path: Path, rows: Sequence[Any], cls: type, omit: Sequence[str] = ()) -> Path:
    names = [f.name for f in fields(cls) if f.name not in omit]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(names)
        for r in rows:
            d = asdict(r)
            w.writerow([_csv_value(d[n]) for n in names])
    return path


def to_csv(board: Leaderboard, path: Path) -> Tuple[Path, Path]:
    """``leaderboard.csv`` (one row per group) and ``trials.csv`` (one per trial) in the folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    omit = board.omitted()
    return (_write_rows(path / "leaderboard.csv", board.groups, GroupRow, omit["group"]),
            _write_rows(path / "trials.csv", board.trials, TrialRow, omit["trial"]))


def ranking_note(board: Leaderboard) -> str:
    """The note under the ranking: how rows are ordered and banded, and what Δ compares with."""
    note = RANKING_NOTE.format(label=board.metric_label)
    return note + REFERENCE_NOTE.format(ref=board.reference) if board.reference else note
