"""The board as text: Markdown (README/PR-ready), CSV (spreadsheets, plain values) and self-contained HTML.

Each table is built once as header + rows of display strings and then rendered to Markdown or HTML, so both
show the same numbers. CSV holds raw values (full precision, empty for missing) because it is for machines.
Nothing here reads a clock or the storage: the same board and meta give the same bytes.
"""
from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from ..redact import redact
from .leaderboard import GroupRow, Leaderboard, TrialRow

DASH = "—"
REASON_CHARS = 160  # Markdown/HTML show the head of a traceback; CSV and JSON keep all of it
Table = Tuple[List[str], List[List[str]]]

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


def ranking_table(board: Leaderboard) -> Table:
    show_val = not board.optimistic  # otherwise the metric column already is the optimistic number
    head = ["band", "variant", "n", f"{board.metric_label} mean [95 % CI]", "Δ vs baseline [95 % CI]",
            "p (Holm)", "test", "vs baseline"]
    head += ["val acc1 best (optimistic)"] if show_val else []
    head += ["params", "train img/s median (min–max)", "×base train", "trials"]
    refs = {g.baseline_key for g in board.groups}
    rows = []
    for g in board.groups:
        delta = "reference" if g.config_key in refs else _signed(g.delta) + _ci(g.delta_ci95, signed=True)
        row = [g.rank_band, g.variant, str(g.n), _f(g.mean) + _ci(g.ci95), delta, _p(g.p_holm), _test(g),
               _text(g.verdict)]
        row += [_f(g.acc1_best_mean)] if show_val else []
        row += [_si(g.params), _spread(g.train_img_s, g.train_img_s_range), _ratio(g.train_speed),
                " ".join(map(str, g.trials))]
        rows.append(row)
    return head, rows


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
    elif board.mdd is not None:
        items.append(("minimum detectable difference",
                      f"{board.mdd:.2f} points at 80 % power (paired t, α = 0.05, two-sided, n = {board.mdd_n} "
                      f"pairs), from the root-mean-square ({board.mdd_sd:.2f}) of the paired-difference SDs of "
                      f"{board.mdd_rows} row(s) vs baseline."))
    else:
        items.append(("minimum detectable difference", "not estimated: no row pairs with its baseline on ≥ 2 seeds."))
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
    return items


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
    return [
        ("Ranking", ranking_table(board), "No trial has completed yet.", RANKING_NOTE.format(label=board.metric_label)),
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
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return repr(v) if isinstance(v, float) else v


def _write_rows(path: Path, rows: Sequence[Any], cls: type) -> Path:
    names = [f.name for f in fields(cls)]
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
    return (_write_rows(path / "leaderboard.csv", board.groups, GroupRow),
            _write_rows(path / "trials.csv", board.trials, TrialRow))


# ------------------------------------------------------------------------------------------------ html
_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:nth-child(2),th:nth-child(2){text-align:left}th{background:#f3f3f3}img{max-width:48%;margin:4px}"
        ".note{color:#555;font-size:13px;max-width:70em}th.sortable{cursor:pointer}"
        "th[aria-sort=ascending]::after{content:\" \\25B2\"}th[aria-sort=descending]::after{content:\" \\25BC\"}")

# Click a header to sort its table by that column, again to reverse. Cells compare as numbers where they start
# with one ("74.50 [73.1, 75.9]", "1–3", "1,010 (990–1,020)", "5.72M", "0.95×", "<0.001"), else as text; empty
# cells and "—" go last either way; ties keep the report's order. Inline and dependency-free: the page is one
# file that works offline.
_SORT_JS = """(function(){
var SI={K:1e3,M:1e6,G:1e9};
function key(td){var t=td.textContent.trim();if(t===""||t==="\u2014")return null;
var m=t.replace(/,/g,"").replace(/\u2212/g,"-").match(/^[<>]?([+-]?\\d+(?:\\.\\d+)?(?:e[+-]?\\d+)?)([KMG]?)/);
return m?parseFloat(m[1])*(SI[m[2]]||1):t.toLowerCase();}
function cmp(a,b){if(a===null||b===null)return(a===null)-(b===null);
var na=typeof a==="number",nb=typeof b==="number";if(na&&nb)return a-b;if(na!==nb)return na?-1:1;
return a<b?-1:a>b?1:0;}
document.querySelectorAll("table.sortable").forEach(function(table){
var ths=table.tHead.rows[0].cells;
Array.prototype.forEach.call(ths,function(th,col){th.classList.add("sortable");th.title="click to sort";
th.addEventListener("click",function(){
var dir=th.getAttribute("aria-sort")==="ascending"?"descending":"ascending",sign=dir==="ascending"?1:-1;
Array.prototype.forEach.call(ths,function(h){h.removeAttribute("aria-sort");});th.setAttribute("aria-sort",dir);
var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows).map(function(tr,i){
return{tr:tr,i:i,k:key(tr.cells[col])};});
rows.sort(function(a,b){if(a.k===null||b.k===null)return cmp(a.k,b.k)||a.i-b.i;return sign*cmp(a.k,b.k)||a.i-b.i;});
rows.forEach(function(r){body.appendChild(r.tr);});});});});
})();"""


def _html_table(table: Table, name: str = "") -> str:
    """A sortable table (``_SORT_JS``); ``name`` gives it the id ``table-<name>`` (e.g. ``table-ranking``)."""
    head, rows = table
    esc = html.escape
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    ident = f" id=\"table-{esc(name.lower())}\"" if name else ""
    return f"<table class=\"sortable\"{ident}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def to_html(board: Leaderboard, meta: Optional[Mapping[str, Any]] = None,
            plots: Optional[Mapping[str, Any]] = None) -> str:
    """One file to mail or attach: the tables (sortable by a click on a header: an inline script, no network) plus
    the plots inlined as base64 PNG; all text escaped.

    ``plots`` maps a name to a PNG path, to ``None``, or to a ``PlotResult`` (then a skipped plot shows why).
    """
    e = html.escape
    title = f"Leaderboard: {board.study_name}"
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>", f"<p>{e(counts_line(board))}</p>"]
    items = header_items(board, meta)
    if items:
        parts.append("<ul>" + "".join(f"<li><b>{e(k)}</b>: <code>{e(v)}</code></li>" for k, v in items) + "</ul>")
    stats = summary_items(board)
    if stats:
        parts.append("<h2>Statistics</h2><ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in stats)
                     + "</ul>")
    for name, table, empty, note in sections(board):
        parts.append(f"<h2>{e(name)}</h2>")
        parts.append(_html_table(table, name) if table[1] else f"<p class=\"note\">{e(empty)}</p>")
        if note:
            parts.append(f"<p class=\"note\">{e(note)}</p>")
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, p in plots.items():
            path, reason = (getattr(p, "path", p), getattr(p, "reason", None))
            if path is not None and Path(path).is_file():
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                parts.append(f"<img alt=\"{e(name)}\" title=\"{e(name)}\" src=\"data:image/png;base64,{data}\">")
            else:
                parts.append(f"<p class=\"note\">{e(name)}: not drawn ({e(reason or 'no file')})</p>")
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    return "\n".join(parts) + "\n"
