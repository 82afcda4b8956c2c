"""kill -9 at every commit point of search (whole pass and array parts), embed (plain and --force), prune and map:
the re-run's output equals an uninterrupted run bit for bit, and a reader never sees a half-written artifact.

Every durable step (a temporary file complete, a rename, a folder swap, a removal) passes `fileio.commit_step`.
For each step N of an uninterrupted run, a copy of the workspace is handed to a forked process armed with
`fileio.kill_at_step(N)`, which SIGKILLs itself right after step N; the step is then run again here and every file
it produces is compared with the uninterrupted run's (arrays bit for bit; JSON without its timestamps and timings).
Forking keeps this fast: the child inherits the imported libraries (and UMAP's compiled code).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipsim import Workspace, fileio, store
from clipsim.cli import main
from clipsim.embed import embed_dataset
from clipsim.errors import DataError, WorkspaceError
from clipsim.search import interrupted_searches, merge_search_parts, search, search_part
from tests.helpers import unit16

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread: the forked children need no thread pools
# numba's default GNU OpenMP layer kills a forked child (SIGTERM) at its first parallel loop; the workqueue layer
# is fork-safe. Read when numba first runs a parallel loop, which no test module does while being collected.
os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
if "numba" in sys.modules:
    sys.modules["numba"].config.THREADING_LAYER = "workqueue"
VOLATILE = {"created", "finished", "seconds", "images_per_second", "embedded_this_run"}  # timings and clocks
DIM = 16
TESTS = ["val", "sketch"]


# ----- harness -------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict:
    """Every committed file under `folder`: arrays of .npz/.npy bit for bit, JSON without VOLATILE keys, other bytes.

    Hidden entries (temporary files of a killed write) and `_pass`/`_parts` checkpoints are not output."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith((".", "_")) for part in rel.parts):
            continue
        if path.suffix == ".npz":
            with np.load(path) as z:
                out[str(rel)] = {n: (z[n].dtype.str, z[n].shape, z[n].tobytes()) for n in z.files}
        elif path.suffix == ".json":
            out[str(rel)] = {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}
        else:
            out[str(rel)] = path.read_bytes()
    return out


def run_killed(step, root: Path, n: int) -> None:
    """Run step(root) in a forked process that SIGKILLs itself right after its n-th durable step."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            fileio.kill_at_step(n)
            step(root)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"step {n}: child exit status {status}"


def count_steps(step, root: Path) -> int:
    """Run step(root) here, uninterrupted; the number of durable steps it took."""
    fileio.kill_at_step(0)
    step(root)
    return fileio.steps_taken()


def check_every_kill(pristine: Path, tmp: Path, step, output: str, during=None) -> int:
    """For every durable step of `step`: kill there, re-run, and compare `output` with an uninterrupted run.

    Args:
        pristine: the workspace before the step (copied for every run; modification times kept).
        tmp: scratch folder.
        step: callable(workspace root) doing the step.
        output: the folder (relative to the workspace) the step produces.
        during: optional callable(workspace root) run right after each kill (what a reader sees then).

    Returns:
        The number of kill points checked.
    """
    reference = tmp / "reference"
    shutil.copytree(pristine, reference)
    total = count_steps(step, reference)
    want = snapshot(reference / output)
    assert total > 0 and want
    for n in range(1, total + 1):
        root = tmp / f"kill{n}"
        shutil.copytree(pristine, root)
        run_killed(step, root, n)
        if during is not None:
            during(root)
        step(root)
        got = snapshot(root / output)
        assert got.keys() == want.keys(), f"killed after step {n} of {total}"
        for name in want:
            assert got[name] == want[name], f"{name} differs after a kill at step {n} of {total}"
        shutil.rmtree(root)
    return total


# ----- search, prune and map on embedding folders --------------------------------------------------------
def put(root: Path, ws: Workspace, name: str, role: str, rows: np.ndarray, shards: int) -> None:
    for i, part in enumerate(np.array_split(np.arange(len(rows)), shards)):
        store.write_shard(root / "emb" / name, i, rows[part], pd.DataFrame({"key": [f"{name}-{j}" for j in part]}))
    ws.register_dataset(name, role, f"emb/{name}", "embeddings")  # relative: copies of the workspace stay whole


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A workspace with two test sets, a reference set (searched) and a 4-shard web set with planted copies."""
    root = tmp_path_factory.mktemp("faults") / "ws"
    ws = Workspace.create(root)
    rng = np.random.default_rng(3)
    tests = {t: unit16(rng.standard_normal((n, DIM))) for t, n in (("val", 12), ("sketch", 9))}
    ref = unit16(np.concatenate([tests["val"][:6] + 0.2 * rng.standard_normal((6, DIM)), rng.standard_normal((20, DIM))]))
    web = unit16(rng.standard_normal((60, DIM)))
    web[[5, 17, 40]] = tests["val"][0], tests["sketch"][2], ref[1]  # sim 1; and a tie with a reference row
    for name, rows in tests.items():
        put(root, ws, name, "test", rows, 1)
    put(root, ws, "ref", "train", ref, 2)
    put(root, ws, "web", "train", web, 3)
    ws.update_settings(reference="ref")
    search(ws, "ref", TESTS, k=4, device="cpu", precision="fp32")
    return root


