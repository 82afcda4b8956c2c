"""Trainer process: `python -m clipsim.train_entry [--model-config F.json ...] OPEN_CLIP_TRAIN_ARGS`.

Registers our own model configs (the demo's `clipsim-demo`) with open_clip, forbids hub downloads, then hands
the remaining arguments to `open_clip_train.main.main`, so OpenCLIP's logging and distributed set-up live in
their own process (also under torchrun, where every rank runs this module). It dies with its parent (the job
worker, or torchrun), so a killed worker never leaves a trainer running.
"""
from __future__ import annotations

import argparse
import sys


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate our `--model-config PATH` options from the trainer's arguments.

    Returns:
        (model config paths, remaining arguments for open_clip_train).
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # else "--model" would match
    parser.add_argument("--model-config", action="append", default=[])
    ours, rest = parser.parse_known_args(argv)
    return ours.model_config, rest


def seed_sample_shuffle() -> None:
    """Make webdataset's sample shuffle follow the run's seed.

    open_clip_train shuffles samples with `wds.shuffle`, whose generator webdataset seeds from the process id and
    the clock, so two runs with the same --seed saw different batches (measured: first-step losses 6.0328 and
    6.0707 on the small demo). Seeding it from Python's `random` instead, which PyTorch's DataLoader seeds in every
    worker from the run's seeded torch generator, makes the order a function of --seed.
    """
    import random

    import webdataset
    from webdataset import filters

    original = filters._shuffle

    def seeded(data, bufsize=1000, initial=100, rng=None, handler=None):
        return original(data, bufsize, initial, rng or random.Random(random.getrandbits(64)), handler)

    webdataset.shuffle = filters.shuffle = filters.pipelinefilter(seeded)


def main(argv: list[str] | None = None) -> int:
    """Register model configs and run open_clip_train.main.main(rest); returns an exit code."""
    from clipsim.jobs.procs import die_with_parent

    die_with_parent()
    configs, rest = split_args(sys.argv[1:] if argv is None else argv)
    from clipsim.models import go_offline, register_model_config

    go_offline()
    seed_sample_shuffle()
    for config in configs:
        register_model_config(config)
    from open_clip_train.main import main as train_main

    result = train_main(rest)
    return 1 if result == -1 else 0  # open_clip_train returns -1 when the run folder already holds a log


if __name__ == "__main__":
    sys.exit(main())
