"""Scale-out by shard ranges: search parts merged exactly (bit for bit equal to one pass, margins included),
refusals of missing, overlapping, unfinished and stale parts, embedding by ranges then finalize, and the array
job kinds through the local backend and, for a GPU request, a stand-in `sbatch`. The arrays on a real SLURM cluster
are tested in tests/test_slurm.py."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipsim import Workspace, fileio, store
from clipsim.cli import main
from clipsim.embed import embed_dataset, finalize_embeddings
from clipsim.errors import ClipsimError, DataError, WorkspaceError
from clipsim.jobs import ACTIVE, cancel, get_job, launch, list_jobs, wait
from clipsim.search import search
from clipsim.search.exact import brute_force
from clipsim.search.parts import merge_search_parts, part_dir, search_part
from clipsim.shard_ranges import index_runs, parse_range, split_ranges
from tests.helpers import unit16

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny blocks: see conftest.one_thread

DIM = 16
STATS = ("max_sim", "argmax", "margin/ref", "margin_argmax/ref")
WEB_SHARDS = (40, 1, 25, 60, 33, 7, 50)  # uneven, one single-row shard


def register(ws: Workspace, name: str, role: str, shards: list[np.ndarray]) -> None:
    """Write float16 shards as a clip-retrieval folder and register it (kind 'embeddings', used in place)."""
    for i, rows in enumerate(shards):
        keys = [f"{name}-{i}-{j}" for j in range(len(rows))]
        store.write_shard(ws.path("src", name), i, rows, pd.DataFrame({"key": keys}))
    ws.register_dataset(name, role, ws.path("src", name), "embeddings")


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    """Random unit embeddings: tests a (30) and b (12); train sets ref (2 shards), web (7 uneven shards) and tiny
    (3 rows in all, fewer than k). web holds exact copies of a[0] in shards 0 and 5 (a tie across parts, the lower
    id must win), one-ulp nudges of a[1] and a[2] and noisy copies of b[0]."""
    monkeypatch.delenv("CLIPSIM_READ_ONLY", raising=False)
    rng = np.random.default_rng(7)
    workspace = Workspace.create(tmp_path / "ws")
    workspace.update_settings(jobs={"slots": 2}, reference="ref")
    a, b = unit16(rng.standard_normal((30, DIM))), unit16(rng.standard_normal((12, DIM)))
    web = [unit16(rng.standard_normal((n, DIM))) for n in WEB_SHARDS]
    web[0][3], web[5][2] = a[0], a[0]
    for shard, row, src in ((3, 10, a[1]), (4, 0, a[2])):
        web[shard][row] = src
        web[shard][row][5] = np.nextafter(src[5], np.float16(1))
    web[2][4:7] = unit16(b[0].astype(np.float64) + 0.02 * rng.standard_normal((3, DIM)))
    register(workspace, "a", "test", [a])
    register(workspace, "b", "test", [b])
    register(workspace, "ref", "train", [unit16(rng.standard_normal((n, DIM))) for n in (50, 30)])
    register(workspace, "web", "train", web)
    register(workspace, "tiny", "train", [unit16(rng.standard_normal((n, DIM))) for n in (1, 2)])
    search(workspace, "ref", ["a", "b"], k=8)
    yield workspace
    for job in list_jobs(workspace, states=ACTIVE):
        cancel(workspace, job.id, grace=1.0)


def snapshot(ws: Workspace, train: str, tests=("a", "b")) -> dict:
    """Everything a search stores for `train`: top-k arrays, per-row statistics, fingerprint."""
    out = {}
    for t in tests:
        res = ws.search_result(t, train)
        stats = [s for s in STATS if train != "ref" or "/" not in s]
        out[t] = {"arrays": res.arrays(), "stats": {s: res.train_stat(s) for s in stats},
                  "fingerprint": res.fingerprint, "stale": res.stale}
    return out


def assert_same(got: dict, want: dict, same_files: bool = True) -> None:
    """Bit-equal arrays and statistics; the same fingerprint when both come from the same input files."""
    for t in want:
        for g, w in zip(got[t]["arrays"], want[t]["arrays"]):
            assert g.dtype == w.dtype and np.array_equal(g, w), t
        for name, w in want[t]["stats"].items():
            g = got[t]["stats"][name]
            assert g.dtype == w.dtype and np.array_equal(g, w), (t, name)
        assert got[t]["fingerprint"] == want[t]["fingerprint"] or not same_files
        assert not got[t]["stale"]


def single_pass(ws: Workspace, train: str, k: int) -> dict:
    search(ws, train, ["a", "b"], k=k, reference="ref", force=True)
    want = snapshot(ws, train)
    shutil.rmtree(ws.path("search", train))
    return want


def test_split_and_parse_ranges():
    assert split_ranges(list(range(7)), 3) == [(0, 2), (2, 4), (4, 7)]
    assert split_ranges([3, 5, 9], 2) == [(0, 5), (5, 10)]
    assert split_ranges([0, 1], 4) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert parse_range("2:5") == (2, 5) and index_runs([2, 3, 4, 9]) == [(2, 5), (9, 10)]
    for bad in ("5:2", "x", "1:2:3"):
        with pytest.raises(ClipsimError, match="LO"):
            parse_range(bad)


@pytest.mark.parametrize("train, k, ranges, precisions", [
    ("web", 8, [(0, 1), (1, 4), (4, 5), (5, 12)], ["fp32", "bf16", "bf16", "fp32"]),
    ("web", 3, [(0, 6), (6, 7)], ["bf16", "fp32"]),
    ("tiny", 8, [(0, 1), (1, 2), (2, 3)], ["fp32", "fp32", "fp32"]),  # k > rows: -inf / -1 padding
])
def test_parts_merged_equal_one_pass_bit_for_bit(ws, train, k, ranges, precisions):
    want = single_pass(ws, train, k)
    for shards, precision in zip(ranges, precisions):
        search_part(ws, train, ["a", "b"], shards, k=k, reference="ref", precision=precision, block_rows=16)
    assert not part_dir(ws, train, (2, 3)).exists()  # tiny has no shard 2: nothing stored
    results = merge_search_parts(ws, train, ["a", "b"], k=k, reference="ref")
    assert_same(snapshot(ws, train), want)
    assert not ws.path("search", train, "_parts").exists() and sorted(results) == ["a", "b"]
    train_rows = ws.embeddings(train).all()
    for t in ("a", "b"):  # and the merged answer is the brute-force one
        c = brute_force(ws.embeddings(t).all(), train_rows)
        sims, ids = results[t].arrays()
        valid = ids >= 0
        assert valid.sum(axis=1).tolist() == [min(k, len(train_rows))] * len(c)
        assert np.array_equal(sims[valid], np.take_along_axis(c, np.where(valid, ids, 0), 1)[valid])
        assert np.array_equal(sims[:, 0], c.max(axis=1))
    if train == "web":
        assert results["a"].arrays()[1][0, :2].tolist() == [3, 40 + 1 + 25 + 60 + 33 + 2]  # the tie: lower id first


def test_merge_refuses_missing_overlapping_unfinished_and_stale_parts(ws):
    want = single_pass(ws, "web", 8)
    args = {"k": 8, "reference": "ref", "block_rows": 16}
    search_part(ws, "web", ["a", "b"], (0, 3), **args)
    with pytest.raises(WorkspaceError, match=r"no search part covers shards 3:7 .*--shards 3:7"):
        merge_search_parts(ws, "web", ["a", "b"], k=8, reference="ref")
    with pytest.raises(WorkspaceError, match="overlaps the part 0:3"):
        search_part(ws, "web", ["a", "b"], (2, 5), **args)

    class Stop(Exception):
        pass

    def stop_in_second_shard(done, total, desc):
        if done > WEB_SHARDS[3]:
            raise Stop
    with pytest.raises(Stop):  # interrupted after its first shard was checkpointed
        search_part(ws, "web", ["a", "b"], (3, 5), progress=stop_in_second_shard, **args)
    with pytest.raises(WorkspaceError, match=r"unfinished \(1 of 2 shards\).*--shards 3:5"):
        merge_search_parts(ws, "web", ["a", "b"], k=8, reference="ref")
    assert search_part(ws, "web", ["a", "b"], (3, 5), **args)["shards"] == [3, 4]  # resumes
    search_part(ws, "web", ["a", "b"], (5, 7), **args)
    with pytest.raises(WorkspaceError, match="made from other inputs"):
        merge_search_parts(ws, "web", ["a", "b"], k=5, reference="ref")
    with pytest.raises(WorkspaceError, match="made from other inputs"):  # test order fixes the query rows
        merge_search_parts(ws, "web", ["b", "a"], k=8, reference="ref")
    copy = part_dir(ws, "web", (1, 2))
    shutil.copytree(part_dir(ws, "web", (0, 3)), copy)  # e.g. a stray task of another split
    with pytest.raises(WorkspaceError, match="both cover shard"):
        merge_search_parts(ws, "web", ["a", "b"], k=8, reference="ref")
    shutil.rmtree(copy)
    merge_search_parts(ws, "web", ["a", "b"], k=8, reference="ref")
    assert_same(snapshot(ws, "web"), want)


def test_cli_shards_then_merge(ws, capsys):
    want = single_pass(ws, "web", 8)
    base = ["search", "--workspace", str(ws.root), "--train", "web", "--tests", "a,b", "--k", "8"]
    assert main(base + ["--shards", "0:4"]) == 0
    assert main(base + ["--merge"]) == 2
    assert "--shards 4:7" in capsys.readouterr().err
    assert main(base + ["--shards", "4:7", "--block-rows", "16"]) == 0
    assert main(base + ["--merge", "--shards", "0:1"]) == 2
    assert main(base + ["--merge"]) == 0
    assert "a vs web: median s_web(t)" in capsys.readouterr().out
    assert_same(snapshot(ws, "web"), want)


# ----- embedding by ranges ------------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path, draw) -> Path:
    """10 drawn images in two class folders plus one file that does not decode (a skipped image)."""
    root = tmp_path / "images"
    for i in range(10):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        draw(i).save(root / f"c{i % 2}" / f"{i}.png")
    (root / "c1" / "7b.png").write_bytes(b"not an image")
    return root


def embed_args(tiny_model_config, tiny_checkpoint) -> dict:
    return {"model": str(tiny_model_config), "pretrained": str(tiny_checkpoint), "device": "cpu", "batch_size": 4,
            "workers": 0, "shard_size": 3}


def stored(ws: Workspace, name: str) -> tuple:
    emb = ws.embeddings(name)
    skipped = pd.read_parquet(ws.path("embeddings", name, "skipped.parquet"))
    summary = fileio.read_json(ws.path("embeddings", name, "summary.json"))
    return emb.all(), emb.metadata(), skipped, {k: summary[k] for k in ("rows", "skipped", "shards", "dim")}


def test_embed_by_ranges_then_finalize_equals_one_embed(tmp_path, images, tiny_model_config, tiny_checkpoint):
    opts = embed_args(tiny_model_config, tiny_checkpoint)
    one, parts = Workspace.create(tmp_path / "one"), Workspace.create(tmp_path / "parts")
    for w in (one, parts):
        w.register_dataset("imgs", "train", images, "folder")
    embed_dataset(one, "imgs", **opts)
    with pytest.raises(DataError, match="force"):
        embed_dataset(parts, "imgs", shards=(0, 1), force=True, **opts)
    for shards in ((2, 4), (0, 1)):
        partial = embed_dataset(parts, "imgs", shards=shards, **opts)
    assert [s.index for s in partial.shards] == [0, 2, 3]
    assert not parts.path("embeddings", "imgs", "summary.json").exists()
    with pytest.raises(DataError, match=r"shards 1:2 of 'imgs' are not embedded.*--shards 1:2"):
        finalize_embeddings(parts, "imgs")
    embed_dataset(parts, "imgs", shards=(1, 2), **opts)
    lists = sorted(parts.path("embeddings", "imgs", "skipped_parts").glob("*.parquet"))  # one per shard embedded
    assert [f.name for f in lists] == [f"shard_{i}.parquet" for i in range(4)]
    assert pd.concat([pd.read_parquet(f) for f in lists])["key"].tolist() == ["c1/7b"]
    finalize_embeddings(parts, "imgs")
    got, want = stored(parts, "imgs"), stored(one, "imgs")
    assert got[0].dtype == np.float16 and np.array_equal(got[0], want[0])
    pd.testing.assert_frame_equal(got[1], want[1])
    assert got[2]["error"].str.startswith("DataError: image").all()  # its text holds a memory address
    pd.testing.assert_frame_equal(got[2].drop(columns="error"), want[2].drop(columns="error"))
    assert got[3] == want[3] == {"rows": 10, "skipped": 1, "shards": 4, "dim": 32}
    assert not parts.path("embeddings", "imgs", "skipped_parts").exists()


# ----- array jobs ---------------------------------------------------------------------------------------
def test_array_on_local_backend_via_cli_and_failed_task_fails_the_array(ws, capsys):
    want = single_pass(ws, "web", 8)
    argv = ["search", "--workspace", str(ws.root), "--train", "web", "--tests", "a,b", "--k", "8", "--array", "3",
            "--backend", "local", "--wait"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "search-array" in out and "'tests': ['a', 'b']" in out
    assert_same(snapshot(ws, "web"), want)
    before = len(list_jobs(ws))
    with pytest.raises(ClipsimError, match="params\\['reference'\\]: no dataset 'nope'"):  # refused at launch
        launch(ws, "search-array", {"train": "web", "tests": ["a"], "reference": "nope", "tasks": 1})
    assert len(list_jobs(ws)) == before
    job = launch(ws, "search-array", {"train": "web", "tests": ["a"], "reference": "tiny", "tasks": 1})  # never searched
    job = wait(ws, job.id, timeout=60)
    task = job.depends_on
    assert job.state == "failed" and f"dependency {task} failed" in job.error
    assert "tiny" in get_job(ws, task).error


FAKE_SBATCH = """#!/bin/sh
cp "$1" "{log}/script.sh"; echo "Submitted batch job 4242"
"""
FAKE_SCANCEL = """#!/bin/sh
echo "$@" >> "{log}/scancel.txt"
"""
FAKE_SACCT = """#!/bin/sh
echo "JobID|State|NodeList"
[ -f "{log}/scancel.txt" ] && for id in $(cat "{log}/scancel.txt"); do echo "$id|CANCELLED|node1"; done
exit 0
"""


def test_gpu_array_request_reaches_sbatch(ws, tmp_path, monkeypatch):
    """What the GPU-less test cluster (tests/test_slurm.py) cannot run: an array on a GPU partition. The real submitit
    SlurmExecutor against stand-in sbatch/sacct/scancel: one `--array` submission asking for a GPU per task, records
    `4242_<task>`, and the merge job itself asks for none."""
    bin_dir, log = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir(), log.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL), ("sacct", FAKE_SACCT), ("srun", "")):
        (bin_dir / name).write_text(text.format(log=log) if text else "#!/bin/sh\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ws.update_settings(slurm={"cluster": "slurm", "gpus": 1, "partition": "gpu"})
    job = launch(ws, "search-array", {"train": "web", "tasks": 2}, backend="slurm")
    tasks = [get_job(ws, t) for t in job.depends_on.split(",")]
    assert [t.backend_id for t in tasks] == ["4242_0", "4242_1"] and job.state == "queued"
    assert [t.resources["gpus"] for t in tasks] == [1, 1] and get_job(ws, job.id).resources["gpus"] == 0
    script = (log / "script.sh").read_text()
    for line in ("--array=0-1%2", "--partition=gpu", "--gpus-per-node=1", "--no-requeue"):
        assert f"#SBATCH {line}\n" in script
    cancel(ws, job.id, grace=0.5)  # the stand-in sacct answers CANCELLED once scancel was called
    assert [get_job(ws, t.id).state for t in tasks] == ["cancelled"] * 2
