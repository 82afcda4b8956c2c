"""Jobs end to end with real worker processes and the real SQLite database: progress, failure, cancel, restart,
dead-process detection, dedupe, the slot queue, dependencies, the SLURM path (submitit's local executor), CLI, UI.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clipsim import Workspace
from clipsim.cli import main
from clipsim.errors import ClipsimError, ReadOnlyError
from clipsim.jobs import (
    ACTIVE,
    Job,
    QueueSpot,
    cancel,
    describe_job,
    get_job,
    jobs_frame,
    lane_slots,
    launch,
    list_jobs,
    queue_spots,
    read_progress,
    reconcile,
    slot_count,
    tail_log,
    wait,
    waiting_for,
)
from clipsim.jobs.backends import process_alive, process_start
from tests.helpers import process_gone, until

ROOT = Path(__file__).resolve().parents[1]
LONG = {"seconds": 60, "steps": 600}  # a job that runs until it is cancelled


def _eta(ws: Workspace, job_id: str) -> float:
    """The running job's progress ETA in seconds, once it reports one."""
    return until(lambda: read_progress(get_job(ws, job_id)).get("eta_s"), what=f"an ETA from job {job_id}")


def _started(ws: Workspace, job_id: str):
    """Wait until the worker has marked the job started and reported progress; returns the record."""
    def check():
        job = get_job(ws, job_id)
        return job if job.started and read_progress(job) else None

    return until(check, what=f"job {job_id} to start")


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A fresh workspace with two local slots; every job still active at the end is cancelled."""
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    workspace = Workspace.create(tmp_path / "ws")
    workspace.update_settings(jobs={"slots": 2})
    yield workspace
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    for _ in range(5):
        active = list_jobs(workspace, states=ACTIVE)
        if not active:
            break
        for job in active:
            cancel(workspace, job.id, grace=1.0)


def test_launch_reports_progress_and_finishes_with_result(ws):
    job = launch(ws, "sleep", {"seconds": 2.0, "steps": 8})
    assert job.state == "running" and job.backend == "local" and job.run_dir == ws.path("runs", job.id)
    assert json.loads((job.run_dir / "config.json").read_text())["params"] == {"seconds": 2.0, "steps": 8}
    progress = until(lambda: (p := read_progress(get_job(ws, job.id))).get("done", 0) >= 2 and p, what="progress")
    running = get_job(ws, job.id)
    assert running.state == "running" and running.pid == int(running.backend_id) and running.started >= running.created
    assert progress["total"] == 8 and 0 < progress["fraction"] < 1 and progress["eta_s"] > 0 and progress["rate"] > 0
    done = wait(ws, job.id, timeout=30)
    assert done.state == "done" and done.exit_code == 0 and done.error is None
    assert done.result == {"slept_s": 2.0, "steps": 8}
    assert json.loads((done.run_dir / "result.json").read_text()) == done.result
    assert (done.run_dir / "slept.txt").read_text() == "2.0\n"
    assert done.finished - done.started >= 2.0
    assert read_progress(done)["fraction"] == 1.0 and "slept 2.00 s in 8 steps" in tail_log(done)
    frame = jobs_frame(ws)
    assert frame.loc[0, "id"] == job.id and frame.loc[0, "state"] == "done" and frame.loc[0, "duration_s"] >= 2.0


def test_failing_job_records_exit_code_and_log_tail(ws):
    job = wait(ws, launch(ws, "sleep", {"seconds": 0.2, "steps": 4, "fail_at": 2}).id, timeout=30)
    assert job.state == "failed" and job.exit_code == 1 and job.result is None
    assert "Traceback" in job.error and "RuntimeError: sleep job asked to fail at step 2" in job.error
    assert read_progress(job)["done"] == 2 and read_progress(job)["eta_s"] is None


def test_kinds_registered_at_run_time_reach_the_worker(ws, monkeypatch):
    from clipsim.jobs import kinds

    monkeypatch.setitem(kinds.KINDS, "nap", "clipsim.jobs.kinds:sleep_job")  # known only to this process
    monkeypatch.setitem(kinds.KINDS, "ghost", "clipsim.no_such_module:run")
    nap, ghost = launch(ws, "nap", {"seconds": 0.1, "steps": 1}), launch(ws, "ghost", {})
    assert wait(ws, nap.id, timeout=30).result == {"slept_s": 0.1, "steps": 1}
    ghost = wait(ws, ghost.id, timeout=30)
    assert ghost.state == "failed" and "clipsim.no_such_module:run, which cannot be imported" in ghost.error


def test_cancel_stops_the_running_process(ws):
    job = _started(ws, launch(ws, "sleep", LONG).id)
    pid = int(job.backend_id)
    assert not process_gone(pid)
    out = cancel(ws, job.id)
    assert out.state == "cancelled" and out.exit_code == 128 + signal.SIGTERM and out.finished
    assert until(lambda: process_gone(pid), timeout=5, what="the worker to exit")
    assert "cancelled" in tail_log(out)
    assert cancel(ws, job.id).state == "cancelled"  # cancelling twice changes nothing


def test_worker_ignoring_sigterm_gets_sigkill_after_the_grace_period(ws):
    job = _started(ws, launch(ws, "sleep", {**LONG, "ignore_term": True}).id)
    t0 = time.time()
    out = cancel(ws, job.id, grace=0.5)
    assert time.time() - t0 >= 0.5
    assert out.state == "cancelled" and out.exit_code == -signal.SIGKILL
    assert process_gone(int(job.backend_id))


def test_jobs_survive_the_process_that_launched_them(ws):
    params = json.dumps({"seconds": 2.0, "steps": 8})
    out = subprocess.run([sys.executable, "-m", "clipsim", "run-job", "--workspace", str(ws.root), "--kind", "sleep",
                          "--params", params], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split(":")[0]
    reopened = Workspace.open(ws.root)  # the "restarted app": new objects, new connections
    job = get_job(reopened, job_id)
    assert [j.id for j in list_jobs(reopened)] == [job_id]
    assert job.state == "running" and not process_gone(int(job.backend_id))
    done = wait(reopened, job_id, timeout=30)
    assert done.state == "done" and done.result == {"slept_s": 2.0, "steps": 8}


def test_killed_worker_is_marked_failed_by_reconcile(ws):
    job = _started(ws, launch(ws, "sleep", LONG).id)
    os.killpg(int(job.backend_id), signal.SIGKILL)
    until(lambda: process_gone(int(job.backend_id)), timeout=5, what="the worker to die")
    assert get_job(ws, job.id).state == "running"  # nobody has looked yet
    reconcile(ws)
    dead = get_job(ws, job.id)
    assert dead.state == "failed" and dead.exit_code == -signal.SIGKILL
    assert "ended without recording a result" in dead.error and "started with params" in dead.error


def test_sigterm_from_outside_fails_the_job_instead_of_cancelling_it(ws):
    """SLURM's time limit, a node failure or a plain `kill` is not a cancel: the worker records a failure."""
    job = _started(ws, launch(ws, "sleep", LONG).id)
    os.killpg(int(job.backend_id), signal.SIGTERM)
    out = wait(ws, job.id, timeout=30)
    assert out.state == "failed" and out.exit_code == 128 + signal.SIGTERM and out.cancel_requested is None
    assert "stopped by SIGTERM, which no clipsim cancel sent" in out.error and "started with params" in out.error


