"""Weight matching (Git Re-Basin style): align hidden units, then compare weights by L2.

For each pair (A, B), B's hidden units are permuted to fit A's: one forward sweep matches
layer l on incoming weights and bias (with layer l-1 already matched; the last hidden layer
also uses its outgoing weights, since output units are fixed), then `sweeps` rounds of
coordinate descent re-match every layer on incoming and outgoing weights together. Each
step is a linear assignment (scipy's `linear_sum_assignment`). Similarity is minus the L2
distance between A and the permuted B over all weights and biases.

`mode="pairwise"` solves every pair (n^2 / 2 pairs, the faithful baseline).
`mode="reference"` aligns every network once to a common reference (the first network,
then `ref_iters` times the mean of the aligned set) and compares aligned weights directly:
n alignments instead of n^2 / 2, and an embedding usable in an L2 index, at the cost of
pairs that a common reference aligns worse than a direct match would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from paramsim.errors import ParamsimError
from paramsim.features._common import FixedMethod, context_or_default, ensure
from paramsim.features.base import Context
from paramsim.weights import Network, NetworkStack


def _views(stack: NetworkStack) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights as (M, units_l, units_{l-1}, rest) so permutations act on dims 1 and 2."""
    ws, prev = [], 1
    for w in stack.weights:
        m, out = w.shape[:2]
        ws.append(w.reshape(m, out, prev, -1).float())
        prev = out
    return ws, [b.float() for b in stack.biases]


def _take(x: torch.Tensor, perm: torch.Tensor | None, dim: int) -> torch.Tensor:
    """x[p, ..., perm[p], ...] along `dim` (1 or 2) for a batch of pairs p (perm (P, units))."""
    if perm is None:
        return x
    rows = torch.arange(len(perm)).unsqueeze(1)
    if dim == 1:
        return x[rows, perm]
    return x.transpose(1, 2)[rows, perm].transpose(1, 2)


def _solve(cost: torch.Tensor) -> torch.Tensor:
    """Per pair, the permutation p maximising sum_i cost[i, p[i]]."""
    c = cost.numpy()
    if not np.isfinite(c).all():
        raise ParamsimError(
            "weight matching cannot align these models: their weights overflow float32 "
            "arithmetic (check or rescale the checkpoints)"
        )
    out = np.empty(c.shape[:2], dtype=np.int64)
    for k in range(len(c)):
        out[k] = linear_sum_assignment(c[k], maximize=True)[1]
    return torch.from_numpy(out)


