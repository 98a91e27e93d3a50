"""The user's side of transfer: a probe from their examples, the sources to try, a fine-tune.

The question a user asks: "I have a few labelled examples of a new binary task; which stored
model should I fine-tune?" The answer here needs no forward pass of the stored models: train
a small *probe* model on the few examples, embed it with a similarity method, and rank the
stored models by similarity to it.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.data import Task
from paramsim.data.tasks import canonical_name
from paramsim.errors import ParamsimError
from paramsim.features.base import Context
from paramsim.use._common import Similarity, cross_similarity
from paramsim.use.transfer.config import MATRICES_FILE, SELECT_RULES
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
    history: TransferHistory | str | Path | None = None,
) -> list[dict[str, Any]]:
    """The k stored models to try first for a probe trained on the user's (x, y).

    `method`: a fixed method name or a `Similarity` (e.g. `load_similarity(model="lps/")`);
    a learned method must already be fitted. `select="model"` orders the models by their own
    similarity; `select="task"` orders tasks by the mean similarity of their models (of their
    `top` most similar ones if top > 0) and, within a task, models by similarity. With
    `history` (a `TransferHistory` or the --out of a `paramsim transfer` run on this zoo),
    "model" order is the `hist:` rule's: how each model fine-tuned to the 10 past targets most
    like the probe, mixed with its similarity (`paramsim.use.transfer.history`). Returns
    dicts with model id, task, similarity and task_similarity (and history_score), best
    first. `exclude_tasks` names tasks whose models are never offered (as if the probe's task
    were new), in either side order ("1 vs 0" is "0 vs 1"); a name the zoo lacks is an error.
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
    # "1 vs 0" names the task "0 vs 1", as for --targets and the history's own exclusion
    drop = {canonical_name(t) for t in exclude_tasks}
    unknown = sorted(drop - {canonical_name(t) for t in zoo.tasks})
    if unknown:
        raise ParamsimError(
            f"cannot exclude {unknown}: not tasks of the zoo ({[t.name for t in zoo.tasks]})"
        )
    probe = from_module(train_probe(zoo, x, y, seed), input_shape=majority_arch(zoo).input_shape)
    records = [r for r in zoo.records if canonical_name(r.task) not in drop]
    ids = [r.id for r in records]
    S = cross_similarity(sim.method, [probe], zoo.networks(ids), Context(seed=seed))[0]
    tasks = np.asarray([r.task_id for r in records])
    per_task = task_scores(S, tasks, np.isfinite(S), top)
    score = S
    if history is not None:
        past = history if isinstance(history, TransferHistory) else TransferHistory.load(history)
        past = past.without_targets(exclude_tasks)  # an excluded task's outcomes never count
        score = past.scores(S, records, shots=int(np.bincount(np.asarray(y).astype(int)).min()))
    if select == "task":
        order = sorted(range(len(ids)), key=lambda i: (-per_task[int(tasks[i])], tasks[i], -S[i]))
    else:
        order = list(np.argsort(-score, kind="stable"))
    return [
        {
            "model_id": int(ids[i]),
            "task": records[i].task.name,
            "similarity": float(S[i]),
            "task_similarity": per_task[int(tasks[i])],
            "test_acc": float(records[i].test_acc),
            **({"history_score": float(score[i])} if history is not None else {}),
        }
        for i in order[:k]
    ]


@dataclass(frozen=True)
class TransferHistory:
    """Outcomes of earlier fine-tunes of a zoo's models (`paramsim transfer`'s
    transfer-matrices.npz and transfer.json): per past draw its target task and K, per model
    (`model_ids`) its fine-tuned test accuracy, NaN where it was not a candidate."""

    model_ids: np.ndarray
    target_tasks: tuple[str, ...]
    shots: np.ndarray
    finetuned: np.ndarray
    model_tasks: tuple[str, ...] | None = None  # each column's task, to check the zoo

    def without_targets(self, tasks: Sequence[str]) -> TransferHistory:
        """The history less the draws whose target is one of `tasks` (either side order)."""
        drop = {canonical_name(t) for t in tasks}
        keep = [i for i, t in enumerate(self.target_tasks) if canonical_name(t) not in drop]
        return replace(
            self,
            target_tasks=tuple(self.target_tasks[i] for i in keep),
            shots=self.shots[keep],
            finetuned=self.finetuned[keep],
        )

    @classmethod
    def load(cls, run_dir: str | Path) -> TransferHistory:
        run = Path(run_dir)
        try:
            doc = json.loads((run / "transfer.json").read_text())
            with np.load(run / MATRICES_FILE) as m:  # no pickles: allow_pickle stays False
                ids, ft = m["model_ids"], m["finetuned"]
                model_tasks = tuple(map(str, m["model_tasks"])) if "model_tasks" in m else None
            draws = doc["instances"]
            tasks = tuple(str(d["task"]) for d in draws)
            shots = np.asarray([int(d["shots"]) for d in draws])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ParamsimError(
                f"cannot read a transfer history in {run} ({exc}); give the --out directory "
                f"of a `paramsim transfer` run (transfer.json and {MATRICES_FILE})"
            ) from None
        if ft.ndim != 2 or ft.shape != (len(draws), len(ids)):
            raise ParamsimError(
                f"{run / MATRICES_FILE}: {ft.shape} outcomes for {len(draws)} draws and "
                f"{len(ids)} models; rerun `paramsim transfer`"
            )
        return cls(ids, tasks, shots, ft, model_tasks)

    def scores(self, similarity: np.ndarray, records: Sequence, shots: int) -> np.ndarray:
        """`hist:` scores of a new probe with `similarity` to the models of `records`,
        remembering the past draws whose K is nearest to `shots`."""
        from paramsim.use.transfer.history import history_scores

        column = {int(m): j for j, m in enumerate(self.model_ids)}
        if not any(r.id in column for r in records):
            raise ParamsimError(
                "the transfer history names none of the zoo's models; use the "
                "--out of a `paramsim transfer` run on this zoo"
            )
        if self.model_tasks is not None:
            moved = [
                r.id
                for r in records
                if r.id in column and r.task.name != self.model_tasks[column[r.id]]
            ]
            if moved:
                raise ParamsimError(
                    f"the transfer history's model {moved[0]} has another task than the zoo's: "
                    "it is of another zoo; use a `paramsim transfer` run on this one"
                )
        nearest = self.shots[np.argmin(np.abs(self.shots - shots))]
        rows = np.flatnonzero(self.shots == nearest)
        past = np.full((len(rows), len(records)), np.nan)
        for j, r in enumerate(records):
            if r.id in column:
                past[:, j] = self.finetuned[rows, column[r.id]]
        model_tasks = [r.task.name for r in records]
        past_targets = [self.target_tasks[i] for i in rows]
        allowed = np.ones((1, len(records)), dtype=bool)
        return history_scores(
            similarity[None], allowed, past, np.isfinite(past), past_targets, model_tasks
        )[0]


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
