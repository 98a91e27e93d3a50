"""The K-shot instances of a transfer evaluation: which examples, which seeds, which fold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from paramsim.data import Dataset, Task
from paramsim.errors import ParamsimError


def kshot(task: Task, dataset: Dataset, k: int, seed: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """K training examples per side of `task`, drawn with numpy's generator seeded `seed`."""
    x, y = task.train_data(dataset)
    rng = np.random.default_rng(list(seed))
    rows = []
    for side in (0, 1):
        idx = np.flatnonzero(y.numpy() == side)
        if len(idx) < k:
            raise ParamsimError(f"task {task.name} has {len(idx)} examples of side {side} < {k}")
        rows += rng.choice(idx, k, replace=False).tolist()
    rows_t = torch.as_tensor(rows)
    return x[rows_t], y[rows_t]


def as_tensors(x, y, input_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """A user's examples as float inputs of the zoo's shape and 0/1 labels, or a clear error."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y)).long()
    if xt.shape[1:] != torch.Size(input_shape):
        try:
            xt = xt.reshape(len(xt), *input_shape)
        except RuntimeError as exc:
            raise ParamsimError(
                f"examples of shape {tuple(xt.shape[1:])} do not fit the zoo's input "
                f"{tuple(input_shape)}"
            ) from exc
    if len(xt) != len(yt) or not set(yt.tolist()) <= {0, 1} or len(set(yt.tolist())) < 2:
        raise ParamsimError("y must hold a 0/1 label per example, with both labels present")
    return xt, yt


@dataclass
class Instance:
    """One target task with one draw of its K shots."""

    task_id: int
    shots: int
    repeat: int
    x: torch.Tensor
    y: torch.Tensor
    scratch: float = math.nan
    probes: list = field(default_factory=list)


def probe_seed(seed: int, k: int, repeat: int, task_id: int, probe: int = 0) -> int:
    rng = np.random.default_rng([seed, k, repeat, task_id, 1, probe])
    return int(rng.integers(0, 2**31 - 1))


def fold_of(task_names: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    """Task -> fold; a learned method is fitted without the target's fold."""
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(task_names))
    return {task_names[t]: i % folds for i, t in enumerate(order)}
