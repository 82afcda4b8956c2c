"""Exact top-k and similarity-gap throughput on this CPU (or a GPU: --device cuda): our ExactScanner (fp32 / bf16
screen) against faiss IndexFlatIP, chunked torch matmul + topk (the reference code's method) and the machine's matmul
peaks, all in one run; every answer is checked against the canonical brute force float32(float64(q) . float64(x)).
Prints one JSON object; `ratios` holds topk_vs_faiss, topk_fraction_of_bf16_peak and gap_pass_vs_faiss_topk (bf16
screen). On a GPU, faiss runs as GpuIndexFlatIP where the installed faiss has GPU support, and is left out (with a
line in `skipped`) where faiss is missing; the ratios against torch's chunked top-k are reported either way.

    python benchmarks/search_throughput.py [--queries 4000 --train 200000 --ref 20000 --dim 512 --k 10 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from clipsim.search import DEFAULT_BLOCK_ROWS
from clipsim.search.exact import Screen
from clipsim.search.scan import TILE_ELEMENTS, ExactScanner, Group, tile_shape

PEAK_N = 4096  # square matmul for the peaks: 137 GFLOP, long enough to reach steady state, < 1 s per try
GPU_PEAK_N, GPU_PEAK_REPS = 8192, 20  # on a GPU: 22 TFLOP per timed try (~30 ms at an H200's bf16 peak)
CANON_QUERY_CHUNK = 256  # float64 brute force: 256 x 200k x 8 bytes = 410 MB per chunk
TORCH_TRAIN_CHUNK = 65536  # chunked torch baseline: 5000 x 65536 float32 scores = 1.3 GB per chunk
PLANTED = 200  # queries that get near-duplicates in the train set (exact copies, duplicated copies, 1-ulp nudges)
REF_PLANTED = 100  # queries copied into the reference set: s_ref = 1, so their margins are exactly c - 1
MODES = ("topk", "with_train_row_max", "gap_pass")  # what ExactScanner computes besides the top-k (see NOTES)
CPU = torch.device("cpu")
FAISS = {"cpu": "faiss_IndexFlatIP", "cuda": "faiss_GpuIndexFlatIP"}  # the baseline's method name on each device
TORCH_CHUNKED = "torch_chunked_matmul_topk_fp32"


class Clock:
    """Wall and process-CPU seconds of a `with` block. CPU seconds stay honest on a machine shared with other jobs
    when each method runs on one thread (--threads 1); with more, spinning OpenMP threads count too."""

    def __enter__(self):
        _sync()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        _sync()  # a GPU's queued kernels belong to the block that launched them
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def make_data(n_q: int, n_x: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random unit float16 rows; PLANTED queries get copies, duplicated copies and 1-ulp nudged copies in train."""
    rng = np.random.default_rng(seed)
    q = _unit16(rng.standard_normal((n_q, d), dtype=np.float32))
    x = np.empty((n_x, d), np.float16)
    for lo in range(0, n_x, 65536):
        x[lo : lo + 65536] = _unit16(rng.standard_normal((min(65536, n_x - lo), d), dtype=np.float32))
    src = rng.choice(n_q, min(PLANTED, n_q), replace=False)
    near = q[src].copy()
    cols = rng.integers(0, d, len(src))
    near[np.arange(len(src)), cols] = np.nextafter(near[np.arange(len(src)), cols], np.float16(1))
    noisy = _unit16(q[src].astype(np.float32) + 0.05 * rng.standard_normal((len(src), d), dtype=np.float32))
    planted = np.concatenate([q[src], q[src], near, noisy])  # the copy twice: exact ties, lower id must win
    pos = rng.choice(n_x, min(len(planted), n_x), replace=False)
    x[pos] = planted[: len(pos)]
    return q, x


def _unit16(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float16)


