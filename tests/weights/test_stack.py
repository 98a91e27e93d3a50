"""NetworkStack.forward runs every model as `apply_layers` would, one by one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from paramsim.weights import Layer, Network, NetworkStack, apply_layers
from paramsim.weights.network import max_pool2


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _cnn(g, size: int, tail: str) -> Network:
    """conv-relu-pool, conv-relu[-pool], then gap or flatten, then a linear readout."""
    after = size // 2 // 2 if tail == "flatten" else 1
    post2 = ("relu", "maxpool2", "flatten") if tail == "flatten" else ("relu", "gap")
    return Network(
        (
            Layer("conv", _rand(g, 4, 3, 3, 3), _rand(g, 4), 1, ("relu", "maxpool2")),
            Layer("conv", _rand(g, 5, 4, 3, 3), _rand(g, 5), 1, post2),
            Layer("linear", _rand(g, 3, 5 * after * after), _rand(g, 3)),
        ),
        (3, size, size),
    )


def _mlp(g, size: int, tail: str) -> Network:
    d = 3 * size * size
    return Network(
        (
            Layer("linear", _rand(g, 6, d), _rand(g, 6), 0, ("relu",)),
            Layer("linear", _rand(g, 4, 6), _rand(g, 4), 0, ("relu",)),
            Layer("linear", _rand(g, 2, 4), _rand(g, 2)),
        ),
        (3, size, size),
        ("flatten",),
    )


def _one_by_one(nets, x, grad: bool):
    outs, hiddens = [], []
    for n in nets:
        o, h = apply_layers(n, [(la.weight, la.bias) for la in n.layers], x, return_hidden=True)
        outs.append(o)
        hiddens.append(h)
    return torch.stack(outs), [torch.stack(h) for h in zip(*hiddens, strict=True)]


@settings(max_examples=20, deadline=None)
@given(
    make=st.sampled_from([_cnn, _mlp]),
    tail=st.sampled_from(["gap", "flatten"]),
    size=st.integers(4, 9),  # odd sizes: pooling drops the last row and column
    models=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_stack_equals_each_model_alone_with_hidden_layers(make, tail, size, models, seed):
    g = torch.Generator().manual_seed(seed)
    nets = [make(g, size, tail) for _ in range(models)]
    x = _rand(g, 5, 3, size, size)
    out, hidden = NetworkStack.from_networks(nets).forward(x, return_hidden=True)
    ref_out, ref_hidden = _one_by_one(nets, x, grad=False)
    torch.testing.assert_close(out, ref_out)
    assert [h.shape for h in hidden] == [h.shape for h in ref_hidden]
    for h, r in zip(hidden, ref_hidden, strict=True):
        torch.testing.assert_close(h, r)


@pytest.mark.parametrize("make", [_cnn, _mlp])
def test_gradient_to_the_inputs_equals_the_per_model_gradient(make):
    """LPS learns its probes through this forward: pooling before ReLU must not change it."""
    g = torch.Generator().manual_seed(3)
    nets = [make(g, 8, "flatten") for _ in range(3)]
    x = _rand(g, 4, 3, 8, 8)
    x.data[0, :, :2, :2] = -1.0  # a window whose maximum is negative: no gradient either way
    weights = _rand(g, 3, 4, nets[0].n_outputs)
    xs = x.clone().requires_grad_(True)
    (NetworkStack.from_networks(nets).forward(xs) * weights).sum().backward()
    xr = x.clone().requires_grad_(True)
    (_one_by_one(nets, xr, grad=True)[0] * weights).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad)


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 2, 6, 6), (2, 2, 3, 2)])
def test_pooling_without_autograd_equals_max_pool2d_ties_and_nan_included(shape):
    g = torch.Generator().manual_seed(0)
    h = _rand(g, *shape).round()  # many ties
    h.view(-1)[1] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(max_pool2(h), F.max_pool2d(h, 2), equal_nan=True)
    h.requires_grad_(True)
    torch.testing.assert_close(max_pool2(h), F.max_pool2d(h, 2), equal_nan=True)


def test_a_convolution_after_flatten_is_refused():
    """Either after a flattened input or after a flattening layer."""
    g = torch.Generator().manual_seed(0)
    net = Network(
        (
            Layer("linear", _rand(g, 4, 12), _rand(g, 4), 0, ()),
            Layer("conv", _rand(g, 2, 4, 1, 1), _rand(g, 2)),
        ),
        (3, 2, 2),
        ("flatten",),
    )
    with pytest.raises(ValueError, match="must start with a convolution"):
        NetworkStack.from_networks([net]).forward(_rand(g, 2, 3, 2, 2))
    flat = Network(
        (
            Layer("conv", _rand(g, 4, 3, 1, 1), _rand(g, 4), 0, ("flatten",)),
            Layer("conv", _rand(g, 2, 16, 1, 1), _rand(g, 2)),
        ),
        (3, 2, 2),
    )
    with pytest.raises(ValueError, match="cannot follow a flattened layer"):
        NetworkStack.from_networks([flat]).forward(_rand(g, 2, 3, 2, 2))
    pooled_flat = Network(
        (
            Layer("conv", _rand(g, 4, 3, 1, 1), _rand(g, 4), 0, ("gap",)),
            Layer("linear", _rand(g, 2, 4), _rand(g, 2), 0, ("maxpool2",)),
        ),
        (3, 2, 2),
    )
    with pytest.raises(ValueError, match="maxpool2 needs a feature map"):
        NetworkStack.from_networks([pooled_flat]).forward(_rand(g, 2, 3, 2, 2))


def test_a_flatten_after_flat_features_changes_nothing():
    """nn.Flatten after a Linear is a no-op in PyTorch; in a stack it must stay one."""
    g = torch.Generator().manual_seed(1)
    nets = [
        Network(
            (
                Layer("conv", _rand(g, 4, 3, 3, 3), _rand(g, 4), 1, ("relu", "gap")),
                Layer("linear", _rand(g, 5, 4), _rand(g, 5), 0, ("relu", "flatten")),
                Layer("linear", _rand(g, 2, 5), _rand(g, 2), 0, ("flatten",)),
            ),
            (3, 4, 4),
        )
        for _ in range(2)
    ]
    x = _rand(g, 3, 3, 4, 4)
    out, hidden = NetworkStack.from_networks(nets).forward(x, return_hidden=True)
    ref_out, ref_hidden = _one_by_one(nets, x, grad=False)
    assert out.shape == (2, 3, 2)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(hidden[1], ref_hidden[1])


def test_pooling_a_map_too_small_is_an_error_not_nan():
    h = torch.ones(2, 3, 1, 1)
    with torch.no_grad(), pytest.raises(ValueError, match="leaves nothing"):
        max_pool2(h)


def test_an_empty_batch_of_inputs_gives_empty_outputs():
    g = torch.Generator().manual_seed(2)
    nets = [_cnn(g, 8, "flatten") for _ in range(2)]
    out = NetworkStack.from_networks(nets).forward(_rand(g, 0, 3, 8, 8))
    assert out.shape == (2, 0, 3)
