"""The board as one self-contained HTML page: the tables of ``render`` (sortable by a click on a header) and the
plots inlined as base64 PNG. Nothing is fetched from anywhere (no script, style or image file, no network), so
the page works offline and attached to a mail; ``tests/test_report_browser.py`` checks it in headless Chromium.
All text is escaped.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Optional

from .leaderboard import Leaderboard
from .render import Table, counts_line, header_items, sections, summary_items

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
