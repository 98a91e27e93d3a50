"""Architecture specs: a small frozen description that the registry stores as JSON and that
builds the documented `nn.Module` a user loads an exported state_dict into."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from torch import nn

from paramsim.errors import ParamsimError


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
            raise ParamsimError(f"unknown architecture kind {self.kind!r}; use mlp or cnn")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "pool_after", tuple(int(p) for p in self.pool_after))
        if self.kind == "mlp" and (self.batchnorm or self.pool_after):
            raise ParamsimError("batchnorm and pool_after apply to CNNs only")

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

    def build(self) -> nn.Sequential:
        """The documented module whose state_dict the zoo exports."""
        mods: list[nn.Module] = []
        if self.kind == "mlp":
            mods.append(nn.Flatten())
            prev = self.in_features
            for h in self.hidden:
                mods += [nn.Linear(prev, h), nn.ReLU()]
                prev = h
            mods.append(nn.Linear(prev, self.n_outputs))
        else:
            prev = self.input_shape[0]
            for i, c in enumerate(self.hidden):
                mods.append(nn.Conv2d(prev, c, 3, padding=1))
                if self.batchnorm:
                    mods.append(nn.BatchNorm2d(c))
                mods.append(nn.ReLU())
                if i in self.pool_after:
                    mods.append(nn.MaxPool2d(2))
                prev = c
            mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, self.n_outputs)]
        return nn.Sequential(*mods)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> ArchSpec:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ParamsimError(f"not an architecture spec: {exc}") from exc
