"""Fixtures of the scale tests (module-scoped: each module builds its reference once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.scale.helpers import small_recipe, untrained_lps

# Ray reads this once, when it is imported: with it, every Ray node, the GCS and the driver of
# these tests use 127.0.0.1 (otherwise the GCS advertises the machine's other address).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="module")
def lps_dir(tmp_path_factory) -> Path:
    return untrained_lps(tmp_path_factory.mktemp("lps") / "lps")


@pytest.fixture(scope="module")
def local_zoo(tmp_path_factory) -> Path:
    """The reference: small_recipe built in this process."""
    from paramsim.zoo import build_zoo

    return build_zoo(small_recipe(), tmp_path_factory.mktemp("local") / "zoo", progress=False)
