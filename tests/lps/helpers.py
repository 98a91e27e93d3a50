"""Random canonical networks and symmetry transforms for LPS tests (no zoo needed)."""

from __future__ import annotations

import torch

from paramsim.weights import Layer, Network


def random_mlp(widths: tuple[int, ...], seed: int, input_shape=(1, 8, 8)) -> Network:
    """An MLP in canonical form: flatten, Linear-ReLU per hidden width, Linear to outputs."""
    g = torch.Generator().manual_seed(seed)
    d = input_shape[0] * input_shape[1] * input_shape[2]
    sizes = (d, *widths)
    layers = []
    for i in range(len(widths)):
        w = torch.randn(sizes[i + 1], sizes[i], generator=g) / sizes[i] ** 0.5
        b = torch.randn(sizes[i + 1], generator=g) * 0.1
        post = ("relu",) if i < len(widths) - 1 else ()
        layers.append(Layer("linear", w, b, post=post))
    return Network(tuple(layers), tuple(input_shape), ("flatten",))


def random_cnn(channels: tuple[int, ...], seed: int, n_out: int = 2) -> Network:
    """A small CNN: conv3x3-ReLU per channel count, global average pooling, linear."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    prev = 1
    for i, c in enumerate(channels):
        w = torch.randn(c, prev, 3, 3, generator=g) / (prev * 9) ** 0.5
        post = ("relu", "gap") if i == len(channels) - 1 else ("relu",)
        layers.append(Layer("conv", w, torch.randn(c, generator=g) * 0.1, padding=1, post=post))
        prev = c
    w = torch.randn(n_out, prev, generator=g) / prev**0.5
    layers.append(Layer("linear", w, torch.zeros(n_out)))
    return Network(tuple(layers), (1, 8, 8), ())


def rescale_hidden(net: Network, layer: int, scale: torch.Tensor) -> Network:
    """Scale unit i of hidden layer `layer` by a_i > 0 and its outgoing weights by 1/a_i."""
    layers = list(net.layers)
    a, b = layers[layer], layers[layer + 1]
    shape = (-1,) + (1,) * (a.weight.dim() - 1)
    inv = (1 / scale).reshape((1, -1) + (1,) * (b.weight.dim() - 2))
    layers[layer] = Layer(
        a.kind, a.weight * scale.reshape(shape), a.bias * scale, a.padding, a.post
    )
    layers[layer + 1] = Layer(b.kind, b.weight * inv, b.bias, b.padding, b.post)
    return Network(tuple(layers), net.input_shape, net.input_ops)


def pad_hidden(net: Network, layer: int, extra: int) -> Network:
    """The same function with `extra` dead units added to hidden layer `layer` (zero weights
    in and out, zero bias): a wider network that computes exactly what `net` does."""
    layers = list(net.layers)
    a, b = layers[layer], layers[layer + 1]
    w_in = torch.cat([a.weight, torch.zeros(extra, *a.weight.shape[1:])])
    w_out = torch.cat([b.weight, torch.zeros(b.weight.shape[0], extra, *b.weight.shape[2:])], 1)
    layers[layer] = Layer(a.kind, w_in, torch.cat([a.bias, torch.zeros(extra)]), a.padding, a.post)
    layers[layer + 1] = Layer(b.kind, w_out, b.bias, b.padding, b.post)
    return Network(tuple(layers), net.input_shape, net.input_ops)
