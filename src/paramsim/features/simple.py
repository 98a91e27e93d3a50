"""First-order baselines: flattened parameters and per-layer statistics.

Neither is invariant to the order of hidden units in the way the Gram methods are: `flat`
changes under any permutation (that is why it fails), `stats` is invariant but discards
almost everything (Unterthiner et al. 2020 predict accuracy from such statistics, not tasks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from paramsim.features._common import (
    FixedMethod,
    ensure,
    interleaved,
    per_group,
    same_signature_reason,
)
from paramsim.features.base import Context
from paramsim.weights import Network, NetworkStack

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


class FlatMethod(FixedMethod):
    """Cosine of all weights and biases flattened into one vector (the naive baseline)."""

    name = "flat"
    weights_only = True

    def check(self, networks: Sequence[Network]) -> str | None:
        return same_signature_reason(networks, "flat")

    def embed(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        ensure(self, networks)

        def flat(stack: NetworkStack) -> torch.Tensor:
            m = len(stack)
            parts = [t.reshape(m, -1) for t in interleaved(stack)]
            return torch.cat(parts, dim=1)

        return per_group(networks, flat)


class StatsMethod(FixedMethod):
    """Per-layer mean, variance and quantiles of weights and of biases, z-scored, cosine.

    The z-scoring uses the networks given to `embed`, so embeddings depend on the set:
    compare networks within one call. With two networks every feature would be +-1 (cosine
    -1 whatever the weights), so at least 3 are required.
    """

    name = "stats"
    weights_only = True
    set_dependent = True  # z-scores over the networks of one call

    def check(self, networks: Sequence[Network]) -> str | None:
        if len(networks) < 3:
            return (
                f"stats z-scores features over the networks compared and needs at least 3, "
                f"got {len(networks)}; compare within a set (paramsim eval) or use another method"
            )
        depths = {len(n.layers) for n in networks}
        if len(depths) > 1:
            return f"stats compares layer by layer and the networks have {sorted(depths)} layers"
        return None

    def embed(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        ensure(self, networks)

        def stats(stack: NetworkStack) -> torch.Tensor:
            m = len(stack)
            q = torch.tensor(QUANTILES)
            feats = []
            for t in interleaved(stack):
                t = t.reshape(m, -1).double()
                feats += [t.mean(1, keepdim=True), t.var(1, keepdim=True, correction=0)]
                feats.append(torch.quantile(t, q.double(), dim=1).T)
            return torch.cat(feats, dim=1)

        raw = per_group(networks, stats)
        std = raw.std(axis=0)
        return (raw - raw.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)
