"""Build the demo workspace end to end: draw the world, train the similarity model, embed, search.

Each step leaves a marker or resumable artifacts, so an interrupted build continues where it stopped.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsim import fileio
from clipsim.data.demo import model as demo_model
from clipsim.data.demo import world
from clipsim.data.demo.draw import CLASSES
from clipsim.errors import WorkspaceError
from clipsim.names import check_writable
from clipsim.workspace import Workspace

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
REFERENCE = "curated"  # the ImageNet-train stand-in: s_ref(t) for the similarity-gap rule
DEDUP_EPS = 0.05  # the demo's SemDeDup eps (cosine 0.95): >= 95% of planted groups keep one member; see README


def build_demo(root: str | Path, seed: int = 0, size: str = "full", workers: int = 2, progress=None) -> Workspace:
    """Create (or finish) the demo workspace at `root`.

    Args:
        root: workspace folder (created if missing).
        seed: world seed; the same seed gives the same images, captions and planted pairs.
        size: 'full' (24k web images, ~4 min on 2 cores) or 'small' (for tests, ~1 min).
        workers: processes for drawing and image decoding.
        progress: optional callable(done, total, description).

    Returns:
        The workspace, with datasets registered, embedded and searched, and `demo/planted.parquet`.
    """
    if size not in world.PRESETS:
        raise WorkspaceError(f"demo size {size!r} is not one of {sorted(world.PRESETS)}")
    ws = Workspace.create(root)
    done_file = ws.path("demo", "demo.json")
    if done_file.exists():
        info = fileio.read_json(done_file)
        if info.get("seed") == seed and info.get("size") == size:
            return ws
        raise WorkspaceError(
            f"{ws.root} already holds a demo built with seed {info.get('seed')} size {info.get('size')}; "
            "use another --workspace folder or delete this one"
        )
    check_writable("build the demo")
    timings: dict[str, float] = {}
    t = time.time()
    items = world.plan(seed, world.PRESETS[size])
    checkpoint = ws.path("models", "demo-similarity", "checkpoint.pt")
    if not (checkpoint.exists() and ws.path("demo", "data", "complete.json").exists()):  # else resume at embedding
        smalls = _write_world(ws, items, world.PRESETS[size], workers, progress)
        timings["draw"] = time.time() - t
        t = time.time()
        checkpoint = _train(ws, items, smalls, world.PRESETS[size], seed, progress)
        timings["train"] = time.time() - t
    t = time.time()
    _embed_all(ws, checkpoint, workers, progress)
    timings["embed"] = time.time() - t
    t = time.time()
    _search_all(ws, progress)
    timings["search"] = time.time() - t
    t = time.time()
    _dedup(ws, progress)
    timings["dedup"] = time.time() - t
    fileio.write_parquet(ws.path("demo", "planted.parquet"), world.planted_table(items))
    fileio.write_parquet(ws.path("demo", "web_truth.parquet"), world.web_truth(items))
    fileio.write_parquet(ws.path("demo", "web_duplicates.parquet"), world.web_duplicates(items))
    fileio.write_json(done_file, {"seed": seed, "size": size, "seconds": {k: round(v, 1) for k, v in timings.items()},
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    log.info("demo built in %.0f s (%s)", sum(timings.values()), timings)
    return ws


def _write_world(ws: Workspace, items: list[world.Item], size: world.DemoSize, workers: int, progress) -> np.ndarray:
    """Draw every image, write the web tars and image folders, register the datasets; (n_web, 32, 32, 3)."""
    data = ws.path("demo", "data")
    jpgs, smalls = world.draw_all(items, workers, progress)
    by_set: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_set.setdefault(it.dataset, []).append(i)
    web = by_set["web"]
    world.write_web_shards(data / "web", [items[i] for i in web], [jpgs[i] for i in web], size.web_shard)
    for name, idx in by_set.items():
        if name != "web":
            world.write_folder(data / name, [items[i] for i in idx], [jpgs[i] for i in idx])
    classes = sorted(CLASSES)  # folder sources number classes by sorted folder name
    ws.register_dataset("web", "train", "demo/data/web", "wds", classes=classes, domain="mixed")
    ws.register_dataset("curated", "train", "demo/data/curated", "folder", classes=classes, domain="photo")
    for name, domain in world.TEST_SETS.items():
        ws.register_dataset(name, "test", f"demo/data/{name}", "folder", classes=classes, domain=domain)
    fileio.write_json(data / "complete.json", {"images": len(items)})
    return smalls[[i for i in web if items[i].copy_of is None]]  # the model never sees the planted web copies


def _train(ws: Workspace, items, smalls, size: world.DemoSize, seed: int, progress) -> Path:
    out = ws.path("models", "demo-similarity")
    captions = [it.caption for it in items if it.dataset == "web" and it.copy_of is None]
    ckpt = demo_model.train_similarity_model(smalls, captions, out, size.train_steps, size.batch, seed, progress)
    ws.update_settings(reference=REFERENCE, similarity_model={"model": "models/demo-similarity/clipsim-demo.json",
                                         "pretrained": "models/demo-similarity/checkpoint.pt"})
    return ckpt


def _embed_all(ws: Workspace, checkpoint: Path, workers: int, progress) -> None:
    from clipsim.embed import embed_dataset

    config = checkpoint.parent / demo_model.CONFIG.name
    for name in ws.dataset_names():
        embed_dataset(ws, name, model=str(config), pretrained=str(checkpoint), batch_size=512, workers=workers,
                      device="cpu", progress=progress)


def _search_all(ws: Workspace, progress) -> None:
    from clipsim.search import search

    tests = ws.dataset_names("test")
    search(ws, REFERENCE, tests, k=10, progress=progress)
    for train in ws.dataset_names("train"):
        if train != REFERENCE:
            search(ws, train, tests, k=10, reference=REFERENCE, progress=progress)


def _dedup(ws: Workspace, progress) -> None:
    """SemDeDup statistics of `web` at the demo's settings (no manifest: the Dedup page saves one)."""
    from clipsim.dedup.pipeline import DedupOptions, run_dedup

    ws.update_settings(dedup={"eps": DEDUP_EPS})
    run_dedup(ws, DedupOptions("web", device="cpu"), progress)


