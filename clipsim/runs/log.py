"""Reading OpenCLIP's training log (`out.log` in a run folder): loss curve, epoch, step, samples/s and ETA.

open_clip_train writes lines like
`2026-11-29,01:31:42 | INFO | Train Epoch: 0 [ 2560/24064 (11%)] Data (t): 0.01 Batch (t): 3.69, 108.0/s,
108.0/s/gpu LR: 0.0002 Logit Scale: 14.28 Contrastive_loss: 5.19 (5.66) Loss: 5.19 (5.66)`; the numbers in
brackets are samples seen this epoch (all processes) and the epoch's sample count.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pandas as pd

from clipsim import fileio

CURVE_COLUMNS = ["time", "epoch", "step", "epoch_progress", "samples", "epoch_samples", "loss", "loss_avg",
                 "lr", "logit_scale", "samples_per_s", "batch_s", "data_s"]
_NUM = r"[-+\d.eE]+|nan|inf"
_LINE = re.compile(
    rf"^(?P<time>\d{{4}}-\d\d-\d\d,\d\d:\d\d:\d\d) \| \w+ \| Train Epoch: (?P<epoch>\d+) "
    rf"\[\s*(?P<samples>\d+)/(?P<epoch_samples>\d+) \(\s*\d+%\)\] Data \(t\): (?P<data_s>{_NUM}) "
    rf"Batch \(t\): (?P<batch_s>{_NUM}), (?P<samples_per_s>{_NUM})/s.*?LR: (?P<lr>{_NUM}) "
    rf"Logit Scale: (?P<logit_scale>{_NUM}).* Loss: (?P<loss>{_NUM}) \((?P<loss_avg>{_NUM})\)\s*$"
)
_TIME_FORMAT = "%Y-%m-%d,%H:%M:%S"


def parse_train_log(text: str, global_batch: int | None = None) -> pd.DataFrame:
    """The loss curve in an open_clip_train log.

    Args:
        text: the log's content.
        global_batch: samples per optimiser step over all processes (default: the first line's sample count,
            which the trainer logs after its first step).

    Returns:
        One row per logged step with CURVE_COLUMNS: time (Unix s), epoch (int, 0-based), step (global,
        1-based), epoch_progress (epochs done as a float), samples, epoch_samples, loss, loss_avg, lr,
        logit_scale, samples_per_s, batch_s, data_s.
    """
    rows = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            row = {k: float(v) for k, v in match.groupdict().items() if k != "time"}
            row["time"] = time.mktime(time.strptime(match["time"], _TIME_FORMAT))
            rows.append(row)
    frame = pd.DataFrame(rows, columns=[c for c in CURVE_COLUMNS if c != "step"] + ["step"])
    if frame.empty:
        return frame[CURVE_COLUMNS].astype({"epoch": "int64", "step": "int64"})
    for column in ("epoch", "samples", "epoch_samples"):
        frame[column] = frame[column].astype("int64")
    batch = int(global_batch or frame["samples"].iloc[0]) or 1
    per_epoch = (frame["epoch_samples"] + batch - 1) // batch
    frame["step"] = frame["epoch"] * per_epoch + frame["samples"] // batch
    frame["epoch_progress"] = frame["epoch"] + frame["samples"] / frame["epoch_samples"].clip(lower=1)
    return frame[CURVE_COLUMNS]


def summarise(curve: pd.DataFrame, epochs: int, now: float | None = None) -> dict:
    """Where a run stands from its curve: epoch, step, steps in all, latest loss, samples/s and ETA.

    Args:
        curve: parse_train_log output.
        epochs: epochs the run was launched for.
        now: the current time (default: time.time()); the ETA counts down from the last log line.

    Returns:
        {epoch (1-based, as shown), epochs, step, steps_total, epoch_progress, loss, loss_avg, samples_per_s,
        eta_s}; values are None before the first logged step.
    """
    out = {"epoch": None, "epochs": epochs, "step": None, "steps_total": None, "epoch_progress": 0.0,
           "loss": None, "loss_avg": None, "samples_per_s": None, "eta_s": None}
    if curve.empty:
        return out
    last = curve.iloc[-1]
    batch = int(curve["samples"].iloc[0]) or 1
    per_epoch = math.ceil(int(last["epoch_samples"]) / batch)
    out.update(epoch=int(last["epoch"]) + 1, step=int(last["step"]), steps_total=per_epoch * epochs,
               epoch_progress=float(last["epoch_progress"]), loss=float(last["loss"]),
               loss_avg=float(last["loss_avg"]), samples_per_s=float(last["samples_per_s"]))
    first = curve.iloc[0]
    done = float(last["epoch_progress"] - first["epoch_progress"])
    if done > 0 and last["time"] > first["time"]:
        per_epoch_s = (last["time"] - first["time"]) / done
        elapsed = max(0.0, (now or time.time()) - float(last["time"]))
        out["eta_s"] = float(max(0.0, per_epoch_s * (epochs - float(last["epoch_progress"])) - elapsed))
    return out


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints `checkpoints/epoch_<n>.pt`, oldest epoch first."""
    found = Path(run_dir, "checkpoints").glob("epoch_*.pt")
    numbered = [(int(p.stem.split("_")[1]), p) for p in found if p.stem.split("_")[1].isdigit()]
    return [p for _, p in sorted(numbered)]


def read_training_progress(run_dir: str | Path) -> dict:
    """Everything a page shows about a training run, read from its folder.

    Args:
        run_dir: the run folder (holds training.json, out.log, checkpoints/).

    Returns:
        summarise(...) fields plus state ('not started', 'training', 'done', 'failed', 'stopped'),
        manifest, preset, samples, checkpoint (newest, or None), log (out.log path) and curve (DataFrame).
    """
    run_dir = Path(run_dir)
    info_file = run_dir / "training.json"
    info = fileio.read_json(info_file) if info_file.exists() else {}
    log_file = run_dir / "out.log"
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    curve = parse_train_log(text, info.get("global_batch"))
    out = summarise(curve, int(info.get("preset", {}).get("epochs", 0) or 0))
    found = checkpoints(run_dir)
    out.update(state=info.get("state", "not started"), manifest=info.get("manifest"),
               preset=info.get("preset_name"), samples=info.get("samples"),
               checkpoint=str(found[-1]) if found else None, log=str(log_file), curve=curve)
    if out["state"] == "done":
        out["eta_s"] = 0.0
    return out
