"""The command line: status --json, register, search on a workspace, and one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import Workspace, store
from clipsim.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_status_json_lists_datasets_and_searches(demo_ws, capsys):
    assert main(["status", "--workspace", str(demo_ws.root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    names = [d["name"] for d in status["datasets"]]
    assert names == ["web", "curated", "val", "v2", "sketch", "rendition", "hard"]
    pairs = {(s["test"], s["train"]) for s in status["searches"]}
    assert ("sketch", "web") in pairs and ("val", "curated") in pairs
    assert all(not s["stale"] for s in status["searches"])


def test_python_m_clipsim_runs_as_a_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "clipsim", "status", "--workspace", str(tmp_path / "none")],
                         check=False, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert "is not a clipsim workspace" in out.stderr and "python -m clipsim demo" in out.stderr


def _unit(rng, n, d=16):
    a = rng.standard_normal((n, d))
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float16)


def test_register_embeddings_folder_and_search(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, n in (("laion", 300), ("bench", 20)):
        store.write_shard(tmp_path / name, 0, _unit(rng, n), pd.DataFrame({"key": [f"{name}{i}" for i in range(n)]}))
    ws_dir = str(tmp_path / "ws")
    assert main(["register", "--workspace", ws_dir, "--name", "laion", "--role", "train", "--kind", "embeddings",
                 "--source", str(tmp_path / "laion")]) == 0
    assert main(["register", "--workspace", ws_dir, "--name", "bench", "--role", "test", "--kind", "embeddings",
                 "--source", str(tmp_path / "bench")]) == 0
    assert main(["search", "--workspace", ws_dir, "--k", "3"]) == 0
    ws = Workspace.open(ws_dir)
    assert len(ws.neighbours("bench", "laion", k=3)) == 60
    capsys.readouterr()
    assert main(["search", "--workspace", ws_dir, "--train", "nope"]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err
