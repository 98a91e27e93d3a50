"""`paramsim compare A B`: prints a similarity, fails with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from paramsim.cli import main
from paramsim.weights import load, permute_hidden
from paramsim.weights.arch import ArchSpec

MLP = ArchSpec("mlp", (1, 4, 4), (6, 5))
CNN = ArchSpec("cnn", (1, 6, 6), (3, 4), batchnorm=True)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    sd = MLP.build().state_dict()
    twin = permute_hidden(load(sd), 1)  # same function, other unit order
    twin_sd = {}
    for i, lay in zip((1, 3, 5), twin.layers, strict=True):
        twin_sd[f"{i}.weight"], twin_sd[f"{i}.bias"] = lay.weight, lay.bias
    out = {"a": tmp_path / "a.pt", "twin": tmp_path / "twin.safetensors"}
    torch.save(sd, out["a"])
    save_file(twin_sd, str(out["twin"]))
    out["cnn"] = tmp_path / "cnn.pt"
    torch.save(CNN.build().state_dict(), out["cnn"])
    out["spec"] = tmp_path / "spec.json"
    out["spec"].write_text(CNN.to_json())
    return out


def test_compare_prints_similarity(files, capsys) -> None:
    assert main(["compare", str(files["a"]), str(files["twin"]), "--method", "gram1"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(1.0, abs=1e-5)
    assert main(["compare", str(files["a"]), str(files["twin"])]) == 0  # default: chain
    assert float(capsys.readouterr().out) == pytest.approx(1.0, abs=1e-5)
    assert (
        main(["compare", str(files["cnn"]), str(files["cnn"]), "--spec", str(files["spec"])]) == 0
    )
    assert float(capsys.readouterr().out) == pytest.approx(1.0, abs=1e-5)
    assert main(["compare", str(files["cnn"]), str(files["cnn"]), "--spec", CNN.to_json()]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "cka"], "needs real data or a set of models"),
        (["--method", "stats"], "needs real data or a set"),  # two z-score to a constant -1
        (["--spec", "{not json"], "not valid JSON"),
        (["--spec", "missing.json"], "neither"),
    ],
)
def test_compare_errors(files, capsys, extra: list[str], message: str) -> None:
    assert main(["compare", str(files["a"]), str(files["twin"]), *extra]) == 2
    assert message in capsys.readouterr().err


def test_compare_cnn_without_spec_and_missing_file(files, capsys) -> None:
    assert main(["compare", str(files["cnn"]), str(files["cnn"])]) == 2
    assert "--spec" in capsys.readouterr().err
    assert main(["compare", str(files["a"]), "nope.pt"]) == 2
    assert "does not exist" in capsys.readouterr().err
