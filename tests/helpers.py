"""Plain helpers shared by test modules (fixtures live in conftest.py)."""
from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import numpy as np


def until(predicate, timeout: float = 30.0, what: str = "condition", poll: float = 0.05):
    """predicate()'s first truthy value, polled every `poll` s; AssertionError naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def process_gone(pid: int) -> bool:
    """True when process `pid` no longer runs (no /proc entry, or a zombie); independent of clipsim."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the folder is not a package): its main(argv) runs a small size in a test."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


ROOT = Path(__file__).resolve().parents[1]
PAGE_TIMEOUT = 90  # seconds per page script run; a cold run reads the demo's metadata and decodes its thumbnails


def run_page(name: str, **params):
    """pages/<name>.py run once through Streamlit's AppTest with `params` as its query parameters."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=PAGE_TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def writable_copy(src: Path, root: Path, monkeypatch, ignore: tuple[str, ...]):
    """A private copy of the workspace at `src` in `root` (mtimes kept, so fingerprints still match), without the
    `ignore` patterns, made the pages' workspace (CLIPSIM_WORKSPACE) with writes allowed; the opened Workspace."""
    from clipsim import Workspace

    shutil.copytree(src, root, ignore=shutil.ignore_patterns(*ignore))
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(root))
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    return Workspace.open(root)


def html(at) -> str:
    """Every st.html body of an AppTest run, joined."""
    return "".join(h.proto.body for h in at.html)


def metric(at, label: str) -> str:
    """The value of the first metric whose label starts with `label`."""
    return next(m.value for m in at.metric if m.label.startswith(label))
