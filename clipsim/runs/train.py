"""Training CLIP on a manifest's kept web samples with OpenCLIP's own trainer, in a child process.

`train` materialises the training data (clipsim.train_data), writes `training.json` into the run folder, runs
`python -m clipsim.train_entry` (or torchrun) with the preset's `open_clip_train` arguments, follows its
`out.log` for progress, and stores the loss curve as `loss.parquet`. Checkpoints land in `<run>/checkpoints/`.
The job kind 'train' (`train_job`) is the same call; `read_training_progress` serves the pages.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from clipsim import fileio
from clipsim.errors import ClipsimError, WorkspaceError
from clipsim.names import check_writable
from clipsim.runs.data import FULL, TrainData, materialise
from clipsim.runs.log import checkpoints, parse_train_log, read_training_progress, summarise
from clipsim.runs.presets import get_preset, launch_command, trainer_argv

__all__ = ["control_name", "random_control", "read_training_progress", "resolve_checkpoint", "train", "train_job"]
log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
POLL_S = 2.0  # how often the trainer's log is read for progress
STOP_GRACE_S = 10.0  # SIGTERM first, SIGKILL after this
REPO_ROOT = Path(__file__).resolve().parents[2]


def random_control(ws, manifest: str, web: str | None = None, seed: int = 0) -> str:
    """Save (or reuse) manifest `<manifest>-random`: a seeded uniform random subset as large as `manifest`'s kept set,
    drawn from the samples its base manifest keeps when it has one (else from the whole web set).

    Returns:
        The control manifest's name.

    Raises:
        WorkspaceError: `manifest` is 'full' or unknown.
    """
    from clipsim import prune
    from clipsim.prune.manifest import save_rule
    from clipsim.prune.rules import RuleSpec

    if manifest == FULL:
        raise WorkspaceError("a random control needs a pruned manifest to match in size, not 'full'")
    base = prune.load_manifest(ws, manifest)
    name = control_name(manifest, seed)
    try:
        old = prune.load_manifest(ws, name)
        params = old.summary.get("params", {})
        if params.get("like") == manifest and old.kept_count == base.kept_count and not old.stale:
            return name
    except WorkspaceError:
        pass
    drawn_from = (base.summary.get("base") or {}).get("name")  # a manifest cut from a base: draw from the base too
    save_rule(ws, RuleSpec("random", like=manifest, seed=seed, web=web, base=drawn_from), name, overwrite=True)
    return name


def control_name(manifest: str, seed: int = 0) -> str:
    """The name of the random control manifest of `manifest`: '<manifest>-random' (seed 0) or '<manifest>-random<seed>'."""
    return f"{manifest}-random" + (f"{seed}" if seed else "")


def _manifest_info(ws, manifest: str, web: str) -> dict:
    """rule, control_of and web_samples of a manifest ('full': the whole web set)."""
    web_samples = ws.embeddings(web).count
    if manifest == FULL:
        return {"rule": "full", "control_of": None, "web_samples": web_samples}
    from clipsim.prune import load_manifest

    summary = load_manifest(ws, manifest).summary
    like = summary.get("params", {}).get("like") if summary.get("rule") == "random" else None
    return {"rule": summary.get("rule"), "control_of": like, "web_samples": int(summary.get("n", web_samples))}


def _fit_workers(preset: dict, data: TrainData) -> dict:
    """open_clip_train needs at least workers x processes tar shards: lower the workers when there are fewer."""
    if data.dataset_type != "webdataset":
        return preset
    shards = len(data.config["shards"])
    if shards < preset["nproc"]:
        raise WorkspaceError(f"the training data in {data.folder} has {shards} tar shards but the preset runs "
                             f"{preset['nproc']} processes; each needs at least one: use fewer processes (nproc)")
    workers = max(1, min(preset["workers"], shards // preset["nproc"]))
    if workers != preset["workers"]:
        log.warning("%d shards: data loader workers lowered from %d to %d", shards, preset["workers"], workers)
    return {**preset, "workers": workers}


def _start_run(ws, run_dir: Path, manifest: str, web: str, preset_name: str, preset: dict, data: TrainData,
               control_of: str | None) -> tuple[list[str], dict]:
    """Write training.json (state 'training') and return the trainer command."""
    resume = (run_dir / "out.log").exists()
    argv = trainer_argv(preset, data.train_data, data.dataset_type, data.samples, run_dir.parent, run_dir.name,
                        resume=resume)
    info = {"run": run_dir.name, "manifest": manifest, "web": web, "preset_name": preset_name, "preset": preset,
            "samples": data.samples, "skipped": data.skipped, "train_data": data.train_data,
            "dataset_type": data.dataset_type, "global_batch": preset["batch_size"] * preset["nproc"],
            "model": preset["model_config"] or preset["model"], **_manifest_info(ws, manifest, web),
            "state": "training", "started": time.time(), "resumed": resume}
    if control_of:
        info["control_of"] = control_of
    command = launch_command(preset, argv)
    info["command"] = command
    fileio.write_json(run_dir / "training.json", info)
    return command, info


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _report(run_dir: Path, info: dict, progress: Progress | None) -> dict:
    state = read_training_progress(run_dir)
    if progress is not None and state["steps_total"]:
        progress(state["step"], state["steps_total"],
                 f"train {info['manifest']}: epoch {state['epoch']}/{state['epochs']}, loss {state['loss']:.3f}, "
                 f"{state['samples_per_s']:.0f} samples/s")
    return state


def _run_trainer(command: list[str], run_dir: Path, info: dict, progress: Progress | None,
                 check_cancelled: Callable[[], None] | None) -> int:
    """Run the trainer to its end, reporting progress; stops it when cancelled (or on any exception)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with open(run_dir / "trainer.log", "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=run_dir)
    log.info("trainer started (pid %d): %s", proc.pid, " ".join(command))
    info["trainer_pid"] = proc.pid
    fileio.write_json(run_dir / "training.json", info)
    try:
        while proc.poll() is None:
            time.sleep(POLL_S)
            _report(run_dir, info, progress)
            if check_cancelled is not None:
                check_cancelled()
    finally:
        if proc.poll() is None:
            log.warning("stopping trainer pid %d", proc.pid)
            _stop(proc)
    return proc.returncode


def _finish(run_dir: Path, info: dict, code: int) -> dict:
    """Record the outcome in training.json and the loss curve in loss.parquet; raise on failure."""
    curve = parse_train_log((run_dir / "out.log").read_text(errors="replace") if (run_dir / "out.log").exists()
                            else "", info["global_batch"])
    fileio.write_parquet(run_dir / "loss.parquet", curve)
    found = checkpoints(run_dir)
    ok = code == 0 and found and found[-1].stem == f"epoch_{info['preset']['epochs']}"
    info.update(state="done" if ok else "failed", finished=time.time(), exit_code=code,
                seconds=round(time.time() - info["started"], 1), checkpoint=str(found[-1]) if found else None,
                epoch=int(found[-1].stem.split("_")[1]) if found else 0,
                final=summarise(curve, info["preset"]["epochs"]) | {"eta_s": 0.0})
    fileio.write_json(run_dir / "training.json", info)
    if not ok:
        tail = (run_dir / "trainer.log").read_text(errors="replace").splitlines()[-25:]
        raise ClipsimError(f"training run {run_dir} failed (exit code {code}, checkpoints: {[p.name for p in found]}); "
                           f"see {run_dir / 'trainer.log'} and out.log. Last lines:\n" + "\n".join(tail))
    return info


def train(ws, manifest: str = FULL, web: str | None = None, preset: str = "demo", overrides: dict | None = None,
          run_dir: str | Path | None = None, control: str | None = None, seed: int = 0,
          progress: Progress | None = None, check_cancelled: Callable[[], None] | None = None) -> dict:
    """Train CLIP from scratch on a manifest's kept samples with open_clip_train.

    Args:
        ws: the workspace.
        manifest: manifest name or 'full' (every sample of `web`).
        web: the web train set (default: ws.web_set()).
        preset: 'demo', 'paper' or a workspace preset (clipsim.presets).
        overrides: per-run preset changes, e.g. {'epochs': 1}.
        run_dir: the run folder (default: runs/train-<time>); its name is the run id.
        control: 'random' trains on a random subset as large as `manifest` instead (see random_control).
        seed: seed of that random control.
        progress: progress(step, steps_total, message) or None.
        check_cancelled: called every poll; raising stops the trainer (the job system's ctx.check_cancelled).

    Returns:
        The run's training.json content (run, manifest, preset, samples, checkpoint, seconds, final loss, ...).

    Raises:
        WorkspaceError: unknown manifest, preset or web set. ClipsimError: the trainer failed (log tail included).
        ReadOnlyError: the workspace is served read-only (nothing is written).
    """
    check_writable(f"train on manifest {manifest!r}")
    control_of, web = None, ws.web_set(web)
    if control == "random":
        control_of, manifest = manifest, random_control(ws, manifest, web, seed)
    elif control:
        raise WorkspaceError(f"control {control!r} is not known; use 'random' or none")
    merged = get_preset(ws, preset, overrides)
    run_dir = Path(run_dir) if run_dir else ws.path("runs", time.strftime("train-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    data = materialise(ws, manifest, web, progress=progress)
    merged = _fit_workers(merged, data)
    command, info = _start_run(ws, run_dir, manifest, web, preset, merged, data, control_of)
    try:
        code = _run_trainer(command, run_dir, info, progress, check_cancelled)
    except BaseException:  # cancelled (the job system's JobCancelled) or interrupted: the trainer is stopped
        info.update(state="stopped", finished=time.time())
        fileio.write_json(run_dir / "training.json", info)
        raise
    return _finish(run_dir, info, code)


def train_job(ws, params: dict, ctx) -> dict:
    """Job kind 'train'. params: manifest ('full' or a name), web (default ws.web_set()), preset ('demo'), overrides ({}),
    control (None | 'random'), seed (0).

    Returns:
        {"run", "manifest", "samples", "checkpoint", "seconds", "loss"}.
    """
    info = train(ws, params.get("manifest", FULL), params.get("web"), params.get("preset", "demo"),
                 params.get("overrides"), run_dir=ctx.run_dir, control=params.get("control"),
                 seed=int(params.get("seed", 0)), progress=ctx.progress, check_cancelled=ctx.check_cancelled)
    return {"run": info["run"], "manifest": info["manifest"], "samples": info["samples"],
            "checkpoint": info["checkpoint"], "seconds": info["seconds"], "loss": info["final"]["loss"]}


def resolve_checkpoint(ws, run: str | Path, model: str | None = None) -> dict:
    """What evaluation needs about a run: its newest checkpoint, model and training data.

    Args:
        ws: the workspace.
        run: a run id (folder `runs/<id>`), a run folder, or a checkpoint file.
        model: architecture or JSON config (required for a checkpoint outside a run folder).

    Returns:
        {run, checkpoint, model, epoch, manifest, preset, rule, control_of, web, train_samples, web_samples, seed}
        (seed: the training seed, None when unknown).

    Raises:
        WorkspaceError: no such run, no checkpoint yet, or a bare checkpoint without a model.
    """
    path = Path(run)
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") and not path.is_file():
        raise WorkspaceError(f"checkpoint file {path} does not exist; pass an existing checkpoint or a run id")
    if path.is_file():
        run_dir, checkpoint = path.parent.parent, path
    else:
        run_dir = path if path.is_dir() else ws.path("runs", str(run))
        found = checkpoints(run_dir)
        if not found:
            raise WorkspaceError(f"run {run!r} ({run_dir}) has no checkpoint (checkpoints/epoch_<n>.pt); train it "
                                 f"first: `python -m clipsim train --workspace {ws.root} --manifest NAME`")
        checkpoint = found[-1]
    info_file = run_dir / "training.json"
    info = fileio.read_json(info_file) if info_file.exists() else {}
    model = model or info.get("model")
    if not model:
        raise WorkspaceError(f"checkpoint {checkpoint} has no training.json beside it naming its model; pass "
                             "model= (an open_clip architecture or JSON config)")
    epoch = checkpoint.stem.split("_")[-1]
    return {"run": info.get("run", run_dir.name if info else checkpoint.stem), "checkpoint": str(checkpoint),
            "model": model, "epoch": int(epoch) if epoch.isdigit() else 0, "manifest": info.get("manifest"),
            "preset": info.get("preset_name"), "rule": info.get("rule"), "control_of": info.get("control_of"),
            "web": info.get("web"), "train_samples": info.get("samples"), "web_samples": info.get("web_samples"),
            "seed": (info.get("preset") or {}).get("seed")}
