"""Selection rules: from one probe's similarity to every stored model, the source to fine-tune."""

from __future__ import annotations

import numpy as np

from paramsim.errors import ParamsimError
from paramsim.use.transfer.config import SELECT_RULES


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
