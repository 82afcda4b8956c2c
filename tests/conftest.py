"""Shared test fixtures: a tiny open_clip model config and checkpoint (nothing downloaded), drawn images."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

TINY_CLIP = {  # ~3.5M parameters (most in the token embedding); one CPU forward of 16 images takes ~10 ms
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory) -> Path:
    """Path of a tiny open_clip JSON model config; the model name is the file stem `clipsim-test-tiny`."""
    path = tmp_path_factory.mktemp("model") / "clipsim-test-tiny.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model_config) -> Path:
    """A seeded tiny model saved as open_clip_train does: {'state_dict': {'module.' + name: tensor}}."""
    import open_clip
    import torch

    open_clip.add_model_config(tiny_model_config)
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_model_config.stem, pretrained=None)
    path = tiny_model_config.parent / "tiny-checkpoint.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def draw_image(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    """A deterministic RGB image: background colour plus a few random rectangles and ellipses."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    pen = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, min(size) // 2, 2))
        x1, y1 = x0 + int(rng.integers(4, size[0] // 2)), y0 + int(rng.integers(4, size[1] // 2))
        shape = pen.rectangle if rng.random() < 0.5 else pen.ellipse
        shape((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


@pytest.fixture
def one_thread():
    """Tiny blocks make every torch/BLAS call a parallel region; on a busy 2-core machine each waits ~5 ms for a
    core (and OpenBLAS and OpenMP pools spin against each other). Exactness does not depend on threading."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def draw():
    """The draw_image(seed, size) helper as a fixture."""
    return draw_image


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory):
    """The small demo workspace, built once per test session (about a minute): every page and job test reads it.

    Tests that write (manifests, maps, jobs, runs) work on a copy (`shutil.copytree`, modification times kept, so
    every fingerprint still matches). With CLIPSIM_TEST_DEMO_CACHE=DIR the demo is built in DIR once and copied
    from there in later sessions (a developer's loop; CI builds it fresh).
    """
    from clipsim.data.demo.build import build_demo

    root = tmp_path_factory.mktemp("demo") / "ws"
    cache = os.environ.get("CLIPSIM_TEST_DEMO_CACHE")
    if not cache:
        return build_demo(root, seed=0, size="small")
    built = build_demo(Path(cache), seed=0, size="small")  # a no-op once built
    shutil.copytree(built.root, root, ignore=shutil.ignore_patterns("maps", "manifests", "jobs.sqlite*", "runs"))
    return build_demo(root, seed=0, size="small")


@pytest.fixture
def served(demo_ws, monkeypatch):
    """The demo workspace served by the app (read-write)."""
    monkeypatch.setenv("CLIPSIM_WORKSPACE", str(demo_ws.root))
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    return demo_ws


@pytest.fixture(scope="session")
def mapped_ws(demo_ws, tmp_path_factory):
    """A copy of the demo workspace with a map computed once per session by `python -m clipsim map --wait` (a real
    worker: UMAP fitted on 350 points, the rest placed); the map and browser tests read it or copy it."""
    from clipsim.cli import main as cli_main
    from clipsim.workspace import Workspace

    root = tmp_path_factory.mktemp("mapped") / "ws"
    shutil.copytree(demo_ws.root, root, ignore=shutil.ignore_patterns("maps", "manifests", "jobs.sqlite*", "runs", "models"))
    code = cli_main(["map", "--workspace", str(root), "--sample", "350", "--n-neighbors", "10", "--wait",
                     "--timeout", "300"])
    assert code == 0
    return Workspace.open(root)


def pytest_terminal_summary(terminalreporter) -> None:
    """The suite's CPU time (this process and the children it waited for: workers, trainers, browsers), so a run
    reports what it cost as well as how long it took (`/usr/bin/time -v python -m pytest` agrees up to detached jobs)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    terminalreporter.write_line(f"suite CPU time: {cpu / 60:.1f} CPU-minutes (self {own.ru_utime + own.ru_stime:.0f} s, "
                                f"waited-for children {kids.ru_utime + kids.ru_stime:.0f} s)")
