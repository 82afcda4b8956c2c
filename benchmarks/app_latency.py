"""How fast the app answers in a real browser: page opens from the sidebar (cold, then warm) and threshold changes
on the Prune and Similarity pages, measured with Chromium (Playwright) against `streamlit run app.py`. Prints JSON.

    python benchmarks/app_latency.py --workspace W [--checkout DIR] [--rounds 3]

--checkout runs another checkout's app.py on the same workspace (e.g. an export of the main branch), so two
versions are compared in one run on one machine; the load average is printed with the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking"]
IDLE = "document.querySelector('[data-testid=stApp]')?.dataset.testScriptState === 'notRunning'"
PAGES = ["Overview", "Neighbours", "Similarity", "Prune", "Runs", "Results", "Map"]
WAIT_MS = 120_000


@contextlib.contextmanager
def server(checkout: Path, workspace: Path):
    """`streamlit run app.py` in `checkout` serving `workspace`; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CLIPSIM_WORKSPACE": str(workspace), "PYTHONPATH": str(checkout)}
    env.pop("CLIPSIM_READ_ONLY", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.fileWatcherType", "none",
                             "--browser.gatherUsageStats", "false"], cwd=checkout, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


def timed(pg, action, done_js: str, arg=None) -> float:
    """Seconds from action() until done_js(arg) holds and no script runs."""
    start = time.perf_counter()
    action()
    pg.wait_for_function(f"(a) => ({done_js})(a) && {IDLE}", arg=arg, timeout=WAIT_MS)
    return round(time.perf_counter() - start, 3)


def open_pages(pg, rounds: int) -> dict:
    """Per page: the first open from the sidebar (cold) and the median of later opens (warm)."""
    times: dict[str, list[float]] = {}
    for _ in range(rounds + 1):
        for title in PAGES:
            link = pg.locator("[data-testid=stSidebarNav] a").filter(has_text=title)
            head = "clipsim" if title == "Overview" else title
            times.setdefault(title, []).append(
                timed(pg, link.click, "(t) => document.querySelector('h1')?.innerText.startsWith(t)", head))
    return {t: {"cold": v[0], "warm_median": statistics.median(v[1:])} for t, v in times.items()}


def metric_changes(pg, label: str, values: list[str]) -> list[float]:
    """Seconds from typing each value into the number field `label` (Enter) until the first metric shows a new
    number and the run ended."""
    box = pg.locator(f"[data-testid=stNumberInput] input[aria-label='{label}']")
    out = []
    for value in values:
        before = pg.locator("[data-testid=stMetricValue]").first.inner_text()

        def change(v=value):
            box.fill(v)
            box.press("Enter")

        out.append(timed(pg, change, "(b) => document.querySelector('[data-testid=stMetricValue]')?.innerText !== b",
                         before))
    return out


def measure(checkout: Path, workspace: Path, rounds: int) -> dict:
    """Page opens and threshold changes of one checkout's app."""
    from playwright.sync_api import sync_playwright

    with server(checkout, workspace) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1100})
        pg.set_default_timeout(WAIT_MS)
        pg.goto(url + "/")
        pg.wait_for_function(f"() => document.querySelector('h1') && {IDLE}", timeout=WAIT_MS)
        opens = open_pages(pg, rounds)
        pg.goto(url + "/prune?rule=Threshold&tau=0.9")
        pg.wait_for_function(f"() => document.querySelector('[data-testid=stMetricValue]') && {IDLE}")
        prune = metric_changes(pg, "Threshold τ", ["0.85", "0.8", "0.86", "0.9", "0.84"][: rounds + 2])
        pg.goto(url + "/similarity?tau=0.9")
        pg.wait_for_function(f"() => document.querySelector('[data-testid=stMetricValue]') && {IDLE}")
        similarity = metric_changes(pg, "Threshold τ on s_web(t)", ["0.85", "0.8", "0.86", "0.9", "0.84"][: rounds + 2])
        browser.close()
    return {"page_open_s": opens, "prune_threshold_change_s": prune, "similarity_threshold_change_s": similarity,
            "warm_open_median_s": statistics.median(v["warm_median"] for v in opens.values()),
            "prune_change_median_s": statistics.median(prune), "similarity_change_median_s": statistics.median(similarity)}


def main(argv: list[str] | None = None) -> dict:
    """Measure this checkout (and --checkout when given) and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, help="a built demo workspace (with a map for the Map page)")
    parser.add_argument("--checkout", help="another checkout to measure on the same workspace, for a ratio")
    parser.add_argument("--rounds", type=int, default=3, help="warm opens per page and threshold changes - 2")
    args = parser.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    report = {"load_average_at_start": os.getloadavg()[0], "this": measure(here, Path(args.workspace), args.rounds)}
    if args.checkout:
        report["other"] = measure(Path(args.checkout), Path(args.workspace), args.rounds)
        report["ratios_other_over_this"] = {k: round(report["other"][k] / report["this"][k], 2) for k in
                                            ("warm_open_median_s", "prune_change_median_s", "similarity_change_median_s")}
    report["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
