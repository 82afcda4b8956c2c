"""Exact search over a workspace: stream one train set's shards once against all test sets, persist, resume.

For each (test, train) pair the pass stores `search/<train>/<test>/neighbours.npz` (top-k sims and global
train ids per test image), per-shard train-side statistics `stats/shard_<i>.npz` (each train sample's max
similarity to the test set, its argmax and, given a reference set, its largest margin over s_ref(t)),
and `config.json` last, which marks the result complete and fingerprints its inputs.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError
from clipsim.exact import default_precision, resolve_device
from clipsim.scan import TILE_ELEMENTS, ExactScanner, Group

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
DEFAULT_BLOCK_ROWS = 65536  # one block of 640-d float16 is 80 MB; the product tile is bounded separately


def _digest(*parts) -> str:
    return hashlib.sha256(fileio.json_bytes(parts)).hexdigest()[:16]


@dataclass
class SearchResult:
    """A completed exact search of one test set against one train set."""

    ws: object
    test: str
    train: str
    folder: Path
    config: dict

    @classmethod
    def load(cls, ws, test: str, train: str) -> "SearchResult":
        """Load the result; raises WorkspaceError naming the command to run when it is missing."""
        folder = ws.path("search", train, test)
        if not (folder / "config.json").exists():
            raise WorkspaceError(
                f"no completed search of test set {test!r} against train set {train!r} in {ws.root}; run "
                f"`python -m clipsim search --workspace {ws.root} --train {train} --tests {test}`"
            )
        return cls(ws, test, train, folder, fileio.read_json(folder / "config.json"))

    @property
    def fingerprint(self) -> str:
        """Identity of this result (its inputs and parameters)."""
        return self.config["fingerprint"]

    def stale_reasons(self) -> list[str]:
        """Why this result no longer matches its inputs (empty when fresh)."""
        reasons = []
        for role, name in (("train", self.train), ("test", self.test)):
            emb = self.ws.embeddings(name, required=False)
            now = emb.fingerprint() if emb is not None and emb.count else None
            if now != self.config["inputs"][role]:
                reasons.append(f"{role} set {name!r} embeddings changed")
        for ref, fp in self.config.get("references", {}).items():
            try:
                ref_result = SearchResult.load(self.ws, self.test, ref)
                if ref_result.fingerprint != fp:
                    reasons.append(f"reference search {self.test!r} vs {ref!r} changed")
                elif ref_result.stale:  # margins were computed from an s_ref that no longer matches its inputs
                    reasons.append(f"reference search {self.test!r} vs {ref!r} is stale")
            except WorkspaceError:
                reasons.append(f"reference search {self.test!r} vs {ref!r} is gone")
        return reasons

    @property
    def stale(self) -> bool:
        """True when inputs changed since this result was computed."""
        return bool(self.stale_reasons())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(sims (n_test, k) float32, ids (n_test, k) int64 global train rows, -1 where train had < k rows)."""
        with np.load(self.folder / "neighbours.npz") as z:
            return z["sims"], z["ids"]

    def neighbours(self, k: int | None = None) -> pd.DataFrame:
        """Long table: test_key, rank (1 = nearest), train_key, similarity, train_id."""
        sims, ids = self.arrays()
        k = sims.shape[1] if k is None else k
        if k > sims.shape[1]:
            raise WorkspaceError(
                f"asked for k={k} neighbours but the search of {self.test!r} vs {self.train!r} kept "
                f"{sims.shape[1]}; re-run `python -m clipsim search --k {k} --force`"
            )
        sims, ids = sims[:, :k], ids[:, :k]
        test_keys = self.ws.keys(self.test)
        valid = ids >= 0
        rows, ranks = np.nonzero(valid)
        train_keys = self.ws.embeddings(self.train).metadata_at(ids[valid], ["key"])["key"].to_numpy()
        return pd.DataFrame(
            {"test_key": test_keys[rows], "rank": ranks + 1, "train_key": train_keys,
             "similarity": sims[valid], "train_id": ids[valid]}
        )

    def nn_similarity(self) -> pd.Series:
        """s_train(t) for every test image (float32), indexed by test key."""
        sims, _ = self.arrays()
        return pd.Series(sims[:, 0], index=pd.Index(self.ws.keys(self.test), name="test_key"), name=f"s_{self.train}")

    def train_stat(self, name: str) -> np.ndarray:
        """One per-train-sample statistic over all shards: 'max_sim', 'argmax', 'margin/<ref>', ..."""
        parts = []
        for index in self.config["shards"]:
            with np.load(self.folder / "stats" / f"shard_{index}.npz") as z:
                key = name.replace("/", "__")
                if not z.files:  # a shard with no rows (all its images failed to embed) stores no arrays
                    continue
                if key not in z.files:
                    raise WorkspaceError(
                        f"statistic {name!r} was not computed for {self.train!r} vs {self.test!r} "
                        f"(have: {[f.replace('__', '/') for f in z.files]}); re-run search with --reference"
                    )
                parts.append(z[key])
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def train_max(self) -> pd.DataFrame:
        """train_key, max_similarity (max over the test set), test_key attaining it (first on ties)."""
        test_keys = self.ws.keys(self.test)
        return pd.DataFrame(
            {"train_key": self.ws.keys(self.train), "max_similarity": self.train_stat("max_sim"),
             "test_key": test_keys[self.train_stat("argmax")]}
        )


