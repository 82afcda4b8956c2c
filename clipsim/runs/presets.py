"""Training presets for OpenCLIP's trainer (`open_clip_train.main`) and the command lines they become.

A preset is a plain dict; a workspace overrides any field in `settings["presets"][name]` and a run in
`overrides`. `trainer_argv` turns one into `open_clip_train` arguments; `launch_command` wraps those in
`python -m clipsim.train_entry` (one process) or `torchrun --nproc_per_node N -m clipsim.train_entry`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from clipsim.errors import WorkspaceError

DEMO_CONFIG = Path(__file__).parents[1] / "data" / "demo" / "clipsim-demo.json"

PRESETS: dict[str, dict] = {
    # The demo: our tiny ModifiedResNet CLIP on CPU, about 2-3 minutes for 24,000 web images on 2 cores.
    "demo": {
        "model": "clipsim-demo",
        "model_config": str(DEMO_CONFIG),  # registered with open_clip.add_model_config in the trainer process
        "device": "cpu",
        "nproc": 1,
        "launcher": "python",
        "precision": "amp_bf16",  # bf16 autocast is fast on AVX-512 CPUs; 'amp' (fp16) is ~20x slower on CPU
        "batch_size": 256,  # per process; the demo similarity model trained well at 256
        "epochs": 4,  # 4 x 94 steps on 24,000 samples: with 2, sketch stayed near chance in both arms of the
        # gap-vs-random chain (paired interval [-0.054, +0.007]); with 4 it shows the effect ([-0.162, -0.091]) and
        # the 3-seed chain takes 13 min 46 s on 2 quiet cores (README, "The demo's effect, measured")
        "lr": 1e-3,  # the demo similarity model's rate; 2e-3 collapsed image features in trials
        "wd": 0.1,
        "warmup": 20,  # ~5% of the steps; open_clip's default of 10,000 would never leave warmup
        "workers": 1,  # one decoding process beside the training process on a 2-core machine
        "log_every_n_steps": 5,
        "seed": 0,
        "extra_args": ["--delete-previous-checkpoint"],  # keep the newest checkpoint only (147 MB each)
    },
    # The paper (Mayilvahanan et al. 2024): OpenCLIP ViT-B/32 from scratch, one node of 8 A100s.
    "paper": {
        "model": "ViT-B-32",  # PAPER.md: "OpenCLIP ViT/B-32 from scratch on each split"
        "model_config": None,
        "device": "cuda",
        "nproc": 8,  # PAPER.md: one node of 8 A100s
        "launcher": "torchrun",  # or the SLURM backend of clipsim.jobs, which runs the same torchrun line
        "precision": "amp",  # fp16 autocast on A100s (open_clip's default recipe)
        "batch_size": 4200,  # per GPU: global 33,600 (clip-ood README: "We change total batchsize to 33,600") / 8
        "epochs": 32,  # PAPER.md: 32 epochs
        "lr": 5e-4,  # OpenCLIP's LAION-400M ViT-B/32 recipe, which the paper follows (task brief; check the appendix)
        "wd": 0.2,  # open_clip_train's default weight decay, as in that recipe
        "warmup": 2000,  # steps, same recipe (task brief)
        "workers": 6,  # loader processes per GPU: 48 in all, so a split needs >= 48 shards
        "log_every_n_steps": 100,
        "seed": 0,
        "extra_args": ["--local-loss", "--gather-with-grad"],  # exact contrastive loss over the global batch
    },
}
_INT_FIELDS = ("nproc", "batch_size", "epochs", "warmup", "workers", "log_every_n_steps", "seed")


def preset_names(ws=None) -> list[str]:
    """Built-in preset names plus any the workspace adds in settings['presets']."""
    extra = list((ws.settings.get("presets") or {}) if ws is not None else {})
    return list(PRESETS) + [n for n in extra if n not in PRESETS]


def get_preset(ws, name: str, overrides: dict | None = None) -> dict:
    """A preset merged with the workspace's settings['presets'][name] and the run's overrides.

    Args:
        ws: Workspace or None (built-ins only).
        name: 'demo', 'paper' or a workspace-defined preset (which may set 'base' to inherit one).
        overrides: per-run changes, e.g. {'epochs': 1}.

    Returns:
        A new dict with every preset field.

    Raises:
        WorkspaceError: unknown preset, unknown field or a value of the wrong type.
    """
    saved = ((ws.settings.get("presets") or {}) if ws is not None else {}).get(name, {})
    base = saved.get("base", name if name in PRESETS else None)
    if base not in PRESETS:
        where = f" (workspace {ws.root}, settings.presets)" if ws is not None else ""
        raise WorkspaceError(f"unknown training preset {name!r}{where}; use one of {preset_names(ws)} or add it to "
                             "the workspace settings as {'presets': {NAME: {'base': 'demo', ...}}}")
    preset = dict(PRESETS[base])
    for source, values in (("workspace settings", saved), ("overrides", overrides or {})):
        for key, value in values.items():
            if key == "base":
                continue
            if key not in preset:
                raise WorkspaceError(f"preset field {key!r} in {source} of preset {name!r} is unknown; "
                                     f"known fields: {sorted(preset)}")
            preset[key] = _coerce(key, value, name)
    return preset


def _coerce(key: str, value, name: str):
    try:
        if key in _INT_FIELDS:
            return int(value)
        if key in ("lr", "wd"):
            return float(value)
    except (TypeError, ValueError) as err:
        raise WorkspaceError(f"preset {name!r}: {key}={value!r} is not a number; fix the override") from err
    return value


def trainer_argv(preset: dict, train_data: str, dataset_type: str, num_samples: int, logs: Path,
                 name: str, resume: bool = False) -> list[str]:
    """The `open_clip_train.main` arguments of one training run.

    Args:
        preset: a merged preset (get_preset).
        train_data: tar brace pattern (webdataset) or CSV file.
        dataset_type: 'webdataset' or 'csv' (CSV columns `filepath`, `title`, comma-separated).
        num_samples: training samples (sets --train-num-samples for webdataset).
        logs, name: out.log and checkpoints/ land in logs/name.
        resume: continue from the newest checkpoint in logs/name (after an interruption).

    Returns:
        Argument list for open_clip_train.main.main (without the program name).
    """
    argv = ["--model", preset["model"], "--train-data", str(train_data), "--dataset-type", dataset_type,
            "--logs", str(logs), "--name", name, "--device", preset["device"], "--precision", preset["precision"],
            "--batch-size", str(preset["batch_size"]), "--epochs", str(preset["epochs"]), "--lr", str(preset["lr"]),
            "--wd", str(preset["wd"]), "--warmup", str(preset["warmup"]), "--workers", str(preset["workers"]),
            "--log-every-n-steps", str(preset["log_every_n_steps"]), "--seed", str(preset["seed"]),
            "--save-frequency", "1", "--zeroshot-frequency", "0", "--report-to", ""]
    if dataset_type == "webdataset":
        argv += ["--train-num-samples", str(num_samples)]
    else:
        argv += ["--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "title"]
    if resume:
        argv += ["--resume", "latest"]
    return argv + [str(a) for a in preset.get("extra_args") or []]


def launch_command(preset: dict, argv: list[str], python: str | None = None) -> list[str]:
    """The full command that runs the trainer with `argv` as the preset says.

    Args:
        preset: merged preset; 'launcher' is 'python' (one process) or 'torchrun' (nproc processes).
        argv: trainer_argv(...) output.
        python: interpreter (default: this one).

    Returns:
        Command list: `python -m clipsim.train_entry [--model-config F] ARGV` or
        `torchrun --standalone --nproc_per_node N -m clipsim.train_entry ...`.
    """
    python = python or sys.executable
    torchrun = Path(python).with_name("torchrun")  # the venv's torchrun, so workers use the same interpreter
    ours = ["--model-config", preset["model_config"]] if preset.get("model_config") else []
    if preset["launcher"] == "torchrun":
        head = [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc_per_node",
                str(preset["nproc"]), "-m", "clipsim.runs.entry"]
    elif preset["launcher"] == "python":
        head = [python, "-m", "clipsim.runs.entry"]
    else:
        raise WorkspaceError(f"preset launcher {preset['launcher']!r} must be 'python' or 'torchrun'")
    return head + ours + list(argv)
