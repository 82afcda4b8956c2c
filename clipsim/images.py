"""Image access for display: a dataset image by key or row, thumbnails, data URIs and grey placeholders.

Images are found through each embedding row's metadata locator (`path`, `offset`, `size`), so folder images
and webdataset tar members load alike. A row with no local image but an http(s) `url` (LAION metadata) becomes a
Thumb the browser fetches on demand, drawn over a placeholder that stays visible when the fetch fails (offline,
dead link). A missing file, or a dataset without stored images or urls, gives a placeholder that says why
instead of an error. Thumbnails honour the dataset's `crop_border` (ObjectNet's 1 px frame).
"""
from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from html import escape

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from clipsim.data.sources import read_image
from clipsim.errors import ClipsimError, DataError

LOCATOR_COLUMNS = ["path", "offset", "size"]
PLACEHOLDER_GREY = (214, 216, 220)
MIME = {"JPEG": "image/jpeg", "PNG": "image/png"}
JPEG_QUALITY = 85  # thumbnails of 64-256 px: ~3-8 kB each, no visible artefacts


@dataclass(frozen=True)
class Thumb:
    """One displayable image: its data URI (or remote http(s) URL) and, for placeholders, why the real image is
    not shown; `fallback` is the placeholder data URI under a remote image (shown when it does not load)."""

    uri: str
    missing: str | None = None
    fallback: str | None = None

    def html(self, size: int, alt: str = "", css_class: str = "", testid: str = "") -> str:
        """An <img> of `size` px; a remote image sits on its placeholder (no script needed: a failed load with an
        empty alt draws nothing, so the placeholder behind it shows)."""
        attrs = (f'class="{css_class}" ' if css_class else "") + (f'data-testid="{testid}" ' if testid else "")
        box = f'width="{size}" height="{size}" style="width:{size}px;height:{size}px'
        if self.fallback is None:
            return f'<img {attrs}src="{self.uri}" alt="{escape(alt)}" {box}">'
        return (f'<img {attrs}src="{escape(self.uri)}" alt="" title="{escape(alt)}" data-remote="1" loading="lazy" '
                f'referrerpolicy="no-referrer" {box};background:url({self.fallback}) center/contain no-repeat">')


