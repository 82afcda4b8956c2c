"""The workspace's zero-shot results table: one row per (training run, checkpoint, test set).

Stored as `results/results.parquet`, rewritten atomically under an exclusive lock (`results/.lock`), so
evaluation jobs finishing together never lose each other's rows; a re-evaluation replaces its old rows.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import ReadOnlyError
from clipsim.names import read_only

RESULTS_FILE = ("results", "results.parquet")
KEY = ["run", "checkpoint", "test"]
RESULT_COLUMNS = ["run", "manifest", "preset", "rule", "control_of", "web", "train_samples", "web_samples",
                  "pruned_fraction", "test", "accuracy", "ci_low", "ci_high", "correct", "n", "unlabelled", "classes",
                  "templates", "seed", "epoch", "checkpoint", "created"]
_DTYPES = {"train_samples": "int64", "web_samples": "int64", "pruned_fraction": "float64", "accuracy": "float64",
           "ci_low": "float64", "ci_high": "float64", "correct": "int64", "n": "int64", "unlabelled": "int64",
           "classes": "int64", "seed": "int64", "epoch": "int64"}
_MISSING = {"seed": -1}  # rows stored before a column existed: seed unknown (-1), intervals NaN


def result_row(info: dict, score: dict, templates: str) -> dict:
    """One results row from a run's description (train.resolve_checkpoint) and a zero_shot score.

    The accuracy's 95% interval is a bootstrap over the test images (clipsim.runs.stats) when the score carries
    its per-image `predictions`; otherwise, or without `correct` per image, it is the NaN "unknown".

    Returns:
        A dict with RESULT_COLUMNS.
    """
    from clipsim.runs.stats import bootstrap_interval

    web_samples, kept = info.get("web_samples") or 0, info.get("train_samples") or 0
    per_image = score.get("predictions")
    interval = bootstrap_interval(per_image["correct"]) if per_image is not None and len(per_image) else None
    seed = info.get("seed")
    return {
        "run": info["run"], "manifest": info.get("manifest") or "", "preset": info.get("preset") or "",
        "rule": info.get("rule") or "", "control_of": info.get("control_of") or "", "web": info.get("web") or "",
        "train_samples": int(kept), "web_samples": int(web_samples),
        "pruned_fraction": 1.0 - kept / web_samples if web_samples else float("nan"),
        "test": score["test"], "accuracy": float(score["accuracy"]),
        "ci_low": interval.low if interval else float("nan"), "ci_high": interval.high if interval else float("nan"),
        "correct": int(score["correct"]), "n": int(score["n"]), "unlabelled": int(score.get("unlabelled", 0)),
        "classes": int(score.get("classes", 0)), "templates": templates, "seed": -1 if seed is None else int(seed),
        "epoch": int(info.get("epoch") or 0), "checkpoint": str(info["checkpoint"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "object")) for c in RESULT_COLUMNS})


def _path(ws) -> Path:
    return ws.path(*RESULTS_FILE)


def results_frame(ws) -> pd.DataFrame:
    """All stored result rows (RESULT_COLUMNS), sorted by run, then test set in registry order (unregistered ones
    last, by name); empty when nothing was evaluated."""
    path = _path(ws)
    if not path.exists():
        return _empty()
    frame = pd.read_parquet(path)
    for column in RESULT_COLUMNS:
        if column not in frame:
            frame[column] = _MISSING.get(column, np.nan if _DTYPES.get(column, "").startswith(("float", "int"))
                                         else None)
    frame = frame.astype({c: "float64" for c in ("ci_low", "ci_high")} | {"seed": "int64"})
    order = {t: i for i, t in enumerate(ws.dataset_names("test"))}
    rank = frame["test"].map(order).fillna(len(order))
    frame = frame[RESULT_COLUMNS].assign(_rank=rank).sort_values(["run", "_rank", "test"], kind="stable")
    return frame.drop(columns="_rank").reset_index(drop=True)


def add_results(ws, rows: pd.DataFrame | list[dict]) -> pd.DataFrame:
    """Insert result rows, replacing stored rows with the same (run, checkpoint, test).

    Args:
        ws: the workspace.
        rows: a DataFrame or dicts with RESULT_COLUMNS (see result_row).

    Returns:
        The whole table afterwards.

    Raises:
        ReadOnlyError: the workspace is served read-only.
        ValueError: rows lack columns.
    """
    if read_only():
        raise ReadOnlyError("this workspace is served read-only (CLIPSIM_READ_ONLY=1); results were not stored")
    new = pd.DataFrame(rows)
    for column, default in (("ci_low", np.nan), ("ci_high", np.nan), ("seed", -1)):  # optional: unknown
        if column not in new:
            new[column] = default
    missing = [c for c in RESULT_COLUMNS if c not in new]
    if missing:
        raise ValueError(f"result rows lack columns {missing}; build them with clipsim.results.result_row")
    new = new[RESULT_COLUMNS].astype(_DTYPES)
    with fileio.locked(_path(ws).parent / ".lock"):
        old = results_frame(ws)
        keep = ~old.set_index(KEY).index.isin(new.set_index(KEY).index)
        parts = [f for f in (old[keep], new) if len(f)]
        table = pd.concat(parts, ignore_index=True) if parts else _empty()
        fileio.write_parquet(_path(ws), table)
    return results_frame(ws)


def model_label(frame: pd.DataFrame) -> pd.Series:
    """A short label per row for plots: 'full web', the manifest name, or '<manifest> (random control)'.

    Runs of one model that differ only in their training seed share the label (they are replicates); the preset
    is added when the rows hold more than one; the same model and seed trained twice gets its run id appended.
    """
    manifest = frame["manifest"].fillna("").astype(str)
    label = np.where(manifest.isin(["", "full"]), "full web", manifest)
    control = frame["control_of"].fillna("").astype(str)
    label = pd.Series(np.where(control != "", control + " (random control)", label), index=frame.index)
    presets = frame["preset"].fillna("").astype(str)
    if presets.nunique() > 1:
        label = label + " [" + presets + "]"
    seed = frame["seed"] if "seed" in frame else pd.Series(-1, index=frame.index)
    twice = frame.assign(seed=seed).duplicated(["manifest", "control_of", "preset", "seed", "test"], keep=False)
    return label + np.where(twice, " · " + frame["run"], "")


SUMMARY_COLUMNS = ["model", "test", "accuracy", "sd", "ci_low", "ci_high", "n_seeds", "seeds", "runs", "chance",
                   "n", "train_samples", "pruned_fraction", "manifest", "control_of", "rule", "preset"]


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per model and test set across training seeds (newest checkpoint of each run).

    Returns:
        SUMMARY_COLUMNS: accuracy is the mean over seeds, sd their standard deviation (NaN for one seed), seeds
        and runs comma-joined, chance = 1 / scored classes; ci_low/ci_high are the run's bootstrap interval for
        one seed and NaN for several (clipsim.runs.compare.arm_intervals fills them from the predictions).
    """
    latest = latest_per_run(frame)
    if latest.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    latest = latest.assign(model=model_label(latest))
    groups = latest.groupby(["model", "test"], sort=False)
    out = groups.agg(accuracy=("accuracy", "mean"), sd=("accuracy", "std"), n_seeds=("run", "size"),
                     seeds=("seed", lambda v: ",".join(str(int(x)) for x in v)), runs=("run", ",".join),
                     classes=("classes", "first"), n=("n", "first"), train_samples=("train_samples", "mean"),
                     pruned_fraction=("pruned_fraction", "mean"), manifest=("manifest", "first"),
                     control_of=("control_of", "first"), rule=("rule", "first"), preset=("preset", "first"),
                     ci_low=("ci_low", "first"), ci_high=("ci_high", "first")).reset_index()
    several = out["n_seeds"] > 1
    out.loc[several, ["ci_low", "ci_high"]] = np.nan
    out["chance"] = np.where(out["classes"] > 0, 1.0 / out["classes"].clip(lower=1), np.nan)
    return out[SUMMARY_COLUMNS]


def latest_per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep each run's newest checkpoint only (highest epoch, then newest row) per test set, in the frame's order."""
    if frame.empty:
        return frame
    ordered = frame.sort_values(["epoch", "created"], kind="stable")
    return ordered.drop_duplicates(["run", "test"], keep="last").sort_index().reset_index(drop=True)  # frame order
