"""HTML pieces of the study report: page template and CSS, tables, figures with fixed div ids, image-pair galleries.

Nothing here needs the network: plotly.js is inlined once (the first figure), images are data URIs; a train image
known only by its url (LAION metadata) is referenced by it, drawn over an embedded placeholder that shows offline.
"""
from __future__ import annotations

import math
import re
from html import escape

import pandas as pd
import plotly.graph_objects as go

from clipsim.images import Thumb

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;
  margin:0;background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:28px 32px 60px;background:#fff;min-height:100vh;
  box-shadow:0 0 0 1px rgba(0,0,0,.05)}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:34px 0 8px;padding-bottom:6px;border-bottom:1px solid #e3e5e8}
h3{font-size:15px;margin:20px 0 6px}
p.lead{color:#57606a;margin:0 0 14px}
.note{color:#57606a;font-size:13px}
nav.toc{font-size:13px;margin:10px 0 4px}
nav.toc a{margin-right:14px;color:#0969da;text-decoration:none}
table.cs{border-collapse:collapse;font-size:13px;margin:8px 0 14px;font-variant-numeric:tabular-nums}
table.cs th,table.cs td{padding:5px 10px;border-bottom:1px solid #eaecef;text-align:left;vertical-align:top}
table.cs th{background:#f6f8fa;font-weight:600}
table.cs td.num{text-align:right}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:1px 7px;border-radius:9px}
.stale{background:#fff1e5;color:#bc4c00}.fresh{background:#e6f4ea;color:#1a7f37}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:10px 18px}
.fig{min-height:200px}
.pairs{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 16px}
.pair{border:1px solid #e3e5e8;border-radius:8px;padding:6px;display:flex;flex-direction:column;align-items:center;
  gap:3px;width:212px}
.pair .imgs{display:flex;gap:4px}
.pair img{border-radius:5px;background:#e8e9ec;object-fit:contain}
.pair .sim{font-weight:650;font-variant-numeric:tabular-nums}
.pair .cap{font-size:11px;color:#57606a;max-width:200px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
footer{margin-top:40px;font-size:12px;color:#6e7781}
"""
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def slug(text: str) -> str:
    """A string safe as an HTML id: letters, digits and '-'."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


def _cell(value) -> str:
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        text = "" if math.isnan(value) else f"{value:.4f}"
        return f'<td class="num">{text}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


def table(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> str:
    """An HTML table of a DataFrame (no index); `formats` maps columns to format specs such as '.1%'."""
    formats = formats or {}
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record):
            value = value.item() if hasattr(value, "item") else value
            if column in formats and isinstance(value, (int, float)) and not pd.isna(value):
                cells.append(f'<td class="num">{format(value, formats[column])}</td>')
            else:
                cells.append(_cell(value))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="cs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


class Figures:
    """Renders figures in order: the first carries plotly.js inline, every one gets a fixed div id."""

    def __init__(self):
        self.count = 0

    def render(self, fig: go.Figure, div_id: str) -> str:
        """One figure as a <div> (+ script); deterministic for the same figure and id."""
        fig = go.Figure(fig).update_layout(template="plotly")  # importing streamlit changes plotly's default template
        html = fig.to_html(full_html=False, include_plotlyjs=self.count == 0, div_id=f"cs-fig-{slug(div_id)}",
                           config=PLOT_CONFIG)
        self.count += 1
        return f'<div class="fig">{html}</div>'


def badge(stale: bool) -> str:
    """A 'stale' or 'fresh' badge."""
    return '<span class="badge stale">stale</span>' if stale else '<span class="badge fresh">fresh</span>'


def pair_html(test: Thumb, train: Thumb, sim: float, test_key: str, train_key: str, caption: str,
              size: int) -> str:
    """A test image beside its nearest train image, with the similarity and the train caption (a train image known
    only by its url shows when the reader is online, its placeholder otherwise)."""
    return (f'<div class="pair" title="{escape(test_key)} ↔ {escape(train_key)}">'
            f'<div class="imgs">{test.html(size, test_key)}{train.html(size, train_key)}</div>'
            f'<div class="sim">{sim:.3f}</div><div class="cap">{escape(test_key)}</div>'
            f'<div class="cap">{escape(caption or train_key)}</div></div>')


def page(title: str, subtitle: str, sections: list[tuple[str, str]], footer: str) -> str:
    """The whole document: title, table of contents, sections [(heading, body html)], footer."""
    toc = "".join(f'<a href="#{slug(h)}">{escape(h)}</a>' for h, _ in sections)
    body = "".join(f'<section id="{slug(h)}"><h2>{escape(h)}</h2>{html}</section>' for h, html in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{escape(title)}</h1><p class=\"lead\">{subtitle}</p>"
            f"<nav class=\"toc\">{toc}</nav>{body}<footer>{footer}</footer></main></body></html>\n")
