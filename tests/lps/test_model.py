"""Symmetry properties of the LPS network, checked on random networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.lps.helpers import pad_hidden, random_cnn, random_mlp, rescale_hidden

from paramsim.errors import ParamsimError
from paramsim.lps import VARIANTS, LPSConfig, LPSNet
from paramsim.weights import Layer, Network, NetworkStack, permute_hidden

NETS = {
    "lps": LPSNet(LPSConfig(probe_gram=True), seed=1),
    "nofunc": LPSNet(LPSConfig(func_branch=False), seed=1),
    "noweights": LPSNet(LPSConfig(weight_branch=False, probe_gram=True), seed=1),
    "unitcols": LPSNet(LPSConfig(func_branch=False, unit_columns=True), seed=1),
    "signinv": LPSNet(
        LPSConfig(sign_invariant=True, probe_sign_invariant=True, set_readout=False, combine="sum"),
        seed=1,
    ),
    "v1": LPSNet(LPSConfig(set_readout=False, combine="sum", probe_gram=True), seed=1),
    "signed": LPSNet(LPSConfig(func_branch=False, set_readout=False), seed=1),
    "set": LPSNet(LPSConfig(set_readout=True, combine="concat"), seed=1),
    "set-sum": LPSNet(LPSConfig(set_readout=True, combine="sum", probe_gram=True), seed=1),
    "units": LPSNet(LPSConfig(set_readout=True, combine="concat", probe_units=True), seed=1),
    "units-func": LPSNet(
        LPSConfig(weight_branch=False, set_readout=True, probe_units=True), seed=1
    ),
}
ORDER_BLIND = ("signinv", "set", "set-sum", "units")  # blind to which output unit holds a class
ARCHS = [(16, 2), (32, 32, 2), (24, 16, 8, 2)]


@settings(max_examples=15, deadline=None)
@given(arch=st.sampled_from(ARCHS), seed=st.integers(0, 10_000), which=st.sampled_from(list(NETS)))
def test_hidden_permutation_leaves_embedding_unchanged(arch, seed, which):
    net = random_mlp(arch, seed)
    perm = permute_hidden(net, generator=seed + 1)
    e = NETS[which].embed([net, perm])
    np.testing.assert_allclose(e[0], e[1], atol=2e-5)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), which=st.sampled_from(["lps", "v1", "set-sum", "units"]))
def test_cnn_channel_permutation_leaves_embedding_unchanged(seed, which):
    net = random_cnn((4, 6), seed)
    e = NETS[which].embed([net, permute_hidden(net, generator=seed)])
    np.testing.assert_allclose(e[0], e[1], atol=2e-5)


def _rescaled(arch, seed, layer):
    net = random_mlp(arch, seed)
    g = torch.Generator().manual_seed(seed)
    a = torch.exp(torch.rand(net.layers[layer].units, generator=g) * 2 - 1)
    return net, rescale_hidden(net, layer, a)


@settings(max_examples=10, deadline=None)
@given(
    arch=st.sampled_from(ARCHS),
    seed=st.integers(0, 10_000),
    which=st.sampled_from(["noweights", "unitcols", "units-func"]),
)
def test_relu_rescaling_invariance(arch, seed, which):
    """The function branch reads the function; unit_columns makes the weight branch invariant."""
    net, resc = _rescaled(arch, seed, 0)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(net(x), resc(x), atol=1e-5, rtol=1e-5)
    e = NETS[which].embed([net, resc])
    np.testing.assert_allclose(e[0], e[1], atol=2e-5)


def test_relu_rescaling_changes_only_the_rescaled_depth_of_the_default_weight_branch():
    """Documented behaviour: the chain past a rescaled layer cancels the scales; the Gram at
    that layer's own depth does not, so the default weight branch moves (a little)."""
    net, resc = _rescaled((32, 32, 2), 3, 0)
    e = NETS["nofunc"].embed([net, resc])
    assert 1e-4 < np.linalg.norm(e[0] - e[1]) < 1.0
    out_only = LPSNet(LPSConfig(func_branch=False, max_hidden_depths=0), seed=1)
    e = out_only.embed([net, resc])
    np.testing.assert_allclose(e[0], e[1], atol=2e-5)


