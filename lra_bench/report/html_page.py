"""The pieces of `lra report --html`'s pages: one page template with its style and sort script
inline (the site opens from file://, with no server and nothing fetched from elsewhere), tables
from the report's display rows, and a small inline SVG chart of one run's metrics.

Every string that reaches a page passes through `esc` (html.escape): run ids, model names,
config values and messages are user-provided.
"""

from __future__ import annotations

import html
import json
import math
import re
from urllib.parse import quote

GENERATOR = "lra-bench report --html"  # the <meta name=generator> that marks a folder as ours

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 1.5em 3em;
color:#1d1d1f}
nav{padding:.8em 0;border-bottom:1px solid #ddd;margin-bottom:1em}nav a{margin-right:1.2em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #eee}
h3{font-size:1em}p.title{margin:.4em 0;color:#444}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right;vertical-align:top}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
th{background:#f4f4f6}table.sortable th{cursor:pointer;user-select:none}
table.prose td{text-align:left}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
tr.baseline td{background:#fff8e1;font-style:italic}tr.ours td{background:#eef6ff}
pre,code{font:12px/1.4 ui-monospace,monospace;background:#f6f6f8}
pre{padding:.7em;overflow:auto}img{max-width:100%;border:1px solid #eee}
details{margin:.6em 0}summary{cursor:pointer;color:#333}.muted{color:#777}
svg.chart{border:1px solid #eee;margin:.3em 1em .3em 0;background:#fff}
"""

# Click a header to sort its table by that column (numbers by value, "-" and words last); a
# second click reverses. `#sort=table-<name>:<column>:<asc|desc>` sorts on load, which is how the
# browser test checks the script in a real browser; `data-sort-ready` says the script ran.
SCRIPT = """
(function(){
function key(td){var t=td.textContent.trim();var v=parseFloat(t.replace(/,/g,''));
 return isNaN(v)?{n:false,v:t.toLowerCase()}:{n:true,v:v};}
function sortBy(table,col,dir){var body=table.tBodies[0];
 var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[col]),y=key(b.cells[col]);
  if(x.n!==y.n)return x.n?-1:1;var c=x.n?x.v-y.v:(x.v<y.v?-1:x.v>y.v?1:0);
  return dir==='asc'?c:-c;});
 rows.forEach(function(r){body.appendChild(r);});
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
  if(i===col)th.setAttribute('aria-sort',dir==='asc'?'ascending':'descending');
  else th.removeAttribute('aria-sort');});}
document.querySelectorAll('table.sortable').forEach(function(table){
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
  th.addEventListener('click',function(){
   sortBy(table,i,th.getAttribute('aria-sort')==='descending'?'asc':'desc');});});});
var m=/^#sort=([\\w-]+):(\\d+):(asc|desc)$/.exec(location.hash);
if(m){var t=document.getElementById(m[1]);if(t&&t.tBodies)sortBy(t,+m[2],m[3]);}
document.body.setAttribute('data-sort-ready','yes');
})();
"""


def esc(value) -> str:
    """A value as page text, escaped (quotes included: safe inside attributes too)."""
    return html.escape("-" if value is None else str(value), quote=True)


def prose(text: str) -> str:
    """Escaped text with the report's `code` spans shown as code (titles and notes use them)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(text))


def href(*parts: str) -> str:
    """A relative link to a file in the site, each part URL-quoted."""
    return "/".join(quote(p, safe="") for p in parts)


def table(header: list[str], rows: list[list[str]], table_id: str | None = None,
          sortable: bool = False, links: dict[int, dict[str, str]] | None = None,
          row_classes: list[str] | None = None, sentences: bool = False) -> str:
    """`links`: column -> {cell text: relative href}; a cell found there becomes a link. The
    table's id is `table-<table_id>`, apart from the section headings' ids. `sentences`: cells
    are sentences (left-aligned, `code` spans shown as code), as in the fidelity notes."""
    links = links or {}
    classes = " ".join(c for c, on in (("sortable", sortable), ("prose", sentences))
                       if on)
    attrs = (f' id="table-{esc(table_id)}"' if table_id else "") + (
        f' class="{classes}"' if classes else "")
    text_of = prose if sentences else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            target = links.get(j, {}).get(cell)
            text = text_of(cell)
            cells.append(f'<td><a href="{esc(target)}">{text}</a></td>' if target
                         else f"<td>{text}</td>")
        cls = row_classes[i] if row_classes else ""
        body.append((f'<tr class="{esc(cls)}">' if cls else "<tr>") + "".join(cells) + "</tr>")
    return (f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body)
            + "\n</tbody></table>")


def key_values(pairs: list[tuple[str, object]]) -> str:
    """A two-column table of (name, value); lists and objects as JSON."""
    rows = [[k, json.dumps(v) if isinstance(v, (list, dict)) else
             (f"{v:.6g}" if isinstance(v, float) else "-" if v is None else str(v))]
            for k, v in pairs]
    return table(["key", "value"], rows)


def page(title: str, body: str, root: str = "", nav: list[tuple[str, str]] = ()) -> str:
    """A whole page; `root` is the relative path back to the site's top ("" or "../")."""
    links = "".join(f'<a href="{esc(root + target)}">{esc(name)}</a>' for name, target in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="{esc(GENERATOR)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>"
            f"<nav>{links}</nav>\n<h1>{esc(title)}</h1>\n{body}\n"
            f"<script>{SCRIPT}</script></body></html>\n")


def svg_chart(points: list[tuple[float, float]], label: str, chance: float | None = None,
              width: int = 460, height: int = 230) -> str:
    """One metric against step as an inline SVG line (each point names its step and value on
    hover); `chance`, when given, is a dashed line. A run page draws its own curves this way:
    no file per run, and a page with hundreds of runs is written in seconds."""
    pts = [(float(x), float(y)) for x, y in points
           if y is not None and math.isfinite(float(y))]
    if not pts:
        return f'<p class="muted">no {esc(label)} recorded</p>'
    xs, ys = [p[0] for p in pts], [p[1] for p in pts] + ([chance] if chance is not None else [])
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 52, 12, 26, 34

    def sx(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y):
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#1f77b4">'
                   f"<title>step {x:g}: {esc(f'{y:.4g}')}</title></circle>" for x, y in pts)
    dashed = "" if chance is None else (
        f'<line x1="{left}" x2="{width - right}" y1="{sy(chance):.1f}" y2="{sy(chance):.1f}" '
        f'stroke="#555" stroke-dasharray="5,4"><title>majority class: {chance:.4g}</title></line>')
    ticks = "".join(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" '
                    f'font-size="10">{esc(f"{v:.3g}")}</text>' for v in (y0, y1))
    ticks += "".join(f'<text x="{sx(v):.1f}" y="{height - bottom + 14}" text-anchor="middle" '
                     f'font-size="10">{esc(f"{v:g}")}</text>' for v in (x0, x1))
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="{esc(label)}">'
            f'<text x="{left}" y="16" font-size="12">{esc(label)}</text>'
            f'<rect x="{left}" y="{top}" width="{width - left - right}" '
            f'height="{height - top - bottom}" fill="none" stroke="#ccc"/>{ticks}{dashed}'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.6" points="{line}"/>{dots}'
            f'<text x="{(width + left) / 2:.0f}" y="{height - 6}" text-anchor="middle" '
            f'font-size="10">training step</text></svg>')
