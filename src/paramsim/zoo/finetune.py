"""Few-shot training on top of the stacked trainer: fresh probe models and stored sources.

Both jobs train many small models at once on a handful of examples each, with full-batch
Adam (`train_full_batch`), and score them on held-out examples (`stack_accuracy`).
`SourceBank` fine-tunes stored zoo models: it builds each chunk of (source, target) pairs
with `StackedModels.from_states`, so no caller rewires the stack's tensors.

Memory is bounded by a `MemoryBudget`: a chunk holds as many models as the budget allows
(parameters, gradients, Adam moments and masks, plus activations), and evaluation walks the
examples in slices sized to what is left. Models of one chunk share one target's examples,
which the stacked forward reads through a stride-0 view: an MLP chunk never copies them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from paramsim.data import Task
from paramsim.weights.arch import ArchSpec
from paramsim.zoo.trainer import ModelPlan, StackedModels, StackedOptimizer, padded_arch


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
    """Full-batch Adam on per-model examples x (M, B, ...), labels y (M, B).

    Every model here shares one learning rate, so the update runs as torch's fused Adam over
    the stacked tensors: elementwise, hence each model's own Adam, in one pass over memory
    (about ten times faster than the trainer's per-model-rate optimiser, which dominated the
    time of fine-tuning a zoo). With `head_only` only the output layer is updated.
    """
    rates = {p.lr for p in models.plans}
    kinds = {(p.optimizer, p.weight_decay) for p in models.plans}
    last = [k for k in models.params if k.startswith(models.slots[-1].prefix + ".")]
    if len(rates) != 1 or kinds != {("adam", 0.0)}:
        _train_full_batch_per_model(models, x, y, steps, head_only, last)
        return
    trained = [models.params[k] for k in (last if head_only else models.params)]
    opt = torch.optim.Adam(trained, lr=rates.pop(), fused=True)
    active = torch.ones(len(models))
    for _ in range(steps):
        logits = models.forward(x, train=True, active=active)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        (loss / y.shape[1]).backward()
        opt.step()
        for p in models.params.values():
            p.grad = None
        if models.padded:
            with torch.no_grad():
                for key, p in models.params.items():
                    p.mul_(models.masks[key])


def _train_full_batch_per_model(models, x, y, steps, head_only, last) -> None:
    """The same loop with the trainer's optimiser (a learning rate per model)."""
    opt = StackedOptimizer(models)
    active = torch.ones(len(models))
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


@dataclass(frozen=True)
class EvalSet:
    """Examples `x[rows]` with labels `y`; `x` is a whole split, gathered slice by slice."""

    x: torch.Tensor
    rows: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor) -> EvalSet:
        return cls(x, torch.arange(len(y)), y)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes one stacked run may hold; chunk and slice sizes follow from it."""

    bytes: int = 512 * 2**20

    def models(self, arch: ArchSpec, batch: int, cap: int) -> int:
        """How many models of `arch` to train at once on `batch` examples each."""
        per_model = 4 * (8 * param_numel(arch) + 4 * batch * activation_numel(arch))
        return max(1, min(cap, self.bytes // per_model))

    def examples(self, arch: ArchSpec, models: int) -> int:
        """How many examples per model to push through `models` models at once."""
        left = self.bytes - 4 * 2 * param_numel(arch) * models
        return max(1, left // (4 * 2 * activation_numel(arch) * models))


@functools.lru_cache(maxsize=64)
def param_numel(arch: ArchSpec) -> int:
    return sum(p.numel() for p in arch.build().parameters())


@functools.lru_cache(maxsize=64)
def activation_numel(arch: ArchSpec) -> int:
    """Numbers one example makes flow through the network: its input and every layer output."""
    h = torch.zeros(1, *arch.input_shape)
    total = h.numel()
    with torch.no_grad():
        for mod in arch.build().eval():
            h = mod(h)
            total += h.numel()
    return total


def _shared(x: torch.Tensor, m: int) -> torch.Tensor:
    """One set of examples seen by m models, as a stride-0 view (no copy)."""
    return x.unsqueeze(0).expand(m, *x.shape)


@torch.no_grad()
def stack_accuracy(
    models: StackedModels,
    evals: Sequence[EvalSet],
    budget: MemoryBudget | None = None,
) -> np.ndarray:
    """Accuracy of model i on evals[i]; models that share an EvalSet object share its slices."""
    budget = budget or MemoryBudget()
    m = len(models)
    step = budget.examples(models.arch, m)
    same = all(e is evals[0] for e in evals)
    longest = max(len(e) for e in evals)
    correct = torch.zeros(m, dtype=torch.float64)
    for s in range(0, longest, step):
        if same:
            e = evals[0]
            r = e.rows[s : s + step]
            x = _shared(e.x[r], m)
            y = e.y[s : s + step].unsqueeze(0).expand(m, -1)
        else:
            size = min(step, longest - s)
            x = torch.zeros(m, size, *evals[0].x.shape[1:])
            y = torch.full((m, size), -1, dtype=torch.long)
            for i, e in enumerate(evals):
                r = e.rows[s : s + size]
                x[i, : len(r)] = e.x[r]
                y[i, : len(r)] = e.y[s : s + size]
        logits = models.forward(x.to(models.device), train=False)
        correct += ((logits.argmax(-1).cpu() == y) & (y >= 0)).sum(1).double()
    sizes = torch.tensor([len(e) for e in evals], dtype=torch.float64)
    return (correct / sizes).numpy()


def test_accuracy(
    models: StackedModels, tests: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> np.ndarray:
    """Accuracy of model i on tests[i] (x, y); test sets may differ in length."""
    return stack_accuracy(models, [EvalSet.of(x, y) for x, y in tests])


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

    def widest(self, ids: Sequence[int]) -> ArchSpec:
        """The padded shape of a stack of `ids` (one family): what a chunk is sized by."""
        return padded_arch([self.records[m].arch for m in ids])

    def finetune(
        self,
        pairs: Sequence[tuple[int, int]],
        shots: Sequence[tuple[torch.Tensor, torch.Tensor]],
        evals: Sequence[Sequence[EvalSet]],
        lr: float,
        steps: int,
        head_only: bool = False,
        reset: bool = True,
        budget: MemoryBudget | None = None,
        chunk: int = 2048,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Accuracy on each of evals[j] after fine-tuning source m on shots[j], per pair (m, j):
        shape (len(pairs), len(evals[j])). A chunk holds pairs of one target draw j only, so its
        models read the same examples (no per-model copy) and its size follows the budget."""
        budget = budget or MemoryBudget()
        n_out = len(evals[pairs[0][1]]) if pairs else 0
        out = np.full((len(pairs), n_out), np.nan)
        groups: dict[tuple, list[int]] = {}
        for n, (m, j) in enumerate(pairs):  # one stacked run: one family, one draw
            groups.setdefault((family(self.records[m].arch), j), []).append(n)
        for (_, j), rows in groups.items():
            x, y = shots[j]
            size = budget.models(self.widest([pairs[n][0] for n in rows]), len(y), chunk)
            for start in range(0, len(rows), size):
                part = rows[start : start + size]
                models = self.stack([pairs[n][0] for n in part], lr, steps)
                if reset:
                    reset_head(models)
                train_full_batch(
                    models, _shared(x, len(part)), _shared(y, len(part)), steps, head_only
                )
                for c, e in enumerate(evals[j]):
                    out[part, c] = stack_accuracy(models, [e] * len(part), budget)
                del models
                if progress:
                    progress(len(part))
        return out
