"""One exact search pass: stream one train set's shards once against all test sets, checkpoint, resume, commit.

For each (test, train) pair the pass stores `search/<train>/<test>/neighbours.npz` (top-k sims and global
train ids per test image), per-shard train-side statistics `stats/shard_<i>.npz` (each train sample's max
similarity to the test set, its argmax and, given a reference set, its largest margin over s_ref(t)),
and `config.json`, which fingerprints its inputs. While scanning, statistics and the running top-k stay in
`search/<train>/_pass/` (see `clipsim.search.checkpoint`); the result folder is built beside the old one and
swapped in whole, so `--force` never leaves a result half old, half new. `SearchPass` is the
typed interface that whole passes and shard-range parts (`clipsim.search.parts`) share.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsim import fileio
from clipsim.checks import check_search_args
from clipsim.errors import WorkspaceError
from clipsim.names import check_writable
from clipsim.search.checkpoint import link_or_copy, resume_checkpoint, staged_stats, write_checkpoint, write_npz
from clipsim.search.exact import default_precision, resolve_device
from clipsim.search.result import SearchResult, digest, is_fresh
from clipsim.search.scan import TILE_ELEMENTS, ExactScanner, Group
from clipsim.sorted_stats import write_search_sorted
from clipsim.store import EmbeddingSet

log = logging.getLogger(__name__)
Progress = Callable[[int, int, str], None]
DEFAULT_BLOCK_ROWS = 65536  # one block of 640-d float16 is 80 MB; the product tile is bounded separately


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
        precision: screen precision ('auto', 'fp32', 'bf16', 'fp16' on CUDA); results are exact for all.
        device: 'auto', 'cpu', 'cuda', ...
        block_rows: train rows per block (memory).
        progress: optional callable(done_rows, total_rows, description).

    Returns:
        {test: SearchResult} for every requested test set.

    Raises:
        ArgumentError: k or block_rows below 1, an unknown device or precision (nothing is written).
        ReadOnlyError: a search is due but the workspace is read-only.
        WorkspaceError: a test set of another dimension, a missing or stale reference search.
        DataError: embeddings that are incomplete, truncated or malformed.
    """
    check_search_args(k, block_rows, precision, device)
    todo = [t for t in tests if force or not is_fresh(ws, t, train, k, reference)]
    if todo:
        check_writable(f"search {', '.join(todo)} against {train}")
        run_pass(SearchPass.prepare(ws, train, todo, k, reference), precision, device, block_rows, progress)
        store_combined_stats(ws, train)
    return {t: SearchResult.load(ws, t, train) for t in tests}


def store_combined_stats(ws, train: str) -> None:
    """Once a search of a web set commits, store the elementwise maximum of its statistics over every test set
    searched against it (clipsim.prune.stored.store_after_search), so the pages find it."""
    from clipsim.prune.stored import store_after_search  # prune reads what search writes: imported on use

    store_after_search(ws, train)


