"""Presentation (read-only) mode: every page says so and offers no launch or save control; every core write refuses
with ReadOnlyError naming the setting; the `[clipsim] read_only` secret turns the mode on like the environment variable.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from clipsim import jobs, prune, report
from clipsim.errors import ReadOnlyError
from clipsim.maps import compute as mapping
from clipsim.names import read_only
from clipsim.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 90
PAGES = ["overview", "neighbours", "similarity", "dedup", "prune", "runs", "results", "map"]
WRITE_LABELS = ("save", "launch", "queue", "compute", "cancel", "run ")  # buttons that would change the workspace


@pytest.fixture
def presented(demo_ws, monkeypatch):
    """The demo workspace served read-only through the environment variable."""
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(demo_ws.root))
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    return demo_ws


def _texts(at: AppTest) -> list[str]:
    return [e.value for kind in ("caption", "info", "markdown") for e in getattr(at, kind)]


@pytest.mark.parametrize("name", [p for p in PAGES if (ROOT / "pages" / f"{p}.py").exists()])
def test_every_page_says_read_only_and_offers_no_write(presented, name):
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, name
    assert any("Read-only" in t for t in _texts(at)), name
    writers = [b.label for b in at.button if b.label.lower().startswith(WRITE_LABELS) and not b.disabled]
    inputs = [t.label for t in at.text_input if t.key != "q"]  # the Neighbours page's text search only reads
    assert writers == [] and not inputs, (name, writers, inputs)
    assert [b.label for b in at.get("download_button")] == ["Study report (HTML)"]  # every page, the Runs page too


def test_core_writes_refuse_with_a_clear_message(presented, tmp_path):
    ws = presented
    stats = prune.PruneStats.load(ws, "web", ws.dataset_names("test"))
    maps = {n: ws.path("maps", n, "config.json").stat().st_mtime_ns for n in mapping.list_maps(ws)}
    checks = {
        "save_manifest": lambda: prune.save_manifest(ws, "nope", "threshold", {"tau": 0.9}, stats,
                                                     prune.rule_threshold(stats, 0.9)),
        "launch": lambda: jobs.launch(ws, "umap", {"sample": 100}),
        "register_dataset": lambda: ws.register_dataset("extra", "test", tmp_path, "folder"),
        "update_settings": lambda: ws.update_settings(reference="web"),
        "compute_map": lambda: mapping.compute_map(ws, sample=100),
        "write_report": lambda: report.write_report(ws),
    }
    for call in checks.values():
        with pytest.raises(ReadOnlyError, match=r"read-only \(CLIPSIM_READ_ONLY=1\)"):
            call()
    assert not ws.path("manifests", "nope").exists()
    assert {n: ws.path("maps", n, "config.json").stat().st_mtime_ns for n in mapping.list_maps(ws)} == maps
    assert not ws.path("reports").exists() and ws.settings["reference"] == "curated"
    assert "extra" not in ws.dataset_names() and "extra" not in Workspace.open(ws.root).dataset_names()
    assert report.write_report(ws, tmp_path / "r.html").stat().st_size > 0  # a download / --out file is fine


def test_secret_turns_on_read_only_mode(demo_ws, monkeypatch):
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(demo_ws.root))
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "0")  # off; restored (removed) after the test
    assert not read_only()
    at = AppTest.from_file(str(ROOT / "pages" / "prune.py"), default_timeout=TIMEOUT)
    at.run()
    assert not any("Read-only" in t for t in _texts(at)) and at.text_input  # writable without the secret
    at.secrets["clipsim"] = {"read_only": True}
    at.run()
    assert read_only() and any("Read-only" in t for t in _texts(at)) and not at.text_input
    stats = prune.PruneStats.load(demo_ws, "web", demo_ws.dataset_names("test"))
    with pytest.raises(ReadOnlyError):
        prune.save_manifest(demo_ws, "x", "near", {"keep": 0.5}, stats, prune.rule_near(stats, 0.5))
