"""Architecture specs: a small frozen description that the registry stores as JSON and that
builds the documented `nn.Module` a user loads an exported state_dict into.

A spec is validated when it is made (from a recipe, a registry row, `--spec` or a file's
metadata), so a typo or a crafted claim cannot make `build()` allocate gigabytes, and
`param_shapes()` gives every state_dict shape without allocating anything, so stored
tensors can be checked against the claim before a module is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from paramsim.errors import ParamsimError

# Bounds on what a spec may describe. They are far above the zoos this project trains
# (widths of tens to hundreds, depth <= 5) and keep one spec's module below about 1 GB.
MAX_WIDTH = 65536  # units of a layer, channels of a convolution, outputs
MAX_DEPTH = 64  # affine layers (hidden layers + the output layer)
MAX_PARAMS = 250_000_000  # float32 parameters: 1 GB
MAX_INPUT_VALUES = 1 << 24  # C * H * W of one input (e.g. 3 x 2048 x 2048 fits)


@dataclass(frozen=True)
class ArchSpec:
    """An MLP (`hidden` = widths) or a plain CNN (`hidden` = conv channels).

    MLP:  Flatten, then Linear-ReLU per hidden width, then Linear to `n_outputs`.
    CNN:  per channel count Conv3x3(padding 1)[-BatchNorm]-ReLU[-MaxPool2 if listed in
          `pool_after`], then global average pooling, Flatten and Linear to `n_outputs`.
    Both are `nn.Sequential`, so state_dict keys are `"<index>.weight"`.
    """

    kind: str
    input_shape: tuple[int, int, int]
    hidden: tuple[int, ...]
    n_outputs: int = 2
    batchnorm: bool = False
    pool_after: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "cnn"):
            raise ParamsimError(f"unknown architecture kind {_show(self.kind)}; use mlp or cnn")
        object.__setattr__(self, "input_shape", _ints("input_shape", self.input_shape))
        object.__setattr__(self, "hidden", _ints("hidden", self.hidden))
        object.__setattr__(self, "pool_after", _ints("pool_after", self.pool_after))
        object.__setattr__(self, "n_outputs", _int("n_outputs", self.n_outputs))
        if not isinstance(self.batchnorm, bool):
            raise ParamsimError(
                f"architecture batchnorm must be true or false, got {_show(self.batchnorm)}"
            )
        if self.kind == "mlp" and (self.batchnorm or self.pool_after):
            raise ParamsimError("batchnorm and pool_after apply to CNNs only")
        self._check_bounds()

    def _check_bounds(self) -> None:
        """Refuse specs that are malformed or too large to build, naming the field."""
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ParamsimError(
                "architecture input_shape must be 3 positive sizes (C, H, W), "
                f"got {self.input_shape}"
            )
        if math.prod(self.input_shape) > MAX_INPUT_VALUES:
            raise ParamsimError(
                f"architecture input_shape {self.input_shape} has {math.prod(self.input_shape)} "
                f"values; the limit is {MAX_INPUT_VALUES}"
            )
        for name, value in [*(("hidden", h) for h in self.hidden), ("n_outputs", self.n_outputs)]:
            if not 1 <= value <= MAX_WIDTH:
                raise ParamsimError(f"architecture {name} width {value} is outside 1..{MAX_WIDTH}")
        if len(self.hidden) + 1 > MAX_DEPTH:
            raise ParamsimError(
                f"architecture has {len(self.hidden) + 1} layers; the limit is {MAX_DEPTH}"
            )
        if self.pool_after:
            bad = [p for p in self.pool_after if not 0 <= p < len(self.hidden)]
            if bad or len(set(self.pool_after)) != len(self.pool_after):
                raise ParamsimError(
                    f"architecture pool_after {self.pool_after} must name distinct conv layers "
                    f"0..{len(self.hidden) - 1}"
                )
            side = min(self.input_shape[1:]) >> len(self.pool_after)
            if side < 1:
                raise ParamsimError(
                    f"architecture pools {len(self.pool_after)} times, which shrinks input "
                    f"{self.input_shape[1]}x{self.input_shape[2]} to nothing"
                )
        if self.n_params > MAX_PARAMS:
            raise ParamsimError(
                f"architecture {self.label} has {self.n_params} parameters; the limit is "
                f"{MAX_PARAMS}"
            )

    @property
    def in_features(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    @property
    def widths(self) -> tuple[int, ...]:
        """Units of every layer from the input to the outputs (channels for CNN convs)."""
        first = self.in_features if self.kind == "mlp" else self.input_shape[0]
        return (first, *self.hidden, self.n_outputs)

    @property
    def label(self) -> str:
        body = "-".join(str(w) for w in self.widths)
        return f"{self.kind} {body}" + (" bn" if self.batchnorm else "")

    @property
    def n_params(self) -> int:
        """Number of values in the state_dict (parameters and batch-norm buffers)."""
        return sum(math.prod(shape) for shape in self.param_shapes().values())

    def _modules(self) -> list[tuple[str, tuple[int, ...]]]:
        """The module list of `build()` as (type, sizes): one source for `build` and
        `param_shapes`, so the two cannot drift apart."""
        mods: list[tuple[str, tuple[int, ...]]] = []
        if self.kind == "mlp":
            mods.append(("flatten", ()))
            prev = self.in_features
            for h in self.hidden:
                mods += [("linear", (prev, h)), ("relu", ())]
                prev = h
            mods.append(("linear", (prev, self.n_outputs)))
            return mods
        prev = self.input_shape[0]
        for i, c in enumerate(self.hidden):
            mods.append(("conv", (prev, c)))
            if self.batchnorm:
                mods.append(("bn", (c,)))
            mods.append(("relu", ()))
            if i in self.pool_after:
                mods.append(("maxpool", ()))
            prev = c
        mods += [("gap", ()), ("flatten", ()), ("linear", (prev, self.n_outputs))]
        return mods

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every `build().state_dict()` key with its shape, computed without allocating.

        Batch-norm entries include `num_batches_tracked` (shape ()), which `load_state_dict`
        also accepts when absent.
        """
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (kind, sizes) in enumerate(self._modules()):
            if kind == "linear":
                n_in, n_out = sizes
                shapes[f"{i}.weight"], shapes[f"{i}.bias"] = (n_out, n_in), (n_out,)
            elif kind == "conv":
                n_in, n_out = sizes
                shapes[f"{i}.weight"], shapes[f"{i}.bias"] = (n_out, n_in, 3, 3), (n_out,)
            elif kind == "bn":
                for leaf in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"{i}.{leaf}"] = sizes
                shapes[f"{i}.num_batches_tracked"] = ()
        return shapes

    def build(self) -> nn.Sequential:
        """The documented module whose state_dict the zoo exports."""
        mods: list[nn.Module] = []
        for kind, sizes in self._modules():
            if kind == "linear":
                mods.append(nn.Linear(*sizes))
            elif kind == "conv":
                mods.append(nn.Conv2d(*sizes, 3, padding=1))
            elif kind == "bn":
                mods.append(nn.BatchNorm2d(*sizes))
            elif kind == "relu":
                mods.append(nn.ReLU())
            elif kind == "maxpool":
                mods.append(nn.MaxPool2d(2))
            elif kind == "gap":
                mods.append(nn.AdaptiveAvgPool2d(1))
            else:
                mods.append(nn.Flatten())
        return nn.Sequential(*mods)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> ArchSpec:
        """A spec from its JSON text or the decoded object; any malformed input is a
        ParamsimError naming the problem."""
        if isinstance(text, str):
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise ParamsimError(f"architecture spec is not valid JSON: {exc}") from exc
        else:
            data = text
        if not isinstance(data, dict):
            raise ParamsimError(
                f"architecture spec must be a JSON object, got {type(data).__name__}"
            )
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in data]
        if unknown or missing:
            raise ParamsimError(
                "not an architecture spec: "
                + (f"unknown fields {unknown}; " if unknown else "")
                + (f"missing {missing}; " if missing else "")
                + f"its fields are {fields}"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ParamsimError(f"not an architecture spec: {exc}") from exc


def _int(name: str, value: Any) -> int:
    """`value` as an int; bools, fractions and strings are refused rather than coerced
    (numpy integers and whole floats such as JSON's 16.0 are fine)."""
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer()
    )
    if isinstance(value, bool) or not whole:
        raise ParamsimError(f"architecture {name} must hold whole numbers, got {_show(value)}")
    return int(value)


def _ints(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ParamsimError(
            f"architecture {name} must be a list of whole numbers, got {_show(values)}"
        )
    if len(values) > MAX_DEPTH:
        raise ParamsimError(
            f"architecture {name} lists {len(values)} values; the limit is {MAX_DEPTH}"
        )
    return tuple(_int(name, v) for v in values)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
