"""DuckDB metadata queries checked against pandas on a generated multi-shard folder; clip-retrieval folders with
their own column names (image_path, TEXT/URL, no key) registered and searched end to end; image sources."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from clipsim import Workspace, metadata, store
from clipsim.cli import main
from clipsim.data.retrieval import ROW, detect_columns
from clipsim.errors import DataError

WORDS = ["dog", "cat", "red", "blue", "car", "100%", "tree_house", "sketch", "Photo", "of"]
SHARD_ROWS = [70, 0, 45, 85]  # an empty shard in the middle: its rows count as nothing


def unit_rows(rng, n: int, dim: int = 8) -> np.ndarray:
    a = rng.standard_normal((n, dim))
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def write_folder(root, frames: list[pd.DataFrame], seed: int = 0) -> None:
    """A clip-retrieval folder: img_emb_<i>.npy + metadata_<i>.parquet, with the frames' columns as they are."""
    rng = np.random.default_rng(seed)
    for i, frame in enumerate(frames):
        emb = unit_rows(rng, len(frame)).astype(np.float16)
        store.fileio.write_npy(store.emb_path(root, i), emb)
        store.fileio.write_parquet(store.meta_path(root, i), frame)


def captions_frame(rng, start: int, n: int) -> pd.DataFrame:
    captions = [" ".join(rng.choice(WORDS, size=4)) for _ in range(n)]
    captions = [None if i % 17 == 5 else c for i, c in enumerate(captions)]  # some samples have no caption
    return pd.DataFrame({"key": [f"s{start + i:06d}" for i in range(n)], "caption": captions,
                         "url": [f"https://example.org/{start + i}.jpg" for i in range(n)]})


@pytest.fixture
def laion(tmp_path):
    rng = np.random.default_rng(1)
    starts = np.cumsum([0] + SHARD_ROWS[:-1])
    frames = [captions_frame(rng, int(s), n) for s, n in zip(starts, SHARD_ROWS)]
    write_folder(tmp_path / "laion", frames)
    ws = Workspace.create(tmp_path / "ws")
    ws.register_dataset("laion", "train", tmp_path / "laion", "embeddings")
    return ws, pd.concat(frames, ignore_index=True)


def test_lookup_by_keys_and_ids_matches_pandas(laion):
    ws, full = laion
    rng = np.random.default_rng(2)
    ids = rng.choice(len(full), size=40, replace=False)
    keys = list(full["key"].iloc[ids]) + ["missing-key"] + [full["key"].iloc[3]]
    got = metadata.lookup(ws, "laion", keys=keys)
    want_ids = np.append(ids, 3)
    assert got["id"].tolist() == want_ids.tolist()  # order given, unknown key left out, repeats kept
    want = full.iloc[want_ids].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["key", "caption", "url"]], want, check_dtype=False)
    by_id = metadata.lookup(ws, "laion", ids=want_ids[::-1], columns=["url", "key"])
    assert by_id["key"].tolist() == want["key"].tolist()[::-1] and by_id["url"].tolist() == want["url"].tolist()[::-1]
    assert metadata.lookup(ws, "laion", ids=[0], columns=["key", "label"])["label"].isna().all()  # absent column
    with pytest.raises(DataError, match="out of range"):
        metadata.lookup(ws, "laion", ids=[len(full)])
    with pytest.raises(DataError, match="exactly one"):
        metadata.lookup(ws, "laion", keys=["a"], ids=[1])


@pytest.mark.parametrize("text", ["dog", "PHOTO of", "100%", "tree_house", "_", "no such words"])
def test_search_captions_and_count_match_pandas(laion, text):
    ws, full = laion
    hit = full["caption"].fillna("").str.lower().str.contains(text.lower(), regex=False)
    got = metadata.search_captions(ws, "laion", text, limit=10)
    assert got["id"].tolist() == np.flatnonzero(hit)[:10].tolist()
    assert metadata.count(ws, "laion", text) == int(hit.sum())
    assert metadata.count(ws, "laion") == len(full)


