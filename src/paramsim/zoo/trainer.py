"""Train many small networks at once as stacked tensors.

All models of one shard share an architecture family (MLP or CNN of one depth); narrower
models are zero-padded to the widest and masked, which trains them exactly because padded
units get zero gradients. MLP layers run as batched matmuls; convolutions run as one grouped
convolution with a group per model. The loss is the sum over models of each model's mean
loss, and the optimiser (Adam or SGD with momentum) is written out element-wise with a
per-model learning rate, so every model follows the same trajectory it would alone
(`train_one` is that reference, and the tests compare the two).

Two opt-in speed settings, for GPUs: `precision="bf16"` runs the forward and backward under
bf16 autocast while the weights, gradients, optimiser state and batch-norm statistics stay
float32 (mixed precision with float32 master weights, Micikevicius et al. 2018); results then
differ from `train_one` by bf16 rounding. `channels_last` stores conv inputs and weights in
NHWC order, which tensor-core convolutions prefer; it changes the arithmetic only in the
order of float additions. The defaults (float32, contiguous) leave every operation as it was.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from paramsim.data import Dataset, Task
from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec

BN_MOMENTUM = 0.1
BN_EPS = 1e-5
PRECISIONS = ("float32", "bf16")


def check_precision(precision: str) -> str:
    """The name, if it is one of PRECISIONS; a one-line error otherwise."""
    if precision not in PRECISIONS:
        raise ParamsimError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast on the stack's device for "bf16"; nothing at all for "float32"."""
    if check_precision(precision) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class ModelPlan:
    """Everything that determines one trained model."""

    model_id: int
    task_id: int
    task: Task
    arch: ArchSpec
    seed: int
    lr: float
    init_scale: float
    data_fraction: float
    steps: int
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Share of the task's training examples held out for model selection, and the seed
    # that picks them (one per task and zoo, so all models of a task hold out the same rows).
    val_fraction: float = 0.0
    val_seed: int = 0

    def settings(self) -> dict:
        keys = [
            "seed",
            "lr",
            "init_scale",
            "data_fraction",
            "steps",
            "batch_size",
            "optimizer",
            "momentum",
            "weight_decay",
            "val_fraction",
            "val_seed",
        ]
        return {k: getattr(self, k) for k in keys}


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Slot:
    """One parametrised module of ArchSpec.build(): its state_dict prefix and role."""

    kind: str  # "linear" | "conv" | "bn"
    prefix: str


def layout(arch: ArchSpec) -> list[Slot]:
    slots = []
    for name, mod in arch.build().named_children():
        if isinstance(mod, nn.Linear):
            slots.append(Slot("linear", name))
        elif isinstance(mod, nn.Conv2d):
            slots.append(Slot("conv", name))
        elif isinstance(mod, nn.BatchNorm2d):
            slots.append(Slot("bn", name))
    return slots


def _template(arch: ArchSpec) -> dict[str, torch.Tensor]:
    """Default state of the architecture (shapes, batch-norm defaults); built once."""
    return _cached_template(arch, torch.get_default_dtype())


@functools.lru_cache(maxsize=64)
def _cached_template(arch: ArchSpec, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in arch.build().state_dict().items()}


def init_state(plan: ModelPlan) -> dict[str, torch.Tensor]:
    """Seeded initial weights: uniform(+-init_scale/sqrt(fan_in)), zero biases."""
    gen = torch.Generator().manual_seed(plan.seed)
    state = {}
    for key, value in _template(plan.arch).items():
        if key.endswith("weight") and value.dim() > 1:
            fan_in = value[0].numel()
            bound = plan.init_scale / fan_in**0.5
            state[key] = (torch.rand(value.shape, generator=gen) * 2 - 1) * bound
        else:
            state[key] = value.clone()  # batch-norm keeps its defaults; biases start at zero
            if key.endswith("bias"):
                state[key].zero_()
    return state


