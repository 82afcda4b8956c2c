"""Display images: thumbnails from folder files and tar members (by byte offset), data URIs, placeholders."""
from __future__ import annotations

import base64
import io
import os
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipsim import images
from clipsim.data.tars import index_tar
from clipsim.errors import DataError
from clipsim.store import write_shard
from clipsim.workspace import Workspace


def _decode_uri(uri: str) -> Image.Image:
    head, payload = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _expected_thumb(image: Image.Image, size: int) -> np.ndarray:
    """The thumbnail computed directly from the source image (what every path must reproduce)."""
    return np.asarray(Image.open(io.BytesIO(images.thumbnail_bytes(image, size))).convert("RGB"), dtype=np.int16)


def _write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_thumbnail_of_folder_image_keeps_aspect_and_content(tmp_path, draw):
    source = draw(1, (40, 48))
    path = tmp_path / "a.png"
    source.save(path)
    thumb = images.locator_thumb(str(path), -1, -1, 24)
    assert thumb.missing is None
    got = _decode_uri(thumb.uri)
    assert got.format == "JPEG" and got.size == (20, 24)  # 40x48 fitted into 24x24
    assert np.array_equal(np.asarray(got.convert("RGB"), dtype=np.int16), _expected_thumb(source, 24))
    small = source.resize((20, 24), Image.Resampling.LANCZOS)  # and it looks like the image, within JPEG error
    assert np.abs(np.asarray(got.convert("RGB"), dtype=np.int16) - np.asarray(small, dtype=np.int16)).mean() < 12


def test_thumbnail_never_enlarges(draw):
    data = images.thumbnail_bytes(draw(2, (40, 48)), 96, fmt="PNG")
    assert Image.open(io.BytesIO(data)).size == (40, 48)
    with pytest.raises(ValueError, match="size"):
        images.thumbnail_bytes(draw(2), 0)


def test_tar_members_by_offset_give_their_own_image(tmp_path, draw):
    pictures = {f"s{i:03d}": draw(10 + i, (48, 40)) for i in range(3)}
    members = {}
    for key, picture in pictures.items():
        members[f"{key}.txt"] = f"caption {key}".encode()
        members[f"{key}.png"] = _png(picture)
    tar = tmp_path / "00000.tar"
    _write_tar(tar, members)
    index = index_tar(tar).set_index("key")
    for key, picture in pictures.items():
        row = index.loc[key]
        assert int(row["offset"]) > 0
        thumb = images.locator_thumb(str(tar), int(row["offset"]), int(row["size"]), 32)
        assert thumb.missing is None
        got = np.asarray(_decode_uri(thumb.uri).convert("RGB"), dtype=np.int16)
        assert np.array_equal(got, _expected_thumb(picture, 32)), key


def test_missing_file_gives_placeholder_with_reason(tmp_path):
    thumb = images.locator_thumb(str(tmp_path / "gone.jpg"), -1, -1, 64)
    assert thumb.missing == "image file missing"
    image = _decode_uri(thumb.uri)
    assert image.format == "PNG" and image.size == (64, 64)
    pixels = np.asarray(image.convert("RGB"))
    assert tuple(pixels[0, 0]) == images.PLACEHOLDER_GREY  # grey background
    assert (pixels != images.PLACEHOLDER_GREY).any(axis=2).any()  # with the reason written on it
    assert images.locator_thumb(None, -1, -1, 64).missing == "no image stored"
    assert images.locator_thumb("s3://bucket/x.jpg", -1, -1, 64).missing == "no image stored"


def test_url_only_rows_are_fetched_by_the_browser_over_a_placeholder(tmp_path, draw):
    """No local image but an http(s) url: the Thumb is the url itself, drawn over a placeholder (shown when the
    fetch fails); a local image wins over its url, and a missing local file falls back to the url."""
    url = "https://example.org/img/1.jpg"
    remote = images.locator_thumb(None, -1, -1, 48, url=url)
    assert remote.uri == url and remote.missing is None
    assert _decode_uri(remote.fallback).size == (48, 48)
    tag = remote.html(48, "key-1", "cs-thumb", "cs-thumb")
    assert f'src="{url}"' in tag and 'alt=""' in tag and f"background:url({remote.fallback})" in tag
    assert images.locator_thumb(str(tmp_path / "gone.jpg"), -1, -1, 48, url=url).uri == url
    path = tmp_path / "here.png"
    draw(1).save(path)
    local = images.locator_thumb(str(path), -1, -1, 48, url=url)
    assert local.uri.startswith("data:image/jpeg") and local.fallback is None
    assert images.locator_thumb(None, -1, -1, 48, url="ftp://x/y.jpg").missing == "no image stored"
    assert 'alt="k"' in local.html(48, "k")


