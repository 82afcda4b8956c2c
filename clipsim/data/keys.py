"""Keys are unique per dataset: find keys repeated within or across shards from 8-byte hashes, and refuse them.

Tars are indexed one at a time and imported folders can hold hundreds of millions of rows, so repeats are found
from per-shard 64-bit key hashes sorted together; only the shards holding a repeated hash are read again to
confirm on the keys themselves.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from clipsim.errors import DataError

LISTED = 5  # repeated keys named in one message


def key_hashes(keys: pd.Series | np.ndarray) -> np.ndarray:
    """64-bit hashes of keys (uint64), for finding keys repeated across shards in 8 bytes per key."""
    return pd.util.hash_array(np.asarray(keys, dtype=object))


def repeated_keys(hashes: dict[int, np.ndarray], keys_of: Callable[[int], pd.Series],
                  limit: int = LISTED) -> list[tuple[str, int, int]]:
    """Keys that occur twice, within one shard or in two, found from per-shard hashes and confirmed on the keys.

    Args:
        hashes: shard index -> key_hashes of that shard's keys.
        keys_of: callable, shard index -> its keys (read only for shards holding a repeated hash).
        limit: stop after this many repeated keys.

    Returns:
        Up to `limit` (key, first shard, second shard) in hash order; [] when all keys are unique.
    """
    if not hashes:
        return []
    values = np.concatenate(list(hashes.values()))
    owners = np.concatenate([np.full(len(h), s, dtype=np.int64) for s, h in hashes.items()])
    order = np.argsort(values, kind="stable")
    values, owners = values[order], owners[order]
    found: dict[str, tuple[str, int, int]] = {}
    for pos in np.flatnonzero(values[1:] == values[:-1]):  # a 64-bit collision of two keys is possible: confirm
        a, b = sorted((int(owners[pos]), int(owners[pos + 1])))
        ka, kb = pd.Series(keys_of(a)).astype(str), pd.Series(keys_of(b)).astype(str)
        common = ka[ka.duplicated()] if a == b else ka[ka.isin(set(kb))]
        for key in sorted(set(common) - set(found))[: limit - len(found)]:
            found[key] = (key, a, b)
        if len(found) >= limit:
            break
    return list(found.values())


def first_repeated_key(hashes: dict[int, np.ndarray], keys_of: Callable[[int], pd.Series]) -> tuple[str, int, int] | None:
    """The first of `repeated_keys`, or None when all keys are unique."""
    hits = repeated_keys(hashes, keys_of, 1)
    return hits[0] if hits else None


def check_unique_keys(emb, where: str) -> None:
    """Refuse a set whose keys repeat, within a shard or across shards, naming the first repeated ones.

    Args:
        emb: an EmbeddingSet (imported clip-retrieval folders included).
        where: what the set is, for the message.

    Raises:
        DataError: a key occurs more than once.
    """
    keys_of = {s.index: s for s in emb.shards}
    hits = repeated_keys({s.index: key_hashes(emb.metadata(["key"], [s])["key"]) for s in emb.shards},
                         lambda i: emb.metadata(["key"], [keys_of[i]])["key"])
    if hits:
        raise DataError(f"{where}: keys must be unique within a dataset, but some repeat: {describe(hits)}; remove the "
                        "repeated rows (from the npy and its metadata together) or give them distinct keys")


def describe(hits: list[tuple[str, int, int]], shard_name: Callable[[int], str] = lambda i: f"shard {i}") -> str:
    """"key 'a' occurs in shard 0 and in shard 3; ..." for the message of a refusal."""
    return "; ".join(f"key {k!r} occurs in {shard_name(a)} and in {shard_name(b)}" if a != b
                     else f"key {k!r} occurs twice in {shard_name(a)}" for k, a, b in hits)


def check_listing(records: pd.DataFrame, where: str) -> None:
    """Refuse a listing (folder or table records) with blank or repeated keys, naming the first ones.

    Args:
        records: frame with string columns `key` and `path`.
        where: the folder or table, for the message.

    Raises:
        DataError: a key is blank, or two rows share a key (`a.jpg` and `a.png` in one folder).
    """
    keys = records["key"].astype(str)
    blank = keys.str.strip() == ""
    if blank.any():
        paths = records.loc[blank, "path"].astype(str).tolist()
        raise DataError(f"{where}: {int(blank.sum())} images have a blank key (e.g. {', '.join(paths[:LISTED])}); "
                        "give every image a non-empty key")
    dup = keys.duplicated(keep=False)
    if dup.any():
        repeated = list(dict.fromkeys(keys[dup]))
        first = records.loc[keys == repeated[0], "path"].astype(str).tolist()
        more = f"; {len(repeated)} keys repeat ({int(dup.sum())} rows): {', '.join(map(repr, repeated[:LISTED]))}"
        raise DataError(
            f"{where}: key {repeated[0]!r} occurs {len(first)} times ({', '.join(first[:3])})"
            + (more if len(repeated) > 1 else "") + ". Keys must be unique within a dataset: rename or remove the "
            "duplicates (or add a unique `key` column)"
        )
