"""Loading checkpoints into the canonical form: same function, safe file reading."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from paramsim.errors import ParamsimError
from paramsim.weights import Network, from_module, from_state_dict, load
from paramsim.weights.arch import ArchSpec

MLP = ArchSpec("mlp", (1, 8, 8), (16, 12))
CNN_BN = ArchSpec("cnn", (1, 8, 8), (6, 5), batchnorm=True)
CNN_POOL = ArchSpec("cnn", (3, 8, 8), (4, 6, 5), batchnorm=True, pool_after=(0, 1))


def _randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.3)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g))
    return module.eval()


def _assert_same_function(net: Network, module: nn.Module, shape) -> None:
    x = torch.rand(7, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", [MLP, CNN_BN, CNN_POOL], ids=["mlp", "cnn-bn", "cnn-pool"])
def test_from_module_and_state_dict_compute_the_module_function(spec: ArchSpec) -> None:
    torch.manual_seed(0)
    module = _randomise_bn(spec.build())
    net = from_module(module, spec.input_shape)
    _assert_same_function(net, module, spec.input_shape)
    _assert_same_function(from_state_dict(module.state_dict(), spec), module, spec.input_shape)
    assert all(lay.bias.shape == (lay.units,) for lay in net.layers)
    if spec.batchnorm:  # folded: no extra layers
        assert len(net.layers) == len(spec.hidden) + 1


def test_hand_built_module_with_nesting_no_bias_flatten_head_bn1d_dropout() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Conv2d(4, 3, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(3 * 2 * 2, 7),
        nn.BatchNorm1d(7),
        nn.ReLU(),
        nn.Linear(7, 3, bias=False),
    )
    _randomise_bn(module)
    net = from_module(module, (2, 6, 6))
    _assert_same_function(net, module, (2, 6, 6))
    assert torch.equal(net.layers[-1].bias, torch.zeros(3))
    assert net.layers[1].padding == 2


class _InOrder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flat, self.fc1, self.act, self.fc2 = nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), None
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flat(x))))


class _Reordered(_InOrder):
    def forward(self, x):  # ReLU after the last layer: not the registration order
        return self.act(self.fc2(self.fc1(self.flat(x))))


def test_plain_container_checked_against_its_forward() -> None:
    torch.manual_seed(0)
    module = _InOrder()
    _assert_same_function(from_module(module, (1, 4, 4)), module, (1, 4, 4))
    with torch.no_grad():
        module.fc2.bias.fill_(-100.0)  # make the misplaced ReLU visible
    bad = _Reordered()
    bad.load_state_dict(module.state_dict())
    with pytest.raises(ParamsimError, match="children in order"):
        from_module(bad, (1, 4, 4))


@pytest.mark.parametrize(
    "layer, type_name",
    [
        (nn.Conv2d(4, 4, 3, stride=2), "stride"),
        (nn.Conv2d(4, 4, 3, groups=2), "groups"),
        (nn.Conv2d(4, 4, 3, dilation=2), "dilation"),
        (nn.Tanh(), "Tanh"),
        (nn.LSTM(4, 4), "LSTM"),
        (nn.MultiheadAttention(4, 2), "MultiheadAttention"),
        (nn.AvgPool2d(2), "AvgPool2d"),
        (nn.MaxPool2d(3), "MaxPool2d"),
    ],
)
def test_unsupported_layers_are_named(layer: nn.Module, type_name: str) -> None:
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.ReLU(), layer))
    with pytest.raises(ParamsimError) as err:
        from_module(module, (1, 8, 8))
    assert "1.1" in str(err.value) and type_name in str(err.value)


def test_batchnorm_that_cannot_be_folded() -> None:
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ParamsimError, match="cannot be folded"):
        from_module(module, (1, 8, 8))


def test_input_shape_rules() -> None:
    with pytest.raises(ParamsimError, match="input size"):
        from_module(CNN_BN.build())
    with pytest.raises(ParamsimError, match="values"):
        from_module(MLP.build(), (1, 4, 4))
    assert from_module(MLP.build()).input_shape == (1, 8, 8)  # 64 = 8 x 8
    odd = nn.Sequential(nn.Linear(10, 3), nn.ReLU(), nn.Linear(3, 2))
    assert from_module(odd).input_shape == (1, 1, 10)


def test_state_dict_without_spec_mlp_with_batchnorm() -> None:
    torch.manual_seed(0)
    module = _randomise_bn(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    )
    net = from_state_dict(module.state_dict())
    assert net.input_shape == (1, 4, 4) and len(net.layers) == 2
    _assert_same_function(net, module, (1, 4, 4))


def test_state_dict_without_spec_errors() -> None:
    sd = MLP.build().state_dict()
    sd["3.weight"] = torch.zeros(12, 99)
    with pytest.raises(ParamsimError, match="do not chain"):
        from_state_dict(sd)
    with pytest.raises(ParamsimError, match="spec"):
        from_state_dict(CNN_BN.build().state_dict())
    with pytest.raises(ParamsimError, match="does not fit"):
        from_state_dict(MLP.build().state_dict(), CNN_BN)
    with pytest.raises(ParamsimError, match="not a state_dict"):
        from_state_dict({"epoch": 3})


def test_load_every_source_kind(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MLP.build().eval()
    sd = module.state_dict()
    torch.save(sd, tmp_path / "a.pt")
    torch.save({"state_dict": sd, "epoch": 4}, tmp_path / "wrapped.pth")
    torch.save({"model_state_dict": sd}, tmp_path / "wrapped2.pt")
    save_file(sd, str(tmp_path / "a.safetensors"))
    sources = [
        tmp_path / "a.pt",
        str(tmp_path / "wrapped.pth"),
        tmp_path / "wrapped2.pt",
        tmp_path / "a.safetensors",
        sd,
        {"state_dict": sd},
        module,
    ]
    for src in sources:
        _assert_same_function(load(src), module, (1, 8, 8))
    net = load(module)
    assert load(net) is net


def test_safetensors_metadata_supplies_the_spec(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _randomise_bn(CNN_POOL.build())
    save_file(module.state_dict(), str(tmp_path / "c.safetensors"), {"arch": CNN_POOL.to_json()})
    _assert_same_function(load(tmp_path / "c.safetensors"), module, CNN_POOL.input_shape)
    _assert_same_function(  # the same spec given again agrees with the stored one
        load(tmp_path / "c.safetensors", CNN_POOL), module, CNN_POOL.input_shape
    )
    other = ArchSpec.from_json({**json.loads(CNN_POOL.to_json()), "pool_after": []})
    with pytest.raises(ParamsimError, match="stores its architecture .* drop the spec"):
        load(tmp_path / "c.safetensors", other)  # never silently read under another one
    bad = tmp_path / "bad.safetensors"  # unusable metadata: refused alone, a spec gets past it
    save_file(module.state_dict(), str(bad), {"arch": '{"kind": "cnn", "bogus": 1}'})
    with pytest.raises(ParamsimError, match="not a usable architecture"):
        load(bad)
    _assert_same_function(load(bad, CNN_POOL), module, CNN_POOL.input_shape)


class _Payload:
    """Pickles to a call that would create a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["zip", "legacy", "raw-pickle"])