def reference_offsets(q: np.ndarray, n_ref: int, seed: int, device: torch.device = CPU) -> np.ndarray:
    """s_ref(t): each query's canonical top-1 similarity in a reference set of n_ref random unit rows, REF_PLANTED of
    them exact copies of queries (the similarity-gap rule's threshold, as `search(reference=...)` reads it)."""
    rng = np.random.default_rng(seed + 1)
    ref = _unit16(rng.standard_normal((n_ref, q.shape[1]), dtype=np.float32))
    copies = rng.choice(len(q), min(REF_PLANTED, len(q), n_ref), replace=False)
    ref[rng.choice(n_ref, len(copies), replace=False)] = q[copies]
    ref64 = _float64(ref, device)
    return torch.cat([_canon(q[lo : lo + CANON_QUERY_CHUNK], ref64, device).amax(dim=1)
                      for lo in range(0, len(q), CANON_QUERY_CHUNK)]).cpu().numpy()


def _float64(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(device).double()


def _canon(q: np.ndarray, x64: torch.Tensor, device: torch.device) -> torch.Tensor:
    """float32(float64(q) @ float64(x).T) on `device`. Every product of two float16 values is a multiple of 2^-48, and
    for rows of norm <= 1 every partial sum stays below 2^5: each is exact in float64, so any summation order (numpy's,
    a GPU's) gives these bits."""
    return (_float64(q, device) @ x64.T).float()


def canonical(q: np.ndarray, x: np.ndarray, k: int, s_ref: np.ndarray, device: torch.device = CPU) -> dict:
    """Canonical top-k (ties -> lower id), per-train-row max / first argmax, and margin max / first argmax with
    margin = float32(float64(c) - float64(s_ref)), from float64 products (on `device`)."""
    x64 = _float64(x, device)
    ref64 = torch.from_numpy(np.asarray(s_ref, np.float32)).to(device).double()
    sims, ids = [], []
    rows = {name: [torch.full((len(x),), -torch.inf, device=device), torch.zeros(len(x), dtype=torch.int64,
                                                                                  device=device)]
            for name in ("max", "margin")}
    _sync()
    t0 = time.perf_counter()
    for lo in range(0, len(q), CANON_QUERY_CHUNK):
        c = _canon(q[lo : lo + CANON_QUERY_CHUNK], x64, device)
        s, i = _stable_topk(c, k)
        sims.append(s)
        ids.append(i)
        margin = (c.double() - ref64[lo : lo + len(c), None]).float()
        for name, v in (("max", c), ("margin", margin)):
            m, a = _first_max(v)
            take = m > rows[name][0]  # later chunks hold higher query rows: replace only when strictly greater
            rows[name] = [torch.where(take, m, rows[name][0]), torch.where(take, a + lo, rows[name][1])]
    _sync()
    seconds = time.perf_counter() - t0
    out = {"sims": torch.cat(sims), "ids": torch.cat(ids), "row_max": rows["max"][0], "row_arg": rows["max"][1],
           "margin_max": rows["margin"][0], "margin_arg": rows["margin"][1]}
    return {**{key: v.cpu().numpy() for key, v in out.items()}, "seconds": seconds}


def _first_max(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column maxima of v and the first row holding each (whatever order a device's argmax breaks ties in)."""
    m = v.amax(dim=0)
    rows = torch.arange(len(v), device=v.device)[:, None].expand_as(v)
    return m, torch.where(v == m, rows, len(v)).amin(dim=0)


def _stable_topk(c: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row ordered by (-sim, id): every entry >= the k-th value is a candidate, then stable sorts."""
    kth = torch.topk(c, k, dim=1).values[:, -1]
    rows, cols = torch.nonzero(c >= kth[:, None], as_tuple=True)  # row-major: by row, then id
    vals = c[rows, cols]
    order = torch.sort(-vals, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]  # by row, then -sim, then id
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = torch.searchsorted(rows, torch.arange(len(c), device=c.device))
    take = (first[:, None] + torch.arange(k, device=c.device)[None, :]).ravel()
    return vals[take].reshape(len(c), k), cols[take].reshape(len(c), k)


def peaks(device: torch.device = CPU) -> dict:
    """The matmul peaks of `device` (see cpu_peaks and gpu_peaks)."""
    return cpu_peaks() if device.type == "cpu" else gpu_peaks(device)


def gpu_peaks(device: torch.device) -> dict:
    """Best-of-3 FLOP/s of GPU_PEAK_REPS GPU_PEAK_N^3 matmuls into a preallocated output: fp32 (TF32 off, as the
    scanner's fp32 screen runs), bf16, fp16, and int8 -> int32. Keys as cpu_peaks'; the CPU-only ones are None."""
    Screen("fp32", device, 8)  # the scanner's matmul settings: no TF32, no reduced-precision reductions
    n, reps = GPU_PEAK_N, GPU_PEAK_REPS
    gen = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=gen) for _ in range(2))
    flops = 2.0 * n**3 * reps

    def rate(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, mm=torch.mm) -> float | str:
        def run() -> None:
            for _ in range(reps):
                mm(x, y, out=out)
        try:
            return round(flops / _best(run)[0] / 1e9, 1)
        except RuntimeError as err:  # a kernel this GPU or torch lacks: say so, keep the other figures
            return f"failed: {str(err).splitlines()[0]}"

    i8a, i8b = (torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device, generator=gen) for _ in range(2))
    out = {
        "shape": [n, n, n], "reps_per_try": reps, "device": torch.cuda.get_device_name(device),
        "numpy_sgemm_gflops": None,
        "torch_fp32_matmul_gflops": rate(a, b, torch.empty(n, n, device=device)),
        "torch_bf16_matmul_gflops": rate(a.bfloat16(), b.bfloat16(), torch.empty(n, n, dtype=torch.bfloat16,
                                                                                  device=device)),
        "torch_fp16_matmul_gflops": rate(a.half(), b.half(), torch.empty(n, n, dtype=torch.float16, device=device)),
        # cuBLASLt's int8 GEMM wants the second operand column-major: the transposed view of a row-major one
        "torch_int8_matmul_gops": rate(i8a, i8b.T, torch.empty(n, n, dtype=torch.int32, device=device), torch._int_mm),
        "torch_bf16_matmul_gflops_per_cpu_second": None,
    }
    return out


def cpu_peaks() -> dict:
    """Best-of-3 GFLOP/s of a PEAK_N^3 matmul into a preallocated output (no page faults in the timing, as the
    scanner's reused tile buffers): numpy float32 (OpenBLAS), torch float32, torch bf16. The bf16 peak is the better
    of torch's own threading and the scanner's (one single-threaded matmul per worker, column halves in parallel)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((PEAK_N, PEAK_N), dtype=np.float32)
    b = rng.standard_normal((PEAK_N, PEAK_N), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ha, hb = ta.bfloat16(), tb.bfloat16()
    out32, out16 = torch.empty(PEAK_N, PEAK_N), torch.empty(PEAK_N, PEAK_N, dtype=torch.bfloat16)
    flops = 2.0 * PEAK_N**3
    workers = torch.get_num_threads()
    parts = [(ha, hb[lo : lo + PEAK_N // workers].T, torch.empty(PEAK_N, PEAK_N // workers, dtype=torch.bfloat16))
             for lo in range(0, PEAK_N - PEAK_N % workers, PEAK_N // workers)]
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        per_worker = _best(lambda: list(pool.map(lambda abo: torch.mm(abo[0], abo[1], out=abo[2]), parts)))
    threaded = _best(lambda: torch.mm(ha, hb, out=out16))
    # int8 x int8 -> int32 (VNNI where the CPU has it): the fastest screen this torch offers, if an exact bound for it
    # left the candidates few; its peak over bf16's is the most an int8 screen could gain
    i8a, i8b = (torch.randint(-127, 128, (PEAK_N, PEAK_N), dtype=torch.int8, generator=torch.Generator().manual_seed(s))
                for s in (1, 2))
    out_i32 = torch.empty(PEAK_N, PEAK_N, dtype=torch.int32)
    int8 = _best(lambda: torch._int_mm(i8a, i8b, out=out_i32))
    return {
        "shape": [PEAK_N, PEAK_N, PEAK_N],
        "numpy_sgemm_gflops": round(flops / _best(lambda: np.matmul(a, b, out=out32.numpy()))[0] / 1e9, 1),
        "torch_fp32_matmul_gflops": round(flops / _best(lambda: torch.mm(ta, tb, out=out32))[0] / 1e9, 1),
        "torch_bf16_matmul_gflops": round(flops / min(threaded[0], per_worker[0]) / 1e9, 1),
        "torch_bf16_matmul_gflops_torch_threads": round(flops / threaded[0] / 1e9, 1),
        "torch_bf16_matmul_gflops_one_per_worker": round(flops / per_worker[0] / 1e9, 1),
        "torch_int8_matmul_gops": round(flops / int8[0] / 1e9, 1),
        # per CPU second (as the methods' cpu_seconds): what load on a shared machine does not distort
        "torch_bf16_matmul_gflops_per_cpu_second": round(flops / min(threaded[1], per_worker[1]) / 1e9, 1),
    }


def _best(fn, tries: int = 3) -> tuple[float, float]:
    """(wall, process CPU) seconds of fn(), each the least of `tries` runs after a warm-up (a GPU synchronised)."""
    with Clock():
        fn()  # warm-up: thread pools, kernel selection
    times = []
    for _ in range(tries):
        with Clock() as clock:
            fn()
        times.append((clock.wall, clock.cpu))
    return min(t[0] for t in times), min(t[1] for t in times)


def faiss_missing(device: torch.device) -> str | None:
    """Why faiss cannot run on `device` here, or None. faiss is a requirement on a CPU; a GPU machine may lack it."""
    try:
        import faiss
    except ImportError:
        if device.type == "cpu":
            raise
        return "faiss is not installed here"
    if device.type != "cpu" and not hasattr(faiss, "GpuIndexFlatIP"):
        return f"faiss {faiss.__version__} here has no GPU support"
    return None


def run_faiss(q: np.ndarray, x: np.ndarray, k: int, device: torch.device = CPU
              ) -> tuple[np.ndarray, np.ndarray, Clock]:
    import faiss

    resources = None
    if device.type == "cpu":
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        resources, config = faiss.StandardGpuResources(), faiss.GpuIndexFlatConfig()  # resources live as long
        config.device = device.index or 0
        index = faiss.GpuIndexFlatIP(resources, x.shape[1], config)
    index.add(x.astype(np.float32))
    q32 = q.astype(np.float32)
    with Clock() as clock:
        sims, ids = index.search(q32, k)
    del index, resources
    return sims, ids, clock


def run_torch_chunked(q: np.ndarray, x: np.ndarray, k: int, device: torch.device = CPU
                      ) -> tuple[np.ndarray, np.ndarray, Clock]:
    """Reference-code method: float32 matmul per train chunk, topk, merge into the running top-k."""
    tq = torch.from_numpy(q.astype(np.float32)).to(device)
    best_s = torch.full((len(q), k), -torch.inf, device=device)
    best_i = torch.full((len(q), k), -1, dtype=torch.int64, device=device)
    with Clock() as clock:
        for lo in range(0, len(x), TORCH_TRAIN_CHUNK):
            s = tq @ torch.from_numpy(x[lo : lo + TORCH_TRAIN_CHUNK].astype(np.float32)).to(device).T
            v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
            v, j = torch.topk(torch.cat([best_s, v], 1), k, dim=1)
            best_i = torch.cat([best_i, i + lo], 1).gather(1, j)
            best_s = v
    return best_s.cpu().numpy(), best_i.cpu().numpy(), clock


def run_scanner(q, x, k: int, precision: str, block_rows: int, mode: str, s_ref: np.ndarray, kernel: str = "auto",
                device: torch.device = CPU):
    """One ExactScanner pass over x in blocks: (top_s, top_i, Clock, rechecked, per-row stats concatenated)."""
    offsets = {"ref": s_ref} if mode == "gap_pass" else None
    scanner = ExactScanner(q, [Group("bench", 0, len(q), offsets)], k, precision, device,
                           row_stats=mode != "topk", kernel=kernel)
    parts = []
    with Clock() as clock:
        for lo in range(0, len(x), block_rows):
            parts.append(scanner.add_block(x[lo : lo + block_rows], lo)["bench"])
    state = scanner.state()
    stats = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return state["top_s"], state["top_i"], clock, scanner.rechecked, stats


def screen_only(q: np.ndarray, x: np.ndarray, precision: str, block_rows: int, device: torch.device = CPU) -> float:
    """Seconds of the scanner's low-precision products alone: same blocks, tile shapes, reused buffers and tile
    workers (one column range per thread, single-threaded inside; on a GPU one stream); no bucket maxima, re-check
    or top-k. Each block's copy to the device and conversion count, as in the scan."""
    screen = Screen(precision, device, q.shape[1])
    q_lo = screen.prepare(torch.as_tensor(q).to(device))[0]
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    free = [torch.zeros(TILE_ELEMENTS, dtype=screen.tile_dtype, device=device)  # touched: no page faults
            for _ in range(workers)]

    def products(xs: torch.Tensor, rows: int) -> None:
        out = free.pop()
        for qlo in range(0, len(q), rows):
            qs = q_lo[qlo : qlo + rows]
            screen.product(qs, xs, out=out[: len(qs) * len(xs)].view(len(qs), len(xs)))
        free.append(out)

    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool, Clock() as clock:
        for lo in range(0, len(x), block_rows):
            x_lo = screen.prepare(torch.as_tensor(x[lo : lo + block_rows]).to(device))[0]
            rows, cols = tile_shape(len(q), len(x_lo))
            if device.type == "cpu":
                list(pool.map(lambda c0, r=rows, c=cols, xb=x_lo: products(xb[c0 : c0 + c], r),
                              range(0, len(x_lo), cols)))
            else:
                for c0 in range(0, len(x_lo), cols):
                    products(x_lo[c0 : c0 + cols], rows)
    return clock.wall


def compare(sims, ids, canon: dict, q: np.ndarray, x: np.ndarray, flops: float, clock: Clock) -> dict:
    """Throughput and agreement of one method's top-k with the canonical one."""
    ids = np.asarray(ids, np.int64)
    exact_of_returned = np.einsum("ij,ikj->ik", q.astype(np.float64), x[ids].astype(np.float64)).astype(np.float32)
    return {
        "seconds": round(clock.wall, 3),
        "cpu_seconds": round(clock.cpu, 3),
        "effective_gflops": round(flops / clock.wall / 1e9, 1),
        "rows_ids_differ": int((ids != canon["ids"]).any(axis=1).sum()),
        "rows_id_sets_differ": int(sum(set(a) != set(b) for a, b in zip(ids, canon["ids"]))),
        "entries_sims_differ_from_canonical_topk": int((np.asarray(sims) != canon["sims"]).sum()),
        "entries_sim_not_canonical_for_returned_id": int((np.asarray(sims) != exact_of_returned).sum()),
        "max_abs_sim_error": float(np.abs(np.asarray(sims, np.float64) - canon["sims"]).max()),
    }


def machine(device: torch.device = CPU) -> dict:
    import importlib.metadata

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    out = {
        "cpu_count": os.cpu_count(), "cpu_model": model or platform.processor(),
        "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "faiss": version("faiss-gpu") or version("faiss-cpu"), "numba": version("numba"),
        "device": str(device), "load_average_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    if faiss_missing(device) is None:
        import faiss

        out["faiss_threads"] = faiss.omp_get_max_threads()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=4000)
    p.add_argument("--train", type=int, default=200_000)
    p.add_argument("--ref", type=int, default=20_000, help="reference rows that define s_ref for the gap pass")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--block-rows", type=int, default=DEFAULT_BLOCK_ROWS)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="threads for torch, faiss and BLAS (default: theirs)")
    p.add_argument("--recheck-kernels", type=lambda v: [k for k in v.split(",") if k], default=[],
                   help="also run the gap pass with these exact re-check kernels (e.g. 'torch,compiled'; the default "
                        "'auto' compiles large CPU calls): exact_scanner_<precision>_gap_pass_recheck_<kernel>")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of every method, interleaved; each reports its fastest (a shared machine's load swings)")
    p.add_argument("--device", default="cpu", help="'cpu' or a GPU ('cuda', 'cuda:1'): where every method runs")
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device!r} is no torch device: use 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is visible here; run on a GPU machine or use --device cpu")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device}: this benchmark runs on 'cpu' or 'cuda'")
    if args.threads:
        import faiss
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)
    report = {"config": vars(args), "machine": machine(device)}
    q, x = make_data(args.queries, args.train, args.dim, args.seed)
    s_ref = reference_offsets(q, args.ref, args.seed, device)
    flops = 2.0 * args.queries * args.train * args.dim
    report["peak"] = peaks(device)
    canon = canonical(q, x, args.k, s_ref, device)
    report["canonical_float64"] = {"seconds": round(canon["seconds"], 3),
                                   "gflops": round(flops / canon["seconds"] / 1e9, 1)}
    methods = report["methods"] = {}
    runs: dict[str, list] = {}  # method -> [(wall, cpu, outputs)] over the repeats
    screens: dict[str, list[float]] = {}
    no_faiss = faiss_missing(device)
    report["skipped"] = [f"faiss: {no_faiss}"] if no_faiss else []
    for _ in range(args.repeats):  # interleaved, so that each method gets the machine's quiet moments as often
        if not no_faiss:
            sims, ids, clock = run_faiss(q, x, args.k, device)
            runs.setdefault(FAISS[device.type], []).append((clock, (sims, ids)))
        sims, ids, clock = run_torch_chunked(q, x, args.k, device)
        runs.setdefault(TORCH_CHUNKED, []).append((clock, (sims, ids)))
        for precision in args.precisions.split(","):
            screens.setdefault(precision, []).append(screen_only(q, x, precision, args.block_rows, device))
            for mode, kernel in [(m, "auto") for m in MODES] + [("gap_pass", kn) for kn in args.recheck_kernels]:
                sims, ids, clock, rechecked, stats = run_scanner(q, x, args.k, precision, args.block_rows, mode, s_ref,
                                                                 kernel, device)
                name = f"exact_scanner_{precision}_{mode}" + ("" if kernel == "auto" else f"_recheck_{kernel}")
                runs.setdefault(name, []).append((clock, (sims, ids, rechecked, stats)))
    for name, tries in runs.items():
        clock, found = min(tries, key=lambda t: t[0].wall)  # best of the repeats; every repeat gives the same answer
        out = methods[name] = compare(found[0], found[1], canon, q, x, flops, clock)
        out["seconds_each_repeat"] = [round(t[0].wall, 3) for t in tries]
        if name.startswith("exact_scanner_"):
            rechecked, stats = found[2], found[3]
            out["screen_products_only_seconds"] = round(min(screens[name.split("_")[2]]), 3)
            out["rechecked_pairs"] = rechecked
            out["rechecked_per_train_row"] = round(rechecked / args.train, 3)
            checks = {"max_sim": "row_max", "argmax": "row_arg", "margin/ref": "margin_max",
                      "margin_argmax/ref": "margin_arg"}
            for stat, key in checks.items():
                if stat in stats:
                    out[f"train_rows_{stat.replace('/ref', '')}_differ"] = int((stats[stat] != canon[key]).sum())
    report["ratios"] = _ratios(report)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["notes"] = NOTES
    return report


def _ratios(report: dict) -> dict:
    m, peak = report["methods"], report["peak"]
    faiss = next((m[name] for name in FAISS.values() if name in m), None)  # None: not run on this device
    chunked = m[TORCH_CHUNKED]
    out = {}
    for name, r in m.items():
        if name.startswith("exact_scanner"):
            short = name.replace("exact_scanner_", "")
            if faiss:
                out[short + "_vs_faiss_topk"] = round(faiss["seconds"] / r["seconds"], 3)
            out[short + "_vs_torch_chunked_topk"] = round(chunked["seconds"] / r["seconds"], 3)
    if "exact_scanner_bf16_topk" in m:
        topk, gap = m["exact_scanner_bf16_topk"], m["exact_scanner_bf16_gap_pass"]
        if faiss:
            out["topk_vs_faiss"] = round(faiss["seconds"] / topk["seconds"], 3)
            out["gap_pass_vs_faiss_topk"] = round(faiss["seconds"] / gap["seconds"], 3)
            # the top-k's ceiling with this screen: its products alone, before any filter or re-check
            out["bf16_products_alone_vs_faiss"] = round(faiss["seconds"] / topk["screen_products_only_seconds"], 3)
        out["topk_vs_torch_chunked"] = round(chunked["seconds"] / topk["seconds"], 3)
        out["gap_pass_vs_torch_chunked_topk"] = round(chunked["seconds"] / gap["seconds"], 3)
        out["topk_fraction_of_bf16_peak"] = round(topk["effective_gflops"] / peak["torch_bf16_matmul_gflops"], 3)
        if isinstance(peak["torch_int8_matmul_gops"], float):
            out["int8_peak_over_bf16_peak"] = round(peak["torch_int8_matmul_gops"] / peak["torch_bf16_matmul_gflops"],
                                                    3)
        if faiss and peak["torch_bf16_matmul_gflops_per_cpu_second"]:  # a CPU run
            out["from_cpu_seconds"] = {"topk_vs_faiss": round(faiss["cpu_seconds"] / topk["cpu_seconds"], 3),
                                       "gap_pass_vs_faiss_topk": round(faiss["cpu_seconds"] / gap["cpu_seconds"], 3),
                                       "topk_fraction_of_bf16_peak": round(
                                           topk["effective_gflops"] * topk["seconds"] / topk["cpu_seconds"]
                                           / peak["torch_bf16_matmul_gflops_per_cpu_second"], 3)}
        out["targets_met"] = {"topk_fraction_of_bf16_peak >= 0.7": out["topk_fraction_of_bf16_peak"] >= 0.7}
        if faiss:
            out["targets_met"] |= {"topk_vs_faiss >= 2": out["topk_vs_faiss"] >= 2,
                                   "gap_pass_vs_faiss_topk >= 1.5": out["gap_pass_vs_faiss_topk"] >= 1.5}
    if faiss:
        fp32_peak = peak["numpy_sgemm_gflops"] or peak["torch_fp32_matmul_gflops"]  # a GPU has no numpy sgemm
        out["faiss_fraction_of_sgemm_peak"] = round(faiss["effective_gflops"] / fp32_peak, 3)
    return out


NOTES = [
    ("effective_gflops = 2 * queries * train * dim / seconds for every method, whatever it computes internally; "
     "every *_vs_faiss ratio is faiss's top-k seconds over the method's seconds, measured in this run."),
    ("exact_scanner_*_topk: ExactScanner.add_block computing the exact top-k only (what faiss computes); "
     "*_with_train_row_max also every train row's exact max similarity and argmax over the queries; *_gap_pass "
     "(what `search(reference=...)` runs for the similarity-gap rule) also every train row's exact max margin "
     "float32(c - s_ref) and its argmax, s_ref being each query's top-1 in a --ref row reference set. All in the "
     "same pass as the top-k, all checked here (train_rows_*_differ must be 0) - work faiss does not do."),
    ("canonical similarity = float32(float64(q) . float64(x)) of the float16 embeddings, ties to the lower id; "
     "faiss and torch accumulate in float32, so their sims can differ from it in the last ulps and their order "
     "(and ids at near-ties or exact ties, torch.topk breaks ties arbitrarily) can differ; counts are reported as is."),
    ("screen_products_only_seconds: the scanner's own low-precision matmuls over the same blocks and tiles, "
     "timed alone; seconds minus it is the cost of bucket maxima, exact re-checks, top-k merging and per-row "
     "statistics. peak: matmuls into preallocated outputs, as the scanner's tiles are."),
    ("cpu_seconds: process CPU time of the method; on a machine shared with other jobs, run with --threads 1 and "
     "read ratios.from_cpu_seconds (with more threads, OpenMP threads spinning in barriers count as CPU time)."),
    ("Times include converting float16 blocks to the screen precision; faiss gets its float32 index prebuilt "
     "(index.add not timed)."),
    ("--device cuda: every method runs on the GPU, the train blocks copied from host memory as the scan copies them "
     "(the copies are timed; faiss's index is prebuilt on the GPU); times wait for the GPU's queue to drain; "
     "cpu_seconds mean little there. The canonical answers come from float64 products on the GPU, bit-identical "
     "to the CPU's (each partial sum is exact). ratios.*_vs_torch_chunked* compare with torch's chunked fp32 top-k "
     "on the same device, for when faiss has no GPU support there."),
]


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
