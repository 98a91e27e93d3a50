"""match in reference mode: distances between close models are not rounding noise."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from scipy.spatial.distance import cdist

from paramsim.features import get_method
from paramsim.weights import from_module
from paramsim.weights.arch import ArchSpec


def test_reference_distances_of_close_models_are_exact() -> None:
    # 30 models within 1e-3 of one another: over 25 rows torch.cdist in float32 computes
    # |a|^2 + |b|^2 - 2ab, whose cancellation was up to ~10% of these distances
    spec = ArchSpec("mlp", (1, 8, 8), (32, 32))
    torch.manual_seed(0)
    base = from_module(spec.build().eval(), spec.input_shape)
    nets = []
    for i in range(30):
        eps = 1e-3 * (i + 1) / 30
        layers = tuple(
            replace(
                lay,
                weight=lay.weight + eps * torch.randn_like(lay.weight),
                bias=lay.bias + eps * torch.randn_like(lay.bias),
            )
            for lay in base.layers
        )
        nets.append(replace(base, layers=layers))
    method = get_method("match", mode="reference")
    sim = method.similarity(nets)
    emb = method.embed(nets).astype(np.float64)
    np.testing.assert_array_equal(np.diag(sim), 0.0)
    np.testing.assert_allclose(sim, -cdist(emb, emb), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(sim, sim.T)
