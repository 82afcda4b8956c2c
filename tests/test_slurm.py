"""The SLURM backend against a real one-node cluster (tests/slurm/cluster.py: slurmctld, slurmd and slurmdbd on
loopback) through submitit's real SlurmExecutor: an embed array, a search array with its merge, a prune and a short
training chained by dependencies, equal bit for bit to the same chain on the local backend; jobs followed through
`sacct`, cancelled with `scancel`, and a node failure.

Skipped where the Debian packages are missing (the reason says how to install them); CI sets
CLIPSIM_REQUIRE_SLURM=1, which turns that skip into a failure.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsim import Workspace, store
from clipsim.cli import main
from clipsim.jobs import ACTIVE, cancel, get_job, launch, list_jobs, read_progress, reconcile, wait
from clipsim.jobs.backends import get_backend
from clipsim.search import search
from tests.conftest import draw_image
from tests.helpers import process_gone, unit16, until
from tests.slurm.cluster import PARTITION, Session, processes, unavailable

UNAVAILABLE = unavailable()  # why a cluster cannot start here; None when it can
REQUIRED = os.environ.get("CLIPSIM_REQUIRE_SLURM") == "1"  # CI: a missing cluster fails the tests instead
pytestmark = [pytest.mark.slurm, pytest.mark.slow,  # the chains take 1-3 minutes on 2 shared cores
              pytest.mark.skipif(bool(UNAVAILABLE) and not REQUIRED, reason=str(UNAVAILABLE))]
CHAIN_TIMEOUT_S = 900  # both chains at once take 1-3 minutes on 2 shared cores
LONG = {"seconds": 120, "steps": 1200}  # a sleep job that runs until it is stopped
wait_for = partial(until, poll=0.2)  # sacct and sinfo at most five times a second
VOLATILE = ("created", "finished", "seconds")  # JSON keys that hold times
FINGERPRINT = re.compile(r'"[0-9a-f]{16}"')  # fingerprints hash file paths and times, which differ by workspace


@pytest.fixture(scope="session")
def slurm():
    """A running one-node cluster for the session (SLURM_CONF set); its daemons stop when the session ends."""
    if UNAVAILABLE:  # only reached with CLIPSIM_REQUIRE_SLURM=1 (otherwise pytestmark skips the module)
        pytest.fail(f"CLIPSIM_REQUIRE_SLURM=1 but {UNAVAILABLE}")
    with Session() as cluster, pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


def slurm_settings() -> dict:
    """settings.slurm for the test cluster: its partition, one CPU and 1 GB per job, this venv activated."""
    activate = Path(sys.prefix) / "bin" / "activate"
    return {"partition": PARTITION, "gpus": 0, "cpus": 1, "mem_gb": 1, "time_min": 10,
            "setup": [f". {activate}"] if activate.is_file() else []}


def make_workspace(root: Path, images: Path, config: Path, backend: str) -> Workspace:
    """The image folder as train set `web`, random embeddings as test set `val` and reference `ref` (searched
    here), a tiny training preset; `backend` is the workspace's default backend."""
    ws = Workspace.create(root)
    ws.register_dataset("web", "train", images, "folder", classes=["circle", "square", "star"])
    for name, role, n, seed in (("val", "test", 9, 3), ("ref", "train", 20, 4)):
        rows = unit16(np.random.default_rng(seed).standard_normal((n, 32)))
        store.write_shard(ws.path("src", name), 0, rows, pd.DataFrame({"key": [f"{name}{i}" for i in range(n)]}))
        ws.register_dataset(name, role, ws.path("src", name), "embeddings")
    search(ws, "ref", ["val"], k=4)
    ws.update_settings(jobs={"backend": backend, "slots": 2}, reference="ref", slurm=slurm_settings(),
                       presets={"tiny": {"base": "demo", "model": config.stem, "model_config": str(config),
                                         "epochs": 1, "batch_size": 4, "warmup": 1, "log_every_n_steps": 1,
                                         "workers": 0}})
    return ws


