"""HTML galleries of base64 thumbnails: test images beside their neighbours, a detail view, threshold pairs.

Builders return HTML strings (testable without a browser); `show` renders one with `st.html`. Elements carry
stable `data-testid` attributes (cs-gallery, cs-row, cs-thumb, cs-sim, cs-detail, cs-pairs) for browser tests.
"""
from __future__ import annotations

from html import escape

import streamlit as st

from clipsim.plots import train_colours
from clipsim.views import GalleryRow, Tile

CAPTION_CHARS = 28  # one line under a 96 px thumbnail; the full text is in the title (hover)

CSS = """
<style>
.cs-gallery{display:flex;flex-direction:column;gap:10px;font-family:inherit}
.cs-row{display:flex;gap:18px;align-items:flex-start;padding:10px 12px;border:1px solid rgba(128,128,128,.22);
  border-radius:10px;background:rgba(128,128,128,.04)}
.cs-query{flex:0 0 auto;display:flex;flex-direction:column;align-items:center;gap:3px;text-align:center}
.cs-query a{text-decoration:none;color:inherit}
.cs-sets{display:flex;flex-wrap:wrap;gap:10px 22px;flex:1 1 auto}
.cs-set{display:flex;flex-direction:column;gap:4px}
.cs-set-name{font-size:12px;font-weight:600;letter-spacing:.02em;display:flex;gap:8px;align-items:center}
.cs-dot{width:9px;height:9px;border-radius:50%;display:inline-block}
.cs-strip{display:flex;flex-wrap:wrap;gap:6px}
.cs-tile{position:relative;margin:0;display:flex;flex-direction:column;align-items:center}
.cs-thumb{object-fit:contain;border-radius:6px;background:#e8e9ec;border:1px solid rgba(128,128,128,.25);
  image-rendering:auto;display:block}
.cs-tile figcaption,.cs-query .cs-text{font-size:11px;line-height:1.25;max-width:100%;overflow:hidden;
  white-space:nowrap;text-overflow:ellipsis;opacity:.85}
.cs-sim{font-size:12px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.cs-key{font-size:11px;font-family:ui-monospace,monospace;opacity:.7;max-width:100%;overflow:hidden;
  text-overflow:ellipsis;white-space:nowrap}
.cs-badge{position:absolute;top:4px;left:4px;background:#d62728;color:#fff;font-size:9px;font-weight:700;
  padding:1px 5px;border-radius:8px;letter-spacing:.03em}
.cs-open{font-size:11px;opacity:.75}
.cs-empty{font-size:12px;opacity:.6;padding:8px}
.cs-pairs{display:flex;flex-wrap:wrap;gap:12px}
.cs-pair{display:flex;flex-direction:column;align-items:center;gap:3px;padding:6px 8px;border-radius:8px;
  border:1px solid rgba(128,128,128,.25)}
.cs-pair-imgs{display:flex;gap:4px}
.cs-above{border-color:#e45756;background:rgba(228,87,86,.06)}
.cs-below{border-color:#4c78a8;background:rgba(76,120,168,.06)}
</style>
"""


def _sim_colour(sim: float) -> str:
    """Darker red the closer to a duplicate (>= 0.95), neutral below 0.5."""
    if sim >= 0.95:
        return "#c62828"
    if sim >= 0.85:
        return "#e65100"
    return "inherit"


def _img(tile: Tile, size: int) -> str:
    alt = f"{tile.key}" + (f" ({tile.thumb.missing})" if tile.thumb.missing else "")
    return tile.thumb.html(size, alt, "cs-thumb", "cs-thumb")


def tile_html(tile: Tile, size: int, chars: int = CAPTION_CHARS) -> str:
    """One neighbour: thumbnail, similarity, truncated caption/label (full text and key on hover)."""
    title = escape(f"{tile.text}\n{tile.key}" if tile.text else tile.key)
    short = tile.text if len(tile.text) <= chars else tile.text[: chars - 1] + "…"
    sim = "" if tile.similarity is None else (
        f'<div class="cs-sim" data-testid="cs-sim" style="color:{_sim_colour(tile.similarity)}">'
        f"{tile.similarity:.3f}</div>")
    badge = '<span class="cs-badge" data-testid="cs-planted" title="planted near-duplicate">planted</span>' \
        if tile.planted else ""
    return (f'<figure class="cs-tile" title="{title}" style="width:{size + 2}px">{_img(tile, size)}{badge}{sim}'
            f'<figcaption>{escape(short) or "&nbsp;"}</figcaption></figure>')