def test_thumbnails_crop_the_border(tmp_path):
    framed = Image.new("RGB", (40, 40), (255, 0, 255))
    framed.paste(Image.new("RGB", (38, 38), (0, 128, 0)), (1, 1))
    framed.save(tmp_path / "f.png")
    plain = np.asarray(_decode_uri(images.locator_thumb(str(tmp_path / "f.png"), -1, -1, 40).uri).convert("RGB"))
    cropped = images.locator_thumb(str(tmp_path / "f.png"), -1, -1, 40, crop_border=1)
    pixels = np.asarray(_decode_uri(cropped.uri).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (38, 38, 3) and plain.shape == (40, 40, 3)
    assert np.abs(pixels - np.array([0, 128, 0])).max() < 12  # no magenta frame left (JPEG tolerance)


def test_corrupt_file_and_truncated_tar_give_placeholders(tmp_path, draw):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    assert images.locator_thumb(str(bad), -1, -1, 32).missing == "unreadable image"
    tar = tmp_path / "t.tar"
    _write_tar(tar, {"a.png": _png(draw(3))})
    size = os.path.getsize(tar)
    assert images.locator_thumb(str(tar), size - 10, 500, 32).missing == "unreadable image"


def test_thumbnail_cache_follows_file_changes(tmp_path, draw):
    path = tmp_path / "x.png"
    draw(4).save(path)
    first = images.locator_thumb(str(path), -1, -1, 32).uri
    draw(5).save(path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # a later mtime
    assert images.locator_thumb(str(path), -1, -1, 32).uri != first


def test_data_uri_round_trip():
    payload = bytes(range(256))
    uri = images.data_uri(payload, "image/png")
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == payload


def _embedded_workspace(tmp_path, metadata: pd.DataFrame, kind: str = "folder") -> Workspace:
    """A workspace whose dataset 'set' has one embedding shard with the given metadata rows."""
    ws = Workspace.create(tmp_path / "ws")
    folder = tmp_path / "emb"
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(metadata), 8))
    write_shard(folder if kind == "embeddings" else ws.path("embeddings", "set"), 0,
                emb / np.linalg.norm(emb, axis=1, keepdims=True), metadata)
    ws.register_dataset("set", "test", folder if kind == "embeddings" else tmp_path, kind)
    return ws


def test_dataset_images_by_key_and_row(tmp_path, draw):
    pictures = [draw(20 + i) for i in range(3)]
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(str(tmp_path / f"img{i}.png"))
        picture.save(paths[-1])
    meta = pd.DataFrame({"key": ["a", "b", "c"], "path": paths, "offset": -1, "size": -1, "label": [0, 1, 0]})
    ws = _embedded_workspace(tmp_path, meta)
    assert np.array_equal(np.asarray(images.load_image(ws, "set", key="b")), np.asarray(pictures[1]))
    assert np.array_equal(np.asarray(images.load_image(ws, "set", row=2)), np.asarray(pictures[2]))
    thumbs = images.dataset_thumbs(ws, "set", np.array([2, 0]), 16)
    assert [np.array_equal(np.asarray(_decode_uri(t.uri).convert("RGB"), dtype=np.int16), _expected_thumb(p, 16))
            for t, p in zip(thumbs, [pictures[2], pictures[0]])] == [True, True]
    with pytest.raises(DataError, match="'zz' is not in dataset 'set'"):
        images.load_image(ws, "set", key="zz")


def test_embedding_folder_without_images_gives_placeholders(tmp_path):
    meta = pd.DataFrame({"key": ["x0", "x1"], "caption": ["a cat", "a dog"]})  # clip-retrieval style, no paths
    ws = _embedded_workspace(tmp_path, meta, kind="embeddings")
    thumbs = images.dataset_thumbs(ws, "set", np.array([0, 1]), 48)
    assert [t.missing for t in thumbs] == ["no image stored", "no image stored"]
    assert _decode_uri(thumbs[0].uri).size == (48, 48)
    frame = images.locator_frame(ws, "set", np.array([1]))
    assert frame[["key", "caption", "label", "offset"]].iloc[0].tolist() == ["x1", "a dog", -1, -1]
    with pytest.raises(DataError, match="stores no image"):
        images.load_image(ws, "set", key="x0")
