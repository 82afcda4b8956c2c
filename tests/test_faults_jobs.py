"""Faults around jobs: a worker killed with SIGKILL takes its whole process tree with it (a trainer, torchrun-like
grandchildren in their own sessions), cancel works after the worker died, a killed trainer fails its job and a re-run
trains the same model, and a lost or corrupt job database never silently drops the history.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
import torch

from clipsim.cli import main
from clipsim.errors import WorkspaceError
from clipsim.jobs import cancel, get_job, launch, list_jobs, reconcile, wait
from clipsim.jobs.procs import job_processes
from clipsim.workspace import Workspace
from tests.helpers import process_gone, until

LONG = {"seconds": 120, "steps": 1200}  # runs until it is killed or cancelled


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A fresh workspace; whatever is still active at the end is cancelled."""
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    workspace = Workspace.create(tmp_path / "ws")
    workspace.update_settings(jobs={"slots": 2})
    yield workspace
    for job in list_jobs(workspace, states=["queued", "running"]):
        cancel(workspace, job.id, grace=1.0)


def _tree(ws, job_id: str) -> tuple[int, list[int]]:
    """(worker pid, pids of its children and grandchildren) once the sleep job has started its children."""
    folder = ws.path("runs", job_id)
    tree = until(lambda: (folder / "children.json").exists() and json.loads((folder / "children.json").read_text()),
                 timeout=60, what="the job's children")
    return int(get_job(ws, job_id).backend_id), tree["children"] + tree["grandchildren"]


def test_killed_worker_takes_its_process_tree_with_it(ws):
    job = launch(ws, "sleep", {**LONG, "children": 2})
    worker, tree = _tree(ws, job.id)
    assert len(tree) == 4 and not any(process_gone(p) for p in tree)
    assert sorted(job_processes(job.id)) == sorted([worker, *tree])  # every process carries the job's id
    os.kill(worker, signal.SIGKILL)  # the worker only: its children are re-parented and keep running
    until(lambda: process_gone(worker), timeout=10, what="the worker to die")
    assert not any(process_gone(p) for p in tree)
    reconcile(ws)
    until(lambda: all(process_gone(p) for p in tree), timeout=10, what="the orphans to be killed")
    dead = get_job(ws, job.id)
    assert dead.state == "failed" and "killed" in dead.error and "leftover process" in dead.error
    assert job_processes(job.id) == []


def test_cancel_works_after_the_worker_died(ws):
    job = launch(ws, "sleep", {**LONG, "children": 1})
    worker, tree = _tree(ws, job.id)
    os.kill(worker, signal.SIGKILL)
    until(lambda: process_gone(worker), timeout=10, what="the worker to die")
    assert cancel(ws, job.id, grace=1.0).state == "cancelled"
    until(lambda: all(process_gone(p) for p in tree), timeout=10, what="the orphans to be killed")
    assert job_processes(job.id) == []


def test_processes_that_outlive_the_kind_are_killed_when_the_job_ends(ws):
    job = launch(ws, "sleep", {"seconds": 0.5, "steps": 5, "children": 1})
    done = wait(ws, job.id, timeout=60)
    tree = json.loads(ws.path("runs", job.id, "children.json").read_text())
    assert done.state == "done" and "still running after it ended" in (done.run_dir / "log.txt").read_text()
    until(lambda: all(process_gone(p) for p in tree["children"] + tree["grandchildren"]), timeout=10, what="cleanup")


# ----- the job database --------------------------------------------------------------------------------------
def _history(ws) -> tuple[str, str]:
    done = wait(ws, launch(ws, "sleep", {"seconds": 0.1, "steps": 1}).id, timeout=60)
    failed = wait(ws, launch(ws, "sleep", {"seconds": 0.1, "steps": 2, "fail_at": 0}).id, timeout=60)
    assert (done.state, failed.state) == ("done", "failed")
    return done.id, failed.id


def _lose_database(ws, how: str) -> None:
    path = ws.path("jobs.sqlite")
    for side in ("jobs.sqlite-wal", "jobs.sqlite-shm"):
        ws.path(side).unlink(missing_ok=True)
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["empty", "missing"])
def test_lost_job_database_is_rebuilt_from_the_run_folders(ws, caplog, how):
    done_id, failed_id = _history(ws)
    con = sqlite3.connect(ws.path("jobs.sqlite"))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the records are in the main file, as after a clean shutdown
    con.close()
    _lose_database(ws, how)
    jobs = {j.id: j for j in list_jobs(ws)}
    assert set(jobs) == {done_id, failed_id}
    assert jobs[done_id].state == "done" and jobs[done_id].result == {"slept_s": 0.1, "steps": 1}
    assert jobs[failed_id].state == "failed" and "recovered from" in jobs[failed_id].error
    assert "recovered 2 job(s) from the run folders" in caplog.text
    assert get_job(Workspace.open(ws.root), done_id).kind == "sleep"  # a second opening sees the same records
    assert len(list_jobs(ws)) == 2  # recovered once, not twice


