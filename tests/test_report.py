"""The study report: self-contained (no network resource), byte-identical across runs, holding what the workspace holds
(datasets, medians, manifests, results, closest pairs), rendered by Chromium from a file:// URL; CLI and job.
"""
from __future__ import annotations

import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import streamlit  # noqa: F401 - importing it changes plotly's default template; the report must not change

from clipsim import jobs, prune
from clipsim.cli import main as cli_main
from clipsim.errors import ReadOnlyError
from clipsim.report import PAIRS, build_report, write_report
from clipsim.workspace import Workspace

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def study(demo_ws, tmp_path_factory):
    """A copy of the demo workspace with a saved manifest and zero-shot result rows."""
    root = tmp_path_factory.mktemp("report") / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("maps", "manifests", "results", "reports",
                                                                     "jobs.sqlite*", "runs"))
    ws = Workspace.open(root)
    stats = prune.PruneStats.load(ws, "web", ws.dataset_names("test"), ws.settings["reference"])
    prune.save_manifest(ws, "gap", "similarity-gap", {"delta": 0.0}, stats, prune.rule_similarity_gap(stats, 0.0))
    from clipsim.runs.results import add_results

    rows = []
    for run, manifest, rule, kept, acc in (("r-full", "full", "full", 3000, 0.6), ("r-gap", "gap", "similarity-gap",
                                                                                    2500, 0.5)):
        for i, test in enumerate(ws.dataset_names("test")):
            rows.append({"run": run, "manifest": manifest, "preset": "demo", "rule": rule, "control_of": "",
                         "web": "web", "train_samples": kept, "web_samples": 3000,
                         "pruned_fraction": 1 - kept / 3000, "test": test, "accuracy": acc - 0.05 * i,
                         "correct": int(96 * (acc - 0.05 * i)), "n": 96, "unlabelled": 0, "classes": 12,
                         "templates": "demo", "epoch": 1, "checkpoint": f"{run}/epoch_1.pt",
                         "created": "2026-01-01T00:00:00"})
    add_results(ws, rows)
    return ws


class _Resources(HTMLParser):
    """Every src/href of script, link, img, iframe, source, object and use elements."""

    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "img", "iframe", "source", "object", "use", "audio", "video", "embed"):
            self.urls += [(tag, v or "") for k, v in attrs if k in ("src", "href", "data", "xlink:href")]


def test_report_is_self_contained_complete_and_deterministic(study, tmp_path):
    ws = study
    a, b = tmp_path / "a.html", tmp_path / "b.html"
    assert cli_main(["report", "--workspace", str(ws.root), "--out", str(a)]) == 0
    time.sleep(1.1)  # a generation time in the output would now differ
    write_report(ws, b)
    assert a.read_bytes() == b.read_bytes()  # same inputs, same bytes
    html = a.read_text()
    parser = _Resources()
    parser.feed(html)
    external = [(t, u) for t, u in parser.urls if not u.startswith("data:") and not u.startswith("#")]
    assert external == []
    assert html.count("<script>/**\n* plotly.js v") == 1  # plotly.js inlined once
    tests = ws.dataset_names("test")
    for test in tests:
        s_web, s_ref = ws.nn_similarity(test, "web"), ws.nn_similarity(test, "curated")
        assert f"median {float(np.median(s_web)):.3f}" in html and f'id="cs-fig-hist-{test}"' in html
        assert f"{float(np.median(s_ref)):.4f}" in html
    imgs = [u for t, u in parser.urls if t == "img"]
    assert len(imgs) == 2 * PAIRS * len(tests) and all(u.startswith("data:image/") for u in imgs)
    top = ws.neighbours("sketch", "web", k=1).sort_values("similarity", ascending=False, kind="stable").iloc[0]
    assert f'title="{top["test_key"]} ↔ {top["train_key"]}"' in html
    manifest = prune.load_manifest(ws, "gap")
    assert "<h3>gap " in html and f"{manifest.removed_count:,}" in html
    assert "Zero-shot results" in html and 'id="cs-fig-results-bars"' in html
    assert "<td>gap</td>" in html and ">60.0%<" in html and ">50.0%<" in html  # accuracy per model and test set
    assert html.count("<td>clipsim-demo</td>") == len(ws.dataset_names())  # the model of every embedding


def test_report_without_results_or_manifests(demo_ws, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("maps", "manifests", "results", "runs",
                                                                     "jobs.sqlite*"))
    html = build_report(Workspace.open(root))
    assert "Zero-shot results" not in html and "No manifest saved yet" in html


def test_report_job_and_read_only(study, tmp_path, monkeypatch):
    job = jobs.wait(study, jobs.launch(study, "report", {"pairs": 2}).id, timeout=120)
    assert job.state == "done", job.error
    path = Path(job.result["path"])
    assert path == study.path("reports", "report.html") and job.result["bytes"] == path.stat().st_size
    assert path.read_bytes() == build_report(study, pairs=2).encode()
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    with pytest.raises(ReadOnlyError, match="read-only"):
        write_report(study)  # into the workspace: refused
    assert write_report(study, tmp_path / "out.html").exists()  # a file of the user's choosing: fine


@pytest.mark.browser
def test_report_renders_offline_in_chromium(study, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    out = write_report(study, tmp_path / "report.html")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        failed = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(out.as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
        sizes = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(e => { "
                              "const r = e.getBoundingClientRect(); return [e.id, r.width, r.height]; })")
        images = page.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    tests = study.dataset_names("test")
    assert len(sizes) == len(tests) + 3 and all(w > 100 and h > 100 for _, w, h in sizes)
    assert len(images) == 2 * PAIRS * len(tests) and all(images)
    assert failed == []
    shots = Path("/tmp/clipsim_shots")
    shots.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "report.png", shots / "report.png")
