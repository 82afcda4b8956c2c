"""Browser tests: Chromium (Playwright) drives a real `streamlit run app.py` server on a copy of the demo workspace:
what a user sees against the library, saving a manifest as a job, computing a map from the page, a deep link to
every page opened first on a fresh server, and nothing fetched from the internet.

Page-open and control-change times and the idle server's CPU use are recorded (printed and written to
/tmp/clipsim_shots/timings.json), never asserted: speed is measured, not asserted.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from clipsim import prune
from clipsim.ui.nav import PAGES
from clipsim.workspace import Workspace

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SHOTS = Path("/tmp/clipsim_shots")  # copies for the lead to look at
WAIT_MS = 90_000  # a cold page on 2 busy cores reads metadata and decodes a page of thumbnails
TIMINGS: dict[str, object] = {}
IDLE_JS = "() => document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning'"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(workspace: Path, log: Path):
    """`streamlit run app.py` on a free port serving `workspace`; yields (URL, pid); always terminated."""
    port = _free_port()
    env = {**os.environ, "CLIPSIM_WORKSPACE": str(workspace)}
    env.pop("CLIPSIM_READ_ONLY", None)
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"streamlit did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def site(mapped_ws, tmp_path_factory) -> Workspace:
    """A private copy of the session's demo workspace with its map (these tests save a manifest)."""
    TIMINGS["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    root = tmp_path_factory.mktemp("site") / "ws"
    shutil.copytree(mapped_ws.root, root, ignore=shutil.ignore_patterns("manifests", "jobs.sqlite*", "runs", "models"))
    yield Workspace.open(root)
    SHOTS.mkdir(parents=True, exist_ok=True)
    TIMINGS["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # timings on a busy machine run long
    (SHOTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2, sort_keys=True))
    print("\nbrowser timings:", json.dumps(TIMINGS, sort_keys=True))


@pytest.fixture(scope="module")
def server(site, tmp_path_factory):
    """The app serving the copy, shared by the page tests of this module."""
    with streamlit_server(site.root, tmp_path_factory.mktemp("streamlit") / "server.log") as (url, pid):
        yield url, pid


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; install it with `apt-get install -y chromium` "
                    "(CI installs it); never `playwright install`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


def new_page(browser):
    """A page in a fresh context that records every request leaving 127.0.0.1 in `page.external`."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.external = []
    pg.on("request", lambda r: pg.external.append(r.url)
          if urlparse(r.url).scheme in ("http", "https", "ws", "wss") and urlparse(r.url).hostname != "127.0.0.1"
          else None)
    return pg


@pytest.fixture
def page(browser, server):
    pg = new_page(browser)
    pg.goto(server[0] + "/")
    pg.get_by_text("Start here", exact=True).wait_for()
    yield pg
    assert pg.external == [], "the app fetched from the internet"
    pg.context.close()


def idle(pg) -> None:
    """Wait until the script run finished (Streamlit's running indicator is gone)."""
    pg.wait_for_timeout(300)
    pg.wait_for_function(IDLE_JS, timeout=WAIT_MS)


def metric(pg, label: str):
    return pg.locator("[data-testid=stMetric]").filter(has_text=label).locator("[data-testid=stMetricValue]")


def shows_metric(pg, value: str) -> None:
    pg.wait_for_function("(w) => [...document.querySelectorAll('[data-testid=stMetricValue]')]"
                         ".some(e => e.innerText === w)", arg=value)


def shoot(pg, tmp_path: Path, name: str) -> None:
    """A full-height screenshot (Streamlit scrolls inside its main container) into tmp_path and SHOTS."""
    height = pg.evaluate("() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
                         "[data-testid=stAppViewContainer], section, div')].slice(0, 400).map(e => e.scrollHeight))")
    pg.set_viewport_size({"width": 1500, "height": min(max(int(height), 1100), 9000)})
    pg.wait_for_timeout(500)
    path = tmp_path / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    pg.set_viewport_size({"width": 1500, "height": 1100})


def timed(pg, action, done_js: str, arg=None) -> float:
    """Seconds from `action()` until `done_js(arg)` holds and no script runs (polled every animation frame)."""
    start = time.perf_counter()
    action()
    pg.wait_for_function(f"(a) => ({done_js})(a) && ({IDLE_JS})()", arg=arg, timeout=WAIT_MS)
    return round(time.perf_counter() - start, 3)


def _number(pg, label: str):
    return pg.locator(f"[data-testid=stNumberInput] input[aria-label='{label}']")


def _value(pg, label: str) -> str:
    """The number field's value once it holds one (the field renders before its value on a loaded machine)."""
    pg.wait_for_function("(l) => document.querySelector(`[data-testid=stNumberInput] input[aria-label='${l}']`)?.value",
                         arg=label, timeout=WAIT_MS)
    return _number(pg, label).input_value()


def _fill(pg, label: str, value: str) -> None:
    box = _number(pg, label)
    box.fill(value)
    box.press("Enter")


METRIC_JS = "(w) => [...document.querySelectorAll('[data-testid=stMetricValue]')].some(e => e.innerText === w)"


# ----- pages on the shared server ---------------------------------------------------------------------------
def test_neighbours_gallery_in_chromium(page, server, site, tmp_path):
    s = site.nn_similarity("sketch", "web")
    keys = list(s.index[np.argsort(-s.to_numpy(np.float64), kind="stable")])
    page.goto(server[0] + "/neighbours?test=sketch")
    page.locator("[data-testid=cs-gallery]").wait_for()
    idle(page)
    rows = page.locator("[data-testid=cs-row]")
    assert rows.count() == 24 and rows.first.get_attribute("data-key") == keys[0]
    loaded = page.evaluate("""() => [...document.querySelectorAll('img[data-testid=cs-thumb]')]
        .map(i => i.src.startsWith('data:image/') && i.complete && i.naturalWidth > 0)""")
    assert len(loaded) == 24 * 11 and all(loaded)
    shoot(page, tmp_path, "neighbours")

    page.get_by_role("radio", name="Least similar").click()  # a segmented control's options are radios
    page.wait_for_function(f"() => document.querySelector('[data-testid=cs-row]')?.dataset.key === {keys[-1]!r}")
    assert "sort=Least+similar" in page.url  # the view is in the link
    rows.first.locator("a").click()  # open the first image in the detail view: a link that reloads the view
    detail = page.locator("[data-testid=cs-detail]")
    detail.wait_for()
    assert f"image={keys[-1].replace('/', '%2F')}" in page.url and "sort=Least+similar" in page.url
    assert detail.get_attribute("data-key") == keys[-1]
    cut = detail.evaluate("d => [...d.querySelectorAll('figcaption, .cs-key, .cs-text')]"
                          ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)")
    assert cut == []  # captions and keys in full, as the detail view promises
    shoot(page, tmp_path, "neighbours_detail")


def test_similarity_threshold_in_chromium(page, server, site, tmp_path):
    tests = site.dataset_names("test")
    stats = prune.PruneStats.load(site, "web", tests)
    s = np.concatenate([site.nn_similarity(t, "web").to_numpy(np.float64) for t in tests])
    page.goto(server[0] + "/similarity")
    metric(page, "Web samples removed").wait_for()
    idle(page)
    before = _value(page, "Threshold τ on s_web(t)")
    track = page.locator("[data-testid=stSlider] [data-orientation=horizontal]").first.bounding_box()
    knob = page.locator("[data-testid=stSlider] input[type=range]").first.locator("xpath=../..").bounding_box()
    page.mouse.move(knob["x"] + knob["width"] / 2, knob["y"] + knob["height"] / 2)  # drag the slider's thumb
    page.mouse.down()
    page.mouse.move(track["x"] + 0.6 * track["width"], knob["y"] + knob["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function("(v) => document.querySelector('[data-testid=stNumberInput] input')?.value !== v",
                           arg=before)
    idle(page)
    tau = float(_number(page, "Threshold τ on s_web(t)").input_value())  # the number field followed the slider
    slider = float(page.locator("[data-testid=stSlider] input[type=range]").first.input_value())
    assert tau == pytest.approx(slider) and tau != float(before)
    shows_metric(page, f"{stats.count_threshold(tau):,}")
    times = []
    for tau in (0.8, 0.9, 0.85):
        removed, above = f"{stats.count_threshold(tau):,}", f"{int((s > tau).sum()):,}"
        times.append(timed(page, lambda t=tau: _fill(page, "Threshold τ on s_web(t)", str(t)),
                           f"(a) => ({METRIC_JS})(a[0]) && ({METRIC_JS})(a[1])", [removed, above]))
        assert f"tau={tau}" in page.url
    TIMINGS["similarity_threshold_change_s"] = times
    assert float(page.locator("[data-testid=stSlider] input[type=range]").first.input_value()) == pytest.approx(0.85)
    pairs = page.locator("[data-testid=cs-pairs-above]")
    assert pairs.locator("img").count() > 0 and pairs.locator(".cs-role").first.inner_text().lower() == "test"
    shoot(page, tmp_path, "similarity")


def test_prune_counts_and_saving_as_a_job_in_chromium(page, server, site, tmp_path):
    stats = prune.PruneStats.load(site, "web", site.dataset_names("test"), site.reference)
    page.goto(server[0] + "/prune")
    metric(page, "Web samples removed").wait_for()
    idle(page)
    assert metric(page, "Web samples removed").inner_text() == f"{stats.count_gap(0.0):,}"
    page.get_by_role("radio", name="Threshold", exact=True).click()
    idle(page)
    times = [timed(page, lambda t=tau: _fill(page, "Threshold τ", str(t)), METRIC_JS,
                   f"{stats.count_threshold(tau):,}") for tau in (0.85, 0.8, 0.86)]
    TIMINGS["prune_threshold_change_s"] = times
    assert "rule=Threshold" in page.url and "tau=0.86" in page.url
    assert page.get_by_text("No manifest yet", exact=False).count() == 1
    page.get_by_role("button", name="Save manifest").click()  # launches the prune job; its progress shows here
    page.get_by_text("prune (threshold) into manifest threshold_t0.86").first.wait_for()
    page.wait_for_function("() => ![...document.querySelectorAll('p')].some(e => e.innerText.startsWith("
                           "'No manifest yet'))", timeout=240_000)  # the saved manifest is listed: no reload
    idle(page)
    saved = prune.load_manifest(site, "threshold_t0.86")
    assert saved.removed_count == stats.count_threshold(0.86)
    shoot(page, tmp_path, "prune")


def test_map_selection_gallery_keeps_the_map_palette_in_chromium(page, server, site, tmp_path):
    """The map (computed once per session by a worker) with its gallery: the same colour per dataset in the legend
    and in the gallery's badges. (A page that waits for a job and redraws when it ends: the Prune test above.)"""
    from urllib.parse import parse_qs

    from clipsim.maps import compute as mapping
    from clipsim.maps import view as map_view
    from clipsim.plots import workspace_colours

    page.goto(server[0] + "/map")
    plot = page.locator(".js-plotly-plot .nsewdrag").first
    plot.wait_for()
    idle(page)
    coords = mapping.load_map(site).coords()
    legend = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot .traces')].map(t => "
                           "[t.querySelector('.legendtext')?.textContent, t.querySelector('.legendpoints path')"
                           "?.style.fill])")
    colours = workspace_colours(site)
    drawn = {name: fill for name, fill in legend if name}
    assert sorted(drawn) == sorted(mapping.load_map(site).datasets)
    shoot(page, tmp_path, "map")

    box = plot.bounding_box()  # drag a box over the left 45% of the plot: plotly's box select
    page.mouse.move(box["x"] + 0.02 * box["width"], box["y"] + 0.03 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.45 * box["width"], box["y"] + 0.97 * box["height"], steps=12)
    page.mouse.up()
    page.wait_for_function("() => location.search.includes('sel=box')")
    page.locator("[data-testid=cs-gallery]").first.wait_for()
    idle(page)
    [sel] = parse_qs(urlparse(page.url).query)["sel"]
    chosen = coords.iloc[map_view.selected(coords, [map_view.parse_shape(sel)])]
    assert len(chosen) > 0
    text = page.locator("[data-testid=stMarkdown]").filter(has_text="points selected").inner_text()
    assert text.startswith(f"{len(chosen):,} points selected")
    rows = page.locator("[data-testid=cs-row]")
    assert rows.count() == int(chosen["dataset"].value_counts().clip(upper=8).sum())  # the 8 closest of each set
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.key)")) <= set(chosen["key"])
    dots = page.evaluate("() => [...document.querySelectorAll('[data-testid=cs-set]')].map(s => "
                         "[s.dataset.train, getComputedStyle(s.querySelector('.cs-dot')).backgroundColor])")
    rgb = {n: "rgb({}, {}, {})".format(*(int(c[i:i + 2], 16) for i in (1, 3, 5))) for n, c in colours.items()}
    assert dots and all(rgb[name] == colour for name, colour in dots)  # gallery badges: the map legend's colours
    assert all(rgb[name] == fill for name, fill in drawn.items())
    shoot(page, tmp_path, "map_selection")


def test_page_open_times_and_an_idle_runs_page(page, server, site):
    """Open every page from the sidebar twice (cold, then warm) and record the times; then leave the Runs page open
    and record the server's CPU use while nothing happens."""
    pid = server[1]
    opened: dict[str, list[float]] = {}
    for _ in range(2):
        for _, title, _ in PAGES:
            link = page.locator("[data-testid=stSidebarNav] a").filter(has_text=title)
            opened.setdefault(title, []).append(timed(page, link.click, "(t) => document.querySelector('h1')"
                                                      "?.innerText.startsWith(t)", "clipsim" if title == "Overview"
                                                      else title))
    TIMINGS["page_open_s"] = {t: {"cold": v[0], "warm": v[1]} for t, v in opened.items()}
    page.locator("[data-testid=stSidebarNav] a").filter(has_text="Runs").click()
    page.get_by_text("No training run yet.").wait_for()
    idle(page)
    assert page.get_by_role("button", name="Study report (HTML)").count() == 1  # the report button, as everywhere
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before, start = cpu(), time.perf_counter()
    page.wait_for_timeout(20_000)
    TIMINGS["runs_page_idle_server_cpu_share"] = round((cpu() - before) / (time.perf_counter() - start), 4)


# ----- a deep link opened first on a fresh server -----------------------------------------------------------
DEEP_LINKS = {  # page title -> (link, a view element that must show, a query parameter that must stay)
    "Overview": ("/?", "Start here", None),
    "Neighbours": ("/neighbours?test=sketch&sort=Least+similar", "sorted by s_web(t)", "sort=Least"),
    "Similarity": ("/similarity?tau=0.85&pairs=sketch", "s_web(t) > 0.8500", "tau=0.85"),
    "Dedup": ("/dedup?eps=0.04", "Samples removed", "eps=0.04"),
    "Prune": ("/prune?rule=Threshold&tau=0.85", "Remove web sample x if max_t cos(x, t) > τ", "rule=Threshold"),
    "Runs": ("/runs?runs_rule=Near", "Keep the N web samples least similar", "runs_rule=Near"),
    "Results": ("/results?results_id_test=v2", "No zero-shot results yet", None),
    "Map": ("/map?colour=Class", "Test images (◆) and training images (●)", "colour=Class"),
}


@pytest.mark.parametrize("title", list(DEEP_LINKS))
def test_deep_link_opened_first_on_a_fresh_server_keeps_navigation_and_view(browser, site, tmp_path, title):
    """A collaborator's link is often the first request a server sees: it must run through app.py (sidebar
    navigation, the workspace caption, the local favicon) and keep the view in its query parameters."""
    link, shows, kept = DEEP_LINKS[title]
    with streamlit_server(site.root, tmp_path / "server.log") as (url, _):
        pg = new_page(browser)
        try:
            pg.goto(url + link)
            nav = pg.locator("[data-testid=stSidebarNav]")
            nav.wait_for()  # app.py's navigation, not Streamlit's pages/ listing
            pg.locator("h1").filter(has_text="clipsim" if title == "Overview" else title).first.wait_for()
            pg.get_by_text(shows, exact=False).first.wait_for()
            idle(pg)
            assert nav.count() == 1 and all(t in nav.inner_text() for t in DEEP_LINKS)
            assert pg.get_by_text("Workspace:", exact=False).count() >= 1  # app.py's sidebar
            assert kept is None or kept in pg.url
            head = pg.locator("h1").first.inner_text()
            assert head.startswith("clipsim" if title == "Overview" else title)
            icon = pg.evaluate("() => document.querySelector(\"link[rel*='icon']\")?.href")
            assert icon and urlparse(icon).hostname == "127.0.0.1"
            if title == "Neighbours":
                keys = pg.locator("[data-testid=cs-row]").evaluate_all("rs => rs.map(r => r.dataset.key)")
                s = site.nn_similarity("sketch", "web")
                assert keys == list(s.index[np.argsort(s.to_numpy(np.float64), kind="stable")])[: len(keys)]
                shoot(pg, tmp_path, "deep_link_fresh_server")
            assert pg.external == []
        finally:
            pg.context.close()


BAD_NAMES = {"300 characters": ("m" * 300, "300 characters long; use at most 100"),
             "../x": ("../x", "manifest name '../x' is not allowed")}


def _alert(pg, text: str):
    """The st.error / st.warning box holding `text`."""
    return pg.locator("[data-testid=stAlert]").filter(has_text=text)


@pytest.mark.parametrize("bad", list(BAD_NAMES))
def test_bad_manifest_name_on_the_prune_page_is_an_inline_error(page, server, site, tmp_path, bad):
    from clipsim.jobs import list_jobs

    name, message = BAD_NAMES[bad]
    jobs_before, manifests_before = list_jobs(site), sorted(p.name for p in site.path("manifests").glob("*"))
    page.goto(server[0] + "/prune")
    metric(page, "Web samples removed").wait_for()
    idle(page)
    box = page.get_by_label("Manifest name")
    box.fill(name)
    page.get_by_role("button", name="Save manifest").click()
    _alert(page, message).wait_for()
    idle(page)
    assert page.locator("[data-testid=stException]").count() == 0  # a message, not a traceback
    assert metric(page, "Web samples removed").is_visible()  # the rest of the page still renders
    assert sorted(p.name for p in site.path("manifests").glob("*")) == manifests_before
    assert list_jobs(site) == jobs_before
    shoot(page, tmp_path, f"prune_bad_name_{bad.replace('/', '_').replace('.', '')}")


@pytest.mark.parametrize("bad", list(BAD_NAMES))
def test_bad_manifest_name_on_the_runs_page_is_an_inline_error_and_queues_nothing(page, server, site, tmp_path,
                                                                                  bad):
    from clipsim.jobs import list_jobs

    name, message = BAD_NAMES[bad]
    jobs_before = list_jobs(site)
    page.goto(server[0] + "/runs")
    box = page.get_by_label("Manifest name")
    box.wait_for()
    idle(page)
    box.fill(name)
    box.press("Enter")
    _alert(page, message).wait_for()
    idle(page)
    queue = page.get_by_role("button", name="Queue prune → train → evaluate")
    assert queue.is_disabled()
    queue.click(force=True)  # a click on the disabled button does nothing
    idle(page)
    assert page.locator("[data-testid=stException]").count() == 0
    assert page.get_by_text("Training", exact=True).is_visible()  # the page below the form still renders
    assert list_jobs(site) == jobs_before  # nothing was queued
    shoot(page, tmp_path, f"runs_bad_name_{bad.replace('/', '_').replace('.', '')}")


# ----- labelling pairs with the keyboard ---------------------------------------------------------------------
PRECISION_JS = """() => { const plot = document.querySelector('.st-key-sim_cal_pr .js-plotly-plot');
    const trace = plot && plot._fullData && plot._fullData.find(t => t.name === 'precision');
    return trace ? Array.from(trace.y || []) : null; }"""  # _fullData: plotly's decoded arrays (data keeps base64)


def test_label_three_pairs_with_the_keyboard_in_chromium(page, server, site, tmp_path):
    """Keys 1, 4, 2 label the three pairs the sampler proposes; the precision curve is redrawn from the stored labels
    and matches the library's calibration."""
    from clipsim.labels import calibrate, next_pairs, read_labels

    assert read_labels(site, "sketch", "web").empty
    proposed = list(next_pairs(site, "sketch", "web", 0.95, 3)["test_key"])
    page.goto(server[0] + "/similarity?tau=0.95&label_test=sketch")
    page.locator("[data-testid=cs-label-pair]").wait_for()
    idle(page)
    assert page.evaluate(PRECISION_JS) == []  # nothing labelled yet: an empty precision line
    for key, test_key in zip("142", proposed):
        assert page.locator("[data-testid=cs-label-pair]").get_attribute("data-key") == test_key
        page.locator("h1").first.click()  # focus the page, not a text field: shortcuts skip text fields
        page.keyboard.press(key)
        page.wait_for_function("(k) => document.querySelector('[data-testid=cs-label-pair]')?.dataset.key !== k",
                               arg=test_key)
        idle(page)
    stored = read_labels(site, "sketch", "web")
    assert list(stored["test_key"]) == proposed
    assert list(stored["label"]) == ["duplicate", "different", "near-duplicate"]
    table = calibrate(site, "sketch", "web").table
    want = [round(v, 6) for v in table.loc[table["n_labelled"] > 0, "precision"]]
    page.wait_for_function("(n) => { const y = (" + PRECISION_JS + ")(); return y && y.length === n; }", arg=len(want))
    assert [round(v, 6) for v in page.evaluate(PRECISION_JS)] == want  # the plot changed to the calibration
    assert metric(page, "Labelled pairs used").inner_text() == "3"
    shoot(page, tmp_path, "similarity_labelled")
