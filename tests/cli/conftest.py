"""Fixtures for the command-line tests: a small saved LPS model and an index on the session's
tiny zoo."""

from __future__ import annotations

from pathlib import Path

import pytest

from paramsim.cli import main


@pytest.fixture(scope="session")
def lps_model(tiny_zoo, tmp_path_factory) -> Path:
    """A one-epoch LPS model, small in every dimension: loading it is what the tests need."""
    from paramsim.lps import LPS, FitConfig, LPSConfig
    from paramsim.zoo import Zoo

    zoo = Zoo.open(tiny_zoo)
    nets = zoo.networks()
    cfg = LPSConfig(input_shape=tuple(nets[0].input_shape), emb_dim=16, rank=8, n_probes=4)
    fc = FitConfig(epochs=1, min_batches=1, tasks_per_batch=3, models_per_task=2, val_fraction=0)
    model = LPS(cfg, fc).fit(nets, [r.task for r in zoo.records])
    return model.save(tmp_path_factory.mktemp("cli-lps") / "model")


@pytest.fixture(scope="session")
def index_dir(tiny_zoo, lps_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-index") / "idx"
    assert (
        main(["index", "build", str(tiny_zoo), "--model", str(lps_model), "--out", str(out)]) == 0
    )
    return out
