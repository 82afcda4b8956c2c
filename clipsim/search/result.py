"""A stored exact search of one test set against one train set, its freshness, and the list of stored searches.

`search/<train>/<test>/` holds `neighbours.npz` (top-k sims and global train ids per test image), per-shard
train-side statistics `stats/shard_<i>.npz` and `config.json`, which fingerprints its inputs. The folder is
built whole beside the old one and swapped in (clipsim.search.passes), so a folder with `config.json` is complete.
Which searches are complete is answered here (`completed_searches`, `searched_tests`, `searched_web_sets`,
`has_margins`), reading each config.json once per write; interrupted passes are listed by `interrupted_searches`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError

_CONFIGS: dict[str, tuple[tuple[int, int, int], dict]] = {}  # path -> (file identity, parsed config)


def read_config(folder: Path) -> dict | None:
    """A search folder's config.json, or None while the search is not complete.

    Parsed once per write: the parse is kept under the file's identity (inode, mtime, size), which the atomic
    rename of every rewrite changes; a call costs one `stat`. The dict is shared: read it, never change it.
    """
    path = Path(folder) / "config.json"
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _CONFIGS.get(str(path))
    if hit is None or hit[0] != ident:
        hit = (ident, fileio.read_json(path))
        _CONFIGS[str(path)] = hit
    return hit[1]


def digest(*parts) -> str:
    """16 hex characters of SHA-256 over the canonical JSON of `parts` (fingerprints of configs and inputs)."""
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
    def load(cls, ws, test: str, train: str) -> SearchResult:
        """Load the result; raises WorkspaceError naming the command to run when it is missing."""
        folder = ws.path("search", train, test)
        config = read_config(folder)
        if config is None:
            raise WorkspaceError(
                f"no completed search of test set {test!r} against train set {train!r} in {ws.root}; run "
                f"`python -m clipsim search --workspace {ws.root} --train {train} --tests {test}`"
            )
        return cls(ws, test, train, folder, config)

    @property
    def fingerprint(self) -> str:
        """Identity of this result (its inputs and parameters)."""
        return self.config["fingerprint"]

    def stale_reasons(self) -> list[str]:
        """Why this result no longer matches its inputs (empty when fresh)."""
        reasons = []
        for role, name in (("train", self.train), ("test", self.test)):
            if self.ws.embeddings_fingerprint(name) != self.config["inputs"][role]:
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


def completed_searches(ws, test: str) -> dict[str, str]:
    """{train set: search fingerprint} for every train set with a complete search of `test`, in registry order.

    The one answer to "which searches of this test set can be read"; one `stat` per train set when nothing changed.
    """
    found = {}
    for train in ws.dataset_names("train"):
        config = read_config(ws.path("search", train, test))
        if config is not None:
            found[train] = config["fingerprint"]
    return found


def searched_tests(ws) -> list[str]:
    """Test sets with at least one complete search, in registry order."""
    return [t for t in ws.dataset_names("test") if completed_searches(ws, t)]


def searched_web_sets(ws, tests: list[str]) -> list[str]:
    """Web sets (ws.web_sets()) searched against every one of `tests`, in registry order."""
    done = [completed_searches(ws, t) for t in tests]
    return [w for w in ws.web_sets() if all(w in d for d in done)]


def has_margins(ws, web: str, tests: list[str], reference: str | None) -> bool:
    """True when every search of `tests` against `web` stored similarity-gap margins over `reference`."""
    if not reference:
        return False
    configs = [read_config(ws.path("search", web, t)) for t in tests]
    return all(c is not None and reference in c.get("references", {}) for c in configs)


def is_fresh(ws, test: str, train: str, k: int, reference: str | None) -> bool:
    """True when a complete, fresh search of `test` vs `train` with at least `k` neighbours (and margins over
    `reference`, unless it is `train` itself) is stored."""
    try:
        res = SearchResult.load(ws, test, train)
    except WorkspaceError:
        return False
    refs = set(res.config.get("references", {}))
    wanted = {reference} if reference and reference != train else set()
    return res.config["k"] >= k and wanted <= refs and not res.stale



def search_status(ws) -> list[dict]:
    """Every stored (committed) search result with its k and freshness."""
    rows = []
    for train_dir in sorted(p for p in ws.path("search").glob("*") if p.is_dir()):
        # `.x.tmp` folders are results being built, `_pass`/`_parts` checkpoints: neither is a committed result
        for test_dir in sorted(p for p in train_dir.glob("[!._]*") if (p / "config.json").exists()):
            res = SearchResult.load(ws, test_dir.name, train_dir.name)
            rows.append({"test": res.test, "train": res.train, "k": res.config["k"], "stale": res.stale_reasons(),
                         "references": sorted(res.config.get("references", {})), "created": res.config["created"]})
    return rows


def interrupted_searches(ws) -> list[dict]:
    """Every search pass or part that was interrupted: train, tests, k and `state` 'incomplete (k of n shards)'.
    Its checkpoint resumes when the same search (or part) runs again; its result is not readable until then."""
    from clipsim.search.checkpoint import read_meta

    rows = []
    for train_dir in sorted(p for p in ws.path("search").glob("*") if p.is_dir()):
        for folder in [train_dir / "_pass", *sorted((train_dir / "_parts").glob("*-*"))]:
            meta = read_meta(folder) if folder.is_dir() else None
            if meta is not None and "shards" in meta:
                part = "" if folder.name == "_pass" else f" (part {folder.name})"
                rows.append({"train": train_dir.name, "tests": list(meta.get("tests", [])), "k": meta.get("k"),
                             "state": f"incomplete ({len(meta['done'])} of {len(meta['shards'])} shards){part}"})
    return rows
