"""Opt-in speed settings of the trainer: bf16 autocast with float32 master weights, and the
channels_last memory layout. Both are meant for GPUs and are checked here on the CPU."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import CASES, DIGITS, MLP, plans_for

from paramsim.cli import main
from paramsim.data import Dataset
from paramsim.errors import ParamsimError
from paramsim.zoo import RECIPES, ArchSpec, Zoo, build_zoo, train_one
from paramsim.zoo.trainer import TaskData, accuracies, train_stacked

RECIPE = RECIPES["digits-pairs"].with_overrides(
    tasks="0-1,3-4", models_per_task=2, steps=(60, 60), shard_size=4
)


@pytest.fixture(scope="module")
def bf16_zoo(tmp_path_factory):
    return build_zoo(
        RECIPE, tmp_path_factory.mktemp("bf16") / "zoo", precision="bf16", progress=False
    )


def test_bf16_build_trains_stores_float32_and_records_its_precision(bf16_zoo, tmp_path):
    zoo = Zoo(bf16_zoo)
    summary = zoo.summary()
    assert summary["precision"] == "bf16" and summary["complete"]
    assert min(r.test_acc for r in zoo.records) > 0.75  # two-class tasks: chance is 0.5
    for shard in (bf16_zoo / "shards").iterdir():
        assert {t.dtype for t in load_file(shard).values()} == {torch.float32}
    # autocast really ran: the same seeds in float32 give other tensors
    f32 = Zoo(build_zoo(RECIPE, tmp_path / "f32", progress=False))
    assert f32.summary()["precision"] == "float32"
    a, b = zoo.state_dict(0), f32.state_dict(0)
    assert not torch.equal(a["1.weight"], b["1.weight"])
    torch.testing.assert_close(a["1.weight"], b["1.weight"], atol=0.05, rtol=0)


def test_zoo_info_shows_the_precision(bf16_zoo, capsys):
    assert main(["zoo", "info", str(bf16_zoo)]) == 0
    assert "precision bf16" in capsys.readouterr().out.splitlines()[0]


def test_resume_with_another_precision_is_refused(bf16_zoo, capsys):
    before = sorted((p, p.stat().st_mtime_ns) for p in bf16_zoo.rglob("*"))
    with pytest.raises(ParamsimError, match="--precision bf16"):
        build_zoo(RECIPE, bf16_zoo, progress=False)  # float32 by default
    args = ["zoo", "build", "digits-pairs", "--out", bf16_zoo, "--tasks", "0-1,3-4"]
    args += ["--models-per-task", "2", "--shard-size", "4", "--quiet"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--precision bf16" in err[0]
    assert sorted((p, p.stat().st_mtime_ns) for p in bf16_zoo.rglob("*")) == before


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ParamsimError, match="unknown precision 'fp8'"):
        build_zoo(RECIPE, tmp_path / "z", precision="fp8", progress=False)
    assert not (tmp_path / "z").exists()


def test_bf16_needs_float32_master_weights():
    plans = plans_for([MLP] * 2, steps=2)
    torch.set_default_dtype(torch.float64)
    try:
        data = TaskData.build(DIGITS, {p.task_id: p.task for p in plans})
        with pytest.raises(ParamsimError, match="float32 master weights"):
            train_stacked(plans, data, precision="bf16")
    finally:
        torch.set_default_dtype(torch.float32)


def test_bf16_cnn_with_batchnorm_keeps_float32_statistics():
    arch = ArchSpec("cnn", (1, 8, 8), (4, 8), batchnorm=True, pool_after=(0,))
    plans = plans_for([arch] * 2, "sgd", steps=80)
    data = TaskData.build(DIGITS, {p.task_id: p.task for p in plans})
    stack = train_stacked(plans, data, precision="bf16")
    assert all(v.dtype == torch.float32 for v in stack.params.values())
    assert stack.buffers["1.running_mean"].dtype == torch.float32
    assert accuracies(stack, data, "test").min() > 0.9
    plain = train_stacked(plans, data)  # the convolutions did run in bf16
    assert not torch.equal(stack.params["0.weight"], plain.params["0.weight"])


@pytest.fixture
def digits64():
    """The digits in float64, with float64 as torch's default dtype (as in test_trainer.py)."""
    torch.set_default_dtype(torch.float64)
    d = DIGITS
    yield Dataset("digits", d.x_train.double(), d.y_train, d.x_test.double(), d.y_test, 10)
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("case", ["cnn-adam", "cnn-bn-pool-sgd"])
def test_channels_last_trains_the_same_cnns(case, digits64):
    """In float64 (as test_trainer.py does) the NHWC stack equals each model trained alone;
    in float32 the layout changes only the order of additions."""
    plans = CASES[case]
    data = TaskData.build(digits64, {p.task_id: p.task for p in plans})
    nhwc = train_stacked(plans, data, channels_last=True)
    assert nhwc.channels_last
    for i, plan in enumerate(plans):
        alone = train_one(plan, digits64).state_dict()
        for key, value in nhwc.state_dict(i).items():
            torch.testing.assert_close(value, alone[key], atol=1e-9, rtol=0)


def test_channels_last_float32_gives_the_same_accuracies():
    arch = ArchSpec("cnn", (1, 8, 8), (4, 8), pool_after=(0,))
    small = ArchSpec("cnn", (1, 8, 8), (2, 6), pool_after=(0,))
    plans = plans_for([arch, small], steps=20)
    data = TaskData.build(DIGITS, {p.task_id: p.task for p in plans})
    plain = train_stacked(plans, data)
    nhwc = train_stacked(plans, data, channels_last=True)
    for i in range(len(plans)):
        a, b = plain.state_dict(i), nhwc.state_dict(i)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)
    assert (accuracies(nhwc, data, "test") == accuracies(plain, data, "test")).all()
