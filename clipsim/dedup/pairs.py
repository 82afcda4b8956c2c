"""What clustering misses: the exact global eps-duplicate pairs of a set (the set against itself, no self pairs)
and how many of them the clustering split across clusters (its recall at eps).

Every pair (i < j) with canonical similarity c(x_i, x_j) > 1 - eps is found with the search kernels: query blocks
against every later block, screened in low precision with the proven bound (clipsim.search.exact), hits found
segment by segment (clipsim.search.scan.hits) and re-checked in float64. Work is O(n^2 d): meant for sets up to a
few million rows, or a sample. One part file per query block (`global/eps<eps>/parts/`) makes it resumable;
`pairs.npz` and `config.json`, written last, commit it.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipsim import fileio
from clipsim.dedup.within import gather_sorted
from clipsim.errors import WorkspaceError
from clipsim.prune.stats import floor32
from clipsim.search.exact import Screen, exact_dots
from clipsim.search.passes import resolve_precision, write_npz
from clipsim.search.result import digest
from clipsim.search.scan import TILE_ELEMENTS
from clipsim.search.tiles import at_least, hits

QUERY_ROWS = 16384  # rows per query block: its float16 copy and screen copy stay small (21 MB at dim 640)


def pairs_dir(ws, web: str, eps: float) -> Path:
    """Folder of the global pairs of `web` at eps."""
    return ws.path("dedup", web, "global", f"eps{float(eps):g}")


@dataclass
class GlobalPairs:
    """Committed exact global eps-duplicate pairs of a set.

    Attributes:
        folder: where they are stored.
        config: parsed config.json (eps, cut, rows, pairs, web fingerprint, ...).
    """

    folder: Path
    config: dict

    @classmethod
    def load(cls, ws, web: str, eps: float) -> GlobalPairs:
        """The committed pairs of `web` at eps.

        Raises:
            WorkspaceError: not computed (the message names the command).
        """
        folder = pairs_dir(ws, web, eps)
        if not (folder / "config.json").exists():
            raise WorkspaceError(f"no exact global pairs of {web!r} at eps={eps:g} in {folder}; run `python -m clipsim "
                                 f"dedup --workspace {ws.root} --dataset {web} --eps {eps:g} --exact-global --name NAME`")
        return cls(folder, fileio.read_json(folder / "config.json"))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i (p,) int64, j (p,) int64 with i < j, similarity (p,) float32), sorted by (i, j)."""
        with np.load(self.folder / "pairs.npz") as z:
            return z["i"], z["j"], z["sim"]