def launch_chain(ws: Workspace, config: Path, checkpoint: Path) -> dict[str, str]:
    """embed-array (2 tasks) -> search-array (2 tasks) -> prune -> train, all queued at once; the job ids."""
    embed = launch(ws, "embed-array", {"dataset": "web", "tasks": 2, "model": str(config), "pretrained": str(checkpoint),
                                       "device": "cpu", "batch_size": 4, "workers": 0, "shard_size": 5})
    found = launch(ws, "search-array", {"train": "web", "tests": ["val"], "k": 4, "tasks": 2}, depends_on=embed.id)
    prune = launch(ws, "prune", {"name": "near", "rule": "near", "web": "web", "keep": 16}, depends_on=found.id)
    train = launch(ws, "train", {"manifest": "near", "preset": "tiny"}, depends_on=prune.id)
    return {"embed": embed.id, "search": found.id, "prune": prune.id, "train": train.id}


@pytest.fixture(scope="module")
def chains(slurm, tmp_path_factory, tiny_model_config, tiny_checkpoint) -> dict:
    """The same chain in two workspaces over one image folder, on the local backend and on the cluster, run side by
    side: {backend: (workspace, job ids)}."""
    root = tmp_path_factory.mktemp("chains")
    for i in range(24):  # 3 classes, and one file that does not decode (a skipped image)
        (root / "images" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        draw_image(i).save(root / "images" / f"c{i % 3}" / f"{i:02d}.png")
    (root / "images" / "c1" / "bad.png").write_bytes(b"not an image")
    out = {}
    for backend in ("local", "slurm"):
        ws = make_workspace(root / backend, root / "images", tiny_model_config, backend)
        out[backend] = (ws, launch_chain(ws, tiny_model_config, tiny_checkpoint))
    for ws, ids in out.values():
        job = wait(ws, ids["train"], timeout=CHAIN_TIMEOUT_S)
        assert job.state == "done", {k: (get_job(ws, i).state, get_job(ws, i).error) for k, i in ids.items()}
    return out


@pytest.fixture
def slurm_ws(slurm, tmp_path, monkeypatch) -> Workspace:
    """An empty workspace whose jobs go to the cluster; jobs still active at the end are cancelled."""
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    ws = Workspace.create(tmp_path / "ws")
    ws.update_settings(jobs={"backend": "slurm"}, slurm=slurm_settings())
    yield ws
    for job in list_jobs(ws, states=ACTIVE):
        cancel(ws, job.id, grace=1.0)


# ----- helpers -------------------------------------------------------------------------------------------
def files(ws: Workspace, *parts: str) -> dict[str, bytes]:
    """Every file under a workspace folder: relative path -> bytes."""
    top = ws.path(*parts)
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


def plain(value, ws: Workspace, names: dict[str, str]):
    """JSON-able `value` with what differs by design between two workspaces masked: times, the workspace path,
    job ids (-> their role in the chain) and fingerprints."""
    text = json.dumps(value, sort_keys=True).replace(str(ws.root), "<ws>")
    for job_id, name in names.items():
        text = text.replace(job_id, name)

    def drop(v):
        if isinstance(v, dict):
            return {k: drop(x) for k, x in v.items() if k not in VOLATILE}
        return [drop(x) for x in v] if isinstance(v, list) else v
    return drop(json.loads(FINGERPRINT.sub('"<fingerprint>"', text)))


def chain_jobs(ws: Workspace, ids: dict[str, str]) -> dict[str, object]:
    """role -> job record, for the chain's jobs and their array tasks ('embed/0', 'search/1', ...)."""
    out = {}
    for role, job_id in ids.items():
        job = out[role] = get_job(ws, job_id)
        if role in ("embed", "search"):
            for task_id in job.depends_on.split(","):
                task = get_job(ws, task_id)
                out[f"{role}/{task.params['task']}"] = task
    return out


def sacct(cluster, job_id: str) -> str:
    """SLURM accounting's state of one job or array task."""
    lines = cluster.run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State").stdout.splitlines()
    return dict(line.split("|") for line in lines).get(job_id, "")


def started(ws: Workspace, job_id: str):
    """Wait until the worker runs on the cluster and has reported progress; the record."""
    return wait_for(lambda: (j := get_job(ws, job_id)).started and read_progress(j) and j, 120, f"job {job_id} to start")


# ----- the chain -----------------------------------------------------------------------------------------
def test_chain_on_slurm_equals_the_local_backend_bit_for_bit(chains):
    """Embeddings, neighbours and per-shard statistics, the manifest, the training data and the trained weights."""
    import torch

    (local, lids), (remote, rids) = chains["local"], chains["slurm"]
    for folder in (("embeddings", "web"), ("search", "web"), ("manifests", "near"), ("train_data", "near")):
        want, got = files(local, *folder), files(remote, *folder)
        assert sorted(got) == sorted(want) and want, folder
        for name, data in want.items():
            if name.endswith(".json"):
                assert plain(json.loads(got[name]), remote, {}) == plain(json.loads(data), local, {}), (folder, name)
            elif name == "skipped.parquet":  # its error text holds a memory address
                frames = [pd.read_parquet(w.path(*folder, name)).drop(columns="error") for w in (remote, local)]
                pd.testing.assert_frame_equal(*frames)
            else:
                assert got[name] == data, (folder, name)
    assert len(remote.embeddings("web").all()) == 24 and len(files(remote, "search", "web")) >= 3
    runs = [w.path("runs", ids["train"]) for w, ids in ((remote, rids), (local, lids))]
    weights = [torch.load(r / "checkpoints" / "epoch_1.pt", map_location="cpu")["state_dict"] for r in runs]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
    losses = [pd.read_parquet(r / "loss.parquet")[["step", "loss"]] for r in runs]
    pd.testing.assert_frame_equal(*losses)
    assert list(losses[0]["step"]) == [1, 2, 3, 4]  # 16 kept samples, batch 4


def test_job_records_match_the_local_backend_and_sacct_follows_them(chains, slurm):
    (local, lids), (remote, rids) = chains["local"], chains["slurm"]
    ljobs, rjobs = chain_jobs(local, lids), chain_jobs(remote, rids)
    assert sorted(rjobs) == sorted(ljobs) == ["embed", "embed/0", "embed/1", "prune", "search", "search/0",
                                              "search/1", "train"]
    fields = ("kind", "params", "state", "exit_code", "result", "error", "depends_on")
    names = [{job.id: role for role, job in jobs.items()} for jobs in (rjobs, ljobs)]
    for role in ljobs:
        got, want = ({f: getattr(jobs[role], f) for f in fields} for jobs in (rjobs, ljobs))
        assert plain(got, remote, names[0]) == plain(want, local, names[1]), role
    backend, arrays = get_backend("slurm"), {}
    for role, job in rjobs.items():
        assert job.backend == "slurm" and job.pid and job.started >= job.submitted and job.resources["cpus"] == 1
        wait_for(lambda j=job: sacct(slurm, j.backend_id) == "COMPLETED", 60, f"sacct to show {role} COMPLETED")
        wait_for(lambda j=job: not backend.alive(remote, j), 10, f"sacct to show {role} ended")  # one sacct per 2 s
        assert backend.exit_code(job) == 0
        if "/" in role:  # an array task: `<array id>_<task>`
            array_id, index = job.backend_id.split("_")
            assert index == role.split("/")[1]
            arrays.setdefault(role.split("/")[0], set()).add(array_id)
        assert ljobs[role].backend == "local" and ljobs[role].backend_id == str(ljobs[role].pid)
    assert all(len(ids) == 1 for ids in arrays.values())  # each array's tasks went out as one SLURM job array
    script = (rjobs["embed"].run_dir / "submitit" / f"{arrays['embed'].pop()}_submission.sh").read_text()
    for line in ("--array=0-1%2", f"--partition={PARTITION}", "--no-requeue", "--cpus-per-task=1", "--mem=1GB"):
        assert f"#SBATCH {line}\n" in script
    assert f". {Path(sys.prefix) / 'bin' / 'activate'}" in script and "export PYTHONPATH=" in script


# ----- cancel and failure --------------------------------------------------------------------------------
def test_cancel_through_the_cli_runs_scancel(slurm_ws, slurm, capsys):
    from clipsim.jobs import tail_log

    job = started(slurm_ws, launch(slurm_ws, "sleep", LONG).id)
    wait_for(lambda: get_backend("slurm").state(job) == "RUNNING", 30, "sacct to show the job running")
    root = str(slurm_ws.root)
    assert main(["jobs", "show", "--workspace", root, "--id", job.id]) == 0
    assert job.backend_id in capsys.readouterr().out
    assert main(["jobs", "cancel", "--workspace", root, "--id", job.id]) == 0
    assert capsys.readouterr().out.strip() == f"{job.id}: cancelled"
    out = get_job(slurm_ws, job.id)
    assert out.state == "cancelled" and out.exit_code == 143 and out.error is None and "cancelled" in tail_log(out)
    wait_for(lambda: sacct(slurm, job.backend_id).startswith("CANCELLED"), 30, "sacct to show the cancel")
    wait_for(lambda: process_gone(out.pid), 30, "the worker to exit")


def test_cancelling_an_array_job_scancels_its_running_tasks(slurm_ws, slurm, monkeypatch):
    from clipsim.jobs import kinds

    monkeypatch.setitem(kinds.KINDS, "sleep-array", "clipsim.jobs.kinds:sleep_job")  # never runs: its tasks do
    monkeypatch.setitem(kinds.ARRAY_TASKS, "sleep-array", "sleep")
    array = launch(slurm_ws, "sleep-array", {**LONG, "tasks": 2})
    tasks = [started(slurm_ws, t) for t in array.depends_on.split(",")]
    assert sorted(t.backend_id for t in tasks) == [f"{tasks[0].backend_id.split('_')[0]}_{i}" for i in (0, 1)]
    # slurmdbd records a task a moment after it starts: wait for accounting rather than race it
    wait_for(lambda: [sacct(slurm, t.backend_id) for t in tasks] == ["RUNNING", "RUNNING"], 60, "sacct to show both tasks")
    assert cancel(slurm_ws, array.id).state == "cancelled"
    for task in tasks:
        assert get_job(slurm_ws, task.id).state == "cancelled"
        wait_for(lambda t=task: sacct(slurm, t.backend_id).startswith("CANCELLED"), 30, "sacct to show the cancel")
        wait_for(lambda t=task: process_gone(t.pid), 30, "the task to exit")


def test_node_failure_fails_the_job_with_slurms_state_and_no_requeue(slurm_ws, slurm):
    """A node set DOWN kills its jobs (NODE_FAIL): a worker that gets SIGTERM records the failure itself; one that
    cannot (it ignores SIGTERM and dies by SIGKILL, like a lost node) is failed by reconcile from sacct."""
    soft = started(slurm_ws, launch(slurm_ws, "sleep", LONG).id)
    stuck = started(slurm_ws, launch(slurm_ws, "sleep", {**LONG, "ignore_term": True}).id)
    node = slurm.run("sinfo", "-h", "-o", "%N").stdout.strip()
    slurm.run("scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=clipsim-test")
    try:
        soft, stuck = (wait(slurm_ws, j.id, timeout=120) for j in (soft, stuck))
    finally:
        slurm.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
        wait_for(lambda: slurm.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 60, "the node to return")
    assert soft.state == "failed" and "stopped by SIGTERM, which no clipsim cancel sent" in soft.error, soft.error
    assert f"sacct -j {soft.backend_id}" in soft.error and "started with params" in soft.error
    assert stuck.state == "failed" and "ended without recording a result (SLURM state NODE_FAIL" in stuck.error
    assert stuck.exit_code is None or stuck.exit_code < 0, stuck.exit_code
    wait_for(lambda: [sacct(slurm, j.backend_id) for j in (soft, stuck)] == ["NODE_FAIL", "NODE_FAIL"], 60, "sacct NODE_FAIL")
    time.sleep(2)
    assert slurm.run("squeue", "-h", "-o", "%A").stdout.strip() == ""  # --no-requeue: nothing runs them again
    reconcile(slurm_ws)
    assert [get_job(slurm_ws, j.id).state for j in (soft, stuck)] == ["failed", "failed"]
    wait_for(lambda: "slurmstepd" not in processes(slurm).values(), 60, "the failed job steps to end")
