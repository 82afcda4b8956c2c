"""Pruning manifests: `manifests/<name>/` with removed/kept keys, the rule, its counts and input fingerprints.

A manifest is written into a hidden temporary sibling folder and swapped into place (fileio.swap_dir), so no
half-written manifest ever looks whole; its removed and kept keys are checked to be disjoint and to cover the set. It is stale when the web embeddings or a search it was cut from changed since.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.data.keys import key_hashes, repeated_keys
from clipsim.errors import ReadOnlyError, WorkspaceError
from clipsim.names import check_name, read_only
from clipsim.prune.rules import RuleSpec, apply_rule, default_name, rule_stats
from clipsim.prune.stats import PruneStats, canonical_rule, resolve_keep

MANIFESTS = "manifests"
_REQUIRED = {"threshold": ("tau",), "similarity-gap": (), "near": ("keep",), "far": ("keep",), "random": ("keep", "seed")}


@dataclass
class Manifest:
    """A saved pruning manifest. `summary` is the parsed summary.json."""

    ws: object
    name: str
    folder: Path
    summary: dict

    @property
    def rule(self) -> str:
        """The pruning rule ('threshold', 'similarity-gap', 'near', 'far', 'random')."""
        return self.summary["rule"]

    @property
    def kept_count(self) -> int:
        """How many web samples the manifest keeps."""
        return int(self.summary["combined"]["kept"])

    @property
    def removed_count(self) -> int:
        """How many web samples the manifest removes."""
        return int(self.summary["combined"]["removed"])

    def removed_keys(self) -> np.ndarray:
        """Keys of the removed web samples, in web row order."""
        return pd.read_parquet(self.folder / "removed.parquet")["key"].to_numpy()

    def kept_keys(self) -> np.ndarray:
        """Keys of the kept web samples, in web row order."""
        return pd.read_parquet(self.folder / "kept.parquet")["key"].to_numpy()

    def stale_reasons(self) -> list[str]:
        """Why the manifest no longer matches its inputs (empty when fresh)."""
        inputs, web, reasons = self.summary["inputs"], self.summary["web"], []
        if self.ws.embeddings_fingerprint(web) != inputs["web_embeddings"]:
            reasons.append(f"web set {web!r} embeddings changed")
        for test, fp in inputs["search"].items():
            try:
                res = self.ws.search_result(test, web)
            except WorkspaceError:
                reasons.append(f"search {test!r} vs {web!r} is gone")
                continue
            if res.fingerprint != fp:
                reasons.append(f"search {test!r} vs {web!r} changed")
            reasons += [f"search {test!r} vs {web!r}: {r}" for r in res.stale_reasons()]
        if self.summary.get("base"):
            from clipsim.prune.base import base_changes

            reasons += base_changes(self.ws, self.summary["base"])
        return reasons

    @property
    def stale(self) -> bool:
        """True when the web embeddings or a search changed since the manifest was written."""
        return bool(self.stale_reasons())


def save_manifest(ws, name: str, rule: str, params: dict, stats: PruneStats, removed: np.ndarray,
                  overwrite: bool = False, progress=None) -> Manifest:
    """Write manifest `name`: removed/kept keys, summary.json; atomically (temporary folder renamed into place).

    Args:
        ws: the workspace.
        name: manifest name (letters, digits, '_', '.', '-').
        rule: one of clipsim.prune.RULES.
        params: the rule's parameters (tau | delta | keep; random: keep, seed, optional like); an optional
            `tests` restricts the rule to those loaded test sets; other keys are recorded as given.
        stats: the statistics the mask was computed from (a fresh load of the current searches).
        removed: (n,) bool mask returned by the rule.
        overwrite: replace an existing manifest of that name.
        progress: optional callable(done, total, description) for the exact post-pruning scan.

    Returns:
        The saved manifest.

    Raises:
        ReadOnlyError: the workspace is served read-only.
        WorkspaceError: the name exists (without overwrite), the statistics no longer match the workspace, or
            the web set's keys repeat (removed and kept would not be disjoint).
        ValueError: missing parameters, or a mask that does not match the rule's counts.
    """
    if read_only():
        raise ReadOnlyError(f"this workspace is served read-only (CLIPSIM_READ_ONLY=1); manifest {name!r} was not saved")
    check_new_manifest(ws, name, overwrite)
    rule, params = canonical_rule(rule), dict(params)
    if rule == "similarity-gap":
        params.setdefault("delta", 0.0)
    missing = [p for p in _REQUIRED[rule] if p not in params]
    if missing:
        raise ValueError(f"rule {rule!r} needs parameter(s) {missing}; got {sorted(params)}")
    sel = stats.subset(params["tests"]) if params.get("tests") else stats
    removed = np.asarray(removed)
    counts = _check_counts(sel, rule, params, removed)
    _check_inputs(ws, sel)
    summary = _summary(ws, rule, params, sel, removed, counts, progress)
    keys = np.asarray(stats.keys)  # with a base: the base's kept keys, so removed lists what this rule removes
    check_partition(keys, removed, stats.web)
    _write_atomically(ws.path(MANIFESTS), name, {"removed": keys[removed], "kept": keys[~removed]}, summary, overwrite)
    return load_manifest(ws, name)


def write_manifest(ws, name: str, removed_keys: np.ndarray, kept_keys: np.ndarray, summary: dict,
                   overwrite: bool = False) -> Manifest:
    """Write manifest `name` made by another tool (e.g. clipsim.dedup), atomically, in the layout of `save_manifest`.

    Args:
        ws: the workspace.
        name: manifest name.
        removed_keys, kept_keys: keys of the removed and kept web samples, in web row order.
        summary: summary.json; needs at least rule, params, web, tests, n, inputs (web_embeddings, search),
            combined (removed, kept, share) and created, like a pruning manifest, and may record a `base`.
        overwrite: replace an existing manifest of that name.

    Raises:
        ReadOnlyError: the workspace is served read-only.
        WorkspaceError: a bad name, or the name exists (without overwrite).
    """
    if read_only():
        raise ReadOnlyError(f"this workspace is served read-only (CLIPSIM_READ_ONLY=1); manifest {name!r} was not saved")
    check_new_manifest(ws, name, overwrite)
    _write_atomically(ws.path(MANIFESTS), name, {"removed": removed_keys, "kept": kept_keys}, summary, overwrite)
    return load_manifest(ws, name)


def save_rule(ws, spec: RuleSpec, name: str | None = None, overwrite: bool = False, progress=None):
    """Apply a rule to freshly loaded statistics and save its manifest (what the CLI and the `prune` job run).

    Args:
        ws: the workspace.
        spec: the rule.
        name: manifest name (default: default_name(spec)).
        overwrite: replace a manifest of that name.
        progress: optional callable(done, total, description) for the exact post-pruning scan.

    Returns:
        (the saved Manifest, the Pruning it came from).

    Raises:
        WorkspaceError, ReadOnlyError, ValueError: see rule_stats, apply_rule and save_manifest.
    """
    pruning = apply_rule(rule_stats(ws, spec), spec)
    manifest = save_manifest(ws, name or default_name(spec), spec.rule, pruning.params, pruning.stats,
                             pruning.removed, overwrite=overwrite, progress=progress)
    return manifest, pruning


def check_new_manifest(ws, name: str, overwrite: bool = False) -> None:
    """Check that a manifest can be saved under `name` (before any work is done).

    Raises:
        WorkspaceError: a bad name, or a manifest of that name exists and overwrite is False.
    """
    check_name(name, "manifest")
    folder = ws.path(MANIFESTS, name)
    if folder.exists() and not overwrite:
        raise WorkspaceError(f"manifest {name!r} exists at {folder}; pick another name or pass overwrite=True "
                             "(CLI: --overwrite; the Prune page: 'Overwrite')")


def load_manifest(ws, name: str) -> Manifest:
    """The saved manifest `name`.

    Raises:
        WorkspaceError: no such manifest (the message lists the saved ones).
    """
    folder = ws.path(MANIFESTS, check_name(name, "manifest"))
    if not (folder / "summary.json").exists():
        known = ", ".join(_names(ws)) or "none"
        raise WorkspaceError(f"no manifest {name!r} in {ws.path(MANIFESTS)} (saved: {known}); create one with "
                             f"`python -m clipsim prune --workspace {ws.root} --name {name} ...`")
    return Manifest(ws, name, folder, fileio.read_json(folder / "summary.json"))


def list_manifests(ws) -> pd.DataFrame:
    """One row per saved manifest: name, rule, params (text), kept, removed, share, stale, created, web, tests, base
    (the manifest it was cut from, '' for the whole web set)."""
    rows = []
    for name in _names(ws):
        m = load_manifest(ws, name)
        c = m.summary["combined"]
        rows.append({"name": name, "rule": m.rule, "params": describe_params(m.summary["params"]),
                     "kept": c["kept"], "removed": c["removed"], "share": c["share"], "stale": m.stale,
                     "created": m.summary["created"], "web": m.summary["web"], "tests": ",".join(m.summary["tests"]),
                     "base": (m.summary.get("base") or {}).get("name", "")})
    cols = ["name", "rule", "params", "kept", "removed", "share", "stale", "created", "web", "tests", "base"]
    return pd.DataFrame(rows, columns=cols)


def describe_params(params: dict) -> str:
    """'tau=0.8, tests=sketch,rendition': a rule's parameters as one line."""
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(params.items()))


