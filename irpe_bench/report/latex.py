"""The ranking as a paste-ready LaTeX table (booktabs): band, variant, n, mean ± CI half-width, Δ with its CI.

Bold marks only what is significant after Holm (Δ and p of a row whose ``significant`` is true), so a reader
cannot mistake an unresolved lead for a result. A multi-objective study adds a Pareto column, a constrained one
marks infeasible groups with a dagger. The preamble needs ``\\usepackage{booktabs}``. Pure text of the
board: the same board gives the same bytes.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from .intervals import T_CI
from .leaderboard import GroupRow, Leaderboard
from .objectives import objective_label

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}"}


def escape(text: str) -> str:
    """Plain text → LaTeX text mode (every special character, so a variant slug can never break the table)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def _num(x: float, signed: bool = False) -> str:
    return f"{x:+.2f}" if signed else f"{x:.2f}"  # in math mode an ASCII "-" renders as a minus


def _mean_ci(g: GroupRow) -> str:
    if g.ci95 is None:
        return f"${_num(g.mean)}$"
    if g.ci_method not in (None, T_CI):  # a bootstrap interval is not symmetric: print both ends
        return f"${_num(g.mean)}\\ [{_num(g.ci95[0])}, {_num(g.ci95[1])}]^\\ddagger$"
    return f"${_num(g.mean)} \\pm {(g.ci95[1] - g.ci95[0]) / 2:.2f}$"


def _delta(g: GroupRow, refs: Sequence[str]) -> str:
    if g.config_key in refs:
        return "reference"
    if g.delta is None:
        return "--"
    ci = "" if g.delta_ci95 is None else f"\\ [{_num(g.delta_ci95[0], True)}, {_num(g.delta_ci95[1], True)}]"
    body = f"{_num(g.delta, True)}{ci}"
    return f"$\\mathbf{{{body}}}$" if g.significant else f"${body}$"


def _p(p: Optional[float], bold: bool) -> str:
    if p is None:
        return "--"
    s = "<0.001" if p < 0.001 else f"{p:.3f}"
    return f"$\\mathbf{{{s}}}$" if bold else f"${s}$"


def to_latex(board: Leaderboard) -> str:
    """A ``table`` float with a ``tabular`` in booktabs style; the caption states metric, n and the MDD."""
    refs = [g.baseline_key for g in board.groups if g.baseline_key]
    pareto = bool(board.objectives)
    label = escape(board.metric_label)
    caption = [f"{escape(board.study_name)}: {label} (\\%), mean $\\pm$ 95\\,\\% CI half-width (Student $t$) "
               "over seeds; $\\Delta$ to the configuration-matched no-RPE baseline with its 95\\,\\% CI; "
               "$p$ Holm-adjusted; bold: significant after Holm ($p < 0.05$). Band: the ranks the data allow."]
    if board.optimistic:
        caption.append("Optimistic: the validation images that chose the epoch also score it.")
    if board.objectives:
        caption.append("Pareto: on the front of the group means (" + ", ".join(
            f"{escape(objective_label(o['key'], board.metric_label))} {o['direction'][:3]}."
            for o in board.objectives) + "), accuracy the headline metric.")
    if board.constraints:
        caption.append("$^\\dagger$ infeasible: a trial broke " + "; ".join(
            f"\\texttt{{{escape(c)}}}" for c in board.constraints) + ".")
    if any(g.ci_method not in (None, T_CI) for g in board.groups):
        caption.append("$^\\ddagger$ mean [95\\,\\% BCa bootstrap CI]: the $t$ interval would leave [0, 100].")
    if not board.has_uncertainty:
        caption.append("No uncertainty estimate: one seed per group.")
    elif board.mdd is not None:
        level = (f"$\\alpha = 0.05/{board.mdd_family}$, Holm's first step over {board.mdd_family} rows"
                 if board.mdd_family > 1 else "$\\alpha = 0.05$")
        caption.append(f"Minimum detectable difference at 80\\,\\% power ({level}): {board.mdd:.2f} points "
                       f"($n = {board.mdd_n}$ pairs).")
    lines: List[str] = [
        f"% irpe_bench leaderboard: {escape(board.study_name)} (metric: {escape(board.metric)})",
        "\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{llrlll{'l' if pareto else ''}}}", "\\toprule",
        f"Band & Variant & $n$ & {label} & $\\Delta$ vs baseline [95\\,\\% CI] & $p$ (Holm)"
        f"{' & Pareto' if pareto else ''} \\\\", "\\midrule",
    ]
    for g in board.groups:
        dagger = "$^\\dagger$" if g.feasible is False else ""
        cells = [escape(g.rank_band).replace("–", "--"), f"\\texttt{{{escape(g.variant)}}}{dagger}", str(g.n),
                 _mean_ci(g), _delta(g, refs), _p(g.p_holm, bool(g.significant))]
        cells += [{True: "yes", False: "no", None: "--"}[g.pareto]] if pareto else []
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{' '.join(caption)}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"
