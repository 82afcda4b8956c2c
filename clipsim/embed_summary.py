"""What an embedding run could not embed, shard by shard, and the summary.json that commits an embedding set.

Each shard's skipped list (`skipped_parts/shard_<i>.parquet`: images that failed to decode, samples a cut tar
lost, blank keys) is written *before* the shard itself, so a shard on disk always has its list. `write_summary`
consolidates the lists into `skipped.parquet` and writes `summary.json` last: the commit point that
`clipsim.store.set_state` reads. A set with losses is committed as complete *with* its losses counted and listed
per shard; nothing is dropped without a line in those files.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio, store

log = logging.getLogger(__name__)
SKIPPED_COLUMNS = ["key", "path", "offset", "size", "error", "shard"]
SKIPPED_DTYPES = {"key": "str", "path": "str", "offset": "int64", "size": "int64", "error": "str", "shard": "int64"}
SKIPPED_PARTS = "skipped_parts"  # per-shard lists: written before their shard; concurrent range tasks share no file
SHOWN_PER_SHARD = 3  # losses quoted per shard in summary.json (all are in skipped.parquet)


def no_skipped() -> pd.DataFrame:
    """An empty skipped list (SKIPPED_COLUMNS)."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in SKIPPED_DTYPES.items()})


def shard_skipped(records: pd.DataFrame, failed: list[tuple[int, str]], losses: pd.DataFrame,
                  shard: int) -> pd.DataFrame:
    """One shard's skipped list: records that failed to embed (row id, error) and the source's losses.

    Args:
        records: the shard's records (key, path, offset, size, ...).
        failed: (row id into records, error text) per image that did not decode.
        losses: rows the source could not give at all (clipsim.data.tars.LOSS_COLUMNS).
        shard: shard index.

    Returns:
        SKIPPED_COLUMNS rows: the losses first, then the failures in record order.
    """
    frame = records.iloc[[i for i, _ in failed]][["key", "path", "offset", "size"]].reset_index(drop=True)
    frame["error"] = pd.Series([e for _, e in failed], dtype="str")
    for i, err in failed:
        log.warning("skipped image %s (%s): %s", records["key"].iat[i], records["path"].iat[i], err)
    for row in losses.itertuples():
        log.warning("lost from shard %d: %s (%s)", shard, row.error, row.path)
    parts = [f for f in (losses, frame) if len(f)]
    out = pd.concat(parts, ignore_index=True) if parts else no_skipped().drop(columns="shard")
    out["shard"] = np.int64(shard)
    return out.astype(SKIPPED_DTYPES)[SKIPPED_COLUMNS]


def write_shard_skipped(root: Path, shard: int, frame: pd.DataFrame) -> None:
    """Store one shard's skipped list (before the shard's own files: see the module docstring)."""
    fileio.write_parquet(Path(root) / SKIPPED_PARTS / f"shard_{shard}.parquet", frame[SKIPPED_COLUMNS])


def load_skipped(root: Path) -> pd.DataFrame:
    """skipped.parquet with the per-shard lists in place of those shards' rows."""
    root = Path(root)
    frames = [pd.read_parquet(root / "skipped.parquet")] if (root / "skipped.parquet").exists() else []
    parts = sorted((root / SKIPPED_PARTS).glob("shard_*.parquet"))
    if parts:
        redone = [int(p.stem.split("_")[1]) for p in parts]
        frames = [f[~f["shard"].isin(redone)] for f in frames] + [pd.read_parquet(p) for p in parts]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True).astype(SKIPPED_DTYPES) if frames else no_skipped()


def write_summary(root: Path, skipped: pd.DataFrame, stats: dict, notes: tuple[str, ...] = ()) -> dict:
    """Consolidate the skipped lists (sorted by shard), then write summary.json: the set is committed.

    Args:
        root: the embedding folder.
        skipped: every shard's skipped rows (load_skipped).
        stats: run figures recorded as given (embedded_this_run, seconds, images_per_second).
        notes: what the source listing left out (clipsim.data.sources.Source.notes).

    Returns:
        The summary written.
    """
    root = Path(root)
    skipped = skipped.sort_values("shard", kind="stable").reset_index(drop=True)
    fileio.write_parquet(root / "skipped.parquet", skipped[SKIPPED_COLUMNS])
    fileio.remove_tree(root / SKIPPED_PARTS)
    emb = store.EmbeddingSet(root)
    losses = {str(shard): {"count": len(rows), "first": rows["error"].head(SHOWN_PER_SHARD).tolist()}
              for shard, rows in skipped.groupby("shard", sort=True)}
    summary = {
        "rows": emb.count, "skipped": len(skipped), "shards": len(emb.shards), "dim": emb.dim,
        "shard_rows": {str(s.index): s.rows for s in emb.shards}, "losses": losses, "lossless": not len(skipped),
        "source_notes": list(notes), **stats, "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    fileio.write_json(root / store.SUMMARY, summary)
    if len(skipped):
        log.warning("%s: %d images or samples could not be embedded (%s shards); listed in %s", root, len(skipped),
                    len(losses), root / "skipped.parquet")
    return summary
