"""The study report: one self-contained HTML file (plotly.js inline, images as data URIs) that opens offline.

It holds the datasets and similarity model, s_D(t) histograms per test set with medians, the closest test/train
pairs, every saved manifest's summary, and the zero-shot results when there are any. The same inputs give the
same bytes: no generation time, stable ordering, fixed figure ids.
"""
from __future__ import annotations

import hashlib
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from clipsim import fileio, plots
from clipsim.errors import ReadOnlyError
from clipsim.names import read_only
from clipsim.report import html as H
from clipsim.search.result import completed_searches

if TYPE_CHECKING:
    from clipsim.jobs.worker import JobContext

PAIRS = 8  # closest pairs shown per test set and web set
THUMB = 96  # px per image in the pair galleries
MODEL_FIELDS = ["model", "pretrained", "dim", "precision", "checkpoint_fingerprint", "created"]


def _searched(ws, test: str) -> list[str]:
    return list(completed_searches(ws, test))


def _nn(ws, test: str, train: str) -> np.ndarray:
    return ws.search_result(test, train).arrays()[0][:, 0]


def _datasets(ws) -> str:
    frame = ws.datasets().drop(columns="source")
    frame["domain"] = [ws.dataset(n).extra.get("domain", "") for n in frame["name"]]
    return H.table(frame)


def _model(ws) -> str:
    model = ws.settings.get("similarity_model") or {}
    intro = ("<p>Similarity model (workspace settings): " + ", ".join(
        f"{escape(k)} <code>{escape(str(v))}</code>" for k, v in sorted(model.items())) + "</p>") if model else \
        "<p class=\"note\">No similarity model is recorded in the workspace settings.</p>"
    rows = []
    for name in ws.dataset_names():
        path = ws.embedding_dir(name) / "config.json"
        config = fileio.read_json(path) if path.exists() else {}
        row = {"dataset": name, **{f: config.get(f, "") for f in MODEL_FIELDS}}
        for field in ("model", "pretrained"):
            row[field] = Path(str(row[field])).name if row[field] else ("imported" if not config else "")
        rows.append(row)
    return intro + "<p>Embeddings (each dataset's <code>config.json</code>):</p>" + \
        H.table(pd.DataFrame(rows, columns=["dataset", *MODEL_FIELDS]))


def _similarity(ws, figures: H.Figures) -> str:
    ref = ws.reference
    rows, figs = [], []
    for test in ws.dataset_names("test"):
        trains = _searched(ws, test)
        if not trains:
            continue
        values = {t: _nn(ws, test, t) for t in trains}
        row = {"test": test, "images": len(next(iter(values.values())))}
        row.update({f"median s_{t}": float(np.median(v)) for t, v in values.items()})
        if ref in values:
            row.update({f"share s_{t} > s_{ref}": float(np.mean(v > values[ref]))
                        for t, v in values.items() if t != ref})
        rows.append(row)
        figs.append(figures.render(plots.similarity_histogram(values, ref, title=test, height=330), f"hist-{test}"))
    if not rows:
        return f'<p class="note">No search yet: run <code>python -m clipsim search --workspace {escape(str(ws.root))}' \
               "</code>.</p>"
    shares = {c: ".1%" for c in pd.DataFrame(rows).columns if c.startswith("share")}
    intro = ("<p>s<sub>D</sub>(t) = max<sub>x∈D</sub> cos(t, x) per test image t. Where the web set is closer than "
             f"the reference{f' ({escape(ref)})' if ref else ''}, web data may explain benchmark performance.</p>")
    return intro + H.table(pd.DataFrame(rows), shares) + f'<div class="grid">{"".join(figs)}</div>'


def _pairs(ws, pairs: int, thumb: int) -> str:
    from clipsim.images import dataset_thumbs, locator_frame

    ref, parts = ws.reference, []
    for test in ws.dataset_names("test"):
        for train in [t for t in _searched(ws, test) if t != ref]:
            sims, ids = ws.search_result(test, train).arrays()
            order = np.argsort(-sims[:, 0].astype(np.float64), kind="stable")[:pairs]
            order = order[ids[order, 0] >= 0]
            test_frame, train_frame = locator_frame(ws, test, order), locator_frame(ws, train, ids[order, 0])
            tests, trains = dataset_thumbs(ws, test, order, thumb), dataset_thumbs(ws, train, ids[order, 0], thumb)
            items = "".join(H.pair_html(a, b, float(sims[r, 0]), str(k), str(tk), str(c or ""), thumb)
                            for a, b, r, k, tk, c in zip(tests, trains, order, test_frame["key"], train_frame["key"],
                                                         train_frame["caption"]))
            parts.append(f"<h3>{escape(test)} vs {escape(train)}</h3><div class=\"pairs\">{items}</div>")
    return "".join(parts) or '<p class="note">No search of a test set against a web set yet.</p>'


