"""Source-model selection for transfer learning, and its evaluation on a zoo.

The question a user asks: "I have a few labelled examples of a new binary task; which stored
model should I fine-tune?" The answer here needs no forward pass of the stored models: train
a small *probe* model on the few examples, embed it with a similarity method, and rank the
stored models by similarity to it.

Evaluation (`evaluate_transfer`), for every target task of the zoo in turn, K shots per
class, `repeats` random draws of the shots:

- probe: a fresh model of the zoo's architecture trained on the 2K examples (this is also the
  *scratch* baseline: its test accuracy);
- chosen: a stored model of another task picked by similarity to the probe, fine-tuned on the
  same 2K examples. Two selection rules are scored from the same fine-tuned sources (a lookup,
  no extra training): "model" takes the single most similar model; "task" (the default) ranks
  the source tasks by the mean similarity of the probe to that task's models (or the mean of
  its `select_top` most similar ones), then takes the most similar model of the best task.
  The task rule is the default because the zoo's unit of relatedness is the task: one
  model's similarity carries its seed's noise, and the mean over a task's models estimates
  the task's relatedness with less variance before the choice is committed to;
- random: the expected accuracy of fine-tuning a source drawn uniformly from the other tasks
  (the exact mean over all of them, no sampling noise);
- oracle: the best source in hindsight (every source of another task is fine-tuned, as one
  stacked training run).

Fine-tuning keeps the whole source network, output layer included (a source's output unit k
keeps standing for its own task's side k; the target's label k trains unit k), and trains
every layer with full-batch Adam for a few dozen steps. `finetune="head"` retrains only the
last layer instead. Probe training and fine-tuning are seeded: the same settings give the
same numbers.

Learned methods must not have seen the target task: by default they are fitted once per
fold of tasks on the other folds (`folds`), and a saved model is only evaluated on the tasks
it did not train or early-stop on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from paramsim.data import Dataset, Task
from paramsim.errors import ParamsimError
from paramsim.features.base import Context
from paramsim.use._common import (
    Similarity,
    canonical_task,
    cross_similarity,
    figure_png,
    fit_excluding,
    pyplot,
    settings_key,
    write_json,
)
from paramsim.weights.arch import ArchSpec
from paramsim.zoo.trainer import ModelPlan, StackedModels, StackedOptimizer

ProgressFn = Callable[[str], None]
SELECT_RULES = ("task", "model")


def task_scores(
    similarity: np.ndarray, model_tasks: np.ndarray, candidates: np.ndarray, top: int = 0
) -> dict[int, float]:
    """Per source task: mean similarity of its candidate models (of its `top` best if top > 0)."""
    out: dict[int, float] = {}
    for t in np.unique(model_tasks[candidates]):
        s = np.sort(similarity[candidates & (model_tasks == t)])[::-1]
        out[int(t)] = float(s[:top].mean() if top > 0 else s.mean())
    return out


def choose_source(
    similarity: np.ndarray,
    model_tasks: np.ndarray,
    candidates: np.ndarray | None = None,
    select: str = "model",
    top: int = 0,
) -> int:
    """Index of the source model to fine-tune among `candidates` (a boolean mask).

    "model": the most similar candidate. "task": the candidate task with the highest mean
    similarity (over its `top` most similar models, or all if top is 0), then its most similar
    model. Ties go to the lowest index.
    """
    if select not in SELECT_RULES:
        raise ParamsimError(f"select must be 'model' or 'task', not {select!r}")
    similarity = np.asarray(similarity, dtype=float)
    model_tasks = np.asarray(model_tasks)
    ok = np.isfinite(similarity)
    if candidates is not None:
        ok &= np.asarray(candidates, dtype=bool)
    if not ok.any():
        raise ParamsimError("no candidate source with a finite similarity")
    if select == "task":
        scores = task_scores(similarity, model_tasks, ok, top)
        best_task = max(scores, key=lambda t: (scores[t], -t))
        ok &= model_tasks == best_task
    cand = np.flatnonzero(ok)
    return int(cand[np.argmax(similarity[cand])])


@dataclass(frozen=True)
class TransferConfig:
    """Every setting that determines a transfer evaluation's numbers."""

    shots: tuple[int, ...] = (1, 5)
    repeats: int = 2  # random draws of the K-shot examples per target task
    probe_steps: int = 100
    probe_lr: float = 1e-2
    probe_init_scale: float = 0.2  # small: the probe's weights then mostly hold what it learned
    probes: int = 1  # probe models per draw (seeds differ); their similarities are averaged
    finetune_steps: int = 40
    finetune_lr: float = 3e-3
    finetune: str = "all"  # "all" layers or only the "head"
    head: str = "reset"  # "reset": zero the source's output layer first; "keep" it
    folds: int = 3  # task folds for fitting learned methods without the target task
    targets: tuple[str, ...] | None = None  # task names to evaluate (default: all)
    seed: int = 0
    chunk: int = 2048  # fine-tunes per stacked run (memory bound)
    select: str = "model"  # primary selection rule: "task" (mean over a task's models) or "model"
    select_top: int = 0  # task rule: mean of the task's m most similar models (0: all of them)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", tuple(int(k) for k in self.shots))
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
        if not self.shots or min(self.shots) < 1:
            raise ParamsimError(f"shots must be positive integers, got {self.shots}")
        if self.probes < 1:
            raise ParamsimError(f"probes must be at least 1, got {self.probes}")
        if self.repeats < 1:
            raise ParamsimError(f"repeats must be at least 1, got {self.repeats}")
        if self.finetune not in ("all", "head"):
            raise ParamsimError(f"finetune must be 'all' or 'head', not {self.finetune!r}")
        if self.head not in ("reset", "keep"):
            raise ParamsimError(f"head must be 'reset' or 'keep', not {self.head!r}")
        if self.folds < 2:
            raise ParamsimError(f"folds must be at least 2, got {self.folds}")
        if self.select not in SELECT_RULES:
            raise ParamsimError(f"select must be 'model' or 'task', not {self.select!r}")
        if self.select_top < 0:
            raise ParamsimError(f"select_top must be 0 (all) or positive, got {self.select_top}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- shots


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


# ----------------------------------------------------------------------------- stacked training


def _family(arch: ArchSpec) -> tuple:
    return (arch.kind, len(arch.hidden), arch.input_shape, arch.batchnorm, arch.pool_after)


def _plan(
    i: int, task: Task, arch: ArchSpec, seed: int, lr: float, steps: int, init_scale: float = 1.0
) -> ModelPlan:
    return ModelPlan(i, 0, task, arch, seed, lr, init_scale, 1.0, steps, batch_size=1)


def _train_full_batch(
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
def _test_accuracy(
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
        _plan(i, t, arch, int(s), lr, steps, init_scale)
        for i, ((t, _, _), s) in enumerate(zip(shots, seeds, strict=True))
    ]
    models = StackedModels(plans)
    x = torch.stack([s[1] for s in shots])
    y = torch.stack([s[2] for s in shots])
    _train_full_batch(models, x, y, steps, head_only=False)
    return models


class SourceBank:
    """The zoo's models stacked once per architecture family, ready to be fine-tuned."""

    def __init__(self, zoo) -> None:
        self.zoo = zoo
        groups: dict[tuple, list[int]] = {}
        for r in zoo.records:
            groups.setdefault(_family(r.arch), []).append(r.id)
        self.groups = groups
        self._stacks: dict[tuple, tuple[StackedModels, dict[str, torch.Tensor], dict]] = {}

    def _stack(self, family: tuple):
        if family not in self._stacks:
            ids = self.groups[family]
            plans = [
                _plan(i, self.zoo.records[m].task, self.zoo.records[m].arch, 0, 1e-3, 1)
                for i, m in enumerate(ids)
            ]
            full = StackedModels(plans)  # padded shape and masks of every source
            with torch.no_grad():
                for i, m in enumerate(ids):
                    sd = self.zoo.state_dict(m)
                    for key, value in sd.items():
                        dest = full.params.get(key, full.buffers.get(key))
                        dest[i][tuple(slice(0, s) for s in value.shape)] = value
            params = {k: v.detach().clone() for k, v in full.params.items()}
            buffers = {k: v.clone() for k, v in full.buffers.items()}
            self._stacks[family] = (full, params, {"buffers": buffers, "masks": full.masks})
        return self._stacks[family]

    def finetune(
        self,
        pairs: Sequence[tuple[int, int]],
        shots: Sequence[tuple[torch.Tensor, torch.Tensor]],
        tests: Sequence[tuple[torch.Tensor, torch.Tensor]],
        lr: float,
        steps: int,
        head_only: bool = False,
        reset_head: bool = True,
        chunk: int = 2048,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Test accuracy of fine-tuning source model m on shots[j], for each pair (m, j)."""
        out = np.full(len(pairs), np.nan)
        by_family: dict[tuple, list[int]] = {}
        fam_of = {m: f for f, ids in self.groups.items() for m in ids}
        for n, (m, j) in enumerate(pairs):  # one stacked run needs one architecture and B
            by_family.setdefault((fam_of[m], len(shots[j][1])), []).append(n)
        for (family, _), rows in by_family.items():
            full, params, extra = self._stack(family)
            pos = {m: i for i, m in enumerate(self.groups[family])}
            size = min(chunk, len(rows))
            template = StackedModels(
                [replace(full.plans[0], model_id=i, lr=lr) for i in range(size)]
            )
            template.arch = full.arch
            for start in range(0, len(rows), size):
                part = rows[start : start + size]
                fill = part + [part[-1]] * (size - len(part))  # pad the last chunk
                src = torch.as_tensor([pos[pairs[n][0]] for n in fill])
                with torch.no_grad():
                    for k, v in params.items():
                        template.params[k] = v[src].clone().requires_grad_(True)
                    for k, v in extra["buffers"].items():
                        template.buffers[k] = v[src].clone()
                    template.masks = {k: v[src] for k, v in extra["masks"].items()}
                template.padded = full.padded
                if reset_head:
                    _reset_head(template)
                x = torch.stack([shots[pairs[n][1]][0] for n in fill])
                y = torch.stack([shots[pairs[n][1]][1] for n in fill])
                _train_full_batch(template, x, y, steps, head_only)
                acc = _test_accuracy(template, [tests[pairs[n][1]] for n in fill])
                out[part] = acc[: len(part)]
                if progress:
                    progress(len(part))
        return out


@torch.no_grad()
def _reset_head(models: StackedModels) -> None:
    """Zero the output layer: the new task's head starts from nothing, in either unit order."""
    prefix = models.slots[-1].prefix + "."
    for key, p in models.params.items():
        if key.startswith(prefix):
            p.zero_()


def _module_of(models: StackedModels, i: int):
    module = models.plans[i].arch.build()
    module.load_state_dict(models.state_dict(i))
    return module.eval()


# ----------------------------------------------------------------------------- library use


def _as_tensors(x, y, input_shape) -> tuple[torch.Tensor, torch.Tensor]:
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


def _majority_arch(zoo) -> ArchSpec:
    counts: dict[ArchSpec, int] = {}
    for r in zoo.records:
        counts[r.arch] = counts.get(r.arch, 0) + 1
    return max(counts, key=counts.get)  # type: ignore[arg-type]


def train_probe(zoo, x, y, seed: int = 0, lr: float = 1e-2, steps: int = 100):
    """A model of the zoo's (most common) architecture trained on x, y: the query model."""
    arch = _majority_arch(zoo)
    xt, yt = _as_tensors(x, y, arch.input_shape)
    task = Task(((0,), (1,)))
    stack = train_probes(arch, [(task, xt, yt)], [seed], lr, steps)
    return _module_of(stack, 0)


def select_sources(
    zoo,
    method: str | Similarity,
    x,
    y,
    k: int = 5,
    seed: int = 0,
    exclude_tasks: Sequence[str] = (),
    select: str = "model",
    top: int = 0,
) -> list[dict[str, Any]]:
    """The k stored models to try first for a probe trained on the user's (x, y).

    `method`: a fixed method name or a `Similarity` (e.g. `load_similarity(model="lps/")`);
    a learned method must already be fitted. `select="model"` orders the models by their own
    similarity; `select="task"` orders tasks by the mean similarity of their models (of their
    `top` most similar ones if top > 0) and, within a task, models by similarity. Returns dicts
    with model id, task, similarity and task_similarity, best first.
    """
    from paramsim.use._common import load_similarity
    from paramsim.weights import from_module

    if k < 1:
        raise ParamsimError(f"k must be at least 1, got {k}")
    if select not in SELECT_RULES:
        raise ParamsimError(f"select must be 'model' or 'task', not {select!r}")
    sim = load_similarity(method=method) if isinstance(method, str) else method
    if sim.learned and sim.seen_tasks is None:
        raise ParamsimError(f"{sim.name} is learned and not fitted; pass a saved model instead")
    probe = from_module(train_probe(zoo, x, y, seed), input_shape=_majority_arch(zoo).input_shape)
    ids = [r.id for r in zoo.records if r.task.name not in set(exclude_tasks)]
    S = cross_similarity(sim.method, [probe], zoo.networks(ids), Context(seed=seed))[0]
    tasks = np.asarray([zoo.records[i].task_id for i in ids])
    per_task = task_scores(S, tasks, np.isfinite(S), top)
    if select == "task":
        order = sorted(range(len(ids)), key=lambda i: (-per_task[int(tasks[i])], tasks[i], -S[i]))
    else:
        order = list(np.argsort(-S, kind="stable"))
    return [
        {
            "model_id": int(ids[i]),
            "task": zoo.records[ids[i]].task.name,
            "similarity": float(S[i]),
            "task_similarity": per_task[int(tasks[i])],
            "test_acc": float(zoo.records[ids[i]].test_acc),
        }
        for i in order[:k]
    ]


def fine_tune(
    zoo,
    model_id: int,
    x,
    y,
    steps: int = 40,
    lr: float = 3e-3,
    head_only: bool = False,
    reset_head: bool = True,
):
    """The stored model `model_id` fine-tuned on x, y (full-batch Adam), as an nn.Module."""
    rec = zoo.record(model_id)
    xt, yt = _as_tensors(x, y, rec.arch.input_shape)
    models = StackedModels([_plan(0, rec.task, rec.arch, 0, lr, steps)])
    with torch.no_grad():
        for key, value in zoo.state_dict(model_id).items():
            dest = models.params.get(key, models.buffers.get(key))
            dest[0].copy_(value)
    if reset_head:
        _reset_head(models)
    _train_full_batch(models, xt[None], yt[None], steps, head_only)
    return _module_of(models, 0)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class _Instance:
    """One target task with one draw of its K shots."""

    task_id: int
    shots: int
    repeat: int
    x: torch.Tensor
    y: torch.Tensor
    scratch: float = math.nan
    probes: list = field(default_factory=list)
    finetune: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _probe_seed(seed: int, k: int, repeat: int, task_id: int, probe: int = 0) -> int:
    rng = np.random.default_rng([seed, k, repeat, task_id, 1, probe])
    return int(rng.integers(0, 2**31 - 1))


def _probe_similarity(method, instances, rows, networks, cfg) -> np.ndarray:
    """(len(rows), n_models): similarity to each draw's probes, averaged over its probes."""
    queries = [p for j in rows for p in instances[j].probes]
    S = cross_similarity(method, queries, networks, Context(seed=cfg.seed))
    return S.reshape(len(rows), cfg.probes, -1).mean(axis=1)


def _fold_of(task_names: Sequence[str], folds: int, seed: int) -> dict[str, int]:
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(task_names))
    return {task_names[t]: i % folds for i, t in enumerate(order)}


def _ci(gains: np.ndarray, seed: int, n_boot: int = 10000) -> dict[str, float]:
    """Mean, 95% bootstrap CI over tasks and the t-interval of a per-task gain."""
    from scipy import stats

    g = gains[np.isfinite(gains)]
    if len(g) == 0:
        return {
            "mean": math.nan,
            "lo": math.nan,
            "hi": math.nan,
            "t_lo": math.nan,
            "t_hi": math.nan,
            "n": 0,
        }
    rng = np.random.default_rng(seed)
    boots = rng.choice(g, (n_boot, len(g)), replace=True).mean(1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    if len(g) > 1 and g.std(ddof=1) > 0:
        half = stats.t.ppf(0.975, len(g) - 1) * g.std(ddof=1) / math.sqrt(len(g))
    else:
        half = 0.0
    return {
        "mean": float(g.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "t_lo": float(g.mean() - half),
        "t_hi": float(g.mean() + half),
        "n": int(len(g)),
    }


def evaluate_transfer(
    zoo,
    similarities: Mapping[str, Similarity],
    config: TransferConfig | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Scratch, random, chosen and oracle accuracies per target task, shots and method."""
    from scipy.stats import spearmanr

    from paramsim.weights import from_state_dict

    cfg = config or TransferConfig()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    dataset = zoo.dataset()
    names = [t.name for t in zoo.tasks]
    labels = zoo.task_ids
    targets = list(range(len(names)))
    if cfg.targets is not None:
        unknown = set(cfg.targets) - set(names)
        if unknown:
            raise ParamsimError(f"unknown target tasks {sorted(unknown)}; the zoo has {names}")
        targets = [t for t in targets if names[t] in cfg.targets]
    if len(zoo.tasks) < 2:
        raise ParamsimError("transfer needs a zoo with at least two tasks")
    arch = _majority_arch(zoo)
    tests = {t: zoo.tasks[t].test_data(dataset) for t in targets}

    # 1. K-shot draws and probes (one stacked run per K)
    instances: list[_Instance] = []
    for k in cfg.shots:
        batch = []
        for t in targets:
            for r in range(cfg.repeats):
                x, y = kshot(zoo.tasks[t], dataset, k, (cfg.seed, k, r, t))
                batch.append(_Instance(t, k, r, x, y))
        P = cfg.probes
        seeds = [_probe_seed(cfg.seed, k, b.repeat, b.task_id, p) for b in batch for p in range(P)]
        stack = train_probes(
            arch,
            [(zoo.tasks[b.task_id], b.x, b.y) for b in batch for _ in range(P)],
            seeds,
            cfg.probe_lr,
            cfg.probe_steps,
            cfg.probe_init_scale,
        )
        acc = _test_accuracy(stack, [tests[b.task_id] for b in batch for _ in range(P)])
        for i, b in enumerate(batch):
            b.scratch = float(acc[i * P : (i + 1) * P].mean())
            b.probes = [from_state_dict(stack.state_dict(i * P + p), arch) for p in range(P)]
        instances += batch
    say(f"trained {len(instances) * cfg.probes} probe models")

    # 2. every source of another task fine-tuned on every instance (method independent)
    bank = SourceBank(zoo)
    pairs = [
        (m, j)
        for j, inst in enumerate(instances)
        for m in range(len(zoo))
        if labels[m] != inst.task_id
    ]
    t0 = time.perf_counter()
    accs = bank.finetune(
        pairs,
        [(inst.x, inst.y) for inst in instances],
        [tests[inst.task_id] for inst in instances],
        cfg.finetune_lr,
        cfg.finetune_steps,
        cfg.finetune == "head",
        cfg.head == "reset",
        cfg.chunk,
    )
    ft = np.full((len(instances), len(zoo)), np.nan)
    for (m, j), a in zip(pairs, accs, strict=True):
        ft[j, m] = a
    finetune_seconds = time.perf_counter() - t0
    say(f"fine-tuned {len(pairs)} source/target pairs in {finetune_seconds:.1f} s")

    # 3. per method: rank sources by similarity to each probe
    networks = zoo.networks()
    model_tasks = [zoo.tasks[int(t)] for t in labels]
    fold = _fold_of(names, cfg.folds, cfg.seed)
    methods: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, sim in similarities.items():
        t0 = time.perf_counter()
        S = np.full((len(instances), len(zoo)), np.nan)
        try:
            if sim.learned and sim.seen_tasks is None:  # cross-fit per fold
                for f in range(cfg.folds):
                    held = {n for n, g in fold.items() if g == f}
                    rows = [j for j, inst in enumerate(instances) if names[inst.task_id] in held]
                    if not rows:
                        continue
                    say(f"{name}: fitting fold {f + 1}/{cfg.folds} without {len(held)} tasks")
                    fitted = fit_excluding(sim, networks, model_tasks, held, cfg.seed + f)
                    S[rows] = _probe_similarity(fitted.method, instances, rows, networks, cfg)
            else:
                seen = sim.seen_tasks or frozenset()
                rows = [
                    j
                    for j, inst in enumerate(instances)
                    if canonical_task(names[inst.task_id]) not in seen
                ]
                if not rows:
                    raise ParamsimError(
                        f"{sim.name} trained on every target task ({sim.source}); fit it on a "
                        "subset of tasks or use --method lps, which is fitted per fold"
                    )
                S[rows] = _probe_similarity(sim.method, instances, rows, networks, cfg)
        except ParamsimError:
            raise
        except Exception as exc:  # a failing method is reported, not fatal
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            say(f"{name}: skipped ({skipped[name]})")
            continue
        methods[name] = {"shots": _score_method(instances, S, ft, labels, names, cfg, spearmanr)}
        methods[name]["seconds"] = time.perf_counter() - t0
        methods[name]["source"] = (
            sim.source
            if not (sim.learned and sim.seen_tasks is None)
            else f"fitted per fold ({cfg.folds} folds)"
        )
        say(f"{name}: done in {methods[name]['seconds']:.1f} s")

    return {
        "zoo": str(getattr(zoo, "path", "")),
        "n_models": len(zoo),
        "n_tasks": len(names),
        "tasks": names,
        "config": cfg.to_dict(),
        "probe_arch": arch.label,
        "folds": {n: int(g) for n, g in fold.items()},
        "instances": [
            {"task": names[i.task_id], "shots": i.shots, "repeat": i.repeat, "scratch": i.scratch}
            for i in instances
        ],
        "baselines": _baselines(instances, ft, names, cfg),
        "methods": methods,
        "skipped": skipped,
        "finetune_seconds": finetune_seconds,
        "total_seconds": time.perf_counter() - started,
    }


def _per_task(instances: Sequence[_Instance], values: np.ndarray, k: int) -> dict[int, float]:
    """Mean over repeats, per target task, for K = k."""
    out: dict[int, list[float]] = {}
    for inst, v in zip(instances, values, strict=True):
        if inst.shots == k and np.isfinite(v):
            out.setdefault(inst.task_id, []).append(float(v))
    return {t: float(np.mean(v)) for t, v in out.items()}


def _baselines(instances, ft, names, cfg) -> dict[str, Any]:
    scratch = np.array([i.scratch for i in instances])
    random_ = np.nanmean(ft, axis=1)
    oracle = np.nanmax(ft, axis=1)
    out = {}
    for k in cfg.shots:
        per = {
            "scratch": _per_task(instances, scratch, k),
            "random": _per_task(instances, random_, k),
            "oracle": _per_task(instances, oracle, k),
        }
        out[str(k)] = {
            key: {
                "mean": float(np.mean(list(v.values()))),
                "per_task": {names[t]: a for t, a in v.items()},
            }
            for key, v in per.items()
        }
    return out


def _score_method(instances, S, ft, labels, names, cfg, spearmanr) -> dict[str, Any]:
    """Per K: both selection rules scored from the same fine-tuned sources.

    The top-level chosen/gain/share/chosen_sources are those of the primary rule
    (`cfg.select`); `rules` holds every rule's, so the two can be compared on equal terms.
    """
    chosen = {rule: np.full(len(instances), np.nan) for rule in SELECT_RULES}
    chosen_id = {rule: np.full(len(instances), -1) for rule in SELECT_RULES}
    rho = np.full(len(instances), np.nan)
    random_ = np.nanmean(ft, axis=1)
    oracle = np.nanmax(ft, axis=1)
    for j, inst in enumerate(instances):
        s = S[j]
        ok = np.isfinite(s) & (labels != inst.task_id) & np.isfinite(ft[j])
        if not ok.any():
            continue
        for rule in SELECT_RULES:
            best = choose_source(s, labels, ok, rule, cfg.select_top)
            chosen_id[rule][j] = best
            chosen[rule][j] = ft[j, best]
        cand = np.flatnonzero(ok)
        if np.ptp(s[cand]) > 0 and np.ptp(ft[j, cand]) > 0:
            rho[j] = spearmanr(s[cand], ft[j, cand]).statistic
    out: dict[str, Any] = {}
    for k in cfg.shots:
        r = _per_task(instances, random_, k)
        o = _per_task(instances, oracle, k)
        rules: dict[str, Any] = {}
        for rule in SELECT_RULES:
            c = _per_task(instances, chosen[rule], k)
            tasks = sorted(c)
            gain = np.array([c[t] - r[t] for t in tasks])
            headroom = np.array([o[t] - r[t] for t in tasks])
            rules[rule] = {
                "chosen": {
                    "mean": float(np.mean([c[t] for t in tasks])) if tasks else math.nan,
                    "per_task": {names[t]: c[t] for t in tasks},
                },
                "gain_over_random": _ci(gain, cfg.seed),
                "oracle_gain_captured": float(gain.mean() / headroom.mean())
                if tasks and headroom.mean() > 0
                else math.nan,
                "chosen_sources": {
                    f"{names[inst.task_id]}#{inst.repeat}": (
                        int(chosen_id[rule][j]),
                        names[int(labels[chosen_id[rule][j]])],
                    )
                    for j, inst in enumerate(instances)
                    if inst.shots == k and chosen_id[rule][j] >= 0
                },
            }
        tasks = sorted(_per_task(instances, chosen[cfg.select], k))
        rho_k = _per_task(instances, rho, k)
        out[str(k)] = {
            "n_target_tasks": len(tasks),
            "select": cfg.select,
            **rules[cfg.select],
            "random_same_tasks": float(np.mean([r[t] for t in tasks])) if tasks else math.nan,
            "oracle_same_tasks": float(np.mean([o[t] for t in tasks])) if tasks else math.nan,
            "spearman": {
                "mean": float(np.nanmean(list(rho_k.values()))) if rho_k else math.nan,
                "per_task": {names[t]: v for t, v in rho_k.items()},
            },
            "rules": rules,
        }
    return out


# ----------------------------------------------------------------------------- report


def format_transfer_table(results: Mapping[str, Any]) -> str:
    """Markdown: one row per method, K and selection rule (the primary rule first).

    Baselines are on the same target tasks; both rules pick among the same fine-tuned sources.
    """
    cols = [
        "method",
        "K",
        "rule",
        "tasks",
        "scratch",
        "random source",
        "chosen source",
        "oracle",
        "gain over random (95% CI)",
        "share of oracle gain",
        "Spearman(sim, acc)",
    ]
    head = "| " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * len(cols)]
    for name, entry in results.get("methods", {}).items():
        for k, v in entry["shots"].items():
            base = results["baselines"][k]
            tasks = list(v["chosen"]["per_task"])
            scratch = (
                np.mean([base["scratch"]["per_task"][t] for t in tasks]) if tasks else math.nan
            )
            for rule, rv in rule_views(v):
                g = rv["gain_over_random"]
                lines.append(
                    f"| {name} | {k} | {rule} | {v['n_target_tasks']} | {scratch:.3f} | "
                    f"{v['random_same_tasks']:.3f} | "
                    f"{rv['chosen']['mean']:.3f} | {v['oracle_same_tasks']:.3f} | "
                    f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}] | "
                    f"{rv['oracle_gain_captured']:.2f} | {v['spearman']['mean']:.3f} |"
                )
    for name, reason in results.get("skipped", {}).items():
        lines.append(f"| {name} | | | | skipped: {reason} |" + " |" * 6)
    return "\n".join(lines)


def rule_views(entry: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(rule, scores) of one method and K, the primary rule first; old results: one row."""
    rules = entry.get("rules")
    if not rules:
        return [(entry.get("select", "model"), entry)]
    primary = entry.get("select", next(iter(rules)))
    return [(primary, rules[primary])] + [(r, v) for r, v in rules.items() if r != primary]


def plot_transfer(results: Mapping[str, Any]) -> bytes | None:
    """Per-task accuracies (sorted by the random baseline) for each K, methods side by side."""
    methods = results.get("methods", {})
    if not methods:
        return None
    plt = pyplot()
    ks = list(results["baselines"])
    fig, axes = plt.subplots(1, len(ks), figsize=(6.5 * len(ks), 4.2), squeeze=False)
    try:
        for ax, k in zip(axes[0], ks, strict=True):
            base = results["baselines"][k]
            order = sorted(base["random"]["per_task"], key=base["random"]["per_task"].get)
            xs = np.arange(len(order))
            for key, style in (("scratch", ":"), ("random", "--"), ("oracle", "-")):
                ax.plot(
                    xs,
                    [base[key]["per_task"][t] for t in order],
                    style,
                    color="grey" if key != "oracle" else "black",
                    lw=1,
                    label=key,
                )
            for name, entry in methods.items():
                per = entry["shots"].get(k, {}).get("chosen", {}).get("per_task", {})
                pts = [(i, per[t]) for i, t in enumerate(order) if t in per]
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True), "o", ms=3.5, alpha=0.8, label=f"chosen by {name}"
                    )
            ax.set_title(f"K = {k} shots per class")
            ax.set_xlabel("target task (sorted by random-source accuracy)")
            ax.set_ylabel("test accuracy after fine-tuning")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        return figure_png(fig)
    finally:
        plt.close(fig)


def write_transfer(
    results: Mapping[str, Any], out_dir: str | Path, key: str | None = None
) -> dict[str, Path]:
    from paramsim.atomic import atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(results)
    if key is not None:
        doc["settings_key"] = key
    png = plot_transfer(doc)
    write_json(out / "transfer.json", doc)
    written = {"transfer.json": out / "transfer.json"}
    if png is not None:
        atomic_write(out / "transfer.png", png)
        written["transfer.png"] = out / "transfer.png"
    return written


def transfer_key(zoo, methods: Sequence[str], config: TransferConfig) -> str:
    return settings_key(
        {
            "zoo": str(Path(zoo.path).resolve()),
            "n": len(zoo),
            "methods": list(methods),
            "config": config.to_dict(),
        }
    )