def search(
    ws, train: str, tests: list[str], k: int = 10, reference: str | None = None, precision: str = "auto",
    device: str = "auto", block_rows: int = DEFAULT_BLOCK_ROWS, force: bool = False, progress: Progress | None = None,
) -> dict[str, SearchResult]:
    """Exact search of `tests` against `train`, streamed over train shards; resumes an interrupted pass.

    Args:
        ws: the workspace.
        train: train set name.
        tests: test set names; results that are complete and fresh are kept unless `force`.
        k: neighbours kept per test image.
        reference: train set whose nearest-neighbour similarity s_ref(t) defines per-sample margins
            (the similarity-gap statistic); its search must be complete. Ignored when equal to `train`.
        precision: screen precision ('auto', 'fp32', 'bf16', 'fp16'); results are exact for all.
        device: 'auto', 'cpu', 'cuda', ...
        block_rows: train rows per block (memory).
        progress: optional callable(done_rows, total_rows, description).

    Returns:
        {test: SearchResult} for every requested test set.
    """
    train_set = ws.embeddings(train)
    todo = [t for t in tests if force or not _fresh(ws, t, train, k, reference)]
    if todo:
        _run_pass(ws, train, train_set, todo, k, reference, precision, device, block_rows, progress)
    return {t: SearchResult.load(ws, t, train) for t in tests}


def _fresh(ws, test: str, train: str, k: int, reference: str | None) -> bool:
    try:
        res = SearchResult.load(ws, test, train)
    except WorkspaceError:
        return False
    refs = set(res.config.get("references", {}))
    wanted = {reference} if reference and reference != train else set()
    return res.config["k"] >= k and wanted <= refs and not res.stale


def _offsets(ws, test: str, reference: str) -> tuple[np.ndarray, str]:
    ref = SearchResult.load(ws, test, reference)
    if ref.stale:
        raise WorkspaceError(
            f"the reference search {test!r} vs {reference!r} is stale ({'; '.join(ref.stale_reasons())}); "
            f"re-run `python -m clipsim search --workspace {ws.root} --train {reference}` first"
        )
    return ref.arrays()[0][:, 0], ref.fingerprint


def _prepare_pass(ws, train: str, train_set, tests: list[str], k: int, reference: str | None):
    """(queries (n, d) float16, groups, inputs per test, signature) of a pass; the signature fixes its state."""
    use_ref = reference if reference and reference != train else None
    queries, groups, inputs = [], [], {}
    start = 0
    for t in tests:
        emb = ws.embeddings(t)
        if emb.dim != train_set.dim:
            raise WorkspaceError(
                f"test set {t!r} has dimension {emb.dim} but train set {train!r} has {train_set.dim}; "
                "embed both with the same model (`python -m clipsim embed`)"
            )
        offsets, ref_fp = _offsets(ws, t, use_ref) if use_ref else (None, None)
        queries.append(emb.all())
        groups.append(Group(t, start, start + emb.count, {use_ref: offsets} if use_ref else None))
        inputs[t] = {"test": emb.fingerprint(), "references": {use_ref: ref_fp} if use_ref else {}}
        start += emb.count
    signature = _digest(train_set.fingerprint(), list(tests), inputs, k)  # test order fixes the query rows of the state
    return np.concatenate(queries), groups, inputs, signature


def _run_pass(ws, train, train_set, tests, k, reference, precision, device, block_rows, progress) -> None:
    dev = resolve_device(device)
    precision = default_precision(dev) if precision == "auto" else precision
    queries, groups, inputs, signature = _prepare_pass(ws, train, train_set, tests, k, reference)
    _log_memory(len(queries), train_set.dim, k, block_rows)
    scanner = ExactScanner(queries, groups, k, precision, dev)
    pass_dir = ws.path("search", train, "_pass")
    done = _resume(pass_dir, signature, scanner)["done"]
    t0 = time.time()
    _scan_shards(ws, train, train_set, scanner, train_set.shards, done, block_rows, progress,
                 pass_dir, lambda: {"signature": signature, "done": done})
    _finish(ws, train, train_set, groups, tests, inputs, scanner, k, precision, dev, time.time() - t0)
    shutil.rmtree(pass_dir, ignore_errors=True)