def _manifests(ws) -> str:
    from clipsim.prune.manifest import list_manifests, load_manifest

    listed = list_manifests(ws)
    if listed.empty:
        return f'<p class="note">No manifest saved yet (<code>python -m clipsim prune --workspace ' \
               f'{escape(str(ws.root))} ...</code>).</p>'
    parts = [H.table(listed, {"share": ".2%"})]
    for name, stale in zip(listed["name"], listed["stale"]):
        summary = load_manifest(ws, name).summary
        counts = pd.DataFrame([{"test": t, **c} for t, c in summary.get("counts", {}).items()] +
                              [{"test": "combined", **summary["combined"]}])
        post = summary.get("post_prune") or {}
        if post:
            counts = counts.merge(pd.DataFrame([{"test": t, **v} for t, v in post.items()]), on="test", how="left")
        params = ", ".join(f"{k}={v}" for k, v in sorted(summary["params"].items()))
        parts.append(f"<h3>{escape(name)} {H.badge(bool(stale))}</h3><p class=\"note\">rule {escape(summary['rule'])}"
                     f" ({escape(params)}) on {escape(summary['web'])}, {summary['n']:,} samples</p>"
                     + H.table(counts, {"share": ".2%"}))
    return "".join(parts)


def _results(ws, figures: H.Figures) -> str | None:
    from clipsim.plots import results as plots_results
    from clipsim.runs.results import latest_per_run, results_frame

    frame = results_frame(ws)
    if frame.empty:
        return None
    tests = list(dict.fromkeys(latest_per_run(frame)["test"]))
    id_test = "val" if "val" in tests else tests[0]
    return (H.table(plots_results.bars_table(frame), {t: ".1%" for t in tests})
            + figures.render(plots_results.accuracy_bars(frame), "results-bars")
            + figures.render(plots_results.accuracy_vs_pruned(frame), "results-pruned")
            + figures.render(plots_results.effective_robustness(frame, id_test), "results-robustness"))


def _footer(ws) -> str:
    inputs = []
    for test in ws.dataset_names("test"):
        inputs += [f"{test}/{t} {ws.search_result(test, t).fingerprint}" for t in _searched(ws, test)]
    return ("Made with clipsim from the workspace's stored searches, manifests and results. Search fingerprints: "
            + (escape("; ".join(inputs)) or "none") + ".")


def build_report(ws, pairs: int = PAIRS, thumb: int = THUMB) -> str:
    """The report as one HTML string (self-contained, deterministic for the same workspace contents).

    Args:
        ws: the workspace.
        pairs: closest test/train pairs shown per test set and web set.
        thumb: thumbnail size in pixels.

    Returns:
        The HTML document.
    """
    figures = H.Figures()
    ref = ws.reference
    tests, trains = ws.dataset_names("test"), ws.dataset_names("train")
    sections = [("Datasets", _datasets(ws)), ("Similarity model", _model(ws)),
                ("Nearest-neighbour similarity", _similarity(ws, figures)),
                ("Closest test/train pairs", _pairs(ws, pairs, thumb)), ("Pruning manifests", _manifests(ws))]
    results = _results(ws, figures)
    if results is not None:
        sections.append(("Zero-shot results", results))
    subtitle = (f"{len(tests)} test sets ({escape(', '.join(tests))}) against {len(trains)} train sets "
                f"({escape(', '.join(trains))}); reference: {escape(ref or 'none')}.")
    return H.page(f"clipsim study · {ws.root.resolve().name}", subtitle, sections, _footer(ws))


def default_path(ws):
    """Where a report is stored inside the workspace: reports/report.html."""
    return ws.path("reports", "report.html")


def write_report(ws, out: str | Path | None = None, **options) -> Path:
    """Build the report and write it atomically.

    Args:
        ws: the workspace.
        out: file to write (default: reports/report.html in the workspace).
        **options: build_report options (pairs, thumb).

    Returns:
        The written path.

    Raises:
        ReadOnlyError: the workspace is served read-only and `out` lies inside it.
    """
    path = Path(out) if out is not None else default_path(ws)
    if read_only() and path.resolve().is_relative_to(ws.root.resolve()):
        raise ReadOnlyError(f"this workspace is served read-only (CLIPSIM_READ_ONLY=1); the report was not written "
                            f"to {path}; pass --out with a file outside the workspace")
    fileio.write_bytes(path, build_report(ws, **options).encode("utf-8"))
    return path


def report_job(ws, params: dict, ctx: JobContext) -> dict:
    """The "report" job kind. params: out (default reports/report.html), pairs, thumb.

    Returns:
        {"path", "bytes", "sha256"}.
    """
    ctx.progress(0, 1, "building the report")
    options = {k: int(params[k]) for k in ("pairs", "thumb") if k in params}
    path = write_report(ws, params.get("out"), **options)
    data = path.read_bytes()
    ctx.progress(1, 1, "report written")
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
