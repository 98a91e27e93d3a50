"""The file-based recipes build end to end from tiny synthetic data directories."""

import pickle

import numpy as np
import pytest
import torch

from paramsim.cli import main
from paramsim.errors import ParamsimError
from paramsim.zoo import Zoo
from synthetic_files import make_idx_dir, write_idx


def test_idx_pairs_recipe_builds_from_an_idx_directory(tmp_path):
    (tmp_path / "idx").mkdir()
    data = make_idx_dir(tmp_path / "idx")
    out = tmp_path / "zoo"
    args = ["zoo", "build", "idx-pairs", "--out", str(out), "--data-dir", str(data)]
    assert main([*args, "--tasks", "0-1,2-3", "--models-per-task", "2", "--quiet"]) == 0
    zoo = Zoo(out)
    assert len(zoo) == 4 and zoo.records[0].arch.input_shape == (1, 5, 5)
    assert zoo.dataset().name == "idx"
    rng = np.random.default_rng(1)  # the data files replaced by images of another size
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(data / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 6, 6), np.uint8))
    with pytest.raises(ParamsimError, match=r"now holds images of shape \(1, 6, 6\)"):
        Zoo(out).dataset()
    code = main(["transfer", str(out), "-m", "chain", "--shots", "1", "--out", str(tmp_path / "t")])
    assert code == 2 and not (tmp_path / "t").exists()


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


@pytest.mark.parametrize("recipe", ["fashion-pairs", "fashion-pairs-cnn"])
def test_fashion_recipes_read_the_package_directory_by_default(tmp_path, monkeypatch, recipe):
    import paramsim.data.datasets as datasets

    (tmp_path / "pkg").mkdir()
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", make_idx_dir(tmp_path / "pkg", gz=True))
    out = tmp_path / "zoo"
    args = ["zoo", "build", recipe, "--out", str(out), "--tasks", "0-1"]
    assert main([*args, "--models-per-task", "1", "--quiet"]) == 0
    zoo = Zoo(out)
    assert zoo.records[0].arch.kind == ("cnn" if recipe.endswith("cnn") else "mlp")
    assert zoo.records[0].arch.input_shape == (1, 5, 5)
    ds = zoo.dataset()  # reopened later, still from the default directory
    assert ds.name == "fashion-mnist" and len(ds.y_train) == 40


def test_fashion_recipe_prefers_data_dir_over_the_package(tmp_path, monkeypatch):
    import paramsim.data.datasets as datasets

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "absent")
    (tmp_path / "idx").mkdir()
    data = make_idx_dir(tmp_path / "idx")
    out = tmp_path / "zoo"
    args = ["zoo", "build", "fashion-pairs", "--out", str(out), "--data-dir", str(data)]
    assert main([*args, "--tasks", "2-3", "--models-per-task", "1", "--quiet"]) == 0
    assert Zoo(out).dataset().name == "fashion-mnist"


def test_fashion_recipe_without_the_package_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import paramsim.data.datasets as datasets

    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "absent")
    assert main(["zoo", "build", "fashion-pairs", "--out", str(tmp_path / "z"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "apt-get install dataset-fashion-mnist" in err and "--data-dir" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "z").exists()


def test_idx_pairs_refuses_tasks_on_a_class_without_images(tmp_path, capsys):
    """IDX labels 1..3 (letters-style) give 4 classes: "0 vs 1" would train on class 1
    alone and record a perfect model; the build is refused before anything is written."""
    from synthetic_files import write_idx

    data = tmp_path / "idx"
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(data / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 5, 5), np.uint8))
        write_idx(data / f"{prefix}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 3 + 1)
    out = tmp_path / "zoo"
    args = ["zoo", "build", "idx-pairs", "--out", str(out), "--data-dir", str(data), "--quiet"]
    assert main([*args, "--tasks", "0-1", "--models-per-task", "1"]) != 0
    assert "no training example of class 0" in capsys.readouterr().err
    assert not out.exists()
    assert main([*args, "--tasks", "1-2", "--models-per-task", "1"]) == 0