def search_step(root: Path, force: bool = False) -> None:
    search(Workspace.open(root), "web", TESTS, k=4, reference="ref", device="cpu", precision="fp32", block_rows=8,
           force=force)


def test_search_pass_killed_anywhere_resumes_to_identical_bits(searched, tmp_path):
    whole = tmp_path / "whole"
    shutil.copytree(searched, whole)
    search_step(whole)
    want = {t: Workspace.open(whole).search_result(t, "web").arrays() for t in TESTS}
    seen = set()

    def honest(root: Path) -> None:  # an interrupted pass is shown as such; a result, once readable, is whole
        ws = Workspace.open(root)
        seen.update(r["state"] for r in interrupted_searches(ws))
        for t in TESTS:
            try:
                got = ws.search_result(t, "web").arrays()
            except WorkspaceError:
                continue
            for a, b in zip(got, want[t]):
                np.testing.assert_array_equal(a, b)

    assert check_every_kill(searched, tmp_path / "k", search_step, "search/web", honest) >= 25
    assert {"incomplete (1 of 3 shards)", "incomplete (3 of 3 shards)"} <= seen


def test_search_force_killed_anywhere_leaves_the_old_result_readable(searched, tmp_path):
    done = tmp_path / "done"
    shutil.copytree(searched, done)
    search_step(done)
    old = {t: Workspace.open(done).search_result(t, "web").arrays() for t in TESTS}

    def readable(root: Path) -> None:  # between any two steps a reader sees a complete result, never a mix
        ws = Workspace.open(root)
        for t in TESTS:
            res = ws.search_result(t, "web")
            assert not res.stale
            for got, want in zip(res.arrays(), old[t]):
                np.testing.assert_array_equal(got, want)
            assert len(res.train_stat("max_sim")) == 60

    check_every_kill(done, tmp_path / "k", lambda root: search_step(root, force=True), "search/web", readable)


def parts_step(root: Path) -> None:
    ws = Workspace.open(root)
    for shards in ((0, 2), (2, 3)):
        search_part(ws, "web", TESTS, shards, k=4, reference="ref", device="cpu", precision="fp32", block_rows=8)
    merge_search_parts(ws, "web", TESTS, k=4, reference="ref")


