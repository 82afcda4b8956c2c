"""AppTest of the Runs and Results pages: plots drawn from the stored rows, downloads, launch chain, read-only."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clipsim import fileio
from clipsim.jobs import ACTIVE, Job, cancel, launch, list_jobs
from clipsim.jobs import db as jobs_db
from clipsim.runs.results import add_results, result_row
from clipsim.workspace import Workspace
from tests.helpers import chart_spec

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60
ACC = {  # run -> (manifest, rule, control_of, kept of 3000, {test: accuracy})
    "r-full": ("full", "full", None, 3000, {"val": 0.61, "v2": 0.52, "sketch": 0.33}),
    "r-gap": ("gap", "similarity-gap", None, 1200, {"val": 0.55, "v2": 0.47, "sketch": 0.21}),
    "r-gap-random": ("gap-random", "random", "gap", 1200, {"val": 0.50, "v2": 0.41, "sketch": 0.25}),
}


@pytest.fixture(scope="module")
def copied(demo_ws, tmp_path_factory):
    root = tmp_path_factory.mktemp("pages") / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("manifests", "runs", "train_data", "results",
                                                                        "jobs.sqlite*"))
    return Workspace.open(root)


@pytest.fixture
def served(copied, monkeypatch):
    """The copy served read-write, one job slot; every job left active is cancelled afterwards."""
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(copied.root))
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    copied.update_settings(jobs={"slots": 1})
    yield copied
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    for _ in range(5):
        for job in list_jobs(copied, states=ACTIVE):
            cancel(copied, job.id, grace=1.0)


def write_rows(ws) -> None:
    rows = []
    for run, (manifest, rule, control_of, kept, accs) in ACC.items():
        info = {"run": run, "checkpoint": f"/x/{run}/epoch_2.pt", "epoch": 2, "manifest": manifest, "preset": "demo",
                "rule": rule, "control_of": control_of, "web": "web", "train_samples": kept, "web_samples": 3000}
        rows += [result_row(info, {"test": t, "accuracy": a, "correct": int(a * 96), "n": 96, "classes": 12}, "demo")
                 for t, a in accs.items()]
    add_results(ws, rows)


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=TIMEOUT).run()


def test_results_page_empty_state(served):
    at = page("results")
    assert not at.exception and not at.get("plotly_chart")
    assert any("No zero-shot results yet" in i.value for i in at.info)


def test_results_page_draws_the_stored_rows(served):
    write_rows(served)
    at = page("results")
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    bars = {trace["name"]: dict(zip(trace["x"], trace["y"])) for trace in chart_spec(charts[0])["data"]}
    assert list(bars) == ["full web", "gap", "gap (random control)", "chance (1 / classes)"]
    assert list(bars["full web"]) == ["val", "v2", "sketch"]  # registry order, not alphabetical
    assert bars["full web"] == ACC["r-full"][4] and bars["gap (random control)"]["sketch"] == 0.25
    assert bars["chance (1 / classes)"] == {t: 1 / 12 for t in ("val", "v2", "sketch")}
    lines = {t["name"]: t for t in chart_spec(charts[1])["data"]}
    assert lines["pruned"]["x"] == [0.0, 0.6] and lines["random"]["x"] == [0.0, 0.6]
    assert lines["random"]["y"][1] == pytest.approx((0.50 + 0.41 + 0.25) / 3)  # mean over the test sets
    assert any(a["text"].startswith("chance 8.3%") for a in chart_spec(charts[1])["layout"]["annotations"])
    robust = {t["name"]: t for t in chart_spec(charts[2])["data"]}
    assert set(robust) == {"v2", "sketch", "full web set", "pruned", "random control", "chance (1 / classes)",
                           "y = x"}  # the marker shapes are in the legend
    assert sorted(robust["sketch"]["x"]) == [0.50, 0.55, 0.61] and robust["pruned"]["marker"]["symbol"] == "diamond"
    ranges = [chart_spec(charts[0])["layout"]["yaxis"]["range"]] + [chart_spec(c)["layout"][a]["range"] for c in charts[1:]
                                                                for a in ("xaxis", "yaxis")]
    assert all(0 <= lo < hi <= 1 for lo, hi in ranges), ranges  # shares never run past 0% or 100%
    downloads = [d for d in at.get("download_button") if d.key != "report_download"]  # not the sidebar's report
    assert len(downloads) == 7  # HTML + CSV for each plot, and all rows as CSV
    table = next(d.value for d in at.dataframe if "model" in d.value.columns)
    assert table.set_index("model").loc["gap", "val"] == 0.55
    assert any("kaleido" in c.value for c in at.caption)
    at.selectbox(key="results_pruned_test").set_value("sketch").run()
    lines = {t["name"]: t for t in chart_spec(at.get("plotly_chart")[1])["data"]}
    assert lines["pruned"]["y"] == [0.33, 0.21] and not at.exception


def insert_done_train_job(ws) -> Job:
    """A finished train job record with a run folder holding training.json and an OpenCLIP log."""
    job = Job(id="20260101-000000-train-abcd", kind="train", params={"manifest": "gap"}, state="done",
              created=time.time(), started=time.time(), finished=time.time(), root=str(ws.root))
    with jobs_db.transaction(ws) as con:
        jobs_db.insert(con, job)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    fileio.write_json(job.run_dir / "training.json", {"manifest": "gap", "state": "done", "preset": {"epochs": 1},
                                                      "global_batch": 256})
    lines = [f"2026-01-01,00:00:0{i} | INFO | Train Epoch: 0 [{256 * (i + 1)}/1024 ({25 * (i + 1)}%)] Data (t): 0.01 "
             f"Batch (t): 0.5, 512.0/s, 512.0/s/gpu LR: 0.001 Logit Scale: 14.2 Contrastive_loss: {5 - i} ({5 - i}) "
             f"Loss: {5 - i} ({5 - i})" for i in range(4)]
    (job.run_dir / "out.log").write_text("\n".join(lines) + "\n")
    return job


def test_runs_page_shows_the_training_curve_and_queues_a_chain(served):
    job = insert_done_train_job(served)
    at = page("runs")
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Step"] == "4/4"
    curve = chart_spec(next(c for c in at.get("plotly_chart") if "Loss" in chart_spec(c)["layout"]["title"]["text"]))
    assert curve["data"][0]["y"] == [5, 4, 3, 2]
    # every slot busy, the chain stays queued (steps differ: launch would deduplicate two identical jobs)
    blockers = [launch(served, "sleep", {"seconds": 60, "steps": steps, "lane": lane})
                for lane, steps in (("heavy", 600), ("light", 600), ("light", 601))]
    at.button(key="runs_launch").click().run()
    at.button(key="runs_launch").click().run()  # a double click queues one chain
    assert not at.exception
    queued = [j for j in list_jobs(served) if j.id not in {b.id for b in blockers} | {job.id}]
    kinds = sorted(j.kind for j in queued)
    assert kinds == ["evaluate", "evaluate", "evaluate", "prune", "train", "train", "train"]
    prune_job = next(j for j in queued if j.kind == "prune")
    assert prune_job.params == {"rule": "similarity-gap", "delta": 0.0, "web": "web", "name": "similarity-gap_d0"}
    trains = {(j.params["manifest"], j.params.get("control")): j for j in queued if j.kind == "train"}
    assert set(trains) == {("full", None), ("similarity-gap_d0", None), ("similarity-gap_d0", "random")}
    assert trains[("similarity-gap_d0", "random")].depends_on == prune_job.id
    assert trains[("full", None)].depends_on is None
    evaluates = {j.depends_on: j.params["run"] for j in queued if j.kind == "evaluate"}
    assert evaluates == {t.id: t.id for t in trains.values()}
    at.run()  # the job rows say what each run is and why it waits
    rows = [m.value for m in at.markdown]
    for text in ("train on the full web set", "train on manifest similarity-gap_d0  ",
                 "train on manifest similarity-gap_d0 (random control of the same size)",
                 "prune (similarity-gap) into manifest similarity-gap_d0"):
        assert any(text in r for r in rows), text
    captions = [c.value for c in at.caption]
    assert f"waiting for job {prune_job.id} (queued)" in captions  # the pruned run waits for its manifest
    assert any(c.startswith("waiting for a free light slot (2 of 2 busy)") for c in captions), captions  # the prune
    assert any(c.startswith("waiting for a free heavy slot (1 of 1 busy)") for c in captions), captions  # full web


def test_runs_page_read_only_hides_launching(served, monkeypatch):
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    at = page("runs")
    assert not at.exception
    assert not [b for b in at.button if b.key == "runs_launch"]
    assert any("Read-only" in i.value for i in at.info)
