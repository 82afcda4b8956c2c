"""Full per-sample similarity-gap statistics at web scale through `clipsim.search.search`, as a user runs it:
1M web x 5k test images (dim 512, random unit float16 shards in a temporary workspace), the reference search
first, then the web search with margins, once per screen precision; seconds, effective GFLOP/s, peak memory,
the scanner's cost breakdown, and exact equality with float64 brute force on random rows. Prints one JSON object.

    python benchmarks/gap_statistics.py [--web 1000000 --tests 5000 --dim 512 --ref 100000 --precisions fp32,bf16]
    python benchmarks/gap_statistics.py --device cuda --precisions fp16,bf16   # on a GPU machine
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # run from a checkout without installing

from search_throughput import Clock, peaks, screen_only

from clipsim import Workspace, store
from clipsim.search import search
from clipsim.search.scan import ExactScanner, Group

PLANTED = 500  # test images with exact copies, one-ulp nudges and noisy copies in web (and copies in ref)
GEN_ROWS = 65536  # rows generated at a time (128 MB of float32 at dim 512)
BREAKDOWN_ROWS = 131072  # web rows (two blocks) re-scanned with ExactScanner directly for the cost breakdown


def _unit16(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float16)


def build(root: Path, args) -> Workspace:
    """Workspace with test set `bench`, reference train set `ref` and `web`, all kind 'embeddings' (used in place)."""
    rng = np.random.default_rng(args.seed)
    ws = Workspace.create(root / "ws")
    tests = _unit16(rng.standard_normal((args.tests, args.dim), dtype=np.float32))
    src = rng.choice(args.tests, min(PLANTED, args.tests), replace=False)
    near = tests[src].copy()
    near[np.arange(len(src)), rng.integers(0, args.dim, len(src))] += np.float16(2.0**-11)
    noisy = _unit16(tests[src].astype(np.float32) + 0.1 * rng.standard_normal((len(src), args.dim), dtype=np.float32))
    planted = {"ref": tests[src[: len(src) // 2]], "web": np.concatenate([tests[src], near, noisy])}
    _write(ws, "bench", "test", tests[None], args)
    for name, n in (("ref", args.ref), ("web", args.web)):
        shards = []
        for lo in range(0, n, args.shard_rows):
            hi = min(n, lo + args.shard_rows)
            shards.append(np.concatenate([_unit16(rng.standard_normal((min(GEN_ROWS, hi - g), args.dim),
                                                                      dtype=np.float32)) for g in range(lo, hi, GEN_ROWS)]))
        flat_pos = rng.choice(n, min(n, len(planted[name])), replace=False)
        for p, row in zip(flat_pos, planted[name]):
            shards[p // args.shard_rows][p % args.shard_rows] = row
        _write(ws, name, "train", shards, args)
    return ws


def _write(ws: Workspace, name: str, role: str, shards, args) -> None:
    for i, rows in enumerate(shards):
        keys = pd.DataFrame({"key": [f"{name}{i * args.shard_rows + j:08d}" for j in range(len(rows))]})
        store.write_shard(ws.path("src", name), i, rows, keys)
    ws.register_dataset(name, role, ws.path("src", name), "embeddings")


def _vm_hwm_mb() -> float:
    """Peak resident set of this process image (VmHWM; unlike ru_maxrss not inherited from the forking parent)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def child(argv: list[str]) -> dict:
    """One search in a fresh process: seconds, peak memory and search's logged estimate."""
    p = argparse.ArgumentParser()
    for name in ("--workspace", "--train", "--reference", "--precision", "--device"):
        p.add_argument(name)
    p.add_argument("--k", type=int)
    p.add_argument("--block-rows", type=int)
    a = p.parse_args(argv)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("clipsim").addHandler(handler)
    logging.getLogger("clipsim").setLevel(logging.INFO)
    ws = Workspace.open(a.workspace)
    before = _vm_hwm_mb()
    t0 = time.perf_counter()
    search(ws, a.train, ["bench"], k=a.k, reference=a.reference or None, precision=a.precision, device=a.device,
           block_rows=a.block_rows, force=True)
    seconds = time.perf_counter() - t0
    estimate = next((line for line in lines if "memory estimate" in line), "")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(_vm_hwm_mb()), "rss_before_search_mb": round(before),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "logged_memory_estimate": estimate,
            "logged_estimate_gb": float(estimate.split(": ")[1].split(" GB")[0]) if estimate else None}


