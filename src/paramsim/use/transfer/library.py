"""The user's side of transfer: a probe from their examples, the sources to try, a fine-tune.

The question a user asks: "I have a few labelled examples of a new binary task; which stored
model should I fine-tune?" The answer here needs no forward pass of the stored models: train
a small *probe* model on the few examples, embed it with a similarity method, and rank the
stored models by similarity to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from paramsim.data import Task
from paramsim.errors import ParamsimError
from paramsim.features.base import Context
from paramsim.use._common import Similarity, cross_similarity
from paramsim.use.transfer.config import SELECT_RULES
from paramsim.use.transfer.selection import task_scores
from paramsim.use.transfer.shots import as_tensors
from paramsim.weights.arch import ArchSpec
from paramsim.zoo.finetune import finetune_one, module_of, train_probes


def majority_arch(zoo) -> ArchSpec:
    """The zoo's most common architecture: the probe's."""
    counts: dict[ArchSpec, int] = {}
    for r in zoo.records:
        counts[r.arch] = counts.get(r.arch, 0) + 1
    return max(counts, key=counts.get)  # type: ignore[arg-type]


def train_probe(zoo, x, y, seed: int = 0, lr: float = 1e-2, steps: int = 100):
    """A model of the zoo's (most common) architecture trained on x, y: the query model."""
    arch = majority_arch(zoo)
    xt, yt = as_tensors(x, y, arch.input_shape)
    task = Task(((0,), (1,)))
    stack = train_probes(arch, [(task, xt, yt)], [seed], lr, steps)
    return module_of(stack, 0)


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
    probe = from_module(train_probe(zoo, x, y, seed), input_shape=majority_arch(zoo).input_shape)
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
    xt, yt = as_tensors(x, y, rec.arch.input_shape)
    return finetune_one(
        rec.arch, rec.task, zoo.state_dict(model_id), xt, yt, steps, lr, head_only, reset_head
    )
