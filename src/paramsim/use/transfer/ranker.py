"""A weights-only selector that learns what transfers (`rank:BASE`).

A similarity method is trained (or designed) to recognise the same task, not to rank sources
by how well they fine-tune to a new one. The ranker keeps the base method's embeddings and
learns, from sources fine-tuned on *training* targets, a correction: score(p, s) = cos(p, s)
+ h([p * s, |p - s|]) for unit embeddings p (the probe) and s (a source), h a two-layer MLP
whose output layer starts at zero (so an untrained ranker is the base method). The loss is
RankNet's pairwise logistic loss (Burges et al., ICML 2005) over pairs of candidates of one
draw, weighted by their accuracy difference.

It never sees its targets' fold: `evaluate_transfer` fits one ranker per fold of target tasks
on the draws of the other folds, with the held-out fold's tasks removed from the sources too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class RankData:
    """What a ranker trains on: draws (probes) x candidate sources, with their outcomes."""

    probe: np.ndarray  # (J, d) probe embeddings of the training draws
    sources: np.ndarray  # (n, d) source embeddings
    accuracy: np.ndarray  # (J, n) fine-tuned test accuracy, NaN where not a candidate
    target_tasks: Sequence[str]  # (J,) the training draws' target tasks
    source_tasks: Sequence[str]  # (n,) the sources' tasks


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class PairRanker(nn.Module):
    """cos(p, s) plus a learned correction on the pair's elementwise features.

    Embeddings can be wide (gram1: 2080 numbers), so the correction reads them projected on
    their `dim` leading principal directions among the training sources; the cosine term
    uses the full embeddings.
    """

    def __init__(self, basis: torch.Tensor, mean: torch.Tensor, hidden: int = 32, seed: int = 0):
        super().__init__()
        self.register_buffer("basis", basis)  # (d, q)
        self.register_buffer("mean", mean)  # (d,)
        q = basis.shape[1]
        gen = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(2 * q, hidden)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            bound = 1.0 / (2 * q) ** 0.5
            self.hidden.weight.copy_((torch.rand(hidden, 2 * q, generator=gen) * 2 - 1) * bound)
            self.hidden.bias.zero_()
            self.out.weight.zero_()  # untrained, the ranker is the base method
            self.out.bias.zero_()

    def project(self, e: torch.Tensor) -> torch.Tensor:
        return (e - self.mean) @ self.basis

    def correction(self, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The learned term for projected p, s (..., q), broadcast together."""
        pair = torch.cat([p * s, (p - s).abs()], dim=-1)
        return self.out(torch.relu(self.hidden(pair))).squeeze(-1)

    def forward(self, p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Scores (J, n) of unit probe (J, d) and source (n, d) embeddings."""
        return p @ s.T + self.correction(self.project(p)[:, None], self.project(s)[None])


def fit_ranker(
    data: RankData,
    seed: int = 0,
    steps: int = 200,
    lr: float = 1e-2,
    pairs: int = 64,
    dim: int = 16,
) -> PairRanker:
    """Train on `pairs` random candidate pairs per draw per step (seeded, full batch)."""
    p, s = _unit(data.probe), _unit(data.sources)
    mean = s.mean(0)
    _, _, vh = torch.linalg.svd(s - mean, full_matrices=False)
    model = PairRanker(vh[:dim].T.contiguous(), mean, seed=seed)
    acc = torch.as_tensor(data.accuracy, dtype=torch.float32)
    ok = torch.isfinite(acc)
    live = torch.nonzero(ok.any(1)).flatten()
    if len(live) == 0:
        return model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    params = [q for q in model.parameters() if q.requires_grad]
    moments = [(torch.zeros_like(q), torch.zeros_like(q)) for q in params]
    weights, acc, p = ok[live].float(), acc[live], p[live]
    cos = p @ s.T  # (J, n), fixed
    pq, sq = model.project(p)[:, None], model.project(s)
    for step in range(steps):
        a = torch.multinomial(weights, pairs, replacement=True, generator=gen)
        b = torch.multinomial(weights, pairs, replacement=True, generator=gen)
        diff = acc.gather(1, a) - acc.gather(1, b)
        margin = (
            cos.gather(1, a)
            - cos.gather(1, b)
            + model.correction(pq, sq[a])
            - model.correction(pq, sq[b])
        )
        weight = diff.abs()
        loss = (weight * nn.functional.softplus(-torch.sign(diff) * margin)).sum()
        (loss / weight.sum().clamp_min(1e-12)).backward()
        _adam_step(params, moments, lr, step + 1)
    return model.eval()


@torch.no_grad()
def _adam_step(params, moments, lr: float, t: int, b1: float = 0.9, b2: float = 0.999) -> None:
    """Adam (Kingma and Ba 2015), written out: torch.optim's first use imports a compiler
    stack that costs seconds, more than the whole fit."""
    for q, (m, v) in zip(params, moments, strict=True):
        m.lerp_(q.grad, 1 - b1)
        v.mul_(b2).addcmul_(q.grad, q.grad, value=1 - b2)
        q.sub_(lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8))
        q.grad = None


@torch.no_grad()
def rank_scores(model: PairRanker, probe: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """(J, n) scores of the ranker for probe (J, d) and source (n, d) embeddings."""
    return model(_unit(probe), _unit(sources)).double().numpy()
