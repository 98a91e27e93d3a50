"""A six-task zoo (two triangles of digit pairs that share classes) built once per session."""

from __future__ import annotations

import pytest
import torch

from paramsim.zoo import RECIPES, Zoo, build_zoo

torch.set_num_threads(1)

USE_TASKS = "0-1,0-2,1-2,3-4,3-5,4-5"


@pytest.fixture(scope="session")
def use_zoo(tmp_path_factory) -> Zoo:
    recipe = RECIPES["digits-pairs"].with_overrides(
        tasks=USE_TASKS, models_per_task=3, steps=(60, 80), shard_size=18
    )
    path = build_zoo(recipe, tmp_path_factory.mktemp("usezoo") / "zoo", progress=False)
    return Zoo.open(path)
