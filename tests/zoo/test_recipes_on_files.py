"""The file-based recipes build end to end from tiny synthetic data directories."""

import pickle

import numpy as np
import pytest
import torch

from paramsim.cli import main
from paramsim.zoo import Zoo
from synthetic_files import make_idx_dir


def test_idx_pairs_recipe_builds_from_an_idx_directory(tmp_path):
    (tmp_path / "idx").mkdir()
    data = make_idx_dir(tmp_path / "idx")
    out = tmp_path / "zoo"
    args = ["zoo", "build", "idx-pairs", "--out", str(out), "--data-dir", str(data)]
    assert main([*args, "--tasks", "0-1,2-3", "--models-per-task", "2", "--quiet"]) == 0
    zoo = Zoo(out)
    assert len(zoo) == 4 and zoo.records[0].arch.input_shape == (1, 5, 5)
    assert zoo.dataset().name == "idx"


def test_cifar_recipe_trains_batchnorm_cnns_and_exports_them(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "cifar"
    data.mkdir()
    for name, n in (("train", 64), ("test", 32)):
        labels = rng.integers(0, 2, n)
        images = (labels[:, None] * 120 + rng.integers(0, 100, (n, 3072))).astype(np.uint8)
        with open(data / name, "wb") as f:
            pickle.dump({b"data": images, b"fine_labels": labels.tolist()}, f)
    recipe = tmp_path / "small.toml"
    recipe.write_text(
        'base = "cifar100-modelset500"\nsteps = [4, 6]\nbatch_size = 8\n'
        'archs = [{kind = "cnn", hidden = [4, 8], batchnorm = true, pool_after = [0]}]\n'
    )
    out = tmp_path / "zoo"
    args = ["zoo", "build", str(recipe), "--out", str(out), "--data-dir", str(data)]
    assert main([*args, "--tasks", "0-1", "--models-per-task", "2", "--quiet"]) == 0
    zoo = Zoo(out)
    sd = zoo.state_dict(1)
    assert (
        "1.running_mean" in sd
        and int(sd["1.num_batches_tracked"]) == zoo.records[1].settings["steps"]
    )
    assert not torch.equal(sd["1.running_var"], torch.ones_like(sd["1.running_var"]))
    x, y = zoo.records[1].task.test_data(zoo.dataset())
    acc = (zoo.module(1)(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(zoo.records[1].test_acc)


def test_file_recipes_without_data_dir_fail_clearly(tmp_path, capsys):
    assert main(["zoo", "build", "idx-pairs", "--out", str(tmp_path / "z"), "--quiet"]) == 2
    assert "--data-dir" in capsys.readouterr().err