def test_pickle_with_code_is_refused_and_runs_nothing(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"0.weight": torch.zeros(2, 2), "x": _Payload(marker)}
    if how == "zip":
        torch.save(payload, path)
    elif how == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(ParamsimError, match="refused|not a PyTorch checkpoint"):
        load(path)
    assert not marker.exists()


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    sd = MLP.build().state_dict()
    torch.save(sd, tmp_path / "good.pt")
    save_file(sd, str(tmp_path / "good.safetensors"))
    cut_pt = (tmp_path / "good.pt").read_bytes()
    cut_st = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.pt").write_bytes(cut_pt[: len(cut_pt) // 2])
    (tmp_path / "cut.safetensors").write_bytes(cut_st[: len(cut_st) // 2])
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    (tmp_path / "text.safetensors").write_text("hello, not a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "model.onnx").write_bytes(b"\x00")
    cases = {
        "cut.pt": "truncated",
        "cut.safetensors": "truncated",
        "text.pt": "not a",
        "text.safetensors": "not a readable safetensors",
        "empty.pt": "not a",
        "list.pt": "not a state_dict",
        "model.onnx": "suffix",
        "missing.pt": "does not exist",
    }
    for name, msg in cases.items():
        with pytest.raises(ParamsimError, match=msg):
            load(tmp_path / name)
    with pytest.raises(ParamsimError, match="cannot load"):
        load(42)  # type: ignore[arg-type]


def test_safetensors_mlp_with_ten_plus_modules_keeps_layer_order(tmp_path: Path) -> None:
    """safetensors stores keys sorted as strings ('layers.10' < 'layers.2'); with equal widths
    a string-ordered chain would load silently in the wrong order."""
    torch.manual_seed(0)
    body = [nn.Linear(16, 8)] + [nn.Linear(8, 8) for _ in range(10)] + [nn.Linear(8, 2)]
    holder = nn.Module()
    holder.layers = nn.ModuleList(body)
    reference = nn.Sequential(nn.Flatten(), *[m for lay in body for m in (lay, nn.ReLU())][:-1])
    save_file(holder.state_dict(), str(tmp_path / "deep.safetensors"))
    _assert_same_function(load(tmp_path / "deep.safetensors"), reference, (1, 4, 4))


def test_module_without_flatten_reads_images() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    net = from_module(module, (1, 4, 4))
    x = torch.rand(5, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), module(x.flatten(1)))
    assert net.signature() == from_module(nn.Sequential(nn.Flatten(), *module)).signature()


def _chain_sd(names: list[str], bn: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """An MLP 16-6-5-2 state_dict whose layers are called `names` (batch-norms `bn`)."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for name, (n_out, n_in) in zip(names, [(6, 16), (5, 6), (2, 5)], strict=True):
        sd[f"{name}.weight"] = torch.randn(n_out, n_in, generator=g)
        sd[f"{name}.bias"] = torch.randn(n_out, generator=g)
        if bn and name in bn:
            sd[f"{bn[name]}.running_mean"] = torch.randn(n_out, generator=g)
            sd[f"{bn[name]}.running_var"] = torch.rand(n_out, generator=g) + 0.5
            sd[f"{bn[name]}.num_batches_tracked"] = torch.tensor(3)
    return sd


@pytest.mark.parametrize(
    "names, bn",
    [
        (["1", "3", "5"], None),  # nn.Sequential
        (["module.0", "module.2", "module.4"], {"module.0": "module.1"}),  # DataParallel
        (["layers.0", "layers.1", "layers.2"], None),  # ModuleList
        (["fc1", "fc2", "fc3"], {"fc1": "bn1", "fc2": "bn2"}),  # numbered attributes
        (["blocks.0.fc", "blocks.1.fc", "blocks.2.fc"], {"blocks.0.fc": "blocks.0.bn"}),
    ],
)
def test_spec_less_chain_accepts_numbered_layers(names, bn) -> None:
    sd = _chain_sd(names, bn)
    net = from_state_dict(sd)
    assert [lay.weight.shape[1] for lay in net.layers] == [16, 6, 5]
    # the order comes from the numbers, not from the dict order
    shuffled = dict(reversed(list(sd.items())))
    for a, b in zip(from_state_dict(shuffled).layers, net.layers, strict=True):
        assert torch.equal(a.weight, b.weight)


@pytest.mark.parametrize(
    "names, extra",
    [
        (["fc1", "fc2", "out"], "out.weight"),  # cannot tell where `out` goes: refused
        (["0", "2", "4"], "extra.weight"),
        (["layers.0", "layers.1", "head.0"], "head.0.weight"),
    ],
)
def test_spec_less_chain_refuses_keys_it_cannot_place(names, extra) -> None:
    sd = _chain_sd(names)
    if extra not in sd:
        sd[extra] = torch.ones(3, 2)  # chains after the output layer: would become a layer
    with pytest.raises(ParamsimError, match="outside its layer chain") as err:
        from_state_dict(sd)
    assert extra in str(err.value)


def test_spec_keys_and_shapes_are_checked_before_building() -> None:
    sd = dict(MLP.build().state_dict())
    sd["extra.weight"] = torch.ones(3, 3)
    del sd["3.bias"]
    with pytest.raises(ParamsimError) as err:
        from_state_dict(sd, MLP)
    text = str(err.value)
    assert "unknown keys extra.weight" in text and "missing keys 3.bias" in text
    bn_sd = {k: v for k, v in CNN_BN.build().state_dict().items() if "num_batches" not in k}
    from_state_dict(bn_sd, CNN_BN)  # the batch-norm counter may be absent


def test_module_with_bad_values_is_refused_like_a_file() -> None:
    module = MLP.build()
    with torch.no_grad():
        module[3].bias[0] = float("nan")
    with pytest.raises(ParamsimError, match=r"3\.bias .*NaN"):
        from_module(module)
    bn = nn.BatchNorm1d(4, eps=0.0).eval()
    bn.running_var.zero_()
    with pytest.raises(ParamsimError, match="non-finite"):
        from_module(nn.Sequential(nn.Linear(4, 4), bn, nn.ReLU(), nn.Linear(4, 2)))
