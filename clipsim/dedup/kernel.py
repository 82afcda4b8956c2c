"""Exact similarity maxima inside one cluster, in SemDeDup's order, with memory bounded by one block of the cluster.

For members x_0 .. x_{m-1} in keep order (clipsim.dedup.within) the kernel returns, per member p,
  earlier(p) = max_{q < p} c(x_p, x_q)   (SemDeDup's M: p is removed at eps when earlier(p) > 1 - eps)
  any(p)     = max_{q != p} c(x_p, x_q)  (its nearest other member)
and the position attaining each (ties: the lower position), where c is the canonical similarity of search,
float32(float64 x_p . x_q). Tiles of BLOCK x BLOCK positions are screened in low precision (clipsim.search.exact
`Screen`, with its proven bound); every pair within twice the bound of a row's running maximum is re-checked in
float64, so the result is bit for bit what float32(X64 X64^T) brute force gives, whatever the precision or block.
"""
from __future__ import annotations

import torch

from clipsim.search.exact import Screen, exact_dots
from clipsim.search.tiles import at_least

BLOCK = 4096  # positions per tile side: one 4096 x 4096 float32 tile is 64 MB, the scanner's TILE_ELEMENTS


class RowBlockMax:
    """Running maxima of one block of rows over column tiles; candidates re-checked exactly at the end.

    Args:
        rows: rows in the block.
        bound: screen error bound of every tile entry.
        device: torch device.
    """

    def __init__(self, rows: int, bound: float, device: torch.device):
        self.bound = bound
        self.lo = torch.full((rows,), -torch.inf, device=device)
        self.ti, self.uj, self.s = [], [], []

    def add(self, s: torch.Tensor, col0: int) -> None:
        """s: (rows, cols) screened tile of columns col0 .. col0 + cols; masked entries are -inf."""
        self.lo = torch.maximum(self.lo, s.amax(dim=1).float())
        # a row with no entry so far has lo = -inf: it has no candidate (and -inf entries must not match it)
        thr = torch.where(torch.isfinite(self.lo), self.lo - 2 * self.bound, torch.full_like(self.lo, torch.inf))
        ti, uj = torch.nonzero(s >= at_least(thr, s.dtype)[:, None], as_tuple=True)
        self.ti.append(ti)
        self.uj.append(uj + col0)
        self.s.append(s[ti, uj].float())

    def exact(self, x16: torch.Tensor, row0: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(max (rows,) float32, -inf where none; argmax position (rows,) int64, the lowest on ties, -1 where none)."""
        n = len(self.lo)
        best = torch.full((n,), -torch.inf, device=self.lo.device)
        arg = torch.full((n,), -1, dtype=torch.int64, device=self.lo.device)
        if not self.ti:
            return best, arg
        ti, uj, s = torch.cat(self.ti), torch.cat(self.uj), torch.cat(self.s)
        keep = s >= self.lo[ti] - 2 * self.bound
        ti, uj = ti[keep], uj[keep]
        if len(ti) == 0:
            return best, arg
        vals = exact_dots(x16, ti + row0, x16, uj)
        best = best.scatter_reduce(0, ti, vals, "amax")
        tie = vals == best[ti]
        none = torch.iinfo(torch.int64).max
        arg = torch.full((n,), none, dtype=torch.int64, device=vals.device).scatter_reduce(0, ti[tie], uj[tie], "amin")
        return best, arg.masked_fill(arg == none, -1)


def cluster_maxima(x16: torch.Tensor, screen: Screen, block: int | None = None) -> dict[str, torch.Tensor]:
    """Exact earlier and any-other maxima of the members of one cluster (see the module docstring).

    Args:
        x16: (m, d) float16 members in keep order, on the screen's device.
        screen: the low-precision screen.
        block: tile side in positions (memory: block x block entries per tile; default BLOCK).

    Returns:
        {"earlier_sim", "any_sim": (m,) float32 (-inf where none), "earlier_pos", "any_pos": (m,) int64 (-1)}.
    """
    m, block = len(x16), int(block or BLOCK)
    x_lo, norm, resid = screen.prepare(x16)
    bound = screen.bound((norm, resid), (norm, resid))
    out = {k: [] for k in ("earlier_sim", "earlier_pos", "any_sim", "any_pos")}
    for a in range(0, m, block):
        b = min(m, a + block)
        earlier, anyone = RowBlockMax(b - a, bound, x16.device), RowBlockMax(b - a, bound, x16.device)
        for c0 in range(0, m, block):
            c1 = min(m, c0 + block)
            s = screen.product(x_lo[a:b], x_lo[c0:c1])
            if c0 == a:  # the diagonal tile: no self pairs; earlier members only below the diagonal
                p = torch.arange(a, b, device=x16.device)[:, None]
                q = torch.arange(c0, c1, device=x16.device)[None, :]
                anyone.add(s.masked_fill(p == q, -torch.inf), c0)
                earlier.add(s.masked_fill(q >= p, -torch.inf), c0)
            else:
                anyone.add(s, c0)
                if c1 <= a:
                    earlier.add(s, c0)
        for name, acc in (("earlier", earlier), ("any", anyone)):
            best, arg = acc.exact(x16, a)
            out[f"{name}_sim"].append(best)
            out[f"{name}_pos"].append(arg)
    if m == 0:
        empty = torch.zeros(0, device=x16.device)
        return {"earlier_sim": empty, "any_sim": empty, "earlier_pos": empty.long(), "any_pos": empty.long()}
    return {k: torch.cat(v) for k, v in out.items()}
