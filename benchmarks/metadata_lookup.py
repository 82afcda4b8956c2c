"""Metadata lookups on a LAION-like folder: DuckDB (clipsim.metadata) against loading the parquet files whole with
pandas. Generates `--rows` rows in `--shards` clip-retrieval shards (key, caption, url), then times a lookup of
`--keys` random keys, the same by row id, a caption search and a filtered count. Prints one JSON object.

    python benchmarks/metadata_lookup.py [--rows 2000000 --shards 4 --keys 100 --dir /tmp/clipsim-meta-bench]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clipsim import Workspace, metadata, store

WORDS = np.array(["a", "photo", "of", "the", "dog", "cat", "red", "blue", "car", "house", "tree", "on", "in", "with", "sketch", "painting", "small", "big", "old", "new", "beautiful", "woman", "man", "city", "night", "beach", "mountain"])
CAPTION_WORDS = 10  # ~55 characters, close to LAION-400M's median caption length
REPEATS = 5


def generate(folder: Path, rows: int, shards: int, seed: int) -> None:
    """Write the shards unless a folder with the same row count exists already."""
    if (folder / "done.json").exists() and json.loads((folder / "done.json").read_text())["rows"] == rows:
        return
    rng = np.random.default_rng(seed)
    per = -(-rows // shards)
    for i, lo in enumerate(range(0, rows, per)):
        n = min(per, rows - lo)
        words = WORDS[rng.integers(0, len(WORDS), size=(n, CAPTION_WORDS))]
        captions = pd.Series([" ".join(w) for w in words.tolist()])
        ids = np.arange(lo, lo + n)
        meta = pd.DataFrame({"key": pd.Series(ids).map("{:09d}".format), "caption": captions,
                             "url": pd.Series(ids).map("https://img.example.org/{}.jpg".format)})
        emb = np.zeros((n, 4), np.float16)
        emb[:, 0] = 1  # unit rows; the lookups never read embeddings
        store.write_shard(folder, i, emb, meta)
    (folder / "done.json").write_text(json.dumps({"rows": rows}))


def timed(fn, repeats: int = REPEATS) -> tuple[float, float, object]:
    """(first call seconds, median of the following calls, result of the last)."""
    times, out = [], None
    for _ in range(repeats + 1):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[1:]), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--keys", type=int, default=100)
    p.add_argument("--dir", default="/tmp/clipsim-meta-bench")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    root = Path(args.dir)
    t = time.perf_counter()
    generate(root / "laion", args.rows, args.shards, args.seed)
    generate_s = time.perf_counter() - t
    ws = Workspace.create(root / "ws")
    ws.register_dataset("laion", "train", root / "laion", "embeddings")
    ids = np.random.default_rng(args.seed + 1).choice(args.rows, size=args.keys, replace=False)
    keys = [f"{i:09d}" for i in ids]
    files = [s.meta for s in ws.embeddings("laion").shards]

    def pandas_lookup():
        full = pd.concat([pd.read_parquet(f, columns=["key", "caption", "url"]) for f in files], ignore_index=True)
        return full[full["key"].isin(keys)]

    duck_first, duck_median, found = timed(lambda: metadata.lookup(ws, "laion", keys=keys))
    assert found["id"].tolist() == ids.tolist()
    ids_first, ids_median, _ = timed(lambda: metadata.lookup(ws, "laion", ids=ids))
    pandas_first, pandas_median, want = timed(pandas_lookup, repeats=2)
    assert sorted(want["key"]) == sorted(keys)
    search_first, search_median, _ = timed(lambda: metadata.search_captions(ws, "laion", "sketch of the", limit=50))
    count_first, count_median, hits = timed(lambda: metadata.count(ws, "laion", "beach mountain"), repeats=2)
    meta_mb = sum(os.path.getsize(f) for f in files) / 2**20
    print(json.dumps({
        "rows": args.rows, "shards": args.shards, "keys": args.keys, "metadata_mb": round(meta_mb, 1),
        "cpus": os.cpu_count(), "generate_s": round(generate_s, 2),
        "duckdb_lookup_keys_s": {"first": round(duck_first, 3), "median": round(duck_median, 3)},
        "duckdb_lookup_ids_s": {"first": round(ids_first, 3), "median": round(ids_median, 3)},
        "pandas_full_load_lookup_s": {"first": round(pandas_first, 3), "median": round(pandas_median, 3)},
        "duckdb_search_captions_limit50_s": {"first": round(search_first, 3), "median": round(search_median, 3)},
        "duckdb_count_contains_s": {"first": round(count_first, 3), "median": round(count_median, 3), "hits": hits},
    }, indent=2))


if __name__ == "__main__":
    main()