def _names(ws) -> list[str]:
    root = ws.path(MANIFESTS)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "summary.json").exists())


def _check_counts(stats: PruneStats, rule: str, params: dict, removed: np.ndarray) -> pd.DataFrame:
    if removed.shape != (stats.n,) or removed.dtype != bool:
        raise ValueError(f"removed mask has shape {removed.shape} and dtype {removed.dtype}; the web set "
                         f"{stats.web!r} has {stats.n} samples: pass the (n,) bool array a rule_* function returned")
    counts = stats.summary(rule, **{k: v for k, v in params.items() if k in ("tau", "delta", "keep")})
    if rule == "random":  # no per-test rows: a random subset does not depend on the test sets
        counts = counts[counts["test"] == "combined"].reset_index(drop=True)
    got, want = int(removed.sum()), int(counts["removed"].iloc[-1]) if len(counts) else None
    if want is not None and got != want:
        raise ValueError(f"the mask removes {got} web samples but rule {rule!r} with {describe_params(params)} "
                         f"removes {want}; pass the mask rule_{rule.replace('-', '_')}(stats, ...) returned")
    return counts


def _check_inputs(ws, stats: PruneStats) -> None:
    problems = stats.stale_reasons() if stats.ws is not None else ["statistics were not loaded from this workspace"]
    if problems:
        raise WorkspaceError(
            f"cannot save a manifest from statistics that no longer match the workspace: {'; '.join(problems)}. "
            f"Re-run `python -m clipsim search --workspace {ws.root}` for stale searches, then reload PruneStats")


