"""AppTest of the Explore pages (Neighbours, Similarity, Prune) on the small demo workspace, and their empty states.

Every number a page shows is checked against the library computed directly (nn_similarity, PruneStats, rule_*);
saving from the Prune page must write what `python -m clipsim prune` writes.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from clipsim import fileio, prune
from clipsim.cli import main as cli_main
from clipsim.errors import ReadOnlyError
from clipsim.status import workspace_status
from clipsim.store import write_shard
from clipsim.workspace import Workspace
from tests.helpers import PAGE_TIMEOUT, html, metric, run_page, writable_copy

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["neighbours", "similarity", "prune"]


@pytest.fixture
def writable(demo_ws, tmp_path, monkeypatch):
    """A private copy of the demo workspace (mtimes kept, so every fingerprint still matches; not the similarity model,
    which no page reads) for saving manifests."""
    return writable_copy(demo_ws.root, tmp_path / "ws", monkeypatch, ("manifests", "models"))


def gallery_keys(at: AppTest) -> list[str]:
    return re.findall(r'data-testid="cs-row" data-key="([^"]+)"', html(at))


def table(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe on the page with this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def order(s: pd.Series, descending: bool) -> list[str]:
    """Keys sorted by value, ties in dataset order (what the page promises)."""
    values = s.to_numpy(np.float64)
    return list(s.index[np.argsort(-values if descending else values, kind="stable")])


# ----- Neighbours ---------------------------------------------------------------------------------------
def test_app_navigates_to_every_page(served):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=PAGE_TIMEOUT).run()
    assert not at.exception
    for name in PAGES:
        at.switch_page(f"pages/{name}.py").run()
        assert not at.exception, name
        assert at.title[0].value == name.capitalize()


def test_overview_counts_the_study_so_far(writable):
    at = run_page("overview")
    assert not at.exception
    status = workspace_status(writable)
    assert metric(at, "Searches") == str(len(status["searches"])) == "10"
    assert metric(at, "Pruning manifests") == "0"
    nexts = [m.value for m in at.markdown if "**next**" in m.value]
    assert len(nexts) == 1 and "Prune the web set" in nexts[0]  # where a newcomer starts: the first step not done
    assert any("clipsim prune" in c.value for c in at.code)
    cli_main(["prune", "--workspace", str(writable.root), "--rule", "threshold", "--web", "web", "--tests", "sketch",
              "--tau", "0.9", "--name", "t90"])
    at = run_page("overview")
    assert metric(at, "Pruning manifests") == "1"
    assert ["Retrain" in m.value for m in at.markdown if "**next**" in m.value] == [True]
    assert list(table(at, "rule")["name"]) == ["t90"]


def test_neighbours_gallery_sorts_filters_and_pages(served):
    ws = served
    s = ws.nn_similarity("sketch", "web")
    at = run_page("neighbours", test="sketch")
    assert not at.exception
    page = html(at)
    assert gallery_keys(at) == order(s, descending=True)[:24]
    assert page.count('data-testid="cs-thumb"') == 24 * (1 + 2 * 5)  # the test image + 5 web + 5 curated
    assert page.count('data-testid="cs-sim"') == 24 * 2 * 5
    nn = ws.neighbours("sketch", "web", k=5)
    top = nn[nn["test_key"] == gallery_keys(at)[0]]
    first_row = page.split('data-testid="cs-row"')[1]
    shown = re.findall(r'data-testid="cs-sim"[^>]*>([0-9.]+)<', first_row.split('data-train="curated"')[0])
    assert shown == [f"{v:.4f}" for v in top["similarity"]]  # web set first: it sorts the page; τ's 4 decimals
    assert first_row.count('class="cs-role">test image<') == 1 and 'class="cs-role">train<' in first_row

    at.button_group(key="sort").set_value("least").run()
    assert gallery_keys(at) == order(s, descending=False)[:24]
    at.get("pagination")[0].set_value(2).run()
    assert gallery_keys(at) == order(s, descending=False)[24:48]

    classes = ws.dataset("sketch").classes
    labels = ws.embeddings("sketch").metadata(["key", "label"]).set_index("key")["label"]
    at.multiselect(key="cls").set_value(["star"]).run()  # back to page 1 of the filtered set
    stars = s[labels.reindex(s.index).to_numpy() == classes.index("star")]
    assert gallery_keys(at) == order(stars, descending=False)[:24]
    assert f"of **{len(stars)}** test images" in at.markdown[0].value

    at.multiselect(key="cls").set_value([]).run()
    at.slider(key="sim").set_value((0.8, 0.9)).run()
    inside = s[(s >= 0.8) & (s <= 0.9)]
    assert gallery_keys(at) == order(inside, descending=False)[:24]
    assert f"of **{len(inside)}** test images" in at.markdown[0].value


def test_neighbours_range_filter_resets_when_the_sort_set_changes(served):
    at = run_page("neighbours", test="sketch", sim=["0.8", "0.9"])
    assert at.slider(key="sim").value == (0.8, 0.9) and "(filtered from 96)" in at.markdown[0].value
    at.selectbox(key="by").set_value("curated").run()  # another set sorts: its s(t) range starts over
    slider = at.slider(key="sim")
    assert slider.value == (slider.min, slider.max)
    assert "filtered" not in at.markdown[0].value and "sim" not in at.query_params
    assert len(gallery_keys(at)) == 24


def test_neighbours_link_restores_the_view(served):
    ws = served
    s = ws.nn_similarity("val", "curated")
    classes = ws.dataset("val").classes
    labels = ws.embeddings("val").metadata(["key", "label"]).set_index("key")["label"].reindex(s.index)
    wanted = s[np.isin(labels.to_numpy(), [classes.index("star"), classes.index("heart")])]
    at = run_page("neighbours", test="val", by="curated", sort="Least similar", cls=["star", "heart"], n="12", page="2",
                  k="3")  # a segmented control's URL value is its label
    assert not at.exception
    assert at.selectbox(key="test").value == "val" and at.selectbox(key="by").value == "curated"
    assert at.slider(key="k").value == 3 and at.multiselect(key="cls").value == ["star", "heart"]
    assert gallery_keys(at) == order(wanted, descending=False)[12:24]
    assert html(at).count('data-testid="cs-thumb"') == len(gallery_keys(at)) * (1 + 2 * 3)


def test_neighbours_invalid_link_falls_back_to_defaults(served):
    at = run_page("neighbours", test="nope", sort="sideways", page="zz", k="99", sim=["x", "y"], n="7", image="bad")
    assert not at.exception
    first_test = served.dataset_names("test")[0]
    assert at.selectbox(key="test").value == first_test
    assert gallery_keys(at) == order(served.nn_similarity(first_test, "web"), descending=True)[:24]
    assert 'data-testid="cs-detail"' not in html(at)


def test_neighbours_detail_view_marks_planted_pairs(served):
    ws = served
    planted = pd.read_parquet(ws.path("demo", "planted.parquet")).query("test_dataset == 'val'")
    top = ws.neighbours("val", "web", k=10)
    hits = planted.merge(top, on=["test_key", "train_key"])
    assert len(hits) > 0  # the demo plants near-duplicates that the search finds
    key = hits["test_key"].iloc[0]
    at = run_page("neighbours", test="val", image=key)
    detail = next(h.proto.body for h in at.html if 'data-testid="cs-detail"' in h.proto.body)
    assert f'data-key="{key}"' in detail
    assert detail.count('data-testid="cs-sim"') == 2 * 10  # every stored neighbour in the detail view
    assert 'data-testid="cs-planted"' in detail
    web = ws.embeddings("web").metadata(["key", "caption"]).set_index("key")["caption"]
    for train_key in top[top["test_key"] == key]["train_key"]:  # every caption and key in full
        assert f'<div class="cs-key">{train_key}</div>' in detail and f"<figcaption>{web[train_key]}</figcaption>" in detail
    at.button[0].click().run()  # Close
    assert 'data-testid="cs-detail"' not in html(at)


# ----- Similarity ---------------------------------------------------------------------------------------
def _above(ws, tests: list[str], tau: float) -> int:
    return int(sum((ws.nn_similarity(t, "web").to_numpy(np.float64) > tau).sum() for t in tests))


def test_similarity_threshold_counts_are_exact(served):
    ws = served
    tests = ws.dataset_names("test")
    stats = prune.PruneStats.load(ws, "web", tests)
    at = run_page("similarity")
    assert not at.exception
    assert len(at.get("plotly_chart")) == len(tests) + 1  # a histogram per test set, then precision/recall vs tau
    for tau in (0.9, 0.75):
        at.number_input(key="tau").set_value(tau).run()
        assert at.slider(key="tau__slider").value == pytest.approx(tau)  # the slider follows the number field
        assert metric(at, "Web samples removed") == f"{stats.count_threshold(tau):,}"
        assert metric(at, "Test images with") == f"{_above(ws, tests, tau):,}"
        counts = table(at, "web_removed").set_index("test")
        assert [int(counts.loc[t, "web_removed"]) for t in tests] == [stats.count_threshold(tau, t) for t in tests]
    at.slider(key="tau__slider").set_value(0.8).run()  # and the number field follows the slider
    assert at.number_input(key="tau").value == pytest.approx(0.8)
    assert metric(at, "Web samples removed") == f"{stats.count_threshold(0.8):,}"


def test_similarity_pairs_straddle_the_threshold(served):
    s = np.sort(served.nn_similarity("sketch", "web").to_numpy(np.float64))
    at = run_page("similarity", tau="0.85", pairs="sketch")
    assert at.number_input(key="tau").value == pytest.approx(0.85)  # restored from the link
    page = html(at)
    above_html = page.split('data-testid="cs-pairs-above"')[1].split("cs-pairs-below")[0]
    above = re.findall(r'cs-sim"[^>]*>([0-9.]+)<', above_html)
    below = re.findall(r'cs-sim"[^>]*>([0-9.]+)<', page.split('data-testid="cs-pairs-below"')[1])
    assert above == [f"{v:.4f}" for v in s[s > 0.85][:6]]
    assert below == [f"{v:.4f}" for v in s[s <= 0.85][::-1][:6]]
    assert above_html.count('class="cs-role">test<') == above_html.count('class="cs-role">web<') == 6  # which is which


def test_similarity_bad_threshold_in_link_is_ignored(served):
    at = run_page("similarity", tau="abc", pairs="nope")
    assert not at.exception
    assert at.selectbox(key="pairs").value == served.dataset_names("test")[0]


# ----- Prune --------------------------------------------------------------------------------------------
def test_prune_counts_follow_the_rule_and_parameters(served):
    ws = served
    tests = ws.dataset_names("test")
    stats = prune.PruneStats.load(ws, "web", tests, ws.settings["reference"])
    at = run_page("prune")
    assert not at.exception
    assert metric(at, "Web samples removed") == f"{stats.count_gap(0.0):,}"  # default: similarity gap, delta 0
    at.button_group(key="rule").set_value("threshold").run()
    at.number_input(key="tau").set_value(0.85).run()
    assert metric(at, "Web samples removed") == f"{stats.count_threshold(0.85):,}"
    counts = table(at, "share_of_web").set_index("test")
    assert [int(counts.loc[t, "removed"]) for t in tests] == [stats.count_threshold(0.85, t) for t in tests]
    at.multiselect(key="tests").set_value(["sketch"]).run()
    assert metric(at, "Web samples removed") == f"{stats.count_threshold(0.85, 'sketch'):,}"
    at.button_group(key="rule").set_value("near").run()
    at.number_input(key="keep").set_value(0.25).run()
    assert metric(at, "Web samples kept") == f"{round(0.25 * stats.n):,}"
    assert len(at.get("plotly_chart")) == 1


def _manifest_files(ws: Workspace, name: str) -> tuple[bytes, bytes, dict]:
    """removed.parquet and kept.parquet as bytes, and summary.json without its creation time."""
    folder = ws.path("manifests", name)
    summary = fileio.read_json(folder / "summary.json")
    summary.pop("created")
    return (folder / "removed.parquet").read_bytes(), (folder / "kept.parquet").read_bytes(), summary


RULE_CASES = [  # (case, URL of the Prune page, `python -m clipsim prune` flags, the job's params)
    ("threshold", {"rule": "Threshold", "tau": "0.85"}, ["--rule", "threshold", "--tau", "0.85"],
     {"rule": "threshold", "tau": 0.85}),
    ("share", {"rule": "Threshold", "cut": "share removed", "frac": "0.1"},
     ["--rule", "threshold", "--remove-fraction", "0.1"], {"rule": "threshold", "remove_fraction": 0.1}),
    ("gap", {"tests": ["sketch", "rendition"]}, ["--rule", "similarity-gap", "--tests", "sketch,rendition"],
     {"rule": "similarity-gap", "tests": ["sketch", "rendition"]}),
    ("near", {"rule": "Near", "keep": "0.25"}, ["--rule", "near", "--keep-fraction", "0.25"],
     {"rule": "near", "keep": 0.25}),
    ("far", {"rule": "Far", "keep_as": "count", "keep_n": "700"}, ["--rule", "far", "--keep", "700"],
     {"rule": "far", "keep": 700}),
    ("random", {"rule": "Random", "keep": "0.5", "seed": "3"}, ["--rule", "random", "--keep-fraction", "0.5",
                                                                "--seed", "3"], {"rule": "random", "keep": 0.5, "seed": 3}),
    ("like", {"rule": "Random", "like": "cli-near", "seed": "1"}, ["--rule", "random", "--like", "cli-near",
                                                                   "--seed", "1"],
     {"rule": "random", "like": "cli-near", "seed": 1}),
]


def test_page_cli_and_job_write_identical_manifests(writable):
    """Every rule saved three ways (the Prune page, which launches the `prune` job; the CLI; the job's params as a
    user writes them) gives the same bytes: one RuleSpec, one apply_rule, one save_rule behind all three."""
    from clipsim import jobs
    from clipsim.prune import RuleSpec, default_name

    ws = writable
    for case, _, flags, _ in RULE_CASES:
        assert cli_main(["prune", "--workspace", str(ws.root), "--name", f"cli-{case}", *flags]) == 0
    launched = {}
    for case, url, _, params in RULE_CASES:
        at = run_page("prune", **url)
        at.text_input[0].set_value(f"ui-{case}")
        at.button(key="FormSubmitter:save_manifest-Save manifest").click().run()
        assert not at.exception and not at.error, case
        [job] = [j for j in jobs.list_jobs(ws, kind="prune") if j.params["name"] == f"ui-{case}"]
        assert RuleSpec.from_params(job.params) == RuleSpec.from_params({**params, "web": "web"}), case
        launched[case] = job
    for case, _, _, params in RULE_CASES:
        job = jobs.wait(ws, launched[case].id, timeout=240)
        assert job.state == "done", (case, job.error)
        assert _manifest_files(ws, f"ui-{case}") == _manifest_files(ws, f"cli-{case}"), case
    gap = RULE_CASES[2]
    assert default_name(RuleSpec.from_params(gap[3])) == "similarity-gap_d0_sketch-rendition"
    stats = prune.PruneStats.load(ws, "web", ["sketch", "rendition"], ws.reference)
    removed = prune.rule_similarity_gap(stats, 0.0)
    assert pd.read_parquet(ws.path("manifests", "ui-gap", "removed.parquet"))["key"].tolist() == list(
        stats.keys[removed])
    at = run_page("prune")  # the job's progress and result stay on the page; the saved manifests are listed
    assert {f"ui-{c[0]}" for c in RULE_CASES} <= set(table(at, "status")["name"])
    assert any("prune (random) into manifest ui-like" in m.value for m in at.markdown)


def test_prune_computes_a_new_combination_of_test_sets_as_a_job(writable):
    """Two of five test sets: their combination is not stored, so the page counts exactly from the stored row orders
    meanwhile, says it is computing, launches the sort-stats job once, and reads the stored combination after."""
    from clipsim import jobs

    ws, chosen = writable, ["sketch", "rendition"]
    stats = prune.PruneStats.load(ws, "web", chosen, ws.reference)
    url = {"rule": "Threshold", "tau": "0.8", "tests": chosen}
    at = run_page("prune", **url)
    assert not at.exception and any("computing…" in i.value for i in at.info)
    [job] = jobs.list_jobs(ws, kind="sort-stats")
    assert job.params == {"web": "web", "tests": chosen, "reference": ws.reference}
    assert metric(at, "Web samples removed") == f"{stats.count_threshold(0.8):,}"
    assert len(at.get("plotly_chart")) == 2  # removal curve, and the post-pruning histogram needs no combination
    run_page("prune", **url)
    assert len(jobs.list_jobs(ws, kind="sort-stats")) == 1  # launched once
    assert jobs.wait(ws, job.id, timeout=120).state == "done"
    at = run_page("prune", rule="Near", keep="0.5", tests=chosen)
    assert not at.exception and not any("computing…" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 1 and metric(at, "Web samples kept") == f"{round(0.5 * stats.n):,}"


def test_prune_marks_stale_manifests(writable):
    ws = writable
    stats = prune.PruneStats.load(ws, "web", ws.dataset_names("test"))
    for name in ("fresh-one", "stale-one"):
        prune.save_manifest(ws, name, "near", {"keep": 0.5}, stats, prune.rule_near(stats, 0.5))
    summary_path = ws.path("manifests", "stale-one", "summary.json")
    summary = json.loads(summary_path.read_text())
    summary["inputs"]["web_embeddings"] = "0" * 16  # as if the web set was re-embedded since
    fileio.write_json(summary_path, summary)
    listed = table(run_page("prune"), "status").set_index("name")
    assert listed.loc["fresh-one", "status"] == "fresh" and listed.loc["stale-one", "status"] == "⚠ stale"


def test_prune_read_only_hides_saving(served, monkeypatch):
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    at = run_page("prune", rule="Threshold", tau="0.9")
    assert not at.exception
    assert not at.text_input and all(b.label != "Save manifest" for b in at.button)
    assert any("Read-only" in i.value for i in at.info)
    stats = prune.PruneStats.load(served, "web", served.dataset_names("test"))
    with pytest.raises(ReadOnlyError):
        prune.save_manifest(served, "nope", "threshold", {"tau": 0.9}, stats, prune.rule_threshold(stats, 0.9))
    assert not served.path("manifests", "nope").exists()


# ----- empty states -------------------------------------------------------------------------------------
def _embedded(ws: Workspace, name: str, role: str, n: int, seed: int) -> None:
    emb = np.random.default_rng(seed).normal(size=(n, 8))
    write_shard(ws.path("embeddings", name), 0, emb / np.linalg.norm(emb, axis=1, keepdims=True),
                pd.DataFrame({"key": [f"{name}{i}" for i in range(n)]}))
    ws.register_dataset(name, role, ws.root, "folder")


@pytest.mark.parametrize("state, command", [
    ("missing", "clipsim demo"), ("empty", "clipsim register"), ("registered", "clipsim embed"),
    ("embedded", "clipsim search"),
])
def test_empty_workspaces_say_what_to_run(tmp_path, monkeypatch, state, command):
    root = tmp_path / "ws"
    if state != "missing":
        ws = Workspace.create(root)
        if state == "registered":
            ws.register_dataset("web", "train", root, "folder")
            ws.register_dataset("val", "test", root, "folder")
        elif state == "embedded":
            _embedded(ws, "web", "train", 20, 0)
            _embedded(ws, "val", "test", 5, 1)
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(root))
    for name in PAGES:
        at = run_page(name)
        assert not at.exception, name
        assert at.info, name
        assert any(command in c.value for c in at.code), (name, [c.value for c in at.code])


def test_similarity_and_prune_ask_for_a_web_search_when_only_the_reference_is_searched(tmp_path, monkeypatch):
    from clipsim.search import search

    ws = Workspace.create(tmp_path / "ws")
    _embedded(ws, "curated", "train", 20, 0)
    _embedded(ws, "val", "test", 5, 1)
    ws.update_settings(reference="curated")
    search(ws, "curated", ["val"], k=3)
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(ws.root))
    for name in ("similarity", "prune"):
        at = run_page(name)
        assert not at.exception and any("No web (non-reference)" in i.value for i in at.info), name
        want = f"python -m clipsim search --workspace {ws.root} --train WEB --reference curated"
        assert [c.value for c in at.code] == [want], name


def test_missing_workspace_builds_the_demo_from_a_button_once(tmp_path, monkeypatch):
    import time

    from clipsim.data.demo import background as demo_build

    root = tmp_path / "fresh" / "ws"
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(root))
    monkeypatch.setenv("CLIPSIM_DEMO_SIZE", "small")
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    at = run_page("overview")
    [button] = [b for b in at.button if b.label == "Build the demo here"]
    at = button.click().run()
    try:
        assert demo_build.running(root)
        pid = demo_build.start(root)  # another click or session: the same build, not a second one
        assert demo_build.start(root) == pid
        for name in ("overview", "neighbours"):
            at = run_page(name)
            assert not at.exception and not at.button, name
            assert any("Building the demo workspace" in i.value for i in at.info), name
        deadline = time.time() + 90
        while not ((root / "demo").is_dir() and demo_build.tail(root)) and time.time() < deadline:
            time.sleep(0.5)
        assert (root / "demo").is_dir() and demo_build.tail(root)  # the build is writing the workspace and its log
    finally:
        demo_build.stop(root)
    deadline = time.time() + 30
    while demo_build.running(root) and time.time() < deadline:
        time.sleep(0.2)
    assert not demo_build.running(root)
    at = run_page("overview")  # the stopped build left a workspace without demo/demo.json: offer to resume
    assert not at.exception and [b.label for b in at.button] == ["Resume the demo build"]
    monkeypatch.setenv("CLIPSIM_READ_ONLY", "1")
    shutil.rmtree(root, ignore_errors=True)
    at = run_page("overview")
    assert not at.button and any("clipsim demo" in c.value for c in at.code)  # read-only: the command, no button


def test_pages_without_reference_or_images_and_with_stale_search(tmp_path, monkeypatch):
    from clipsim.search import search

    ws = Workspace.create(tmp_path / "ws")
    _embedded(ws, "web", "train", 30, 0)
    _embedded(ws, "val", "test", 6, 1)
    search(ws, "web", ["val"], k=3)  # no reference set, and no image files behind the embeddings
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(ws.root))
    at = run_page("neighbours")
    assert not at.exception and len(gallery_keys(at)) == 6
    assert html(at).count('alt="val0 (no image stored)"') == 1  # placeholders, not errors
    at = run_page("similarity")
    assert not at.exception and any("No reference" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 2  # the histogram and precision/recall vs tau
    at = run_page("prune")  # the default rule, similarity gap, needs the reference's margins
    assert not at.exception and any("--reference" in c.value for c in at.code)
    assert not at.metric
    _embedded(ws, "val", "test", 6, 2)  # re-embedding the test set makes its search stale
    for name in PAGES:
        at = run_page(name)
        assert not at.exception and any("val vs web" in w.value for w in at.warning), name