@pytest.mark.parametrize("which", ["lps", "v1"])
def test_different_widths_and_cnns_share_one_space(which):
    nets = [random_mlp((16, 2), 0), random_mlp((48, 24, 16, 2), 1), random_cnn((4, 8), 2)]
    e = NETS[which].embed(nets)
    assert e.shape == (3, NETS[which].config.out_dim)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    # one space: a wider twin computing the same function (dead units added) lands on the
    # same point as the original, at any depth, while another model does not
    for net in nets[:2]:
        twin = pad_hidden(net, 0, 5)
        got = NETS[which].embed([net, twin, random_mlp((16, 2), 7)])
        assert float(got[0] @ got[1]) > 0.9999 and float(got[0] @ got[2]) < 0.99
    # the function branch puts a CNN and the MLP it equals (one conv spanning the whole
    # input) on the same point; no model's embedding depends on the others in the batch
    mlp = nets[0]
    first = mlp.layers[0]
    conv = Layer("conv", first.weight.reshape(16, 1, 8, 8), first.bias, 0, ("relu", "gap"))
    as_cnn = Network((conv, mlp.layers[1]), mlp.input_shape, ())
    got = NETS["noweights"].embed([mlp, as_cnn])
    assert float(got[0] @ got[1]) > 0.9999
    np.testing.assert_array_equal(NETS[which].embed(nets[2:]), e[2:])


def test_concat_compares_a_cnn_with_an_mlp_by_the_function_part_alone():
    """Under combine="concat" a CNN has no weight part, so its cosine with an MLP is the
    cosine of their function parts scaled by one constant per MLP: rankings of MLPs for a CNN
    query are the function branch's rankings."""
    net = NETS["set"]
    mlps = [random_mlp((16, 2), s) for s in range(6)]
    cnn = random_cnn((4, 8), 9)
    e = net.embed([cnn, *mlps])
    emb = net.config.emb_dim
    np.testing.assert_allclose(e[0, :emb], 0.0, atol=1e-7)
    with torch.no_grad():
        stack = NetworkStack.from_networks(mlps)
        _, ef = net.forward_parts(stack.template, stack.weights, stack.biases)
        cstack = NetworkStack.from_networks([cnn])
        _, cf = net.forward_parts(cstack.template, cstack.weights, cstack.biases)
    assert np.argsort(e[1:] @ e[0]).tolist() == np.argsort((ef @ cf[0]).numpy()).tolist()


def test_probes_stay_in_data_range_and_get_gradients():
    net = LPSNet(LPSConfig(), seed=0)
    probes = net.probes.detach()
    assert float(probes.min()) >= 0.0 and float(probes.max()) <= 1.0
    emb = net.forward([random_mlp((16, 2), s) for s in range(3)])
    emb.sum().backward()
    assert net.probes_raw.grad is not None and float(net.probes_raw.grad.abs().sum()) > 0


