"""Function-space methods: read what a network computes on inputs, not its weights.

They are invariant to every symmetry of the weights, and they compare MLPs with CNNs as long
as the input shape agrees. `probes` needs no data (synthetic inputs from a seed); `cka` and
`outputs` are references that use real test images from `Context.dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from paramsim.errors import ParamsimError
from paramsim.features._common import (
    FixedMethod,
    context_or_default,
    ensure,
    logit_features,
    per_group,
)
from paramsim.features.base import Context
from paramsim.vectors import unit_rows as unit
from paramsim.weights import Network, NetworkStack


def synthetic_probes(
    shape: tuple[int, int, int], n: int = 64, seed: int = 0, noise_fraction: float = 0.5
) -> torch.Tensor:
    """(n, C, H, W) inputs in [0, 1]: uniform noise, then images of 1-3 random strokes.

    Strokes are straight segments drawn by sampling points along them and splatting them
    bilinearly, so they look like pen lines at any resolution; every channel gets the same
    stroke (grey ink on black, like digits).
    """
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    n_noise = round(n * noise_fraction)
    noise = torch.rand((n_noise, c, h, w), generator=g)
    strokes = torch.zeros((n - n_noise, h, w))
    steps = 4 * max(h, w)
    t = torch.linspace(0, 1, steps)
    for i in range(n - n_noise):
        n_lines = int(torch.randint(1, 4, (1,), generator=g))
        for _ in range(n_lines):
            p0 = torch.rand(2, generator=g) * torch.tensor([h - 1, w - 1])
            p1 = torch.rand(2, generator=g) * torch.tensor([h - 1, w - 1])
            pts = p0 + t[:, None] * (p1 - p0)
            _splat(strokes[i], pts)
    strokes = strokes.clamp(0, 1).unsqueeze(1).expand(-1, c, h, w)
    return torch.cat([noise, strokes]).contiguous()


def _splat(img: torch.Tensor, pts: torch.Tensor) -> None:
    """Add unit ink at real-valued points, spread bilinearly over the 4 nearest pixels."""
    h, w = img.shape
    y0, x0 = pts[:, 0].floor().long(), pts[:, 1].floor().long()
    fy, fx = pts[:, 0] - y0, pts[:, 1] - x0
    ink = torch.zeros_like(img)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = (y0 + dy).clamp(max=h - 1), (x0 + dx).clamp(max=w - 1)
            ink.index_put_((yy, xx), wy * wx, accumulate=True)
    img.copy_(torch.maximum(img, ink.clamp(max=1)))


def _shape_reason(networks: Sequence[Network]) -> str | None:
    shapes = {n.input_shape for n in networks}
    if len(shapes) > 1:
        return f"networks read inputs of different shapes {sorted(shapes)}"
    return None


def _test_inputs(context: Context, shape: tuple[int, int, int], n: int, what: str) -> torch.Tensor:
    ds = context.dataset
    if ds is None:
        raise ParamsimError(f"{what} needs a dataset (Context(dataset=...)); not weights-only")
    if tuple(ds.input_shape) != tuple(shape):
        raise ParamsimError(
            f"{what}: dataset {ds.name} has inputs {tuple(ds.input_shape)}, networks read {shape}"
        )
    g = torch.Generator().manual_seed(context.seed)
    idx = torch.randperm(len(ds.x_test), generator=g)[:n]
    return ds.x_test[idx].float()


class _OutputsMethod(FixedMethod):
    """Logit differences (out1 - out0) of every network on one fixed input batch, cosine."""

    def check(self, networks: Sequence[Network]) -> str | None:
        return _shape_reason(networks)

    def _inputs(self, shape: tuple[int, int, int], context: Context) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        ensure(self, networks)
        x = self._inputs(networks[0].input_shape, context_or_default(context))
        return per_group(networks, lambda s: logit_features(s.forward(x)))


class ProbesMethod(_OutputsMethod):
    """Logit differences on `n` synthetic probes (noise and strokes) drawn from `seed`.

    Weights only: the probes are generated, not read from a dataset. The seed is the
    method's own (not the context's) so that embeddings from different runs agree.
    """

    name = "probes"
    weights_only = True

    def __init__(self, n: int = 64, seed: int = 0, noise_fraction: float = 0.5) -> None:
        self.n, self.seed, self.noise_fraction = int(n), int(seed), float(noise_fraction)

    def _inputs(self, shape: tuple[int, int, int], context: Context) -> torch.Tensor:
        return synthetic_probes(shape, self.n, self.seed, self.noise_fraction)


class OutputsMethod(_OutputsMethod):
    """Logit differences on `n` real test images (drawn with `Context.seed`), cosine."""

    name = "outputs"
    weights_only = False

    def __init__(self, n: int = 200) -> None:
        self.n = int(n)

    def _inputs(self, shape: tuple[int, int, int], context: Context) -> torch.Tensor:
        return _test_inputs(context, shape, self.n, self.name)


# Centred activations whose norm is below this share of the raw activations' norm are
# rounding noise around a constant layer (one after a dead layer): they count as zero, or
# unit-normalising would turn the noise, which a unit permutation reorders, into a direction.
CONSTANT_TOL = 1e-5


def centre_features(x: torch.Tensor) -> torch.Tensor:
    """x (..., N, p) with each feature's mean over the N inputs removed; zero if x is constant."""
    centred = x - x.mean(dim=-2, keepdim=True)
    raw = x.flatten(-2).norm(dim=-1)[..., None, None]
    spread = centred.flatten(-2).norm(dim=-1)[..., None, None]
    return torch.where(spread > CONSTANT_TOL * raw, centred, torch.zeros_like(centred))