def test_corrupt_job_database_is_refused_with_the_fix(ws, capsys):
    _history(ws)
    for side in ("jobs.sqlite-wal", "jobs.sqlite-shm"):
        ws.path(side).unlink(missing_ok=True)
    ws.path("jobs.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(WorkspaceError, match=r"jobs\.sqlite is not a usable job database .*mv .*rebuilds the job "
                                             r"history from the run folders"):
        list_jobs(ws)
    assert main(["jobs", "list", "--workspace", str(ws.root)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a usable job database" in err
    shutil.move(ws.path("jobs.sqlite"), ws.path("jobs.sqlite.bad"))  # the fix the message names
    assert len(list_jobs(ws)) == 2


def test_new_workspace_gets_no_database_from_reading(ws):
    assert list_jobs(ws) == [] and not ws.path("jobs.sqlite").exists()


# ----- training: kill the worker, kill the trainer, re-run --------------------------------------------------
@pytest.fixture(scope="module")
def train_ws(demo_ws, tmp_path_factory, tiny_model_config):
    """A copy of the small demo with a 256-sample manifest and a tiny preset (4 steps per epoch on CPU)."""
    from clipsim import prune

    root = tmp_path_factory.mktemp("train-faults") / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("manifests", "runs", "train_data", "results"))
    ws = Workspace.open(root)
    stats = prune.PruneStats.load(ws, "web", [])
    prune.save_manifest(ws, "small", "random", {"keep": 256, "seed": 2}, stats, prune.rule_random(stats.n, 256, 2))
    ws.update_settings(jobs={"slots": 1}, presets={"tiny": {
        "base": "demo", "model": tiny_model_config.stem, "model_config": str(tiny_model_config), "epochs": 2,
        "batch_size": 64, "warmup": 1, "log_every_n_steps": 1}})
    return ws


def _training(ws, job_id: str) -> dict:
    """training.json once the trainer has logged its first step."""
    from clipsim.runs.train import read_training_progress

    def started():
        job = get_job(ws, job_id)
        assert job.state in ("queued", "running"), job.error
        return (read_training_progress(job.run_dir)["step"] or 0) > 0

    until(started, timeout=240, what="the first training step")
    return json.loads(ws.path("runs", job_id, "training.json").read_text())


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of what the trainer reads from a training data cache (the tars and sizes.json; summary.json carries the
    time it was last confirmed)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "summary.json"}


@pytest.mark.slow
def test_train_faults_leave_no_orphan_and_a_rerun_trains_on_the_same_data(train_ws):
    """kill -9 the worker (the trainer dies with it), kill -9 the trainer (the job fails), then re-run.

    OpenCLIP's trainer is not bit-reproducible on webdataset input, so the re-run is compared with an uninterrupted
    run on what holds exactly: the training data (the shared tar cache, untouched by the kills), the samples, steps and
    epochs, and the model's shape. Its sample order is not: open_clip_train/data.py shuffles samples with
    `wds.shuffle(...)`, whose RNG webdataset seeds from pid and time (two identical runs differed by up to 0.009 in a
    weight here).
    """
    ws, params = train_ws, {"manifest": "small", "preset": "tiny"}
    first = launch(ws, "train", params)
    trainer = _training(ws, first.id)["trainer_pid"]
    data = _digests(ws.path("train_data", "small"))
    os.kill(int(get_job(ws, first.id).backend_id), signal.SIGKILL)  # the worker dies mid-training
    until(lambda: process_gone(trainer), timeout=20, what="the trainer to die with its worker")  # PR_SET_PDEATHSIG
    reconcile(ws)
    assert get_job(ws, first.id).state == "failed" and job_processes(first.id) == []

    second = launch(ws, "train", params)
    os.kill(_training(ws, second.id)["trainer_pid"], signal.SIGKILL)  # the trainer dies mid-training
    second = wait(ws, second.id, timeout=120)
    assert second.state == "failed" and "exit code -9" in second.error
    until(lambda: job_processes(second.id) == [], timeout=30, what="the worker to exit, leaving nothing behind")

    rerun = wait(ws, launch(ws, "train", params).id, timeout=600)
    control = wait(ws, launch(ws, "train", params, dedupe=False).id, timeout=600)
    assert rerun.state == control.state == "done", (rerun.error, control.error)
    assert _digests(ws.path("train_data", "small")) == data  # the kills left the shared data cache as it was
    infos = [json.loads((job.run_dir / "training.json").read_text()) for job in (rerun, control)]
    assert infos[0]["samples"] == infos[1]["samples"] == 256 and infos[0]["epoch"] == infos[1]["epoch"] == 2
    assert infos[0]["final"]["step"] == infos[1]["final"]["step"] == 8
    a, b = (torch.load(job.result["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
            for job in (rerun, control))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert all(torch.isfinite(v).all() for v in a.values())
