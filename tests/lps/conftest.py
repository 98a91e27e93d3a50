"""Fixtures shared by the LPS tests."""

from __future__ import annotations

import pytest

from paramsim.zoo import RECIPES, build_zoo


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    """Five digit-pair tasks x 2 MLPs, briefly trained: enough for a fit to read its zoo."""
    recipe = RECIPES["digits-pairs"].with_overrides(
        tasks="0-1,2-3,4-5,6-7,8-9", models_per_task=2, steps=(30, 40)
    )
    return build_zoo(recipe, tmp_path_factory.mktemp("lpszoo") / "zoo", progress=False)
