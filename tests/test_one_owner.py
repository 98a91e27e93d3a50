"""Concepts with one owner: unit rows, opening a zoo, merging an LPS variant's settings."""

import numpy as np
import pytest
import torch

from paramsim.errors import ParamsimError
from paramsim.vectors import cosine_matrix, unit_rows


def test_unit_rows_for_numpy_and_torch_alike():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(unit_rows(x), [[0.6, 0.8], [0.0, 0.0]])  # zero row stays zero
    t = unit_rows(torch.tensor(x, dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), unit_rows(x), rtol=1e-6)
    np.testing.assert_allclose(unit_rows(np.array([[3.0], [4.0]]), dim=0), [[0.6], [0.8]])
    np.testing.assert_allclose(
        cosine_matrix(x[:1], np.array([[-4.0, 3.0]])), [[0.0]], atol=1e-12
    )  # 0.6 and 0.8 are not exact in binary


def test_open_zoo_errors_are_one_line(tmp_path):
    from paramsim.zoo import Zoo, open_zoo

    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for path, message in [
        ("nope", "does not exist"),
        ("file", "is a file"),
        ("empty", "not a zoo"),
    ]:
        with pytest.raises(ParamsimError, match=message) as info:
            open_zoo(tmp_path / path)
        assert "\n" not in str(info.value)
        with pytest.raises(ParamsimError, match=message):
            Zoo.open(tmp_path / path)


def test_variant_settings_merge_in_one_order():
    from paramsim.lps import FitConfig, variant_configs

    cfg, fit = variant_configs("lps-authors", FitConfig(epochs=7, loss="supcon"), epochs=None)
    assert cfg["flat_head"] is True and not cfg["func_branch"]
    assert fit.epochs == 7 and fit.loss == "ce"  # the variant's switch beats the base config
    _, fit = variant_configs("lps-authors", loss="multisim", seed=3)
    assert fit.loss == "multisim" and fit.seed == 3  # the caller's override beats the variant
    cfg, _ = variant_configs("lps", config_overrides={"emb_dim": 16})
    assert cfg == {"emb_dim": 16}
    with pytest.raises(ParamsimError, match="unknown variant"):
        variant_configs("lps-nosuch")
    # a variant's own default (the first default trained up to 30 epochs) yields to the caller
    assert variant_configs("lps-v1")[1].epochs == 30 != variant_configs("lps")[1].epochs
    assert variant_configs("lps-v1", FitConfig(epochs=3))[1].epochs == 3
    assert variant_configs("lps-v1", epochs=4)[1].epochs == 4
