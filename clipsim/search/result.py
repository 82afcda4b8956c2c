"""A stored exact search of one test set against one train set, its freshness, and the list of stored searches.

`search/<train>/<test>/` holds `neighbours.npz` (top-k sims and global train ids per test image), per-shard
train-side statistics `stats/shard_<i>.npz` and `config.json`, written last, which marks the result complete and
fingerprints its inputs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import WorkspaceError


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
    """Every stored search result with its k and freshness."""
    rows = []
    for train_dir in sorted(p for p in ws.path("search").glob("*") if p.is_dir()):
        for test_dir in sorted(p for p in train_dir.glob("*") if (p / "config.json").exists()):
            res = SearchResult.load(ws, test_dir.name, train_dir.name)
            rows.append({"test": res.test, "train": res.train, "k": res.config["k"], "stale": res.stale_reasons(),
                         "references": sorted(res.config.get("references", {})), "created": res.config["created"]})
    return rows
