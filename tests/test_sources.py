"""Data sources: folder/table/tar listings, tar header indexing, random-access image reads, helpful errors."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipsim.data.keys import first_repeated_key, key_hashes
from clipsim.data.sources import list_folder, open_source, read_image, read_image_bytes, read_table, row_locator
from clipsim.data.tars import expand_tars, index_tar
from clipsim.errors import DataError


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def write_image(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_tar(path: Path, samples: list[tuple[str, bytes, str | None, dict | None]], ext: str = "jpg") -> Path:
    """img2dataset layout: <key>.<ext> image, <key>.txt caption, <key>.json metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, data, caption, meta in samples:
            members = [(f"{key}.{ext}", data)]
            if caption is not None:
                members.append((f"{key}.txt", caption.encode()))
            if meta is not None:
                members.append((f"{key}.json", json.dumps(meta).encode()))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path, draw) -> Path:
    root = tmp_path / "imagenet"
    for c, cls in enumerate(["n02", "n01"]):  # unsorted on purpose: labels follow sorted names
        for i in range(3):
            write_image(root / cls / f"img_{i}.png", draw(10 * c + i))
    write_image(root / "n01" / "sub" / "deep.JPG", draw(50))  # nested, upper-case suffix
    (root / "n01" / "notes.txt").write_text("not an image")
    write_image(root / "n01" / ".hidden.png", draw(51))
    (root / "n03_empty").mkdir()
    return root


def test_folder_listing_keys_labels_and_locators(image_folder, draw):
    records, classes = list_folder(image_folder)
    assert classes == ["n01", "n02", "n03_empty"]
    assert records["key"].tolist() == [
        "n01/img_0", "n01/img_1", "n01/img_2", "n01/sub/deep", "n02/img_0", "n02/img_1", "n02/img_2"
    ]
    assert records["label"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert (records["offset"] == -1).all() and (records["size"] == -1).all()
    assert records["caption"].isna().all()
    first = records.iloc[0]
    assert Path(first["path"]) == image_folder.absolute() / "n01" / "img_0.png"
    assert np.array_equal(pixels(read_image(row_locator(first))), pixels(draw(10)))  # n01 was written with c=1


def test_flat_folder_gets_unknown_labels(tmp_path, draw):
    for i in range(2):
        write_image(tmp_path / "flat" / f"{i}.webp", draw(i))
    records, classes = list_folder(tmp_path / "flat")
    assert classes == [] and records["label"].tolist() == [-1, -1] and records["key"].tolist() == ["0", "1"]


def test_folder_shards_are_fixed_chunks(image_folder):
    source = open_source("folder", image_folder, shard_size=3)
    assert [s.rows for s in source.shards] == [3, 3, 1]
    keys = pd.concat([source.records(s) for s in source.shards])["key"].tolist()
    assert keys == list_folder(image_folder)[0]["key"].tolist()
    assert source.fingerprint() == open_source("folder", image_folder, shard_size=3).fingerprint()


def test_folder_errors_name_the_path_and_fix(tmp_path, draw):
    with pytest.raises(DataError, match="does not exist"):
        list_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        list_folder(tmp_path / "empty")
    write_image(tmp_path / "dup" / "c" / "a.png", draw(0))
    write_image(tmp_path / "dup" / "c" / "a.jpg", draw(1))
    with pytest.raises(DataError, match=r"key 'c/a' occurs 2 times"):
        list_folder(tmp_path / "dup")


def test_csv_table_relative_paths_captions_labels(tmp_path, draw):
    write_image(tmp_path / "data" / "imgs" / "x.png", draw(1))
    write_image(tmp_path / "data" / "imgs" / "y.png", draw(2))
    table = tmp_path / "data" / "list.csv"
    pd.DataFrame({"path": ["imgs/x.png", str(tmp_path / "data" / "imgs" / "y.png")], "caption": ["a dog", ""],
                  "label": [3, None]}).to_csv(table, index=False)
    records = read_table(table)
    assert records["key"].tolist() == ["imgs/x", str(tmp_path / "data" / "imgs" / "y")]
    assert records["path"].tolist() == [str(tmp_path / "data" / "imgs" / "x.png")] * 1 + [
        str(tmp_path / "data" / "imgs" / "y.png")]
    assert records["caption"].iloc[0] == "a dog" and pd.isna(records["caption"].iloc[1])
    assert records["label"].tolist() == [3, -1]
    assert np.array_equal(pixels(read_image(records["path"].iloc[0])), pixels(draw(1)))


def test_parquet_table_with_keys_and_tar_locators(tmp_path, draw):
    data = jpeg_bytes(draw(5))
    tar = write_tar(tmp_path / "00000.tar", [("000000001", data, "cap", None)])
    row = index_tar(tar).iloc[0]
    table = tmp_path / "t.parquet"
    frame = pd.DataFrame({"path": [str(tar)], "key": ["k1"], "offset": [row["offset"]], "size": [row["size"]]})
    frame.to_parquet(table)
    records = read_table(table)
    assert records["key"].tolist() == ["k1"]
    assert read_image_bytes(row_locator(records.iloc[0])) == data


def test_table_errors(tmp_path, draw):
    write_image(tmp_path / "a.png", draw(0))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"filepath": ["a.png"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"no `path` column.*rename column 'filepath' to 'path'"):
        read_table(bad)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"path": ["a.png", "a.png"]}).to_csv(dup, index=False)
    with pytest.raises(DataError, match="key 'a' occurs 2 times"):
        read_table(dup)
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    wrong = tmp_path / "sub" / "wrong.csv"
    wrong.parent.mkdir()
    pd.DataFrame({"path": ["a.png"]}).to_csv(wrong, index=False)
    with pytest.raises(DataError, match="relative paths are resolved against"):
        read_table(wrong)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"path": ["a.png"], "label": ["cat"]}).to_csv(labels, index=False)
    with pytest.raises(DataError, match="column `label` holds 'cat'"):
        read_table(labels)