def block_pairs(q16: torch.Tensor, x16: torch.Tensor, cut: np.float32, screen: Screen, upper: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (r, c) of query rows and block rows with canonical similarity > cut.

    Args:
        q16: (n_q, d) float16 query rows; x16: (n_x, d) float16 block rows, on the screen's device.
        cut: float32 cut (strict).
        screen: the low-precision screen.
        upper: q16 and x16 are the same rows: keep only r < c.

    Returns:
        (r (p,) int64, c (p,) int64, sim (p,) float32), row-major order.
    """
    q_lo, nq, rq = screen.prepare(q16)
    x_lo, nx, rx = (q_lo, nq, rq) if upper else screen.prepare(x16)
    bound = screen.bound((nq, rq), (nx, rx))
    chunk = max(1, TILE_ELEMENTS // max(1, len(x16)))
    rs, cs, vs = [], [], []
    for lo in range(0, len(q16), chunk):
        s = screen.product(q_lo[lo : lo + chunk], x_lo)
        floor = torch.full((len(s),), float(cut) - bound, device=s.device)
        r, c = hits(s, at_least(floor, s.dtype))
        r = r + lo
        if upper:
            keep = r < c
            r, c = r[keep], c[keep]
        vals = exact_dots(q16, r, x16, c)
        above = vals > float(cut)
        rs.append(r[above])
        cs.append(c[above])
        vs.append(vals[above])
    empty = torch.zeros(0, dtype=torch.int64, device=q16.device)
    if not rs:
        return empty, empty, torch.zeros(0, device=q16.device)
    return torch.cat(rs), torch.cat(cs), torch.cat(vs)


def global_pairs(ws, web: str, eps: float, precision: str = "auto", device: str = "auto",
                 query_rows: int = QUERY_ROWS, progress=None) -> GlobalPairs:
    """Compute (or reuse) every pair i < j of `web` with c(x_i, x_j) > 1 - eps, exactly; resumable per query block.

    Args:
        ws: the workspace.
        web: set name.
        eps: SemDeDup's eps (cut at cosine 1 - eps, strict).
        precision, device: screen precision and torch device.
        query_rows: rows per query block (each is compared with itself and every later block).
        progress: optional callable(done, total, description) over block pairs.

    Returns:
        The committed GlobalPairs.
    """
    emb = ws.embeddings(web)
    cut = floor32(1.0 - float(eps))
    folder = pairs_dir(ws, web, eps)
    signature = digest(emb.fingerprint(), float(cut), int(query_rows))
    if (folder / "config.json").exists() and fileio.read_json(folder / "config.json").get("fingerprint") == signature:
        return GlobalPairs.load(ws, web, eps)
    (folder / "config.json").unlink(missing_ok=True)
    prec, dev = resolve_precision(precision, device)
    screen, t0 = Screen(prec, dev, emb.dim), time.time()
    starts = list(range(0, emb.count, query_rows))
    total, done = len(starts) * (len(starts) + 1) // 2, 0
    for a in starts:
        path = folder / "parts" / f"q{a}.npz"
        if not _done(path, signature):
            _query_block(emb, a, query_rows, cut, screen, path, signature)
        done += len(starts) - a // query_rows
        if progress:
            progress(done, total, f"exact global pairs of {web} at eps={eps:g}")
    parts = []
    for a in starts:
        with np.load(folder / "parts" / f"q{a}.npz") as z:
            parts.append({k: z[k] for k in ("i", "j", "sim")})
    arrays = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64 if k != "sim" else np.float32)
              for k in ("i", "j", "sim")}
    by_pair = np.lexsort((arrays["j"], arrays["i"]))
    arrays = {k: v[by_pair] for k, v in arrays.items()}
    write_npz(folder / "pairs.npz", arrays)
    fileio.write_json(folder / "config.json", {
        "web": web, "eps": float(eps), "cut": float(cut), "rows": emb.count, "pairs": len(arrays["i"]),
        "web_fingerprint": emb.fingerprint(), "precision": prec, "device": str(dev), "fingerprint": signature,
        "seconds": round(time.time() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    shutil.rmtree(folder / "parts", ignore_errors=True)
    return GlobalPairs.load(ws, web, eps)


def _done(path: Path, signature: str) -> bool:
    if not path.exists():
        return False
    with np.load(path) as z:
        return str(z["signature"]) == signature


def query_block_pairs(emb, a: int, query_rows: int, cut: np.float32, screen: Screen) -> dict[str, np.ndarray]:
    """Pairs (i, j) with i in query rows a .. a + query_rows, j > i anywhere after, and similarity > cut.

    Returns:
        {"i", "j": (p,) int64 global rows, "sim": (p,) float32}.
    """
    b = min(emb.count, a + query_rows)
    q16 = torch.from_numpy(gather_sorted(emb, np.arange(a, b))).to(screen.device)
    out = {"i": [], "j": [], "sim": []}
    for x0 in range(a, emb.count, query_rows):
        x1 = min(emb.count, x0 + query_rows)
        x16 = q16 if x0 == a else torch.from_numpy(gather_sorted(emb, np.arange(x0, x1))).to(screen.device)
        r, c, v = block_pairs(q16, x16, cut, screen, upper=x0 == a)
        out["i"].append(r.cpu().numpy() + a)
        out["j"].append(c.cpu().numpy() + x0)
        out["sim"].append(v.cpu().numpy().astype(np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


def exact_pairs(emb, eps: float, precision: str = "auto", device: str = "auto",
                query_rows: int = QUERY_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact global eps-pairs of an EmbeddingSet in memory, nothing stored (small sets; see global_pairs).

    Returns:
        (i, j, sim) as GlobalPairs.arrays(), sorted by (i, j).
    """
    prec, dev = resolve_precision(precision, device)
    screen, cut = Screen(prec, dev, emb.dim), floor32(1.0 - float(eps))
    parts = [query_block_pairs(emb, a, query_rows, cut, screen) for a in range(0, emb.count, query_rows)]
    i, j, sim = (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in ("i", "j", "sim"))
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), sim[order].astype(np.float32)


def _query_block(emb, a: int, query_rows: int, cut: np.float32, screen: Screen, path: Path, signature: str) -> None:
    """query_block_pairs of one query block, saved as one part."""
    write_npz(path, query_block_pairs(emb, a, query_rows, cut, screen) | {"signature": np.array(signature)})


def cluster_recall(pairs: tuple[np.ndarray, np.ndarray, np.ndarray], cluster: np.ndarray) -> dict:
    """How many exact eps-duplicate pairs lie within one cluster: the clustering's recall at eps.

    Args:
        pairs: (i, j, sim) from GlobalPairs.arrays().
        cluster: (n,) cluster of every row.

    Returns:
        {"pairs", "same_cluster", "split" (pairs across clusters, which within-cluster dedup cannot see),
        "recall" (same_cluster / pairs; 1.0 when there is no pair)}.
    """
    i, j, _ = pairs
    same = int((cluster[i] == cluster[j]).sum())
    return {"pairs": len(i), "same_cluster": same, "split": len(i) - same,
            "recall": same / len(i) if len(i) else 1.0}
