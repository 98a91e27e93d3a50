"""--device for fit, embed and index build: cpu is the default and gives the same numbers;
cuda where torch has none is refused in one line before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramsim.cli import main
from paramsim.devices import resolve_device
from paramsim.errors import ParamsimError
from paramsim.lps import LPS, FitConfig, LPSConfig
from paramsim.zoo import Zoo

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def small_fit(zoo_dir, **kw) -> LPS:
    zoo = Zoo.open(zoo_dir)
    nets = zoo.networks()
    cfg = LPSConfig(input_shape=tuple(nets[0].input_shape), emb_dim=16, rank=8, n_probes=4)
    fc = FitConfig(epochs=2, min_batches=1, tasks_per_batch=3, models_per_task=2, val_fraction=0)
    return LPS(cfg, fc).fit(nets, [r.task for r in zoo.records], **kw)


def test_fit_and_embed_on_cpu_equal_the_default(tiny_zoo):
    default, cpu = small_fit(tiny_zoo), small_fit(tiny_zoo, device="cpu")
    for key, value in default.net.state_dict().items():
        assert torch.equal(value, cpu.net.state_dict()[key]), key
    nets = Zoo.open(tiny_zoo).networks()
    emb = default.embed(nets)
    assert np.array_equal(emb, cpu.embed(nets, device="cpu"))
    assert np.array_equal(emb, default.embed(nets, device=torch.device("cpu")))
    assert next(cpu.net.parameters()).device.type == "cpu"


@no_cuda
def test_library_refuses_cuda_without_cuda(tiny_zoo):
    with pytest.raises(ParamsimError, match="CUDA is not available"):
        small_fit(tiny_zoo, device="cuda")
    with pytest.raises(ParamsimError, match="CUDA is not available"):
        small_fit(tiny_zoo).embed(Zoo.open(tiny_zoo).networks()[:2], device="cuda:0")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", ""])
def test_unknown_devices_are_named(name):
    with pytest.raises(ParamsimError, match="unknown device"):
        resolve_device(name)


def one_error(capsys, args) -> str:
    assert main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def model_dir(tiny_zoo, tmp_path_factory):
    return small_fit(tiny_zoo).save(tmp_path_factory.mktemp("dev") / "lps")


@no_cuda
def test_commands_refuse_cuda_without_cuda_and_write_nothing(tiny_zoo, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cmds = [
        ["fit", tiny_zoo, "--out", out, "--epochs", "1"],
        ["embed", tiny_zoo, "--model", model_dir, "--out", tmp_path / "e.npy"],
        ["index", "build", tiny_zoo, "--model", model_dir, "--out", out],
    ]
    for args in cmds:
        err = one_error(capsys, [*args, "--device", "cuda", "--quiet"])
        assert "--device cuda" in err and "--device cpu" in err
    assert list(tmp_path.iterdir()) == []


def test_embed_and_index_build_with_device_cpu_equal_the_default(
    tiny_zoo, model_dir, tmp_path, capsys
):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert main(["embed", str(tiny_zoo), "--model", str(model_dir), "--out", str(a)]) == 0
    args = ["embed", str(tiny_zoo), "--model", str(model_dir), "--out", str(b)]
    assert main([*args, "--device", "cpu"]) == 0
    assert np.array_equal(np.load(a), np.load(b))
    idx = tmp_path / "idx"
    args = ["index", "build", str(tiny_zoo), "--model", str(model_dir), "--out", str(idx)]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    assert (idx / "index.json").is_file()
