"""The canonical layered form every similarity method reads.

A network is an ordered list of affine layers (linear or 3x3-style convolution, stride 1)
with the parameter-free operations that follow each one. Batch-norm is already folded into
the layer before it, and every layer has a bias (zeros when the checkpoint had none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from paramsim.errors import ParamsimError

# Operations allowed between layers, applied in order after a layer's affine map.
OPS = ("relu", "maxpool2", "gap", "flatten")


@dataclass(frozen=True)
class Layer:
    kind: str  # "linear": weight (out, in); "conv": weight (out, in, k, k)
    weight: torch.Tensor
    bias: torch.Tensor
    padding: int = 0
    post: tuple[str, ...] = ()

    @property
    def units(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True)
class Network:
    """Layers from input to output; `input_ops` run on the input first (e.g. flatten)."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, int, int]
    input_ops: tuple[str, ...] = ()

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].units

    @property
    def kind(self) -> str:
        return "cnn" if any(layer.kind == "conv" for layer in self.layers) else "mlp"

    @property
    def largest_weight(self) -> float:
        """The largest |value| of any weight or bias (for messages about overflow)."""
        return max(float(t.abs().max()) for lay in self.layers for t in (lay.weight, lay.bias))

    def signature(self) -> tuple:
        """Everything but the values: networks with equal signatures can be stacked."""
        return (
            self.input_shape,
            self.input_ops,
            tuple(
                (lay.kind, tuple(lay.weight.shape), lay.padding, lay.post) for lay in self.layers
            ),
        )

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """Logits for inputs (N, C, H, W); with `return_hidden`, also each hidden layer's output."""
        params = [(lay.weight, lay.bias) for lay in self.layers]
        return apply_layers(self, params, x, return_hidden)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


def fold_batchnorm(layer: Layer, bn: Mapping[str, torch.Tensor | float], name: str) -> Layer:
    """`layer` followed by eval-mode batch-norm y = (x - mean) / sqrt(var + eps) * gamma + beta,
    as one affine layer. `bn` holds running_mean, running_var and optionally weight (gamma),
    bias (beta) and eps (default 1e-5, PyTorch's)."""
    mean, var = bn.get("running_mean"), bn.get("running_var")
    if mean is None or var is None:
        raise ParamsimError(f"batch-norm {name} has no running statistics; cannot fold it")
    eps = float(bn["eps"]) if "eps" in bn else 1e-5
    gamma = bn.get("weight", torch.ones_like(mean))
    beta = bn.get("bias", torch.zeros_like(mean))
    scale = (gamma / torch.sqrt(var + eps)).float()
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    weight = layer.weight * scale.reshape(shape)
    bias = (layer.bias - mean.float()) * scale + beta.float()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise ParamsimError(
            f"batch-norm {name} folds into non-finite weights (a zero running_var with eps 0, "
            "or values near the float limit); the checkpoint cannot be used"
        )
    return Layer(layer.kind, weight, bias, layer.padding, layer.post)