def run_child(ws: Workspace, train: str, reference: str, precision: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--workspace", str(ws.root), "--train", train, "--reference", reference,
           "--precision", precision, "--k", str(args.k), "--block-rows", str(args.block_rows), "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def check(ws: Workspace, args, rng: np.random.Generator) -> dict:
    """Exact equality with float64 brute force: per-row statistics of random web rows, top-k of random queries."""
    q = ws.embeddings("bench").all()
    q64 = q.astype(np.float64)
    res = ws.search_result("bench", "web")
    s_ref = ws.search_result("bench", "ref").arrays()[0][:, 0]
    web = ws.embeddings("web")
    rows = np.sort(rng.choice(web.count, min(args.check_rows, web.count), replace=False))
    c = (q64 @ web.rows(rows).astype(np.float64).T).astype(np.float32)  # (tests, rows) canonical similarities
    margin = (c.astype(np.float64) - s_ref.astype(np.float64)[:, None]).astype(np.float32)
    want = {"max_sim": c.max(0), "argmax": c.argmax(0), "margin/ref": margin.max(0), "margin_argmax/ref": margin.argmax(0)}
    out = {"web_rows_checked": len(rows)}
    for name, w in want.items():
        out[f"rows_{name.replace('/', '_')}_differ"] = int((res.train_stat(name)[rows] != w).sum())
    queries = rng.choice(len(q), min(args.check_queries, len(q)), replace=False)
    full = np.concatenate([(q64[queries] @ block.astype(np.float64).T).astype(np.float32)
                           for _, _, block in web.iter_blocks(args.block_rows)], axis=1)
    ids = np.argsort(-full, axis=1, kind="stable")[:, : args.k]  # ties -> lower id
    sims, got_ids = res.arrays()
    out["queries_checked"] = len(queries)
    out["query_topk_ids_differ"] = int((got_ids[queries] != ids).any(axis=1).sum())
    out["query_topk_sims_differ"] = int((sims[queries] != np.take_along_axis(full, ids, 1)).sum())
    ref_full = np.concatenate([(q64[queries] @ b.astype(np.float64).T).astype(np.float32)
                               for _, _, b in ws.embeddings("ref").iter_blocks(args.block_rows)], axis=1)
    out["query_s_ref_differ"] = int((s_ref[queries] != ref_full.max(1)).sum())
    return out


def fingerprint(ws: Workspace) -> str:
    """Digest of everything the web search stored (equal across precisions when both are exact)."""
    import hashlib

    res = ws.search_result("bench", "web")
    h = hashlib.sha256()
    for a in (*res.arrays(), *(res.train_stat(n) for n in ("max_sim", "argmax", "margin/ref", "margin_argmax/ref"))):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def breakdown(ws: Workspace, precision: str, args) -> dict:
    """ExactScanner alone on the first BREAKDOWN_ROWS web rows with the benchmark's margins: product share, re-checks."""
    q = ws.embeddings("bench").all()
    s_ref = ws.search_result("bench", "ref").arrays()[0][:, 0]
    blocks = ws.embeddings("web").iter_blocks(args.block_rows)
    x = np.concatenate([b for _, _, b in itertools.islice(blocks, max(1, BREAKDOWN_ROWS // args.block_rows))])
    device = torch.device(args.device)
    scanner = ExactScanner(q, [Group("bench", 0, len(q), {"ref": s_ref})], args.k, precision, device)
    with Clock() as clock:
        for lo in range(0, len(x), args.block_rows):
            scanner.add_block(x[lo : lo + args.block_rows], lo)
    full = clock.wall
    products = screen_only(q, x, precision, args.block_rows, device)
    flops = 2.0 * len(q) * len(x) * q.shape[1]
    return {"rows": len(x), "seconds": round(full, 3), "screen_products_only_seconds": round(products, 3),
            "product_share": round(products / full, 3), "screen_gflops": round(flops / products / 1e9, 1),
            "rechecked_pairs": scanner.rechecked, "rechecked_pairs_per_train_row": round(scanner.rechecked / len(x), 3),
            "other_us_per_train_row": round((full - products) / len(x) * 1e6, 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--web", type=int, default=1_000_000)
    p.add_argument("--tests", type=int, default=5000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ref", type=int, default=100_000, help="rows of the reference train set (ImageNet-train role)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--shard-rows", type=int, default=100_000)
    p.add_argument("--block-rows", type=int, default=65536)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--check-rows", type=int, default=2000)
    p.add_argument("--check-queries", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda': where the searches and the breakdown run")
    args = p.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        p.error(f"--device {args.device!r}: use 'cpu' or 'cuda'")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible here; run on a GPU machine or use --device cpu")
    report = {"config": vars(args), "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                                "device": args.device, "load_average_at_start": list(os.getloadavg())}}
    if args.device == "cuda":
        report["machine"]["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory(prefix="clipsim-gap-") as tmp:
        t0 = time.perf_counter()
        ws = build(Path(tmp), args)
        report["build_seconds"] = round(time.perf_counter() - t0, 1)
        report["web_bytes_per_row"] = round(sum(s.emb.stat().st_size for s in ws.embeddings("web").shards) / args.web, 2)
        report["reference_search"] = run_child(ws, "ref", "", "auto", args)
        flops = 2.0 * args.tests * args.web * args.dim
        runs = report["runs"] = {}
        for precision in args.precisions.split(","):
            run = runs[precision] = run_child(ws, "web", "ref", precision, args)
            run["effective_gflops"] = round(flops / run["seconds"] / 1e9, 1)
            run["check"] = check(ws, args, np.random.default_rng(args.seed + 1))
            run["results_digest"] = fingerprint(ws)
            run["breakdown"] = breakdown(ws, precision, args)
    report["peak"] = peaks(torch.device(args.device))
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["notes"] = NOTES
    return report


NOTES = [
    ("Each search runs in its own process: peak_rss_mb is its peak resident set (VmHWM; torch and clipsim imports "
    "included, see rss_before_search_mb). ru_maxrss_mb is getrusage's value, which Linux carries over from the "
    "parent at fork+exec (this script's parent holds the generated data), so it overstates; logged_memory_estimate "
    "is search's own estimate of its working set."),
    ("effective_gflops = 2 * tests * web * dim / seconds of the whole search call (reading shards, the screen, "
    "exact re-checks, top-k, per-row max and margin, writing the statistics)."),
    ("check: float64 brute force on random web rows (max, argmax, margin, margin argmax) and on random queries "
    "(top-k by (-sim, id), s_ref); every *_differ count must be 0. results_digest must agree across precisions."),
    ("breakdown: ExactScanner alone on the first web blocks with the same margins; product_share is the "
    "fraction of time in the low-precision products, other_us_per_train_row the rest (exact re-checks, top-k "
    "merge, per-row max and margin reductions); rechecked_pairs_per_train_row feeds projection.py."),
]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(sys.argv[2:])))
    else:
        print(json.dumps(main(), indent=2))
