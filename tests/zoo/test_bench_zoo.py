"""benchmarks/bench_zoo.py's device path runs (tiny, on the CPU) and names the peaks right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_zoo.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_zoo", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_on_cpu_prints_the_rate(bench, capsys):
    threads = torch.get_num_threads()
    args = ["--recipe", "cifar100-modelset500", "--synthetic", "--device", "cpu", "--smoke"]
    bench.main([*args, "--threads", "1", "--precision", "bf16", "--channels-last"])
    torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "2 models x 2 steps" in out and "model-steps/s" in out
    assert "peak unknown" in out and "whole recipe (500 models" in out


def test_flops_per_step_come_from_the_layer_shapes(bench):
    """32-64-128-256 convs on 32x32 with pooling after the first three, batch 128."""
    ds = bench.synthetic_dataset("cifar100", per_class=2)
    _, plans = bench.RECIPES["cifar100-modelset500"].plan(ds.n_classes, ds.input_shape, 0)
    macs = 3 * 32 * 9 * 32 * 32 + 32 * 64 * 9 * 16 * 16 + 64 * 128 * 9 * 8 * 8
    macs += 128 * 256 * 9 * 4 * 4 + 256 * 2
    per_step = bench.training_flops(plans[0]) / plans[0].steps
    assert per_step == 2 * 3 * macs * 128


@pytest.mark.parametrize(
    "name, row",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H100 PCIe", None),
        ("NVIDIA H200 NVL", None),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_peak_table_knows_only_the_sxm_cards(bench, name, row):
    assert bench.card(name) == row


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(bench):
    with pytest.raises(SystemExit, match="no CUDA"):
        bench.main(["--recipe", "cifar100-modelset500", "--synthetic", "--device", "cuda"])
