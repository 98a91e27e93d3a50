"""Each fixed method computes what it documents, and refuses what it cannot compare."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.lps.helpers import pad_hidden
from torch import nn

from paramsim.data import Dataset
from paramsim.errors import ParamsimError
from paramsim.features import (
    FIXED_METHODS,
    Context,
    chain_maps,
    get_method,
    linear_cka,
    synthetic_probes,
)
from paramsim.features.function import centre_features, centred_gram
from paramsim.weights import Layer, Network, NetworkStack, from_module, permute_hidden
from paramsim.weights.arch import ArchSpec

MLP = ArchSpec("mlp", (1, 4, 4), (6, 5))


def _nets(spec: ArchSpec, n: int, seed: int = 0) -> list[Network]:
    torch.manual_seed(seed)
    return [from_module(spec.build().eval(), spec.input_shape) for _ in range(n)]


def _unit_triu(g: torch.Tensor) -> np.ndarray:
    r, c = torch.triu_indices(*g.shape)
    v = g[r, c].double().numpy()
    return v / np.linalg.norm(v)


def test_registry() -> None:
    assert set(FIXED_METHODS) == {
        "flat", "stats", "gram1", "chain", "e2e", "match", "probes", "cka", "outputs"
    }  # fmt: skip
    for name in FIXED_METHODS:
        m = get_method(name)
        assert m.name == name and isinstance(m.weights_only, bool)
    assert not get_method("cka").weights_only and get_method("probes").weights_only
    with pytest.raises(ParamsimError, match="unknown method"):
        get_method("nope")
    with pytest.raises(ParamsimError, match="bad options"):
        get_method("gram1", depth=3)


def test_gram1_chain_e2e_match_their_formulas() -> None:
    nets = _nets(MLP, 2)
    w1, w2, w3 = (lay.weight for lay in nets[0].layers)
    e = get_method("gram1").embed(nets)
    np.testing.assert_allclose(e[0], _unit_triu(w1.T @ w1), rtol=1e-5)
    x2 = w1.T @ w2.T
    e = get_method("chain").embed(nets)
    want = np.concatenate([_unit_triu(w1.T @ w1), _unit_triu(x2 @ x2.T)])
    np.testing.assert_allclose(e[0], want, rtol=1e-5, atol=1e-7)
    x3 = x2 @ w3.T
    diff = (x3[:, 1] - x3[:, 0]).double().numpy()
    e = get_method("e2e").embed(nets)
    want = np.concatenate([_unit_triu(x3 @ x3.T), diff / np.linalg.norm(diff)])
    np.testing.assert_allclose(e[0], want, rtol=1e-5, atol=1e-7)
    e = get_method("chain", depths=(-1,)).embed(nets)
    np.testing.assert_allclose(e[0], _unit_triu(x2 @ x2.T), rtol=1e-5, atol=1e-7)


def test_chain_bias_column_is_the_affine_map() -> None:
    """With bias=True the chain is the affine map: X^T [x; 1] gives the linear network."""
    net = _nets(MLP, 1)[0]
    linear = Network(
        tuple(Layer(lay.kind, lay.weight, lay.bias) for lay in net.layers), (1, 4, 4), ("flatten",)
    )
    x = torch.rand(5, 1, 4, 4)
    xs = chain_maps(NetworkStack.from_networks([linear]), bias=True)[1][-1][0]
    aug = torch.cat([x.flatten(1), torch.ones(5, 1)], 1)
    torch.testing.assert_close(aug @ xs, linear(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool", [False, True])
def test_composed_kernels_are_the_linear_cnn(pool: bool) -> None:
    """Without ReLU and padding, the composed kernel is the network's exact input-output map,
    with max pooling read as 2x2 average pooling (the documented approximation)."""
    torch.manual_seed(0)
    c1, c2 = nn.Conv2d(2, 3, 3, bias=False), nn.Conv2d(3, 4, 2, bias=False)
    size = 2 if pool else 6  # map after the second conv on 9x9: 9-7(-3 pooled)-6 (2)
    head = nn.Linear(4 * size * size, 2, bias=False)
    ops = ("maxpool2",) if pool else ()
    net = Network(
        (
            Layer("conv", c1.weight.detach(), torch.zeros(3), 0, ops),
            Layer("conv", c2.weight.detach(), torch.zeros(4), 0, ("flatten",)),
            Layer("linear", head.weight.detach(), torch.zeros(2)),
        ),
        (2, 9, 9),
    )
    reference = nn.Sequential(
        c1, nn.AvgPool2d(2) if pool else nn.Identity(), c2, nn.Flatten(), head
    )
    x = torch.rand(5, 2, 9, 9)
    maps = chain_maps(NetworkStack.from_networks([net]))[1]
    k = maps[-1][0]  # (2 * S * S, 2)
    s = int((k.shape[0] // 2) ** 0.5)
    kern = k.T.reshape(2, 2, s, s)
    with torch.no_grad():
        got = nn.functional.conv2d(x[..., :s, :s], kern).flatten(1)
        torch.testing.assert_close(got, reference(x), rtol=1e-4, atol=1e-5)


def test_cross_width_and_cross_kind_rules() -> None:
    narrow, wide = _nets(MLP, 2), _nets(ArchSpec("mlp", (1, 4, 4), (9, 3)), 2)
    deep = _nets(ArchSpec("mlp", (1, 4, 4), (7, 6, 5)), 2)
    cnn = _nets(ArchSpec("cnn", (1, 4, 4), (3,)), 2)
    mixed = narrow + wide
    twin = pad_hidden(narrow[0], 0, 4)  # wider, same function
    for name in ["gram1", "chain", "e2e", "probes"]:
        m = get_method(name)
        assert m.check(mixed) is None, name
        assert m.similarity(mixed).shape == (4, 4)
        # across widths the similarity means something: the wider twin is the same model
        S = m.similarity([narrow[0], twin, *wide], Context(seed=0))
        assert S[0, 1] > 0.9999 and S[0, 2:].max() < 0.999, name
    for name in ["flat", "match"]:
        assert "one architecture" in get_method(name).check(mixed)
        with pytest.raises(ParamsimError, match="one architecture"):
            get_method(name).similarity(mixed)
    assert get_method("stats").check(mixed) is None  # same depth: statistics compare
    assert "layers" in get_method("stats").check(narrow + deep)
    assert get_method("e2e").check(narrow + deep) is None  # input x classes at any depth
    assert "depths" in get_method("chain").check(narrow + deep)
    assert get_method("chain", depths=(-1,)).check(narrow + deep) is None
    for name in ["gram1", "chain", "e2e"]:
        assert "MLPs and CNNs" in get_method(name).check(narrow + cnn)
    assert get_method("probes").check(narrow + cnn) is None  # same input shape: function space


def test_mlps_of_one_input_size_but_different_shapes_are_not_compared() -> None:
    """16 inputs as 1x4x4 and as 4x2x2 are different pixels: their chains share no space."""
    square, channels = _nets(MLP, 2), _nets(ArchSpec("mlp", (4, 2, 2), (6, 5)), 2)
    for name in ["gram1", "chain", "e2e"]:
        assert get_method(name).check(square) is None
        assert "different input spaces" in get_method(name).check(square + channels), name


def test_pixel_space_equals_kernel_chain_for_mlps_and_joins_cnns() -> None:
    nets = _nets(MLP, 3)
    for name in ["gram1", "chain", "e2e"]:
        for bias in (False, True):
            a = get_method(name, bias=bias).embed(nets)
            b = get_method(name, bias=bias, space="pixels").embed(nets)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
    cnn = _nets(ArchSpec("cnn", (1, 4, 4), (3, 2), batchnorm=True, pool_after=(0,)), 2)
    mixed = nets + cnn
    assert get_method("e2e", space="pixels").check(mixed) is None
    sim = get_method("chain", space="pixels").similarity(mixed)
    assert sim.shape == (5, 5) and np.allclose(np.diag(sim), 1)
    with pytest.raises(ParamsimError, match="space"):
        get_method("chain", space="voxels").similarity(nets)


def test_match_recovers_a_known_permutation_for_cnns() -> None:
    spec = ArchSpec("cnn", (1, 6, 6), (4, 5), batchnorm=True, pool_after=(0,))
    nets = _nets(spec, 2)
    twin = permute_hidden(nets[0], 7)
    sim = get_method("match").similarity([nets[0], twin, nets[1]])
    assert sim[0, 1] == pytest.approx(0.0, abs=1e-4) and sim[0, 2] < -0.1
    np.testing.assert_allclose(sim, sim.T)
    with pytest.raises(NotImplementedError):
        get_method("match").embed(nets)
    emb = get_method("match", mode="reference").embed([nets[0], twin, nets[1]])
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)


def test_match_pairwise_is_never_worse_than_identity() -> None:
    nets = _nets(MLP, 5, seed=3)
    sim = get_method("match").similarity(nets)
    flat = get_method("flat").embed(nets)  # unit-free: flat embeds raw parameters
    naive = -np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    assert np.all(sim >= naive - 1e-4)


def test_probes_are_seeded_images_in_unit_range() -> None:
    a, b = synthetic_probes((3, 8, 8), 20, seed=1), synthetic_probes((3, 8, 8), 20, seed=1)
    assert a.shape == (20, 3, 8, 8) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    strokes = a[10:]
    assert (strokes == 0).float().mean() > 0.3  # mostly background, unlike noise
    assert not torch.equal(a, synthetic_probes((3, 8, 8), 20, seed=2))


def test_probes_read_logit_differences_and_more_classes() -> None:
    nets = _nets(MLP, 2)
    x = synthetic_probes((1, 4, 4), 16)
    with torch.no_grad():
        out = nets[0](x)
    np.testing.assert_allclose(
        get_method("probes", n=16).embed(nets)[0], (out[:, 1] - out[:, 0]).numpy(), rtol=1e-5
    )
    three = _nets(ArchSpec("mlp", (1, 4, 4), (5,), n_outputs=3), 2)
    assert get_method("probes", n=16).embed(three).shape == (2, 48)
    assert get_method("e2e").embed(three).shape[0] == 2


def test_constant_activations_centre_to_zero_but_small_spread_is_kept() -> None:
    g = torch.Generator().manual_seed(0)
    const = torch.full((2, 16, 3), 0.7) + 1e-9 * torch.randn(2, 16, 3, generator=g)
    assert torch.count_nonzero(centre_features(const)) == 0
    assert float(centred_gram(const[:, :, :]).abs().max()) == 0.0
    small = 0.7 + 1e-3 * torch.randn(2, 16, 3, generator=g)  # small but real variation
    centred = centre_features(small)
    assert torch.allclose(centred, small - small.mean(1, keepdim=True))
    x = torch.randn(16, 3, generator=g)
    assert linear_cka(const[0], x) == 0.0
    assert linear_cka(small[0], small[0]) == pytest.approx(1.0)


def test_cka_is_linear_cka_and_needs_data() -> None:
    x, y = torch.randn(30, 7), torch.randn(30, 4)
    q, _ = torch.linalg.qr(torch.randn(7, 7))
    assert linear_cka(x, x @ q * 3.0) == pytest.approx(1.0, abs=1e-6)  # rotation, scale
    got = float(centred_gram(x[None]) @ centred_gram(y[None]).T)
    assert got == pytest.approx(linear_cka(x, y), abs=1e-5)
    nets = _nets(MLP, 3)
    for name in ["cka", "outputs"]:
        with pytest.raises(ParamsimError, match="needs a dataset"):
            get_method(name).similarity(nets)
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(50, 1, 4, 4, generator=g)
    ds = Dataset("r", xs, torch.zeros(50, dtype=torch.long), xs, torch.zeros(50), 2)
    ctx = Context(ds, seed=0)
    sim = get_method("cka", n=50).similarity(nets, ctx)
    with torch.no_grad():
        hid = [n.forward(xs, return_hidden=True)[1] for n in nets]
    want = np.mean([linear_cka(hid[0][i], hid[1][i]) for i in range(2)])
    assert sim[0, 1] == pytest.approx(want, abs=1e-5)
    deeper = _nets(ArchSpec("mlp", (1, 4, 4), (3,)), 1)
    assert "layers='last'" in get_method("cka", layers="mean").check(nets + deeper)
    auto = get_method("cka", n=50).similarity(nets + deeper, ctx)
    assert auto[0, 1] == pytest.approx(linear_cka(hid[0][1], hid[1][1]), abs=1e-5)
    last = get_method("cka", n=50, layers="last").similarity(nets, ctx)
    assert last[0, 1] == pytest.approx(linear_cka(hid[0][1], hid[1][1]), abs=1e-5)
    img = torch.rand(5, 1, 8, 8)
    wrong = Dataset("w", img, torch.zeros(5), img, torch.zeros(5), 2)
    with pytest.raises(ParamsimError, match="inputs"):
        get_method("outputs").similarity(nets, Context(wrong))


def test_stats_and_flat_shapes() -> None:
    nets = _nets(MLP, 4)
    assert get_method("stats").embed(nets).shape == (4, 3 * 2 * 7)
    assert get_method("flat").embed(nets).shape == (4, 16 * 6 + 6 + 6 * 5 + 5 + 5 * 2 + 2)
    np.testing.assert_allclose(get_method("stats").embed(nets).mean(0), 0, atol=1e-9)


def test_gram_size_guard() -> None:
    nets = _nets(MLP, 2)
    m = get_method("gram1")
    m.max_rows = 8
    assert "max_rows" in m.check(nets)


def test_gram1_of_a_cnn_pooled_after_its_first_conv_is_the_kernel_gram() -> None:
    """Pooling after conv 1 is no part of W_1: gram1 is W_1^T W_1 with kernels as
    (out, in * k * k), and such a CNN compares with one that pools elsewhere."""
    pooled = _nets(ArchSpec("cnn", (2, 8, 8), (4, 5), pool_after=(0,)), 2)
    plain = _nets(ArchSpec("cnn", (2, 8, 8), (4, 5), pool_after=(1,)), 1, seed=1)
    method = get_method("gram1")
    e = method.embed(pooled + plain)
    for row, net in zip(e, pooled + plain, strict=True):
        w = net.layers[0].weight.reshape(4, -1)
        np.testing.assert_allclose(row, _unit_triu(w.T @ w), rtol=1e-5, atol=1e-7)
    assert method.check(pooled + plain) is None


def test_weights_too_large_for_float32_are_refused_not_scored(tmp_path) -> None:
    from safetensors.torch import save_file

    from paramsim.use.compare import similarities

    module = MLP.build().eval()
    sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
    save_file(sd, tmp_path / "a.safetensors")
    big = {k: v.clone() for k, v in sd.items()}
    first = next(iter(big))
    big[first].view(-1)[0] = 1e20  # finite: the loader accepts it, a Gram overflows
    save_file(big, tmp_path / "b.safetensors")
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    assert np.isfinite(similarities(a, a, ["chain", "gram1"], MLP)["chain"])
    for method in ("chain", "gram1"):
        with pytest.raises(ParamsimError, match=f"the {method} similarity .* is not finite"):
            similarities(a, b, [method], MLP)
    nets = _nets(MLP, 2)
    huge = [
        Network(tuple(replace(lay, weight=lay.weight * 1e30) for lay in n.layers), n.input_shape)
        for n in nets
    ]
    with pytest.raises(ParamsimError, match="weight matching cannot align"):
        get_method("match").similarity(huge, Context())
