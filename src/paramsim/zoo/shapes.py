"""Expected state_dict shapes of an ArchSpec, computed without building any module.

A registry row's `arch` JSON is only a claim: checking it against the tensors a shard really
holds (and counting its parameters against a bound) must not allocate the module first.

Local to the zoo until `ArchSpec.param_shapes()` lands in `paramsim.weights.arch`; the two
must give the same answer as `arch.build().state_dict()` (tests/zoo/test_store_damage.py).
"""

from __future__ import annotations

import math

from paramsim.weights.arch import ArchSpec


def param_shapes(arch: ArchSpec) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every entry of `arch.build().state_dict()`, in the same order."""
    shapes: dict[str, tuple[int, ...]] = {}
    if arch.kind == "mlp":
        index, prev = 1, arch.in_features  # index 0 is the Flatten
        for width in (*arch.hidden, arch.n_outputs):
            shapes[f"{index}.weight"] = (width, prev)
            shapes[f"{index}.bias"] = (width,)
            index, prev = index + 2, width  # Linear, ReLU
        return shapes
    index, prev = 0, arch.input_shape[0]
    for i, channels in enumerate(arch.hidden):
        shapes[f"{index}.weight"] = (channels, prev, 3, 3)
        shapes[f"{index}.bias"] = (channels,)
        index += 1
        if arch.batchnorm:
            for key in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{index}.{key}"] = (channels,)
            shapes[f"{index}.num_batches_tracked"] = ()
            index += 1
        index += 1 + (i in arch.pool_after)  # ReLU, then MaxPool2d if listed
        prev = channels
    index += 2  # AdaptiveAvgPool2d, Flatten
    shapes[f"{index}.weight"] = (arch.n_outputs, prev)
    shapes[f"{index}.bias"] = (arch.n_outputs,)
    return shapes


def param_count(arch: ArchSpec) -> int:
    """Number of values in the model's state_dict (parameters and buffers)."""
    return sum(math.prod(s) for s in param_shapes(arch).values())
