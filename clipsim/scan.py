"""One pass over train blocks against in-memory queries: running top-k per query and per-row maxima.

Each block is screened once in low precision; both directions (test -> train top-k, train -> test max and
margin) come from the same product tile, and every reported value is re-checked exactly (see exact.py).
Ties are broken by the lower index, as a stable sort of the brute-force matrix would.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clipsim.exact import Screen, exact_dots, exact_margin

TILE_ELEMENTS = 2**24  # one float32 product tile (64 MB); bounds memory beside the block itself


@dataclass
class Group:
    """A contiguous range of query rows scored as one test set, with optional per-query offsets.

    offsets maps a reference name to (n_group,) float32 s_ref(t); per train row the scanner then also
    reports max_t (c(x, t) - s_ref(t)) and its argmax.
    """

    name: str
    start: int
    stop: int
    offsets: dict[str, np.ndarray] | None = None


class ExactScanner:
    """Streams train blocks (global row order) against queries; exact top-k and per-row statistics.

    Args:
        queries: (n_q, d) float16, L2-normalised.
        groups: query ranges (test sets); per-row statistics are reported per group.
        k: neighbours kept per query.
        precision: screen precision ('fp32', 'bf16', 'fp16').
        device: torch device.
    """

    def __init__(self, queries: np.ndarray, groups: list[Group], k: int, precision: str, device: torch.device):
        self.k, self.groups, self.device = k, groups, device
        self.q16 = torch.as_tensor(np.ascontiguousarray(queries, dtype=np.float16), device=device)
        self.screen = Screen(precision, device, queries.shape[1])
        self.q_lo, nq, rq = self.screen.prepare(self.q16)
        self.q_stats = (nq, rq)
        self.top_s = torch.full((len(queries), k), -torch.inf, dtype=torch.float32, device=device)
        self.top_i = torch.full((len(queries), k), -1, dtype=torch.int64, device=device)
        self.offsets = {
            g.name: {r: torch.as_tensor(np.asarray(o, np.float32), device=device) for r, o in (g.offsets or {}).items()}
            for g in groups
        }
        self.rechecked = 0  # exact dot products computed, for benchmarks

    def state(self) -> dict[str, np.ndarray]:
        """Running top-k as numpy arrays, for checkpointing."""
        return {"top_s": self.top_s.cpu().numpy(), "top_i": self.top_i.cpu().numpy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a checkpoint made by `state()`."""
        self.top_s = torch.as_tensor(state["top_s"], device=self.device)
        self.top_i = torch.as_tensor(state["top_i"], device=self.device)

    def add_block(self, block: np.ndarray, base: int) -> dict[str, dict[str, np.ndarray]]:
        """Score one train block; update the top-k and return its per-row statistics.

        Args:
            block: (n_b, d) float16 rows with global ids base .. base + n_b - 1.
            base: global id of block[0].

        Returns:
            {group: {"max_sim": (n_b,) f32, "argmax": (n_b,) i32, "margin/<ref>": (n_b,) f32,
            "margin_argmax/<ref>": (n_b,) i32}}; argmax indexes the group's rows.
        """
        x16 = torch.as_tensor(np.ascontiguousarray(block, dtype=np.float16), device=self.device)
        x_lo, nx, rx = self.screen.prepare(x16)
        bound = self.screen.bound(self.q_stats, (nx, rx))
        chunk = max(1, TILE_ELEMENTS // max(1, len(block)))
        stats = {}
        for g in self.groups:
            best: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for lo in range(g.start, g.stop, chunk):
                hi = min(g.stop, lo + chunk)
                s = self.screen.product(self.q_lo[lo:hi], x_lo)
                self._update_topk(s, lo, x16, base, bound)
                part = {"": self._row_max(s, lo, x16, bound, None)}
                for ref, off in self.offsets[g.name].items():
                    part[ref] = self._row_max(s, lo, x16, bound + 2.0**-21, off[lo - g.start : hi - g.start])
                for key, (val, arg) in part.items():
                    arg = arg + (lo - g.start)
                    if key in best:  # later chunks hold higher query indices: replace only when strictly greater
                        old_val, old_arg = best[key]
                        take = val > old_val
                        val, arg = torch.where(take, val, old_val), torch.where(take, arg, old_arg)
                    best[key] = (val, arg)
            out = {"max_sim": best[""][0], "argmax": best[""][1]}
            for ref in self.offsets[g.name]:
                out[f"margin/{ref}"], out[f"margin_argmax/{ref}"] = best[ref]
            stats[g.name] = {
                name: v.cpu().numpy().astype(np.float32 if v.is_floating_point() else np.int32) for name, v in out.items()
            }
        return stats

    def _row_max(self, s, q0, x16, bound, offsets) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-train-row max over this query chunk of c (or of c - offset) and its first argmax."""
        adj = s if offsets is None else s - offsets[:, None]
        lo_max = adj.max(dim=0).values
        qi, xj = torch.nonzero(adj >= (lo_max - 2 * bound)[None, :], as_tuple=True)
        vals = exact_dots(self.q16, qi + q0, x16, xj)
        self.rechecked += len(vals)
        if offsets is not None:
            vals = exact_margin(vals, offsets[qi])
        n_b = s.shape[1]
        best = torch.full((n_b,), -torch.inf, device=s.device).scatter_reduce(0, xj, vals, "amax")
        tie = vals == best[xj]
        arg = torch.full((n_b,), len(s), dtype=torch.int64, device=s.device)
        arg = arg.scatter_reduce(0, xj[tie], qi[tie], "amin")
        return best, arg

    def _update_topk(self, s, q0, x16, base, bound) -> None:
        """Merge this tile's exact candidates into the running top-k of query rows q0 .. q0 + len(s)."""
        rows = torch.arange(q0, q0 + len(s), device=s.device)
        kth = self.top_s[rows, -1]
        active = torch.nonzero(s.max(dim=1).values + bound >= kth, as_tuple=True)[0]
        if len(active) == 0:
            return
        m = min(self.k + 1, s.shape[1])
        lo_vals, lo_idx = torch.topk(s[active], m, dim=1)
        n_take = min(self.k, s.shape[1])
        cand = lo_idx[:, :n_take]
        qi = (active + q0)[:, None].expand_as(cand)
        vals = exact_dots(self.q16, qi.reshape(-1), x16, cand.reshape(-1)).view(cand.shape)
        self.rechecked += vals.numel()
        self._merge(rows[active], vals, cand + base)
        if m == self.k + 1:  # an item outside the screened top-k may still beat the new k-th: re-check those rows
            unsafe = torch.nonzero(lo_vals[:, -1] + bound >= self.top_s[rows[active], -1], as_tuple=True)[0]
            for a in unsafe.tolist():
                r = int(active[a])
                j = torch.nonzero(s[r] >= self.top_s[q0 + r, -1] - bound, as_tuple=True)[0]
                j = j[~torch.isin(j + base, self.top_i[q0 + r])]  # already merged above
                qj = torch.full_like(j, q0 + r)
                v = exact_dots(self.q16, qj, x16, j)
                self.rechecked += len(v)
                self._merge(torch.tensor([q0 + r], device=s.device), v[None], (j + base)[None])

    def _merge(self, rows: torch.Tensor, vals: torch.Tensor, ids: torch.Tensor) -> None:
        """Keep the k best of (running, new) per row, ordered by (-sim, id)."""
        all_s = torch.cat([self.top_s[rows], vals], dim=1)
        all_i = torch.cat([self.top_i[rows], ids], dim=1)
        all_i = torch.where(all_i < 0, torch.iinfo(torch.int64).max, all_i)  # empty slots sort last
        order = torch.sort(all_i, dim=1, stable=True).indices
        all_s, all_i = all_s.gather(1, order), all_i.gather(1, order)
        order = torch.sort(-all_s, dim=1, stable=True).indices[:, : self.k]
        all_i = all_i.gather(1, order)
        self.top_s[rows] = all_s.gather(1, order)
        self.top_i[rows] = torch.where(all_i == torch.iinfo(torch.int64).max, -1, all_i)