def duplicate_group_recall(ws: Workspace, removed_keys) -> dict:
    """How many planted web duplicate groups a dedup removed all but one member of.

    Args:
        ws: a demo workspace (with demo/web_duplicates.parquet).
        removed_keys: keys the dedup removed.

    Returns:
        {"groups", "one_left" (exactly one member kept), "none_left", "several_left", "recall" (one_left / groups)}.
    """
    import pandas as pd

    truth = pd.read_parquet(ws.path("demo", "web_duplicates.parquet"))
    kept = (~truth["key"].isin(set(map(str, removed_keys)))).groupby(truth["group"]).sum()
    return {"groups": len(kept), "one_left": int((kept == 1).sum()), "none_left": int((kept == 0).sum()),
            "several_left": int((kept > 1).sum()), "recall": float((kept == 1).mean()) if len(kept) else 1.0}


def planted_recall(ws: Workspace) -> pd.DataFrame:
    """Per test set: planted near-duplicates, how many are the rank-1 web neighbour, and that share."""
    import pandas as pd

    truth = pd.read_parquet(ws.path("demo", "planted.parquet"))
    rows = []
    for (test, train), group in truth.groupby(["test_dataset", "train_dataset"], sort=False):
        nn = ws.neighbours(test, train, k=1).set_index("test_key")["train_key"]
        hits = int((nn.reindex(group["test_key"]).to_numpy() == group["train_key"].to_numpy()).sum())
        rows.append({"test": test, "train": train, "planted": len(group), "rank1": hits, "recall": hits / len(group)})
    return pd.DataFrame(rows)