def test_search_parts_killed_anywhere_merge_to_the_single_pass_bits(searched, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(searched, single)
    search_step(single)
    total = check_every_kill(searched, tmp_path / "k", parts_step, "search/web")
    merged = tmp_path / "k" / "reference"
    want, got = snapshot(single / "search" / "web"), snapshot(merged / "search" / "web")
    for name in want:  # the merge equals one pass; only the recorded precision/device strings may differ
        if name.endswith("config.json"):
            want[name] = {k: v for k, v in want[name].items() if k not in ("precision", "device")}
            got[name] = {k: v for k, v in got[name].items() if k not in ("precision", "device")}
        assert got[name] == want[name], name
    assert total >= 25


def test_prune_killed_anywhere_saves_the_same_manifest(searched, tmp_path):
    done = tmp_path / "done"
    shutil.copytree(searched, done)
    search_step(done)

    def prune_step(root: Path) -> None:
        assert main(["prune", "--workspace", str(root), "--rule", "similarity-gap", "--delta", "0",
                     "--name", "gap", "--overwrite"]) == 0  # a kill after the swap leaves the manifest whole

    def whole_or_none(root: Path) -> None:
        folder = root / "manifests" / "gap"
        assert not folder.exists() or {p.name for p in folder.iterdir()} == {"kept.parquet", "removed.parquet",
                                                                           "summary.json"}

    assert check_every_kill(done, tmp_path / "k", prune_step, "manifests", whole_or_none) >= 5


def test_map_killed_anywhere_stores_the_same_map(searched, tmp_path):
    from clipsim.maps.compute import compute_map  # umap-learn is a requirement: no skip without it

    def map_step(root: Path) -> None:
        compute_map(Workspace.open(root), "m", datasets=["val", "sketch", "web"], sample=30, seed=0,
                    umap_params={"n_neighbors": 5, "n_epochs": 30})

    assert check_every_kill(searched, tmp_path, map_step, "maps") >= 3


# ----- embed ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Five small images in two class folders (three shards of two), one of them corrupt (it lands in the skipped
    list)."""
    from tests.conftest import draw_image

    root = tmp_path_factory.mktemp("faults") / "images"
    for i in range(4):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        draw_image(40 + i, size=(24, 20)).save(root / f"c{i % 2}" / f"{i}.png")
    (root / "c1" / "9.jpg").write_bytes(b"not a jpeg at all")
    return root


@pytest.fixture(scope="module")
def checkpoints(tiny_model_config, tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny checkpoint and a changed copy (a re-embed with other weights gives other bits)."""
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["state_dict"] = {k: v + 0.01 for k, v in state["state_dict"].items()}
    other = tmp_path_factory.mktemp("weights") / "other.pt"
    torch.save(state, other)
    return tiny_checkpoint, other


def embed_step(root: Path, model: Path, checkpoint: Path, force: bool = False) -> None:
    embed_dataset(Workspace.open(root), "imgs", model=str(model), pretrained=str(checkpoint), device="cpu",
                  batch_size=4, workers=0, shard_size=2, force=force)


def test_embed_killed_anywhere_resumes_to_identical_bits(images, tiny_model_config, checkpoints, tmp_path):
    pristine = tmp_path / "ws"
    Workspace.create(pristine).register_dataset("imgs", "train", images, "folder")

    def state_is_honest(root: Path) -> None:  # never committed before the last shard; never read while open
        ws = Workspace.open(root)
        label = ws.embedding_state("imgs").label
        assert label.startswith(("incomplete (", "not embedded")) or label == "complete with 1 losses (see skipped.parquet)"
        if label.startswith("incomplete"):
            assert ws.embeddings("imgs", required=False) is None
            with pytest.raises(DataError, match=r"incomplete \(\d of 3 shards\).*clipsim embed"):
                ws.embeddings("imgs")

    total = check_every_kill(pristine, tmp_path / "k", lambda r: embed_step(r, tiny_model_config, checkpoints[0]),
                             "embeddings/imgs", state_is_honest)
    assert total >= 15


def test_embed_force_killed_anywhere_keeps_the_old_set_until_the_new_one_is_whole(
        images, tiny_model_config, checkpoints, tmp_path):
    pristine = tmp_path / "ws"
    Workspace.create(pristine).register_dataset("imgs", "train", images, "folder")
    embed_step(pristine, tiny_model_config, checkpoints[0])
    old = snapshot(pristine / "embeddings" / "imgs")
    new_root = tmp_path / "new"
    shutil.copytree(pristine, new_root)
    embed_step(new_root, tiny_model_config, checkpoints[1], force=True)
    new = snapshot(new_root / "embeddings" / "imgs")
    assert old["img_emb/img_emb_0.npy"] != new["img_emb/img_emb_0.npy"]

    def old_or_new(root: Path) -> None:
        ws = Workspace.open(root)
        assert ws.embedding_state("imgs").state == "complete" and ws.embeddings("imgs").count == 4
        assert snapshot(root / "embeddings" / "imgs") in (old, new)

    check_every_kill(pristine, tmp_path / "k", lambda r: embed_step(r, tiny_model_config, checkpoints[1], force=True),
                     "embeddings/imgs", old_or_new)
