"""Few-shot training on top of the stacked trainer: fresh probe models and stored sources.

Both jobs train many small models at once on a handful of examples each, with full-batch
Adam (`train_full_batch`), and score them on their own test examples (`test_accuracy`).
`SourceBank` fine-tunes stored zoo models: it builds each chunk of (source, target) pairs
with `StackedModels.from_states`, so no caller rewires the stack's tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from paramsim.data import Task
from paramsim.weights.arch import ArchSpec
from paramsim.zoo.trainer import ModelPlan, StackedModels, StackedOptimizer


def family(arch: ArchSpec) -> tuple:
    """What models must share to be trained in one stack (widths may differ: they are padded)."""
    return (arch.kind, len(arch.hidden), arch.input_shape, arch.batchnorm, arch.pool_after)


def plan(
    i: int, task: Task, arch: ArchSpec, seed: int, lr: float, steps: int, init_scale: float = 1.0
) -> ModelPlan:
    """A full-batch plan: the batch size is unused (every step sees all of a model's shots)."""
    return ModelPlan(i, 0, task, arch, seed, lr, init_scale, 1.0, steps, batch_size=1)


def train_full_batch(
    models: StackedModels, x: torch.Tensor, y: torch.Tensor, steps: int, head_only: bool
) -> None:
    """Full-batch Adam on per-model examples x (M, B, ...), labels y (M, B)."""
    opt = StackedOptimizer(models)
    active = torch.ones(len(models))
    last = [k for k in models.params if k.startswith(models.slots[-1].prefix + ".")]
    for _ in range(steps):
        logits = models.forward(x, train=True, active=active)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        (loss / y.shape[1]).backward()
        if head_only:
            for key, p in models.params.items():
                if key not in last and p.grad is not None:
                    p.grad.zero_()
        opt.step(active)


@torch.no_grad()
def reset_head(models: StackedModels) -> None:
    """Zero the output layer: the new task's head starts from nothing, in either unit order."""
    prefix = models.slots[-1].prefix + "."
    for key, p in models.params.items():
        if key.startswith(prefix):
            p.zero_()


@torch.no_grad()
def test_accuracy(
    models: StackedModels, tests: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> np.ndarray:
    """Accuracy of model i on tests[i] (x, y); test sets may differ in length."""
    longest = max(len(y) for _, y in tests)
    shape = tests[0][0].shape[1:]
    x = torch.zeros(len(tests), longest, *shape)
    y = torch.full((len(tests), longest), -1, dtype=torch.long)
    for i, (xt, yt) in enumerate(tests):
        x[i, : len(yt)] = xt
        y[i, : len(yt)] = yt
    logits = models.forward(x, train=False)
    hit = (logits.argmax(-1) == y) & (y >= 0)
    return (hit.sum(1).double() / (y >= 0).sum(1).double()).numpy()


def module_of(models: StackedModels, i: int) -> torch.nn.Module:
    """Model i of a stack as its documented nn.Module, in eval mode."""
    module = models.plans[i].arch.build()
    module.load_state_dict(models.state_dict(i))
    return module.eval()


def train_probes(
    arch: ArchSpec,
    shots: Sequence[tuple[Task, torch.Tensor, torch.Tensor]],
    seeds: Sequence[int],
    lr: float = 1e-2,
    steps: int = 100,
    init_scale: float = 0.2,
) -> StackedModels:
    """One fresh model of `arch` per (task, x, y), trained together (seeded init)."""
    plans = [
        plan(i, t, arch, int(s), lr, steps, init_scale)
        for i, ((t, _, _), s) in enumerate(zip(shots, seeds, strict=True))
    ]
    models = StackedModels(plans)
    x = torch.stack([s[1] for s in shots])
    y = torch.stack([s[2] for s in shots])
    train_full_batch(models, x, y, steps, head_only=False)
    return models


def finetune_one(
    arch: ArchSpec,
    task: Task,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 40,
    lr: float = 3e-3,
    head_only: bool = False,
    reset: bool = True,
) -> torch.nn.Module:
    """One stored model (its state_dict) fine-tuned on x, y, as its nn.Module."""
    models = StackedModels.from_states([plan(0, task, arch, 0, lr, steps)], [state])
    if reset:
        reset_head(models)
    train_full_batch(models, x[None], y[None], steps, head_only)
    return module_of(models, 0)


class SourceBank:
    """The zoo's models, ready to be fine-tuned many at a time."""

    def __init__(self, zoo) -> None:
        self.zoo = zoo
        self.records = {r.id: r for r in zoo.records}
        self._states: dict[int, dict[str, torch.Tensor]] = {}

    def state(self, model_id: int) -> dict[str, torch.Tensor]:
        """The stored weights of a source, read once."""
        if model_id not in self._states:
            self._states[model_id] = self.zoo.state_dict(model_id)
        return self._states[model_id]

    def stack(self, ids: Sequence[int], lr: float, steps: int) -> StackedModels:
        """The sources `ids` (one family) stacked from their stored weights."""
        plans = [
            plan(i, self.records[m].task, self.records[m].arch, 0, lr, steps)
            for i, m in enumerate(ids)
        ]
        for m in sorted(set(ids), key=lambda m: (self.records[m].shard, m)):
            self.state(m)  # shard by shard, so each shard file is read once
        return StackedModels.from_states(plans, [self._states[m] for m in ids])

    def finetune(
        self,
        pairs: Sequence[tuple[int, int]],
        shots: Sequence[tuple[torch.Tensor, torch.Tensor]],
        tests: Sequence[tuple[torch.Tensor, torch.Tensor]],
        lr: float,
        steps: int,
        head_only: bool = False,
        reset: bool = True,
        chunk: int = 2048,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Test accuracy of fine-tuning source model m on shots[j], for each pair (m, j)."""
        out = np.full(len(pairs), np.nan)
        groups: dict[tuple, list[int]] = {}
        for n, (m, j) in enumerate(pairs):  # one stacked run needs one family and B
            groups.setdefault((family(self.records[m].arch), len(shots[j][1])), []).append(n)
        for rows in groups.values():
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                models = self.stack([pairs[n][0] for n in part], lr, steps)
                if reset:
                    reset_head(models)
                x = torch.stack([shots[pairs[n][1]][0] for n in part])
                y = torch.stack([shots[pairs[n][1]][1] for n in part])
                train_full_batch(models, x, y, steps, head_only)
                out[part] = test_accuracy(models, [tests[pairs[n][1]] for n in part])
                if progress:
                    progress(len(part))
        return out