def max_pool2(h: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling, stride 2, as F.max_pool2d(h, 2). Without autograd the max of four
    strided views is about 3x faster: max_pool2d also writes an int64 index per output."""
    if h.requires_grad and torch.is_grad_enabled():
        return F.max_pool2d(h, 2)
    if h.shape[-2] < 2 or h.shape[-1] < 2:  # as max_pool2d, instead of an empty map
        raise ValueError(f"2x2 max pooling of a {h.shape[-2]}x{h.shape[-1]} map leaves nothing")
    v = h[..., : h.shape[-2] // 2 * 2, : h.shape[-1] // 2 * 2]
    v = v.unflatten(-1, (-1, 2)).unflatten(-3, (-1, 2))  # (..., H/2, 2, W/2, 2)
    top = torch.maximum(v[..., 0, :, 0], v[..., 0, :, 1])
    return torch.maximum(top, torch.maximum(v[..., 1, :, 0], v[..., 1, :, 1]))


def _op(name: str, h: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return torch.relu(h)
    if name == "maxpool2":
        return max_pool2(h)
    if name == "gap":
        return h.mean(dim=(-2, -1))
    if name == "flatten":
        return h.flatten(1)
    raise ValueError(f"unknown op {name}")


def _pool_before_relu(ops: tuple[str, ...]) -> list[str]:
    """`ops` with each "relu", "maxpool2" pair swapped: max-pooling commutes with ReLU
    (both are monotone), and ReLU on the pooled map touches a quarter of the values. The
    gradient is unchanged too: a window's gradient reaches its first maximum either way, and
    ReLU passes none where that maximum is <= 0."""
    out = list(ops)
    for i in range(len(out) - 1):
        if out[i] == "relu" and out[i + 1] == "maxpool2":
            out[i], out[i + 1] = "maxpool2", "relu"
    return out


def _per_model(h: torch.Tensor, models: int) -> torch.Tensor:
    """(N, M*C, H, W) as (M, N, C, H, W), a view."""
    return h.unflatten(1, (models, -1)).transpose(0, 1)


def apply_layers(
    net: Network,
    params: Sequence[tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    return_hidden: bool = False,
):
    """Run `net`'s structure with the given (weight, bias) pairs; differentiable in both."""
    h = x
    for name in net.input_ops:
        h = _op(name, h)
    hidden = []
    for i, (lay, (w, b)) in enumerate(zip(net.layers, params, strict=True)):
        if lay.kind == "linear":
            h = F.linear(h, w, b)
        else:
            h = F.conv2d(h, w, b, padding=lay.padding)
        for name in lay.post:
            h = _op(name, h)
        if i < len(net.layers) - 1:
            hidden.append(h)
    return (h, hidden) if return_hidden else h


@dataclass(frozen=True)
class NetworkStack:
    """Networks of one signature with parameters stacked on a leading model dimension."""

    template: Network
    weights: tuple[torch.Tensor, ...]  # each (M, *layer weight shape)
    biases: tuple[torch.Tensor, ...]

    @classmethod
    def from_networks(cls, nets: Sequence[Network]) -> NetworkStack:
        sig = nets[0].signature()
        for n in nets[1:]:
            if n.signature() != sig:
                raise ValueError("cannot stack networks of different architectures")
        depth = len(nets[0].layers)
        weights = tuple(torch.stack([n.layers[i].weight for n in nets]) for i in range(depth))
        biases = tuple(torch.stack([n.layers[i].bias for n in nets]) for i in range(depth))
        return cls(nets[0], weights, biases)

    def __len__(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """Every model on the same inputs x (N, C, H, W): logits (M, N, outputs), and with
        `return_hidden` each hidden layer's output, (M, N, units) or (M, N, C, H, W)."""
        if self.template.kind == "cnn":
            return self._forward_grouped(x, return_hidden)

        # MLPs: vmap turns each layer into one batched matmul already
        def one(ws, bs):
            return apply_layers(self.template, list(zip(ws, bs, strict=True)), x, return_hidden)

        return torch.func.vmap(one)(self.weights, self.biases)

    def _forward_grouped(self, x: torch.Tensor, return_hidden: bool):
        """CNNs with the models as channel groups of one tensor, (N, M*C, H, W): one grouped
        convolution per layer, without the copies vmap makes around each convolution and
        pooling (1.2-1.4x faster with the backward pass, about 2x without:
        `benchmarks/bench_stack.py`)."""
        m = len(self)
        h = x
        for name in self.template.input_ops:
            h = _op(name, h)
        if h.dim() != 4 or self.template.layers[0].kind != "conv":
            raise ValueError("a CNN must start with a convolution on (N, C, H, W) inputs")
        maps = True  # (N, M*C, H, W) until gap or flatten, then (M, N, D)
        hidden = []
        depth = len(self.template.layers)
        for i, (lay, w, b) in enumerate(
            zip(self.template.layers, self.weights, self.biases, strict=True)
        ):
            if lay.kind == "conv":
                if not maps:
                    raise ValueError("a convolution cannot follow a flattened layer")
                h = F.conv2d(
                    h,
                    w.reshape(-1, *w.shape[2:]),
                    b.reshape(-1),
                    padding=lay.padding,
                    groups=1 if i == 0 else m,  # the first layer reads the one shared input
                )
            elif maps:
                raise ValueError("a linear layer needs gap or flatten after a convolution")
            else:
                h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
            for name in _pool_before_relu(lay.post):
                if maps and name in ("gap", "flatten"):
                    n = h.shape[0]
                    h = h.mean(dim=(-2, -1)) if name == "gap" else h
                    h, maps = h.reshape(n, m, h.shape[1:].numel() // m).transpose(0, 1), False
                elif not maps and name == "flatten":
                    continue  # (M, N, D): every model's features are flat already
                elif not maps and name != "relu":
                    raise ValueError(f"{name} needs a feature map, not flat features")
                else:
                    h = _op(name, h)
            if return_hidden and i < depth - 1:
                hidden.append(_per_model(h, m) if maps else h)
        out = _per_model(h, m) if maps else h
        return (out, hidden) if return_hidden else out


def group_by_signature(nets: Sequence[Network]) -> list[list[int]]:
    """Indices of networks grouped by architecture, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, n in enumerate(nets):
        groups.setdefault(n.signature(), []).append(i)
    return list(groups.values())


def hidden_units_view(weight: torch.Tensor, units: int) -> torch.Tensor:
    """The next layer's weight as (out, units, rest) so hidden-unit permutations act on dim 1.

    Works for every layer that can follow a hidden layer: linear after linear (rest 1), conv
    after conv (rest k*k), linear after global pooling (rest 1) and linear after a flattened
    feature map (rest H*W, since flatten is channel-major).
    """
    if weight.shape[1] % units:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not read {units} units")
    return weight.reshape(weight.shape[0], units, -1)


def permute_hidden(
    net: Network,
    generator: torch.Generator | int | None = None,
    perms: Sequence[torch.Tensor] | None = None,
) -> Network:
    """The same function with every hidden layer's units (channels) randomly reordered.

    Rows of W_l and b_l move by P_l and the matching input slices of W_{l+1} move with them,
    so the outputs stay equal; this is the symmetry every invariant method must ignore.
    `perms` (one index tensor per hidden layer) fixes the permutations instead of drawing them.
    """
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    layers = list(net.layers)
    n_hidden = len(layers) - 1
    if perms is None:
        perms = [torch.randperm(layers[i].units, generator=generator) for i in range(n_hidden)]
    if len(perms) != n_hidden:
        raise ValueError(f"need {n_hidden} permutations, got {len(perms)}")
    for i, p in enumerate(perms):
        lay, nxt = layers[i], layers[i + 1]
        layers[i] = replace(lay, weight=lay.weight[p], bias=lay.bias[p])
        view = hidden_units_view(nxt.weight, lay.units)[:, p]
        layers[i + 1] = replace(nxt, weight=view.reshape(nxt.weight.shape))
    return replace(net, layers=tuple(layers))
