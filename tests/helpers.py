"""Plain helpers shared by test modules (fixtures live in conftest.py)."""
from __future__ import annotations

import base64
import json

import numpy as np


def unit16(a: np.ndarray) -> np.ndarray:
    """Rows L2-normalised in float64, stored as float16."""
    a = np.asarray(a, np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float16)


def chart_spec(chart) -> dict:
    """A Streamlit AppTest plotly chart's JSON, with plotly's base64 typed arrays decoded into lists."""
    def decode(value):
        if isinstance(value, dict) and "bdata" in value and "dtype" in value:
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        return [decode(v) for v in value] if isinstance(value, list) else value

    return decode(json.loads(chart.proto.spec))


def searched_workspace(root, sets: dict[str, np.ndarray], tests: list[str], shard_rows: int, block_rows: int):
    """A workspace of the given embedding sets (in shards of shard_rows, keys '<set>-<row>'), the sets named in
    `tests` registered as test sets and the others as train sets, reference 'curated'; 'curated' searched, then
    'web' searched with similarity-gap margins against it (the scanner's blocks of block_rows rows)."""
    import pandas as pd

    from clipsim import Workspace, store
    from clipsim.search import search

    ws = Workspace.create(root)
    for name, emb in sets.items():
        for i, lo in enumerate(range(0, len(emb), shard_rows)):
            part = emb[lo : lo + shard_rows]
            store.write_shard(root / "emb" / name, i, part, pd.DataFrame({"key": [f"{name}-{lo + j}" for j in range(len(part))]}))
        ws.register_dataset(name, "test" if name in tests else "train", f"emb/{name}", "embeddings")
    ws.update_settings(reference="curated")
    search(ws, "curated", tests, k=5, precision="fp32", device="cpu")
    search(ws, "web", tests, k=5, reference="curated", precision="fp32", device="cpu", block_rows=block_rows)
    return ws
