"""A weights-only selector that remembers what transferred (`hist:BASE`).

A similarity method ranks sources by how alike they are to the probe, which finds models of
related tasks but says nothing about which of them fine-tune well. A library that has
fine-tuned its models before knows more: the sources that transferred well to past targets
like this one. `hist:BASE` scores a candidate by

    w * z(mean over the n past targets most similar to the probe of the source's z-scored
    fine-tuned accuracy) + (1 - w) * z(BASE's similarity)

where "similar to the probe" is BASE's mean similarity of the probe to that target task's
models, and z standardises over a draw's candidates. Selection stays weights-only (one
similarity query, no forward pass of a candidate on the shots); the past outcomes are a
table the library keeps. In `evaluate_transfer` the past targets are the draws of the other
folds' tasks with the same K, so a target's own outcomes never reach its scores (tested).
The past outcomes do include how the models of the target's fold fine-tuned to *other*
targets: that says how a source transfers, nothing of the target.

n = 10 and w = 0.7 were chosen on a seed-100 transfer run of digits-pairs (3 sources per task,
K 1, 5, 20; docs/RESULTS.md); the reported runs use seed 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEIGHBOURS = 10
HISTORY_WEIGHT = 0.7


def zscore_rows(a: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, (a - mean) / std over the entries in `mask`; NaN outside it (and where `a` is
    NaN); a row with no spread becomes zeros."""
    out = np.full(a.shape, np.nan)
    for j in range(a.shape[0]):
        ok = mask[j] & np.isfinite(a[j])
        if not ok.any():
            continue
        v = a[j, ok]
        sd = v.std()
        out[j, ok] = (v - v.mean()) / sd if sd > 0 else 0.0
    return out


def history_scores(
    similarity: np.ndarray,
    allowed: np.ndarray,
    past_outcomes: np.ndarray,
    past_allowed: np.ndarray,
    past_targets: Sequence[str],
    model_tasks: Sequence[str],
    targets: Sequence[str] = (),
    neighbours: int = NEIGHBOURS,
    weight: float = HISTORY_WEIGHT,
) -> np.ndarray:
    """Scores (q, n_models) of q new draws from the outcomes of p past draws alone.

    similarity, allowed: (q, n_models) BASE's similarity of each new draw's probe to every
    model, and the models it may pick; past_outcomes, past_allowed: (p, n_models) fine-tuned
    accuracy of the past draws and their candidates; past_targets: their target tasks;
    model_tasks: each model's task; targets: the new draws' target tasks (a task is never its
    own neighbour).
    """
    z_similarity = zscore_rows(similarity, allowed)
    past_targets = np.asarray(past_targets)
    tasks = sorted(set(past_targets.tolist()))
    if not tasks:
        return np.where(allowed, z_similarity, np.nan)
    outcome = zscore_rows(past_outcomes, past_allowed)
    table = np.stack([_nanmean(outcome[past_targets == t]) for t in tasks])
    of_task = np.asarray(model_tasks)[None, :] == np.asarray(tasks)[:, None]  # (T, n_models)
    n_of_task = of_task.sum(1)
    out = np.full(similarity.shape, np.nan)
    for i in range(len(similarity)):
        near = (of_task * np.nan_to_num(similarity[i])).sum(1) / np.maximum(n_of_task, 1)
        near[n_of_task == 0] = -np.inf  # no model to compare with: never a neighbour
        if i < len(targets):
            near[np.asarray(tasks) == targets[i]] = -np.inf
        pick = np.flatnonzero(np.isfinite(near))
        pick = pick[np.argsort(-near[pick], kind="stable")][:neighbours]
        remembered = np.nan_to_num(_nanmean(table[pick]), nan=0.0)  # no past: average
        remembered = zscore_rows(remembered[None], allowed[i : i + 1])[0]
        out[i] = weight * remembered + (1 - weight) * z_similarity[i]
    return out


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Column means over the finite entries; NaN where a column has none (no warning)."""
    ok = np.isfinite(a)
    total = np.where(ok, a, 0.0).sum(0)
    count = ok.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
