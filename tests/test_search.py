"""Exact search against brute force: the streamed scanner on planted near-ties, workspace results, resume,
staleness and bad inputs. Every streamed answer must equal float32(Q64 @ X64.T) bit for bit, ties to the lower id."""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipsim import Workspace, fileio, store
from clipsim.checks import SCREEN_PRECISIONS, check_screen_precision
from clipsim.cli import build_parser
from clipsim.errors import ArgumentError, DataError, WorkspaceError
from clipsim.search import exact, search
from clipsim.search import scan as scan_module
from clipsim.search.checkpoint import read_meta
from clipsim.search.exact import Screen, brute_force
from clipsim.search.scan import ExactScanner, Group
from clipsim.store import EmbeddingSet
from tests.helpers import unit16

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny blocks: see conftest.one_thread

CPU = torch.device("cpu")
# Where the scanner's tests run: the CPU, or a GPU with CLIPSIM_TEST_DEVICE=cuda (benchmarks/device_check.sh);
# there fp16, the GPU's default screen, joins the precisions.
DEVICE = torch.device(os.environ.get("CLIPSIM_TEST_DEVICE", "cpu"))
PRECISIONS = ("fp32", "bf16") + (("fp16",) if DEVICE.type == "cuda" else ())


# ----- brute-force references ----------------------------------------------------------------------------
def nudge(row: np.ndarray, rng: np.random.Generator, components: int = 1) -> np.ndarray:
    """A copy of a float16 row with `components` random entries moved by one float16 ulp."""
    out = row.copy()
    for j in rng.choice(len(row), components, replace=False):
        out[j] = np.nextafter(out[j], np.float16(np.inf if rng.random() < 0.5 else -np.inf))
    return out