def test_process_identity_guards_against_pid_reuse():
    me = os.getpid()
    assert process_alive(me, process_start(me))
    assert not process_alive(me, str(int(process_start(me)) + 1))  # same pid, another start time: not our worker


def test_identical_launch_returns_the_same_job(ws):
    first = launch(ws, "sleep", LONG)
    assert launch(ws, "sleep", {"steps": 600, "seconds": 60}).id == first.id  # same params, other key order
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(launch(ws, "sleep", {**LONG, "tag": 1}).id)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and ids[0] != first.id  # four concurrent clicks, one job
    assert launch(ws, "sleep", LONG, dedupe=False).id != first.id
    assert len(list_jobs(ws)) == 3


def test_one_slot_queues_the_second_job_and_its_worker_starts_it(ws):
    ws.update_settings(jobs={"slots": 1})
    assert slot_count(ws) == 1
    a = launch(ws, "sleep", {"seconds": 1.0, "steps": 4})
    b = launch(ws, "sleep", {"seconds": 0.2, "steps": 2})
    c = launch(ws, "sleep", {"seconds": 0.2, "steps": 3})
    assert (a.state, b.state, c.state) == ("running", "queued", "queued")
    assert cancel(ws, c.id).state == "cancelled"
    # no reconcile and no wait() here: only a's worker, as it finishes, can start b
    b_done = until(lambda: (j := get_job(ws, b.id)).state == "done" and j, what="b to finish")
    a_done = get_job(ws, a.id)
    assert a_done.state == "done" and b_done.submitted >= a_done.finished
    assert get_job(ws, c.id).started is None


