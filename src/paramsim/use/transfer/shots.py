"""The K-shot instances of a transfer evaluation: which examples, which seeds, which fold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from paramsim.data import Dataset, Task
from paramsim.errors import ParamsimError


def task_rows(task: Task, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """`Task.rows` as numpy arrays: row i here is example i of `task.train_data`."""
    rows, side = task.rows(labels)
    return rows.numpy(), side.numpy()


def kshot_rows(task: Task, dataset: Dataset, k: int, seed: Sequence[int]) -> np.ndarray:
    """Rows of the training split: K per side of `task`, drawn with numpy's generator `seed`."""
    rows, y = task_rows(task, dataset.y_train)
    rng = np.random.default_rng(list(seed))
    picked = []
    for side in (0, 1):
        idx = np.flatnonzero(y == side)
        if len(idx) < k:
            raise ParamsimError(f"task {task.name} has {len(idx)} examples of side {side} < {k}")
        picked += rng.choice(idx, k, replace=False).tolist()
    return rows[picked]


def kshot(task: Task, dataset: Dataset, k: int, seed: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """K training examples per side of `task`, drawn with numpy's generator seeded `seed`."""
    rows = torch.as_tensor(kshot_rows(task, dataset, k, seed))
    y = torch.as_tensor(task_rows(task, dataset.y_train[rows])[1]).long()
    return dataset.x_train[rows], y


def validation_rows(
    task: Task, dataset: Dataset, taken: np.ndarray, per_class: int, seed: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` training rows per side of `task` outside `taken` (the K shots), and
    their side labels: the held-out part the validation oracle picks its source on."""
    rows, y = task_rows(task, dataset.y_train)
    rng = np.random.default_rng(list(seed))
    free = ~np.isin(rows, taken)
    picked = []
    for side in (0, 1):
        idx = np.flatnonzero(free & (y == side))
        picked += rng.choice(idx, min(per_class, len(idx)), replace=False).tolist()
    picked = np.sort(np.asarray(picked, dtype=np.int64))
    return rows[picked], y[picked]


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
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # shots' train rows
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
