"""Per-image zero-shot predictions: `results/predictions/<run>/<test>.parquet` (run, test, key, label, prediction,
correct, epoch, checkpoint), one file per run and test set, each written atomically by evaluation before its
result row, and replaced when the run is evaluated again.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import ReadOnlyError, WorkspaceError
from clipsim.names import read_only

PREDICTIONS = ("results", "predictions")
COLUMNS = ["run", "test", "key", "label", "prediction", "correct", "epoch", "checkpoint"]


def predictions_path(ws, run: str, test: str) -> Path:
    """Where the predictions of `run` on `test` live."""
    return ws.path(*PREDICTIONS, str(run), f"{test}.parquet")


def write_predictions(ws, info: dict, test: str, per_image: pd.DataFrame) -> Path:
    """Store one run's per-image predictions on one test set (atomic; replaces an older evaluation's file).

    Args:
        ws: the workspace.
        info: the run's description (clipsim.runs.train.resolve_checkpoint): run, epoch, checkpoint.
        test: test set name.
        per_image: key, label, prediction, correct per labelled image (clipsim.runs.evaluate.zero_shot).

    Returns:
        The parquet file written.

    Raises:
        ReadOnlyError: the workspace is served read-only.
    """
    if read_only():
        raise ReadOnlyError("this workspace is served read-only (CLIPSIM_READ_ONLY=1); predictions were not stored")
    frame = pd.DataFrame({"run": str(info["run"]), "test": test, "key": per_image["key"].astype(str),
                          "label": per_image["label"].astype(np.int64),
                          "prediction": per_image["prediction"].astype(np.int64),
                          "correct": per_image["correct"].astype(bool), "epoch": int(info.get("epoch") or 0),
                          "checkpoint": str(info["checkpoint"])}, columns=COLUMNS)
    path = predictions_path(ws, info["run"], test)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write_parquet(path, frame)
    return path


def load_predictions(ws, run: str, test: str, required: bool = True) -> pd.DataFrame | None:
    """The stored predictions of `run` on `test` (COLUMNS), or None when absent and not required.

    Raises:
        WorkspaceError: absent and required (the message names the command that makes them).
    """
    path = predictions_path(ws, run, test)
    if not path.exists():
        if not required:
            return None
        raise WorkspaceError(f"run {run!r} has no per-image predictions on {test!r} ({path}); evaluate it again: "
                             f"`python -m clipsim evaluate --workspace {ws.root} --run {run} --wait`")
    return pd.read_parquet(path)


def correctness_matrix(ws, runs: list[str], test: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """0/1 correctness of several runs on the test images they were all scored on.

    Args:
        ws: the workspace.
        runs: run ids (e.g. the seeds of one model).
        test: test set name.

    Returns:
        (keys (n,) object, correct (n, len(found)) float64, found runs); runs without predictions are left out.
    """
    frames = {r: f for r in runs if (f := load_predictions(ws, r, test, required=False)) is not None}
    if not frames:
        return np.zeros(0, object), np.zeros((0, 0)), []
    keys = None
    for frame in frames.values():
        keys = frame["key"] if keys is None else keys[keys.isin(frame["key"])]
    keys = keys.sort_values(kind="stable").to_numpy()
    columns = [f.set_index("key")["correct"].reindex(keys).to_numpy(np.float64) for f in frames.values()]
    return keys, np.stack(columns, axis=1), list(frames)