def test_a_light_job_starts_while_a_heavy_one_runs_on_a_one_slot_machine(ws, capsys):
    """Heavy and light lanes take separate slots; a queued job knows its place in its lane and when it should start."""
    ws.update_settings(jobs={"slots": 1})  # an int: the heavy lane's slots; light keeps its default
    assert lane_slots(ws) == {"heavy": 1, "light": 2}
    done = launch(ws, "sleep", {"seconds": 0.3, "steps": 3, "tag": "typical"})  # a finished sleep: its typical length
    done = wait(ws, done.id, timeout=30)
    heavy = launch(ws, "sleep", LONG)
    second = launch(ws, "sleep", {"seconds": 0.2, "steps": 2, "tag": "second heavy"})
    third = launch(ws, "sleep", {"seconds": 0.2, "steps": 2, "tag": "third heavy"})
    light = launch(ws, "sleep", {"seconds": 0.2, "steps": 2, "lane": "light"})
    assert (heavy.state, second.state, third.state, light.state) == ("running", "queued", "queued", "running")
    assert wait(ws, light.id, timeout=30).state == "done" and get_job(ws, heavy.id).state == "running"
    eta = _eta(ws, heavy.id)
    spots = queue_spots(ws)
    assert (spots[second.id].lane, spots[second.id].position, spots[second.id].after) == ("heavy", 1, heavy.id)
    assert abs(spots[second.id].start_in_s - eta) < 5  # when the running job's progress ETA runs out
    typical = done.finished - done.started  # then `second` holds the slot for a typical sleep job
    assert spots[third.id].position == 2 and spots[third.id].after == second.id
    assert spots[third.id].start_in_s == pytest.approx(spots[second.id].start_in_s + typical, abs=5)
    assert "2nd in the heavy lane, starts in about" in waiting_for(ws, get_job(ws, third.id))
    assert main(["jobs", "list", "--workspace", str(ws.root)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert " heavy " in lines[third.id] and " #2 ~" in lines[third.id] and " light " in lines[light.id]
    frame = jobs_frame(ws).set_index("id")
    assert frame.loc[third.id, "queue_position"] == 2 and frame.loc[light.id, "lane"] == "light"
    ws.update_settings(jobs={"slots": {"heavy": 1, "light": 1}})  # one light slot: light jobs queue among themselves
    first_light = launch(ws, "sleep", {**LONG, "lane": "light"})
    queued_light = launch(ws, "sleep", {"seconds": 0.1, "steps": 1, "lane": "light", "tag": "waits"})
    assert first_light.state == "running" and queued_light.state == "queued"
    assert queue_spots(ws)[queued_light.id] == QueueSpot("light", 1, queue_spots(ws)[queued_light.id].start_in_s,
                                                         first_light.id)
    for bad, match in (({"gpu": 1}, "unknown lane"), ({"light": 0}, r"slots\.light = 0"), ("2", "must be an integer")):
        ws.update_settings(jobs={"slots": bad})
        with pytest.raises(ClipsimError, match=match):
            launch(ws, "sleep", {"seconds": 0.1, "tag": "refused"})
    ws.update_settings(jobs={"slots": 1})  # the fixture's teardown cancels what is left
    with pytest.raises(ClipsimError, match="lane"):
        launch(ws, "sleep", {"lane": "medium"})


def test_depends_on_waits_for_done_and_fails_with_its_dependency(ws):
    a = launch(ws, "sleep", {"seconds": 0.8, "steps": 4})
    b = launch(ws, "sleep", {"seconds": 0.1, "steps": 1}, depends_on=a.id)
    assert b.state == "queued"  # a slot is free, but a is not done
    bad = launch(ws, "sleep", {"seconds": 0.2, "steps": 2, "fail_at": 0})
    c = launch(ws, "sleep", {"seconds": 0.1, "steps": 1, "tag": "c"}, depends_on=bad.id)
    d = launch(ws, "sleep", {"seconds": 0.1, "steps": 1, "tag": "d"}, depends_on=c.id)
    b = wait(ws, b.id, timeout=30)
    assert b.state == "done" and b.started >= get_job(ws, a.id).finished
    c, d = wait(ws, c.id, timeout=30), wait(ws, d.id, timeout=30)
    assert c.state == "failed" and f"dependency {bad.id} failed" in c.error and c.started is None
    assert d.state == "failed" and f"dependency {c.id} failed" in d.error
    with pytest.raises(ClipsimError, match="no such job"):
        launch(ws, "sleep", {}, depends_on="nope")


def test_a_cancelled_dependency_cancels_and_the_monitor_says_why_a_job_waits(ws):
    ws.update_settings(jobs={"slots": 1})
    long = launch(ws, "sleep", LONG)
    after = launch(ws, "sleep", {"seconds": 0.1, "steps": 1, "tag": "after"}, depends_on=long.id)
    free = launch(ws, "sleep", {"seconds": 0.1, "steps": 1, "tag": "waits for a slot"})
    assert waiting_for(ws, get_job(ws, after.id)) == f"waiting for job {long.id} (running)"
    _eta(ws, long.id)
    assert waiting_for(ws, get_job(ws, free.id)).startswith(
        "waiting for a free heavy slot (1 of 1 busy); 1st in the heavy lane, starts in about")
    assert waiting_for(ws, get_job(ws, free.id)).endswith(f"(when job {long.id} ends)")
    control = Job("t1", "train", {"manifest": "gap", "control": "random", "web": "web"})
    assert describe_job(control) == "train on manifest gap (random control of the same size)"
    assert describe_job(Job("t2", "train", {"manifest": "full"})) == "train on the full web set"
    assert describe_job(Job("p", "prune", {"rule": "near", "keep": 0.5, "name": "n"})) == "prune (near) into manifest n"
    cancel(ws, long.id, grace=1.0)
    after = wait(ws, after.id, timeout=30)
    assert after.state == "cancelled" and f"dependency {long.id} was cancelled" in after.error


def test_slurm_backend_runs_and_cancels_through_submitit(ws):
    ws.update_settings(slurm={"cluster": "local", "gpus": 0, "cpus": 1, "mem_gb": 1, "time_min": 5})
    job = launch(ws, "sleep", {"seconds": 0.5, "steps": 2}, backend="slurm")
    assert job.backend == "slurm" and job.backend_id
    done = wait(ws, job.id, timeout=60)
    assert done.state == "done", done.error
    assert done.result == {"slept_s": 0.5, "steps": 2} and done.resources["cluster"] == "local"
    assert (done.run_dir / "submitit").is_dir() and "slept 0.50 s" in tail_log(done)
    long = _started(ws, launch(ws, "sleep", LONG, backend="slurm").id)
    out = cancel(ws, long.id)
    assert out.state == "cancelled"
    until(lambda: process_gone(long.pid) and process_gone(int(long.backend_id)), timeout=10, what="the SLURM task to stop")


def test_cli_run_job_and_jobs_list_show_logs_cancel(ws, capsys):
    root = str(ws.root)
    assert main(["run-job", "--workspace", root, "--kind", "sleep", "--params", '{"seconds": 0.2, "steps": 2}',
                 "--wait"]) == 0
    assert ": done" in capsys.readouterr().out
    assert main(["run-job", "--workspace", root, "--kind", "sleep", "--params", json.dumps(LONG)]) == 0
    long_id = capsys.readouterr().out.split(":")[0]
    _started(ws, long_id)
    assert main(["jobs", "list", "--workspace", root, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert next(j["id"] for j in listed) == long_id and [j["state"] for j in listed] == ["running", "done"]
    assert listed[1]["result"] == {"slept_s": 0.2, "steps": 2} and listed[0]["progress"]["total"] == 600
    assert main(["jobs", "show", "--workspace", root, "--id", long_id]) == 0
    shown = capsys.readouterr().out
    assert f"id          {long_id}" in shown and "state       running" in shown and "/600" in shown
    assert main(["jobs", "logs", "--workspace", root, "--id", long_id]) == 0
    assert "started with params" in capsys.readouterr().out
    assert main(["jobs", "cancel", "--workspace", root, "--id", long_id]) == 0
    assert capsys.readouterr().out.strip() == f"{long_id}: cancelled"
    assert main(["jobs", "show", "--workspace", root, "--id", "nope"]) == 2
    assert "no job 'nope'" in capsys.readouterr().err
    assert main(["jobs", "logs", "--workspace", root]) == 2
    assert "needs --id" in capsys.readouterr().err
    assert main(["run-job", "--workspace", root, "--kind", "nope"]) == 2
    assert "unknown job kind 'nope'" in capsys.readouterr().err
    assert main(["run-job", "--workspace", root, "--kind", "sleep", "--params", "{bad"]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_read_only_refuses_launch_and_cancel(ws, monkeypatch, tmp_path):
    job = launch(ws, "sleep", LONG)
    fresh = Workspace.create(tmp_path / "other")
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    with pytest.raises(ReadOnlyError, match="read-only"):
        launch(ws, "sleep", {"seconds": 1})
    with pytest.raises(ReadOnlyError, match="read-only"):
        cancel(ws, job.id)
    assert [j.id for j in reconcile(ws)] == [job.id] and get_job(ws, job.id).state == "running"
    assert list_jobs(fresh) == [] and not fresh.path("jobs.sqlite").exists()


def _monitor_app(root: str) -> None:
    from clipsim.ui.jobs import job_monitor, launch_button
    from clipsim.workspace import Workspace

    ws = Workspace.open(root)
    launch_button(ws, "Sleep", "sleep", {"seconds": 60, "steps": 600}, key="go")
    job_monitor(ws)


def test_job_monitor_and_launch_button(ws, monkeypatch):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_monitor_app, args=(str(ws.root),), default_timeout=30).run()
    assert not at.exception and "No jobs yet." in [c.value for c in at.caption]
    at.button(key="go").click().run()
    at.button(key="go").click().run()  # a double click launches once
    [job] = list_jobs(ws)
    assert job.state == "running" and any(job.id in m.value for m in at.markdown)
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    at.run()
    assert at.button(key="go").disabled and not [b for b in at.button if b.key and "cancel" in b.key]
    monkeypatch.delenv("CLIPSIM_READ_ONLY")
    at.run()
    at.button(key=f"jobs-cancel-{job.id}").click().run()
    assert not at.exception and get_job(ws, job.id).state == "cancelled"


def test_search_kind_runs_the_exact_search(ws):
    import numpy as np
    import pandas as pd

    from clipsim import store

    rng = np.random.default_rng(0)
    for name, role, n in (("laion", "train", 400), ("bench", "test", 30)):
        emb = rng.standard_normal((n, 16))
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float16)
        store.write_shard(ws.path("src", name), 0, emb, pd.DataFrame({"key": [f"{name}{i}" for i in range(n)]}))
        ws.register_dataset(name, role, ws.path("src", name), "embeddings")
    job = wait(ws, launch(ws, "search", {"train": "laion", "k": 3}).id, timeout=60)
    assert job.state == "done", job.error
    median = float(ws.nn_similarity("bench", "laion").median())
    assert job.result == {"searches": {"bench/laion": round(median, 6)}, "train": ["laion"], "tests": ["bench"]}
    assert len(ws.neighbours("bench", "laion", k=3)) == 90 and read_progress(job)["done"] == 400
