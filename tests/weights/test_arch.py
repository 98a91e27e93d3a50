"""ArchSpec: shapes known without building, and bounds that stop a claim from allocating."""

from __future__ import annotations

import json

import pytest

from paramsim.errors import ParamsimError
from paramsim.weights.arch import MAX_PARAMS, MAX_WIDTH, ArchSpec

SPECS = [
    ArchSpec("mlp", (1, 8, 8), (16, 12)),
    ArchSpec("mlp", (1, 1, 5), (), n_outputs=3),
    ArchSpec("cnn", (3, 8, 8), (4, 6, 5), batchnorm=True, pool_after=(0, 1)),
    ArchSpec("cnn", (1, 4, 4), (3,)),
]


@pytest.mark.parametrize("spec", SPECS, ids=[s.label for s in SPECS])
def test_param_shapes_match_the_built_module(spec: ArchSpec) -> None:
    built = {k: tuple(v.shape) for k, v in spec.build().state_dict().items()}
    assert spec.param_shapes() == built
    assert list(spec.param_shapes()) == list(built)  # same order as state_dict()
    assert spec.n_params == sum(v.numel() for v in spec.build().state_dict().values())


BASE = {"kind": "mlp", "input_shape": [1, 8, 8], "hidden": [16]}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"hidden": [0]}, "outside 1.."),
        ({"hidden": [MAX_WIDTH + 1]}, "outside 1.."),
        ({"hidden": [-4]}, "outside 1.."),
        ({"n_outputs": 0}, "n_outputs"),
        ({"hidden": [2] * 64}, "limit is 64"),
        ({"hidden": [2] * 100_000}, "limit is 64"),
        ({"hidden": [60000, 60000]}, str(MAX_PARAMS)),
        ({"hidden": [3.5]}, "whole numbers"),
        ({"hidden": ["8"]}, "whole numbers"),
        ({"hidden": [True]}, "whole numbers"),
        ({"hidden": 16}, "list"),
        ({"hidden": [float("nan")]}, "whole numbers"),
        ({"input_shape": [1, 8]}, "input_shape"),
        ({"input_shape": [0, 8, 8]}, "input_shape"),
        ({"input_shape": [1, 8192, 8192]}, "values"),
        ({"kind": "resnet"}, "unknown architecture kind"),
        ({"kind": "cnn", "batchnorm": "yes"}, "true or false"),
        ({"kind": "cnn", "pool_after": [1]}, "pool_after"),
        ({"kind": "cnn", "pool_after": [0, 0]}, "pool_after"),
        (
            {"kind": "cnn", "input_shape": [1, 2, 2], "hidden": [4, 4], "pool_after": [0, 1]},
            "nothing",
        ),
        ({"pool_after": [0]}, "CNNs only"),
        ({"depth": 3}, "not an architecture spec"),
    ],
)
def test_malformed_or_oversized_specs_are_refused(change: dict, words: str) -> None:
    data = {**BASE, **change}
    with pytest.raises(ParamsimError, match=words.replace(".", r"\.")) as err:
        ArchSpec.from_json(json.dumps(data))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"mlp"', "{not json", "1e999"])
def test_from_json_needs_an_object(text: str) -> None:
    with pytest.raises(ParamsimError, match="architecture spec"):
        ArchSpec.from_json(text)


def test_whole_floats_are_accepted() -> None:
    spec = ArchSpec.from_json({**BASE, "hidden": [16.0]})
    assert spec.hidden == (16,) and isinstance(spec.hidden[0], int)