def thumbnail_bytes(image: Image.Image, size: int, fmt: str = "JPEG") -> bytes:
    """Encode a thumbnail that fits in a `size` x `size` box (aspect kept, never enlarged).

    Args:
        image: any PIL image.
        size: longest side in pixels.
        fmt: 'JPEG' or 'PNG'.

    Returns:
        The encoded image bytes.

    Raises:
        ValueError: size < 1 or an unsupported format.
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be >= 1 pixel, got {size}")
    if fmt not in MIME:
        raise ValueError(f"thumbnail format {fmt!r} is not one of {sorted(MIME)}")
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    """`data:<mime>;base64,...` for inline <img> tags."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@lru_cache(maxsize=64)
def placeholder_bytes(size: int, reason: str) -> bytes:
    """A grey PNG square of `size` px with a short reason ('missing', 'no image', ...) written in it."""
    image = Image.new("RGB", (size, size), PLACEHOLDER_GREY)
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(9, size // 9))
    words, lines = reason.split(), [""]
    for word in words:  # greedy wrap to the square's width
        trial = f"{lines[-1]} {word}".strip()
        if pen.textlength(trial, font=font) <= size * 0.86 or not lines[-1]:
            lines[-1] = trial
        else:
            lines.append(word)
    text = "\n".join(lines[:4])
    pen.multiline_text((size / 2, size / 2), text, fill=(92, 96, 104), font=font, anchor="mm", align="center")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def placeholder(size: int, reason: str) -> Thumb:
    """A placeholder Thumb saying why the image is not shown."""
    return Thumb(data_uri(placeholder_bytes(size, reason), MIME["PNG"]), missing=reason)


@lru_cache(maxsize=8192)  # ~5 kB per 96 px JPEG: at most ~40 MB, a few hundred gallery pages
def _cached_thumb(path: str, offset: int, nbytes: int, mtime_ns: int, size: int, crop_border: int = 0) -> Thumb:
    locator = (path, offset, nbytes) if offset >= 0 else path
    try:
        image = read_image(locator, crop_border)
    except DataError:
        return placeholder(size, "unreadable image")
    return Thumb(data_uri(thumbnail_bytes(image, size), MIME["JPEG"]))


def remote_thumb(url: str, size: int) -> Thumb:
    """A Thumb the browser fetches from `url`, over a placeholder that shows if the fetch fails."""
    return Thumb(url, fallback=placeholder(size, "image not reachable").uri)


def _web_url(value) -> str | None:
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else None


def locator_thumb(path: str | None, offset: int, nbytes: int, size: int, url: str | None = None,
                  crop_border: int = 0) -> Thumb:
    """Thumbnail of the image at a locator (a file, or `nbytes` bytes at `offset` in a tar); else of its url.

    Args:
        path: image or tar file; None/empty when the dataset stores no images.
        offset: byte offset inside a tar, or -1 for a plain file.
        nbytes: byte count inside a tar, or -1.
        size: longest thumbnail side in pixels.
        url: the sample's web address, used when no local image is readable (fetched by the browser).
        crop_border: pixels cut from every side before the thumbnail (ObjectNet).

    Returns:
        A Thumb (local ones cached by locator, file modification time, crop and size), a remote Thumb, or a
        placeholder saying why there is no image.
    """
    url = _web_url(url) or _web_url(path)
    if not isinstance(path, str) or not path or "://" in path:
        return remote_thumb(url, size) if url else placeholder(size, "no image stored")
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return remote_thumb(url, size) if url else placeholder(size, "image file missing")
    return _cached_thumb(path, int(offset), int(nbytes), mtime, size, int(crop_border or 0))


def locator_frame(ws, dataset: str, rows: np.ndarray) -> pd.DataFrame:
    """Metadata rows (in the order given) with at least key, caption, label, path, offset, size, url, and
    crop_border (the dataset's, per row).

    Columns a dataset lacks are filled (caption None, label -1, path/url None, offset/size -1), so imported
    embedding folders without images still give a frame.

    Args:
        ws: the workspace.
        dataset: dataset name.
        rows: global embedding row ids, int array.

    Raises:
        DataError / WorkspaceError: no embeddings for the dataset.
    """
    emb = ws.embeddings(dataset)
    have = set(emb.columns())
    wanted = [c for c in ["key", "caption", "label", *LOCATOR_COLUMNS, "url"] if c in have]
    frame = emb.metadata_at(np.asarray(rows, dtype=np.int64), wanted)
    frame["crop_border"] = int(ws.dataset(dataset).extra.get("crop_border", 0) or 0)
    fills = {"caption": None, "label": -1, "path": None, "offset": -1, "size": -1, "url": None}
    for column, value in fills.items():
        if column not in frame:
            frame[column] = value
    return frame


def dataset_thumbs(ws, dataset: str, rows: np.ndarray, size: int) -> list[Thumb]:
    """Thumbnails of a dataset's embedding rows, in order (placeholders where an image is unavailable).

    Args:
        ws: the workspace.
        dataset: dataset name.
        rows: global embedding row ids.
        size: longest thumbnail side in pixels.

    Returns:
        One Thumb per row.
    """
    return frame_thumbs(locator_frame(ws, dataset, rows), size)


def frame_thumbs(frame: pd.DataFrame, size: int) -> list[Thumb]:
    """Thumbnails for the rows of a locator frame (see locator_frame), in order."""
    urls = frame["url"] if "url" in frame else [None] * len(frame)
    crops = frame["crop_border"] if "crop_border" in frame else [0] * len(frame)
    return [locator_thumb(p, o, n, size, u, c)
            for p, o, n, u, c in zip(frame["path"], frame["offset"], frame["size"], urls, crops)]


def row_of_key(ws, dataset: str, key: str) -> int:
    """The embedding row of a key.

    Raises:
        DataError: the key is not in the dataset.
    """
    keys = ws.keys(dataset)
    hits = np.flatnonzero(keys == key)
    if len(hits) == 0:
        raise DataError(f"key {key!r} is not in dataset {dataset!r} ({len(keys)} keys); check the key's spelling")
    return int(hits[0])


def load_image(ws, dataset: str, key: str | None = None, row: int | None = None) -> Image.Image:
    """Decode one dataset image (RGB) found by key or embedding row.

    Raises:
        DataError: unknown key, no stored image, or an unreadable file.
    """
    if (key is None) == (row is None):
        raise ValueError("give exactly one of key= or row=")
    row = row_of_key(ws, dataset, key) if row is None else int(row)
    meta = locator_frame(ws, dataset, np.array([row])).iloc[0]
    if not isinstance(meta["path"], str) or not meta["path"]:
        raise DataError(f"dataset {dataset!r} stores no image for row {row} (no `path` in its metadata)")
    locator = (meta["path"], int(meta["offset"]), int(meta["size"])) if int(meta["offset"]) >= 0 else meta["path"]
    return read_image(locator)


def safe_thumb(ws, dataset: str, row: int, size: int) -> Thumb:
    """Like dataset_thumbs for one row, but any workspace error becomes a placeholder (for display code)."""
    try:
        return dataset_thumbs(ws, dataset, np.array([row]), size)[0]
    except ClipsimError:
        return placeholder(size, "no image")