def test_tar_index_offsets_read_back_exact_bytes(tmp_path, draw):
    images = [draw(i) for i in range(4)]
    samples = [(f"{i:09d}", jpeg_bytes(im), f"caption {i}", {"url": f"http://x/{i}.jpg", "width": 40})
               for i, im in enumerate(images)]
    samples.append(("nocaption", jpeg_bytes(draw(9)), None, None))
    tar = write_tar(tmp_path / "shards" / "00000.tar", samples)
    index = index_tar(tar)
    assert index["key"].tolist() == [s[0] for s in samples]
    assert index["caption"].tolist()[:4] == [f"caption {i}" for i in range(4)] and pd.isna(index["caption"].iloc[4])
    assert index["url"].iloc[1] == "http://x/1.jpg" and pd.isna(index["url"].iloc[4])
    assert (index["label"] == -1).all() and index["path"].eq(str(tar)).all()
    for (_, data, _, _), (_, row) in zip(samples, index.iterrows()):
        assert read_image_bytes(row_locator(row)) == data
    direct = Image.open(io.BytesIO(samples[2][1]))
    assert np.array_equal(pixels(read_image((str(tar), index["offset"][2], index["size"][2]))), pixels(direct))


def test_tar_keys_follow_webdataset_and_png_members(tmp_path, draw):
    buf = io.BytesIO()
    draw(3).save(buf, format="PNG")
    tar = write_tar(tmp_path / "a.tar", [("dir/sample", buf.getvalue(), "c", None),
                                         ("dir/sample.mask", buf.getvalue(), None, None)], ext="png")
    index = index_tar(tar)  # __key__ stops at the first dot of the basename: `sample.mask.png` -> field mask.png
    assert index["key"].tolist() == ["dir/sample"] and index["caption"].tolist() == ["c"]
    assert read_image_bytes(row_locator(index.iloc[0])) == buf.getvalue()  # the .png member, not .mask.png


def test_tar_errors(tmp_path, draw):
    data = jpeg_bytes(draw(0))
    plain = write_tar(tmp_path / "plain.tar", [("k", data, None, None)])
    gz = tmp_path / "comp.tar"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(DataError, match="cannot read tar shard .*comp.tar"):
        index_tar(gz)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(plain.read_bytes()[:700])  # header + part of the data
    with pytest.raises(DataError, match="truncated"):
        index_tar(cut)
    twice = tmp_path / "twice.tar"
    with tarfile.open(twice, "w") as t:
        for name in ("k.jpg", "k.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="two images"):
        index_tar(twice)


def test_expand_tars_folder_glob_and_braces(tmp_path, draw):
    data = jpeg_bytes(draw(0))
    for i in (2, 0, 1):
        write_tar(tmp_path / "s" / f"{i:05d}.tar", [(f"{i}", data, None, None)])
    expected = [tmp_path / "s" / f"{i:05d}.tar" for i in range(3)]
    assert expand_tars(tmp_path / "s") == expected
    assert expand_tars(str(tmp_path / "s" / "*.tar")) == expected
    assert expand_tars(str(tmp_path / "s" / "{00000..00002}.tar")) == expected
    source = open_source("wds", str(tmp_path / "s" / "{00000..00002}.tar"))
    assert [s.description for s in source.shards] == [str(p) for p in expected]
    assert source.records(source.shards[1])["key"].tolist() == ["1"]
    with pytest.raises(DataError, match="00003.tar .*does not exist"):
        expand_tars(str(tmp_path / "s" / "{00000..00003}.tar"))
    with pytest.raises(DataError, match="no \\*.tar files"):
        expand_tars(tmp_path)


def test_read_image_errors_name_the_file(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(DataError, match="junk.jpg does not decode"):
        read_image(junk)
    with pytest.raises(DataError, match="cannot read image"):
        read_image_bytes(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="truncated"):
        read_image_bytes((str(junk), 400, 200))


def test_first_repeated_key_confirms_on_keys():
    shards = {0: pd.Series(["a", "b"]), 1: pd.Series(["c"]), 2: pd.Series(["d", "b"])}
    hashes = {s: key_hashes(k) for s, k in shards.items()}
    assert first_repeated_key(hashes, shards.__getitem__) == ("b", 0, 2)
    assert first_repeated_key({0: hashes[0], 1: hashes[1]}, shards.__getitem__) is None