def _set_html(train: str, tiles: list[Tile], size: int, colour: str, reference: str | None) -> str:
    best = f"s = {tiles[0].similarity:.3f}" if tiles else "no neighbours"
    ref = " (reference)" if train == reference else ""
    strip = "".join(tile_html(t, size) for t in tiles) or '<div class="cs-empty">none</div>'
    return (f'<div class="cs-set" data-testid="cs-set" data-train="{escape(train)}"><div class="cs-set-name">'
            f'<span class="cs-dot" style="background:{colour}"></span>{escape(train)}{ref}'
            f'<span style="font-weight:400;opacity:.7">{best}</span></div><div class="cs-strip">{strip}</div></div>')


def gallery_html(rows: list[GalleryRow], size: int, test_size: int, reference: str | None = None,
                 links: dict[str, str] | None = None) -> str:
    """A gallery: one row per test image (thumbnail, key, class) beside its neighbours in each train set.

    Args:
        rows: the page's rows (see views.gallery_rows).
        size: neighbour thumbnail size in pixels.
        test_size: test thumbnail size in pixels.
        reference: the reference train set (labelled).
        links: {test key: href} opening the detail view of that image.

    Returns:
        HTML (with its CSS).
    """
    if not rows:
        return CSS + '<div class="cs-gallery" data-testid="cs-gallery"><div class="cs-empty">No test image matches ' \
                     "the filters.</div></div>"
    trains = list(rows[0].neighbours)
    colours = train_colours(trains, reference)
    parts = []
    for grow in rows:
        href = (links or {}).get(grow.test.key)
        img = _img(grow.test, test_size)
        img = f'<a href="{escape(href)}" target="_self" title="open {escape(grow.test.key)}">{img}</a>' if href else img
        query = (f'<div class="cs-query" style="width:{test_size + 8}px">{img}'
                 f'<div class="cs-key" title="{escape(grow.test.key)}">{escape(grow.test.key)}</div>'
                 f'<div class="cs-text">{escape(grow.test.text)}</div></div>')
        sets = "".join(_set_html(t, grow.neighbours[t], size, colours[t], reference) for t in trains)
        parts.append(f'<div class="cs-row" data-testid="cs-row" data-key="{escape(grow.test.key)}">{query}'
                     f'<div class="cs-sets">{sets}</div></div>')
    return CSS + f'<div class="cs-gallery" data-testid="cs-gallery">{"".join(parts)}</div>'


def detail_html(grow: GalleryRow, size: int, test_size: int, reference: str | None = None) -> str:
    """The detail view of one test image: large image and its neighbours (full captions) in each train set."""
    colours = train_colours(list(grow.neighbours), reference)
    sets = "".join(_set_html(t, tiles, size, colours[t], reference) for t, tiles in grow.neighbours.items())
    return (CSS + f'<div class="cs-row" data-testid="cs-detail" data-key="{escape(grow.test.key)}">'
            f'<div class="cs-query" style="width:{test_size + 8}px">{_img(grow.test, test_size)}'
            f'<div class="cs-key">{escape(grow.test.key)}</div><div class="cs-text">{escape(grow.test.text)}</div>'
            f'</div><div class="cs-sets" style="flex-direction:column">{sets}</div></div>')


def pairs_html(pairs: list[tuple[Tile, Tile]], size: int, side: str) -> str:
    """Test image beside its nearest train neighbour, with the similarity; side 'above' or 'below' a threshold."""
    if not pairs:
        return f'<div class="cs-empty" data-testid="cs-pairs-{side}">no test image {side} the threshold</div>'
    items = "".join(
        f'<div class="cs-pair cs-{side}" title="{escape(t.key)} ↔ {escape(n.key)}\n{escape(n.text)}">'
        f'<div class="cs-pair-imgs">{_img(t, size)}{_img(n, size)}</div>'
        f'<div class="cs-sim" data-testid="cs-sim">{n.similarity:.3f}</div></div>'
        for t, n in pairs)
    return CSS + f'<div class="cs-pairs" data-testid="cs-pairs-{side}">{items}</div>'


def show(html: str) -> None:
    """Render gallery HTML in the page."""
    st.html(html)