def _scan_shards(ws, train: str, train_set, scanner: ExactScanner, shards: list, done: list[int], block_rows: int,
                 progress: Progress | None, state_dir: Path, meta: Callable[[], dict]) -> None:
    """Scan `shards` not in `done`: per-shard statistics to their final place, then a checkpoint of the running
    top-k (`state_dir/state.npz` + `pass.json` = meta()) after each shard; `done` grows in place."""
    total = sum(s.rows for s in shards)
    done_rows = sum(s.rows for s in shards if s.index in done)
    for shard in shards:
        if shard.index in done:
            continue
        parts: dict[str, list[dict]] = {g.name: [] for g in scanner.groups}
        for _, base, block in train_set.iter_blocks(block_rows, [shard]):
            for name, stats in scanner.add_block(block, base).items():
                parts[name].append(stats)
            done_rows += len(block)
            if progress:
                progress(done_rows, total, f"search {train}")
        for t, got in parts.items():
            arrays = {n.replace("/", "__"): np.concatenate([p[n] for p in got]) for n in got[0]} if got else {}
            _write_npz(ws.path("search", train, t, "stats", f"shard_{shard.index}.npz"), arrays)
        done.append(shard.index)
        _write_npz(state_dir / "state.npz", scanner.state())
        fileio.write_json(state_dir / "pass.json", meta())


def _resume(pass_dir: Path, signature: str, scanner: ExactScanner) -> dict:
    """The checkpoint (`pass.json`: done shards, ...) of an interrupted pass or part with the same inputs, its
    running top-k loaded into `scanner`; else {"done": []} after removing a checkpoint made from other inputs."""
    meta = pass_dir / "pass.json"
    if meta.exists() and (pass_dir / "state.npz").exists():
        info = fileio.read_json(meta)
        if info.get("signature") == signature:
            with np.load(pass_dir / "state.npz") as z:
                scanner.load_state({n: z[n] for n in z.files})
            log.info("resuming search %s: %d shards already done", pass_dir.name, len(info["done"]))
            return {**info, "done": list(info["done"])}
    shutil.rmtree(pass_dir, ignore_errors=True)
    return {"done": []}


def _finish(ws, train, train_set, groups, tests, inputs, scanner, k, precision, dev, seconds) -> None:
    state = scanner.state()
    for g in groups:
        folder = ws.path("search", train, g.name)
        _write_npz(folder / "neighbours.npz", {"sims": state["top_s"][g.start : g.stop], "ids": state["top_i"][g.start : g.stop]})
        config = {
            "test": g.name, "train": train, "k": k, "precision": precision, "device": str(dev),
            "shards": [s.index for s in train_set.shards], "train_count": train_set.count,
            "test_count": g.stop - g.start, "inputs": {"train": train_set.fingerprint(), "test": inputs[g.name]["test"]},
            "references": inputs[g.name]["references"], "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        config["fingerprint"] = _digest({k_: v for k_, v in config.items() if k_ not in ("seconds", "created", "device", "precision")})
        fileio.write_json(folder / "config.json", config)
        _prune_stale_stats(folder, config["shards"])


def _prune_stale_stats(folder: Path, shards: list[int]) -> None:
    keep = {f"shard_{i}.npz" for i in shards}
    for f in (folder / "stats").glob("shard_*.npz"):
        if f.name not in keep:
            f.unlink()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    fileio.atomic_write(path, _write)


def _log_memory(n_queries: int, dim: int, k: int, block_rows: int) -> None:
    q = n_queries * dim * (2 + 4)  # float16 queries plus their screen copy (<= float32)
    topk = n_queries * k * 12
    block = block_rows * dim * (2 + 4)
    tile = TILE_ELEMENTS * 4 * 3  # product tile, its margin copy and the comparison mask
    log.info("search memory estimate: %.2f GB (queries %.2f, top-k %.2f, block %.2f, tiles %.2f)",
             (q + topk + block + tile) / 1e9, q / 1e9, topk / 1e9, block / 1e9, tile / 1e9)


def search_status(ws) -> list[dict]:
    """Every stored search result with its k and freshness."""
    rows = []
    for train_dir in sorted(p for p in ws.path("search").glob("*") if p.is_dir()):
        for test_dir in sorted(p for p in train_dir.glob("*") if (p / "config.json").exists()):
            res = SearchResult.load(ws, test_dir.name, train_dir.name)
            rows.append({"test": res.test, "train": res.train, "k": res.config["k"], "stale": res.stale_reasons(),
                         "references": sorted(res.config.get("references", {})), "created": res.config["created"]})
    return rows
