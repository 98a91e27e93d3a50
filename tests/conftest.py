"""Shared fixtures: tiny zoos built once per test session."""

from __future__ import annotations

import pytest
import torch

from paramsim.zoo import RECIPES, build_zoo

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """3 digit-pair tasks x 3 MLPs, short training: enough structure for fast tests."""
    recipe = RECIPES["digits-pairs"].with_overrides(
        tasks="0-1,0-2,3-4", models_per_task=3, steps=(60, 80), shard_size=4
    )
    return build_zoo(recipe, tmp_path_factory.mktemp("zoo") / "tiny", progress=False)


# Property tests draw the same examples on every run, so CI's verdict does not depend on the
# luck of a draw (a random draw once found a numerically degenerate CKA case, 2-unit layers).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("paramsim", derandomize=True)
_hypothesis_settings.load_profile("paramsim")
