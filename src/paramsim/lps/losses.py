"""The losses LPS trains with: a metric loss over task labels, and the relation loss
that asks task-pair similarity to follow the number of shared classes."""

from __future__ import annotations

import torch
from torch import nn

from paramsim.errors import ParamsimError
from paramsim.lps.config import FitConfig


def make_metric_loss(cfg: FitConfig, n_classes: int, emb_dim: int, gen: torch.Generator):
    """(loss function, extra trainable module or None)."""
    from pytorch_metric_learning import losses

    if cfg.loss == "supcon":
        return losses.SupConLoss(temperature=cfg.temperature), None
    if cfg.loss == "multisim":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5), None
    if cfg.loss == "ce":
        clf = nn.Linear(emb_dim, n_classes, bias=False)
        with torch.no_grad():
            clf.weight.copy_(torch.randn(n_classes, emb_dim, generator=gen) * 0.01)
        scale = 1.0 / cfg.temperature

        def ce(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            w = clf.weight / clf.weight.norm(dim=1, keepdim=True).clamp_min(1e-8)
            return nn.functional.cross_entropy(scale * emb @ w.T, labels)

        return ce, clf
    raise ParamsimError(f"unknown loss {cfg.loss!r}; use supcon, multisim or ce")


def relation_loss(emb: torch.Tensor, labels: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """1 - Pearson correlation between task-pair similarity and shared classes in a batch.

    Task-pair similarity is the mean cosine over the two tasks' models (the dot product of
    their mean unit embeddings), as the relation score measures it. `shared[a, b]` is the
    number of classes tasks a and b (label values) have in common. Scale-free, so it only asks
    for the ordering of relations and leaves the retrieval margin to the contrastive loss; 0
    (and a flat gradient) when similarity is an increasing linear function of shared classes.
    Zero when the batch has fewer than three tasks or a constant relation.
    """
    uniq, inv = torch.unique(labels, return_inverse=True)
    if len(uniq) < 3:
        return emb.sum() * 0.0
    onehot = torch.zeros(len(uniq), len(labels), dtype=emb.dtype, device=emb.device)
    onehot[inv, torch.arange(len(labels), device=emb.device)] = 1.0
    means = (onehot / onehot.sum(1, keepdim=True)) @ emb
    sim = means @ means.T
    iu = torch.triu_indices(len(uniq), len(uniq), offset=1, device=emb.device)
    x = sim[iu[0], iu[1]]
    y = shared[uniq][:, uniq][iu[0], iu[1]].to(emb.dtype)
    if float(y.std()) == 0.0:
        return emb.sum() * 0.0
    x = x - x.mean()
    y = y - y.mean()
    corr = (x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-12)
    return 1.0 - corr
