"""Training: OpenCLIP's real trainer on a tiny webdataset, materialised manifests, presets, log parsing, train()."""
from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsim import prune
from clipsim.data.sources import read_image_bytes
from clipsim.errors import WorkspaceError
from clipsim.runs.data import materialise
from clipsim.runs.log import parse_train_log, summarise
from clipsim.runs.presets import get_preset, launch_command, trainer_argv
from clipsim.runs.train import random_control, read_training_progress, resolve_checkpoint, train
from clipsim.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def tiny_preset(config: Path, **changes) -> dict:
    """The demo preset pointed at the conftest's tiny ViT, small enough to train in seconds."""
    return get_preset(None, "demo", {"model": config.stem, "model_config": str(config), "batch_size": 8,
                                     "epochs": 1, "warmup": 1, "log_every_n_steps": 1, **changes})


def write_tiny_wds(folder: Path, draw, shards: int = 2, per_shard: int = 16) -> None:
    """Webdataset tars of drawn 32x32 JPEGs with captions, plus sizes.json."""
    folder.mkdir(parents=True)
    sizes = {}
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                draw(s * 100 + i, (32, 32)).save(buf, format="JPEG")
                for name, data in ((f"{s:02d}{i:04d}.jpg", buf.getvalue()), (f"{s:02d}{i:04d}.txt", b"a shape")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        sizes[f"{s:05d}.tar"] = per_shard
    (folder / "sizes.json").write_text(json.dumps(sizes))


def test_open_clip_trainer_runs_on_a_tiny_webdataset(tmp_path, tiny_model_config, draw):
    data = tmp_path / "wds"
    write_tiny_wds(data, draw)
    preset = tiny_preset(tiny_model_config)
    argv = trainer_argv(preset, str(data / "{00000..00001}.tar"), "webdataset", 32, tmp_path / "logs", "run")
    done = subprocess.run(launch_command(preset, argv), check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "logs" / "run"
    assert (run / "checkpoints" / "epoch_1.pt").is_file()
    curve = parse_train_log((run / "out.log").read_text())
    assert list(curve["step"]) == [1, 2, 3, 4]  # 32 samples / batch 8, every step logged
    assert (curve["epoch"] == 0).all() and curve["epoch_progress"].iloc[-1] == 1.0
    assert np.isfinite(curve["loss"]).all() and (curve["samples_per_s"] > 0).all()
    assert "model: clipsim-test-tiny" in (run / "params.txt").read_text()  # our config, registered by train_entry


def test_parse_train_log_and_summary():
    lines = [f"2026-11-29,01:3{m}:00 | INFO | Train Epoch: {e} [ {s:5d}/2048 ({100 * s // 2048}%)] Data (t): 0.010 "
             f"Batch (t): 0.500, 512.0/s, 512.0/s/gpu LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: {l} ({l}) "
             f"Loss: {l} ({l})" for m, (e, s, l) in enumerate([(0, 256, 6.0), (0, 2048, 5.0), (1, 1024, 4.5)])]
    text = "\n".join(["2026-11-29,01:29:00 | INFO | Start epoch 0", *lines, "garbage"])
    curve = parse_train_log(text)
    assert list(curve["step"]) == [1, 8, 12] and list(curve["epoch"]) == [0, 0, 1]
    assert list(curve["loss"]) == [6.0, 5.0, 4.5] and curve["epoch_progress"].tolist() == [0.125, 1.0, 1.5]
    state = summarise(curve, epochs=2, now=curve["time"].iloc[-1])
    assert state["steps_total"] == 16 and state["epoch"] == 2 and state["step"] == 12
    # 1.375 epochs took 120 s, so the remaining 0.5 epoch takes 120 / 1.375 * 0.5 s
    assert math.isclose(state["eta_s"], 120 / 1.375 * 0.5)
    assert parse_train_log("nothing here").empty


def test_paper_preset_builds_the_torchrun_command():
    preset = get_preset(None, "paper")
    argv = trainer_argv(preset, "/data/laion/{00000..41407}.tar", "webdataset", 200_000_000, Path("/runs"), "r1")
    cmd = launch_command(preset, argv, python="/venv/bin/python")
    assert Path(cmd[0]).name == "torchrun" and cmd[cmd.index("--nproc_per_node") + 1] == "8"
    assert cmd[cmd.index("-m") + 1] == "clipsim.runs.entry" and "--model-config" not in cmd
    opt = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert opt["--model"] == "ViT-B-32" and opt["--epochs"] == "32" and opt["--batch-size"] == "4200"
    assert int(opt["--batch-size"]) * int(cmd[cmd.index("--nproc_per_node") + 1]) == 33_600
    assert float(opt["--lr"]) == 5e-4 and opt["--warmup"] == "2000" and opt["--device"] == "cuda"
    assert opt["--train-num-samples"] == "200000000" and opt["--dataset-type"] == "webdataset"
    demo = launch_command(get_preset(None, "demo"), ["--x"], python="/venv/bin/python")
    assert demo[:3] == ["/venv/bin/python", "-m", "clipsim.runs.entry"]
    assert demo[demo.index("--model-config") + 1].endswith("clipsim/data/demo/clipsim-demo.json")
    demo_argv = trainer_argv(get_preset(None, "demo"), "x.csv", "csv", 10, Path("/r"), "n")
    assert demo_argv[demo_argv.index("--precision") + 1] in ("amp_bf16", "fp32")
    assert int(demo_argv[demo_argv.index("--warmup") + 1]) < 100 and "--csv-separator" in demo_argv


def test_presets_take_workspace_settings_and_overrides(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    ws.update_settings(presets={"demo": {"epochs": 5}, "mine": {"base": "paper", "nproc": 4}})
    assert get_preset(ws, "demo")["epochs"] == 5
    assert get_preset(ws, "demo", {"epochs": "7"})["epochs"] == 7
    mine = get_preset(ws, "mine")
    assert mine["nproc"] == 4 and mine["model"] == "ViT-B-32"
    with pytest.raises(WorkspaceError, match="unknown training preset 'nope'"):
        get_preset(ws, "nope")
    with pytest.raises(WorkspaceError, match="'epochz'"):
        get_preset(ws, "demo", {"epochz": 1})


@pytest.fixture(scope="module")
def ws_copy(demo_ws, tmp_path_factory):
    """A private copy of the small demo workspace (mtimes kept, so fingerprints still match)."""
    root = tmp_path_factory.mktemp("train") / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("manifests", "runs", "train_data", "results"))
    return Workspace.open(root)


def save_random_manifest(ws, name: str, keep: int, seed: int):
    stats = prune.PruneStats.load(ws, "web", [])
    return prune.save_manifest(ws, name, "random", {"keep": keep, "seed": seed}, stats,
                               prune.rule_random(stats.n, keep, seed), overwrite=True)


def tar_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def test_materialised_tars_hold_exactly_the_kept_samples(ws_copy):
    manifest = save_random_manifest(ws_copy, "half", 1500, seed=3)
    data = materialise(ws_copy, "half", "web")
    samples = tar_samples(data.folder)
    kept = set(manifest.kept_keys())
    assert set(samples) == kept and data.samples == len(kept) == 1500 and data.dataset_type == "webdataset"
    sizes = json.loads((data.folder / "sizes.json").read_text())
    assert sum(sizes.values()) == 1500 and data.train_data.endswith("}.tar")
    meta = ws_copy.embeddings("web").metadata(["key", "caption", "path", "offset", "size"]).set_index("key")
    for key in sorted(kept)[:20]:
        row = meta.loc[key]
        assert samples[key]["jpg"] == read_image_bytes((row["path"], int(row["offset"]), int(row["size"])))
        assert samples[key]["txt"].decode() == row["caption"]
    stamp = {p.name: p.stat().st_mtime_ns for p in data.folder.glob("*.tar")}
    again = materialise(ws_copy, "half", "web")  # reused, not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in again.folder.glob("*.tar")} == stamp
    other = save_random_manifest(ws_copy, "half", 1000, seed=4)  # same name, other keys: rebuilt
    assert set(tar_samples(materialise(ws_copy, "half", "web").folder)) == set(other.kept_keys())


def test_image_folders_become_a_csv(ws_copy):
    data = materialise(ws_copy, "full", "curated")
    frame = pd.read_csv(data.train_data)
    assert data.dataset_type == "csv" and list(frame.columns) == ["filepath", "title"]
    assert len(frame) == ws_copy.embeddings("curated").count == data.samples
    classes = ws_copy.dataset("curated").classes
    meta = ws_copy.embeddings("curated").metadata(["path", "label"]).set_index("path")
    first = frame.iloc[0]
    assert first["title"] == f"a photo of a {classes[int(meta.loc[first['filepath'], 'label'])]}"


def test_random_control_matches_the_manifest_size(ws_copy):
    base = save_random_manifest(ws_copy, "base", 700, seed=1)
    name = random_control(ws_copy, "base", "web")
    control = prune.load_manifest(ws_copy, name)
    assert control.kept_count == base.kept_count == 700 and control.rule == "random"
    assert control.summary["params"]["like"] == "base"
    assert random_control(ws_copy, "base", "web") == name  # reused
    with pytest.raises(WorkspaceError, match="not 'full'"):
        random_control(ws_copy, "full")


def test_train_runs_the_trainer_on_a_manifest(ws_copy, tiny_model_config):
    save_random_manifest(ws_copy, "small", 256, seed=2)
    ws_copy.update_settings(presets={"tiny": {"base": "demo", "model": tiny_model_config.stem, "epochs": 1,
                                              "model_config": str(tiny_model_config), "batch_size": 64, "warmup": 1,
                                              "log_every_n_steps": 1}})
    seen = []
    info = train(ws_copy, "small", preset="tiny", run_dir=ws_copy.path("runs", "t1"),
                 progress=lambda d, t, m: seen.append((d, t, m)))
    run = ws_copy.path("runs", "t1")
    assert info["state"] == "done" and info["samples"] == 256 and info["rule"] == "random"
    assert Path(info["checkpoint"]) == run / "checkpoints" / "epoch_1.pt"
    loss = pd.read_parquet(run / "loss.parquet")
    assert list(loss["step"]) == [1, 2, 3, 4] and loss["loss"].notna().all()
    state = read_training_progress(run)
    assert state["state"] == "done" and state["step"] == state["steps_total"] == 4 and state["eta_s"] == 0.0
    assert any("materialise" in m for _, _, m in seen)
    resolved = resolve_checkpoint(ws_copy, "t1")
    assert resolved["model"] == str(tiny_model_config) and resolved["epoch"] == 1
    assert resolved["train_samples"] == 256 and resolved["web_samples"] == ws_copy.embeddings("web").count


def test_cancelling_a_train_job_stops_the_trainer(ws_copy, tiny_model_config):
    from clipsim.jobs import cancel, get_job, launch

    ws_copy.update_settings(presets={"long": {"base": "demo", "model": tiny_model_config.stem, "epochs": 500,
                                              "model_config": str(tiny_model_config), "batch_size": 64, "warmup": 1,
                                              "log_every_n_steps": 1}})
    job = launch(ws_copy, "train", {"manifest": "full", "preset": "long"})
    run = job.run_dir
    deadline = time.time() + 120
    while time.time() < deadline and not (read_training_progress(run)["step"] or 0) > 0:
        assert get_job(ws_copy, job.id).state in ("queued", "running"), get_job(ws_copy, job.id).error
        time.sleep(0.2)
    info = json.loads((run / "training.json").read_text())
    assert info["state"] == "training"
    pid = info["trainer_pid"]
    assert Path(f"/proc/{pid}").exists()
    assert cancel(ws_copy, job.id, grace=5.0).state == "cancelled"
    deadline = time.time() + 30
    while time.time() < deadline and Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid):
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid)
    assert json.loads((run / "training.json").read_text())["state"] == "stopped"


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


@pytest.mark.slow
def test_demo_training_beats_chance(ws_copy):
    """The demo preset on the small demo's 3,000 web images, then zero-shot on val (12 classes: chance 8.3%)."""
    from clipsim.runs.evaluate import evaluate

    info = train(ws_copy, "full", preset="demo", overrides={"epochs": 8, "batch_size": 128},
                 run_dir=ws_copy.path("runs", "demo-full"))
    frame = evaluate(ws_copy, "demo-full", tests=["val"], record=False)
    assert info["state"] == "done" and frame["n"].iloc[0] == 96
    # chance is 1/12 = 0.083 with a binomial sd of 0.028 on 96 images: 0.17 is 3 sd above it
    assert frame["accuracy"].iloc[0] >= 0.17, frame