def expected_topk(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a brute-force matrix by a stable sort (ties -> lower id); -inf / -1 beyond the train count."""
    ids = np.argsort(-c, axis=1, kind="stable")[:, :k]
    sims = np.take_along_axis(c, ids, axis=1)
    pad = k - ids.shape[1]
    return (np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf),
            np.pad(ids, ((0, 0), (0, pad)), constant_values=-1))


def expected_margin(c: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Canonical margins float32(float64(c) - float64(offset)), (n_q, n_x)."""
    return (c.astype(np.float64) - np.asarray(offsets, np.float32).astype(np.float64)[:, None]).astype(np.float32)


def run_scanner(q, x, groups, k, precision, block, **options):
    """Stream x in blocks of `block` rows; return the scanner and per-group statistics concatenated over blocks."""
    scanner = ExactScanner(q, groups, k, precision, DEVICE, **options)
    parts = {g.name: [] for g in groups}
    for lo in range(0, len(x), block):
        for name, stats in scanner.add_block(x[lo : lo + block], lo).items():
            parts[name].append(stats)
    stats = {name: {key: np.concatenate([p[key] for p in ps]) for key in ps[0]} for name, ps in parts.items()}
    return scanner, stats


def assert_scan_exact(q, x, groups, k, precision, block, **options):
    scanner, stats = run_scanner(q, x, groups, k, precision, block, **options)
    c = brute_force(q, x)
    sims, ids = expected_topk(c, k)
    np.testing.assert_array_equal(scanner.top_i.cpu().numpy(), ids)
    np.testing.assert_array_equal(scanner.top_s.cpu().numpy(), sims)  # bitwise: same float32 values, -inf included
    for g in groups:
        cg = c[g.start : g.stop]
        got = stats[g.name]
        np.testing.assert_array_equal(got["max_sim"], cg.max(axis=0))
        np.testing.assert_array_equal(got["argmax"], cg.argmax(axis=0))  # first query on ties
        for ref, off in (g.offsets or {}).items():
            m = expected_margin(cg, off)
            np.testing.assert_array_equal(got[f"margin/{ref}"], m.max(axis=0))
            np.testing.assert_array_equal(got[f"margin_argmax/{ref}"], m.argmax(axis=0))
        assert got["max_sim"].dtype == np.float32 and got["argmax"].dtype == np.int32
    return scanner


# ----- data ---------------------------------------------------------------------------------------------
def random_data(seed: int = 0, n_q: int = 37, n_x: int = 1500, d: int = 48):
    rng = np.random.default_rng(seed)
    q, x = unit16(rng.standard_normal((n_q, d))), unit16(rng.standard_normal((n_x, d)))
    off = rng.uniform(-0.2, 0.6, 20).astype(np.float32)
    return q, x, [Group("a", 0, 20, {"ref": off}), Group("b", 20, n_q)]


def near_tie_data(seed: int = 1, d: int = 64):
    """Queries and train rows whose canonical similarities tie exactly, differ by one float32 ulp, or lie
    inside the bf16 screen's error bound of each other, around the top-k boundary and the per-row maxima."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal(d)
    raw[: d // 4] *= 1e-3  # tiny components: a float16 ulp there moves a dot product by about one float32 ulp
    anchor = unit16(raw[None])[0]
    cluster = [anchor] * 3 + [nudge(anchor, rng, int(rng.integers(1, 3))) for _ in range(60)]
    x = np.concatenate([unit16(rng.standard_normal((400, d))), np.array(cluster)])
    x = x[rng.permutation(len(x))]
    x = np.concatenate([x, x[rng.choice(len(x), 40, replace=False)]])  # exact duplicates at higher ids
    qa = np.concatenate([anchor[None], np.array([nudge(anchor, rng) for _ in range(8)]), anchor[None],
                         unit16(rng.standard_normal((10, d)))])
    qb = np.concatenate([x[rng.choice(len(x), 6, replace=False)], unit16(rng.standard_normal((8, d)))])
    q = np.concatenate([qa, qb])
    c = brute_force(qa, x)
    tie_row = int(np.flatnonzero(np.all(x == cluster[5], axis=1))[0])
    offsets = {
        "tie": c[:, tie_row],  # margin exactly 0 on that row for every query: argmax must be the first query
        "rand": rng.uniform(0.2, 0.99, len(qa)).astype(np.float32),
    }
    return q, x, [Group("a", 0, len(qa), offsets), Group("b", len(qa), len(q))]


def test_near_tie_data_is_adversarial():
    """The planted data really holds the near-ties the exactness tests rely on (checked by brute force)."""
    q, x, _ = near_tie_data()
    k = 10
    c = brute_force(q, x)
    c64 = q.astype(np.float64) @ x.astype(np.float64).T
    top = np.sort(c[0])[::-1][: 60]
    distinct = np.unique(top)[::-1]
    one_ulp = distinct[1:] == np.nextafter(distinct[:-1], np.float32(-np.inf))
    assert one_ulp.sum() >= 3, "no pair of top similarities one float32 ulp apart"
    near = np.flatnonzero(c[0] >= top[-1])
    rounding_ties = [(i, j) for i in near for j in near if i < j and c[0, i] == c[0, j] and c64[0, i] != c64[0, j]]
    assert rounding_ties, "no pair with equal float32 but different float64 similarity"
    exact_dups = [(i, j) for i in near for j in near if i < j and np.array_equal(x[i], x[j])]
    assert len(exact_dups) >= 3, "too few duplicated train rows near the top-k"
    screen = Screen("bf16", CPU, x.shape[1])
    q_lo, nq, rq = screen.prepare(torch.as_tensor(q))
    x_lo, nx, rx = screen.prepare(torch.as_tensor(x))
    bound = screen.bound((nq, rq), (nx, rx))
    kth = np.sort(c[0])[::-1][k - 1]
    assert (c[0] >= kth - bound).sum() > 3 * k, "too few rows within the bf16 error bound of the k-th"
    s = screen.product(q_lo, x_lo).float().numpy()
    screened = np.argsort(-s[0], kind="stable")[:k]
    assert not np.array_equal(screened, np.argsort(-c[0], kind="stable")[:k]), "bf16 screen alone already exact"


def test_one_list_of_screen_precisions():
    """The CLI's --precision choices (search, dedup, text), the argument checks and Screen read one list."""
    assert SCREEN_PRECISIONS == ("auto", *exact.PRECISIONS)
    parser = build_parser()
    for argv in (["search"], ["dedup", "--name", "d"], ["text-search", "--query", "a dog"]):
        assert [parser.parse_args([*argv, "--precision", p]).precision for p in SCREEN_PRECISIONS] == \
            list(SCREEN_PRECISIONS)
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--precision", "int4"])
    with pytest.raises(ArgumentError, match=r"precision = 'int4' is not known"):
        check_screen_precision("int4")


# ----- the scanner --------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", PRECISIONS)
def test_screen_bound_holds_and_is_tight(precision):
    for q, x, _ in (random_data(), near_tie_data()):
        screen = Screen(precision, DEVICE, x.shape[1])
        q_lo, nq, rq = screen.prepare(torch.as_tensor(q).to(DEVICE))
        x_lo, nx, rx = screen.prepare(torch.as_tensor(x).to(DEVICE))
        bound = screen.bound((nq, rq), (nx, rx))
        err = np.abs(screen.product(q_lo, x_lo).float().cpu().numpy().astype(np.float64) - brute_force(q, x))
        assert err.max() <= bound
        assert bound < (1e-5 if precision == "fp32" else 1e-2)  # a vacuous bound would re-check everything


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("block", [1, 7, 1000, None])
def test_scanner_equals_brute_force_random(precision, block):
    q, x, groups = random_data()
    assert_scan_exact(q, x, groups, 10, precision, block or len(x))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("block", [1, 7, 1000, None])
def test_scanner_equals_brute_force_near_ties(precision, block):
    q, x, groups = near_tie_data()
    scanner = assert_scan_exact(q, x, groups, 10, precision, block or len(x))
    assert scanner.rechecked > 0


@pytest.mark.parametrize("precision", PRECISIONS)
def test_scanner_small_query_tiles(monkeypatch, precision):
    """Product tiles of a few query rows: per-row maxima and argmax merged across query chunks."""
    q, x, groups = near_tie_data()
    monkeypatch.setattr(scan_module, "TILE_ELEMENTS", 3 * 64)  # 64-row blocks -> 3 queries per tile
    assert_scan_exact(q, x, groups, 10, precision, 64)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("block", [1, 2, 5])
def test_k_larger_than_train_set(precision, block):
    q, x, groups = near_tie_data()
    scanner = assert_scan_exact(q, x[:5], groups, 8, precision, block)
    assert (scanner.top_i.cpu().numpy()[:, 5:] == -1).all() and np.isneginf(scanner.top_s.cpu().numpy()[:, 5:]).all()


@pytest.mark.parametrize("workers", [1, 2])
def test_empty_group_among_others(workers):
    """A test set with no queries scans no tile and reports no statistics; the others are unchanged."""
    q, x, (a, b) = random_data()
    groups = [a, Group("none", a.stop, a.stop), b]
    scanner, stats = run_scanner(q, x, groups, 10, "bf16", 700, workers=workers)
    alone, want = run_scanner(q, x, [a, b], 10, "bf16", 700, workers=workers)
    assert stats.pop("none") == {}
    np.testing.assert_array_equal(scanner.top_i.cpu().numpy(), alone.top_i.cpu().numpy())
    for name in want:
        for key in want[name]:
            np.testing.assert_array_equal(stats[name][key], want[name][key])


def test_scanner_state_round_trip():
    """Checkpointing mid-stream and continuing in a new scanner gives the uninterrupted answer."""
    q, x, groups = near_tie_data()
    first = ExactScanner(q, groups, 10, "bf16", DEVICE)
    first.add_block(x[:200], 0)
    second = ExactScanner(q, groups, 10, "bf16", DEVICE)
    second.load_state(first.state())
    second.add_block(x[200:], 200)
    sims, ids = expected_topk(brute_force(q, x), 10)
    np.testing.assert_array_equal(second.state()["top_i"], ids)
    np.testing.assert_array_equal(second.state()["top_s"], sims)


# ----- workspace ----------------------------------------------------------------------------------------
DIM = 24
WORLD = {"imagenet": ("train", [40, 25, 33]), "web": ("train", [30, 1, 45, 20]),
         "val": ("test", [12, 7]), "sketch": ("test", [9])}


def put(ws: Workspace, name: str, role: str, shards: list[np.ndarray], kind: str = "embeddings") -> None:
    """Register a dataset and write its shards; keys are '<name>-<global row>'."""
    folder = (ws.root.parent / "emb" / name) if kind == "embeddings" else ws.path("embeddings", name)
    ws.register_dataset(name, role, folder, kind)
    start = 0
    for i, emb in enumerate(shards):
        keys = [f"{name}-{start + j}" for j in range(len(emb))]
        store.write_shard(ws.embedding_dir(name), i, emb, pd.DataFrame({"key": keys}))
        start += len(emb)


def build_world(root: Path, seed: int = 0) -> tuple[Workspace, dict[str, np.ndarray]]:
    """Two train sets (a reference and a web set with planted copies and near-copies) and two test sets."""
    rng = np.random.default_rng(seed)
    ws = Workspace.create(root / "ws")
    arrays = {n: unit16(rng.standard_normal((sum(sizes), DIM))) for n, (_, sizes) in WORLD.items()}
    tests = np.concatenate([arrays["val"], arrays["sketch"]])
    web = arrays["web"]
    web[3], web[40], web[70] = tests[0], tests[13], arrays["imagenet"][5]  # sim 1 to a test image; a reference row
    web[31] = nudge(tests[2], rng)  # the 1-row shard: a near-copy
    s_ref = brute_force(tests, arrays["imagenet"]).argmax(axis=1)
    web[50], web[51] = arrays["imagenet"][s_ref[4]], arrays["imagenet"][s_ref[4]]  # margin exactly 0, tied
    web[80] = nudge(arrays["imagenet"][s_ref[5]], rng)
    for i, (name, (role, sizes)) in enumerate(WORLD.items()):
        parts = np.split(arrays[name], np.cumsum(sizes)[:-1])
        put(ws, name, role, parts, kind="embeddings" if i % 2 == 0 else "folder")
    return ws, arrays


@pytest.fixture
def world(tmp_path):
    return build_world(tmp_path)


def run_search(ws, train, tests=("val", "sketch"), **kw):
    kw = {"k": 5, "device": str(DEVICE), "precision": "fp32", "block_rows": 4, **kw}
    return search(ws, train, list(tests), **kw)


def assert_results_exact(ws, arrays, train, k=5, reference="imagenet"):
    x = arrays[train]
    for test in ("val", "sketch"):
        t = arrays[test]
        c = brute_force(t, x)
        sims, ids = expected_topk(c, k)
        test_keys = np.array([f"{test}-{i}" for i in range(len(t))], dtype=object)
        train_keys = np.array([f"{train}-{i}" for i in range(len(x))], dtype=object)
        got = ws.neighbours(test, train, k)
        rows, ranks = np.nonzero(ids >= 0)
        want = pd.DataFrame({"test_key": test_keys[rows], "rank": ranks + 1, "train_key": train_keys[ids[rows, ranks]],
                             "similarity": sims[rows, ranks], "train_id": ids[rows, ranks]})
        pd.testing.assert_frame_equal(got, want, check_dtype=False, check_exact=True)
        nn = ws.nn_similarity(test, train)
        assert list(nn.index) == list(test_keys) and np.array_equal(nn.to_numpy(), c.max(axis=1))
        tm = ws.train_max_similarity(train, test)
        assert list(tm["train_key"]) == list(train_keys)
        assert np.array_equal(tm["max_similarity"].to_numpy(), c.max(axis=0))
        assert list(tm["test_key"]) == list(test_keys[c.argmax(axis=0)])
        res = ws.search_result(test, train)
        assert not res.stale
        if reference and train != reference:
            m = expected_margin(c, brute_force(t, arrays[reference]).max(axis=1))
            assert np.array_equal(res.train_stat(f"margin/{reference}"), m.max(axis=0))
            assert np.array_equal(res.train_stat(f"margin_argmax/{reference}"), m.argmax(axis=0))


@pytest.mark.parametrize(("precision", "block_rows"), [("fp32", 1), ("bf16", 7), ("fp32", 1000), ("bf16", 1000)])
def test_workspace_search_equals_brute_force(world, precision, block_rows):
    ws, arrays = world
    calls = []
    run_search(ws, "imagenet", precision=precision, block_rows=block_rows)
    out = run_search(ws, "web", reference="imagenet", precision=precision, block_rows=block_rows,
                     progress=lambda done, total, desc: calls.append((done, total)))
    assert set(out) == {"val", "sketch"}
    assert calls[-1] == (96, 96) and all(a[0] < b[0] for a, b in itertools.pairwise(calls))
    assert_results_exact(ws, arrays, "imagenet")
    assert_results_exact(ws, arrays, "web")
    margins = ws.search_result("val", "web").train_stat("margin/imagenet")
    assert margins[50] == 0 and margins[51] == 0  # planted copies of a reference neighbour: ties, not removals
    assert not ws.path("search", "web", "_pass").exists()


def test_k_larger_than_train_set_in_workspace(world):
    ws, arrays = world
    put(ws, "tiny", "train", [arrays["web"][:2], arrays["web"][2:3]])
    res = run_search(ws, "tiny", k=5)["val"]
    sims, ids = res.arrays()
    assert (ids[:, 3:] == -1).all() and np.isneginf(sims[:, 3:]).all()
    assert (res.neighbours().groupby("test_key").size() == 3).all()
    arrays["tiny"] = arrays["web"][:3]
    assert_results_exact(ws, arrays, "tiny", reference=None)


def test_empty_train_shard(world):
    """A shard whose images all failed to embed holds 0 rows; statistics skip it."""
    ws, arrays = world
    x = arrays["web"]
    put(ws, "holes", "train", [x[:10], x[:0], x[10:30]])
    run_search(ws, "holes")
    arrays["holes"] = x[:30]
    assert_results_exact(ws, arrays, "holes", reference=None)


# ----- resume -------------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def count_shard_reads(monkeypatch) -> list[tuple[str, int]]:
    """Record (dataset folder name, shard index) for every block read by EmbeddingSet.iter_blocks."""
    reads = []
    original = EmbeddingSet.iter_blocks

    def counted(self, block_rows, shards=None):
        for shard, base, block in original(self, block_rows, shards):
            reads.append((self.root.name, shard.index))
            yield shard, base, block

    monkeypatch.setattr(EmbeddingSet, "iter_blocks", counted)
    return reads


def interrupt_after(rows: int):
    def progress(done, total, desc):
        if done > rows:
            raise Interrupt
    return progress


def stored(ws, train) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for test in ("val", "sketch"):
        res = ws.search_result(test, train)
        out[test] = dict(zip(("sims", "ids"), res.arrays()))
        for name in ("max_sim", "argmax", "margin/imagenet", "margin_argmax/imagenet"):
            out[test][name] = res.train_stat(name)
    return out


def test_interrupted_pass_resumes_without_rereading(tmp_path, monkeypatch):
    fresh, _ = build_world(tmp_path / "fresh")
    run_search(fresh, "imagenet")
    run_search(fresh, "web", reference="imagenet")
    ws, arrays = build_world(tmp_path / "resumed")
    run_search(ws, "imagenet")
    reads = count_shard_reads(monkeypatch)
    with pytest.raises(Interrupt):
        run_search(ws, "web", reference="imagenet", progress=interrupt_after(31))  # during shard 2
    assert {i for _, i in reads} == {0, 1, 2}
    pass_dir = ws.path("search", "web", "_pass")
    assert read_meta(pass_dir)["done"] == [0, 1]  # the top-k and the progress are one file
    assert not list(ws.path("search", "web").rglob("config.json")) and not list(ws.path("search", "web").rglob("neighbours.npz"))
    with pytest.raises(WorkspaceError, match="no completed search"):
        ws.search_result("val", "web")
    reads.clear()
    run_search(ws, "web", reference="imagenet")
    assert {i for _, i in reads} == {2, 3}  # finished shards were not read again
    assert not pass_dir.exists()
    want, got = stored(fresh, "web"), stored(ws, "web")
    for test in want:
        for name in want[test]:
            np.testing.assert_array_equal(got[test][name], want[test][name], err_msg=f"{test} {name}")
    assert_results_exact(ws, arrays, "web")


def test_resume_with_tests_in_other_order(tmp_path):
    """The checkpointed top-k rows follow the test order of the interrupted pass; another order must not reuse it."""
    ws, arrays = build_world(tmp_path)
    with pytest.raises(Interrupt):
        run_search(ws, "web", tests=("val", "sketch"), progress=interrupt_after(31))
    run_search(ws, "web", tests=("sketch", "val"))
    assert_results_exact(ws, arrays, "web", reference=None)


# ----- staleness ----------------------------------------------------------------------------------------
def test_rewritten_shard_is_stale_and_recomputed(world, monkeypatch):
    ws, arrays = world
    run_search(ws, "imagenet")
    run_search(ws, "web", reference="imagenet")
    config = ws.search_result("val", "web").folder / "config.json"
    before = config.read_bytes(), config.stat().st_mtime_ns
    reads = count_shard_reads(monkeypatch)
    run_search(ws, "web", reference="imagenet")  # unchanged inputs: nothing to do
    run_search(ws, "web", reference="imagenet", k=3)  # fewer neighbours than stored: still fresh
    assert reads == [] and (config.read_bytes(), config.stat().st_mtime_ns) == before

    new = unit16(np.random.default_rng(9).standard_normal((45, DIM)))
    put_shard(ws, "web", 2, new, start=31)
    arrays["web"][31:76] = new
    res = ws.search_result("val", "web")
    assert res.stale and any("train set 'web'" in r for r in res.stale_reasons())
    run_search(ws, "web", reference="imagenet")
    assert {i for _, i in reads} == {0, 1, 2, 3}
    assert_results_exact(ws, arrays, "web")


def test_reference_change_propagates(world):
    ws, arrays = world
    run_search(ws, "imagenet")
    run_search(ws, "web", reference="imagenet")
    new = unit16(np.random.default_rng(7).standard_normal((25, DIM)))
    put_shard(ws, "imagenet", 1, new, start=40)
    arrays["imagenet"][40:65] = new
    assert ws.search_result("val", "imagenet").stale
    assert ws.search_result("val", "web").stale_reasons() == ["reference search 'val' vs 'imagenet' is stale"]
    with pytest.raises(WorkspaceError, match=r"reference search 'val' vs 'imagenet' is stale.*--train imagenet"):
        run_search(ws, "web", reference="imagenet")
    run_search(ws, "imagenet")
    reasons = ws.search_result("val", "web").stale_reasons()
    assert reasons == ["reference search 'val' vs 'imagenet' changed"]
    run_search(ws, "web", reference="imagenet")
    assert_results_exact(ws, arrays, "imagenet")
    assert_results_exact(ws, arrays, "web")


def test_test_set_change_is_stale(world):
    ws, arrays = world
    run_search(ws, "web")
    new = unit16(np.random.default_rng(3).standard_normal((7, DIM)))
    put_shard(ws, "val", 1, new, start=12)
    arrays["val"][12:] = new
    assert ws.search_result("val", "web").stale and not ws.search_result("sketch", "web").stale
    run_search(ws, "web")
    assert_results_exact(ws, arrays, "web", reference=None)


def put_shard(ws, name, index, emb, start):
    keys = [f"{name}-{start + j}" for j in range(len(emb))]
    store.write_shard(ws.embedding_dir(name), index, emb, pd.DataFrame({"key": keys}))


# ----- bad inputs ---------------------------------------------------------------------------------------
def no_results(ws, train) -> bool:
    return not list(ws.path("search", train).rglob("config.json"))


def test_shard_of_wrong_dimension(world):
    ws, _arrays = world
    put_shard(ws, "web", 3, unit16(np.ones((20, DIM + 1))), start=76)
    bad = ws.embedding_dir("web") / "img_emb" / "img_emb_3.npy"
    with pytest.raises(DataError, match=re.escape(str(bad)) + r" has dimension 25 but earlier shards have 24"):
        run_search(ws, "web")
    assert no_results(ws, "web")


def test_nan_row_in_train_shard_names_file_and_row(world):
    ws, arrays = world
    run_search(ws, "imagenet")
    bad = arrays["web"][31:76].copy()
    bad[5, 3] = np.nan
    path = store.emb_path(ws.embedding_dir("web"), 2)
    fileio.write_npy(path, bad)
    with pytest.raises(DataError, match=re.escape(str(path)) + r": row 5 holds NaN"):
        run_search(ws, "web", reference="imagenet", block_rows=2)  # row 5 is the second row of a block
    assert no_results(ws, "web")


def test_nan_row_in_test_set_names_file_and_row(world):
    ws, arrays = world
    bad = arrays["val"][12:].copy()
    bad[4, 0] = np.nan
    path = store.emb_path(ws.embedding_dir("val"), 1)
    fileio.write_npy(path, bad)
    with pytest.raises(DataError, match=re.escape(str(path)) + r": row 4 holds NaN"):
        run_search(ws, "web")
    assert no_results(ws, "web")


def test_metadata_row_count_mismatch(world):
    ws, _ = world
    meta = store.meta_path(ws.embedding_dir("web"), 1)
    fileio.write_parquet(meta, pd.DataFrame({"key": ["a", "b"]}))
    with pytest.raises(DataError, match=re.escape(str(meta)) + r" has 2 rows but .*img_emb_1.npy has 1"):
        run_search(ws, "web")
    assert no_results(ws, "web")


def test_missing_embeddings_folder(world, tmp_path):
    ws, _ = world
    ws.register_dataset("ghost", "train", tmp_path / "nowhere", "embeddings")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nowhere" / "img_emb"))):
        run_search(ws, "ghost")
    ws.register_dataset("unembedded", "test", tmp_path / "images", "folder")
    with pytest.raises(DataError, match=re.escape(str(ws.path("embeddings", "unembedded", "img_emb")))):
        run_search(ws, "web", tests=["unembedded"])
    with pytest.raises(WorkspaceError, match=r"no dataset 'nope'.*registered: .*imagenet"):
        run_search(ws, "nope")
    assert no_results(ws, "ghost") and no_results(ws, "web")


def test_test_set_of_other_dimension(world):
    ws, _ = world
    put(ws, "wide", "test", [unit16(np.ones((3, DIM * 2)))])
    with pytest.raises(WorkspaceError, match=r"test set 'wide' has dimension 48 but train set 'web' has 24"):
        run_search(ws, "web", tests=["val", "wide"])
    assert no_results(ws, "web")


def test_missing_reference_and_too_large_k(world):
    ws, _ = world
    with pytest.raises(WorkspaceError, match=r"no completed search of test set 'val' against train set 'imagenet'"):
        run_search(ws, "web", reference="imagenet")
    assert no_results(ws, "web")
    run_search(ws, "web", k=3)
    with pytest.raises(WorkspaceError, match="asked for k=5 .* kept 3"):
        ws.neighbours("val", "web", k=5)