def test_clip_retrieval_folder_with_image_paths_and_no_key(tmp_path, draw, caplog, capsys):
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for i in range(6):
        draw(i).save(images / f"{i}.jpg")
        paths.append(str(images / f"{i}.jpg"))
    frames = [pd.DataFrame({"image_path": paths[:4], "caption": ["a dog", "a cat", None, "dog park"],
                            "url": [None] * 4}),
              pd.DataFrame({"image_path": paths[4:], "caption": ["x", "y"], "url": ["https://e.org/4.jpg", None]})]
    write_folder(tmp_path / "emb", frames)
    write_folder(tmp_path / "test", [pd.DataFrame({"key": ["t0", "t1"]})], seed=5)
    ws_dir = str(tmp_path / "ws")
    with caplog.at_level(logging.INFO, logger="clipsim"):
        assert main(["register", "--workspace", ws_dir, "--name", "cr", "--role", "train", "--kind", "embeddings",
                     "--source", str(tmp_path / "emb")]) == 0
    assert "`key` is read from column `image_path`" in caplog.text and "`path`" in caplog.text
    assert main(["register", "--workspace", ws_dir, "--name", "bench", "--role", "test", "--kind", "embeddings",
                 "--source", str(tmp_path / "test")]) == 0
    assert main(["search", "--workspace", ws_dir, "--k", "6"]) == 0
    ws = Workspace.open(ws_dir)
    assert ws.dataset("cr").extra["columns"] == {"key": "image_path", "path": "image_path"}
    assert ws.keys("cr").tolist() == paths
    assert set(ws.neighbours("bench", "cr", k=6)["train_key"]) == set(paths)
    assert ws.embeddings("cr").metadata_at(np.array([5, 1]), ["key", "caption"])["caption"].tolist() == ["y", "a cat"]
    assert metadata.lookup(ws, "cr", keys=[paths[4]], columns=["key", "path", "url"]).iloc[0].tolist() == \
        [paths[4], paths[4], "https://e.org/4.jpg", 4]
    assert metadata.search_captions(ws, "cr", "dog")["key"].tolist() == [paths[0], paths[3]]
    (images / "4.jpg").unlink()
    local, remote, gone = (metadata.image_source(ws, "cr", x) for x in (paths[0], 4, 5))
    assert (local["kind"], local["path"], local["offset"]) == ("local", paths[0], -1)
    assert (remote["kind"], remote["url"]) == ("url", "https://e.org/4.jpg") and "missing" in remote["reason"]
    assert gone["kind"] == "local"
    (images / "5.jpg").unlink()
    assert metadata.image_source(ws, "cr", 5)["kind"] == "none"


def test_laion_style_names_and_row_number_keys(tmp_path):
    laion = pd.DataFrame({"TEXT": ["red car", "blue car", "cat"], "URL": ["https://a/0", "https://a/1", None],
                          "image_path": ["dup", "dup", "other"]})  # not unique: no good as keys
    write_folder(tmp_path / "emb", [laion, laion.iloc[:2]])
    assert detect_columns(tmp_path / "emb") == {"key": ROW, "caption": "TEXT", "url": "URL"}
    ws = Workspace.create(tmp_path / "ws")
    ws.register_dataset("laion", "train", tmp_path / "emb", "embeddings")
    emb = ws.embeddings("laion")
    assert emb.keys().tolist() == ["0", "1", "2", "3", "4"]
    assert emb.metadata(["key", "caption"])["caption"].tolist() == ["red car", "blue car", "cat", "red car", "blue car"]
    assert "TEXT" in emb.columns() and "caption" in emb.columns()
    got = metadata.lookup(ws, "laion", keys=["4", "nope", "0"], columns=["key", "caption", "url"])
    assert got.values.tolist() == [["4", "blue car", "https://a/1", 4], ["0", "red car", "https://a/0", 0]]
    assert metadata.search_captions(ws, "laion", "CAR")["key"].tolist() == ["0", "1", "3", "4"]
    source = metadata.image_source(ws, "laion", "1")
    assert (source["kind"], source["url"], source["path"]) == ("url", "https://a/1", None)
    assert metadata.image_source(ws, "laion", 2)["kind"] == "none"


def test_captionless_dataset_says_so(tmp_path):
    write_folder(tmp_path / "emb", [pd.DataFrame({"key": ["a", "b"]})])
    ws = Workspace.create(tmp_path / "ws")
    ws.register_dataset("plain", "test", tmp_path / "emb", "embeddings")
    with pytest.raises(DataError, match="has no captions"):
        metadata.search_captions(ws, "plain", "x")
    with pytest.raises(DataError, match="not in dataset 'plain'"):
        metadata.image_source(ws, "plain", "zzz")


