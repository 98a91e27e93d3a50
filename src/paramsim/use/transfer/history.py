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
    base: np.ndarray,
    finetuned: np.ndarray,
    candidates: np.ndarray,
    target_tasks: Sequence[str],
    model_tasks: Sequence[str],
    past_rows: Sequence[int],
    rows: Sequence[int],
    neighbours: int = NEIGHBOURS,
    weight: float = HISTORY_WEIGHT,
) -> np.ndarray:
    """Scores (len(rows), n_models) of `rows` from the outcomes of `past_rows` alone.

    base: (n_draws, n_models) BASE's similarity of each draw's probe to every model;
    finetuned: (n_draws, n_models) fine-tuned accuracy (read only on `past_rows`);
    candidates: which models each draw may pick; target_tasks: each draw's target task;
    model_tasks: each model's task.
    """
    rows, past_rows = list(rows), list(past_rows)
    out = np.full((len(rows), base.shape[1]), np.nan)
    mask = candidates[rows]
    similarity = zscore_rows(base[rows], mask)
    past_targets = np.asarray(target_tasks)[past_rows]
    tasks = sorted(set(past_targets.tolist()))
    if not tasks:
        out[:] = similarity
        return out
    outcome = zscore_rows(finetuned[past_rows], candidates[past_rows])
    table = np.stack([_nanmean(outcome[past_targets == t]) for t in tasks])
    of_task = np.asarray(model_tasks)[None, :] == np.asarray(tasks)[:, None]  # (T, n_models)
    for i, j in enumerate(rows):
        near = (of_task * np.nan_to_num(base[j])).sum(1) / np.maximum(of_task.sum(1), 1)
        near[of_task.sum(1) == 0] = -np.inf  # no model to compare with: never a neighbour
        near[np.asarray(tasks) == target_tasks[j]] = -np.inf  # never its own (not past anyway)
        pick = np.flatnonzero(np.isfinite(near))
        pick = pick[np.argsort(-near[pick], kind="stable")][:neighbours]
        remembered = np.nan_to_num(_nanmean(table[pick]), nan=0.0)  # no past: average
        remembered = zscore_rows(remembered[None], mask[i : i + 1])[0]
        out[i] = weight * remembered + (1 - weight) * similarity[i]
    return out


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Column means over the finite entries; NaN where a column has none (no warning)."""
    ok = np.isfinite(a)
    total = np.where(ok, a, 0.0).sum(0)
    count = ok.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