def _summary(ws, rule, params, stats, removed, counts, progress) -> dict:
    if "keep" in params:
        params["keep_count"] = resolve_keep(stats.n, params["keep"])
    rows = {r.test: {"removed": int(r.removed), "kept": int(r.kept), "share": float(r.share_of_web)}
            for r in counts.itertuples()}
    summary = {
        "rule": rule, "params": params, "web": stats.web, "reference": stats.reference if rule == "similarity-gap" else None,
        "tests": list(stats.tests) if rule != "random" else [], "n": stats.n,
        "inputs": {"search": {t: stats.fingerprints[t] for t in stats.tests} if rule != "random" else {},
                   "web_embeddings": stats.web_fingerprint},
        "counts": {t: v for t, v in rows.items() if t != "combined"},
        "combined": {"removed": int(removed.sum()), "kept": int((~removed).sum()),
                     "share": float(removed.sum() / stats.n) if stats.n else 0.0},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if stats.base is not None:  # counts and shares above are relative to the base's kept rows
        summary["base"] = dict(stats.base)
    if rule in ("threshold", "similarity-gap"):
        summary["post_prune"] = _post_prune_medians(ws, rule, params, stats, stats.full_removed(removed), progress)
    return summary


def _post_prune_medians(ws, rule, params, stats, removed, progress) -> dict:
    """Median s_web(t) before/after per test set, exact: stored top-k where it decides, else one exact scan."""
    from clipsim.prune.post import exact_kept_nn, post_prune_nn_similarity

    frames = {t: post_prune_nn_similarity(ws, t, stats.web, removed, rule, params, stats.tests, stats.reference)
              for t in stats.tests}
    todo = {t: np.flatnonzero(~f["exact"].to_numpy()) for t, f in frames.items()}
    if any(len(rows) for rows in todo.values()):
        queries = np.concatenate([ws.embeddings(t).all()[rows] for t, rows in todo.items()])
        sims, _ = exact_kept_nn(ws, stats.web, removed, queries, progress=progress)
        start = 0
        for t, rows in todo.items():
            frames[t].loc[rows, "s_after"] = sims[start : start + len(rows)]
            start += len(rows)
    out = {}
    for t, f in frames.items():
        out[t] = {"median_before": float(f["s_before"].median()), "median_after": float(f["s_after"].median()),
                  "rescanned": len(todo[t])}
        if rule == "similarity-gap":
            out[t]["median_reference"] = float(ws.nn_similarity(t, stats.reference).median())
    return out


def _write_atomically(root: Path, name: str, keys: dict[str, np.ndarray], summary: dict, overwrite: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    fileio.clear_leftovers(root, name)  # folders of a save killed before its swap
    tmp = fileio.make_temp_dir(root, f".{name}.", ".tmp")
    try:
        for part, values in keys.items():
            fileio.write_parquet(tmp / f"{part}.parquet", pd.DataFrame({"key": pd.Series(values, dtype=str)}))
        fileio.write_json(tmp / "summary.json", json.loads(json.dumps(summary, default=_jsonable)))
        final = root / name
        if final.exists() and not overwrite:
            raise WorkspaceError(f"manifest {name!r} appeared at {final} while writing; pick another name")
        fileio.swap_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_partition(keys: np.ndarray, removed: np.ndarray, web: str) -> None:
    """Check that a manifest's removed and kept keys are disjoint and together are the web set, key for key.

    Args:
        keys: (n,) the web set's keys in row order.
        removed: (n,) bool mask of removed rows.
        web: the web set's name, for the message.

    Raises:
        WorkspaceError: a key repeats in the web set (it would be both removed and kept, and training would read
            removed samples), or the mask does not cover the set.
    """
    keys = np.asarray(keys, dtype=object)
    if len(removed) != len(keys):
        raise WorkspaceError(f"the removed mask has {len(removed)} rows but web set {web!r} has {len(keys)} keys")
    # removed = keys[mask] and kept = keys[~mask] cover the rows exactly once, so they are disjoint and cover the
    # set as keys exactly when no key repeats (checked on 8-byte hashes, confirmed on the keys)
    repeated = repeated_keys({0: key_hashes(keys)}, lambda _: pd.Series(keys))
    if repeated:
        raise WorkspaceError(
            f"web set {web!r} repeats keys (e.g. {', '.join(repr(k) for k, _, _ in repeated)}), so a manifest would "
            "list a key as removed and as kept and training would read removed samples; make the keys unique "
            "(re-embed, or fix the imported metadata) before pruning")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def save_keys_manifest(ws, name: str, web: str, removed_keys, rule: str = "tagged", params: dict | None = None,
                       overwrite: bool = False) -> Manifest:
    """Write manifest `name` that removes the given web keys ("remove these"), in the same format and with the same
    commit point as save_manifest, so training accepts it like any other.

    Args:
        ws: the workspace.
        name: manifest name.
        web: the train set the keys belong to.
        removed_keys: keys to remove; keys not in `web` are counted in summary['unknown_keys'], not removed.
        rule: what made the list (recorded; e.g. 'tagged').
        params: recorded as the manifest's parameters (e.g. {'tag': 'dup'}).
        overwrite: replace an existing manifest of that name.

    Returns:
        The saved manifest.

    Raises:
        ReadOnlyError: the workspace is served read-only.
        WorkspaceError: the name exists (without overwrite), or no key is in `web`.
    """
    if read_only():
        raise ReadOnlyError(f"this workspace is served read-only (CLIPSIM_READ_ONLY=1); manifest {name!r} was not saved")
    check_name(name, "manifest")
    folder = ws.path(MANIFESTS, name)
    if folder.exists() and not overwrite:
        raise WorkspaceError(f"manifest {name!r} exists at {folder}; pick another name or pass overwrite=True (CLI: --overwrite)")
    emb = ws.embeddings(web)
    keys = np.asarray(emb.keys()).astype(str)
    wanted = pd.unique(pd.Series(list(removed_keys), dtype=str))
    removed = np.isin(keys, wanted)
    if not removed.any():
        raise WorkspaceError(f"none of the {len(wanted)} keys is in train set {web!r} ({ws.embedding_dir(web)}); "
                             "tag images of the web set, or pick the set they belong to")
    n = len(keys)
    summary = {"rule": rule, "params": dict(params or {}), "web": web, "reference": None, "tests": [], "n": n,
               "inputs": {"search": {}, "web_embeddings": emb.fingerprint()}, "counts": {},
               "combined": {"removed": int(removed.sum()), "kept": int((~removed).sum()),
                            "share": float(removed.sum() / n) if n else 0.0},
               "unknown_keys": int(len(wanted) - np.isin(wanted, keys).sum()),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_atomically(ws.path(MANIFESTS), name, {"removed": keys[removed], "kept": keys[~removed]}, summary, overwrite)
    return load_manifest(ws, name)