def test_metadata_command(laion, capsys):
    ws, full = laion
    assert main(["metadata", "--workspace", str(ws.root), "--dataset", "laion", "--ids", "72,3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == [full["key"][72], full["key"][3]] and rows[0]["id"] == 72
    assert main(["metadata", "--workspace", str(ws.root), "--dataset", "laion", "--count", "--contains", "dog"]) == 0
    assert int(capsys.readouterr().out) == int(full["caption"].fillna("").str.contains("dog").sum())
    assert main(["metadata", "--workspace", str(ws.root), "--dataset", "laion", "--ids", "9999"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_a_few_rows_are_read_from_their_row_groups_only(tmp_path):
    """metadata_at on a sparse selection reads the row groups holding the rows: same rows, order and values as a
    full read, across group boundaries, repeated rows included."""
    frame = pd.DataFrame({"key": [f"k{i}" for i in range(10_000)], "caption": [f"c{i % 97}" for i in range(10_000)]})
    path = tmp_path / "meta.parquet"
    from clipsim import fileio

    fileio.write_parquet(path, frame, row_group_size=1_000)
    assert store.parquet_file(path).metadata.num_row_groups == 10
    rows = np.array([9_999, 0, 999, 1_000, 5_432, 999, 7_001])
    got = store.read_rows(path, rows, ("key", "caption"))
    pd.testing.assert_frame_equal(got, frame.iloc[rows].reset_index(drop=True))
    assert store.read_rows(path, rows[:1], ("key",))["key"].tolist() == ["k9999"]


def test_keys_at_reads_a_row_once_until_the_set_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root = tmp_path / "set"
    write_folder(root, [captions_frame(rng, 0, 5), captions_frame(rng, 5, 3)])
    ids = np.array([6, 0, 6, 3])
    want = store.EmbeddingSet(root).metadata_at(ids, ["key"])["key"].tolist()
    asked = []
    metadata_at = store.EmbeddingSet.metadata_at
    monkeypatch.setattr(store.EmbeddingSet, "metadata_at",
                        lambda self, ids, columns=None: asked.append(list(ids)) or metadata_at(self, ids, columns))
    assert store.EmbeddingSet(root).keys_at(ids).tolist() == want and asked == [[0, 3, 6]]
    assert store.EmbeddingSet(root).keys_at(ids[::-1]).tolist() == want[::-1] and len(asked) == 1
    assert store.EmbeddingSet(root).keys_at([7, 0]).tolist()[1] == want[1] and asked[1:] == [[7]]
    renamed = pd.read_parquet(store.meta_path(root, 1)).assign(key=lambda f: "new-" + f["key"])
    store.fileio.write_parquet(store.meta_path(root, 1), renamed)  # the second shard's keys change
    assert store.EmbeddingSet(root).keys_at(ids).tolist() == ["new-" + want[0], want[1], "new-" + want[2], want[3]]


def test_a_reopened_set_reuses_its_validation_until_a_shard_file_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    write_folder(root, [captions_frame(rng, 0, 5), captions_frame(rng, 5, 3)])
    first = store.EmbeddingSet(root)
    headers = []
    read_header = store.npy_header
    monkeypatch.setattr(store, "npy_header", lambda path: headers.append(path) or read_header(path))
    again = store.EmbeddingSet(root)
    assert headers == [] and again.shards == first.shards and (again.count, again.dim) == (8, 8)
    write_folder(root / "more", [captions_frame(rng, 8, 4)])  # a third shard appears
    store.fileio.write_npy(store.emb_path(root, 2), np.load(store.emb_path(root / "more", 0)))
    store.fileio.write_parquet(store.meta_path(root, 2), pd.read_parquet(store.meta_path(root / "more", 0)))
    assert store.EmbeddingSet(root).count == 12 and headers
    path = store.emb_path(root, 1)
    with open(path, "r+b") as f:  # cut short in place
        f.truncate(path.stat().st_size - 16)
    with pytest.raises(DataError, match="img_emb_1.npy is truncated"):
        store.EmbeddingSet(root)