def centred_gram(h: torch.Tensor) -> torch.Tensor:
    """Unit-norm, flattened, doubly centred Gram of activations h (M, N, ...) -> (M, N*N).

    The dot product of two of these is linear CKA (Kornblith et al. 2019):
    <HKH, HLH> / (||HKH|| ||HLH||) with K = X X^T; centring X's features equals centring K.
    A layer constant over the inputs gives a zero row (CKA 0 with everything).
    """
    x = centre_features(h.reshape(h.shape[0], h.shape[1], -1))
    return unit((x @ x.transpose(1, 2)).flatten(1))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between two activation matrices (N, p) and (N, q) of the same N inputs."""
    x = centre_features(x.reshape(x.shape[0], -1).double())
    y = centre_features(y.reshape(y.shape[0], -1).double())
    num = (y.T @ x).norm() ** 2
    den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else 0.0


class CKAMethod(FixedMethod):
    """Linear CKA between hidden activations on `n` real test images.

    `layers="mean"`: the mean CKA over hidden layers (same depth needed); `"last"`: the last
    hidden layer only (any depths); `"auto"` (default): mean when all networks given have
    the same depth, else last. The embedding is the concatenation of unit-norm centred
    Grams, one per layer, scaled so that its cosine is exactly that (mean) CKA; a layer
    constant over the inputs adds a zero block, so there the cosine is the sum of the other
    layers' CKAs over the square roots of each network's count of varying layers.
    """

    name = "cka"
    weights_only = False

    def __init__(self, n: int = 128, layers: str = "auto") -> None:
        if layers not in ("mean", "last", "auto"):
            raise ParamsimError(f"cka layers must be 'mean', 'last' or 'auto', got {layers!r}")
        self.n, self.layers = int(n), layers

    def check(self, networks: Sequence[Network]) -> str | None:
        reason = _shape_reason(networks)
        if reason:
            return reason
        depths = {len(n.layers) - 1 for n in networks}
        if 0 in depths:
            return "cka needs hidden layers; these networks have none"
        if self.layers == "mean" and len(depths) > 1:
            return f"networks have {sorted(depths)} hidden layers; use layers='last'"
        return None

    def embed(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        ensure(self, networks)
        x = _test_inputs(context_or_default(context), networks[0].input_shape, self.n, self.name)
        last = self.layers == "last" or (
            self.layers == "auto" and len({len(n.layers) for n in networks}) > 1
        )

        def feats(stack: NetworkStack) -> torch.Tensor:
            _, hidden = stack.forward(x, return_hidden=True)
            chosen = hidden[-1:] if last else hidden
            return torch.cat([centred_gram(h) for h in chosen], dim=1) / len(chosen) ** 0.5

        return per_group(networks, feats)
