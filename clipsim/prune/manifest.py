"""Pruning manifests: `manifests/<name>/` with removed/kept keys, the rule, its counts and input fingerprints.

A manifest is written into a hidden temporary sibling folder and renamed into place, so no half-written
manifest ever looks whole. It is stale when the web embeddings or a search it was cut from changed since.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clipsim import fileio
from clipsim.errors import ReadOnlyError, WorkspaceError
from clipsim.names import check_name, read_only
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
        emb = self.ws.embeddings(web, required=False)
        if (emb.fingerprint() if emb is not None and emb.count else None) != inputs["web_embeddings"]:
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
        WorkspaceError: the name exists (without overwrite), or the statistics no longer match the workspace.
        ValueError: missing parameters, or a mask that does not match the rule's counts.
    """
    if read_only():
        raise ReadOnlyError(f"this workspace is served read-only (CLIPSIM_READ_ONLY=1); manifest {name!r} was not saved")
    check_name(name, "manifest")
    folder = ws.path(MANIFESTS, name)
    if folder.exists() and not overwrite:
        raise WorkspaceError(f"manifest {name!r} exists at {folder}; pick another name or pass overwrite=True (CLI: --overwrite)")
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
    keys = np.asarray(stats.keys)
    _write_atomically(ws.path(MANIFESTS), name, {"removed": keys[removed], "kept": keys[~removed]}, summary, overwrite)
    return load_manifest(ws, name)


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
    """One row per saved manifest: name, rule, params (text), kept, removed, share, stale, created, web, tests."""
    rows = []
    for name in _names(ws):
        m = load_manifest(ws, name)
        c = m.summary["combined"]
        rows.append({"name": name, "rule": m.rule, "params": describe_params(m.summary["params"]),
                     "kept": c["kept"], "removed": c["removed"], "share": c["share"], "stale": m.stale,
                     "created": m.summary["created"], "web": m.summary["web"], "tests": ",".join(m.summary["tests"])})
    cols = ["name", "rule", "params", "kept", "removed", "share", "stale", "created", "web", "tests"]
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
    if rule in ("threshold", "similarity-gap"):
        summary["post_prune"] = _post_prune_medians(ws, rule, params, stats, removed, progress)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        for part, values in keys.items():
            fileio.write_parquet(tmp / f"{part}.parquet", pd.DataFrame({"key": pd.Series(values, dtype=str)}))
        fileio.write_json(tmp / "summary.json", json.loads(json.dumps(summary, default=_jsonable)))
        final = root / name
        if final.exists():
            if not overwrite:
                raise WorkspaceError(f"manifest {name!r} appeared at {final} while writing; pick another name")
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=root))
            final.rename(old / name)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
