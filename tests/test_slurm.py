"""The SLURM backend against a real one-node cluster (tests/slurm_cluster.py: slurmctld, slurmd, slurmdbd on
loopback), through submitit's real SlurmExecutor: an embed array, a search array with its merge, a prune and a
short training chained by dependencies; jobs followed through `sacct` and cancelled with `scancel`. Every result
equals, bit for bit, the same chain run on the local backend.

Skipped where the Debian packages are missing (the reason says how to install them); CI sets
CLIPSIM_REQUIRE_SLURM=1, which turns that skip into a failure.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsim import Workspace, store
from clipsim.jobs import get_job, launch, wait
from clipsim.search import search
from tests.helpers import unit16
from tests.slurm_cluster import PARTITION, Session, unavailable

pytestmark = pytest.mark.slurm
CHAIN_TIMEOUT_S = 600  # both chains run at once on 2 shared cores; they take about a minute when the machine is idle
LONG = {"seconds": 120, "steps": 1200}  # a job that runs until it is cancelled


@pytest.fixture(scope="session")
def slurm():
    """A running one-node cluster for the session (SLURM_CONF set); its daemons stop when the session ends."""
    why = unavailable()
    if why:
        if os.environ.get("CLIPSIM_REQUIRE_SLURM") == "1":
            pytest.fail(f"CLIPSIM_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    with Session() as cluster, pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


def slurm_settings() -> dict:
    """settings.slurm for the test cluster: its partition, one CPU and 1 GB per job, the venv activated."""
    activate = Path(sys.prefix) / "bin" / "activate"
    return {"partition": PARTITION, "gpus": 0, "cpus": 1, "mem_gb": 1, "time_min": 10,
            "setup": [f". {activate}"] if activate.is_file() else []}


def make_workspace(root: Path, draw, model: tuple[Path, Path], backend: str) -> Workspace:
    """A folder train set `web` (25 drawn images in 3 classes, one that does not decode), a test set `val` and a
    reference `ref` (both embedded and searched here), a tiny training preset; `backend` is the default."""
    ws = Workspace.create(root)
    images = root.parent / f"{root.name}-images"
    for i in range(24):
        (images / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        draw(i).save(images / f"c{i % 3}" / f"{i:02d}.png")
    (images / "c1" / "bad.png").write_bytes(b"not an image")
    ws.register_dataset("web", "train", images, "folder", classes=["circle", "square", "star"])
    for name, role, n, seed in (("val", "test", 9, 3), ("ref", "train", 20, 4)):
        rows = unit16(np.random.default_rng(seed).standard_normal((n, 32)))
        store.write_shard(ws.path("src", name), 0, rows, pd.DataFrame({"key": [f"{name}{i}" for i in range(n)]}))
        ws.register_dataset(name, role, ws.path("src", name), "embeddings")
    search(ws, "ref", ["val"], k=4)
    config, _ = model
    ws.update_settings(jobs={"backend": backend, "slots": 1}, reference="ref", slurm=slurm_settings(),
                       presets={"tiny": {"base": "demo", "model": config.stem, "model_config": str(config),
                                         "epochs": 1, "batch_size": 4, "warmup": 1, "log_every_n_steps": 1,
                                         "workers": 0}})
    return ws


def launch_chain(ws: Workspace, model: tuple[Path, Path]) -> dict[str, str]:
    """embed-array (3 tasks) -> search-array (2 tasks) -> prune -> train, queued at once; returns the job ids."""
    config, checkpoint = model
    embed = launch(ws, "embed-array", {"dataset": "web", "tasks": 3, "model": str(config), "pretrained": str(checkpoint),
                                       "device": "cpu", "batch_size": 4, "workers": 0, "shard_size": 5})
    found = launch(ws, "search-array", {"train": "web", "tests": ["val"], "k": 4, "tasks": 2}, depends_on=embed.id)
    prune = launch(ws, "prune", {"name": "near", "rule": "near", "web": "web", "keep": 16}, depends_on=found.id)
    train = launch(ws, "train", {"manifest": "near", "preset": "tiny"}, depends_on=prune.id)
    return {"embed": embed.id, "search": found.id, "prune": prune.id, "train": train.id}


@pytest.fixture(scope="module")
def chains(slurm, tmp_path_factory, tiny_model_config, tiny_checkpoint) -> dict:
    """The same chain on the local backend and on the cluster, run side by side; {backend: (ws, ids, seconds)}."""
    from tests.conftest import draw_image

    root, model, out = tmp_path_factory.mktemp("chains"), (tiny_model_config, tiny_checkpoint), {}
    for backend in ("local", "slurm"):
        ws = make_workspace(root / backend, draw_image, model, backend)
        out[backend] = (ws, launch_chain(ws, model), time.time())
    for backend, (ws, ids, t0) in out.items():
        job = wait(ws, ids["train"], timeout=CHAIN_TIMEOUT_S)
        assert job.state == "done", {k: (get_job(ws, i).state, get_job(ws, i).error) for k, i in ids.items()}
        out[backend] = (ws, ids, time.time() - t0)
    return out


def files(ws: Workspace, *parts: str) -> dict[str, bytes]:
    """Every file under a workspace folder: relative path -> bytes."""
    top = ws.path(*parts)
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def test_explore(chains):
    (local, lids, lt), (remote, rids, rt) = chains["local"], chains["slurm"]
    print("times", lt, rt)
    for folder in (("embeddings", "web"), ("search", "web"), ("manifests", "near"), ("train_data", "near")):
        got, want = files(remote, *folder), files(local, *folder)
        print(folder, sorted(got) == sorted(want), sorted(want))
        print("  differ:", [n for n in want if got.get(n) != want[n]])
    for k in lids:
        a, b = get_job(local, lids[k]), get_job(remote, rids[k])
        print(k, a.to_dict())
        print(k, b.to_dict())
