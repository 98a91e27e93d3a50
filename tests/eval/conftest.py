import pytest
from eval_helpers import synthetic_networks


@pytest.fixture(scope="session")
def synth():
    return synthetic_networks()