def align(
    a_w: list[torch.Tensor],
    a_b: list[torch.Tensor],
    b_w: list[torch.Tensor],
    b_b: list[torch.Tensor],
    sweeps: int = 1,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """B's weights permuted to fit A's, for a batch of pairs (leading dim P everywhere)."""
    n_hidden = len(a_w) - 1
    perms: list[torch.Tensor | None] = [None] * n_hidden

    def cost(l: int, outgoing: bool) -> torch.Tensor:
        bw = _take(b_w[l], perms[l - 1] if l > 0 else None, 2)
        c = torch.einsum("pixr,pjxr->pij", a_w[l], bw)
        c = c + a_b[l][:, :, None] * b_b[l][:, None, :]
        if outgoing:
            nxt = _take(b_w[l + 1], perms[l + 1] if l + 1 < n_hidden else None, 1)
            c = c + torch.einsum("poir,pojr->pij", a_w[l + 1], nxt)
        return c

    for l in range(n_hidden):  # forward sweep: next layer's order is known only at the end
        perms[l] = _solve(cost(l, outgoing=l == n_hidden - 1))
    for _ in range(sweeps):
        for l in range(n_hidden):
            perms[l] = _solve(cost(l, outgoing=True))
    out_w, out_b = [], []
    for l in range(n_hidden + 1):
        w = _take(b_w[l], perms[l - 1] if l > 0 else None, 2)
        b = b_b[l]
        if l < n_hidden:
            w, b = _take(w, perms[l], 1), _take(b, perms[l], 1)
        out_w.append(w)
        out_b.append(b)
    return out_w, out_b


def _flat(ws: list[torch.Tensor], bs: list[torch.Tensor]) -> torch.Tensor:
    m = ws[0].shape[0]
    return torch.cat([t.reshape(m, -1) for pair in zip(ws, bs, strict=True) for t in pair], 1)


class MatchMethod(FixedMethod):
    """Weight matching of hidden units by linear assignment, then minus L2 distance."""

    name = "match"
    weights_only = True

    def __init__(
        self,
        mode: str = "pairwise",
        sweeps: int = 1,
        ref_iters: int = 2,
        batch_pairs: int = 4096,
    ) -> None:
        if mode not in ("pairwise", "reference"):
            raise ParamsimError(f"match mode must be pairwise or reference, got {mode!r}")
        self.mode, self.sweeps, self.ref_iters = mode, int(sweeps), int(ref_iters)
        self.batch_pairs = int(batch_pairs)

    @property
    def set_dependent(self) -> bool:  # type: ignore[override]
        """Reference mode aligns every network to the mean of the set it is given."""
        return self.mode == "reference"

    def check(self, networks: Sequence[Network]) -> str | None:
        sigs = {n.signature() for n in networks}
        if len(sigs) > 1:
            return "weight matching needs one architecture; use gram1, chain or e2e"
        return None

    def _stack(self, networks: Sequence[Network]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ensure(self, networks)
        return _views(NetworkStack.from_networks(list(networks)))

    def embed(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        """Reference mode only: every network's weights aligned to the common reference."""
        if self.mode != "reference":
            raise NotImplementedError("match compares pairs; use mode='reference' to embed")
        ws, bs = self._stack(networks)
        n = len(networks)
        ref_w, ref_b = [w[:1] for w in ws], [b[:1] for b in bs]
        for it in range(self.ref_iters + 1):
            aw, ab = [], []
            for s in range(0, n, self.batch_pairs):
                sl = slice(s, s + self.batch_pairs)
                k = len(ws[0][sl])
                rw = [w.expand(k, *w.shape[1:]) for w in ref_w]
                rb = [b.expand(k, *b.shape[1:]) for b in ref_b]
                w_, b_ = align(rw, rb, [w[sl] for w in ws], [b[sl] for b in bs], self.sweeps)
                aw.append(w_)
                ab.append(b_)
            aligned_w = [torch.cat([a[i] for a in aw]) for i in range(len(ws))]
            aligned_b = [torch.cat([a[i] for a in ab]) for i in range(len(bs))]
            if it < self.ref_iters:
                ref_w = [w.mean(0, keepdim=True) for w in aligned_w]
                ref_b = [b.mean(0, keepdim=True) for b in aligned_b]
        return _flat(aligned_w, aligned_b).numpy()

    def similarity(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        """(n, n) minus L2 distances after matching; the diagonal is 0."""
        context_or_default(context)
        if self.mode == "reference":
            # float64: cdist of float32 rows past 25 of them goes through |a|^2 + |b|^2 - 2ab,
            # which cancels to noise for close models (and puts noise on the diagonal)
            e = torch.from_numpy(self.embed(networks)).double()
            dist = torch.cdist(e, e).numpy()
            sim = -(dist + dist.T) / 2
            np.fill_diagonal(sim, 0.0)
            return sim
        ws, bs = self._stack(networks)
        n = len(networks)
        ia, ib = np.triu_indices(n, k=1)
        dist = np.zeros(len(ia))
        for s in range(0, len(ia), self.batch_pairs):
            a = torch.from_numpy(ia[s : s + self.batch_pairs])
            b = torch.from_numpy(ib[s : s + self.batch_pairs])
            aw, ab = [w[a] for w in ws], [x[a] for x in bs]
            pw, pb = align(aw, ab, [w[b] for w in ws], [x[b] for x in bs], self.sweeps)
            dist[s : s + len(a)] = (_flat(aw, ab) - _flat(pw, pb)).norm(dim=1).numpy()
        sim = np.zeros((n, n))
        sim[ia, ib] = sim[ib, ia] = -dist
        return sim