def holdout(n_available: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows 0..n-1 of a task's training examples split into (training pool, validation).

    Models are selected (retrained or kept) on the validation rows, never on the test split,
    and never train on them. With `fraction` 0 the pool is every row and validation is empty.
    """
    if fraction <= 0:
        return torch.arange(n_available), torch.arange(0)
    perm = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))
    n_val = min(n_available - 1, max(1, int(round(fraction * n_available))))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def batch_indices(plan: ModelPlan, n_available: int) -> torch.Tensor:
    """The model's own training subset and minibatch draws: (steps, batch) row indices.

    The subset is `data_fraction` of the training pool (the rows not held out for
    validation); with no validation rows this is the same draw as before they existed.
    """
    pool, _ = holdout(n_available, plan.val_fraction, plan.val_seed)
    gen = torch.Generator().manual_seed(plan.seed + 1)
    n_sub = max(plan.batch_size, int(round(plan.data_fraction * len(pool))))
    n_sub = min(n_sub, len(pool))
    subset = pool[torch.randperm(len(pool), generator=gen)[:n_sub]]
    draws = torch.randint(0, n_sub, (plan.steps, plan.batch_size), generator=gen)
    return subset[draws]


# ----------------------------------------------------------------------------- stacked model


def padded_arch(archs: Sequence[ArchSpec]) -> ArchSpec:
    """The widest member of an architecture family, used as the shared padded shape."""
    first = archs[0]
    for a in archs:
        if (a.kind, len(a.hidden), a.input_shape, a.batchnorm, a.pool_after, a.n_outputs) != (
            first.kind,
            len(first.hidden),
            first.input_shape,
            first.batchnorm,
            first.pool_after,
            first.n_outputs,
        ):
            raise ValueError("models trained together must share kind, depth and input")
    widest = tuple(max(a.hidden[i] for a in archs) for i in range(len(first.hidden)))
    return replace(first, hidden=widest)


def _pad(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    out = torch.zeros(shape, dtype=t.dtype)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


class StackedModels:
    """Parameters of M models stacked on dim 0, in ArchSpec.build() state_dict order."""

    def __init__(
        self,
        plans: Sequence[ModelPlan],
        device: torch.device | str = "cpu",
        states: Sequence[dict[str, torch.Tensor]] | None = None,
        channels_last: bool = False,
    ):
        self.plans = list(plans)
        self.channels_last = channels_last
        self.arch = padded_arch([p.arch for p in plans])
        self.slots = layout(self.arch)
        self.device = torch.device(device)
        template = _template(self.arch)
        if states is None:
            states = [init_state(p) for p in plans]
        elif len(states) != len(self.plans):
            raise ValueError(f"{len(states)} states for {len(self.plans)} plans")
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        for key, value in template.items():
            stacked = torch.stack([_pad(s[key], value.shape) for s in states]).to(self.device)
            if "running" in key or "num_batches" in key:
                self.buffers[key] = stacked
            else:
                self.params[key] = stacked.requires_grad_(True)
                ones = [_pad(torch.ones_like(s[key]), value.shape) for s in states]
                self.masks[key] = torch.stack(ones).to(self.device)
        self.padded = any(not bool(m.all()) for m in self.masks.values())

    @classmethod
    def from_states(
        cls,
        plans: Sequence[ModelPlan],
        states: Sequence[dict[str, torch.Tensor]],
        device: torch.device | str = "cpu",
    ) -> StackedModels:
        """A stack that starts from given weights (each model's own state_dict, e.g. a stored
        model to fine-tune) instead of the plans' seeded initialisation."""
        return cls(plans, device, states=states)

    def __len__(self) -> int:
        return len(self.plans)

    def forward(
        self,
        x: torch.Tensor,
        train: bool,
        active: torch.Tensor | None = None,
        features: bool = False,
    ):
        """Logits (M, B, n_outputs) for per-model inputs x (M, B, C, H, W); with `features`,
        the input of the output layer instead (M, B, width): what transferability estimators
        read."""
        m, b = x.shape[:2]
        if self.arch.kind == "mlp":
            h = x.reshape(m, b, -1)
            linears = [s for s in self.slots if s.kind == "linear"]
            for i, slot in enumerate(linears):
                if features and i == len(linears) - 1:
                    return h
                w, bias = self.params[f"{slot.prefix}.weight"], self.params[f"{slot.prefix}.bias"]
                h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
                if i < len(linears) - 1:
                    h = torch.relu(h)
            return h
        # CNN: channels of all models side by side, one group per model.
        h = x.transpose(0, 1).reshape(b, m * x.shape[2], *x.shape[3:])
        fmt = torch.channels_last if self.channels_last else None
        if fmt is not None:
            h = h.contiguous(memory_format=fmt)
        conv_index = 0
        for slot in self.slots:
            p = slot.prefix
            if slot.kind == "conv":
                w = self.params[f"{p}.weight"]
                w = w.reshape(-1, *w.shape[2:])
                if fmt is not None:
                    w = w.contiguous(memory_format=fmt)
                h = F.conv2d(
                    h,
                    w,
                    self.params[f"{p}.bias"].reshape(-1),
                    padding=1,
                    groups=m,
                )
                if not self.arch.batchnorm:
                    h = self._after_conv(h, conv_index)
                    conv_index += 1
            elif slot.kind == "bn":
                h = self._batchnorm(h, p, train, active)
                h = self._after_conv(h, conv_index)
                conv_index += 1
            else:  # final linear after global average pooling
                h = h.mean(dim=(2, 3)).reshape(b, m, -1).transpose(0, 1)
                if features:
                    return h
                w, bias = self.params[f"{p}.weight"], self.params[f"{p}.bias"]
                h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
        return h

    def _after_conv(self, h: torch.Tensor, conv_index: int) -> torch.Tensor:
        h = torch.relu(h)
        if conv_index in self.arch.pool_after:
            h = F.max_pool2d(h, 2)
        return h

    def _batchnorm(self, h, prefix: str, train: bool, active: torch.Tensor | None):
        mean_key, var_key = f"{prefix}.running_mean", f"{prefix}.running_var"
        weight = self.params[f"{prefix}.weight"].reshape(-1)
        bias = self.params[f"{prefix}.bias"].reshape(-1)
        if not train:
            rm, rv = self.buffers[mean_key].reshape(-1), self.buffers[var_key].reshape(-1)
            return F.batch_norm(h, rm, rv, weight, bias, False, 0.0, BN_EPS)
        out = F.batch_norm(h, None, None, weight, bias, True, 0.0, BN_EPS)
        with torch.no_grad():
            h = h.to(self.buffers[mean_key].dtype)  # bf16 activations: float32 statistics
            n = h.numel() // h.shape[1]
            mean = h.mean(dim=(0, 2, 3)).reshape(len(self), -1)
            var = h.var(dim=(0, 2, 3), unbiased=True).reshape(len(self), -1) if n > 1 else None
            mom = BN_MOMENTUM * (active if active is not None else torch.ones(len(self)))
            mom = mom.to(h.dtype).unsqueeze(1)
            self.buffers[mean_key].mul_(1 - mom).add_(mom * mean)
            if var is not None:
                self.buffers[var_key].mul_(1 - mom).add_(mom * var)
            tracked = self.buffers[f"{prefix}.num_batches_tracked"]
            tracked.add_((active if active is not None else torch.ones(len(self))).long())
        return out

    def state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """Model `index` cropped back to its own widths, in the documented module's keys."""
        own = _template(self.plans[index].arch)
        out = {}
        for key, value in own.items():
            src = self.params.get(key, self.buffers.get(key))
            crop = src[index].detach()[tuple(slice(0, s) for s in value.shape)]
            out[key] = crop.to("cpu").clone().contiguous()
        return out


# ----------------------------------------------------------------------------- optimiser


class StackedOptimizer:
    """Adam or SGD(momentum) over stacked tensors with a per-model learning rate.

    Written out so the arithmetic matches torch.optim's single-model update exactly.
    """

    def __init__(self, models: StackedModels):
        self.models = models
        plans = models.plans
        kinds = {p.optimizer for p in plans}
        if len(kinds) != 1:
            raise ValueError("one shard must use one optimiser")
        self.kind = kinds.pop()
        self.lr = torch.tensor([p.lr for p in plans], device=models.device)
        self.momentum = plans[0].momentum
        self.weight_decay = plans[0].weight_decay
        self.state = {
            k: [torch.zeros_like(v), torch.zeros_like(v)] for k, v in models.params.items()
        }
        self.t = 0

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        self.t += 1
        lr = self.lr * active
        for key, p in self.models.params.items():
            g = p.grad
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            shape = (-1,) + (1,) * (p.dim() - 1)
            step_lr = lr.view(shape)
            m, v = self.state[key]
            if self.kind == "adam":
                b1, b2, eps = 0.9, 0.999, 1e-8
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
                # in place, one buffer: update = m / (sqrt(v) / sqrt(bc2) + eps)
                update = torch.sqrt(v)
                update.div_(bc2**0.5).add_(eps)
                torch.div(m, update, out=update)
                p.addcmul_(update, step_lr / bc1, value=-1)
            else:
                if self.t == 1:
                    m.copy_(g)
                else:
                    m.mul_(self.momentum).add_(g)
                p.sub_(step_lr * m)
            if self.models.padded:
                p.mul_(self.models.masks[key])
            p.grad = None


# ----------------------------------------------------------------------------- training


@dataclass
class TaskData:
    """The examples of every task in a shard, as one pool of rows for fast gathering.

    Pool row i is split row `train_index[i]` (`test_index` for the test pool): the images
    stay the data set's own tensors, never copied per task, so a shard of 40 group tasks of
    Fashion-MNIST holds 188 MB of images, not 3 GB. Labels are the pool's side labels.
    """

    x_train: torch.Tensor  # the data set's split, shared
    train_index: torch.Tensor  # pool row -> split row
    y_train: torch.Tensor  # pool row -> side label
    x_test: torch.Tensor
    test_index: torch.Tensor
    y_test: torch.Tensor
    train_slices: dict[int, tuple[int, int]]
    test_slices: dict[int, tuple[int, int]]

    @classmethod
    def build(cls, dataset: Dataset, tasks: dict[int, Task]) -> TaskData:
        parts: dict[str, list] = {"itr": [], "ytr": [], "ite": [], "yte": []}
        train_slices, test_slices = {}, {}
        ntr = nte = 0
        for tid, task in sorted(tasks.items()):
            itr, ytr = task.rows(dataset.y_train)
            ite, yte = task.rows(dataset.y_test)
            parts["itr"].append(itr)
            parts["ytr"].append(ytr)
            parts["ite"].append(ite)
            parts["yte"].append(yte)
            train_slices[tid] = (ntr, ntr + len(ytr))
            test_slices[tid] = (nte, nte + len(yte))
            ntr += len(ytr)
            nte += len(yte)
        cat = torch.cat
        return cls(
            dataset.x_train,
            cat(parts["itr"]),
            cat(parts["ytr"]),
            dataset.x_test,
            cat(parts["ite"]),
            cat(parts["yte"]),
            train_slices,
            test_slices,
        )

    def inputs(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images of the split, pool row -> split row, pool labels) for "train" or "test"."""
        if split == "test":
            return self.x_test, self.test_index, self.y_test
        return self.x_train, self.train_index, self.y_train


def train_stacked(
    plans: Sequence[ModelPlan],
    data: TaskData,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
    precision: str = "float32",
    channels_last: bool = False,
) -> StackedModels:
    """Train the plans together; returns the trained stack (float32 weights in bf16 too)."""
    models = StackedModels(plans, device, channels_last=channels_last)
    amp = autocast_context(precision, models.device)
    if precision != "float32" and any(v.dtype != torch.float32 for v in models.params.values()):
        raise ParamsimError(
            f"precision {precision} needs float32 master weights, but torch's default dtype is "
            f"{torch.get_default_dtype()}; set it to float32"
        )
    opt = StackedOptimizer(models)
    steps = torch.tensor([p.steps for p in plans])
    n_steps = int(steps.max())
    batch = plans[0].batch_size
    if any(p.batch_size != batch for p in plans):
        raise ValueError("one shard must use one batch size")
    # (M, steps, batch) global row indices; models that stop early repeat their last draw.
    rows = torch.zeros(len(plans), n_steps, batch, dtype=torch.long)
    for i, p in enumerate(plans):
        start, stop = data.train_slices[p.task_id]
        own = batch_indices(p, stop - start) + start
        rows[i, : p.steps] = own
        rows[i, p.steps :] = own[-1]
    x_all, index, y_all = (t.to(models.device) for t in data.inputs("train"))
    steps = steps.to(models.device)
    for t in range(n_steps):
        active = (steps > t).to(x_all.dtype)
        idx = rows[:, t].to(models.device)
        with amp:
            logits = models.forward(x_all[index[idx]], train=True, active=active)
        if precision != "float32":
            logits = logits.float()  # the loss in float32; the default path is untouched
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y_all[idx].reshape(-1), reduction="sum"
        )
        (loss / batch).backward()
        opt.step(active)
        if on_step is not None:
            on_step(t)
    return models


def _eval_rows(plan: ModelPlan, data: TaskData, split: str) -> torch.Tensor:
    """Global row indices a model is scored on: its training pool, validation rows or test."""
    if split == "test":
        start, stop = data.test_slices[plan.task_id]
        return torch.arange(start, stop)
    start, stop = data.train_slices[plan.task_id]
    pool, val = holdout(stop - start, plan.val_fraction, plan.val_seed)
    return (pool if split == "train" else val) + start


@torch.no_grad()
def accuracies(models: StackedModels, data: TaskData, split: str) -> np.ndarray:
    """Per-model accuracy on its own task's "train" (pool), "val" or "test" examples.

    A model without validation rows gets NaN for "val".
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}")
    x_all, index, y_all = data.inputs("test" if split == "test" else "train")
    x_all, index = x_all.to(models.device), index.to(models.device)
    own = [_eval_rows(p, data, split) for p in models.plans]
    longest = max(len(r) for r in own)
    if longest == 0:
        return np.full(len(own), np.nan)
    rows = torch.zeros(len(own), longest, dtype=torch.long)
    valid = torch.zeros(len(own), longest, dtype=torch.bool)
    for i, r in enumerate(own):
        rows[i, : len(r)] = r
        valid[i, : len(r)] = True
    correct = torch.zeros(len(own))
    chunk = 512
    for s in range(0, longest, chunk):
        r = rows[:, s : s + chunk].to(models.device)
        logits = models.forward(x_all[index[r]], train=False)
        hit = (logits.argmax(-1).cpu() == y_all[rows[:, s : s + chunk]]) & valid[:, s : s + chunk]
        correct += hit.sum(1)
    return (correct / valid.sum(1)).numpy()  # 0/0 (no validation rows) is NaN


def train_one(plan: ModelPlan, dataset: Dataset) -> nn.Module:
    """Reference: one model, one nn.Module, one torch.optim optimiser, a plain loop."""
    module = plan.arch.build()
    module.load_state_dict(init_state(plan))
    module.train()
    x, y = plan.task.train_data(dataset)
    rows = batch_indices(plan, len(y))
    if plan.optimizer == "adam":
        opt = torch.optim.Adam(module.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    else:
        opt = torch.optim.SGD(
            module.parameters(), lr=plan.lr, momentum=plan.momentum, weight_decay=plan.weight_decay
        )
    for t in range(plan.steps):
        opt.zero_grad()
        loss = F.cross_entropy(module(x[rows[t]]), y[rows[t]])
        loss.backward()
        opt.step()
    return module.eval()