@dataclass
class SearchPass:
    """The inputs of one pass (or shard-range part) of `tests` against `train`, fixed before anything is scanned.

    Attributes:
        ws: the workspace.
        train: train set name; `train_set` its embeddings.
        tests: test set names, in query-row order.
        k: neighbours kept per test image.
        reference: train set of the similarity-gap margins (None when absent or equal to `train`).
        queries: (n_queries, dim) float16, the test sets concatenated in `tests` order.
        groups: one scanner Group per test set (its query rows and margin offsets).
        inputs: per test set, the fingerprints of its embeddings and reference search.
        signature: digest of all inputs; a checkpoint resumes only under the same signature.
    """

    ws: object
    train: str
    train_set: EmbeddingSet
    tests: list[str]
    k: int
    reference: str | None
    queries: np.ndarray
    groups: list[Group]
    inputs: dict
    signature: str

    @classmethod
    def prepare(cls, ws, train: str, tests: list[str], k: int, reference: str | None) -> SearchPass:
        """Read the test embeddings and reference offsets of a pass.

        Raises:
            WorkspaceError: a test set of another dimension, or a missing or stale reference search.
        """
        train_set = ws.embeddings(train)
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
            offsets, ref_fp = reference_offsets(ws, t, use_ref) if use_ref else (None, None)
            queries.append(emb.all())
            groups.append(Group(t, start, start + emb.count, {use_ref: offsets} if use_ref else None))
            inputs[t] = {"test": emb.fingerprint(), "references": {use_ref: ref_fp} if use_ref else {}}
            start += emb.count
        signature = digest(train_set.fingerprint(), list(tests), inputs, k)  # test order fixes the query rows
        return cls(ws, train, train_set, list(tests), k, use_ref, np.concatenate(queries), groups, inputs, signature)

    def scanner(self, precision: str, device, block_rows: int, row_stats: bool = True) -> ExactScanner:
        """A scanner over this pass's queries (memory estimate logged first)."""
        log_memory(len(self.queries), self.train_set.dim, self.k, block_rows)
        return ExactScanner(self.queries, self.groups, self.k, precision, device, row_stats=row_stats)

    def scan_shards(self, scanner: ExactScanner, shards: list, done: list[int], block_rows: int,
                    progress: Progress | None, state_dir: Path, meta: Callable[[], dict]) -> None:
        """Scan `shards` not in `done`: per-shard statistics staged under `state_dir/stats/`, then one checkpoint
        (`state_dir/checkpoint.npz`: the running top-k and meta(), in one file) after each shard; `done` grows in
        place."""
        total = sum(s.rows for s in shards)
        done_rows = sum(s.rows for s in shards if s.index in done)
        for shard in shards:
            if shard.index in done:
                continue
            parts: dict[str, list[dict]] = {g.name: [] for g in scanner.groups}
            for _, base, block in self.train_set.iter_blocks(block_rows, [shard]):
                for name, stats in scanner.add_block(block, base).items():
                    parts[name].append(stats)
                done_rows += len(block)
                if progress:
                    progress(done_rows, total, f"search {self.train}")
            for t, got in parts.items():
                arrays = {n.replace("/", "__"): np.concatenate([p[n] for p in got]) for n in got[0]} if got else {}
                write_npz(staged_stats(state_dir, t, shard.index), arrays)
            done.append(shard.index)
            write_checkpoint(state_dir, scanner.state(), meta())

    def commit(self, scanner: ExactScanner, precision: str, device: str, seconds: float, staging: list[Path]) -> None:
        """Commit every test set's result: a new folder with its statistics (linked from the `staging` folders of
        the pass or parts), `neighbours.npz`, the sorted statistics (`sorted/`, clipsim.sorted_stats) and
        `config.json`, swapped into place in one step; until then a reader sees the previous result, or none."""
        state = scanner.state()
        for g in self.groups:
            folder = self.ws.path("search", self.train, g.name)
            config = {
                "test": g.name, "train": self.train, "k": self.k, "precision": precision, "device": str(device),
                "shards": [s.index for s in self.train_set.shards], "train_count": self.train_set.count,
                "test_count": g.stop - g.start,
                "inputs": {"train": self.train_set.fingerprint(), "test": self.inputs[g.name]["test"]},
                "references": self.inputs[g.name]["references"], "seconds": round(seconds, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            config["fingerprint"] = digest({k_: v for k_, v in config.items()
                                            if k_ not in ("seconds", "created", "device", "precision")})
            folder.parent.mkdir(parents=True, exist_ok=True)
            fileio.clear_leftovers(folder.parent, g.name)
            tmp = Path(tempfile.mkdtemp(prefix=f".{g.name}.", suffix=".tmp", dir=folder.parent))
            try:
                (tmp / "stats").mkdir()
                for index in config["shards"]:
                    link_or_copy(_staged(staging, g.name, index), tmp / "stats" / f"shard_{index}.npz")
                write_npz(tmp / "neighbours.npz",
                          {"sims": state["top_s"][g.start : g.stop], "ids": state["top_i"][g.start : g.stop]})
                names = ["max_sim"] + [f"margin/{r}" for r in config["references"]]
                write_search_sorted(tmp, config["fingerprint"], [tmp / "stats" / f"shard_{i}.npz" for i in config["shards"]],
                                    names, self.train_set.count)
                fileio.write_json(tmp / "config.json", config)
                fileio.swap_dir(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise


def _staged(staging: list[Path], test: str, index: int) -> Path:
    """The staged statistics of one shard for one test set, from whichever staging folder holds them."""
    for folder in staging:
        if (path := staged_stats(folder, test, index)).exists():
            return path
    raise WorkspaceError(f"the statistics of train shard {index} for test set {test!r} are missing from "
                         f"{', '.join(map(str, staging))}; re-run the search with --force")


def reference_offsets(ws, test: str, reference: str) -> tuple[np.ndarray, str]:
    """(s_ref(t) per test image (n,) float32, the reference search's fingerprint).

    Raises:
        WorkspaceError: the reference search is missing or stale (names the command that refreshes it).
    """
    ref = SearchResult.load(ws, test, reference)
    if ref.stale:
        raise WorkspaceError(
            f"the reference search {test!r} vs {reference!r} is stale ({'; '.join(ref.stale_reasons())}); "
            f"re-run `python -m clipsim search --workspace {ws.root} --train {reference}` first"
        )
    return ref.arrays()[0][:, 0], ref.fingerprint


def resolve_precision(precision: str, device: str) -> tuple[str, object]:
    """(one of exact.PRECISIONS, torch.device): 'auto' resolved for the device."""
    dev = resolve_device(device)
    return (default_precision(dev) if precision == "auto" else precision), dev


def run_pass(spec: SearchPass, precision: str, device: str, block_rows: int, progress: Progress | None) -> None:
    """Scan every shard of the pass (resuming its checkpoint), commit the results, drop the checkpoint."""
    precision, dev = resolve_precision(precision, device)
    scanner = spec.scanner(precision, dev, block_rows)
    pass_dir = spec.ws.path("search", spec.train, "_pass")
    done = resume_checkpoint(pass_dir, spec.signature, scanner)["done"]
    t0 = time.time()
    spec.scan_shards(scanner, spec.train_set.shards, done, block_rows, progress, pass_dir,
                     lambda: {"signature": spec.signature, "done": done, "tests": spec.tests, "k": spec.k,
                              "shards": [s.index for s in spec.train_set.shards]})
    spec.commit(scanner, precision, dev, time.time() - t0, [pass_dir])
    fileio.remove_tree(pass_dir)


def log_memory(n_queries: int, dim: int, k: int, block_rows: int) -> None:
    """Log the estimated peak memory of a pass before it starts."""
    q = n_queries * dim * (2 + 4)  # float16 queries plus their screen copy (<= float32)
    topk = n_queries * k * 12
    block = block_rows * dim * (2 + 4)
    tile = TILE_ELEMENTS * 4 * 2  # reused product tile (<= 4 B/element); bucket maxima, copies, masks: < 1 B more
    log.info("search memory estimate: %.2f GB (queries %.2f, top-k %.2f, block %.2f, tiles %.2f)",
             (q + topk + block + tile) / 1e9, q / 1e9, topk / 1e9, block / 1e9, tile / 1e9)