def test_no_layer_reads_d_squared_inputs():
    """The paper's MLP (3072 inputs): the head stays under 1% of the authors' linear layer."""
    cfg = LPSConfig(input_shape=(3, 32, 32), func_branch=False)
    net = LPSNet(cfg)
    authors = 3072**2 * cfg.emb_dim
    assert net.n_head_params() < 0.01 * authors
    assert all(p.shape[-1] < 3072**2 // 100 for p in net.parameters())


def test_check_rejects_other_inputs():
    net = LPSNet(LPSConfig(), seed=0)
    other = random_mlp((8, 2), 0, input_shape=(1, 4, 4))
    assert "input shape" in net.check([other])
    with pytest.raises(ParamsimError):
        net.embed([other])
    assert "MLP" in NETS["nofunc"].check([random_cnn((4,), 0)])


def _swap_outputs(net):
    """The same model with its two output units in the other order."""
    from paramsim.weights import Layer, Network

    last = net.layers[-1]
    flipped = Layer(last.kind, last.weight.flip(0), last.bias.flip(0), post=last.post)
    return Network((*net.layers[:-1], flipped), net.input_shape, net.input_ops)


@settings(max_examples=10, deadline=None)
@given(arch=st.sampled_from(ARCHS), seed=st.integers(0, 10_000), which=st.sampled_from(ORDER_BLIND))
def test_sign_invariant_ignores_which_output_holds_a_class(arch, seed, which):
    net = random_mlp(arch, seed)
    e = NETS[which].embed([net, _swap_outputs(net)])
    np.testing.assert_allclose(e[0], e[1], atol=2e-5)
    d = NETS["signed"].embed([net, _swap_outputs(net)])
    assert float(d[0] @ d[1]) < 0.999  # the signed class direction reads which output is which


def _other_task(net, seed: int):
    """The same hidden layers with another output layer: another function, another task."""
    from paramsim.weights import Layer, Network

    g = torch.Generator().manual_seed(seed)
    last = net.layers[-1]
    w = torch.randn(last.weight.shape, generator=g) / last.weight.shape[1] ** 0.5
    new = Layer(last.kind, w, torch.zeros_like(last.bias), post=last.post)
    return Network((*net.layers[:-1], new), net.input_shape, net.input_ops)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_every_variant_tells_two_tasks_apart(variant, kind):
    """The counter-test to the invariances: a change of task (here the output layer, so the
    two models compute different functions) must move the embedding; a metric that mapped
    every model to one point would pass every symmetry test above."""
    cfg_kw, _ = VARIANTS[variant]
    net = LPSNet(LPSConfig(**cfg_kw), seed=3)
    for seed in range(3):
        make = random_mlp if kind == "mlp" else random_cnn
        a = make((24, 16, 2) if kind == "mlp" else (4, 6), seed)
        if net.check([a]):
            continue  # weight-only variants read MLPs only
        other = make((24, 16, 2) if kind == "mlp" else (4, 6), seed + 50)
        head = _other_task(a, seed + 100)
        e = net.embed([a, permute_hidden(a, generator=seed), other, head])
        assert float(e[0] @ e[1]) > 1 - 1e-4  # the same task in another unit order: one point
        assert float(e[0] @ e[2]) < 0.999  # another model of another task: another point
        if kind == "cnn":  # an untrained CNN's probe responses are nearly constant: skip
            continue
        if variant == "lps-nochain":  # reads the first layer only, by design (an ablation)
            assert float(e[0] @ e[3]) > 1 - 1e-4
        else:  # the same features, another readout: another point too
            assert float(e[0] @ e[3]) < 0.999


def test_embedding_does_not_depend_on_how_models_are_batched():
    nets = [random_mlp((64, 32, 32, 2), s) for s in range(7)]
    nets += [random_cnn((8, 16), s) for s in range(5)]
    net = NETS["set"]
    whole = net.embed(nets)
    assert np.allclose(net.embed(nets, batch_size=3), whole, atol=1e-6)
    assert np.allclose(net.embed(nets[::-1], batch_size=2)[::-1], whole, atol=1e-6)


def test_in_place_signed_sqrt_equals_the_differentiable_one():
    from paramsim.lps.model import _signed_sqrt

    for dtype in (torch.float64, torch.float32):
        x = torch.randn(50, 30, dtype=dtype) * 3
        x[0, :5] = 0.0
        leaf = x.clone().requires_grad_(True)
        want = _signed_sqrt(leaf).detach()
        assert torch.equal(leaf.detach(), x)  # the differentiable path leaves its input alone
        with torch.no_grad():
            got = _signed_sqrt(x.clone())
        assert torch.allclose(got, want, atol=1e-6, rtol=0)
